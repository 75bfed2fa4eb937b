"""Measure each fault once with the default settings and print the Reliability table.

    python -m tools.fault_figures      (part of `make chaos`)

Each row injects one fault into real processes, changes a value while it lasts, and
times how long the watcher takes to notice and to hold the change.
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import time
import urllib.request

from config_watch import GLOBAL_PREFIX, RATE_LIMIT, ConfigWatcher, Settings, service_prefix
from config_watch import EtcdError
from config_watch._etcd import EtcdClient
from config_watch._source import EtcdSource
from tools.etcd_server import EtcdCluster, EtcdServer
from tools.function_server import FunctionServer
from tools.tcp_proxy import TcpProxy

PREFIXES = [service_prefix("api-gateway"), GLOBAL_PREFIX]



def watcher_for(endpoints: str) -> ConfigWatcher:
    settings = Settings.from_env({"ETCD_ENDPOINTS": endpoints})  # the defaults under test
    watcher = ConfigWatcher(lambda: EtcdSource(settings, PREFIXES), PREFIXES, settings).start()
    watcher.wait_synced(10)
    _wait(lambda: watcher.connected, 10)
    return watcher


def _wait(predicate, timeout: float) -> float:
    """Seconds until `predicate()` held; raises at the deadline."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError("condition not reached")
        time.sleep(0.002)
    return time.monotonic() - started


def stalled_connection() -> tuple[str, str]:
    with EtcdServer() as etcd, TcpProxy(etcd.client_port) as proxy:
        w = watcher_for(proxy.endpoint)
        try:
            reconnects = w.counters["reconnects"]
            proxy.stall()
            etcd.etcdctl("put", RATE_LIMIT, "7")
            target = etcd.revision()
            detect = _wait(lambda: w.counters["reconnects"] > reconnects, 30)
            caught = _wait(lambda: w.store.current.revision >= target, 30) + detect
            return f"{detect * 1000:.0f} ms", f"{caught * 1000:.0f} ms"
        finally:
            w.stop()


def cut_and_heal() -> tuple[str, str]:
    with EtcdServer() as etcd, TcpProxy(etcd.client_port) as proxy:
        w = watcher_for(proxy.endpoint)
        try:
            proxy.cut()
            detect = _wait(lambda: not w.connected, 30)
            etcd.etcdctl("put", RATE_LIMIT, "8")
            target = etcd.revision()
            proxy.heal()
            caught = _wait(lambda: w.store.current.revision >= target, 30)
            return f"{detect * 1000:.0f} ms", f"{caught * 1000:.0f} ms after heal"
        finally:
            w.stop()


def compaction_while_cut() -> tuple[str, str]:
    with EtcdServer() as etcd, TcpProxy(etcd.client_port) as proxy:
        w = watcher_for(proxy.endpoint)
        try:
            proxy.cut()
            _wait(lambda: not w.connected, 30)
            for v in range(3):
                etcd.etcdctl("put", RATE_LIMIT, str(10 + v))
            target = etcd.revision()
            etcd.etcdctl("compact", str(target))
            proxy.heal()
            caught = _wait(lambda: w.store.current.revision >= target, 30)
            return "on re-watch (compacted)", f"{caught * 1000:.0f} ms after heal (relists: {w.counters['relists']})"
        finally:
            w.stop()


def etcd_restart() -> tuple[str, str]:
    with EtcdServer() as etcd:
        w = watcher_for(etcd.endpoint)
        try:
            etcd.stop()
            detect = _wait(lambda: not w.connected, 30)
            etcd.restart()
            etcd.etcdctl("put", RATE_LIMIT, "9")
            target = etcd.revision()
            caught = _wait(lambda: w.store.current.revision >= target, 30)
            return f"{detect * 1000:.0f} ms", f"{caught * 1000:.0f} ms after etcd is back"
        finally:
            w.stop()


