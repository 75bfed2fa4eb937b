"""The key space: one declarative table, the single source of truth.

Parsing, defaults, validation, the README's key table, the operator CLI and the JSON
export (`python -m config_watch schema`) all read `SCHEMA`.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, NamedTuple, Union

ROOT = "/config/"
GLOBAL_PREFIX = "/config/global/"

# Longest integer text accepted: far beyond any bound here, short enough that a
# hostile value cannot make int() do quadratic work.
_MAX_INT_CHARS = 20
_INT_RE = re.compile(r"[+-]?[0-9]+")


class InvalidValue(ValueError):
    """A raw value that fails parsing or bounds; the message says why."""


# Variant names of an experiment, and the most variants one may have: enough for any
# real test, few enough that a header naming them stays short.
_VARIANT_RE = re.compile(r"[a-z0-9-]{1,32}")
_MAX_VARIANTS = 16
# A rate-limit rule's path prefix: an absolute URL path, no spaces, commas or '='
# (the rule's own separators), bounded so a status page stays small.
_PREFIX_RE = re.compile(r"/[^\s,=]{0,255}")
# Bounds of a rule's rate and burst, the same as the default limit's.
_MAX_RATE = 1_000_000
# A membership record is the service's own note about itself (host, pid, start time);
# bounded so a thousand of them stay a small list.
_MAX_MEMBER_CHARS = 1024


class Variant(NamedTuple):
    """One arm of an experiment: its name and its share in percent."""

    name: str
    weight: int


class RateRule(NamedTuple):
    """A rate limit for every request path under `prefix`."""

    prefix: str
    rate: int  # requests per minute per client
    burst: int  # bucket capacity

    def policy(self) -> str:
        """The rule as a `RateLimit-Policy` item: `60;w=60;burst=10`."""
        return f"{self.rate};w=60;burst={self.burst}"


# A typed value: what `KeySpec.parse` returns (a split is a tuple of Variants).
Value = Union[int, bool, str, tuple, RateRule]


def _int_text(text: str, minimum: int | None, maximum: int | None, what: str = "") -> int:
    label = f"{what}: " if what else ""
    if len(text) > _MAX_INT_CHARS or not _INT_RE.fullmatch(text):
        raise InvalidValue(f"{label}expected an integer")
    value = int(text)
    if minimum is not None and value < minimum:
        raise InvalidValue(f"{label}below minimum {minimum}")
    if maximum is not None and value > maximum:
        raise InvalidValue(f"{label}above maximum {maximum}")
    return value


def parse_split(text: str) -> tuple[Variant, ...]:
    """`control:90,treatment:10`: named variants with integer weights summing to 100."""
    variants: list[Variant] = []
    for item in text.split(","):
        name, sep, weight = item.strip().partition(":")
        name, weight = name.strip(), weight.strip()
        if not sep or not _VARIANT_RE.fullmatch(name):
            raise InvalidValue(f"expected name:weight pairs with names of [a-z0-9-]{{1,32}}, got {item.strip()[:40]!r}")
        if any(v.name == name for v in variants):
            raise InvalidValue(f"variant {name!r} listed twice")
        variants.append(Variant(name, _int_text(weight, 0, 100, f"variant {name!r}")))
    if len(variants) > _MAX_VARIANTS:
        raise InvalidValue(f"more than {_MAX_VARIANTS} variants")
    total = sum(v.weight for v in variants)
    if total != 100:
        raise InvalidValue(f"weights sum to {total}, not 100")
    return tuple(variants)


def parse_rule(text: str) -> RateRule:
    """`prefix=/v1/jobs,rate=60,burst=10` (burst optional: defaults to rate, at least 1)."""
    fields: dict[str, str] = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        name = name.strip()
        if not sep or name not in ("prefix", "rate", "burst"):
            raise InvalidValue(f"expected prefix=..., rate=... and optionally burst=..., got {item.strip()[:40]!r}")
        if name in fields:
            raise InvalidValue(f"{name} given twice")
        fields[name] = value.strip()
    if "prefix" not in fields or "rate" not in fields:
        raise InvalidValue("a rule needs prefix= and rate=")
    if not _PREFIX_RE.fullmatch(fields["prefix"]):
        raise InvalidValue("prefix must be a URL path starting with / (no spaces, commas or =)")
    rate = _int_text(fields["rate"], 0, _MAX_RATE, "rate")
    burst = _int_text(fields["burst"], 1, _MAX_RATE, "burst") if "burst" in fields else max(1, rate)
    return RateRule(fields["prefix"], rate, burst)


def service_prefix(service: str) -> str:
    return f"{ROOT}services/{service}/"


class KeySpec(NamedTuple):
    """One key (or, with `family=True`, every key under `path`)."""

    path: str
    type: str  # "int", "bool", "enum" (one of `choices`), "split" (experiment), "rule" (rate limit)
    #            or "member" (a service's lease-bound membership record, any text)
    description: str
    used_by: str
    default: int | bool | str | None = None
    # Name (path) of another key whose value is this key's default when unset.
    default_from: str | None = None
    minimum: int | None = None
    maximum: int | None = None
    family: bool = False
    unit: str | None = None
    choices: tuple[str, ...] | None = None
    # "operator" (the config key space) or "service": records a service writes about
    # itself under a lease (membership), never set by hand.
    written_by: str = "operator"

    def matches(self, key: str) -> bool:
        if self.family:
            return key.startswith(self.path) and len(key) > len(self.path) and "/" not in key[len(self.path):]
        return key == self.path

    def name_of(self, key: str) -> str:
        """The member name of a family key (`.../features/x` → `x`)."""
        return key[len(self.path):]

    def parse(self, raw: bytes) -> Value:
        """Typed value of `raw`, or InvalidValue. Never any other exception."""
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise InvalidValue("not valid UTF-8") from None
        if self.type == "bool":
            lowered = text.lower()
            if lowered == "true":
                return True
            if lowered == "false":
                return False
            raise InvalidValue("expected true or false")
        if self.type == "enum":
            lowered = text.lower()
            if lowered in self.choices:
                return lowered
            raise InvalidValue("expected one of " + ", ".join(self.choices))
        if self.type == "split":
            return parse_split(text)
        if self.type == "rule":
            return parse_rule(text)
        if self.type == "member":
            if len(text) > _MAX_MEMBER_CHARS:
                raise InvalidValue(f"member record longer than {_MAX_MEMBER_CHARS} characters")
            return text
        return _int_text(text, self.minimum, self.maximum)

    def format(self, value: Value) -> str:
        """The canonical text etcd holds for `value`."""
        if self.type == "bool":
            return "true" if value else "false"
        if self.type in ("enum", "member"):
            return str(value)
        if self.type == "split":
            return ",".join(f"{v.name}:{v.weight}" for v in value)
        if self.type == "rule":
            return f"prefix={value.prefix},rate={value.rate},burst={value.burst}"
        return str(int(value))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.path + ("<name>" if self.family else ""), "type": self.type}
        if self.default_from:
            out["default_from"] = self.default_from
        else:
            out["default"] = self.default
        for name in ("minimum", "maximum", "unit"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.choices is not None:
            out["choices"] = list(self.choices)
        if self.type in _FORMATS:
            out["format"] = _FORMATS[self.type]
        out["family"] = self.family
        out["written_by"] = self.written_by
        out["used_by"] = self.used_by
        out["description"] = self.description
        return out


# The value formats of the structured types, as the JSON export states them.
_FORMATS = {
    "split": "name:weight[,name:weight...]; names [a-z0-9-]{1,32}, integer weights 0..100 summing to 100",
    "rule": "prefix=/path,rate=N[,burst=N]; rate 0..1000000 requests/minute, burst 1..1000000 (default: rate)",
    "member": f"any UTF-8 text up to {_MAX_MEMBER_CHARS} characters (the writer's own record), bound to a lease",
}

# How a client is put in an experiment's variant; every service (and every language)
# that follows it puts one client in the same variant.
ASSIGNMENT_SCHEME = {
    "hash": "SHA-1 of the UTF-8 text '<experiment name>.<client identity>'",
    "bucket": "the first 15 hex digits of the hash as an integer h; bucket = h / 0xFFFFFFFFFFFFFFF (0..1)",
    "variant": ("the first variant, in the order listed, whose cumulative weight / 100 exceeds the bucket "
                "(integer form: h * 100 < cumulative * 0xFFFFFFFFFFFFFFF); if none does (bucket = 1), "
                "the last variant with a weight above 0"),
    "stability": ("a client keeps its variant while the split is unchanged, and a variant whose weight grows "
                  "while every other shrinks or stays keeps all its clients"),
}

RATE_LIMIT = "/config/services/api-gateway/rate-limit"
RATE_LIMIT_BURST = "/config/services/api-gateway/rate-limit-burst"
RATE_LIMIT_SCOPE = "/config/services/api-gateway/rate-limit-scope"
RATE_LIMITS = "/config/services/api-gateway/rate-limits/"
FEATURES = "/config/services/api-gateway/features/"
EXPERIMENTS = "/config/services/api-gateway/experiments/"
UPSTREAM_TIMEOUT_MS = "/config/services/api-gateway/upstream-timeout-ms"
BREAKER_FAILURES = "/config/services/api-gateway/breaker/failures"
BREAKER_OPEN_SECONDS = "/config/services/api-gateway/breaker/open-seconds"
BREAKER_HALF_OPEN_SUCCESSES = "/config/services/api-gateway/breaker/half-open-successes"
THREADS = "/config/services/data-processor/threads"
MAINTENANCE_MODE = "/config/global/maintenance-mode"
INSTANCES_ROOT = "/instances/"
INSTANCES = "/instances/api-gateway/"


def instances_prefix(service: str) -> str:
    """Where the serving processes of `service` register (`/instances/<service>/<id>`)."""
    return f"{INSTANCES_ROOT}{service}/"


class Schema:
    """The table of keys, with look-ups by full key path."""

    def __init__(self, specs: Iterable[KeySpec]) -> None:
        self.specs = tuple(specs)
        self._exact = {s.path: s for s in self.specs if not s.family}
        self._families = tuple(s for s in self.specs if s.family)

    def spec_for(self, key: str) -> KeySpec | None:
        spec = self._exact.get(key)
        if spec is not None:
            return spec
        for family in self._families:
            if family.matches(key):
                return family
        return None

    def exact_keys_under(self, prefixes: Iterable[str]) -> list[KeySpec]:
        prefixes = tuple(prefixes)
        return [s for s in self._exact.values() if s.path.startswith(prefixes)]

    def member_prefixes(self, service: str) -> list[str]:
        """The membership families `service` watches (the gateway's: its live processes)."""
        prefix = instances_prefix(service)
        return [s.path for s in self._families if s.path == prefix and s.written_by == "service"]

    def families_under(self, prefixes: Iterable[str]) -> list[KeySpec]:
        prefixes = tuple(prefixes)
        return [s for s in self._families if s.path.startswith(prefixes)]

    def family_spec(self, path: str) -> KeySpec | None:
        """The open family whose path is `path` exactly."""
        return next((f for f in self._families if f.path == path), None)

    def family_of(self, key: str) -> KeySpec | None:
        """The open family `key` belongs to (None for an exact key or an unknown one)."""
        for family in self._families:
            if family.matches(key):
                return family
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "root": ROOT,
            "encoding": ("values are UTF-8 text: ints in decimal, bools as true/false, enums as one of their "
                         "choices, splits and rules as their format says"),
            "deleted_key": "falls back to its default",
            "invalid_value": "rejected; the last good value (or the default) stays in force",
            "experiment_assignment": ASSIGNMENT_SCHEME,
            "keys": [s.to_json() for s in self.specs],
        }


