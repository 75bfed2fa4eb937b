"""A/B assignment: deterministic, language-neutral, sticky when a variant grows."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from config_watch import (
    EXPERIMENTS,
    GLOBAL_PREFIX,
    SCHEMA,
    Snapshot,
    assign,
    assignments,
    experiments_header,
    service_prefix,
    variant_for,
)
from config_watch._model import Event
from config_watch._schema import parse_split
from config_watch.experiments import bucket

PREFIXES = [service_prefix("api-gateway"), GLOBAL_PREFIX]
IDENTITIES = [f"ip:10.0.{i // 256}.{i % 256}" for i in range(10_000)]


def snapshot_with(**experiments: str) -> Snapshot:
    events = [Event("put", EXPERIMENTS + name, value.encode(), 2) for name, value in experiments.items()]
    snap, rejections = Snapshot.defaults(PREFIXES).apply(events)
    assert rejections == []
    return snap


def test_bucket_is_the_documented_sha1_prefix():
    # The scheme by hand, as another language would write it.
    digest = hashlib.sha1(b"checkout.key:abc").hexdigest()
    assert bucket("checkout", "key:abc") == int(digest[:15], 16)


def test_assignment_is_deterministic():
    split = parse_split("control:50,treatment:50")
    first = [variant_for(split, "checkout", i) for i in IDENTITIES[:500]]
    assert first == [variant_for(split, "checkout", i) for i in IDENTITIES[:500]]
    assert set(first) == {"control", "treatment"}


@pytest.mark.parametrize("text", ["control:90,treatment:10", "a:34,b:33,c:33", "a:1,b:0,c:99"])
def test_observed_shares_are_within_one_and_a_half_points_of_the_weights(text):
    split = parse_split(text)
    counts = Counter(variant_for(split, "exp", i) for i in IDENTITIES)
    for v in split:
        assert abs(100 * counts[v.name] / len(IDENTITIES) - v.weight) <= 1.5, (v, counts)


def test_zero_weight_variant_gets_no_one():
    split = parse_split("a:0,b:100,c:0")
    assert {variant_for(split, "exp", i) for i in IDENTITIES[:2000]} == {"b"}


@pytest.mark.parametrize("before, after, grown", [
    ("control:90,treatment:10", "control:80,treatment:20", "treatment"),
    ("control:50,treatment:50", "control:70,treatment:30", "control"),
    ("a:30,b:30,c:40", "a:20,b:50,c:30", "b"),
    ("a:30,b:30,c:40", "a:40,b:30,c:30", "a"),
])
def test_a_growing_variant_keeps_every_client_it_had(before, after, grown):
    old, new = parse_split(before), parse_split(after)
    members = [i for i in IDENTITIES if variant_for(old, "exp", i) == grown]
    assert members, "the test needs members to follow"
    assert all(variant_for(new, "exp", i) == grown for i in members)


def test_experiments_split_clients_independently():
    split = parse_split("control:50,treatment:50")
    a = [variant_for(split, "one", i) for i in IDENTITIES[:2000]]
    b = [variant_for(split, "two", i) for i in IDENTITIES[:2000]]
    agree = sum(x == y for x, y in zip(a, b)) / len(a)
    assert 0.4 < agree < 0.6  # the name is in the hash: no two experiments share their split


def test_assign_reads_the_snapshot_and_none_without_the_experiment():
    snap = snapshot_with(checkout="control:0,treatment:100")
    assert assign(snap, "checkout", "ip:1.2.3.4") == "treatment"
    assert assign(snap, "missing", "ip:1.2.3.4") is None


def test_assignments_and_header_are_sorted_by_name():
    snap = snapshot_with(zeta="on:100", alpha="x:0,y:100")
    assigned = assignments(snap, "key:1")
    assert list(assigned) == ["alpha", "zeta"]
    assert experiments_header(assigned) == "alpha=y,zeta=on"
    assert experiments_header(assignments(Snapshot.defaults(PREFIXES), "key:1")) == ""


def test_a_bad_split_keeps_the_last_good_one():
    snap = snapshot_with(checkout="control:90,treatment:10")
    after, rejections = snap.apply([Event("put", EXPERIMENTS + "checkout", b"control:90,treatment:20", 3)])
    assert [r.reason for r in rejections] == ["weights sum to 110, not 100"]
    assert after.family(EXPERIMENTS)["checkout"] == parse_split("control:90,treatment:10")
    assert after.to_json()["experiments"] == {"checkout": "control:90,treatment:10"}


def test_deleting_the_key_ends_the_experiment():
    snap = snapshot_with(checkout="control:90,treatment:10")
    after, _ = snap.apply([Event("delete", EXPERIMENTS + "checkout", b"", 3)])
    assert assign(after, "checkout", "ip:1.2.3.4") is None
    assert assignments(after, "ip:1.2.3.4") == {}


def test_the_schema_export_documents_the_scheme():
    exported = SCHEMA.to_json()
    assert "SHA-1" in exported["experiment_assignment"]["hash"]
    spec = next(k for k in exported["keys"] if k["key"] == EXPERIMENTS + "<name>")
    assert spec["type"] == "split" and "summing to 100" in spec["format"]
