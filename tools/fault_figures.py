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
import threading
import time
import urllib.request
import uuid

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


class WorkerPollers:
    """One keep-alive connection per gunicorn worker, each polled by its own thread with
    `GET /` (a fresh API key each time), so every worker sees steady traffic and each
    response can be told apart by worker: `samples[pid]` holds (time, revision)."""

    def __init__(self, fn: FunctionServer, workers: int, timeout: float = 30.0) -> None:
        import requests

        self.url = fn.url
        self.sessions: dict[int, "requests.Session"] = {}
        deadline = time.monotonic() + timeout
        spare = []
        while len(self.sessions) < workers:  # gunicorn hands each new connection to some worker
            if time.monotonic() > deadline:
                raise TimeoutError(f"found {len(self.sessions)} of {workers} workers")
            session = requests.Session()
            pid = session.get(self.url + "/_status", timeout=10).json()["pid"]
            if pid in self.sessions:
                spare.append(session)  # kept open, so the next connection goes elsewhere
            else:
                self.sessions[pid] = session
        for session in spare:
            session.close()
        self.samples: dict[int, list[tuple[float, int]]] = {pid: [] for pid in self.sessions}
        self.status: dict[int, dict] = {}  # each worker's last /_status
        self.moved = False
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._poll, args=(pid,), daemon=True) for pid in self.sessions]

    def _poll(self, pid: int) -> None:
        import requests

        session = self.sessions[pid]  # used by this thread only: a second user would open a second connection
        n = 0
        while not self._stop.is_set():
            try:
                if n % 20 == 0:  # still the same worker (a dropped connection is re-made to any)?
                    status = session.get(self.url + "/_status", timeout=10).json()
                    self.status[pid] = status
                    self.moved |= status["pid"] != pid
                response = session.get(self.url + "/", headers={"X-Api-Key": uuid.uuid4().hex}, timeout=10)
                self.samples[pid].append((time.monotonic(), int(response.headers.get("X-Config-Revision", -1))))
            except requests.RequestException:
                self._stop.wait(0.01)
            n += 1
            self._stop.wait(0.005)

    def latest(self, pid: int) -> int | None:
        """The revision of the worker's last answer."""
        samples = self.samples[pid]
        return samples[-1][1] if samples else None

    def first_serving(self, revision: int, since: float, timeout: float) -> dict[int, float]:
        """Seconds from `since` until each worker first answered with `revision` or later."""
        deadline = time.monotonic() + timeout
        while True:
            found = {}
            for pid, samples in self.samples.items():
                at = next((t for t, rev in list(samples) if t >= since and rev >= revision), None)
                if at is not None:
                    found[pid] = at - since
            if len(found) == len(self.samples) or time.monotonic() > deadline:
                return found
            time.sleep(0.005)

    def still_pinned(self) -> bool:
        """Each connection reached the worker it was opened to throughout."""
        return not self.moved

    def __enter__(self) -> "WorkerPollers":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        for s in self.sessions.values():
            s.close()


def restart_recovery(etcd: EtcdServer, pollers: WorkerPollers, down_seconds: float, value: int,
                     timeout: float = 30.0) -> list[float]:
    """Stop etcd for `down_seconds`, start it again, put a value the moment it is back:
    seconds until each worker served that put."""
    etcd.stop()
    time.sleep(down_seconds)  # the outage itself
    etcd.initial_cluster_state = "existing"
    etcd.start()
    etcd.etcdctl("put", RATE_LIMIT, str(value))
    put_at = time.monotonic()
    target = etcd.revision()
    found = pollers.first_serving(target, put_at, timeout)
    if len(found) < len(pollers.samples):
        raise TimeoutError(f"workers {sorted(set(pollers.samples) - set(found))} not serving revision {target}")
    return sorted(found.values())


def recovery_after_restarts(restarts: int = 20, workers: int = 2, down_seconds: float = 1.0) -> tuple[str, str]:
    """The recovery figure: `restarts` etcd restarts under a gateway of `workers` workers."""
    with EtcdServer() as etcd:
        etcd.etcdctl("put", RATE_LIMIT, "100")
        with FunctionServer({"ETCD_ENDPOINTS": etcd.endpoint}, workers=workers) as fn:
            with WorkerPollers(fn, workers) as pollers:
                times: list[float] = []
                for i in range(restarts):
                    times += restart_recovery(etcd, pollers, down_seconds, 200 + i)
                if not pollers.still_pinned():
                    raise RuntimeError("a poller's connection moved to another worker")
    times.sort()
    p50, p99 = times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))]
    return (f"etcd answers again; a request's check wakes the loop ({restarts} restarts, {workers} workers)",
            f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms from the put")


def restore_from_backup() -> tuple[str, str]:
    with EtcdServer() as etcd:
        etcd.etcdctl("put", RATE_LIMIT, "12")
        backup = tempfile.mktemp(suffix=".db")
        etcd.snapshot_save(backup)
        restored = etcd.revision()
        w = watcher_for(etcd.endpoint)
        try:
            for v in ("13", "14", "15"):
                etcd.etcdctl("put", RATE_LIMIT, v)
            _wait(lambda: w.store.current.revision == restored + 3, 10)
            etcd.stop()
            _wait(lambda: not w.connected, 30)
            etcd.restore(backup)
            caught = _wait(lambda: w.store.current.revision == restored, 30)
            etcd.etcdctl("put", RATE_LIMIT, "16")
            applied = _wait(lambda: w.store.current[RATE_LIMIT] == 16, 30)
            return (f"relist finds revision {restored}, below the snapshot's {restored + 3}",
                    f"{caught * 1000:.0f} ms after etcd is back; a later write applied "
                    f"{applied * 1000:.0f} ms after etcdctl returned")
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
    ("etcd restart, every worker serving a put made the moment etcd is back (WORKERS=2, 1 s outage)",
     "a request's check (at most one a second while the watch is down) finds etcd back and wakes the loop",
     "1 s", recovery_after_restarts),
    ("etcd restored from a backup (`etcdutl snapshot restore`, revision goes back)",
     "a watch answer below the snapshot's revision; a linearizable relist confirms it", "backoff ≤ 5 s",
     restore_from_backup),
    ("Loss of the member in use (3-member cluster)", "stream error; next endpoint",
     "the next member at once (each member backs off on its own, ≤ 5 s)", lambda: member_loss(False)),
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
