# Two commands for a newcomer: `make run` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The stamp is remade whenever a requirements file changes, so a pull that adds a
# dependency reinstalls on the next make.
STAMP  := $(VENV)/.installed-stamp
# checkov (the Terraform scan in make test), apart from the project's pins.
SCAN_VENV  := .venv-scan
SCAN_STAMP := $(SCAN_VENV)/.installed-stamp

.PHONY: run test bench chaos smoke schema reset clean

$(STAMP): requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required, found " + sys.version)'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	@touch $(STAMP)

$(SCAN_STAMP): requirements-scan.txt
	$(PYTHON) -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/python -m pip install --disable-pip-version-check -q -r requirements-scan.txt
	@touch $(SCAN_STAMP)

run: $(STAMP)
	$(PY) -m tools.run_local

# `make -j2 test` builds the two environments side by side.
test: $(STAMP) $(SCAN_STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m bench.run

chaos: $(STAMP)
	$(PY) -m tools.chaos
	$(PY) -m tools.fault_figures

# Against a deployed function: make smoke URL=https://... (or FUNCTION_URL=...).
smoke:
	bash scripts/smoke.sh $(URL)

schema: $(STAMP)
	$(PY) -m config_watch schema

# Local etcd data only (refused while `make run` is running); .venv stays.
reset:
	$(PYTHON) -m tools.reset_local

clean:
	rm -rf $(VENV) $(SCAN_VENV) .local .pytest_cache .hypothesis
