"""The audit trail: one etcd key per change, written in the change's own transaction.

An entry lives under `/audit/` (outside `/config/`, so no service watches it), is
written once and never rewritten, so etcd's compaction, which only drops superseded
versions of a key, never removes it. Its key starts with the UTC time, so keys sort by
time; its own mod revision is the revision of the change it records (one transaction
commits both), so the entry never has to guess it. The transaction is guarded by
compares on the mod revision of every key it touches as read just before, so the old
values an entry records are exactly the ones the change replaced; a concurrent change
makes it fail and the write is planned again from what is there now.

A change made without the tool (a raw `etcdctl put`) leaves no entry: it is found as a
key whose mod revision, now or as an entry's recorded old revision, has no entry.
"""

from __future__ import annotations

import datetime
import json
import secrets
from typing import TYPE_CHECKING, Callable, Iterable, NamedTuple

from ._errors import EtcdError, Unavailable
from ._keyrange import prefix_range_end
from ._model import KeyValue
from ._schema import ROOT

if TYPE_CHECKING:
    from ._etcd import EtcdClient

# Where entries live: outside /config/, so no service watches them (the etcd VM's roles
# in terraform/templates/etcd-bootstrap.sh name the same prefix).
AUDIT_PREFIX = "/audit/"
# Format of an entry's value; a reader meeting a newer one still shows what it can.
_FORMAT = 1
# A change is planned again at most this many times when others keep changing its keys.
_ATTEMPTS = 5


class ConcurrentChange(EtcdError):
    """The keys kept changing under the tool; nothing was written."""


class InDoubt(EtcdError):
    """etcd went away mid-commit and could not be asked whether the change landed."""


class Change(NamedTuple):
    key: str
    old: str | None  # None: the key was absent
    new: str | None  # None: deleted
    old_revision: int  # the old value's mod revision (0: absent)


class Entry(NamedTuple):
    revision: int  # the change's revision: the entry's own mod revision
    key: str  # the entry's etcd key
    time: str  # UTC, ISO 8601
    actor: str
    reason: str | None
    command: str  # set, delete, rollback, undo, seed
    changes: tuple[Change, ...]
    undoes: int | None = None  # for an undo: the revision of the change undone
    etcd_user: str | None = None

    def touches(self, key: str) -> bool:
        """Whether a change of this entry is to `key` (or under it, for a key ending in /)."""
        return any(_under(c.key, key) for c in self.changes)


class Unaudited(NamedTuple):
    """A change to `key` at `revision` that has no entry: made without the tool."""

    revision: int
    key: str
    value: str | None


def _under(key: str, wanted: str) -> bool:
    return key == wanted or (wanted.endswith("/") and key.startswith(wanted))


def entry_key(now: datetime.datetime) -> str:
    # Microseconds plus a random suffix: two operators in the same microsecond still
    # get different keys (and the txn's create check refuses a clash anyway).
    return f"{AUDIT_PREFIX}{now:%Y%m%dT%H%M%S.%f}Z-{secrets.token_hex(4)}"


def _encode(time: str, actor: str, reason: str | None, command: str, changes: Iterable[Change],
            undoes: int | None, etcd_user: str | None) -> str:
    body = {
        "format": _FORMAT, "time": time, "actor": actor, "reason": reason, "command": command,
        "changes": [c._asdict() for c in changes],
    }
    if undoes is not None:
        body["undoes"] = undoes
    if etcd_user:
        body["etcd_user"] = etcd_user
    return json.dumps(body, separators=(",", ":"))


