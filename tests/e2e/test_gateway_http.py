"""api_gateway under the real functions-framework (gunicorn, two workers) over HTTP."""

from __future__ import annotations

import uuid

import pytest
import requests

from config_watch import MAINTENANCE_MODE, RATE_LIMIT, RATE_LIMIT_BURST, RATE_LIMIT_SCOPE
from tests.support import wait_until
from tools.function_server import FunctionServer



@pytest.fixture
def server(etcd, tmp_path):
    etcd.etcdctl("put", RATE_LIMIT, "123")
    srv = FunctionServer({"ETCD_ENDPOINTS": etcd.endpoint}, workers=2, log_path=str(tmp_path / "server.log"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def fresh_get(url: str, **kw) -> requests.Response:
    """A request on a new connection, so gunicorn may hand it to either worker."""
    with requests.Session() as s:
        return s.get(url, headers={"Connection": "close", **kw.pop("headers", {})}, timeout=10, **kw)


def test_first_request_after_start_reflects_etcd(etcd, server):
    # Taken before: the request itself registers its worker as a member (a write).
    revision = etcd.revision()
    response = fresh_get(server.url + "/", headers={"X-Api-Key": "first"})
    assert response.status_code == 200
    assert int(response.headers["X-Config-Revision"]) >= revision
    assert response.headers["RateLimit-Limit"] == "123"


def test_a_put_reaches_both_workers(etcd, server):
    pids = set()
    wait_until(lambda: pids.add(fresh_get(server.url + "/_status").json()["pid"]) or len(pids) == 2, 30,
               message="both workers answered")
    etcd.etcdctl("put", RATE_LIMIT, "456")
    target = etcd.revision()
    seen: dict[int, int] = {}

    def both_current():
        status = fresh_get(server.url + "/_status").json()
        seen[status["pid"]] = status["revision"]
        return len(seen) == 2 and all(rev >= target for rev in seen.values())

    wait_until(both_current, 30, message=f"both workers at revision {target}: {seen}")
    for _ in range(6):
        response = fresh_get(server.url + "/", headers={"X-Api-Key": uuid.uuid4().hex})
        assert response.headers["RateLimit-Limit"] == "456"


def test_maintenance_503_over_http(etcd, server):
    etcd.etcdctl("put", MAINTENANCE_MODE, "true")
    # A requests.Response is falsy for 4xx/5xx: wait on a list holding it.
    [response] = wait_until(lambda: [r for r in [fresh_get(server.url + "/")] if r.status_code == 503], 10)
    assert int(response.headers["Retry-After"]) > 0
    assert "RateLimit-Limit" in response.headers and "X-Config-Revision" in response.headers
    assert fresh_get(server.url + "/_status").status_code == 200


def test_429_with_headers_over_http(etcd, server):
    # One worker's own bucket is under test here (tests/e2e/test_fleet_ratelimit.py has the fleet).
    etcd.etcdctl("put", RATE_LIMIT_SCOPE, "process")
    etcd.etcdctl("put", RATE_LIMIT_BURST, "2")
    etcd.etcdctl("put", RATE_LIMIT, "6")
    target = etcd.revision()
    # One keep-alive connection stays on one worker, whose bucket we drain.
    with requests.Session() as s:
        wait_until(lambda: int(s.get(server.url + "/", headers={"X-Api-Key": uuid.uuid4().hex}).headers["X-Config-Revision"]) >= target, 10)
        statuses = [s.get(server.url + "/", headers={"X-Api-Key": "drain"}) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    limited = statuses[-1]
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.headers["RateLimit-Limit"] == "6"
    assert limited.headers["RateLimit-Remaining"] == "0"
    assert int(limited.headers["RateLimit-Reset"]) >= 1
