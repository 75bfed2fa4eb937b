"""Snapshots: defaults, applying revisions, relisting, immutability, and the store."""

from __future__ import annotations

import threading

import pytest

from config_watch import (
    BREAKER_FAILURES,
    BREAKER_HALF_OPEN_SUCCESSES,
    BREAKER_OPEN_SECONDS,
    EXPERIMENTS,
    FEATURES,
    GLOBAL_PREFIX,
    MAINTENANCE_MODE,
    RATE_LIMIT,
    RATE_LIMIT_BURST,
    RATE_LIMIT_SCOPE,
    RATE_LIMITS,
    THREADS,
    UPSTREAM_TIMEOUT_MS,
    Snapshot,
    SnapshotStore,
    service_prefix,
)
from config_watch._model import Event, KeyValue

PREFIXES = [service_prefix("api-gateway"), GLOBAL_PREFIX]
ONBOARDING = FEATURES + "new-user-onboarding"


def put(key: str, value: str | bytes, rev: int) -> Event:
    return Event("put", key, value.encode() if isinstance(value, str) else value, rev)


def delete(key: str, rev: int) -> Event:
    return Event("delete", key, b"", rev)


def at(revision: int, *kvs: tuple[str, str]) -> Snapshot:
    """A synced snapshot listed at `revision` holding `kvs`."""
    snap, rejections = Snapshot.defaults(PREFIXES).relisted(revision, [KeyValue(k, v.encode(), revision) for k, v in kvs])
    assert rejections == []
    return snap


# --- defaults and apply ---------------------------------------------------------------


def test_defaults_is_revision_zero_unsynced_with_schema_defaults():
    snap = Snapshot.defaults(PREFIXES)
    assert snap.revision == 0 and not snap.synced
    assert dict(snap.values) == {
        RATE_LIMIT: 100, RATE_LIMIT_BURST: 100, MAINTENANCE_MODE: False, RATE_LIMIT_SCOPE: "cluster",
        UPSTREAM_TIMEOUT_MS: 5000, BREAKER_FAILURES: 5, BREAKER_OPEN_SECONDS: 30, BREAKER_HALF_OPEN_SUCCESSES: 3,
    }
    assert dict(snap.features) == {}
    assert dict(snap.family(EXPERIMENTS)) == {} and dict(snap.family(RATE_LIMITS)) == {}
    assert snap.feature("new-user-onboarding") is False


def test_defaults_hold_only_keys_under_the_watched_prefixes():
    snap = Snapshot.defaults([service_prefix("data-processor"), GLOBAL_PREFIX])
    assert dict(snap.values) == {THREADS: 4, MAINTENANCE_MODE: False}


def test_put_publishes_the_typed_value_at_its_revision():
    snap, rejections = Snapshot.defaults(PREFIXES).apply([put(RATE_LIMIT, "7", 3), put(ONBOARDING, "true", 3)])
    assert rejections == []
    assert snap.revision == 3 and snap.synced
    assert snap[RATE_LIMIT] == 7 and snap[RATE_LIMIT_BURST] == 7
    assert snap.feature("new-user-onboarding") is True


def test_one_revision_of_several_keys_is_applied_together():
    base = at(2)
    snap, _ = base.apply([put(RATE_LIMIT, "1", 3), put(MAINTENANCE_MODE, "true", 3), put(RATE_LIMIT_BURST, "9", 3)])
    assert (snap[RATE_LIMIT], snap[MAINTENANCE_MODE], snap[RATE_LIMIT_BURST]) == (1, True, 9)
    assert base[RATE_LIMIT] == 100 and base[MAINTENANCE_MODE] is False  # the old one is untouched


def test_delete_restores_default():
    snap = at(5, (RATE_LIMIT, "7"), (ONBOARDING, "true"))
    after, _ = snap.apply([delete(RATE_LIMIT, 6), delete(ONBOARDING, 6)])
    assert after[RATE_LIMIT] == 100 and after[RATE_LIMIT_BURST] == 100
    assert after.feature("new-user-onboarding") is False
    assert "new-user-onboarding" not in after.features


