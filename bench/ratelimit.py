"""The fleet-wide rate limit: how close admitted traffic comes to the limit, and what
membership costs etcd.

    .venv/bin/python -m bench.ratelimit            (also run by `make bench`)

1. Accuracy, simulated with the gateway's own `RateLimiter` on a virtual clock: one
   client sends Poisson traffic at 3x the limit, each request to one of N instances
   picked at random (a load balancer's spread), each instance holding its share of the
   limit (the workers of an instance share one bucket table: one limiter here). Admitted / allowed, allowed = rate x window + burst. Every sharing scheme
   tried is shown; the gateway uses the last one.
2. Membership write rate, against a real etcd: one process plays 100 and 1,000
   members (`config_watch.Membership`, renewals driven by simulated requests), and
   etcd's own counters give the writes (raft proposals) and the lease renewals each
   second while the fleet is steady, and what a join costs.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import urllib.request
from typing import Callable

from gateway.ratelimit import SLACK_TOKENS, RateLimiter, Share, process_share

RATE, BURST, LOAD = 60, 5, 3.0


# --- 1. accuracy ------------------------------------------------------------------------


def divide_both(rate: int, burst: int, members: int) -> Share:
    """Rate / N and burst / N (at least 1): the plain split (Envoy's local cluster limit)."""
    share = max(1.0, burst / members) if members > 1 else float(burst)
    return Share(rate / 60.0 / members, share, share)


def full_burst(rate: int, burst: int, members: int) -> Share:
    """Rate / N, the whole burst in every process: long-run exact, N bursts at once."""
    return Share(rate / 60.0 / members, float(burst), float(burst))


def two_slack(rate: int, burst: int, members: int) -> Share:
    """Rate / N, burst / N plus two slack tokens."""
    share = process_share(rate, burst, members)
    return share._replace(capacity=share.capacity + 1.0) if members > 1 else share


def slack_only(rate: int, burst: int, members: int) -> Share:
    """Rate / N, burst / N plus one slack token, without the random part of the first fill."""
    return process_share(rate, burst, members)


# (label, share function, random part of a new bucket's first fill)
SCHEMES: list[tuple[str, Callable[[int, int, int], Share], bool]] = [
    ("rate/N, burst/N (min 1)", divide_both, False),
    ("rate/N, whole burst per instance", full_burst, False),
    (f"rate/N, burst/N + {SLACK_TOKENS:g} slack token", slack_only, False),
    ("rate/N, burst/N + 2 slack tokens, randomized first fill", two_slack, True),
    (f"rate/N, burst/N + {SLACK_TOKENS:g} slack token, randomized first fill (in use)", process_share, True),
]


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def admitted_ratio(members: int, share: Callable, randomized: bool, seconds: float, seed: int,
                   rate: int = RATE, burst: int = BURST, load: float = LOAD) -> float:
    rnd = random.Random(seed)
    clock = VirtualClock()
    rounding = rnd.random if randomized else (lambda: 0.0)
    processes = [RateLimiter(clock=clock, share=share, rounding=rounding) for _ in range(members)]
    arrivals_per_second = load * rate / 60.0
    admitted = 0
    while True:
        clock.now += rnd.expovariate(arrivals_per_second)
        if clock.now > seconds:
            break
        admitted += rnd.choice(processes).check("client", rate, burst, members=members).allowed
    return admitted / (rate * seconds / 60.0 + burst)


def accuracy(windows: tuple[tuple[float, int], ...] = ((30.0, 200), (600.0, 20)),
             members: tuple[int, ...] = (1, 2, 4), load: float = LOAD) -> list[dict]:
    """Mean admitted / allowed per scheme, N and window (seconds, runs)."""
    rows = []
    for label, share, randomized in SCHEMES:
        row = {"scheme": label, "share": share, "figures": {}}
        for n in members:
            for seconds, runs in windows:
                ratios = [admitted_ratio(n, share, randomized, seconds, seed, load=load) for seed in range(runs)]
                row["figures"][(n, seconds)] = (statistics.fmean(ratios), statistics.pstdev(ratios))
        rows.append(row)
    return rows


def accuracy_lines(rows: list[dict], load: float = LOAD) -> list[str]:
    keys = list(rows[0]["figures"])
    out = [f"Admitted / allowed (allowed = rate × window + burst), one client at {load:g}× the limit "
           f"(rate {RATE}/min, burst {BURST}), requests spread at random over N processes; "
           f"mean ± standard deviation over runs:", "",
           "| scheme | " + " | ".join(f"N={n}, {s:g} s" for n, s in keys) + " | burst after idle, N=4 |",
           "|---|" + "---|" * (len(keys) + 1)]
    for row in rows:
        cells = [f"{m:.2f} ± {sd:.2f}" for m, sd in (row["figures"][k] for k in keys)]
        # What a client that was idle long enough for every bucket to fill may send at once.
        fleet_burst = 4 * row["share"](RATE, BURST, 4).capacity
        out.append(f"| {row['scheme']} | " + " | ".join(cells) + f" | {fleet_burst:g} (configured {BURST}) |")
    return out


# --- 2. membership write rate --------------------------------------------------------------


def etcd_counters(client_url: str) -> dict[str, float]:
    """The etcd counters that count writes and lease traffic (its /metrics page)."""
    wanted = ("etcd_server_proposals_committed_total", "etcd_mvcc_put_total", "etcd_mvcc_delete_total",
              "etcd_debugging_mvcc_put_total", "etcd_debugging_mvcc_delete_total",
              "grpc_server_handled_total")
    out: dict[str, float] = {}
    with urllib.request.urlopen(client_url + "/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            base = name.split("{", 1)[0]
            if base in wanted:
                if base == "grpc_server_handled_total":
                    if 'grpc_method="LeaseKeepAlive"' not in name:
                        continue
                    base = "lease_keepalives"
                out[base] = out.get(base, 0.0) + float(value)
    return out


def membership_cost(endpoint: str, client_url: str, members: int, ttl: float = 15.0,
                    steady_seconds: float = 12.0, request_interval: float = 0.5) -> dict:
    """Register `members` simulated processes, then keep them alive with requests."""
    from config_watch import Membership, Settings

    settings = Settings.from_env({"ETCD_ENDPOINTS": endpoint, "INSTANCE_TTL_SECONDS": str(ttl)})
    fleet = [Membership(settings, "api-gateway", watch=False) for _ in range(members)]
    try:
        before_join = etcd_counters(client_url)
        started = time.monotonic()
        for m in fleet:
            m.touch()
        while sum(m.counters["registrations"] for m in fleet) < members:
            if time.monotonic() - started > 120:
                raise RuntimeError("members did not register within 120 s")
            time.sleep(0.05)
        join_seconds = time.monotonic() - started
        after_join = etcd_counters(client_url)
        renewals_before = sum(m.counters["renewals"] for m in fleet)
        steady_start = time.monotonic()
        while time.monotonic() - steady_start < steady_seconds:
            tick = time.monotonic()
            for m in fleet:  # every member serves a request every `request_interval`
                m.touch()
            time.sleep(max(0.0, request_interval - (time.monotonic() - tick)))
        elapsed = time.monotonic() - steady_start
        after_steady = etcd_counters(client_url)
        renewals = sum(m.counters["renewals"] for m in fleet) - renewals_before
        failures = sum(m.counters["failures"] for m in fleet)
    finally:
        for m in fleet:
            m.close()

    def delta(a: dict, b: dict, name: str) -> float:
        return b.get(name, 0.0) - a.get(name, 0.0)

    puts = "etcd_mvcc_put_total" if "etcd_mvcc_put_total" in after_steady else "etcd_debugging_mvcc_put_total"
    proposals = "etcd_server_proposals_committed_total"
    return {
        "members": members, "ttl": ttl, "join_seconds": join_seconds,
        "join_proposals_per_member": delta(before_join, after_join, proposals) / members,
        "steady_seconds": elapsed,
        "steady_proposals_per_second": delta(after_join, after_steady, proposals) / elapsed,
        "steady_puts_per_second": delta(after_join, after_steady, puts) / elapsed,
        "steady_renewals_per_second": renewals / elapsed,
        "steady_keepalives_seen_by_etcd": delta(after_join, after_steady, "lease_keepalives"),
        "failures": failures,
    }


def membership_lines(results: list[dict]) -> list[str]:
    out = ["Membership's cost to etcd (one process simulating the members against a real etcd; each member "
           "serves a request every 0.5 s; TTL 15 s, so renewals every 5 s):", "",
           "| members | join: raft proposals per member | steady: raft proposals/s (writes) | steady: puts/s | "
           "steady: lease renewals/s | failures |", "|---|---|---|---|---|---|"]
    for r in results:
        out.append(f"| {r['members']} | {r['join_proposals_per_member']:.2f} | "
                   f"{r['steady_proposals_per_second']:.2f} | {r['steady_puts_per_second']:.2f} | {r['steady_renewals_per_second']:.1f} | {r['failures']} |")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ratelimit", description=__doc__.split("\n")[0])
    p.add_argument("--members", default="100,1000", help="fleet sizes simulated against etcd")
    p.add_argument("--no-etcd", action="store_true", help="accuracy only")
    args = p.parse_args(argv)
    print("\n".join(accuracy_lines(accuracy())))
    if args.no_etcd:
        return 0
    import tempfile

    from tools.etcd_server import EtcdServer

    with tempfile.TemporaryDirectory() as tmp, EtcdServer(data_dir=tmp + "/data", log_path=tmp + "/etcd.log") as etcd:
        results = [membership_cost(etcd.endpoint, etcd.client_url, int(n)) for n in args.members.split(",")]
    print()
    print("\n".join(membership_lines(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
