"""The rate limiter's bucket table, in memory shared by the worker processes of one instance.

gunicorn (functions-framework with `WORKERS` > 1) imports the function's module in
its master and forks the workers from it. The gateway makes its table at import, in
the master, as an anonymous shared mapping that every forked worker inherits, so the
workers of an instance hold one bucket per client between them. Per-process buckets
cannot be split fairly: the kernel hands a run of new connections to whichever worker
is awake first, often the same one, so a worker holding 1/WORKERS of a client's limit
refuses it while its siblings' buckets sit full (12 requests at a limit of 5 over two
workers got 2 answers of 200 in one run). Shared, the limit holds exactly within an
instance, and the fleet's split (`ratelimit.process_share`) is between instances.

The table is set-associative: a key's hash picks a set of `WAYS` slots, and a new key
in a full set replaces the slot used least recently (an evicted client comes back with
a full bucket). Each slot is 32 bytes, so the table's memory is fixed at creation.

Locking: a POSIX record lock (`fcntl.lockf`) on one byte per set of an unlinked
temporary file that the workers share. The kernel drops a process's record locks
when it dies, so a worker killed in the middle of an update cannot wedge the others.
Record locks do not exclude the threads of one process, so the caller holds a thread
lock of its own as well (`RateLimiter` does). A process alone with the table (one
worker) takes no record locks: each process using the table attaches once, and the
locks start when a second one does. The first process holds a "solo" record lock
while it runs without locks, and gives it up at the start of its first update after
a second process attached (with its thread lock held, so no update of its own is in
flight then); a newcomer takes the solo lock before its first update. So an update
the first process had in flight at that moment, even one descheduled half way, is
over before the newcomer touches a bucket. A first process that stays idle gives
nothing up: the newcomer waits at most `SOLO_WAIT_SECONDS` for it (an idle process
has no update in flight; one descheduled for longer than that half way through an
update is the case left open).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import tempfile
import time
from typing import NamedTuple

from config_watch.membership import new_group

# Slots per set: eight keeps a set within 256 bytes (four cache lines) and makes the
# replacement close to a true LRU.
WAYS = 8
# One slot, four 8-byte words: the key's tag (0: empty), tokens, last update
# (CLOCK_MONOTONIC, the same clock in every process of a host), and the number of
# members the tokens were measured in. Native byte order: the table never leaves the
# host, and the request path reads a known slot through word views of the same memory
# (`BucketTable.words`, `.floats`), which are native.
_SLOT = "QddQ"
_SLOT_STRUCT = struct.Struct("=" + _SLOT)
SLOT_BYTES = _SLOT_STRUCT.size
SLOT_WORDS = SLOT_BYTES // 8
# Before the slots: the number of slots in use, and of processes that attached.
_HEADER = struct.Struct("=QQ")
_HEADER_WORDS = _HEADER.size // 8
_USED, _USERS = 0, 1  # the header's words
_MASK = 0xFFFF_FFFF_FFFF_FFFF
# How long a process attaching after the first waits for the first to give up its solo
# lock (see the module's docstring). Paid once, by a new worker's first request, and
# only while the first worker stays idle.
SOLO_WAIT_SECONDS = 0.2


class Slot(NamedTuple):
    way: int  # its place in the set
    tokens: float
    updated: float
    members: int


def key_tag(rule: str, client: str) -> int:
    """A non-zero 64-bit tag for a key. Python's string hash is keyed by a secret seed
    that forked processes inherit (the table is shared with forked processes only), so
    every process sharing the table tags a key alike, and a client cannot choose an
    identity whose tag collides with another's and spend its tokens."""
    return hash((rule, client)) & _MASK or 1


def partition_tag(tag: int, partition: int) -> int:
    """The tag of the same key in another partition (a process's own buckets): a
    different tag in the same set, so both are read under one lock."""
    if not partition:
        return tag
    return (tag ^ (partition * 0x9E3779B97F4A7C15)) & _MASK or 1


