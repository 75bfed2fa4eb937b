"""Forwarding `/v1/` through the real functions-framework gateway (gunicorn, one worker,
so the breaker under test is the one answering) to a fault-injecting upstream."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
import requests

from config_watch import (BREAKER_FAILURES, BREAKER_HALF_OPEN_SUCCESSES, BREAKER_OPEN_SECONDS, EXPERIMENTS,
                          MAINTENANCE_MODE, RATE_LIMIT, RATE_LIMIT_BURST, UPSTREAM_TIMEOUT_MS)
from tests.support import wait_until
from tools.function_server import FunctionServer
from tools.upstream_server import UpstreamServer

TOKEN = "processor-secret-token"


@pytest.fixture
def upstream():
    with UpstreamServer() as up:
        yield up


def put_all(etcd, *pairs: tuple[str, str]) -> int:
    """Write the pairs in one transaction; etcd's revision after it."""
    ops = "".join(f"put {key} {json.dumps(value)}\n" for key, value in pairs)
    etcd.etcdctl("txn", input="\n" + ops + "\n\n")
    return etcd.revision()


@pytest.fixture
def gateway(etcd, upstream, tmp_path):
    put_all(etcd, (RATE_LIMIT, "1000000"), (RATE_LIMIT_BURST, "1000000"), (BREAKER_FAILURES, "2"),
            (BREAKER_OPEN_SECONDS, "1"), (BREAKER_HALF_OPEN_SUCCESSES, "2"), (UPSTREAM_TIMEOUT_MS, "500"))
    srv = FunctionServer({"ETCD_ENDPOINTS": etcd.endpoint, "PROCESSOR_URL": upstream.url, "PROCESSOR_TOKEN": TOKEN,
                          "FORWARD_MAX_BODY_BYTES": "1000", "CONFIG_STALENESS_SECONDS": "2"},
                         workers=1, log_path=str(tmp_path / "gateway.log"))
    srv.start()
    try:
        srv.session = requests.Session()
        wait_until(lambda: srv.session.get(srv.url + "/_status").json()["revision"] >= etcd.revision(), 20)
        yield srv
    finally:
        srv.session.close()
        srv.stop()


def at_revision(gateway, revision: int) -> None:
    wait_until(lambda: gateway.session.get(gateway.url + "/_status").json()["revision"] >= revision, 10,
               message=f"gateway at revision {revision}")


def breaker(gateway) -> dict:
    return gateway.session.get(gateway.url + "/_status").json()["upstream"]["breaker"]


def test_forwards_method_path_query_body_and_end_to_end_headers(gateway, upstream):
    response = gateway.session.post(
        gateway.url + "/v1/jobs/a%2Fb?rounds=3&x=%C3%A9", data=b'{"n": 1}',
        headers={"Content-Type": "application/json", "X-Answer-Status": "201", "Authorization": "Bearer client",
                 "Connection": "keep-alive, X-Private", "X-Private": "drop me", "Keep-Alive": "timeout=9",
                 "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                 "X-Cloud-Trace-Context": "0af7651916cd43dd8448eb211c80319c/1;o=1", "X-Request-Id": "req-42",
                 "X-Forwarded-For": "198.51.100.7", "X-Custom": "kept"})
    seen = upstream.last()
    sent = {name.lower(): value for name, value in seen["headers"]}
    assert seen["method"] == "POST"
    assert seen["target"] == "/v1/jobs/a%2Fb?rounds=3&x=%C3%A9"
    assert seen["body"] == '{"n": 1}'
    assert sent["authorization"] == f"Bearer {TOKEN}"  # the processor's token, never the client's
    assert sent["x-custom"] == "kept" and sent["content-type"] == "application/json"
    assert sent["traceparent"].startswith("00-0af7651916cd43dd") and "x-cloud-trace-context" in sent
    assert sent["x-request-id"] == "req-42"
    assert sent["x-forwarded-for"] == "198.51.100.7, 127.0.0.1"
    assert "x-private" not in sent and "keep-alive" not in sent and sent.get("connection", "keep-alive") == "keep-alive"
    assert sent["content-length"] == "8"
    # The answer: the upstream's status, body and end-to-end headers, the gateway's own beside them.
    assert response.status_code == 201
    assert response.json()["target"] == seen["target"]
    assert response.headers["X-Upstream"] == "yes" and response.headers["Cache-Control"] == "max-age=5"
    assert response.raw.headers.getlist("Set-Cookie") == ["a=1", "b=2"]
    assert "X-Hop" not in response.headers and "Keep-Alive" not in response.headers
    assert response.headers["X-Upstream-Config-Revision"] == "0"
    assert int(response.headers["X-Config-Revision"]) >= 1 and response.headers["X-Request-Id"] == "req-42"
    assert "RateLimit-Remaining" in response.headers


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "HEAD"])
def test_other_methods_and_upstream_error_answers_pass_through(gateway, upstream, method):
    response = gateway.session.request(method, gateway.url + "/v1/jobs/7", headers={"X-Answer-Status": "409"})
    assert response.status_code == 409
    assert upstream.last()["method"] == method
    if method != "HEAD":
        assert response.json()["method"] == method


