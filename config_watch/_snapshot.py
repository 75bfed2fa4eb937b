"""Immutable snapshots of the configuration, and the store that publishes them.

A snapshot reflects etcd at one revision. It is never changed: applying a revision
builds a new one, and the store publishes it with a single reference assignment, so a
request that reads `store.current` once sees one whole revision throughout.
"""

from __future__ import annotations

import logging
import threading
from types import MappingProxyType
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from ._model import Event, KeyValue
from ._schema import FEATURES, SCHEMA, InvalidValue, Schema, Value

log = logging.getLogger(__name__)

# How much of a rejected value a log line or status page repeats.
_PREVIEW_BYTES = 64


class Accepted(NamedTuple):
    value: Value
    mod_revision: int


class Rejection(NamedTuple):
    key: str
    value_preview: str
    revision: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value_preview, "revision": self.revision, "reason": self.reason}


_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _family_label(path: str) -> str:
    """`/config/services/api-gateway/rate-limits/` → `rate_limits`."""
    return path.rstrip("/").rsplit("/", 1)[-1].replace("-", "_")


def _preview(raw: bytes) -> str:
    text = raw[:_PREVIEW_BYTES].decode("utf-8", errors="replace")
    return text + ("…" if len(raw) > _PREVIEW_BYTES else "")


