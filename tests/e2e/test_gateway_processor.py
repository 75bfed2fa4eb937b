"""The gateway in front of the real data processor (`python -m processor`), both on one
real etcd: forwarding with the processor's token, and one write seen by both services
as one revision."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
import requests

from config_watch import BREAKER_FAILURES, EXPERIMENTS, THREADS
from tests.support import wait_until
from tools.function_server import FunctionServer
from tools.processor_server import ProcessorServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKEN = "a-processor-token-of-some-length"
CHECKOUT = EXPERIMENTS + "checkout"


@pytest.fixture
def processor(etcd, tmp_path):
    server = ProcessorServer({"ETCD_ENDPOINTS": etcd.endpoint, "PROCESSOR_TOKEN": TOKEN},
                             log_path=str(tmp_path / "processor.log"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def start_gateway(etcd, processor, tmp_path, token: str | None = TOKEN) -> FunctionServer:
    env = {"ETCD_ENDPOINTS": etcd.endpoint, "PROCESSOR_URL": processor.url}
    if token:
        env["PROCESSOR_TOKEN"] = token
    return FunctionServer(env, workers=1, log_path=str(tmp_path / "gateway.log"))  # started by `with`


def test_jobs_go_through_the_gateway_to_the_processor(etcd, processor, tmp_path):
    etcd.etcdctl("put", CHECKOUT, "control:0,treatment:100")
    written = etcd.revision()
    with start_gateway(etcd, processor, tmp_path) as gateway:
        answer = requests.post(gateway.url + "/v1/jobs?rounds=2", data=b"some bytes", timeout=10,
                               headers={"X-Request-Id": "job-1"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["result"] and body["threads"] >= 1
        assert answer.headers["X-Experiments"] == "checkout=treatment"
        # Both hold the change; their revisions may differ by writes outside the watched
        # keys (the gateway's membership record), which each lists at its own moment.
        assert int(answer.headers["X-Config-Revision"]) >= written
        assert int(answer.headers["X-Upstream-Config-Revision"]) >= written
        assert answer.headers["X-Request-Id"] == "job-1"
        # The processor's own refusals pass through, and are not the upstream failing.
        bad = requests.post(gateway.url + "/v1/jobs?rounds=0", data=b"x", timeout=10)
        assert bad.status_code == 400 and "rounds" in bad.json()["error"]
        breaker = requests.get(gateway.url + "/_status", timeout=10).json()["upstream"]["breaker"]
        assert breaker["state"] == "closed" and breaker["consecutive_failures"] == 0


def test_only_the_gateways_token_opens_the_processor(etcd, processor, tmp_path):
    with start_gateway(etcd, processor, tmp_path, token=None) as gateway:
        # A client that knows the token still cannot pass it through the gateway.
        answer = requests.post(gateway.url + "/v1/jobs", data=b"x", timeout=10,
                               headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 401 and answer.headers["WWW-Authenticate"].startswith("Bearer")


def test_stopping_the_processor_trips_the_breaker(etcd, processor, tmp_path):
    etcd.etcdctl("put", BREAKER_FAILURES, "2")
    with start_gateway(etcd, processor, tmp_path) as gateway:
        assert requests.post(gateway.url + "/v1/jobs", data=b"x", timeout=10).status_code == 200
        processor.stop()
        statuses = [requests.post(gateway.url + "/v1/jobs", data=b"x", timeout=10).status_code for _ in range(3)]
        assert statuses == [502, 502, 503]


def test_one_write_is_one_revision_in_both_services(etcd, processor, tmp_path):
    """An experiment split, a breaker threshold and the processor's threads in one
    `python -m config_watch set`: every answer from either service shows all of it or
    none of it, and both report the same revision."""
    before = etcd.revision()
    etcd.etcdctl("put", CHECKOUT, "control:100,treatment:0")
    with start_gateway(etcd, processor, tmp_path) as gateway:
        seen: list[tuple] = []
        stop = threading.Event()

        def observe():
            with requests.Session() as s:
                while not stop.is_set():
                    job = s.post(gateway.url + "/v1/jobs", data=b"x", timeout=10)
                    status = s.get(gateway.url + "/_status", timeout=10).json()["upstream"]
                    seen.append(("job", int(job.headers["X-Config-Revision"]), job.headers["X-Experiments"],
                                 int(job.headers["X-Upstream-Config-Revision"])))
                    seen.append(("breaker", status["revision"], status["breaker"]["thresholds"]["failures"]))
                    seen.append(("processor", *(lambda p: (p["revision"], p["pool"]["threads"],
                                                           p["pool"]["revision"]))(processor.status())))

        observer = threading.Thread(target=observe, daemon=True)
        observer.start()
        wait_until(lambda: len(seen) > 6, 10)
        subprocess.run([sys.executable, "-m", "config_watch", "set", CHECKOUT, "control:0,treatment:100",
                        BREAKER_FAILURES, "7", THREADS, "3"], cwd=ROOT, check=True, capture_output=True,
                       env={**os.environ, "ETCD_ENDPOINTS": etcd.endpoint})
        revision = etcd.revision()
        wait_until(lambda: any(s[0] == "job" and s[1] >= revision and s[3] >= revision for s in seen)
                   and any(s[0] == "processor" and s[3] >= revision for s in seen), 15)
        stop.set()
        observer.join(10)
    # One revision holds all three changes (the audit entry, if the tool writes one, is in it too).
    assert revision > before + 1
    history = json.loads(etcd.etcdctl("get", THREADS, "-w", "json"))["kvs"][0]
    assert history["mod_revision"] == revision
    for kind, *values in seen:
        if kind == "job":
            gateway_revision, experiments, processor_revision = values
            assert experiments == ("checkout=treatment" if gateway_revision >= revision else "checkout=control")
        elif kind == "breaker":
            at, failures = values
            assert failures == (7 if at >= revision else 5)
        else:
            at, threads, pool_revision = values
            if pool_revision >= revision:
                assert threads == 3
            elif at < revision:
                assert threads != 3
    final = [s for s in seen if s[0] == "job"][-1]
    assert final[1] == final[3] == revision  # the gateway's and the processor's revision on one answer
