"""A function instance frozen (as Cloud Run throttles CPU between requests), then resumed."""

from __future__ import annotations

import signal
import time

import pytest
import requests

from config_watch import RATE_LIMIT
from tests.support import wait_until
from tools.function_server import FunctionServer
from tools.tcp_proxy import TcpProxy

# Bounds for the frozen server: the freeze below outlasts all of them.
KEEPALIVE, KEEPALIVE_TIMEOUT, DEAD_STREAM, STALENESS, CHECK_TIMEOUT = 5, 1, 2, 1, 0.5
FREEZE_SECONDS = KEEPALIVE + KEEPALIVE_TIMEOUT + 1



@pytest.fixture
def frozen_setup(etcd, tmp_path):
    etcd.etcdctl("put", RATE_LIMIT, "200")
    proxy = TcpProxy(etcd.client_port).start()
    server = FunctionServer(
        {
            "ETCD_ENDPOINTS": proxy.endpoint,
            "ETCD_KEEPALIVE_SECONDS": str(KEEPALIVE),
            "ETCD_KEEPALIVE_TIMEOUT_SECONDS": str(KEEPALIVE_TIMEOUT),
            "ETCD_DEAD_STREAM_SECONDS": str(DEAD_STREAM),
            "CONFIG_STALENESS_SECONDS": str(STALENESS),
            "CONFIG_CHECK_TIMEOUT_SECONDS": str(CHECK_TIMEOUT),
        },
        workers=1,
        log_path=str(tmp_path / "server.log"),
    )
    server.start()
    try:
        yield etcd, proxy, server
    finally:
        server.stop()
        proxy.close()


class FreshConnections:
    """GETs on new connections: gunicorn drops idle keep-alive connections during a freeze."""

    def get(self, url: str, timeout: float = 10) -> requests.Response:
        return requests.get(url, headers={"Connection": "close"}, timeout=timeout)


def freeze(server: FunctionServer, while_frozen) -> None:
    server.signal_all(signal.SIGSTOP)
    try:
        started = time.monotonic()
        while_frozen()
        # The length of the freeze is the fault itself: time must pass.
        time.sleep(max(0.0, FREEZE_SECONDS - (time.monotonic() - started)))
    finally:
        server.signal_all(signal.SIGCONT)


def test_first_request_after_resume_serves_current_config(frozen_setup):
    etcd, proxy, server = frozen_setup
    session = FreshConnections()
    assert session.get(server.url + "/").headers["RateLimit-Limit"] == "200"
    wait_until(lambda: session.get(server.url + "/_status").json()["connected"], 5)

    def change_and_compact():
        proxy.stall()  # the connector silently drops the instance's connection
        for value in (201, 202, 203):
            etcd.etcdctl("put", RATE_LIMIT, str(value))
        etcd.etcdctl("compact", str(etcd.revision()))

    freeze(server, change_and_compact)
    target = etcd.revision()
    started = time.monotonic()
    first = session.get(server.url + "/", timeout=10)
    elapsed = time.monotonic() - started
    assert first.status_code == 200
    assert first.headers["RateLimit-Limit"] == "203"
    assert int(first.headers["X-Config-Revision"]) == target
    assert elapsed < CHECK_TIMEOUT + 1.0, elapsed
    # The watch itself recovers too: a later change arrives without another check.
    etcd.etcdctl("put", RATE_LIMIT, "204")
    wait_until(lambda: session.get(server.url + "/").headers["RateLimit-Limit"] == "204", 15)


def test_resume_with_etcd_unreachable_serves_last_good_and_says_stale(frozen_setup):
    etcd, proxy, server = frozen_setup
    session = FreshConnections()
    assert session.get(server.url + "/").headers["RateLimit-Limit"] == "200"
    # The first request also registered this worker as a member: a write to etcd, which
    # a later check may report as the revision it read; let it land before noting it.
    wait_until(lambda: session.get(server.url + "/_status").json()["rate_limit"]["registered"], 10)
    revision = int(session.get(server.url + "/").headers["X-Config-Revision"])

    def cut_off():
        proxy.cut()
        etcd.etcdctl("put", RATE_LIMIT, "300")

    freeze(server, cut_off)
    started = time.monotonic()
    first = session.get(server.url + "/", timeout=10)
    assert time.monotonic() - started < CHECK_TIMEOUT + 1.0
    assert first.status_code == 200
    assert first.headers["RateLimit-Limit"] == "200"  # last good, never a guess
    assert int(first.headers["X-Config-Revision"]) == revision
    status = session.get(server.url + "/_status").json()
    assert status["stale"] is True and status["staleness_seconds"] > STALENESS
    proxy.heal()
    wait_until(lambda: session.get(server.url + "/").headers["RateLimit-Limit"] == "300", 15,
               message="caught up once etcd is reachable")
    wait_until(lambda: session.get(server.url + "/_status").json()["stale"] is False, 10)
