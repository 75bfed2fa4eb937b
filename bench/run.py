"""`make bench`: the gateway's figures against a local etcd, measured in one run.

    .venv/bin/python -m bench.run [--changes 200] [--only propagation,load,throughput,cold]

Four measurements, each beside a baseline measured in the same run:

1. propagation (idle): put start → first HTTP response carrying the new value, over
   `--changes` changes; floor = a bare etcd watch's latency (put start → event, in this
   process) + the gateway's own HTTP round trip, both sampled in the same iterations.
2. propagation under load: the same while a load generator saturates the gateway; the
   floor is sampled under that same load.
3. request cost: closed-loop throughput of the gateway vs a bare functions-framework
   handler (bench/bare/main.py), same server settings, alternating rounds, medians.
4. cold start: process start (Popen) → first response carrying etcd's revision, vs the
   bare handler's Popen → first response; medians.
5. processor (bench/processor.py): job throughput at threads=1 vs 2, put of threads →
   pool at the new size, and the skew between gateway and processor applying one txn.
6. forwarding (bench/forwarding.py): POST /v1/jobs through the gateway vs straight to the
   processor, alternating on two keep-alive connections, idle and under load.
7. rate limit across processes (bench/ratelimit.py): admitted / allowed for one client
   at 3x the limit spread at random over N = 1, 2, 4 processes, for each sharing scheme
   tried; and the etcd writes and lease renewals that 100 and 1,000 members cause.

Every server is started the way production runs it (`python -m functions_framework`,
gunicorn gthread) by tools.function_server.FunctionServer. The propagation servers run
WORKERS=1 so every response comes from the one process whose watcher is measured.

Settings (flag, or environment variable; defaults meet the issue):
  --changes        BENCH_CHANGES            200   changes measured idle
  --load-changes   BENCH_LOAD_CHANGES       200   changes measured under load
  --seconds        BENCH_SECONDS            3     length of one throughput round
  --rounds         BENCH_ROUNDS             10    throughput rounds per handler
  --cold-starts    BENCH_COLD_STARTS        5     cold starts per handler (+1 discarded)
  --load-procs     BENCH_LOAD_PROCS         2     load-generator processes
  --load-conns     BENCH_LOAD_CONNS         8     keep-alive connections per process
  --workers        BENCH_WORKERS            1     gunicorn WORKERS for throughput and cold start
                                                (propagation always runs WORKERS=1)
  --threads        BENCH_THREADS            8     gunicorn THREADS (framework default on 2 cores)
  --forward-requests BENCH_FORWARD_REQUESTS 1000  jobs sent each way (gateway, processor) per forwarding sample
  --only           BENCH_ONLY               all   comma list: propagation,load,throughput,cold,processor,forwarding,ratelimit
  --output         BENCH_OUTPUT             bench/RESULTS.md

Exit status 0 when every figure was measured (a MISS is a result, not a failure),
1 when the bench itself failed, 130 on Ctrl-C. Every process started is stopped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench.clients import Poller, WatchRecorder, request_on, try_connect
from bench.forwarding import ForwardingBench, report as forwarding_report
from bench.processor import ProcessorBench, applied_times, report as processor_report
from config_watch import RATE_LIMIT, RATE_LIMIT_BURST
from config_watch._etcd import EtcdClient
from config_watch._schema import SCHEMA
from config_watch._settings import Settings
from tools.etcd_server import EtcdServer, etcd_binaries
from tools.function_server import FunctionServer

ROOT = Path(__file__).resolve().parent.parent
# The rate limit (and burst) is set to the schema's maximum so that the load generator,
# one client identity, is never throttled; the propagation test alternates the limit
# between that maximum and one less.
HIGH = SCHEMA.spec_for(RATE_LIMIT).maximum
# A change not visible this long after its put counts as lost.
CHANGE_TIMEOUT = 5.0
PHASES = ("propagation", "load", "throughput", "cold", "processor", "forwarding", "ratelimit")


class BenchError(RuntimeError):
    pass


# --- statistics -----------------------------------------------------------------------

def pct(samples: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); inf if empty."""
    if not samples:
        return math.inf
    s = sorted(samples)
    k = max(1, math.ceil(p / 100 * len(s)))
    return s[k - 1]


