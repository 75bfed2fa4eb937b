"""`make bench`, forwarding: POST /v1/jobs through the gateway vs straight to the
processor, in the same run, idle and under load.

Two keep-alive connections, one to the gateway and one to the processor; each
iteration sends one job down each, in alternating order, so both paths share the
machine's state of the moment. The difference of their percentiles is the gateway's
cost: identity, experiments, maintenance, rate limit, breaker, and the second hop.
Two more connections in the same iterations split that cost: the gateway's own
`GET /` (its hop without forwarding) and a bare functions-framework handler's
`GET /` (bench/bare, the same server settings: the floor any function's hop costs on
this machine, before a line of the gateway runs). Under load, bench.loadgen
processes keep the gateway busy forwarding the same job (POST /v1/jobs) while the
samples are taken.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.clients import Poller

# A small job: the bench measures the path, not the hashing.
JOB_BODY = b'{"bench": "forwarding"}'
JOB_PATH = "/v1/jobs?rounds=1"
WARMUP = 50
TOKEN = "bench-forwarding-token-0123456789"
BARE_SOURCE = Path(__file__).resolve().parent / "bare" / "main.py"


class _Conn:
    """One kind of request, timed, over one keep-alive connection."""

    def __init__(self, port: int, headers: dict[str, str], method: str = "POST", path: str = JOB_PATH,
                 body: bytes | None = JOB_BODY) -> None:
        self.port, self.headers = port, headers
        self.method, self.path, self.body = method, path, body
        self.poller = Poller(port)

    @property
    def reconnects(self) -> int:
        return self.poller.reconnects

    def post(self) -> float:
        self.poller._connection()  # opened before the clock starts
        t = time.perf_counter()
        status, _, _ = self.poller.send(self.method, self.path, self.body, self.headers)
        elapsed = time.perf_counter() - t
        if status != 200:
            raise RuntimeError(f"forwarding bench: port {self.port} answered {status}")
        return elapsed

    def close(self) -> None:
        self.poller.close()


class ForwardingBench:
    def __init__(self, bench, requests: int) -> None:
        self.bench = bench
        self.requests = requests

    def servers(self):
        from tools.processor_server import ProcessorServer

        b = self.bench
        processor = ProcessorServer({"ETCD_ENDPOINTS": b.etcd.endpoint, "PROCESSOR_TOKEN": TOKEN},
                                    log_path=os.path.join(b.logdir, "forwarding-processor.log"))
        b.stack.callback(processor.stop)
        processor.start()
        gateway = b.server("forwarding-gateway", workers=1)
        gateway.env.update({"PROCESSOR_URL": processor.url, "PROCESSOR_TOKEN": TOKEN})
        gateway.start()
        bare = b.server("forwarding-bare", workers=1, target="bare", source=str(BARE_SOURCE))
        bare.start()
        return processor, gateway, bare

    def sample(self, gateway_port: int, processor_port: int, bare_port: int) -> dict:
        via = _Conn(gateway_port, {"Content-Type": "application/json"})
        direct = _Conn(processor_port, {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
        # The gateway's own round trip on a path it answers itself (GET /): what any
        # request through it costs before forwarding adds its part.
        local = _Conn(gateway_port, {}, "GET", "/", None)
        floor = _Conn(bare_port, {}, "GET", "/", None)
        conns = {"gateway": via, "direct": direct, "local": local, "bare": floor}
        try:
            for _ in range(WARMUP):
                for conn in conns.values():
                    conn.post()
            out = {name: [] for name in conns}
            order = list(conns.items())
            for i in range(self.requests):
                for name, conn in (order if i % 2 else order[::-1]):
                    out[name].append(conn.post())
            out["reconnects"] = sum(conn.reconnects for conn in conns.values())
            return out
        finally:
            for conn in conns.values():
                conn.close()

    def run(self) -> dict:
        processor, gateway, bare = self.servers()
        try:
            idle = self.sample(gateway.port, processor.port, bare.port)
            gen = self.bench.loadgen(gateway.port, start_at=time.time() + 0.5, path=JOB_PATH, body=JOB_BODY.decode())
            time.sleep(1.0)  # load generators connected and running
            loaded = self.sample(gateway.port, processor.port, bare.port)
            gen.stop()
            loaded["load"] = gen.result(timeout=10)
            gen.kill()
            return {"idle": idle, "load": loaded, "requests": self.requests}
        finally:
            bare.stop()
            gateway.stop()
            processor.stop()


def report(res: dict, pct, ms, verdict) -> tuple[list[tuple], list[str]]:
    rows, details = [], []
    for key, title in (("idle", "idle"), ("load", "under load")):
        r = res[key]
        g50, g99 = pct(r["gateway"], 50), pct(r["gateway"], 99)
        d50, d99 = pct(r["direct"], 50), pct(r["direct"], 99)
        row = (f"POST /v1/jobs through the gateway vs straight to the processor, {title} (n={res['requests']} each)",
               f"gateway p50 {ms(g50)} ms, p99 **{ms(g99)} ms**", f"processor p50 {ms(d50)} ms, p99 {ms(d99)} ms",
               f"+{ms(g50 - d50)} ms p50, +{ms(g99 - d99)} ms p99")
        if key == "idle":
            b50 = pct(r["bare"], 50)
            row = row[:3] + (row[3] + f" (a bare functions-framework hop alone: {ms(b50)} ms p50)",)
            rows.append(row + ("≤ +1.5 ms p50, ≤ +3 ms p99", verdict(g50 - d50 <= 0.0015 and g99 - d99 <= 0.003)))
        else:
            rows.append(row + ("(reported)", ""))
        l50, b50 = pct(r["local"], 50), pct(r["bare"], 50)
        line = (f"- Forwarding {title}: gateway p50/p90/p99/max {ms(g50)}/{ms(pct(r['gateway'], 90))}/{ms(g99)}/"
                f"{ms(max(r['gateway']))} ms; processor {ms(d50)}/{ms(pct(r['direct'], 90))}/{ms(d99)}/"
                f"{ms(max(r['direct']))} ms. In the same iterations, a bare functions-framework handler's GET / "
                f"p50/p99 {ms(b50)}/{ms(pct(r['bare'], 99))} ms (the floor of any function's hop here) and the "
                f"gateway's own GET / {ms(l50)}/{ms(pct(r['local'], 99))} ms. So of the +{ms(g50 - d50)} ms at p50, "
                f"{ms(b50)} ms is the framework's hop, {ms(l50 - b50)} ms the gateway's own hop beyond it (its "
                f"policies, and under load the wait behind the generator's requests), and "
                f"{ms(g50 - d50 - l50)} ms the forwarding (body, second connection, header rewriting, breaker); "
                f"{r['reconnects']} reconnects")
        if "load" in r:
            ld = r["load"]
            line += f"; load generator posting jobs through the gateway: {ld['rate']:.0f} req/s, statuses {ld['statuses']}"
        details.append(line)
    return rows, details
