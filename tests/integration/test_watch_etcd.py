"""The watcher against a real etcd: list, watch, txn atomicity, cuts, compaction, restarts."""

from __future__ import annotations

from config_watch import MAINTENANCE_MODE, RATE_LIMIT, RATE_LIMIT_BURST
from tests.support import record_published, wait_until

ONBOARDING = "/config/services/api-gateway/features/new-user-onboarding"



def test_initial_list_reflects_etcd(etcd, make_watcher):
    etcd.etcdctl("put", RATE_LIMIT, "42")
    etcd.etcdctl("put", ONBOARDING, "true")
    etcd.etcdctl("put", "/config/services/data-processor/threads", "8")  # another service's key
    watcher = make_watcher(etcd.endpoint)
    assert watcher.wait_synced(5)
    snap = watcher.store.current
    assert snap.revision == etcd.revision()
    assert snap[RATE_LIMIT] == 42 and snap[RATE_LIMIT_BURST] == 42
    assert snap.feature("new-user-onboarding") is True
    assert "/config/services/data-processor/threads" not in snap.values


def test_update_and_delete_restore_default(etcd, make_watcher):
    watcher = make_watcher(etcd.endpoint)
    assert watcher.wait_synced(5)
    etcd.etcdctl("put", RATE_LIMIT, "7")
    wait_until(lambda: watcher.store.current[RATE_LIMIT] == 7, 5, message="update applied")
    etcd.etcdctl("del", RATE_LIMIT)
    wait_until(lambda: watcher.store.current.revision == etcd.revision(), 5, message="delete applied")
    assert watcher.store.current[RATE_LIMIT] == 100


def test_bad_value_is_rejected_and_last_good_value_stays(etcd, make_watcher, caplog):
    etcd.etcdctl("put", RATE_LIMIT, "50")
    watcher = make_watcher(etcd.endpoint)
    assert watcher.wait_synced(5)
    for bad in ("lots", "-5", "99999999999999999999999"):
        etcd.etcdctl("put", "--", RATE_LIMIT, bad)
        revision = etcd.revision()
        wait_until(lambda: watcher.store.current.revision == revision, 5, message="bad value seen")
        assert watcher.store.current[RATE_LIMIT] == 50
        rejected = watcher.status().rejected
        assert rejected[0].key == RATE_LIMIT and rejected[0].revision == revision
    logged = [r for r in caplog.records if getattr(r, "json_fields", {}).get("event") == "config_rejected"]
    assert {r.json_fields["value"] for r in logged} >= {"lots", "-5"}
    etcd.etcdctl("put", RATE_LIMIT, "60")
    wait_until(lambda: watcher.store.current[RATE_LIMIT] == 60, 5)
    assert watcher.status().rejected == ()


def test_multi_key_txn_is_published_whole(etcd, make_watcher):
    watcher = make_watcher(etcd.endpoint)
    assert watcher.wait_synced(5)
    # Writes made before the watch is open arrive as one catch-up batch of several
    # revisions (one snapshot, rightly): wait for the watch, not just the list.
    wait_until(lambda: watcher.connected, 5, message="watch open")
    published = record_published(watcher)
    for i in range(1, 21):
        flag = "true" if i % 2 else "false"
        etcd.etcdctl(
            "txn",
            input=f"\nput {RATE_LIMIT} {i}\nput {MAINTENANCE_MODE} {flag}\nput {ONBOARDING} {flag}\n\n\n",
        )
    wait_until(lambda: watcher.store.current[RATE_LIMIT] == 20, 10, message="all txns applied")
    assert len(published) == 20
    for snap in published:
        odd = bool(snap[RATE_LIMIT] % 2)
        assert snap[MAINTENANCE_MODE] is odd and snap.feature("new-user-onboarding") is odd, snap


def test_cut_connection_then_heal_delivers_every_change(etcd, proxy, make_watcher):
    watcher = make_watcher(proxy.endpoint)
    assert watcher.wait_synced(5)
    published = record_published(watcher)
    proxy.cut()
    wait_until(lambda: not watcher.connected, 5, message="watcher notices the cut")
    for i in range(1, 11):
        etcd.etcdctl("put", f"/config/services/api-gateway/features/f{i}", "true")
    etcd.etcdctl("put", RATE_LIMIT, "3")
    proxy.heal()
    target = etcd.revision()
    wait_until(lambda: watcher.store.current.revision == target, 15, message="caught up after heal")
    snap = watcher.store.current
    assert snap[RATE_LIMIT] == 3
    assert all(snap.feature(f"f{i}") for i in range(1, 11))
    # Resumed from the last applied revision: no relist was needed.
    assert watcher.counters["relists"] == 1
    revisions = [s.revision for s in published]
    assert revisions == sorted(revisions)


def test_compaction_while_cut_relists(etcd, proxy, make_watcher):
    etcd.etcdctl("put", RATE_LIMIT, "10")
    etcd.etcdctl("put", ONBOARDING, "true")
    watcher = make_watcher(proxy.endpoint)
    assert watcher.wait_synced(5)
    proxy.cut()
    wait_until(lambda: not watcher.connected, 5)
    etcd.etcdctl("put", RATE_LIMIT, "11")
    etcd.etcdctl("del", ONBOARDING)
    etcd.etcdctl("put", RATE_LIMIT, "12")
    etcd.etcdctl("compact", str(etcd.revision()))
    proxy.heal()
    target = etcd.revision()
    wait_until(lambda: watcher.store.current.revision == target, 15, message="relisted after compaction")
    snap = watcher.store.current
    assert snap[RATE_LIMIT] == 12 and snap.feature("new-user-onboarding") is False
    assert watcher.counters["relists"] == 2


def test_etcd_restart_on_same_data_dir_is_caught_up(etcd, make_watcher):
    etcd.etcdctl("put", RATE_LIMIT, "20")
    watcher = make_watcher(etcd.endpoint)
    assert watcher.wait_synced(5)
    etcd.stop()
    wait_until(lambda: not watcher.connected, 5)
    assert watcher.store.current[RATE_LIMIT] == 20  # the last good snapshot stays in force
    etcd.restart()
    etcd.etcdctl("put", RATE_LIMIT, "21")
    target = etcd.revision()
    wait_until(lambda: watcher.store.current.revision == target, 15, message="caught up after restart")
    assert watcher.store.current[RATE_LIMIT] == 21
    assert watcher.connected


def test_moves_to_next_endpoint_when_one_fails(etcd, make_watcher):
    from tools.etcd_server import free_port

    dead = f"127.0.0.1:{free_port()}"
    watcher = make_watcher(f"{dead},{etcd.endpoint}")
    assert watcher.wait_synced(10)
    assert watcher.endpoint == etcd.endpoint
    assert watcher.store.current.revision == etcd.revision()