def ms(seconds: float) -> str:
    return "∞" if math.isinf(seconds) else f"{seconds * 1000:.2f}"


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (0 for one that is gone)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def applied_latencies(log_path: str, put_wall: dict[int, float]) -> list[float]:
    """Diagnostic only: put start → the gateway's own "applied revision N" log record.

    The gateway's JSON log lines carry a wall-clock time to the millisecond, so these
    are ±1 ms; they tell the watcher's share of a propagation time from the polling's.
    """
    try:
        applied = applied_times(log_path)
    except OSError:
        return []
    return [when - put_wall[revision] for revision, when in applied.items() if revision in put_wall]


# --- settings -------------------------------------------------------------------------

@dataclass
class Config:
    changes: int = 200
    load_changes: int = 200
    seconds: float = 3.0
    rounds: int = 10  # the median of more alternating rounds resists a noisy neighbour
    cold_starts: int = 5
    load_procs: int = 2
    load_conns: int = 8
    workers: int = 1
    threads: int = 8
    only: tuple[str, ...] = PHASES
    output: str = str(ROOT / "bench" / "RESULTS.md")
    forward_requests: int = 1000


def parse_args(argv: list[str] | None) -> Config:
    env = os.environ
    d = Config()
    p = argparse.ArgumentParser(prog="python -m bench.run", description="Gateway benchmark (make bench).")
    p.add_argument("--changes", type=int, default=int(env.get("BENCH_CHANGES", d.changes)))
    p.add_argument("--load-changes", type=int, default=int(env.get("BENCH_LOAD_CHANGES", d.load_changes)))
    p.add_argument("--seconds", type=float, default=float(env.get("BENCH_SECONDS", d.seconds)))
    p.add_argument("--rounds", type=int, default=int(env.get("BENCH_ROUNDS", d.rounds)))
    p.add_argument("--cold-starts", type=int, default=int(env.get("BENCH_COLD_STARTS", d.cold_starts)))
    p.add_argument("--load-procs", type=int, default=int(env.get("BENCH_LOAD_PROCS", d.load_procs)))
    p.add_argument("--load-conns", type=int, default=int(env.get("BENCH_LOAD_CONNS", d.load_conns)))
    p.add_argument("--workers", type=int, default=int(env.get("BENCH_WORKERS", d.workers)))
    p.add_argument("--threads", type=int, default=int(env.get("BENCH_THREADS", d.threads)))
    p.add_argument("--only", default=env.get("BENCH_ONLY", ",".join(PHASES)))
    p.add_argument("--output", default=env.get("BENCH_OUTPUT", d.output))
    p.add_argument("--forward-requests", type=int,
                   default=int(env.get("BENCH_FORWARD_REQUESTS", d.forward_requests)))
    a = p.parse_args(argv)
    only = tuple(x.strip() for x in a.only.split(",") if x.strip())
    unknown = set(only) - set(PHASES)
    if unknown:
        p.error(f"--only: unknown phase(s) {sorted(unknown)}; choose from {','.join(PHASES)}")
    for name in ("changes", "load_changes", "rounds", "cold_starts", "load_procs", "load_conns", "workers", "threads",
                 "forward_requests"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return Config(a.changes, a.load_changes, a.seconds, a.rounds, a.cold_starts, a.load_procs, a.load_conns,
                  a.workers, a.threads, only, a.output, a.forward_requests)


# --- processes ------------------------------------------------------------------------

class LoadGen:
    """`--load-procs` bench.loadgen processes against one port (closed loop, keep-alive)."""

    def __init__(self, port: int, procs: int, conns: int, duration: float | None = None,
                 start_at: float | None = None, path: str = "/", body: str | None = None) -> None:
        self.procs: list[subprocess.Popen] = []
        cmd = [sys.executable, "-m", "bench.loadgen", "--port", str(port), "--conns", str(conns), "--path", path,
               "--start-at", repr(start_at if start_at is not None else time.time() + 0.5)]
        if body is not None:
            cmd += ["--body", body]
        if duration is not None:
            cmd += ["--duration", repr(duration)]
        for _ in range(procs):
            self.procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                               start_new_session=True))

    def result(self, timeout: float) -> dict:
        """Wait for every process (after `stop()` or the end of its duration); sum them."""
        total = {"responses": 0, "rate": 0.0, "statuses": {}, "reconnects": 0, "errors": 0, "elapsed": 0.0}
        for proc in self.procs:
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise BenchError("load generator did not finish")
            if proc.returncode != 0 or not out.strip():
                raise BenchError(f"load generator failed ({proc.returncode}): {err.decode(errors='replace')[-500:]}")
            r = json.loads(out.decode().strip().splitlines()[-1])
            total["responses"] += r["responses"]
            total["rate"] += r["responses"] / r["elapsed"] if r["elapsed"] > 0 else 0.0
            total["reconnects"] += r["reconnects"]
            total["errors"] += r["errors"]
            total["elapsed"] = max(total["elapsed"], r["elapsed"])
            for k, v in r["statuses"].items():
                total["statuses"][k] = total["statuses"].get(k, 0) + v
        return total

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()


