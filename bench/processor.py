"""`make bench`, processor section: what the live pool size buys, and how fast it follows etcd.

Three measurements, in one run, against `python -m processor` (gunicorn, one worker):

1. throughput of POST /v1/jobs at threads=1 and threads=2 (alternating rounds on the
   same server, closed-loop clients; the ratio of paired rounds shows the pool uses
   the second core: hashlib and zlib release the GIL);
2. resize: put of `threads` (start) → `/_status` shows the pool running at the new
   size (`threads` and live `workers` both equal to it), over keep-alive polling;
3. cross-service skew: single-txn changes of a gateway key and `threads`; for each
   revision, the time between the gateway and the processor applying it.

The skew is measured from apply times, not by polling. Each service's watcher logs
"applied revision N" right after publishing it: one JSON line with a wall-clock time
to the millisecond. Both processes run on this machine, so on one clock, and the
difference of two truncated milliseconds is exact to ±1 ms. Nothing is added to
either service's load. (Polling both `/_status` back to back was tried first: on
2 cores the two pollers kept both services and the bench busy, and the skew measured
was mostly the pollers' own scheduling delay — p99 61 ms in the log times, 369 ms as
seen by the pollers.)
"""

from __future__ import annotations

import datetime
import json
import os
import random
import statistics
import threading
import time
from dataclasses import dataclass

from bench.clients import Poller
from config_watch import RATE_LIMIT, THREADS

# The job of the throughput rounds: 256 KiB of random bytes, 4 rounds, ~35 ms on one
# core of this machine: large against a request's own cost (~1 ms), so the figure is
# the pool's, not the HTTP stack's.
JOB_BYTES = 256 * 1024
JOB_ROUNDS = 4
# Closed-loop clients: more than the largest pool measured, so a worker never waits for work.
CLIENTS = 4
# A resize or a change not visible this long after its put counts as lost.
CHANGE_TIMEOUT = 5.0


class Client(Poller):
    """JSON answers over one keep-alive connection."""

    def __init__(self, port: int) -> None:
        super().__init__(port, timeout=30)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
        status, _, data = self.send(method, path, body)
        return status, json.loads(data)


