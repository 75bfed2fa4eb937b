"""The provider's flag-key rules and change detection, on snapshots built in memory."""

from __future__ import annotations

from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from config_watch import (
    EXPERIMENTS,
    FEATURES,
    GLOBAL_PREFIX,
    MAINTENANCE_MODE,
    RATE_LIMIT,
    RATE_LIMIT_BURST,
    THREADS,
    Snapshot,
    service_prefix,
)
from config_watch._model import KeyValue
from config_watch.openfeature import changed_flags, lookup


def snapshot_of(revision: int, values: dict[str, str], service: str = "api-gateway") -> Snapshot:
    kvs = [KeyValue(key, value.encode(), revision, 1) for key, value in values.items()]
    return Snapshot.defaults([service_prefix(service), GLOBAL_PREFIX]).relisted(revision, kvs)[0]


def test_a_service_without_a_features_family_has_no_boolean_names():
    snapshot = snapshot_of(5, {THREADS: "8", MAINTENANCE_MODE: "true"}, service="data-processor")
    assert lookup(snapshot, "new-user-onboarding", "bool", "data-processor")[0] is ErrorCode.FLAG_NOT_FOUND
    assert lookup(snapshot, THREADS, "int", "data-processor").value == 8
    assert lookup(snapshot, MAINTENANCE_MODE, "bool", "data-processor").value is True
    assert lookup(snapshot, RATE_LIMIT, "int", "data-processor")[0] is ErrorCode.FLAG_NOT_FOUND


def test_names_resolve_in_the_family_their_type_names():
    snapshot = snapshot_of(5, {FEATURES + "checkout": "true", EXPERIMENTS + "checkout": "a:50,b:50"})
    assert lookup(snapshot, "checkout", "bool", "api-gateway").value is True
    assert lookup(snapshot, "checkout", "string", "api-gateway").kind == "split"
    found = lookup(snapshot, "other", "bool", "api-gateway")
    assert (found.value, found.reason, found.key) == (False, Reason.DEFAULT, FEATURES + "other")
    for key in ("", "a/b", FEATURES + "checkout"):  # not a name; family members have no full-path form
        assert lookup(snapshot, key, "bool", "api-gateway")[0] is ErrorCode.FLAG_NOT_FOUND, key


def test_changed_flags_are_what_a_caller_could_see_change():
    before = snapshot_of(5, {FEATURES + "a": "true", EXPERIMENTS + "x": "a:50,b:50", RATE_LIMIT: "10"})
    after = snapshot_of(9, {FEATURES + "a": "true", FEATURES + "off": "false", EXPERIMENTS + "y": "a:50,b:50",
                            RATE_LIMIT: "20"})
    assert changed_flags(before, after, "api-gateway") == sorted([RATE_LIMIT, RATE_LIMIT_BURST, "x", "y"])
    assert changed_flags(after, after, "api-gateway") == []
    # A restore to an older revision is a change like any other.
    assert changed_flags(after, before, "api-gateway") == sorted([RATE_LIMIT, RATE_LIMIT_BURST, "x", "y"])