class Snapshot:
    """The typed configuration at one etcd revision."""

    __slots__ = ("revision", "synced", "accepted", "rejected", "values", "families", "features", "_schema",
                 "_prefixes", "_json")

    def __init__(
        self,
        revision: int,
        accepted: Mapping[str, Accepted],
        rejected: Mapping[str, Rejection],
        prefixes: Sequence[str],
        synced: bool,
        schema: Schema = SCHEMA,
    ) -> None:
        self.revision = revision
        self.synced = synced
        self.accepted = MappingProxyType(dict(accepted))
        self.rejected = MappingProxyType(dict(rejected))
        self._schema = schema
        self._prefixes = tuple(prefixes)
        values: dict[str, Any] = {}
        pending = []
        for spec in schema.exact_keys_under(self._prefixes):
            if spec.path in self.accepted:
                values[spec.path] = self.accepted[spec.path].value
            elif spec.default_from:
                pending.append(spec)
            else:
                values[spec.path] = spec.default
        for spec in pending:
            values[spec.path] = values.get(spec.default_from, schema.spec_for(spec.default_from).default)
        self.values = MappingProxyType(values)
        # Open families (features, experiments, rate-limit rules): family path → {name: value}.
        families: dict[str, dict[str, Value]] = {f.path: {} for f in schema.families_under(self._prefixes)}
        for key, accepted_value in self.accepted.items():
            family = schema.family_of(key)
            if family is not None:
                families.setdefault(family.path, {})[family.name_of(key)] = accepted_value.value
        self.families = MappingProxyType({path: MappingProxyType(members) for path, members in families.items()})
        self.features = self.families.get(FEATURES, MappingProxyType({}))
        self._json: dict[str, Any] | None = None

    @classmethod
    def defaults(cls, prefixes: Sequence[str], schema: Schema = SCHEMA) -> "Snapshot":
        """Revision 0: nothing read from etcd yet."""
        return cls(0, {}, {}, prefixes, synced=False, schema=schema)

    @property
    def prefixes(self) -> tuple[str, ...]:
        return self._prefixes

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def feature(self, name: str) -> bool:
        return bool(self.features.get(name, False))

    def family(self, path: str) -> Mapping[str, Value]:
        """Every member of the open family at `path` (e.g. EXPERIMENTS), by name."""
        return self.families.get(path, _EMPTY)

    def in_scope(self, key: str) -> bool:
        return key.startswith(self._prefixes)

    def _judge(
        self, key: str, raw: bytes, mod_revision: int, accepted: dict, rejected: dict, last_good: Mapping[str, Accepted]
    ) -> Rejection | None:
        """Accept `raw` for `key`, or record why not and keep the last good value."""
        spec = self._schema.spec_for(key)
        try:
            if spec is None:
                raise InvalidValue("key not in schema")
            value = spec.parse(raw)
        except InvalidValue as exc:
            rejection = Rejection(key, _preview(raw), mod_revision, str(exc))
            rejected[key] = rejection
            if key in last_good:
                accepted[key] = last_good[key]
            else:
                accepted.pop(key, None)
            return rejection
        accepted[key] = Accepted(value, mod_revision)
        rejected.pop(key, None)
        return None

    def apply(self, events: Iterable[Event]) -> tuple["Snapshot", list[Rejection]]:
        """The snapshot after `events` (whole revisions, in order), and what was rejected.

        Events outside this snapshot's prefixes or not newer than it are ignored, so
        replaying a revision already applied changes nothing.
        """
        accepted = dict(self.accepted)
        rejected = dict(self.rejected)
        rejections: list[Rejection] = []
        revision = self.revision
        for event in events:
            if event.mod_revision <= self.revision:
                continue
            revision = max(revision, event.mod_revision)
            if not self.in_scope(event.key):
                continue
            if event.kind == "delete":
                accepted.pop(event.key, None)
                rejected.pop(event.key, None)
                continue
            rejection = self._judge(event.key, event.value, event.mod_revision, accepted, rejected, accepted.copy())
            if rejection:
                rejections.append(rejection)
        if revision == self.revision:
            return self, rejections
        return Snapshot(revision, accepted, rejected, self._prefixes, True, self._schema), rejections

    def relisted(self, revision: int, kvs: Iterable[KeyValue]) -> tuple["Snapshot", list[Rejection]]:
        """A fresh snapshot from a full list at `revision`.

        A bad value in the list keeps the last good value this snapshot holds for the key.
        """
        accepted: dict[str, Accepted] = {}
        rejected: dict[str, Rejection] = {}
        rejections = []
        for kv in kvs:
            if not self.in_scope(kv.key):
                continue
            previous = self.rejected.get(kv.key)
            # The last good value counts only if it belongs to this incarnation of the
            # key: one from before a delete the list cannot show must not come back.
            last_good = self.accepted
            held = last_good.get(kv.key)
            if held is not None and held.mod_revision < kv.create_revision:
                last_good = {}
            rejection = self._judge(kv.key, kv.value, kv.mod_revision, accepted, rejected, last_good)
            # A value already rejected at the same revision is not news.
            if rejection and not (previous and previous.revision == rejection.revision):
                rejections.append(rejection)
        return Snapshot(revision, accepted, rejected, self._prefixes, True, self._schema), rejections

    def same_config(self, other: "Snapshot") -> bool:
        return self.values == other.values and self.families == other.families

    def to_json(self) -> dict[str, Any]:
        """The snapshot as plain JSON data; built once (the snapshot never changes), not to be mutated.

        Each open family appears under its last path segment (`features`,
        `experiments`, `rate_limits`), structured values in their etcd text form.
        """
        if self._json is None:
            out: dict[str, Any] = {"revision": self.revision, "values": dict(self.values), "features": {}}
            for path, members in self.families.items():
                spec = self._schema.family_spec(path)
                out[_family_label(path)] = {
                    name: value if isinstance(value, (bool, int)) else spec.format(value)
                    for name, value in members.items()
                }
            self._json = out
        return self._json

    def __repr__(self) -> str:
        families = {_family_label(p): dict(m) for p, m in self.families.items() if m}
        return f"Snapshot(revision={self.revision}, synced={self.synced}, values={dict(self.values)}, families={families})"


class SnapshotStore:
    """Holds the snapshot in force. Reading `current` is one attribute load."""

    def __init__(self, initial: Snapshot) -> None:
        self.current = initial
        self._changed = threading.Condition()

    def publish(self, snapshot: Snapshot) -> bool:
        """Swap `snapshot` in unless it is older than the one in force.

        An equal revision is accepted only to mark the first sync (revision 0 of an
        empty etcd). Returns whether it was published.
        """
        with self._changed:
            current = self.current
            if snapshot.revision < current.revision or (
                snapshot.revision == current.revision and (current.synced or not snapshot.synced)
            ):
                if snapshot.revision < current.revision:
                    log.warning(
                        "snapshot older than the one in force not published",
                        extra={"json_fields": {"revision": snapshot.revision, "in_force": current.revision}},
                    )
                return False
            self.current = snapshot
            self._changed.notify_all()
            return True

    def wait_for(self, predicate, timeout: float) -> Snapshot | None:
        """Wait until `predicate(current)` holds; the snapshot, or None on timeout."""
        with self._changed:
            if self._changed.wait_for(lambda: predicate(self.current), timeout):
                return self.current
            return None
