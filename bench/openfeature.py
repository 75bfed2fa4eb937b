"""The OpenFeature provider's figures against a local etcd, printed as Markdown.

    .venv/bin/python -m bench.openfeature [--evaluations 20000] [--changes 100]

1. evaluation cost: one `client.get_boolean_value(...)` through the SDK (hooks, status
   check, provider), the provider's `resolve_boolean_details` alone, and the same
   feature read from the snapshot directly (`watcher.ensure_fresh().feature(name)`),
   alternating rounds, medians per call; the same for an experiment's variant
   (`get_string_value` vs `config_watch.assign`).
2. change event: put start → PROVIDER_CONFIGURATION_CHANGED handler called, over
   `--changes` changes, vs put start → the snapshot published in the watcher's store
   as this process's main thread sees it (the floor the provider's wake-up and the
   SDK's handler dispatch add to; both wake on the same publish, so the event may
   come first).

Every process started (etcd) is stopped on exit.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time

from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEvent

import config_watch
from config_watch import EXPERIMENTS, FEATURES, GLOBAL_PREFIX, ConfigWatcher, Settings, service_prefix
from config_watch._source import EtcdSource
from config_watch.openfeature import EtcdProvider
from tools.etcd_server import EtcdServer

PREFIXES = [service_prefix("api-gateway"), GLOBAL_PREFIX]
# Rounds per evaluation figure: alternating SDK and direct rounds, so a noisy
# neighbour on the shared machine hits both alike.
ROUNDS = 10


def per_call_us(fn, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6


def evaluation_costs(provider: EtcdProvider, watcher: ConfigWatcher, evaluations: int) -> list[tuple]:
    client = api.get_client()
    context = EvaluationContext(targeting_key="client-42")
    cases = [
        ("boolean feature", lambda: client.get_boolean_value("new-user-onboarding", False),
         lambda: provider.resolve_boolean_details("new-user-onboarding", False),
         lambda: watcher.ensure_fresh().feature("new-user-onboarding")),
        ("experiment variant", lambda: client.get_string_value("checkout", "control", context),
         lambda: provider.resolve_string_details("checkout", "control", context),
         lambda: config_watch.assign(watcher.ensure_fresh(), "checkout", "client-42")),
    ]
    rows = []
    for name, *ways in cases:
        samples: list[list[float]] = [[] for _ in ways]
        for _ in range(ROUNDS):
            for way, out in zip(ways, samples):
                out.append(per_call_us(way, evaluations // ROUNDS))
        rows.append((name, *(statistics.median(s) for s in samples)))
    return rows


def change_latencies(etcd: EtcdServer, watcher: ConfigWatcher, changes: int) -> tuple[list[float], list[float]]:
    client = config_watch.EtcdClient(Settings.from_env({"ETCD_ENDPOINTS": etcd.endpoint}))
    events: dict[int, float] = {}
    arrived = threading.Condition()

    def on_change(details) -> None:
        with arrived:
            events[details.metadata["revision"]] = time.perf_counter()
            arrived.notify_all()

    api.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, on_change)
    to_event, to_publish = [], []
    try:
        for i in range(changes):
            started = time.perf_counter()
            revision = client.put(FEATURES + "bench-flag", "true" if i % 2 == 0 else "false", timeout=5)
            if watcher.store.wait_for(lambda s: s.revision >= revision, 5) is None:
                raise RuntimeError(f"revision {revision} not published within 5 s")
            to_publish.append(time.perf_counter() - started)
            with arrived:
                if not arrived.wait_for(lambda: revision in events, 5):
                    raise RuntimeError(f"no change event for revision {revision} within 5 s")
            to_event.append(events[revision] - started)
            time.sleep(0.02)  # a pause, so each change is measured from an idle provider
    finally:
        client.close()
    return to_event, to_publish


def quantiles_ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return f"{p(0.5):.2f} / {p(0.95):.2f} / {p(0.99):.2f} / {ordered[-1] * 1000:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evaluations", type=int, default=20_000)
    parser.add_argument("--changes", type=int, default=100)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-openfeature-") as tmp, \
            EtcdServer(data_dir=f"{tmp}/etcd", log_path=f"{tmp}/etcd.log") as etcd:
        etcd.etcdctl("put", FEATURES + "new-user-onboarding", "true")
        etcd.etcdctl("put", EXPERIMENTS + "checkout", "control:50,treatment:50")
        settings = Settings.from_env({"ETCD_ENDPOINTS": etcd.endpoint})
        watcher = ConfigWatcher(lambda: EtcdSource(settings, PREFIXES), PREFIXES, settings).start()
        try:
            provider = EtcdProvider(watcher)
            api.set_provider_and_wait(provider)
            costs = evaluation_costs(provider, watcher, args.evaluations)
            to_event, to_publish = change_latencies(etcd, watcher, args.changes)
        finally:
            api.shutdown()
            watcher.stop()
    print("| evaluation, µs/call | through the SDK client | the provider alone | snapshot read directly |")
    print("|---|---|---|---|")
    for name, sdk, alone, direct in costs:
        print(f"| {name} | {sdk:.1f} | {alone:.1f} | {direct:.1f} |")
    print()
    print(f"| {args.changes} changes, ms (p50 / p95 / p99 / max) | |")
    print("|---|---|")
    print(f"| put start → snapshot published (floor) | {quantiles_ms(to_publish)} |")
    print(f"| put start → CONFIGURATION_CHANGED handler | {quantiles_ms(to_event)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
