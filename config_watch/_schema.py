"""The key space: one declarative table, the single source of truth.

Parsing, defaults, validation, the README's key table, the operator CLI and the JSON
export (`python -m config_watch schema`) all read `SCHEMA`.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, NamedTuple

ROOT = "/config/"
GLOBAL_PREFIX = "/config/global/"

# Longest integer text accepted: far beyond any bound here, short enough that a
# hostile value cannot make int() do quadratic work.
_MAX_INT_CHARS = 20
_INT_RE = re.compile(r"[+-]?[0-9]+")


class InvalidValue(ValueError):
    """A raw value that fails parsing or bounds; the message says why."""


def service_prefix(service: str) -> str:
    return f"{ROOT}services/{service}/"


class KeySpec(NamedTuple):
    """One key (or, with `family=True`, every key under `path`)."""

    path: str
    type: str  # "int" or "bool"
    description: str
    used_by: str
    default: int | bool | None = None
    # Name (path) of another key whose value is this key's default when unset.
    default_from: str | None = None
    minimum: int | None = None
    maximum: int | None = None
    family: bool = False
    unit: str | None = None

    def matches(self, key: str) -> bool:
        if self.family:
            return key.startswith(self.path) and len(key) > len(self.path) and "/" not in key[len(self.path):]
        return key == self.path

    def parse(self, raw: bytes) -> int | bool:
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
        if len(text) > _MAX_INT_CHARS or not _INT_RE.fullmatch(text):
            raise InvalidValue("expected an integer")
        value = int(text)
        if self.minimum is not None and value < self.minimum:
            raise InvalidValue(f"below minimum {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise InvalidValue(f"above maximum {self.maximum}")
        return value

    def format(self, value: int | bool) -> str:
        """The canonical text etcd holds for `value`."""
        if self.type == "bool":
            return "true" if value else "false"
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
        out["family"] = self.family
        out["used_by"] = self.used_by
        out["description"] = self.description
        return out


RATE_LIMIT = "/config/services/api-gateway/rate-limit"
RATE_LIMIT_BURST = "/config/services/api-gateway/rate-limit-burst"
FEATURES = "/config/services/api-gateway/features/"
THREADS = "/config/services/data-processor/threads"
MAINTENANCE_MODE = "/config/global/maintenance-mode"


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

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "root": ROOT,
            "encoding": "values are UTF-8 text; ints in decimal, bools as true/false",
            "deleted_key": "falls back to its default",
            "invalid_value": "rejected; the last good value (or the default) stays in force",
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
            FEATURES, "bool", "Feature flags, an open family (e.g. new-user-onboarding).",
            used_by="api-gateway", default=False, family=True,
        ),
        KeySpec(
            THREADS, "int", "Worker threads of the data processor.",
            used_by="data-processor", default=4, minimum=1, maximum=256,
        ),
        KeySpec(
            MAINTENANCE_MODE, "bool", "Global maintenance switch: services answer 503 with Retry-After.",
            used_by="every service", default=False,
        ),
    ]
)