def applied_times(log_path: str) -> dict[int, float]:
    """revision → wall-clock time of the service's "applied revision" log line (ms)."""
    out: dict[int, float] = {}
    with open(log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if '"applied revision' not in line:
                continue
            try:
                entry = json.loads(line)
                when = datetime.datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
                out[int(entry["revision"])] = when.replace(tzinfo=datetime.timezone.utc).timestamp()
            except (ValueError, KeyError, TypeError):
                continue
    return out


@dataclass
class ProcessorBench:
    """The processor section; `bench` is bench.run's Bench (etcd, client, process cleanup)."""

    bench: object
    seconds: float = 3.0
    rounds: int = 5
    # Enough samples that a p99 is not simply the worst one (nearest rank: 60 → the max).
    resizes: int = 200
    changes: int = 200

    def start_processor(self, name: str):
        from tools.processor_server import ProcessorServer

        server = ProcessorServer({"ETCD_ENDPOINTS": self.bench.etcd.endpoint},
                                 log_path=os.path.join(self.bench.logdir, f"{name}.log"))
        self.bench.stack.callback(server.stop)
        return server.start()

    def set_threads(self, status: Client, threads: int) -> None:
        self.bench.client.put(THREADS, str(threads), 5)
        deadline = time.monotonic() + CHANGE_TIMEOUT
        while True:
            _, s = status.request("GET", "/_status")
            if s["pool"]["threads"] == threads and s["pool"]["workers"] == threads:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"processor: pool never reached {threads} threads: {s['pool']}")
            time.sleep(0.005)

    # --- 1: throughput at threads=1 and =2 ----------------------------------------

    def throughput_round(self, port: int, threads: int, pids: list[int]) -> tuple[float, float]:
        """Jobs per second, and the server's CPU use meanwhile (cores: 1.0 = one core busy)."""
        from bench.run import cpu_seconds

        body = os.urandom(JOB_BYTES)
        stop = threading.Event()
        counting = threading.Event()
        done = [0] * CLIENTS
        errors: list[str] = []

        def client(i: int) -> None:
            c = Client(port)
            try:
                while not stop.is_set():
                    status, answer = c.request("POST", f"/v1/jobs?rounds={JOB_ROUNDS}", body)
                    if status != 200 or answer["threads"] != threads:
                        errors.append(f"{status} {answer}")
                        return
                    if counting.is_set():
                        done[i] += 1
            finally:
                c.close()

        workers = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in workers:
            t.start()
        time.sleep(0.5)  # warm-up: the pool full, connections open
        counting.set()
        t0 = time.perf_counter()
        cpu0 = cpu_seconds(pids)
        time.sleep(self.seconds)
        n = sum(done)
        cpu1 = cpu_seconds(pids)
        elapsed = time.perf_counter() - t0
        stop.set()
        for t in workers:
            t.join(60)
        if errors:
            raise RuntimeError(f"processor throughput: {errors[:3]}")
        return n / elapsed, (cpu1 - cpu0) / elapsed

    def throughput(self, server) -> dict:
        status = Client(server.port)
        rates: dict[int, list[float]] = {1: [], 2: []}
        util: dict[int, list[float]] = {1: [], 2: []}
        pids = server.pids()
        for r in range(self.rounds):
            for threads in ((1, 2) if r % 2 == 0 else (2, 1)):
                self.set_threads(status, threads)
                rate, cores = self.throughput_round(server.port, threads, pids)
                rates[threads].append(rate)
                util[threads].append(cores)
        status.close()
        paired = statistics.median(b / a for a, b in zip(rates[1], rates[2]))
        return {"rates": rates, "t1": statistics.median(rates[1]), "t2": statistics.median(rates[2]),
                "ratio": paired, "util": {k: statistics.median(v) for k, v in util.items()},
                "load": os.getloadavg()[0]}

    # --- 2: put → pool at the new size --------------------------------------------

    def resize(self, server) -> dict:
        # The pool stamps (wall clock) the moment its live workers reach the new size;
        # the bench stamps the put's start on the same clock. /_status is read every few
        # ms only to collect that stamp, so polling adds neither load nor resolution error.
        status = Client(server.port)
        rng = random.Random(8)
        current = status.request("GET", "/_status")[1]["pool"]["threads"]
        times, put_rtt, lost, settled = [], [], 0, {}
        for _ in range(self.resizes):
            target = rng.choice([n for n in range(1, 9) if n != current])
            time.sleep(rng.uniform(0.01, 0.03))
            wall = time.time()
            t0 = time.perf_counter()
            revision = self.bench.client.put(THREADS, str(target), 5)
            put_rtt.append(time.perf_counter() - t0)
            while True:
                pool = status.request("GET", "/_status")[1]["pool"]
                if pool["revision"] >= revision and pool["threads"] == target and pool["workers"] == target:
                    times.append(max(0.0, pool["settled_at"] - wall))
                    settled[revision] = (wall, pool["settled_at"])
                    break
                if time.perf_counter() - t0 > CHANGE_TIMEOUT:
                    lost += 1
                    break
                time.sleep(0.005)
            current = target
        status.close()
        # Where the time goes, from the processor's "applied revision" log lines (±1 ms):
        # put start → the watcher applied it, and applied → the pool at the new size.
        applied = applied_times(server.log_path)
        to_applied = [applied[r] - w for r, (w, _) in settled.items() if r in applied]
        to_settled = [s - applied[r] for r, (_, s) in settled.items() if r in applied]
        return {"times": times, "put": put_rtt, "lost": lost, "to_applied": to_applied, "to_settled": to_settled}

    # --- 3: one txn, two services ---------------------------------------------------

    def skew(self, processor) -> dict:
        gateway = self.bench.server("gateway-skew", workers=1)
        gateway.start()
        status = {"gateway": Client(gateway.port), "processor": Client(processor.port)}
        # The gateway's watcher starts with its first request; both must be watching (not
        # still opening the stream) before a change counts, and a few go untimed first.
        deadline = time.monotonic() + CHANGE_TIMEOUT
        while not all(c.request("GET", "/_status")[1]["connected"] for c in status.values()):
            if time.monotonic() > deadline:
                raise RuntimeError("skew: a service's watcher never connected")
            time.sleep(0.01)
        revisions = []
        rng = random.Random(12)
        high = int(self.bench.client.list_range(RATE_LIMIT.encode(), b"", 5)[1][0].value)
        warmup = 5
        try:
            for i in range(-warmup, self.changes):
                time.sleep(rng.uniform(0.02, 0.04))
                revision = self.bench.client.put_many(
                    {RATE_LIMIT: str(high - 1 - i % 2), THREADS: str(2 + i % 2)}, 5)
                if i >= 0:
                    revisions.append(revision)
            deadline = time.monotonic() + CHANGE_TIMEOUT
            while time.monotonic() < deadline and not all(
                    c.request("GET", "/_status")[1]["revision"] >= revisions[-1] for c in status.values()):
                time.sleep(0.01)
            for c in status.values():
                c.close()
        finally:
            self.bench.client.put(RATE_LIMIT, str(high), 5)
            gateway.stop()
        logged = {"gateway": applied_times(gateway.log_path), "processor": applied_times(processor.log_path)}
        skews, missing, signed = [], 0, []
        for r in revisions:
            # A watcher that received several revisions in one response applies them
            # together and logs the last: revision r took effect with the first one >= r.
            g, p = (min((t for rev, t in logged[n].items() if rev >= r), default=None)
                    for n in ("gateway", "processor"))
            if g is None or p is None:
                missing += 1
            else:
                skews.append(abs(g - p))
                signed.append(g - p)
        later = sum(1 for x in signed if x > 0)
        return {"n": len(revisions), "applied": skews, "missing": missing, "gateway_later": later,
                "processor_later": sum(1 for x in signed if x < 0)}

    def run(self) -> dict:
        server = self.start_processor("processor")
        try:
            out = {"throughput": self.throughput(server), "resize": self.resize(server), "skew": self.skew(server)}
        finally:
            server.stop()
        return out