class ProbedServer(FunctionServer):
    """A FunctionServer whose start() returns right after Popen: the caller probes."""

    def wait_listening(self, timeout: float) -> None:
        return None


@dataclass
class Bench:
    cfg: Config
    stack: ExitStack
    logdir: str
    etcd: EtcdServer | None = None
    client: EtcdClient | None = None
    results: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    load_at_start: str = ""

    # --- setup --------------------------------------------------------------------

    def start_etcd(self) -> None:
        self.etcd = EtcdServer(log_path=os.path.join(self.logdir, "etcd.log"))
        self.stack.callback(self.etcd.close)
        self.etcd.start()
        self.client = EtcdClient(Settings.from_env({"ETCD_ENDPOINTS": self.etcd.endpoint}))
        self.stack.callback(self.client.close)
        self.client.put(RATE_LIMIT, str(HIGH), 5)
        self.client.put(RATE_LIMIT_BURST, str(HIGH), 5)

    def gateway_env(self) -> dict[str, str]:
        return {"ETCD_ENDPOINTS": self.etcd.endpoint}

    def server(self, name: str, target: str = "api_gateway", source: str | None = None,
               cls=FunctionServer, workers: int | None = None) -> FunctionServer:
        env = self.gateway_env() if target == "api_gateway" else {}
        server = cls(env, workers=workers or self.cfg.workers, threads=self.cfg.threads, target=target, source=source,
                     log_path=os.path.join(self.logdir, f"{name}.log"))
        self.stack.callback(server.stop)
        return server

    def bare_server(self, name: str, cls=FunctionServer) -> FunctionServer:
        return self.server(name, target="bare", source=str(ROOT / "bench" / "bare" / "main.py"), cls=cls)

    def revision(self) -> int:
        rev, _ = self.client.list_range(b"\0", b"", 5)  # one (absent) key: just the header
        return rev

    def loadgen(self, port: int, duration: float | None = None, start_at: float | None = None,
                path: str = "/", body: str | None = None) -> LoadGen:
        gen = LoadGen(port, self.cfg.load_procs, self.cfg.load_conns, duration, start_at, path, body)
        self.stack.callback(gen.kill)
        return gen

    # --- 1 and 2: propagation -----------------------------------------------------

    def propagation(self, port: int, changes: int, label: str) -> dict:
        poller = Poller(port)
        self.stack.callback(poller.close)
        for _ in range(5):  # warm the connection and the handler
            status, headers, _ = poller.get()
            if status != 200:
                raise BenchError(f"{label}: gateway answered {status} before the test")
        recorder = WatchRecorder(self.client, RATE_LIMIT, self.revision() + 1)
        self.stack.callback(recorder.close)
        prop, watch, rtt, polls = [], [], [], []
        put_wall: dict[int, float] = {}
        lost = 0
        rng = random.Random(1)
        value = HIGH
        for i in range(changes):
            time.sleep(rng.uniform(0.005, 0.02))
            # The gateway's own round trip, this iteration, same connection, same load.
            t = time.perf_counter()
            status, headers, _ = poller.get()
            rtt.append(time.perf_counter() - t)
            value = HIGH - 1 if value == HIGH else HIGH
            wall = time.time()
            t0 = time.perf_counter()
            revision = self.client.put(RATE_LIMIT, str(value), 5)
            put_wall[revision] = wall
            n = 0
            while True:
                status, headers, body = poller.get()
                now = time.perf_counter()
                n += 1
                seen = int(headers.get("X-Config-Revision") or 0)
                if status == 200 and seen >= revision:
                    got = json.loads(body)["applied"]["values"][RATE_LIMIT]
                    if got != value:
                        raise BenchError(f"{label}: revision {seen} shows rate-limit {got}, expected {value}")
                    prop.append(now - t0)
                    break
                if status not in (200,):
                    raise BenchError(f"{label}: gateway answered {status}: {body[:200]!r}")
                if now - t0 > CHANGE_TIMEOUT:
                    lost += 1
                    prop.append(math.inf)
                    break
            polls.append(n)
            arrived = recorder.wait(revision, CHANGE_TIMEOUT)
            if arrived is None:
                raise BenchError(f"{label}: the bare watch missed revision {revision}: {recorder.error}")
            watch.append(arrived - t0)
        recorder.close()
        floor_p99 = pct(watch, 99) + pct(rtt, 99)
        return {
            "n": changes, "lost": lost, "prop": prop, "watch": watch, "rtt": rtt,
            "polls_mean": statistics.fmean(polls), "first_poll_hits": sum(1 for x in polls if x == 1),
            "floor_p99": floor_p99, "ratio": pct(prop, 99) / floor_p99,
            "reconnects": poller.reconnects, "put_wall": put_wall,
        }

    def phase_propagation(self, under_load: bool) -> None:
        label = "propagation under load" if under_load else "propagation"
        # One worker: every response comes from the process whose watcher is measured.
        server = self.server("gateway-load" if under_load else "gateway-idle", workers=1)
        server.start()
        gen = None
        try:
            if under_load:
                Poller(server.port).get()  # start the watcher before the load arrives
                gen = self.loadgen(server.port, start_at=time.time() + 1.0)
                time.sleep(1.5)  # load generators connected and running
                if any(p.poll() is not None for p in gen.procs):
                    raise BenchError("a load generator exited early")
            changes = self.cfg.load_changes if under_load else self.cfg.changes
            t = time.monotonic()
            result = self.propagation(server.port, changes, label)
            result["seconds"] = time.monotonic() - t
            if gen is not None:
                gen.stop()
                result["load"] = gen.result(timeout=10)
            self.results["load" if under_load else "propagation"] = result
        finally:
            if gen is not None:
                gen.kill()
            server.stop()
        result["applied"] = applied_latencies(server.log_path, result.pop("put_wall"))


    # --- 3: throughput --------------------------------------------------------------

    def phase_throughput(self) -> None:
        gateway = self.server("gateway-throughput")
        bare = self.bare_server("bare-throughput")
        gateway.start()
        bare.start()
        for srv in (gateway, bare):  # first request: imports, the watcher's first list
            status, _, _ = Poller(srv.port).get()
            if status != 200:
                raise BenchError(f"throughput: {srv.target} answered {status}")
        rates = {"gateway": [], "bare": []}
        detail = {"gateway": [], "bare": []}
        cpu = {"gateway": [], "bare": []}  # server CPU seconds per response, per round
        util = {"gateway": [], "bare": []}  # server CPU seconds per second, per round
        order = [("gateway", gateway), ("bare", bare)]
        for r in range(self.cfg.rounds):
            for name, srv in (order if r % 2 == 0 else order[::-1]):
                start_at = time.time() + 0.6
                gen = self.loadgen(srv.port, duration=self.cfg.seconds, start_at=start_at)
                pids = srv.pids()
                time.sleep(max(0.0, start_at - time.time()))
                cpu0 = cpu_seconds(pids)
                time.sleep(max(0.0, start_at + self.cfg.seconds - time.time()))
                cpu1 = cpu_seconds(pids)
                res = gen.result(timeout=self.cfg.seconds + 30)
                if res["responses"]:
                    cpu[name].append((cpu1 - cpu0) / res["responses"])
                    util[name].append((cpu1 - cpu0) / self.cfg.seconds)
                gen.kill()
                ok = res["statuses"].get("200", 0)
                if ok < 0.99 * res["responses"] or res["responses"] == 0:
                    raise BenchError(f"throughput: {name} statuses {res['statuses']}")
                rates[name].append(res["rate"])
                detail[name].append(res)
                time.sleep(0.3)
        gateway.stop()
        bare.stop()
        g, b = statistics.median(rates["gateway"]), statistics.median(rates["bare"])
        # Each round pairs the two handlers back to back, so a pair shares the machine's
        # state of the moment; the median of the pairs' ratios resists a neighbour's
        # load far better than the ratio of two medians taken across the whole run.
        paired = statistics.median(x / y for x, y in zip(rates["gateway"], rates["bare"]))
        self.results["throughput"] = {"gateway": g, "bare": b, "ratio": paired, "ratio_of_medians": g / b,
                                      "rates": rates,
                                      "reconnects": sum(d["reconnects"] for v in detail.values() for d in v),
                                      "cpu": {k: statistics.median(v) for k, v in cpu.items() if v},
                                      "util": {k: statistics.median(v) for k, v in util.items() if v}}

    # --- 5: fleet-wide rate limit (bench/ratelimit.py) -------------------------------

    def phase_ratelimit(self) -> None:
        from bench import ratelimit

        self.results["ratelimit"] = {
            "accuracy": ratelimit.accuracy(),
            "membership": [ratelimit.membership_cost(self.etcd.endpoint, self.etcd.client_url, n)
                           for n in (100, 1000)],
        }

    # --- 4: cold start --------------------------------------------------------------

    def cold_once(self, gateway: bool, expect_revision: int) -> tuple[float, float, int]:
        """Seconds from Popen to the first response carrying etcd's values (gateway) or
        to the first response at all (bare); seconds from Popen until the port accepted
        a connection (gunicorn binds after the master imported the function's module);
        and how many responses came before the good one."""
        srv = self.server("gateway-cold", cls=ProbedServer) if gateway else self.bare_server("bare-cold", ProbedServer)
        try:
            srv.start()
            early = 0
            listening = None
            deadline = srv.started_at + 30
            while True:
                if srv.proc.poll() is not None:
                    raise BenchError(f"cold start: {srv.target} exited with {srv.proc.returncode}")
                if time.monotonic() > deadline:
                    raise BenchError(f"cold start: {srv.target} gave no good answer within 30 s")
                sock = try_connect(srv.port)
                if sock is None:
                    time.sleep(0.001)
                    continue
                if listening is None:
                    listening = time.monotonic() - srv.started_at
                answer = request_on(sock, srv.port)
                now = time.monotonic()
                if answer is None:
                    continue
                status, headers, _ = answer
                # At or after: each gateway start registers its worker as a member (a write).
                if status == 200 and (not gateway or int(headers.get("x-config-revision", 0)) >= expect_revision):
                    return now - srv.started_at, listening, early
                early += 1
        finally:
            srv.stop()

    def phase_cold(self) -> None:
        expect = self.revision()
        times = {"gateway": [], "bare": []}
        listen = {"gateway": [], "bare": []}
        early = 0
        # Both handlers start from bytecode, as a built image would: this machine may set
        # PYTHONDONTWRITEBYTECODE, and compiling the project's own modules on every start
        # would add ~20 ms to the gateway alone.
        import compileall

        for path in ("config_watch", "gateway", "bench/bare"):
            compileall.compile_dir(str(ROOT / path), quiet=1)
        compileall.compile_file(str(ROOT / "main.py"), quiet=1)
        # One discarded start of each first: page caches warm for both.
        self.cold_once(True, expect)
        self.cold_once(False, expect)
        for i in range(self.cfg.cold_starts):
            for name in (("gateway", "bare") if i % 2 == 0 else ("bare", "gateway")):
                t, lt, e = self.cold_once(name == "gateway", expect)
                times[name].append(t)
                listen[name].append(lt)
                if name == "gateway":
                    early += e
        g, b = statistics.median(times["gateway"]), statistics.median(times["bare"])
        self.results["cold"] = {"gateway": g, "bare": b, "diff": g - b, "times": times, "early": early,
                                "listen": {k: statistics.median(v) for k, v in listen.items()}}