def test_an_odd_request_id_is_replaced_and_one_is_made_when_absent(gateway, upstream):
    for given in ["", "has space", "x" * 200, "naïve"]:
        response = gateway.session.get(gateway.url + "/v1/jobs", headers={"X-Request-Id": given} if given else {})
        made = dict((k.lower(), v) for k, v in upstream.last()["headers"])["x-request-id"]
        assert made != given and len(made) == 32 and response.headers["X-Request-Id"] == made


def test_a_body_over_the_limit_is_413_and_never_sent(gateway, upstream):
    before = upstream.requests
    assert gateway.session.post(gateway.url + "/v1/jobs", data=b"x" * 1001).status_code == 413
    chunked = gateway.session.post(gateway.url + "/v1/jobs", data=iter([b"x" * 600, b"y" * 600]))
    assert chunked.status_code == 413 and "1000 bytes" in chunked.json()["error"]
    assert upstream.requests == before
    assert gateway.session.post(gateway.url + "/v1/jobs", data=b"x" * 1000).status_code == 200


def _read_answer(sock: socket.socket) -> tuple[int, bytes] | None:
    """One whole answer's status and body; None if it has not come when the socket's
    timeout runs out."""
    answer = http.client.HTTPResponse(sock)
    try:
        answer.begin()
        return answer.status, answer.read()
    except TimeoutError:
        return None


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    return True


# A body the client declares but never finishes: a huge Content-Length with nothing
# after it, or a chunked body twice the limit whose last chunk never comes.
_LYING_BODIES = {
    "declared": ("Content-Length: 99999999999\r\n", b""),
    "chunked": ("Transfer-Encoding: chunked\r\n", b"%x\r\n%s\r\n" % (2000, b"x" * 2000)),
}


def test_bodies_past_the_limit_are_refused_without_waiting_for_the_rest(gateway, upstream):
    # Answering 413 is not enough: the framework reads every unread body after a plain
    # answer, before sending it, so the client would wait for ever and a thread with it.
    cases = [(kind, path) for kind in sorted(_LYING_BODIES) for path in ("/v1/jobs", "/", "/_status")]
    socks = []
    try:
        for kind, path in cases:
            header, start = _LYING_BODIES[kind]
            socks.append(socket.create_connection(("127.0.0.1", gateway.port), timeout=15))
            socks[-1].sendall(f"POST {path} HTTP/1.1\r\nHost: gateway\r\n{header}\r\n".encode() + start)
        answers = dict(zip(cases, map(_read_answer, socks)))
        for sock in socks[1:]:
            sock.close()
        # And the server gives the connection up after a bounded drain, rather than
        # hold a thread waiting for the body.
        assert _closed_by_server(socks[0]), f"{cases[0]}: the gateway kept the connection open"
    finally:
        for sock in socks:
            sock.close()
    for case, answer in answers.items():
        assert answer is not None, f"{case}: no answer, the gateway was waiting for the body"
        assert answer[0] == 413 and b"larger than 1000 bytes" in answer[1], (case, answer)
    assert upstream.requests == 0
    assert gateway.session.get(gateway.url + "/").status_code == 200


def test_a_misconfigured_answer_leaves_the_body_unread(etcd, upstream, tmp_path):
    # The 503 comes before the bound is known (here the bound itself is malformed), so
    # it must not wait for a body that never ends either.
    srv = FunctionServer({"ETCD_ENDPOINTS": etcd.endpoint, "PROCESSOR_URL": upstream.url,
                          "FORWARD_MAX_BODY_BYTES": "lots"}, workers=1, log_path=str(tmp_path / "gateway.log"))
    with srv, socket.create_connection(("127.0.0.1", srv.port), timeout=15) as sock:
        sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: gateway\r\n" + _LYING_BODIES["declared"][0].encode() + b"\r\n")
        answer = _read_answer(sock)
        assert answer is not None, "no answer: the gateway was waiting for the body"
        assert answer[0] == 503 and b"FORWARD_MAX_BODY_BYTES" in answer[1], answer
        assert requests.get(srv.url + "/", timeout=15).status_code == 200  # no body: no bound needed
    assert upstream.requests == 0