def test_bad_value_keeps_last_good_value_and_records_a_rejection():
    snap = at(5, (RATE_LIMIT, "7"))
    after, rejections = snap.apply([put(RATE_LIMIT, "lots", 6)])
    assert after[RATE_LIMIT] == 7
    assert after.revision == 6
    assert [(r.key, r.revision, r.value_preview) for r in rejections] == [(RATE_LIMIT, 6, "lots")]
    assert "integer" in rejections[0].reason
    assert after.rejected[RATE_LIMIT] == rejections[0]


def test_bad_value_without_a_previous_good_value_keeps_the_default():
    after, rejections = at(5).apply([put(MAINTENANCE_MODE, "yes", 6)])
    assert after[MAINTENANCE_MODE] is False
    assert len(rejections) == 1


def test_good_value_after_a_rejection_clears_the_rejection():
    bad, _ = at(5).apply([put(RATE_LIMIT, "-3", 6)])
    good, rejections = bad.apply([put(RATE_LIMIT, "30", 7)])
    assert rejections == [] and good[RATE_LIMIT] == 30
    assert RATE_LIMIT not in good.rejected


def test_rejection_preview_is_bounded_and_survives_invalid_utf8():
    after, rejections = at(1).apply([put(RATE_LIMIT, b"\xff" * 10_000, 2)])
    assert len(rejections[0].value_preview) <= 65
    assert after[RATE_LIMIT] == 100


def test_unknown_key_in_scope_is_rejected():
    after, rejections = at(1).apply([put(GLOBAL_PREFIX + "no-such-key", "1", 2), put(FEATURES + "a/b", "true", 2)])
    assert {r.key for r in rejections} == {GLOBAL_PREFIX + "no-such-key", FEATURES + "a/b"}
    assert all(r.reason == "key not in schema" for r in rejections)
    assert GLOBAL_PREFIX + "no-such-key" not in after.values
    assert dict(after.features) == {}


def test_events_not_newer_than_the_snapshot_are_ignored():
    snap = at(5, (RATE_LIMIT, "7"))
    after, rejections = snap.apply([put(RATE_LIMIT, "1", 5), delete(RATE_LIMIT, 4), put(MAINTENANCE_MODE, "nope", 3)])
    assert after is snap
    assert rejections == []


def test_out_of_scope_keys_are_ignored_but_the_revision_advances():
    snap = at(5, (RATE_LIMIT, "7"))
    after, rejections = snap.apply([put(THREADS, "8", 6), put("/config/services/other/x", "junk", 6)])
    assert rejections == []
    assert after.revision == 6
    assert after.same_config(snap)
    assert THREADS not in after.values


# --- relist --------------------------------------------------------------------------


def test_relisted_replaces_every_value_and_drops_keys_no_longer_listed():
    snap = at(5, (RATE_LIMIT, "7"), (ONBOARDING, "true"))
    fresh, rejections = snap.relisted(9, [KeyValue(MAINTENANCE_MODE, b"true", 8)])
    assert rejections == []
    assert fresh.revision == 9 and fresh.synced
    assert fresh[RATE_LIMIT] == 100 and fresh[MAINTENANCE_MODE] is True
    assert fresh.feature("new-user-onboarding") is False


def test_relisted_bad_value_keeps_the_previous_good_value():
    snap = at(5, (RATE_LIMIT, "7"))
    fresh, rejections = snap.relisted(9, [KeyValue(RATE_LIMIT, b"7.5", 9)])
    assert fresh[RATE_LIMIT] == 7
    assert [r.key for r in rejections] == [RATE_LIMIT]
    assert fresh.rejected[RATE_LIMIT].revision == 9


def test_relisted_does_not_report_a_rejection_again_at_the_same_revision():
    bad, first = at(5).apply([put(RATE_LIMIT, "x", 6)])
    fresh, again = bad.relisted(8, [KeyValue(RATE_LIMIT, b"x", 6)])
    assert len(first) == 1 and again == []
    assert RATE_LIMIT in fresh.rejected