def decode(kv: KeyValue) -> Entry:
    """The entry stored in `kv`; an unreadable one (written by hand) is kept visible."""
    try:
        body = json.loads(kv.value)
        changes = tuple(Change(c["key"], c.get("old"), c.get("new"), int(c.get("old_revision", 0)))
                        for c in body["changes"])
        return Entry(kv.mod_revision, kv.key, str(body.get("time", "")), str(body.get("actor", "")),
                     body.get("reason"), str(body.get("command", "")), changes, body.get("undoes"),
                     body.get("etcd_user"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return Entry(kv.mod_revision, kv.key, "", "", None, "unreadable", ())


def _read(client: EtcdClient, keys: Iterable[str], timeout: float) -> dict[str, KeyValue | None]:
    current = {}
    for key in keys:
        _, kvs = client.list_range(key.encode(), key.encode() + b"\0", timeout)
        current[key] = kvs[0] if kvs else None
    return current


# A plan turns the keys as they are now into the values wanted ({} when nothing changes).
Plan = Callable[[dict[str, KeyValue | None]], dict[str, str | None]]


def write(client: EtcdClient, keys: Iterable[str], plan: Plan, *, actor: str, reason: str | None,
          command: str, timeout: float, undoes: int | None = None, etcd_user: str | None = None) -> Entry | None:
    """Apply `plan` to `keys` and record it, in one transaction; the entry, or None if
    the plan changed nothing. Raises ConcurrentChange when the keys kept moving."""
    from ._etcd import guarded_txn  # gRPC loads only for commands that talk to etcd

    keys = list(dict.fromkeys(keys))
    for _ in range(_ATTEMPTS):
        current = _read(client, keys, timeout)
        wanted = plan(current)
        if not wanted:
            return None
        changes = tuple(
            Change(key, _text(current.get(key)), new, current[key].mod_revision if current.get(key) else 0)
            for key, new in wanted.items()
        )
        now = datetime.datetime.now(datetime.timezone.utc)
        key = entry_key(now)
        time = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        value = _encode(time, actor, reason, command, changes, undoes, etcd_user)
        # Every key the plan read, changed or not: its premises must still hold at commit.
        expect = {k: kv.mod_revision if kv else 0 for k, kv in current.items()}
        expect[key] = 0
        try:
            succeeded, revision = guarded_txn(client, expect, {**wanted, key: value}, timeout)
        except Unavailable as exc:
            revision = _landed(client, key, timeout, exc)
            if revision is None:
                raise
            succeeded = True
        if succeeded:
            return Entry(revision, key, time, actor, reason, command, changes, undoes, etcd_user)
    raise ConcurrentChange(f"{', '.join(keys)} kept changing while the tool wrote; nothing was written: "
                           "see who changes them (python -m config_watch audit) and try again")


def _landed(client: EtcdClient, key: str, timeout: float, cause: Exception) -> int | None:
    """After a failed commit: the entry's revision if it landed anyway, else None."""
    try:
        _, kvs = client.list_range(key.encode(), key.encode() + b"\0", timeout)
    except EtcdError:
        raise InDoubt(f"etcd went away while committing ({cause}); the change may have been applied: "
                      f"check with `python -m config_watch audit` before trying again") from None
    return kvs[0].mod_revision if kvs else None


def _text(kv: KeyValue | None) -> str | None:
    return None if kv is None else kv.value.decode("utf-8", "replace")


def _trail(client: EtcdClient, timeout: float, **options):
    """The entries' key-values, newest first (`options`: range_by_revision's)."""
    from ._etcd import range_by_revision

    start = AUDIT_PREFIX.encode()
    return range_by_revision(client, start, prefix_range_end(start), timeout, **options)


def entries(client: EtcdClient, timeout: float, key: str | None = None, limit: int = 0) -> list[Entry]:
    """Entries newest first; only those touching `key` if given; at most `limit` (0: all)."""
    _, kvs = _trail(client, timeout, limit=0 if key else limit)
    found = [decode(kv) for kv in kvs]
    if key:
        found = [e for e in found if e.touches(key)]
    return found[:limit] if limit else found


def entry_at(client: EtcdClient, revision: int, timeout: float) -> Entry | None:
    """The entry of the change committed at `revision`, if the tool made it."""
    _, kvs = _trail(client, timeout, min_mod_revision=revision, max_mod_revision=revision)
    return decode(kvs[0]) if kvs else None


def audited_revisions(client: EtcdClient, timeout: float) -> set[int]:
    _, kvs = _trail(client, timeout, keys_only=True)
    return {kv.mod_revision for kv in kvs}


def unaudited(client: EtcdClient, timeout: float, shown: Iterable[Entry], key: str | None = None) -> list[Unaudited]:
    """Changes without an entry, newest first: a key under /config/ whose current mod
    revision has no entry, and an old value an entry replaced that no entry wrote."""
    audited = audited_revisions(client, timeout)
    if key and not key.endswith("/"):
        start, end = key.encode(), key.encode() + b"\0"
    elif key:
        start = key.encode()
        end = prefix_range_end(start)
    else:
        start = ROOT.encode()
        end = prefix_range_end(start)
    _, kvs = client.list_range(start, end, timeout)
    found = {(kv.mod_revision, kv.key): Unaudited(kv.mod_revision, kv.key, _text(kv))
             for kv in kvs if kv.mod_revision not in audited}
    for entry in shown:
        for change in entry.changes:
            if change.old_revision and change.old_revision not in audited and (not key or _under(change.key, key)):
                found[(change.old_revision, change.key)] = Unaudited(change.old_revision, change.key, change.old)
    return sorted(found.values(), reverse=True)
