"""`make chaos`: a writer, a watcher, and a driver that breaks things at random.

A three-member etcd cluster on loopback, each member behind a TcpProxy the driver
controls. A writer changes keys (puts, deletes, multi-key transactions) as fast as
it can; the driver cuts and stalls connections, kills and restarts members, and
compacts history; a watcher follows through the proxies. At the end every fault is
healed and the run checks the watcher's snapshot against etcd itself.

    python -m tools.chaos [--seconds 60] [--min-changes 1000] [--seed N]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from config_watch import GLOBAL_PREFIX, RATE_LIMIT, ConfigWatcher, EtcdError, Settings, Snapshot, service_prefix
from config_watch._etcd import EtcdClient
from config_watch._keyrange import covering_range
from config_watch._source import EtcdSource
from tools.etcd_server import EtcdCluster
from tools.tcp_proxy import TcpProxy

PREFIXES = [service_prefix("api-gateway"), GLOBAL_PREFIX]
FEATURES = [f"/config/services/api-gateway/features/chaos-{i}" for i in range(8)]
MAINTENANCE = "/config/global/maintenance-mode"


@dataclass
class ChaosReport:
    seconds: float
    changes: int
    write_errors: int
    faults: Counter
    max_lag_seconds: float
    lag_p50_seconds: float
    lag_p99_seconds: float
    final_catch_up_seconds: float
    updates_lost: int
    revisions_went_backwards: int
    final_revision: int
    mismatches: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.updates_lost == 0 and self.revisions_went_backwards == 0

    def lines(self) -> list[str]:
        faults = ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items())) or "none"
        return [
            f"duration            : {self.seconds:.1f} s",
            f"changes made        : {self.changes} writes acknowledged ({self.write_errors} refused during faults, retried)",
            f"faults injected     : {sum(self.faults.values())} ({faults})",
            f"longest lag         : {self.max_lag_seconds * 1000:.0f} ms (write acknowledged -> snapshot at or past it;"
            f" p50 {self.lag_p50_seconds * 1000:.1f} ms, p99 {self.lag_p99_seconds * 1000:.0f} ms)",
            f"final catch-up      : {self.final_catch_up_seconds * 1000:.0f} ms (all healed -> snapshot equals etcd)",
            f"revisions backwards : {self.revisions_went_backwards}",
            f"updates lost        : {self.updates_lost}",
            f"final revision      : {self.final_revision}",
        ]


class _Writer(threading.Thread):
    def __init__(self, endpoints: str, rand: random.Random) -> None:
        super().__init__(name="chaos-writer", daemon=True)
        self.client = EtcdClient(Settings.from_env({"ETCD_ENDPOINTS": endpoints, "ETCD_REQUEST_TIMEOUT_SECONDS": "1"}))
        self.rand = rand
        self.stop = threading.Event()
        self.acks: list[tuple[int, float]] = []  # (revision, acknowledged at)
        self.errors = 0

    def _change(self) -> dict[str, str | None]:
        r = self.rand.random()
        if r < 0.35:
            return {RATE_LIMIT: str(self.rand.randint(1, 10_000))}
        if r < 0.7:
            return {self.rand.choice(FEATURES): self.rand.choice(["true", "false"])}
        if r < 0.8:
            return {self.rand.choice(FEATURES): None}
        if r < 0.85:
            return {MAINTENANCE: self.rand.choice(["true", "false"])}
        keys = self.rand.sample(FEATURES, 3)
        return {**{k: self.rand.choice(["true", "false", None]) for k in keys},
                RATE_LIMIT: str(self.rand.randint(1, 10_000))}

    def run(self) -> None:
        while not self.stop.is_set():
            items = self._change()
            try:
                revision = self.client.put_many(items, timeout=1)
                self.acks.append((revision, time.monotonic()))
            except EtcdError:
                self.errors += 1
                self.client.rotate()
                self.stop.wait(0.01)


class _Driver(threading.Thread):
    def __init__(self, cluster: EtcdCluster, proxies: list[TcpProxy], rand: random.Random) -> None:
        super().__init__(name="chaos-driver", daemon=True)
        self.cluster, self.proxies, self.rand = cluster, proxies, rand
        self.stop = threading.Event()
        self.faults: Counter = Counter()
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.wait(self.rand.uniform(0.2, 0.8)):
            try:
                self._one_fault()
            except Exception as exc:  # a fault that could not be injected is reported, not fatal
                self.errors.append(repr(exc))

    def _one_fault(self) -> None:
        kind = self.rand.choice(["cut", "stall", "restart", "compact"])
        i = self.rand.randrange(len(self.proxies))
        if kind == "cut":
            self.proxies[i].cut()
            self.stop.wait(self.rand.uniform(0.2, 1.5))
            self.proxies[i].heal()
        elif kind == "stall":
            self.proxies[i].stall()
        elif kind == "restart":
            member = self.cluster.members[i]
            if not all(m.running() for m in self.cluster.members):
                return
            member.kill()
            self.stop.wait(self.rand.uniform(0.2, 1.0))
            member.initial_cluster_state = "existing"
            member.start(wait=False)
        elif kind == "compact":
            member = self.cluster.running_member()
            client = EtcdClient(Settings.from_env({"ETCD_ENDPOINTS": member.endpoint}))
            try:
                revision, _ = client.list_range(b"/", b"/", timeout=1)
                client.compact(revision, timeout=2)
            finally:
                client.close()
        self.faults[kind] += 1


def run_chaos(seconds: float = 60.0, min_changes: int = 1000, seed: int | None = None,
              base_dir: str | None = None, log=print) -> ChaosReport:
    seed = seed if seed is not None else random.randrange(1 << 30)
    log(f"chaos: seed {seed}, {seconds:.0f} s, at least {min_changes} changes")
    rand = random.Random(seed)
    base_dir = base_dir or tempfile.mkdtemp(prefix="chaos-")
    cluster = EtcdCluster(3, base_dir=base_dir).start()
    proxies = [TcpProxy(m.client_port).start() for m in cluster.members]
    settings = Settings.from_env({
        "ETCD_ENDPOINTS": ",".join(p.endpoint for p in proxies),
        "ETCD_DEAD_STREAM_SECONDS": "1.5",
        "ETCD_REQUEST_TIMEOUT_SECONDS": "1",
    })
    watcher = ConfigWatcher(lambda: EtcdSource(settings, PREFIXES), PREFIXES, settings)
    publishes: list[tuple[int, float]] = []
    original_publish = watcher.store.publish

    def recording_publish(snapshot: Snapshot, restore: bool = False) -> bool:
        ok = original_publish(snapshot, restore=restore)
        if ok:
            publishes.append((snapshot.revision, time.monotonic()))
        return ok

    watcher.store.publish = recording_publish
    writer = _Writer(",".join(m.endpoint for m in cluster.members), rand)
    driver = _Driver(cluster, proxies, random.Random(rand.random()))
    started = time.monotonic()
    try:
        watcher.start()
        if not watcher.wait_synced(10):
            raise RuntimeError("watcher never synced")
        writer.start()
        driver.start()
        while time.monotonic() - started < seconds or len(writer.acks) < min_changes:
            time.sleep(0.1)
            if time.monotonic() - started > seconds * 5 + 60:
                raise RuntimeError(f"only {len(writer.acks)} changes in {seconds * 5 + 60:.0f} s")
        driver.stop.set()
        driver.join(10)
        writer.stop.set()
        writer.join(10)
        elapsed = time.monotonic() - started
        # Heal everything, then measure how long the watcher takes to equal etcd.
        for p in proxies:
            p.heal()
        for m in cluster.members:
            if not m.running():
                m.initial_cluster_state = "existing"
                m.start(wait=False)
        for m in cluster.members:
            m.wait_healthy(30)
        healed = time.monotonic()
        client = EtcdClient(Settings.from_env({"ETCD_ENDPOINTS": cluster.endpoints}))
        start, end = covering_range(PREFIXES)
        final_revision, kvs = client.list_range(start, end, timeout=5)
        deadline = healed + 60
        while watcher.store.current.revision < final_revision and time.monotonic() < deadline:
            time.sleep(0.005)
        catch_up = time.monotonic() - healed
        expected, _ = Snapshot.defaults(PREFIXES).relisted(final_revision, kvs)
        current = watcher.store.current
        mismatches = []
        for key in set(expected.values) | set(current.values):
            if expected.values.get(key) != current.values.get(key):
                mismatches.append((key, expected.values.get(key), current.values.get(key)))
        for name in set(expected.features) | set(current.features):
            if expected.features.get(name) != current.features.get(name):
                mismatches.append((name, expected.features.get(name), current.features.get(name)))
        if current.revision < final_revision:
            mismatches.append(("revision", final_revision, current.revision))
        backwards = sum(1 for a, b in zip(publishes, publishes[1:]) if b[0] < a[0])
        lags = []
        i = 0  # acks and publishes are both in revision order: one pass over each
        for revision, acked in sorted(writer.acks):
            while i < len(publishes) and publishes[i][0] < revision:
                i += 1
            seen = publishes[i][1] if i < len(publishes) else time.monotonic()
            lags.append(max(0.0, seen - acked))
        lags.sort()
        max_lag = lags[-1] if lags else 0.0
        if driver.errors:
            log(f"chaos: {len(driver.errors)} faults could not be injected: {driver.errors[:3]}")
        return ChaosReport(
            seconds=elapsed, changes=len(writer.acks), write_errors=writer.errors, faults=driver.faults,
            max_lag_seconds=max_lag, lag_p50_seconds=lags[len(lags) // 2] if lags else 0.0,
            lag_p99_seconds=lags[int(len(lags) * 0.99)] if lags else 0.0, final_catch_up_seconds=catch_up, updates_lost=len(mismatches),
            revisions_went_backwards=backwards, final_revision=final_revision, mismatches=mismatches,
        )
    finally:
        driver.stop.set()
        writer.stop.set()
        watcher.stop()
        for p in proxies:
            p.close()
        cluster.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--min-changes", type=int, default=1000)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.ERROR)  # the watcher's routine reconnect warnings are expected here
    report = run_chaos(args.seconds, args.min_changes, args.seed)
    print("\n".join(report.lines()))
    if report.mismatches:
        print("mismatches:", report.mismatches[:10])
    print("RESULT:", "PASS" if report.ok else "FAIL")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
