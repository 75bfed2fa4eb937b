"""The operator's tool as the operator runs it (a subprocess), against a real etcd and
the real gateway: the README's audit workflow, end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from config_watch import FEATURES, MAINTENANCE_MODE, RATE_LIMIT
from tests.support import wait_until
from tools.function_server import FunctionServer

REPO = Path(__file__).resolve().parents[2]
FLAG = FEATURES + "new-user-onboarding"


@pytest.fixture
def tool(etcd, tmp_path):
    """Runs `python -m config_watch` from a directory whose .local/env names the test
    etcd, with ETCD_ENDPOINTS unset: as after `make run`."""
    (tmp_path / ".local").mkdir()
    (tmp_path / ".local" / "env").write_text(f"# written by make run\nETCD_ENDPOINTS={etcd.endpoint}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("ETCD_ENDPOINTS", "CONFIG_REQUIRE_REASON")}
    env["PYTHONPATH"] = str(REPO)

    def run(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "config_watch", *args], cwd=tmp_path,
                              env={**env, **extra_env}, capture_output=True, text=True, timeout=60)

    return run


def written_at(result: subprocess.CompletedProcess) -> int:
    assert result.returncode == 0, result.stderr
    return int(re.search(r"at revision (\d+)", result.stdout).group(1))


def test_change_with_a_reason_list_and_undo(tool, etcd):
    written_at(tool("seed"))
    change = written_at(tool("set", RATE_LIMIT, "500", FLAG, "true", "--create",
                             "--reason", "launch", "--actor", "alice"))
    etcd.etcdctl("put", MAINTENANCE_MODE, "true")  # behind the tool's back
    raw = etcd.revision()

    listed = tool("audit")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == f"revision {raw}  unaudited  (changed without this tool, e.g. etcdctl)"
    assert re.match(rf"revision {change}  \S+Z  alice  set  reason: launch$", lines[2])
    assert f"    {RATE_LIMIT}: 100 -> 500" in lines and f"    {FLAG}: (unset) -> true" in lines

    undo = written_at(tool("rollback", str(change), "--reason", "launch postponed"))
    assert etcd.etcdctl("get", RATE_LIMIT, "--print-value-only").strip() == "100"
    assert etcd.etcdctl("get", FLAG).strip() == ""  # absent before the change: deleted again
    etcd.etcdctl("compact", str(undo), "--physical")
    listed = tool("audit", "--limit", "2").stdout
    assert listed.startswith(f"revision {undo}  ") and f"undo of revision {change}  reason: launch postponed" in listed

    rejected = tool("rollback", RATE_LIMIT, str(change))
    assert rejected.returncode == 2 and rejected.stderr.count("\n") == 1
    assert f"etcd has revisions {undo} to {undo}" in rejected.stderr and "Traceback" not in rejected.stderr
    assert etcd.revision() == undo


def test_errors_are_one_line_without_a_traceback(tool, etcd, tmp_path):
    before = etcd.revision()
    typo = tool("set", FEATURES + "new-user-onbording", "true")
    assert typo.returncode == 2 and typo.stdout == ""
    assert typo.stderr.startswith("error: ") and typo.stderr.count("\n") == 1
    assert "--create" in typo.stderr
    (tmp_path / ".local" / "env").write_text("ETCD_ENDPOINTS=127.0.0.1:1\n")
    down = tool("set", RATE_LIMIT, "5")
    assert down.returncode == 1 and down.stderr.count("\n") == 1 and "Traceback" not in down.stderr
    assert "cannot reach etcd at 127.0.0.1:1" in down.stderr and "written by make run" in down.stderr
    wins = tool("get", ETCD_ENDPOINTS=etcd.endpoint)  # the environment, when set, wins over .local/env
    assert wins.returncode == 0 and f"# etcd {etcd.endpoint} (from ETCD_ENDPOINTS)" in wins.stdout
    assert etcd.revision() == before


def test_the_gateway_applies_an_audited_change_at_its_revision(tool, etcd, tmp_path):
    with FunctionServer({"ETCD_ENDPOINTS": etcd.endpoint, "CONFIG_INITIAL_WAIT_SECONDS": "3"}, workers=1,
                        log_path=str(tmp_path / "fn.log")) as fn:
        assert requests.get(fn.url + "/onboarding", timeout=10).status_code == 404
        revision = written_at(tool("set", FLAG, "true", "--create", "--reason", "e2e"))
        response = wait_until(lambda: (r := requests.get(fn.url + "/onboarding", timeout=10)).status_code == 200 and r,
                              message="the gateway to apply the flag")
        assert int(response.headers["X-Config-Revision"]) == revision
        status = tool("status", fn.url)
        assert status.returncode == 0, status.stderr
        assert '"synced": true' in status.stdout
