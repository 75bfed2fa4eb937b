"""Plain values passed between the etcd adapter and the rest of the library.

Named tuples rather than dataclasses: every class here is built at import, and
import time is cold-start time for a function.
"""

from __future__ import annotations

from typing import NamedTuple


class KeyValue(NamedTuple):
    key: str
    value: bytes
    mod_revision: int
    # When this incarnation of the key was created (0: not known); a value seen
    # before it belongs to a key since deleted.
    create_revision: int = 0


class Event(NamedTuple):
    """One change of one key. `value` is empty for a delete."""

    kind: str  # "put" or "delete"
    key: str
    value: bytes
    mod_revision: int


class WatchBatch(NamedTuple):
    """One response of the watch stream.

    `events` hold whole revisions only (etcd never splits a revision across
    responses). An empty batch is a progress notification: etcd's word that the
    stream is alive at `header_revision`.
    """

    header_revision: int
    events: tuple[Event, ...] = ()
    # For the answer to a progress request: time.monotonic() when the oldest question
    # it settles was sent (0: not such an answer). Only these answers speak of the
    # present, and only as of the question: a reply (or event) read after a freeze
    # may have sat in a socket buffer for the whole freeze.
    asked_at: float = 0.0
    # The stream has sent every event up to `header_revision` before this answer.
    complete: bool = False