def report(res: dict, pct, ms, verdict) -> tuple[list[tuple], list[str]]:
    """Rows for the results table and detail lines, in bench.run's format."""
    rows, details = [], []
    t = res["throughput"]
    rows.append((f"Processor throughput, POST /v1/jobs ({JOB_BYTES // 1024} KiB × {JOB_ROUNDS} rounds, "
                 f"{CLIENTS} clients)", f"threads=2 **{t['t2']:.1f} jobs/s**", f"threads=1 {t['t1']:.1f} jobs/s",
                 f"{t['ratio']:.2f}× (median of paired rounds)", f"> 1 on {os.cpu_count()} cores",
                 verdict(t["ratio"] > 1.3)))
    details.append("- Processor throughput per round (jobs/s): threads=1 "
                   + ", ".join(f"{x:.1f}" for x in t["rates"][1]) + "; threads=2 "
                   + ", ".join(f"{x:.1f}" for x in t["rates"][2])
                   + f"; server CPU use, median over rounds: threads=1 {t['util'][1]:.2f} cores, threads=2 "
                   f"{t['util'][2]:.2f} cores; load average after the rounds {t['load']:.2f} on {os.cpu_count()} cores")
    r = res["resize"]
    rows.append((f"Processor resize, put → pool at new size (n={len(r['times']) + r['lost']})",
                 f"p50 {ms(pct(r['times'], 50))} ms, p99 **{ms(pct(r['times'], 99))} ms**",
                 f"put round trip p99 {ms(pct(r['put'], 99))} ms", "", "p99 ≤ 20 ms",
                 verdict(pct(r["times"], 99) <= 0.020 and r["lost"] == 0)))
    details.append(f"- Processor resize: p50/p90/p99/max {ms(pct(r['times'], 50))}/{ms(pct(r['times'], 90))}/"
                   f"{ms(pct(r['times'], 99))}/{ms(max(r['times'], default=float('inf')))} ms; "
                   f"put round trip p50 {ms(pct(r['put'], 50))} ms; {r['lost']} lost; split by the processor's "
                   f"\"applied revision\" log line (±1 ms): put start → applied p50/p99 {ms(pct(r['to_applied'], 50))}/"
                   f"{ms(pct(r['to_applied'], 99))} ms, applied → pool at the new size p50/p99 "
                   f"{ms(pct(r['to_settled'], 50))}/{ms(pct(r['to_settled'], 99))} ms")
    s = res["skew"]
    rows.append((f"Cross-service skew, one txn → gateway and processor apply it (n={s['n']})",
                 f"p50 {ms(pct(s['applied'], 50))} ms, p99 **{ms(pct(s['applied'], 99))} ms** (±1 ms)",
                 "", "",
                 "p99 ≤ 10 ms", verdict(pct(s["applied"], 99) <= 0.010 and s["missing"] == 0)))
    details.append(f"- Cross-service skew: applied (log times, ±1 ms) p50/p90/p99/max {ms(pct(s['applied'], 50))}/"
                   f"{ms(pct(s['applied'], 90))}/{ms(pct(s['applied'], 99))}/"
                   f"{ms(max(s['applied'], default=float('inf')))} ms over {len(s['applied'])} revisions; "
                   f"{s['missing']} revisions missing from a log; the gateway applied later in {s['gateway_later']}, "
                   f"the processor in {s['processor_later']}, the same millisecond in the rest")
    return rows, details
