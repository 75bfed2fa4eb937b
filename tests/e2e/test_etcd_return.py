"""etcd comes back (restarted, or restored from a backup) under the real functions-framework
with two workers: every worker serves what etcd now holds, promptly."""

from __future__ import annotations

import pytest
import requests

from config_watch import RATE_LIMIT
from tests.support import wait_until
from tools.fault_figures import WorkerPollers, restart_recovery
from tools.function_server import FunctionServer

ONBOARDING = "/config/services/api-gateway/features/new-user-onboarding"
WORKERS = 2


@pytest.fixture
def gateway(etcd, tmp_path):
    etcd.etcdctl("put", RATE_LIMIT, "10")
    # A staleness bound far away, so only the loop (and a check while it is down) can
    # bring a worker back; a short dead-stream bound, so the tests need not wait long.
    # Membership leases that outlast the test: a worker renewing its record after a
    # restore writes a revision of its own, which the exact revisions below cannot allow.
    env = {"ETCD_ENDPOINTS": etcd.endpoint, "CONFIG_STALENESS_SECONDS": "60", "ETCD_DEAD_STREAM_SECONDS": "1.5",
           "INSTANCE_TTL_SECONDS": "600"}
    with FunctionServer(env, workers=WORKERS, log_path=str(tmp_path / "server.log")) as fn:
        yield fn


def test_every_worker_serves_a_put_made_as_etcd_returns_within_a_second(etcd, gateway):
    with WorkerPollers(gateway, WORKERS) as pollers:
        # Down long enough for the loop's backoff to reach its 5 s cap: only a request's
        # check, which wakes the loop, brings the workers back within the bound.
        took = restart_recovery(etcd, pollers, down_seconds=5.0, value=11)
    assert pollers.still_pinned()
    # The target is 1 s (`make chaos` reports the figure); the bound allows a noisy machine.
    assert len(took) == WORKERS and max(took) < 2.0, took


def test_every_worker_follows_a_restore_from_backup(etcd, gateway, tmp_path):
    etcd.etcdctl("put", ONBOARDING, "true")
    backup = str(tmp_path / "backup.db")
    etcd.snapshot_save(backup)
    restored_revision = etcd.revision()
    for value in ("20", "30", "40"):
        etcd.etcdctl("put", RATE_LIMIT, value)
    etcd.etcdctl("del", ONBOARDING)
    after_backup = etcd.revision()
    with WorkerPollers(gateway, WORKERS) as pollers:
        assert pollers.first_serving(after_backup, 0.0, 15).keys() == pollers.sessions.keys()
        etcd.restore(backup)
        assert etcd.revision() == restored_revision < after_backup
        workers = list(pollers.sessions)
        wait_until(lambda: all(pollers.latest(pid) == restored_revision for pid in workers), 10,
                   message=f"every worker serving the restored revision {restored_revision}")
        for _ in range(4):  # new connections, to either worker
            response = requests.get(gateway.url + "/onboarding", headers={"Connection": "close"}, timeout=10)
            assert response.status_code == 200 and response.headers["RateLimit-Limit"] == "10"
        # Writes after the restore reuse revisions the workers saw before it: applied all the same.
        etcd.etcdctl("put", RATE_LIMIT, "50")
        later = etcd.revision()
        assert later <= after_backup
        wait_until(lambda: all(pollers.latest(pid) == later for pid in workers), 10, message="later write applied")
        wait_until(lambda: all(pollers.status[pid]["revision"] == later for pid in workers), 10)
        assert pollers.still_pinned()
        status = dict(pollers.status)
    assert all(s["counters"]["restores"] == 1 for s in status.values())


def test_status_hides_addresses_and_error_text_unless_details_are_on(etcd, tmp_path):
    from tools.etcd_server import free_port

    dead = f"127.0.0.1:{free_port()}"
    for details, shown in (("", False), ("true", True)):
        env = {"ETCD_ENDPOINTS": f"{dead},{etcd.endpoint}", "STATUS_DETAILS": details}
        with FunctionServer(env, workers=1, log_path=str(tmp_path / "server.log")) as fn:
            requests.get(fn.url + "/", timeout=10)
            status = wait_until(lambda: (s := requests.get(fn.url + "/_status", timeout=10).json())["synced"] and s,
                                10)
            text = str(status)
            assert (str(etcd.client_port) in text) is shown and ("endpoint" in status) is shown
            assert ("last_error" in status) is shown
