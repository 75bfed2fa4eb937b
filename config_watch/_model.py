"""Plain values passed between the etcd adapter and the rest of the library."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Event:
    """One change of one key. `value` is empty for a delete."""

    kind: str  # "put" or "delete"
    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """One response of the watch stream.

    `events` hold whole revisions only (etcd never splits a revision across
    responses). An empty batch is a progress notification: etcd's word that the
    stream is alive at `header_revision`.
    """

    header_revision: int
    events: tuple[Event, ...] = ()
