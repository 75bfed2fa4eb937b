"""The schema: parsing and bounds of every key, feature-family matching, the JSON export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from config_watch import (
    FEATURES,
    GLOBAL_PREFIX,
    MAINTENANCE_MODE,
    RATE_LIMIT,
    RATE_LIMIT_BURST,
    SCHEMA,
    THREADS,
    InvalidValue,
    Snapshot,
    service_prefix,
)
from config_watch._model import KeyValue

REPO = Path(__file__).resolve().parents[2]
INT_KEYS = [RATE_LIMIT, RATE_LIMIT_BURST, THREADS]
BOOL_KEYS = [MAINTENANCE_MODE, FEATURES + "new-user-onboarding"]


def spec(key: str):
    found = SCHEMA.spec_for(key)
    assert found is not None, key
    return found


# --- ints ----------------------------------------------------------------------------


@pytest.mark.parametrize("key", INT_KEYS)
def test_int_parses_decimal_with_whitespace_stripped(key):
    s = spec(key)
    assert s.parse(f"  {s.minimum + 1}\n\t".encode()) == s.minimum + 1


@pytest.mark.parametrize("key", INT_KEYS)
def test_int_accepts_explicit_plus_sign(key):
    s = spec(key)
    assert s.parse(f"+{s.maximum}".encode()) == s.maximum


@pytest.mark.parametrize("key", INT_KEYS)
def test_int_accepts_both_bounds(key):
    s = spec(key)
    assert s.parse(str(s.minimum).encode()) == s.minimum
    assert s.parse(str(s.maximum).encode()) == s.maximum


@pytest.mark.parametrize("key", INT_KEYS)
def test_int_below_minimum_is_rejected(key):
    s = spec(key)
    with pytest.raises(InvalidValue, match="below minimum"):
        s.parse(str(s.minimum - 1).encode())


@pytest.mark.parametrize("key", INT_KEYS)
def test_int_above_maximum_is_rejected(key):
    s = spec(key)
    with pytest.raises(InvalidValue, match="above maximum"):
        s.parse(str(s.maximum + 1).encode())


def test_negative_rate_limit_is_rejected():
    with pytest.raises(InvalidValue):
        spec(RATE_LIMIT).parse(b"-1")


def test_minus_zero_rate_limit_is_zero():
    assert spec(RATE_LIMIT).parse(b"-0") == 0


@pytest.mark.parametrize(
    "raw",
    [b"1e3", b"0x10", b"", b"   ", b"1.5", b"10.0", b"1_000", b"ten", b"++5", b"+-5", b"5 5", b"5\x00",
     b"inf", b"NaN", "\uff15".encode(), "\u0661\u0662".encode(), b"--1"],
    ids=repr,
)
@pytest.mark.parametrize("key", INT_KEYS)
def test_int_rejects_non_integers(key, raw):
    with pytest.raises(InvalidValue, match="integer"):
        spec(key).parse(raw)


@pytest.mark.parametrize("key", INT_KEYS)
def test_int_rejects_overly_long_digit_strings(key):
    # Leading zeros keep the value in bounds: only the length can reject it.
    with pytest.raises(InvalidValue):
        spec(key).parse(b"0" * 100 + b"5")
    with pytest.raises(InvalidValue):
        spec(key).parse(b"9" * 100_000)


@pytest.mark.parametrize("key", INT_KEYS + BOOL_KEYS)
def test_invalid_utf8_is_rejected(key):
    with pytest.raises(InvalidValue, match="UTF-8"):
        spec(key).parse(b"\xff\xfe1")


# --- bools ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", BOOL_KEYS)
@pytest.mark.parametrize("raw,expected", [(b"true", True), (b"TRUE", True), (b"True", True), (b" tRuE \n", True),
                                          (b"false", False), (b"FALSE", False), (b"\tFalse ", False)])
def test_bool_accepts_true_false_in_any_case(key, raw, expected):
    assert spec(key).parse(raw) is expected


@pytest.mark.parametrize("key", BOOL_KEYS)
@pytest.mark.parametrize("raw", [b"yes", b"no", b"1", b"0", b"on", b"off", b"", b"t", b"f", b"truee", b"true false"])
def test_bool_rejects_anything_but_true_or_false(key, raw):
    with pytest.raises(InvalidValue, match="true or false"):
        spec(key).parse(raw)


@pytest.mark.parametrize("key", INT_KEYS + BOOL_KEYS)
def test_format_is_canonical_and_parses_back(key):
    s = spec(key)
    value = True if s.type == "bool" else s.maximum
    text = s.format(value)
    assert text == ("true" if s.type == "bool" else str(s.maximum))
    assert s.parse(text.encode()) == value


# --- look-ups ------------------------------------------------------------------------


def test_feature_family_matches_one_level_names():
    s = SCHEMA.spec_for(FEATURES + "new-user-onboarding")
    assert s is not None and s.family and s.type == "bool"
    assert s.matches(FEATURES + "x")


@pytest.mark.parametrize("key", [FEATURES + "a/b", FEATURES, FEATURES[:-1], FEATURES + "a/"])
def test_feature_family_does_not_match_nested_or_bare_prefix(key):
    assert SCHEMA.spec_for(key) is None


@pytest.mark.parametrize("key", [RATE_LIMIT + "x", RATE_LIMIT + "/", "/config/global/other", "rate-limit", ""])
def test_unknown_keys_have_no_spec(key):
    assert SCHEMA.spec_for(key) is None


def test_exact_keys_resolve_to_their_own_spec():
    for key in [RATE_LIMIT, RATE_LIMIT_BURST, THREADS, MAINTENANCE_MODE]:
        assert SCHEMA.spec_for(key).path == key


def test_schema_defaults():
    assert spec(RATE_LIMIT).default == 100
    assert spec(THREADS).default == 4
    assert spec(MAINTENANCE_MODE).default is False
    assert spec(FEATURES + "anything").default is False


def test_rate_limit_burst_defaults_to_the_rate_limit():
    prefixes = [service_prefix("api-gateway"), GLOBAL_PREFIX]
    snap = Snapshot.defaults(prefixes)
    assert snap[RATE_LIMIT_BURST] == snap[RATE_LIMIT] == 100
    listed, rejections = snap.relisted(5, [KeyValue(RATE_LIMIT, b"42", 5)])
    assert rejections == []
    assert listed[RATE_LIMIT_BURST] == 42
    explicit, _ = snap.relisted(6, [KeyValue(RATE_LIMIT, b"42", 5), KeyValue(RATE_LIMIT_BURST, b"7", 6)])
    assert explicit[RATE_LIMIT_BURST] == 7


# --- the JSON export -----------------------------------------------------------------


def test_schema_command_prints_every_key_as_json():
    out = subprocess.run(
        [sys.executable, "-m", "config_watch", "schema"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    exported = json.loads(out.stdout)
    keys = {entry["key"]: entry for entry in exported["keys"]}
    assert set(keys) == {s.path + ("<name>" if s.family else "") for s in SCHEMA.specs}
    for s in SCHEMA.specs:
        entry = keys[s.path + ("<name>" if s.family else "")]
        assert entry["type"] == s.type
        assert entry["family"] == s.family
        if s.default_from:
            assert entry["default_from"] == s.default_from
        else:
            assert entry["default"] == s.default
        if s.type == "int":
            assert (entry["minimum"], entry["maximum"]) == (s.minimum, s.maximum)
    assert keys[RATE_LIMIT]["default"] == 100
    assert keys[THREADS]["minimum"] == 1 and keys[THREADS]["maximum"] == 256
    assert keys[RATE_LIMIT_BURST]["default_from"] == RATE_LIMIT


# --- enum, split and rule values -----------------------------------------------------

from config_watch import EXPERIMENTS, RATE_LIMIT_SCOPE, RATE_LIMITS, RateRule, Variant  # noqa: E402


def test_scope_accepts_its_choices_in_any_case_and_nothing_else():
    s = spec(RATE_LIMIT_SCOPE)
    assert s.parse(b" Cluster ") == "cluster" and s.parse(b"process") == "process"
    with pytest.raises(InvalidValue, match="expected one of cluster, process"):
        s.parse(b"global")


def test_split_parses_variants_in_order():
    assert spec(EXPERIMENTS + "checkout").parse(b"control: 90, treatment:10") == (
        Variant("control", 90), Variant("treatment", 10))


@pytest.mark.parametrize("raw, reason", [
    (b"control:90,treatment:20", "weights sum to 110, not 100"),
    (b"control:100,control:0", "listed twice"),
    (b"Control:100", "names of"),
    (b"control", "names of"),
    (b"control:-5,treatment:105", "below minimum 0"),
    (b"control:1.5,treatment:98.5", "expected an integer"),
    (b",".join(b"v%d:0" % i for i in range(16)) + b",last:100", "more than 16 variants"),
])
def test_bad_splits_are_rejected_with_the_reason(raw, reason):
    with pytest.raises(InvalidValue, match=reason):
        spec(EXPERIMENTS + "checkout").parse(raw)


def test_rule_parses_with_and_without_burst():
    s = spec(RATE_LIMITS + "jobs")
    assert s.parse(b"prefix=/v1/jobs,rate=60,burst=10") == RateRule("/v1/jobs", 60, 10)
    assert s.parse(b"rate=5, prefix=/v1") == RateRule("/v1", 5, 5)
    assert s.parse(b"prefix=/,rate=0") == RateRule("/", 0, 1)
    assert RateRule("/v1/jobs", 60, 10).policy() == "60;w=60;burst=10"


@pytest.mark.parametrize("raw, reason", [
    (b"prefix=v1,rate=5", "must be a URL path"),
    (b"prefix=/v1", "needs prefix= and rate="),
    (b"prefix=/v1,rate=5,burst=0", "burst: below minimum 1"),
    (b"prefix=/v1,rate=x", "rate: expected an integer"),
    (b"prefix=/v1,rate=5,rate=6", "rate given twice"),
    (b"prefix=/v1,rate=5,window=60", "expected prefix="),
    (b"prefix=/a b,rate=5", "must be a URL path"),
])
def test_bad_rules_are_rejected_with_the_reason(raw, reason):
    with pytest.raises(InvalidValue, match=reason):
        spec(RATE_LIMITS + "jobs").parse(raw)


def test_member_records_are_any_text_within_a_bound_and_written_by_the_service():
    from config_watch import INSTANCES, SCHEMA, InvalidValue

    spec = SCHEMA.spec_for(INSTANCES + "vm-12-ab")
    assert spec.type == "member" and spec.written_by == "service" and spec.family
    assert spec.parse(b' {"pid": 12} ') == '{"pid": 12}'
    with pytest.raises(InvalidValue):
        spec.parse(b"x" * 1025)
    assert SCHEMA.spec_for(INSTANCES + "a/b") is None  # one level only
    assert spec.to_json()["written_by"] == "service"
    assert SCHEMA.spec_for("/config/services/api-gateway/rate-limit").to_json()["written_by"] == "operator"


def test_only_the_gateway_keeps_a_membership():
    from config_watch import INSTANCES, SCHEMA

    assert SCHEMA.member_prefixes("api-gateway") == [INSTANCES]
    assert SCHEMA.member_prefixes("data-processor") == []
