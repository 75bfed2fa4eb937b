"""The data processor as production runs it (`python -m processor`, gunicorn) over HTTP, on a real etcd."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from config_watch import MAINTENANCE_MODE, RATE_LIMIT, THREADS
from tests.support import wait_until
from tools.function_server import FunctionServer
from tools.processor_server import ProcessorServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKEN = "test-token-0123456789abcdef"
# A job of about a second on this machine: 256 KiB of random bytes (zlib works hard on
# them), ~9 ms a round. Long enough to be seen running or queued, whatever the load.
SLOW_BODY = os.urandom(256 * 1024)
SLOW_ROUNDS = 100


@pytest.fixture
def start_processor(etcd, tmp_path):
    started: list[ProcessorServer] = []

    def start(**env) -> ProcessorServer:
        server = ProcessorServer({"ETCD_ENDPOINTS": etcd.endpoint, "PROCESSOR_DRAIN_SECONDS": "20",
                                  **{k: str(v) for k, v in env.items()}},
                                 log_path=str(tmp_path / f"processor-{len(started)}.log"))
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def post_job(server: ProcessorServer, body: bytes = b"hello", rounds: int | str | None = None,
             token: str | None = None, headers: dict | None = None, timeout: float = 60) -> requests.Response:
    params = {} if rounds is None else {"rounds": rounds}
    headers = dict(headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.post(server.url + "/v1/jobs", params=params, data=body, headers=headers, timeout=timeout)


def set_threads(etcd, threads: int) -> int:
    etcd.etcdctl("put", THREADS, str(threads))
    return etcd.revision()


def pool(server: ProcessorServer) -> dict:
    return server.status()["pool"]


def start_slow_jobs(server: ProcessorServer, n: int, **kw) -> list:
    """`n` slow jobs in flight (in order, each seen by the pool before the next is sent)."""
    executor = ThreadPoolExecutor(n)
    futures = []
    for i in range(n):
        futures.append(executor.submit(post_job, server, SLOW_BODY, SLOW_ROUNDS, **kw))
        wait_until(lambda: (lambda p: p["busy"] + p["queued"] >= i + 1)(pool(server)), 20,
                   message=f"job {i + 1} in the pool")
    executor.shutdown(wait=False)
    return futures


def test_a_job_answers_its_result_size_and_revision(etcd, start_processor):
    revision = set_threads(etcd, 3)
    server = start_processor()
    response = post_job(server, b"abc", rounds=2)
    assert response.status_code == 200
    body = response.json()
    assert int(response.headers["X-Config-Revision"]) == revision == body["revision"]
    assert body["threads"] == 3
    assert body["result"]["bytes"] == 3 and body["result"]["rounds"] == 2
    import hashlib
    first = hashlib.sha256(b"abc").digest()
    assert body["result"]["sha256"] == hashlib.sha256(first + b"abc").hexdigest()
    # Logs as the gateway's: one JSON object per line, gunicorn's own lines included.
    lines = Path(server.log_path).read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert {"time", "severity", "logger", "message"} <= set(entries[0])
    assert {"gunicorn.error", "processor.app", "config_watch._watcher"} <= {e["logger"] for e in entries}


def test_resize_under_load_loses_no_job(etcd, start_processor):
    set_threads(etcd, 1)
    server = start_processor()
    assert pool(server)["threads"] == 1
    stop = threading.Event()
    answers: list[tuple[int, int]] = []  # (status, threads) per job
    errors: list[BaseException] = []
    body = os.urandom(64 * 1024)

    def client():
        with requests.Session() as s:
            while not stop.is_set():
                try:
                    r = s.post(server.url + "/v1/jobs", params={"rounds": 3}, data=body, timeout=30)
                    answers.append((r.status_code, r.json().get("threads", 0)))
                except BaseException as exc:  # a lost job must fail the test, not vanish
                    errors.append(exc)
                    return

    clients = [threading.Thread(target=client) for _ in range(6)]
    for t in clients:
        t.start()
    try:
        for threads in (8, 2, 6):
            wait_until(lambda: len(answers) >= 5, 30, message="jobs flowing")
            before = len(answers)
            revision = set_threads(etcd, threads)
            wait_until(lambda: (lambda p: p["threads"] == threads and p["revision"] == revision)(pool(server)),
                       10, message=f"pool size {threads} in /_status")
            wait_until(lambda: pool(server)["workers"] == threads, 20, message=f"{threads} workers running")
            wait_until(lambda: any(t == threads for _, t in answers[before:]), 30,
                       message=f"a job run at size {threads}")
    finally:
        stop.set()
        for t in clients:
            t.join(60)
    assert not errors, errors
    statuses = {status for status, _ in answers}
    assert statuses == {200}, statuses
    assert {1, 8, 2, 6} <= {t for _, t in answers}
    stats = pool(server)
    assert stats["done"] == len(answers) and stats["failed"] == 0
    assert stats["busy"] == stats["queued"] == 0


def test_bad_threads_values_are_rejected_and_the_size_stays(etcd, start_processor):
    set_threads(etcd, 5)
    server = start_processor(STATUS_DETAILS="true")  # rejected values, not only their keys
    for bad in ("0", "999", "abc"):
        etcd.etcdctl("put", THREADS, bad)
        revision = etcd.revision()
        status = wait_until(lambda: (lambda s: s if s["revision"] == revision else None)(server.status()), 10)
        assert [(r["key"], r["value"]) for r in status["rejected"]] == [(THREADS, bad)]
        assert status["pool"]["threads"] == 5 and status["pool"]["workers"] == 5
    assert post_job(server).json()["threads"] == 5


def test_maintenance_refuses_new_jobs_while_accepted_ones_finish(etcd, start_processor):
    set_threads(etcd, 1)
    server = start_processor()
    in_flight = start_slow_jobs(server, 2)  # one running, one queued
    etcd.etcdctl("put", MAINTENANCE_MODE, "true")
    revision = etcd.revision()
    wait_until(lambda: server.status()["revision"] == revision, 10)
    refused = post_job(server)
    assert refused.status_code == 503
    assert int(refused.headers["Retry-After"]) > 0
    assert int(refused.headers["X-Config-Revision"]) == revision
    assert pool(server)["busy"] + pool(server)["queued"] >= 1, "the slow jobs ended before the check"
    assert [f.result(60).status_code for f in in_flight] == [200, 200]
    etcd.etcdctl("put", MAINTENANCE_MODE, "false")
    wait_until(lambda: post_job(server).status_code == 200, 10, message="jobs accepted again")


def test_full_queue_answers_503(etcd, start_processor):
    set_threads(etcd, 1)
    server = start_processor(PROCESSOR_QUEUE_LIMIT=1)
    in_flight = start_slow_jobs(server, 2)  # one running, one filling the queue
    refused = post_job(server)
    assert refused.status_code == 503
    assert refused.json()["error"] == "job queue full"
    assert int(refused.headers["Retry-After"]) > 0
    assert server.status()["pool"]["queued"] == 1  # /_status answers while the pool is full
    assert [f.result(60).status_code for f in in_flight] == [200, 200]


def test_body_size_bound(etcd, start_processor):
    server = start_processor(PROCESSOR_MAX_BODY_BYTES=1000)
    assert post_job(server, b"x" * 1000).status_code == 200
    assert post_job(server, b"x" * 1001).status_code == 413
    # Without a Content-Length (chunked), the bound holds as the body is read.
    chunked = post_job(server, iter([b"x" * 600, b"x" * 600]))
    assert chunked.status_code == 413
    assert post_job(server, iter([b"x" * 500, b"x" * 500])).status_code == 200
    assert pool(server)["done"] == 2


def test_bad_rounds_answer_400(etcd, start_processor):
    server = start_processor()
    for rounds in ("0", "1001", "abc", "-1", "", "1.5", "99999999999999999999", "１"):
        response = post_job(server, rounds=rounds)
        assert response.status_code == 400, rounds
        assert "rounds" in response.json()["error"]
    assert post_job(server, rounds="1000", body=b"").status_code == 200
    assert pool(server)["done"] == 1


def test_token_is_required_when_set(etcd, start_processor):
    server = start_processor(PROCESSOR_TOKEN=TOKEN)
    assert post_job(server).status_code == 401
    wrong = post_job(server, token=TOKEN[:-1] + "x")
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"].startswith("Bearer")
    assert post_job(server, headers={"Authorization": TOKEN}).status_code == 401  # no scheme
    assert post_job(server, token=TOKEN).status_code == 200
    status = requests.get(server.url + "/_status", timeout=10)
    assert status.status_code == 200 and TOKEN not in status.text
    assert requests.get(server.url + "/elsewhere", timeout=10).status_code == 401
    assert pool(server)["done"] == 1


def test_sigterm_drains_accepted_jobs_and_exits_0(etcd, start_processor):
    set_threads(etcd, 1)
    server = start_processor()
    in_flight = start_slow_jobs(server, 2)  # one running, one queued, both before SIGTERM
    server.terminate()
    assert [f.result(60).status_code for f in in_flight] == [200, 200]
    assert server.proc.wait(30) == 0
    with pytest.raises(requests.ConnectionError):
        post_job(server, timeout=5)


def test_one_txn_reaches_gateway_and_processor_at_one_revision(etcd, start_processor, tmp_path):
    server = start_processor()
    with FunctionServer({"ETCD_ENDPOINTS": etcd.endpoint}, workers=1,
                        log_path=str(tmp_path / "gateway.log")) as gateway:
        assert requests.get(gateway.url + "/", timeout=10).status_code == 200  # starts its watcher
        out = subprocess.run([sys.executable, "-m", "config_watch", "set", RATE_LIMIT, "77", THREADS, "3"],
                             cwd=ROOT, env={**os.environ, "ETCD_ENDPOINTS": etcd.endpoint},
                             capture_output=True, text=True, check=True).stdout
        revision = etcd.revision()
        assert f"revision {revision}" in out
        wait_until(lambda: server.status()["revision"] == revision, 10, message="processor at the txn's revision")
        wait_until(lambda: requests.get(gateway.url + "/_status", timeout=10).json()["revision"] == revision, 10,
                   message="gateway at the txn's revision")
        answer = requests.get(gateway.url + "/", timeout=10)
        assert int(answer.headers["X-Config-Revision"]) == revision and answer.headers["RateLimit-Limit"] == "77"
        job = post_job(server)
        assert int(job.headers["X-Config-Revision"]) == revision
        assert job.json()["threads"] == 3 and job.json()["threads_revision"] == revision