SCHEMA = Schema(
    [
        KeySpec(
            RATE_LIMIT, "int", "Requests per minute per client (token refill rate). 0 blocks every client.",
            used_by="api-gateway", default=100, minimum=0, maximum=1_000_000, unit="requests/minute",
        ),
        KeySpec(
            RATE_LIMIT_BURST, "int", "Token bucket capacity per client: requests allowed at once.",
            used_by="api-gateway", default_from=RATE_LIMIT, minimum=1, maximum=1_000_000, unit="requests",
        ),
        KeySpec(
            RATE_LIMIT_SCOPE, "enum",
            "Whom rate-limit binds: the whole fleet (each serving process takes 1/N, N = live members) "
            "or each process alone.",
            used_by="api-gateway", default="cluster", choices=("cluster", "process"),
        ),
        KeySpec(
            RATE_LIMITS, "rule", "Rate-limit rules, an open family: the longest matching path prefix wins "
            "over rate-limit.",
            used_by="api-gateway", family=True,
        ),
        KeySpec(
            FEATURES, "bool", "Feature flags, an open family (e.g. new-user-onboarding).",
            used_by="api-gateway", default=False, family=True,
        ),
        KeySpec(
            EXPERIMENTS, "split", "A/B experiments, an open family: variants and their shares in percent.",
            used_by="api-gateway", family=True,
        ),
        KeySpec(
            UPSTREAM_TIMEOUT_MS, "int", "Deadline of one call from the gateway to the data processor.",
            used_by="api-gateway", default=5000, minimum=1, maximum=60_000, unit="milliseconds",
        ),
        KeySpec(
            BREAKER_FAILURES, "int", "Consecutive upstream failures that open the circuit breaker.",
            used_by="api-gateway", default=5, minimum=1, maximum=1000, unit="failures",
        ),
        KeySpec(
            BREAKER_OPEN_SECONDS, "int", "How long an open breaker refuses calls before it lets a few through.",
            used_by="api-gateway", default=30, minimum=1, maximum=3600, unit="seconds",
        ),
        KeySpec(
            BREAKER_HALF_OPEN_SUCCESSES, "int", "Successes in half-open that close the breaker again.",
            used_by="api-gateway", default=3, minimum=1, maximum=100, unit="successes",
        ),
        KeySpec(
            THREADS, "int", "Worker threads of the data processor.",
            used_by="data-processor", default=4, minimum=1, maximum=256,
        ),
        KeySpec(
            INSTANCES, "member",
            "Live gateway processes, an open family written by the gateway itself under an etcd lease "
            "(INSTANCE_TTL_SECONDS); their count N divides rate-limit in cluster scope.",
            used_by="api-gateway", family=True, written_by="service",
        ),
        KeySpec(
            MAINTENANCE_MODE, "bool", "Global maintenance switch: services answer 503 with Retry-After.",
            used_by="every service", default=False,
        ),
    ]
)