class BucketTable:
    """Fixed-size table of token buckets, shared with the processes forked after it was made.

    Callers lock a set (`lock(set_index)` ... `unlock(set_index)`), read it
    (`find`), and write one slot (`store`); the set of a key is `set_of(tag)`.
    """

    def __init__(self, max_entries: int, solo_wait: float = SOLO_WAIT_SECONDS) -> None:
        if max_entries < 1:
            raise ValueError("a bucket table holds at least one entry")
        self.ways = min(WAYS, max_entries)
        self.sets = max(1, max_entries // self.ways)
        self.capacity = self.sets * self.ways  # at most max_entries
        self.max_entries = max_entries
        # The processes that share this table (the workers forked from its maker).
        self.group = new_group()
        self._set = struct.Struct("=" + _SLOT * self.ways)
        self._set_bytes = self._set.size
        # Anonymous and MAP_SHARED: forked children see the same pages; untouched
        # pages cost nothing until a client lands in them.
        self._memory = mmap.mmap(-1, _HEADER.size + self.sets * self._set_bytes)
        # The same memory as 8-byte words, unsigned and float: a known slot is read and
        # written word by word (`slot_word`), cheaper than packing, above all in the
        # cold caches of a busy server.
        view = memoryview(self._memory)
        self.words = view.cast("Q")
        self.floats = view.cast("d")
        self._lock_file = tempfile.TemporaryFile(prefix="ratelimit-locks-")
        self._fd = self._lock_file.fileno()
        self._header_lock = self.sets  # the byte after the sets' bytes
        self._solo_lock = self.sets + 1  # held by the first process while it is alone
        self._solo = False  # whether this process holds it
        self._solo_wait = solo_wait
        self._attached_pid = 0

    def attach(self) -> None:
        """Count this process among the table's users (once per process; the first
        call in a forked child counts the child). The first user takes the solo lock;
        a later one waits for the first to give it up (see the module's docstring)."""
        if self._attached_pid == os.getpid():
            return
        self._attached_pid = os.getpid()
        self._solo = False  # record locks are not inherited: a parent's is not this process's
        fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, self._header_lock)
        try:
            users = self.words[_USERS] + 1
            self.words[_USERS] = users
            if users == 1:
                fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, self._solo_lock)
                self._solo = True
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, self._header_lock)
        if users > 1:
            self._await_solo()

    def _await_solo(self) -> None:
        deadline = time.monotonic() + self._solo_wait
        while True:
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, self._solo_lock)
            except OSError:  # the first process still holds it
                if time.monotonic() >= deadline:
                    return  # it stays idle, so it has no update in flight
                time.sleep(0.001)
                continue
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, self._solo_lock)
            return

    def shared(self) -> bool:
        """Whether more than one process has attached: sets must then be locked."""
        return self.words[_USERS] > 1

    def set_of(self, tag: int) -> int:
        return tag % self.sets

    def lock(self, set_index: int) -> None:
        if self._solo:
            # The first update since another process attached: this process's updates
            # without locks are over (the caller holds its thread lock), so the
            # newcomer waiting for the solo lock may start.
            self._solo = False
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, self._solo_lock)
        fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, set_index)

    def unlock(self, set_index: int) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, set_index)

    def slot_word(self, set_index: int, way: int) -> int:
        """The index in `words` and `floats` of a slot's first word (its tag); tokens,
        last update and members follow it."""
        return _HEADER_WORDS + (set_index * self.ways + way) * SLOT_WORDS

    def read(self, set_index: int) -> tuple:
        """The set's slots, flat: (tag, tokens, updated, members) for each way."""
        return self._set.unpack_from(self._memory, _HEADER.size + set_index * self._set_bytes)

    @staticmethod
    def find(values: tuple, tag: int) -> Slot | None:
        """The slot holding `tag` in a set as `read` returned it."""
        if tag not in values[::4]:
            return None
        i = values[::4].index(tag) * 4
        return Slot(i // 4, values[i + 1], values[i + 2], values[i + 3])

    @staticmethod
    def victim(values: tuple) -> tuple[int, bool]:
        """Where a new key goes: the first empty way, else the least recently used; and whether it was empty."""
        tags = values[::4]
        if 0 in tags:
            return tags.index(0), True
        updated = values[2::4]
        return updated.index(min(updated)), False

    def store(self, set_index: int, way: int, tag: int, tokens: float, updated: float, members: int) -> None:
        _SLOT_STRUCT.pack_into(self._memory, _HEADER.size + set_index * self._set_bytes + way * SLOT_BYTES,
                               tag, tokens, updated, members)

    def added(self, locked: bool) -> None:
        """Count a slot newly in use (called with its set locked, if `locked`)."""
        if locked:
            fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, self._header_lock)
        try:
            self.words[_USED] += 1
        finally:
            if locked:
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, self._header_lock)

    def __len__(self) -> int:
        return self.words[_USED]

    def clear(self) -> None:
        """Forget every bucket (tests); the processes attached stay counted."""
        users = self.words[_USERS]
        self._memory[:] = bytes(len(self._memory))
        self.words[_USERS] = users