def test_relisted_ignores_out_of_scope_keys():
    fresh, rejections = at(1).relisted(4, [KeyValue(THREADS, b"junk", 4), KeyValue("/config/zzz", b"1", 3)])
    assert rejections == [] and THREADS not in fresh.values


# --- immutability ----------------------------------------------------------------------


def test_values_and_features_mappings_are_read_only():
    snap = at(2, (ONBOARDING, "true"))
    with pytest.raises(TypeError):
        snap.values[RATE_LIMIT] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        snap.features["new-user-onboarding"] = False  # type: ignore[index]
    with pytest.raises(TypeError):
        snap.accepted[RATE_LIMIT] = None  # type: ignore[index]
    with pytest.raises(AttributeError):
        snap.extra = 1  # type: ignore[attr-defined]


def test_snapshot_does_not_alias_the_mappings_it_was_built_from():
    accepted = dict(at(3, (RATE_LIMIT, "7")).accepted)
    snap = Snapshot(3, accepted, {}, PREFIXES, synced=True)
    accepted.clear()
    assert snap[RATE_LIMIT] == 7


# --- the store -----------------------------------------------------------------------


def test_publish_refuses_a_lower_revision():
    store = SnapshotStore(at(5, (RATE_LIMIT, "7")))
    assert store.publish(at(4, (RATE_LIMIT, "1"))) is False
    assert store.current.revision == 5 and store.current[RATE_LIMIT] == 7


def test_publish_accepts_a_higher_revision():
    store = SnapshotStore(at(5))
    newer = at(6, (RATE_LIMIT, "1"))
    assert store.publish(newer) is True
    assert store.current is newer


def test_publish_refuses_the_same_revision_once_synced():
    first = at(5)
    store = SnapshotStore(first)
    assert store.publish(at(5, (RATE_LIMIT, "1"))) is False
    assert store.current is first


def test_publish_accepts_the_first_sync_at_revision_zero():
    store = SnapshotStore(Snapshot.defaults(PREFIXES))
    assert store.publish(Snapshot.defaults(PREFIXES)) is False  # unsynced over unsynced: nothing new
    synced = at(0)
    assert store.publish(synced) is True
    assert store.current.synced


def test_wait_for_returns_the_snapshot_that_satisfies_the_predicate():
    store = SnapshotStore(at(1))
    target = at(3, (RATE_LIMIT, "3"))
    timer = threading.Timer(0.05, store.publish, args=(target,))
    timer.start()
    try:
        assert store.wait_for(lambda s: s.revision >= 3, timeout=5) is target
    finally:
        timer.join()


def test_wait_for_returns_none_on_timeout():
    store = SnapshotStore(at(1))
    assert store.wait_for(lambda s: s.revision >= 2, timeout=0.05) is None


def test_wait_for_returns_at_once_when_already_true():
    first = at(1)
    assert SnapshotStore(first).wait_for(lambda s: s.revision == 1, timeout=0) is first


def test_relist_does_not_bring_back_a_value_from_before_a_delete():
    """Deleted, then recreated with a bad value: the list cannot show the delete, the
    create revision can. The old incarnation's good value must not return."""
    from config_watch import MAINTENANCE_MODE
    from config_watch._model import KeyValue

    snap, _ = Snapshot.defaults(PREFIXES).relisted(5, [KeyValue(MAINTENANCE_MODE, b"true", 5, 5)])
    assert snap[MAINTENANCE_MODE] is True
    relisted, rejections = snap.relisted(9, [KeyValue(MAINTENANCE_MODE, b"off", 9, 8)])
    assert relisted[MAINTENANCE_MODE] is False  # the default, not the deleted "true"
    assert [r.key for r in rejections] == [MAINTENANCE_MODE]
    # The same bad value on the same incarnation keeps the last good value.
    kept, _ = snap.relisted(9, [KeyValue(MAINTENANCE_MODE, b"off", 9, 5)])
    assert kept[MAINTENANCE_MODE] is True
