"""api_gateway through Flask's test client (functions-framework's app), against a real etcd."""

from __future__ import annotations

import json
import os
import uuid

import functions_framework
import pytest

from config_watch import MAINTENANCE_MODE, RATE_LIMIT, RATE_LIMIT_BURST
from tests.support import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ONBOARDING = "/config/services/api-gateway/features/new-user-onboarding"


@pytest.fixture
def client(etcd, monkeypatch):
    monkeypatch.setenv("ETCD_ENDPOINTS", etcd.endpoint)
    monkeypatch.setenv("CONFIG_INITIAL_WAIT_SECONDS", "2")
    app = functions_framework.create_app(target="api_gateway", source=os.path.join(ROOT, "main.py"))
    return app.test_client()


def revision_of(response) -> int:
    return int(response.headers["X-Config-Revision"])


def key():
    """A fresh API key: a client of its own, with a full bucket."""
    return {"X-Api-Key": uuid.uuid4().hex}


def test_first_request_reflects_etcd(etcd, client):
    etcd.etcdctl("put", RATE_LIMIT, "77")
    response = client.get("/", headers=key())
    assert response.status_code == 200
    assert response.headers["RateLimit-Limit"] == "77"
    assert response.json["applied"]["values"][RATE_LIMIT] == 77
    assert revision_of(response) == response.json["revision"] >= 2