def test_dot_segments_are_refused(gateway, upstream):
    response = gateway.session.get(gateway.url + "/v1/%2e%2e/_status")
    assert response.status_code == 400 and upstream.requests == 0


def test_refused_connection_is_502_and_a_stall_is_504(etcd, gateway, upstream):
    put_all(etcd, (BREAKER_FAILURES, "100"))
    at_revision(gateway, etcd.revision())
    upstream.refuse()
    refused = gateway.session.post(gateway.url + "/v1/jobs", data=b"{}")
    assert refused.status_code == 502 and refused.json()["error"] == "upstream connection failed"
    upstream.serve()
    upstream.stall()
    t = time.monotonic()
    stalled = gateway.session.post(gateway.url + "/v1/jobs", data=b"{}")
    elapsed = time.monotonic() - t
    assert stalled.status_code == 504 and stalled.json() == {"error": "upstream timed out", "timeout_ms": 500,
                                                             "request_id": stalled.headers["X-Request-Id"]}
    assert 0.4 < elapsed < 3
    # The timeout is live: a longer one lets the same stall through once released.
    put_all(etcd, (UPSTREAM_TIMEOUT_MS, "10000"))
    at_revision(gateway, etcd.revision())
    threading.Timer(0.8, upstream.release).start()
    assert gateway.session.post(gateway.url + "/v1/jobs", data=b"{}").status_code == 200


def test_breaker_whole_cycle(gateway, upstream, tmp_path):
    upstream.mode = "fail"
    assert [gateway.session.get(gateway.url + "/v1/jobs").status_code for _ in range(2)] == [500, 500]
    calls = upstream.requests
    refused = gateway.session.get(gateway.url + "/v1/jobs")
    assert refused.status_code == 503 and refused.json()["error"] == "upstream circuit open"
    assert refused.headers["Retry-After"] == "1"
    assert upstream.requests == calls  # refused without calling the upstream
    status = breaker(gateway)
    assert status["state"] == "open" and status["consecutive_failures"] == 2 and 0 < status["seconds_left_open"] <= 1
    upstream.mode = "echo"
    wait_until(lambda: breaker(gateway)["state"] == "half-open", 5)
    assert gateway.session.get(gateway.url + "/v1/jobs").status_code == 200
    assert breaker(gateway)["state"] == "half-open"
    assert gateway.session.get(gateway.url + "/v1/jobs").status_code == 200
    assert breaker(gateway)["state"] == "closed"
    log = (tmp_path / "gateway.log").read_text()
    moves = [json.loads(line) for line in log.splitlines() if '"breaker_transition"' in line]
    assert [(m["from"], m["to"]) for m in moves] == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]


def test_a_failed_trial_reopens_and_half_open_bounds_concurrent_trials(etcd, gateway, upstream):
    put_all(etcd, (BREAKER_HALF_OPEN_SUCCESSES, "1"), (UPSTREAM_TIMEOUT_MS, "10000"))
    at_revision(gateway, etcd.revision())
    upstream.mode = "fail"
    for _ in range(2):
        gateway.session.get(gateway.url + "/v1/jobs")
    wait_until(lambda: breaker(gateway)["state"] == "half-open", 5)
    upstream.stall()
    results = []
    trial = threading.Thread(target=lambda: results.append(requests.get(gateway.url + "/v1/jobs", timeout=10)))
    trial.start()
    wait_until(lambda: breaker(gateway)["trials_in_flight"] == 1, 5)
    second = requests.get(gateway.url + "/v1/jobs", timeout=10)
    assert second.status_code == 503 and second.json()["state"] == "half-open"
    upstream.mode = "fail"
    upstream.release()
    trial.join(10)
    assert results[0].status_code == 500
    assert breaker(gateway)["state"] == "open"


