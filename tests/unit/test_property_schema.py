"""Properties of parsing and of snapshots, over generated inputs (Hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

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
from config_watch._model import Event, KeyValue
from config_watch._schema import (
    BREAKER_FAILURES, EXPERIMENTS, RATE_LIMIT_SCOPE, RATE_LIMITS, RateRule, Variant,
)

PREFIXES = [service_prefix("api-gateway"), GLOBAL_PREFIX]
SPECS = st.sampled_from(SCHEMA.specs)

# Text that looks like a value, so the interesting branches are reached often.
value_like_text = st.one_of(
    st.integers(min_value=-(10**25), max_value=10**25).map(str),
    st.sampled_from(["true", "false", "TRUE", "False", "yes", "1", "0", "", "1e3", "0x10", "+7", "-0"]),
    st.text(max_size=30),
)
raw_values = st.one_of(
    st.binary(max_size=64),
    value_like_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.tuples(st.sampled_from([" ", "\t", "\n", "\u00a0", ""]), value_like_text).map(
        lambda p: (p[0] + p[1] + p[0]).encode("utf-8", "surrogatepass")
    ),
)


def within_spec(spec, value) -> bool:
    if spec.type == "bool":
        return type(value) is bool
    if spec.type == "enum":
        return value in spec.choices
    if spec.type == "split":
        return (sum(v.weight for v in value) == 100 and len({v.name for v in value}) == len(value)
                and all(0 <= v.weight <= 100 for v in value))
    if spec.type == "rule":
        return value.prefix.startswith("/") and 0 <= value.rate and 1 <= value.burst
    if spec.type == "member":
        return type(value) is str and len(value) <= 1024
    if type(value) is not int:
        return False
    return (spec.minimum is None or value >= spec.minimum) and (spec.maximum is None or value <= spec.maximum)


@given(spec=SPECS, raw=raw_values)
def test_parse_returns_a_valid_value_or_raises_invalid_value(spec, raw):
    try:
        value = spec.parse(raw)
    except InvalidValue:
        return
    assert within_spec(spec, value), (spec.path, raw, value)


variant_names = st.from_regex(r"[a-z0-9-]{1,32}", fullmatch=True)


@st.composite
def splits(draw):
    names = draw(st.lists(variant_names, min_size=1, max_size=6, unique=True))
    cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=len(names) - 1, max_size=len(names) - 1)))
    bounds = [0, *cuts, 100]
    return tuple(Variant(n, bounds[i + 1] - bounds[i]) for i, n in enumerate(names))


rules = st.builds(
    RateRule,
    st.from_regex(r"/[a-zA-Z0-9/_.-]{0,40}", fullmatch=True),
    st.integers(0, 1_000_000),
    st.integers(1, 1_000_000),
)


def valid_values(spec):
    if spec.type == "bool":
        return st.booleans()
    if spec.type == "enum":
        return st.sampled_from(spec.choices)
    if spec.type == "split":
        return splits()
    if spec.type == "rule":
        return rules
    if spec.type == "member":
        return st.text(max_size=200).map(str.strip)  # values are read stripped
    return st.integers(min_value=spec.minimum, max_value=spec.maximum)


@given(data=st.data(), spec=SPECS)
def test_format_then_parse_round_trips(data, spec):
    value = data.draw(valid_values(spec))
    assert spec.parse(spec.format(value).encode()) == value


# --- snapshots -----------------------------------------------------------------------

KEYS = [
    RATE_LIMIT, RATE_LIMIT_BURST, MAINTENANCE_MODE,
    FEATURES + "new-user-onboarding", FEATURES + "beta",
    EXPERIMENTS + "checkout", RATE_LIMITS + "jobs", RATE_LIMIT_SCOPE, BREAKER_FAILURES,
    GLOBAL_PREFIX + "unknown",  # in scope, not in the schema: always rejected
    THREADS,  # another service's key: out of scope for the gateway
    "/config/other/x",
]


def event_value(key):
    spec = SCHEMA.spec_for(key)
    if spec is None:
        return raw_values
    return st.one_of(valid_values(spec).map(lambda v: spec.format(v).encode()), raw_values)


@st.composite
def event_batches(draw):
    """Whole revisions in order, with some replays of revisions already seen."""
    batches, revision = [], 0
    for _ in range(draw(st.integers(1, 8))):
        if revision and draw(st.booleans()) and draw(st.booleans()):
            rev = draw(st.integers(1, revision))  # a replay: must change nothing
        else:
            revision += draw(st.integers(1, 3))
            rev = revision
        events = []
        for _ in range(draw(st.integers(1, 4))):
            key = draw(st.sampled_from(KEYS))
            if draw(st.integers(0, 4)) == 0:
                events.append(Event("delete", key, b"", rev))
            else:
                events.append(Event("put", key, draw(event_value(key)), rev))
        batches.append(events)
    return batches


def expected_values(model: dict) -> dict:
    values = {}
    for spec in SCHEMA.exact_keys_under(PREFIXES):
        if spec.default_from is None:
            values[spec.path] = model.get(spec.path, spec.default)
    values[RATE_LIMIT_BURST] = model.get(RATE_LIMIT_BURST, values[RATE_LIMIT])
    return values


def model_apply(model: dict, rejected: set, revision: int, events) -> tuple[dict, set, int]:
    """The reference: last good value per key, deletes forget, bad values change nothing."""
    model, rejected = dict(model), set(rejected)
    new_revision = revision
    for e in events:
        if e.mod_revision <= revision:
            continue
        new_revision = max(new_revision, e.mod_revision)
        if not e.key.startswith(tuple(PREFIXES)):
            continue
        if e.kind == "delete":
            model.pop(e.key, None)
            rejected.discard(e.key)
            continue
        spec = SCHEMA.spec_for(e.key)
        try:
            if spec is None:
                raise InvalidValue("unknown")
            model[e.key] = spec.parse(e.value)
            rejected.discard(e.key)
        except InvalidValue:
            rejected.add(e.key)
    return model, rejected, new_revision


@settings(max_examples=150)
@given(batches=event_batches())
def test_apply_never_raises_and_publishes_only_valid_values(batches):
    snap = Snapshot.defaults(PREFIXES)
    model: dict = {}
    rejected: set = set()
    for events in batches:
        before = snap
        snap, rejections = snap.apply(events)
        model, rejected, revision = model_apply(model, rejected, before.revision, events)
        assert snap.revision == revision
        assert snap.revision >= before.revision
        if revision == before.revision:
            assert snap is before  # a replay publishes nothing new
        assert dict(snap.values) == expected_values(model)
        for family in (FEATURES, EXPERIMENTS, RATE_LIMITS):
            assert dict(snap.family(family)) == {
                k[len(family):]: v for k, v in model.items() if k.startswith(family)}
        for key, accepted in snap.accepted.items():
            spec = SCHEMA.spec_for(key)
            assert spec is not None and within_spec(spec, accepted.value)
        assert set(snap.rejected) == rejected
        assert {r.key for r in rejections} <= {e.key for e in events if e.kind == "put"}
        assert THREADS not in snap.values and THREADS not in snap.accepted


@settings(max_examples=100)
@given(
    previous=event_batches(),
    listed=st.lists(st.sampled_from(KEYS).flatmap(lambda k: st.tuples(st.just(k), event_value(k))), max_size=8,
                    unique_by=lambda kv: kv[0]),
)
def test_relist_keeps_last_good_values_for_bad_listed_values(previous, listed):
    snap = Snapshot.defaults(PREFIXES)
    for events in previous:
        snap, _ = snap.apply(events)
    good_before = {k: a.value for k, a in snap.accepted.items()}
    relisted, _ = snap.relisted(snap.revision + 1, [KeyValue(k, v, snap.revision + 1) for k, v in listed])
    model = {}
    for key, raw in listed:
        if not key.startswith(tuple(PREFIXES)):
            continue
        spec = SCHEMA.spec_for(key)
        try:
            if spec is None:
                raise InvalidValue("unknown")
            model[key] = spec.parse(raw)
        except InvalidValue:
            if key in good_before:
                model[key] = good_before[key]
    assert relisted.synced and relisted.revision == snap.revision + 1
    assert {k: a.value for k, a in relisted.accepted.items()} == model
    assert dict(relisted.values) == expected_values(model)