def test_every_response_but_status_carries_revision_and_rate_headers(client):
    for path in ("/", "/onboarding", "/anything/else"):
        response = client.get(path, headers=key())
        assert {"X-Config-Revision", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(response.headers.keys())
    status = client.get("/_status")
    assert "X-Config-Revision" not in status.headers and "RateLimit-Limit" not in status.headers


def test_onboarding_follows_its_feature_flag(etcd, client):
    assert client.get("/onboarding", headers=key()).status_code == 404
    etcd.etcdctl("put", ONBOARDING, "true")
    wait_until(lambda: client.get("/onboarding", headers=key()).status_code == 200, 5, message="flag on")
    etcd.etcdctl("put", ONBOARDING, "false")
    wait_until(lambda: client.get("/onboarding", headers=key()).status_code == 404, 5, message="flag off")


def test_maintenance_mode_answers_503_on_every_path_but_status(etcd, client):
    etcd.etcdctl("put", ONBOARDING, "true")  # so /onboarding would answer 200 if maintenance were skipped
    etcd.etcdctl("put", MAINTENANCE_MODE, "true")
    response = wait_until(lambda: (r := client.get("/", headers=key())).status_code == 503 and r, 5)
    assert int(response.headers["Retry-After"]) > 0
    assert response.headers["RateLimit-Limit"] == "100"
    assert response.json["error"] == "maintenance"
    for path in ("/onboarding", "/anything/else", "/v1/jobs"):
        response = client.get(path, headers=key())
        assert response.status_code == 503 and response.json["error"] == "maintenance", path
    assert client.get("/_status").status_code == 200
    etcd.etcdctl("put", MAINTENANCE_MODE, "false")
    wait_until(lambda: client.get("/", headers=key()).status_code == 200, 5)


def test_rate_limit_answers_429_with_headers(etcd, client):
    etcd.etcdctl("put", RATE_LIMIT, "60")
    etcd.etcdctl("put", RATE_LIMIT_BURST, "3")
    wait_until(lambda: client.get("/", headers=key()).headers["RateLimit-Limit"] == "60", 5)
    me = key()
    remaining = [int(client.get("/", headers=me).headers["RateLimit-Remaining"]) for _ in range(3)]
    assert remaining == [2, 1, 0]
    limited = client.get("/", headers=me)
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.headers["RateLimit-Remaining"] == "0"
    assert int(limited.headers["RateLimit-Reset"]) >= 1
    assert client.get("/", headers=key()).status_code == 200  # another client is unaffected


def test_rate_change_applies_to_existing_buckets(etcd, client):
    etcd.etcdctl("put", RATE_LIMIT_BURST, "50")
    wait_until(lambda: client.get("/", headers=key()).headers["RateLimit-Remaining"] == "49", 5)
    me = key()
    assert client.get("/", headers=me).headers["RateLimit-Remaining"] == "49"
    etcd.etcdctl("put", RATE_LIMIT_BURST, "2")
    wait_until(lambda: client.get("/", headers=key()).headers["RateLimit-Remaining"] == "1", 5)
    # The same client's bucket is clamped to the new capacity on its next request.
    assert client.get("/", headers=me).headers["RateLimit-Remaining"] in ("0", "1")
    assert client.get("/", headers=me).headers["RateLimit-Remaining"] == "0"


def test_spoofed_forwarded_for_does_not_escape_the_limit(etcd, client):
    etcd.etcdctl("put", RATE_LIMIT_BURST, "2")
    etcd.etcdctl("put", RATE_LIMIT, "1")
    wait_until(lambda: client.get("/", headers=key()).headers["RateLimit-Limit"] == "1", 5)
    statuses = [
        client.get("/", headers={"X-Forwarded-For": f"10.0.0.{i}"}, environ_base={"REMOTE_ADDR": "192.0.2.9"}).status_code
        for i in range(4)
    ]
    assert statuses == [200, 200, 429, 429]


def test_trusted_hop_reads_forwarded_for(etcd, client, monkeypatch):
    monkeypatch.setenv("TRUSTED_PROXY_HOPS", "1")
    import config_watch

    config_watch.reset_runtime()
    etcd.etcdctl("put", RATE_LIMIT_BURST, "1")
    etcd.etcdctl("put", RATE_LIMIT, "1")
    wait_until(lambda: client.get("/", headers=key()).headers["RateLimit-Limit"] == "1", 5)
    proxy = {"REMOTE_ADDR": "169.254.1.1"}  # Google's front end, the one trusted hop
    first = client.get("/", headers={"X-Forwarded-For": "198.51.100.1"}, environ_base=proxy)
    second = client.get("/", headers={"X-Forwarded-For": "198.51.100.2"}, environ_base=proxy)
    again = client.get("/", headers={"X-Forwarded-For": "evil, 198.51.100.1"}, environ_base=proxy)
    assert (first.status_code, second.status_code, again.status_code) == (200, 200, 429)


def test_status_reports_sync_and_connection(etcd, client):
    client.get("/", headers=key())
    status = client.get("/_status").json
    assert status["synced"] is True and status["connected"] in (True, False)
    wait_until(lambda: client.get("/_status").json["connected"], 5, message="watch connected")
    status = client.get("/_status").json
    assert isinstance(status["revision"], int) and status["revision"] >= 1
    assert 0 <= status["staleness_seconds"] < 5


def test_unreachable_etcd_serves_defaults_and_says_so(monkeypatch):
    from tools.etcd_server import free_port

    monkeypatch.setenv("ETCD_ENDPOINTS", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("CONFIG_INITIAL_WAIT_SECONDS", "0.2")
    app = functions_framework.create_app(target="api_gateway", source=os.path.join(ROOT, "main.py"))
    client = app.test_client()
    response = client.get("/", headers=key())
    assert response.status_code == 200 and response.headers["X-Config-Revision"] == "0"
    status = client.get("/_status").json
    assert status["synced"] is False and status["connected"] is False
    status = wait_until(lambda: (s := client.get("/_status").json)["error_kind"] and s, 5, message="error reported")
    assert status["error_kind"] == "transient" and status["reason"] == "etcd unreachable"
    assert status["state"] == "initializing"


def test_a_cold_start_reads_the_member_list_while_the_first_request_waits_for_the_config(monkeypatch):
    """A cold instance's first request needs two reads from etcd: the config, and the
    fleet's member list (its share of the limit). The second starts beside the first,
    not once the request's wait for the config is over: with etcd not answering, the
    first request waits out one CONFIG_INITIAL_WAIT_SECONDS, not one for each read."""
    import config_watch
    from config_watch import membership
    from tools.etcd_server import free_port

    monkeypatch.setenv("ETCD_ENDPOINTS", f"127.0.0.1:{free_port()}")  # etcd not answering yet
    monkeypatch.setenv("CONFIG_INITIAL_WAIT_SECONDS", "3")
    client = functions_framework.create_app(target="api_gateway", source=os.path.join(ROOT, "main.py")).test_client()
    response = client.get("/", headers=key())
    assert response.status_code == 200 and response.headers["X-Config-Revision"] == "0"
    config_started = config_watch.get_runtime().watcher.started_at
    members_started = membership._membership.watcher.started_at
    assert members_started - config_started < 1.5  # not after the 3 s wait


def test_logs_carry_the_request_trace_on_google_cloud(etcd, monkeypatch, capfd):
    monkeypatch.setenv("ETCD_ENDPOINTS", etcd.endpoint)
    monkeypatch.setenv("K_SERVICE", "api-gateway")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "demo-project")
    from config_watch._logging import configure_logging

    app = functions_framework.create_app(target="api_gateway", source=os.path.join(ROOT, "main.py"))
    client = app.test_client()
    try:
        configure_logging("INFO", force=True)
        trace = "0123456789abcdef0123456789abcdef"
        client.get("/", headers={"X-Cloud-Trace-Context": f"{trace}/1;o=1", **key()})
        lines = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
        started = [entry for entry in lines if entry.get("message") == "config watcher started"]
        assert started, lines
        assert started[0]["logging.googleapis.com/trace"] == f"projects/demo-project/traces/{trace}"
        assert started[0]["severity"] == "INFO"
    finally:
        monkeypatch.delenv("K_SERVICE")
        configure_logging("INFO", force=True)


def test_gateway_refuses_to_serve_another_services_keys(etcd, monkeypatch):
    monkeypatch.setenv("ETCD_ENDPOINTS", etcd.endpoint)
    monkeypatch.setenv("CONFIG_SERVICE", "data-processor")
    app = functions_framework.create_app(target="api_gateway", source=os.path.join(ROOT, "main.py"))
    response = app.test_client().get("/", headers=key())
    assert response.status_code == 503
    assert "CONFIG_SERVICE" in response.json["error"]


def test_a_wrong_processor_url_refuses_forwarding_but_not_bodies_elsewhere(client, monkeypatch):
    monkeypatch.setenv("PROCESSOR_URL", "ftp://processor")
    assert client.post("/", data=b"x" * 100, headers=key()).status_code == 200
    forwarded = client.post("/v1/jobs", data=b"{}", headers=key())
    assert forwarded.status_code == 503 and "PROCESSOR_URL" in forwarded.json["error"]
    # The bound does not depend on the forwarder's settings either.
    too_big = client.post("/", data=b"x" * ((1 << 20) + 1), headers=key())
    assert too_big.status_code == 413 and "RateLimit-Remaining" in too_big.headers