def test_live_thresholds_apply_to_the_breaker_in_force(etcd, gateway, upstream):
    put_all(etcd, (BREAKER_FAILURES, "10"), (BREAKER_OPEN_SECONDS, "3600"))
    at_revision(gateway, etcd.revision())
    upstream.mode = "fail"
    for _ in range(4):
        gateway.session.get(gateway.url + "/v1/jobs")
    assert breaker(gateway)["consecutive_failures"] == 4 and breaker(gateway)["state"] == "closed"
    # Lowering failures below the count opens it on the next failure, not before.
    put_all(etcd, (BREAKER_FAILURES, "3"))
    at_revision(gateway, etcd.revision())
    assert breaker(gateway)["state"] == "closed" and breaker(gateway)["consecutive_failures"] == 4
    assert gateway.session.get(gateway.url + "/v1/jobs").status_code == 500
    assert breaker(gateway)["state"] == "open" and breaker(gateway)["seconds_left_open"] > 3500
    refused = gateway.session.get(gateway.url + "/v1/jobs")
    assert int(refused.headers["Retry-After"]) > 3500
    # Shortening open-seconds shortens the period already running.
    upstream.mode = "echo"
    put_all(etcd, (BREAKER_OPEN_SECONDS, "1"))
    at_revision(gateway, etcd.revision())
    wait_until(lambda: breaker(gateway)["seconds_left_open"] == 0, 3, message="the open period ended")
    assert gateway.session.get(gateway.url + "/v1/jobs").status_code == 200
    assert breaker(gateway)["state"] == "half-open"
    # Lowering half-open-successes to what it has closes it on the next success.
    put_all(etcd, (BREAKER_HALF_OPEN_SUCCESSES, "1"))
    at_revision(gateway, etcd.revision())
    assert gateway.session.get(gateway.url + "/v1/jobs").status_code == 200
    assert breaker(gateway)["state"] == "closed"


def test_maintenance_and_rate_limit_apply_before_forwarding(etcd, gateway, upstream):
    put_all(etcd, (MAINTENANCE_MODE, "true"))
    at_revision(gateway, etcd.revision())
    assert gateway.session.post(gateway.url + "/v1/jobs").status_code == 503
    put_all(etcd, (MAINTENANCE_MODE, "false"), (RATE_LIMIT, "1"), (RATE_LIMIT_BURST, "1"))
    at_revision(gateway, etcd.revision())
    assert [gateway.session.post(gateway.url + "/v1/jobs").status_code for _ in range(2)] == [200, 429]
    assert upstream.requests == 1


def test_a_body_over_the_limit_is_refused_first_and_spends_no_token(etcd, gateway, upstream):
    put_all(etcd, (MAINTENANCE_MODE, "true"), (EXPERIMENTS + "beta", "on:100"))
    at_revision(gateway, etcd.revision())
    big = b"x" * 1001
    during_maintenance = gateway.session.post(gateway.url + "/v1/jobs", data=big)
    assert during_maintenance.status_code == 413
    assert during_maintenance.headers["X-Experiments"] == "beta=on"
    assert 0 < int(during_maintenance.headers["X-Config-Revision"]) <= etcd.revision()
    assert during_maintenance.headers["RateLimit-Limit"] == "1000000"
    put_all(etcd, (MAINTENANCE_MODE, "false"), (RATE_LIMIT, "1"), (RATE_LIMIT_BURST, "1"))
    at_revision(gateway, etcd.revision())
    refused = [gateway.session.post(gateway.url + path, data=big) for path in ("/v1/jobs", "/", "/v1/jobs")]
    assert [(r.status_code, r.headers["RateLimit-Remaining"]) for r in refused] == [(413, "1")] * 3
    # The client's one token is still there.
    assert [gateway.session.post(gateway.url + "/v1/jobs").status_code for _ in range(2)] == [200, 429]
    assert upstream.requests == 1


def test_experiments_on_every_answer_and_every_forwarded_request(etcd, gateway, upstream):
    key = {"X-Api-Key": "client-1"}
    assert "X-Experiments" not in gateway.session.get(gateway.url + "/v1/jobs", headers=key).headers
    assert "x-experiments" not in {k.lower() for k, _ in upstream.last()["headers"]}
    put_all(etcd, (EXPERIMENTS + "zeta", "on:100"), (EXPERIMENTS + "alpha", "control:0,treatment:100"))
    at_revision(gateway, etcd.revision())
    forwarded = gateway.session.get(gateway.url + "/v1/jobs", headers={**key, "X-Experiments": "alpha=forged"})
    assert forwarded.headers["X-Experiments"] == "alpha=treatment,zeta=on"
    assert dict((k.lower(), v) for k, v in upstream.last()["headers"])["x-experiments"] == "alpha=treatment,zeta=on"
    assert gateway.session.get(gateway.url + "/", headers=key).headers["X-Experiments"] == "alpha=treatment,zeta=on"
    etcd.etcdctl("del", EXPERIMENTS + "alpha")
    at_revision(gateway, etcd.revision())
    assert gateway.session.get(gateway.url + "/v1/jobs", headers=key).headers["X-Experiments"] == "zeta=on"


def test_connections_to_the_upstream_are_kept_alive(gateway, upstream):
    for _ in range(20):
        assert gateway.session.get(gateway.url + "/v1/jobs").status_code == 200
    peers = {seen["peer"] for seen in list(upstream.received)[-20:]}
    assert len(peers) == 1
    assert gateway.session.get(gateway.url + "/_status").json()["upstream"]["connections_opened"] == 1
