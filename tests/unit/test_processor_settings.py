"""The processor's settings: defaults, bounds, and errors that name the setting."""

from __future__ import annotations

import pytest

from config_watch import SettingsError
from processor import ProcessorSettings


def test_defaults():
    s = ProcessorSettings.from_env({})
    assert (s.port, s.max_body_bytes, s.queue_limit, s.drain_seconds, s.token) == (8081, 1 << 20, 256, 30, None)


def test_values_from_the_environment():
    s = ProcessorSettings.from_env({"PROCESSOR_PORT": "9000", "PROCESSOR_MAX_BODY_BYTES": "10",
                                    "PROCESSOR_QUEUE_LIMIT": "3", "PROCESSOR_DRAIN_SECONDS": "0",
                                    "PROCESSOR_TOKEN": "t" * 32, "PROCESSOR_HOST": "0.0.0.0"})
    assert (s.host, s.port, s.max_body_bytes, s.queue_limit, s.drain_seconds) == ("0.0.0.0", 9000, 10, 3, 0)
    assert "t" * 32 not in repr(s)


@pytest.mark.parametrize("name,raw", [
    ("PROCESSOR_PORT", "0"), ("PROCESSOR_PORT", "70000"), ("PROCESSOR_PORT", "http"),
    ("PROCESSOR_MAX_BODY_BYTES", "0"), ("PROCESSOR_QUEUE_LIMIT", "-1"), ("PROCESSOR_QUEUE_LIMIT", "5000"),
    ("PROCESSOR_DRAIN_SECONDS", "1.5"), ("PROCESSOR_DRAIN_SECONDS", "-3"),
    ("PROCESSOR_TOKEN", "short"), ("PROCESSOR_TOKEN", " " + "t" * 20),
    ("CONFIG_SERVICE", "api-gateway"),
])
def test_bad_values_are_refused_by_name(name, raw):
    with pytest.raises(SettingsError, match=name):
        ProcessorSettings.from_env({name: raw})


def test_readme_settings_table_lists_every_processor_setting():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = (root / "processor" / "settings.py").read_text()
    read = set(re.findall(r'"(PROCESSOR_[A-Z_]+)"', code))
    section = (root / "README.md").read_text().split("### Processor settings", 1)[1]
    rows = []
    for line in section.splitlines():
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            break
    documented = {m for row in rows[2:] for m in re.findall(r"`(PROCESSOR_[A-Z_]+)`", row.split("|")[1])}
    assert read == documented, (read - documented, documented - read)
    defaults = {re.findall(r"`(PROCESSOR_[A-Z_]+)`", r)[0]: r.split("|")[2].strip().strip("`") for r in rows[2:]}
    s = ProcessorSettings.from_env({})
    assert defaults["PROCESSOR_PORT"] == str(s.port)
    assert defaults["PROCESSOR_MAX_BODY_BYTES"] == str(s.max_body_bytes)
    assert defaults["PROCESSOR_QUEUE_LIMIT"] == str(s.queue_limit)
    assert defaults["PROCESSOR_DRAIN_SECONDS"] == str(s.drain_seconds)


def test_python_m_processor_refuses_a_bad_setting_with_its_name():
    import os
    import subprocess
    import sys

    env = {**os.environ, "PROCESSOR_QUEUE_LIMIT": "lots", "ETCD_ENDPOINTS": "127.0.0.1:1"}
    result = subprocess.run([sys.executable, "-m", "processor"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "PROCESSOR_QUEUE_LIMIT" in result.stderr