# --- report ---------------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(bench: Bench, started: datetime.datetime, wall: float) -> str:
    cfg, res = bench.cfg, bench.results
    rows = []
    details = []
    for key, title in (("propagation", "Propagation, idle"), ("load", "Propagation under load")):
        r = res.get(key)
        if not r:
            continue
        p50, p99 = pct(r["prop"], 50), pct(r["prop"], 99)
        rows.append((
            f"{title} (n={r['n']}, WORKERS=1 THREADS={cfg.threads})",
            f"p50 {ms(p50)} ms, p99 **{ms(p99)} ms**",
            f"floor p99 {ms(r['floor_p99'])} ms = watch p99 {ms(pct(r['watch'], 99))} + round trip p99 {ms(pct(r['rtt'], 99))}",
            f"{r['ratio']:.2f}×",
            "p99 ≤ 1.2 × floor",
            verdict(r["ratio"] <= 1.2 and r["lost"] == 0),
        ))
        line = (f"- {title}: propagation p50/p90/p99/max {ms(p50)}/{ms(pct(r['prop'], 90))}/{ms(p99)}/"
                f"{ms(max(r['prop']))} ms; bare watch p50/p99 {ms(pct(r['watch'], 50))}/{ms(pct(r['watch'], 99))} ms; "
                f"round trip p50/p99 {ms(pct(r['rtt'], 50))}/{ms(pct(r['rtt'], 99))} ms; "
                f"{r['polls_mean']:.2f} polls per change ({r['first_poll_hits']} changes already visible on the first poll); "
                f"{r['lost']} changes lost; {r['seconds']:.1f} s")
        if r.get("applied"):
            line += (f"; diagnostic, put start → the gateway's \"applied revision\" log record (±1 ms): "
                     f"p50/p99 {ms(pct(r['applied'], 50))}/{ms(pct(r['applied'], 99))} ms "
                     f"over {len(r['applied'])} changes")
        if "load" in r:
            ld = r["load"]
            line += (f"; load generator {cfg.load_procs}×{cfg.load_conns} connections: {ld['rate']:.0f} req/s, "
                     f"statuses {ld['statuses']}")
        details.append(line)
    t = res.get("throughput")
    if t:
        rows.append((
            f"Throughput ({cfg.load_procs}×{cfg.load_conns} keep-alive conns, WORKERS={cfg.workers} THREADS={cfg.threads})",
            f"gateway **{t['gateway']:.0f} req/s**",
            f"bare handler {t['bare']:.0f} req/s",
            f"{t['ratio']:.3f}× (median of paired rounds; ratio of medians {t['ratio_of_medians']:.3f}×)",
            "≥ 0.95 × bare",
            verdict(t["ratio"] >= 0.95),
        ))
        details.append(f"- Throughput, {cfg.rounds} alternating rounds of {cfg.seconds:g} s, medians: gateway "
                       f"{', '.join(f'{x:.0f}' for x in t['rates']['gateway'])} req/s; bare "
                       f"{', '.join(f'{x:.0f}' for x in t['rates']['bare'])} req/s; "
                       f"{t['reconnects']} keep-alive reconnects")
        if len(t.get("cpu", {})) == 2:
            details.append(f"- Throughput diagnostic (less sensitive to other load on the machine): server CPU per "
                           f"response, median over rounds: gateway {t['cpu']['gateway'] * 1e6:.0f} µs, bare "
                           f"{t['cpu']['bare'] * 1e6:.0f} µs (ratio {t['cpu']['bare'] / t['cpu']['gateway']:.3f}); "
                           f"server CPU use during a round: gateway {t['util']['gateway']:.2f}, bare "
                           f"{t['util']['bare']:.2f} cores (1.00 = saturated, one worker process)")
    c = res.get("cold")
    if c:
        rows.append((
            f"Cold start (median of {cfg.cold_starts})",
            f"gateway **{ms(c['gateway'])} ms**",
            f"bare handler {ms(c['bare'])} ms",
            f"{c['diff'] * 1000:+.1f} ms",
            "≤ bare + 30 ms",
            verdict(c["diff"] <= 0.030),
        ))
        details.append(f"- Cold start, Popen → first response (gateway: carrying etcd's revision): gateway "
                       f"{', '.join(ms(x) for x in c['times']['gateway'])} ms; bare "
                       f"{', '.join(ms(x) for x in c['times']['bare'])} ms; "
                       f"{c['early']} gateway responses came before etcd's values; port accepting connections "
                       f"(median, Popen → gunicorn bound, i.e. after the module import) gateway {ms(c['listen']['gateway'])} "
                       f"ms, bare {ms(c['listen']['bare'])} ms; both from precompiled bytecode")
    if res.get("forwarding"):
        more_rows, more_details = forwarding_report(res["forwarding"], pct, ms, verdict)
        rows += more_rows
        details += more_details
    if res.get("processor"):
        more_rows, more_details = processor_report(res["processor"], pct, ms, verdict)
        rows += more_rows
        details += more_details

    rl = res.get("ratelimit")
    if rl:
        from bench import ratelimit

        steady = ", ".join(f"{r['members']} members: {r['steady_proposals_per_second']:.2f} writes/s and "
                           f"{r['steady_renewals_per_second']:.0f} lease renewals/s" for r in rl["membership"])
        ours = rl["accuracy"][-1]["figures"]
        rows.append((
            "Rate limit across processes (one client at 3× the limit, random spread; `bench/ratelimit.py`)",
            "admitted / allowed, 600 s: " + ", ".join(f"N={n} **{ours[(n, 600.0)][0]:.2f}**" for n in (1, 2, 4)),
            "rate/N, burst/N: N=4 " + f"{rl['accuracy'][0]['figures'][(4, 600.0)][0]:.2f}",
            f"30 s: N=4 {ours[(4, 30.0)][0]:.2f}",
            "within ±15 %",
            verdict(all(abs(ours[(n, 600.0)][0] - 1) <= 0.15 for n in (1, 2, 4))),
        ))
        details.append("- Rate limit, membership cost while steady: " + steady + " (joins: "
                       f"{rl['membership'][0]['join_proposals_per_member']:.0f} writes per member)")
        details += [""] + ratelimit.accuracy_lines(rl["accuracy"]) + [""] + ratelimit.membership_lines(
            rl["membership"]) + [""]

    out = ["# Benchmark results (`make bench`)", ""]
    out.append("| Measurement | Result | Baseline (same run) | Ratio / diff | Target | |")
    out.append("|---|---|---|---|---|---|")
    for row in rows:
        out.append("| " + " | ".join(row) + " |")
    out += ["", "Details:", ""] + details
    out += ["", "Method:", "",
            "- Every server is `python -m functions_framework` (gunicorn gthread) started by "
            "`tools.function_server.FunctionServer`, with the same WORKERS/THREADS for the gateway and the bare "
            "handler (`bench/bare/main.py`, a gateway-sized JSON answer). Propagation servers always run WORKERS=1, "
            "so every response comes from the one process whose watcher is measured (with more workers a keep-alive "
            "poller would see only one of them).",
            f"- Propagation: per change, one timed GET (the round-trip sample), then a put of "
            f"`{RATE_LIMIT}` (alternating {HIGH}/{HIGH - 1}, the schema's maximum; burst {HIGH}, so "
            "nothing is throttled) and GETs on the same keep-alive connection until `X-Config-Revision` ≥ the put's revision; "
            "the body is checked for the new value. Times start just before the put. The bare watch is an "
            "`EtcdClient` watch in the bench process, stamped on arrival by its own thread.",
            "- Load: closed-loop `bench.loadgen` processes (keep-alive, no think time) on the same gateway during the "
            "whole measurement; the round-trip and watch floors are sampled under that load.",
            "- Throughput: the same generator against each server in turn, alternating order, 0.6 s warm-up per round; req/s are the medians over rounds.",
            "- Cold start: Popen → first response, probing with a fresh connection every ~1 ms; one discarded start "
            "of each first.",
            "- Processor (`python -m processor`, gunicorn, one worker): throughput in alternating rounds at threads=1 "
            "and 2 on one server; resize = put start (bench, wall clock) → the moment the pool's live workers "
            "equalled the new size (the pool's own wall-clock stamp, `settled_at` in `/_status`), idle pool; skew = per txn revision, |gateway − processor| time of each "
            "watcher's \"applied revision\" log line (same clock, ms resolution; no polling load).",
            ""]
    try:
        etcd_version = subprocess.run([etcd_binaries()[0], "--version"], capture_output=True, text=True,
                                      timeout=10).stdout.splitlines()[0]
    except Exception as exc:  # informational only
        etcd_version = f"unknown ({exc})"
    load1, load5, _ = os.getloadavg()
    out += ["Machine:", "",
            f"- date: {started.isoformat(timespec='seconds')}; whole bench {wall:.0f} s",
            f"- nproc: {os.cpu_count()}; load average at start {bench.load_at_start}; at end {load1:.2f} {load5:.2f}",
            f"- {platform.platform()}; Python {platform.python_version()}; {etcd_version}",
            f"- settings: changes={cfg.changes} load_changes={cfg.load_changes} rounds={cfg.rounds}×{cfg.seconds:g}s "
            f"cold_starts={cfg.cold_starts} load={cfg.load_procs}×{cfg.load_conns} workers={cfg.workers} "
            f"threads={cfg.threads}"]
    busy = float(bench.load_at_start.split()[0] or 0) if bench.load_at_start else 0.0
    if max(busy, load1) > 1.0:
        bench.notes.append(f"the machine was busy with other work (load average {bench.load_at_start} at start, "
                           f"{load1:.2f} at end, on {os.cpu_count()} cores): figures are noisy, p99s most of all")
    if bench.notes:
        out += ["", "Notes:", ""] + [f"- {n}" for n in bench.notes]
    return "\n".join(out) + "\n"


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    signal.signal(signal.SIGINT, _interrupt)  # also when started in the background
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    started = datetime.datetime.now().astimezone()
    t0 = time.monotonic()
    logdir = tempfile.mkdtemp(prefix="bench-")
    status = 0
    try:
        with ExitStack() as stack:  # stops every process started, whatever happens
            l1, l5, _ = os.getloadavg()
            bench = Bench(cfg, stack, logdir, load_at_start=f"{l1:.2f} {l5:.2f}")
            print(f"bench: etcd and servers on loopback; logs in {logdir}", file=sys.stderr, flush=True)
            bench.start_etcd()
            for phase in cfg.only:
                print(f"bench: {phase} …", file=sys.stderr, flush=True)
                tp = time.monotonic()
                if phase == "propagation":
                    bench.phase_propagation(under_load=False)
                elif phase == "load":
                    bench.phase_propagation(under_load=True)
                elif phase == "throughput":
                    bench.phase_throughput()
                elif phase == "cold":
                    bench.phase_cold()
                elif phase == "processor":
                    bench.results["processor"] = ProcessorBench(bench, seconds=cfg.seconds,
                                                                rounds=max(3, cfg.rounds // 2)).run()
                elif phase == "forwarding":
                    bench.results["forwarding"] = ForwardingBench(bench, cfg.forward_requests).run()
                elif phase == "ratelimit":
                    bench.phase_ratelimit()
                print(f"bench: {phase} done in {time.monotonic() - tp:.1f} s", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started is stopped", file=sys.stderr)
        status = 130
    except Exception:
        traceback.print_exc()
        print(f"bench: FAILED (server logs kept in {logdir})", file=sys.stderr)
        return 1
    shutil.rmtree(logdir, ignore_errors=True)
    if status:
        return status
    text = report(bench, started, time.monotonic() - t0)
    print(text)
    Path(cfg.output).write_text(text)
    print(f"bench: written to {cfg.output}", file=sys.stderr)
    return 0

if __name__ == "__main__":
    sys.exit(main())
