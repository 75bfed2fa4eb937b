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
    assert config_watch.status()["synced"] is False


def test_a_forked_child_starts_its_own_watcher(etcd, monkeypatch):
    etcd.etcdctl("put", RATE_LIMIT, "66")
    monkeypatch.setenv("ETCD_ENDPOINTS", etcd.endpoint)
    parent = config_watch.get_runtime()
    assert parent.watcher.wait_synced(5)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's cleanup
        code = 1
        try:
            child = config_watch.get_runtime()
            ok = (child is not parent and child.pid == os.getpid() and child.watcher.alive
                  and config_watch.snapshot()[RATE_LIMIT] == 66)
            os.write(write, b"ok" if ok else b"bad")
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 16) == b"ok" and status == 0
    assert config_watch.get_runtime() is parent  # the parent keeps its own


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
