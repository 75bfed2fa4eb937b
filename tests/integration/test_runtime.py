"""The process-global runtime: lazy, bounded cold start, fork-safe."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import config_watch
from config_watch import RATE_LIMIT
from config_watch import _runtime
from tools.etcd_server import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_importing_the_function_starts_nothing():
    code = (
        "import threading, main, config_watch._runtime as r;"
        "assert r._runtime is None, 'runtime created at import';"
        "names = [t.name for t in threading.enumerate()];"
        "assert names == ['MainThread'], names; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_first_request_waits_for_the_initial_list(etcd, monkeypatch):
    etcd.etcdctl("put", RATE_LIMIT, "55")
    monkeypatch.setenv("ETCD_ENDPOINTS", etcd.endpoint)
    snapshot = config_watch.snapshot()
    assert snapshot.synced and snapshot[RATE_LIMIT] == 55


def test_cold_start_wait_is_bounded_when_etcd_is_down(monkeypatch):
    monkeypatch.setenv("ETCD_ENDPOINTS", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("CONFIG_INITIAL_WAIT_SECONDS", "0.3")
    started = time.monotonic()
    snapshot = config_watch.snapshot()
    elapsed = time.monotonic() - started
    assert snapshot.synced is False and snapshot[RATE_LIMIT] == 100
    assert 0.25 <= elapsed < 1.5, elapsed
    # Later requests do not wait again.
    started = time.monotonic()
    config_watch.snapshot()
    assert time.monotonic() - started < 0.2
    assert config_watch.status().synced is False


FORK_SCRIPT = """
import os, sys, time
import config_watch
parent = config_watch.get_runtime()
assert parent.watcher.wait_synced(10), "parent never synced"
deadline = time.monotonic() + 10
while not parent.watcher.connected and time.monotonic() < deadline:
    time.sleep(0.01)
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    code = 1
    try:
        child = config_watch.get_runtime()
        ok = (child is not parent and child.pid == os.getpid() and child.watcher.alive
              and config_watch.snapshot()[config_watch.RATE_LIMIT] == 66)
        os.write(write, b"ok" if ok else b"bad")
        code = 0
    finally:
        os._exit(code)
os.close(write)
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    time.sleep(0.01)
else:
    os.kill(pid, 9)
    sys.exit("child hung")
assert config_watch.get_runtime() is parent, "parent lost its runtime"
print(os.read(read, 16).decode(), status)
"""


def test_a_forked_child_starts_its_own_watcher(etcd):
    """A runtime made before a fork is replaced, not reused, in the child.

    Run in a fresh interpreter with quiet logs: a fork taken while another thread holds
    stdout's lock deadlocks the child (gunicorn's master never runs a watcher, so this
    hazard is the test's own, not the function's).
    """
    etcd.etcdctl("put", RATE_LIMIT, "66")
    env = {**os.environ, "ETCD_ENDPOINTS": etcd.endpoint, "LOG_LEVEL": "ERROR"}
    out = subprocess.run([sys.executable, "-c", FORK_SCRIPT], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["ok", "0"], (out.stdout, out.stderr[-2000:])


def test_runtime_is_created_once_under_concurrent_first_requests(etcd, monkeypatch):
    monkeypatch.setenv("ETCD_ENDPOINTS", etcd.endpoint)
    seen = []
    barrier = threading.Barrier(8)

    def first_request():
        barrier.wait()
        seen.append(config_watch.get_runtime())

    threads = [threading.Thread(target=first_request) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(seen) == 8 and len({id(r) for r in seen}) == 1
    assert _runtime._runtime is seen[0]