def member_loss(kill_leader: bool) -> tuple[str, str]:
    with EtcdCluster(3) as cluster:
        w = watcher_for(cluster.endpoints)
        try:
            if kill_leader:
                statuses = json.loads(cluster.members[0].etcdctl("endpoint", "status", "--cluster", "-w", "json"))
                leader_id = statuses[0]["Status"]["leader"]
                url = next(s["Endpoint"] for s in statuses if s["Status"]["header"]["member_id"] == leader_id)
                victim = next(m for m in cluster.members if m.client_url == url)
            else:
                victim = next(m for m in cluster.members if m.endpoint == w.endpoint)
            used_before = w.endpoint
            victim.kill()
            started = time.monotonic()
            live = ",".join(m.endpoint for m in cluster.members if m.running())
            writer = EtcdClient(Settings.from_env({"ETCD_ENDPOINTS": live, "ETCD_REQUEST_TIMEOUT_SECONDS": "1"}))
            while True:  # the cluster accepts writes again once it has a leader
                try:
                    target = writer.put(RATE_LIMIT, "11", timeout=1)
                    break
                except EtcdError:
                    writer.rotate()
                    if time.monotonic() - started > 30:
                        raise
            accepted = time.monotonic() - started
            writer.close()
            _wait(lambda: w.store.current.revision >= target, 30)
            caught = time.monotonic() - started
            moved = "moved to another member" if w.endpoint != used_before else "stayed on its member"
            return (f"{moved}; cluster took writes after {accepted * 1000:.0f} ms",
                    f"{(caught - accepted) * 1000:.0f} ms after the first accepted write")
        finally:
            w.stop()


def frozen_instance() -> tuple[str, str]:
    with EtcdServer() as etcd, TcpProxy(etcd.client_port) as proxy:
        etcd.etcdctl("put", RATE_LIMIT, "500")
        with FunctionServer({"ETCD_ENDPOINTS": proxy.endpoint}, workers=1) as fn:
            urllib.request.urlopen(fn.url + "/", timeout=10).read()
            fn.signal_all(signal.SIGSTOP)
            try:
                proxy.stall()
                etcd.etcdctl("put", RATE_LIMIT, "600")
                etcd.etcdctl("compact", str(etcd.revision()))
                time.sleep(16)  # longer than keepalive (10 s + 5 s) and staleness (5 s): the fault itself
            finally:
                fn.signal_all(signal.SIGCONT)
            started = time.monotonic()
            with urllib.request.urlopen(fn.url + "/", timeout=10) as resp:
                limit = resp.headers["RateLimit-Limit"]
            took = time.monotonic() - started
            return "staleness guard on the first request", f"{took * 1000:.0f} ms first response (limit {limit}, expected 600)"


ROWS = [
    ("Silent drop / stalled connection", "no answer to progress requests within ETCD_DEAD_STREAM_SECONDS; gRPC keepalive",
     "5 s (+ one 1.7 s progress tick)", stalled_connection),
    ("Connection cut (RST, refused)", "stream error at once", "immediate; backoff ≤ 5 s", cut_and_heal),
    ("Compaction while disconnected", "watch create answers `compacted`", "relist at once", compaction_while_cut),
    ("etcd restart (same data dir)", "stream error; resume from last revision + 1", "backoff ≤ 5 s", etcd_restart),
    ("Loss of the member in use (3-member cluster)", "stream error; next endpoint", "backoff ≤ 5 s", lambda: member_loss(False)),
    ("Loss of the leader (3-member cluster)", "`hasleader` watch cancelled on members without a leader",
     "election + backoff", lambda: member_loss(True)),
    ("Instance frozen 16 s (CPU throttled), connection dropped, history compacted",
     "request finds the snapshot last proven current more than CONFIG_STALENESS_SECONDS ago", "CONFIG_CHECK_TIMEOUT_SECONDS (0.5 s)",
     frozen_instance),
]


def main() -> int:
    import logging

    logging.basicConfig(level=logging.ERROR)  # the watcher's reconnect warnings are the faults working
    tempfile.tempdir = tempfile.mkdtemp(prefix="fault-figures-")
    print("| fault | detected by | bound | detection | catch-up |")
    print("|---|---|---|---|---|")
    for name, how, bound, measure in ROWS:
        try:
            detection, catch_up = measure()
        except Exception as exc:  # report and go on: one broken row must not hide the others
            detection, catch_up = "FAILED", repr(exc)
        print(f"| {name} | {how} | {bound} | {detection} | {catch_up} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
