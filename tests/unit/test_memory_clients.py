"""A flood of distinct clients cannot grow the rate limiter's table without end."""

from __future__ import annotations

import collections
import gc
import itertools
import os

from gateway import RateLimiter
from gateway.buckets import key_tag
from gateway.ratelimit import DEFAULT_RULE

CLIENTS = 1_000_000
DEFAULT_MAX_CLIENTS = 100_000
# The table is fixed at creation: 32 bytes a slot, 3.2 MB for 100 000 clients, in
# pages touched as clients land in them. The bound leaves room for allocator and RSS
# noise; a table that kept all 1 000 000 clients in Python objects would need some
# 320 MB (the dictionary this table replaced held about 320 bytes a client).
MEMORY_BOUND_BYTES = 16 * 1024 * 1024
# Between 200 000 and 1 000 000 clients every page of the table is in use: nothing
# may grow but noise.
PLATEAU_GROWTH_BOUND_BYTES = 2 * 1024 * 1024


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def identity(i: int) -> str:
    return f"ip:10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}#{i}"


def test_a_million_distinct_clients_keep_the_table_and_memory_bounded():
    limiter = RateLimiter()
    assert limiter.max_clients == DEFAULT_MAX_CLIENTS
    gc.collect()
    before = rss_bytes()
    plateau_start = None
    for i in range(CLIENTS):
        assert limiter.check(identity(i), 100, 100).allowed  # each is new: a full bucket
        if i == 199_999:
            # Twice as many clients as slots, hashed into sets of eight: nearly every slot in use.
            assert 0.99 * DEFAULT_MAX_CLIENTS <= len(limiter) <= DEFAULT_MAX_CLIENTS
            plateau_start = rss_bytes()
    gc.collect()
    after = rss_bytes()
    print(f"{CLIENTS} clients: table {len(limiter)}, RSS +{(after - before) / 2**20:.1f} MiB "
          f"(+{(after - plateau_start) / 2**20:.1f} MiB over the last {CLIENTS - 200_000} clients)")
    assert len(limiter) == DEFAULT_MAX_CLIENTS
    assert after - before < MEMORY_BOUND_BYTES
    assert after - plateau_start < PLATEAU_GROWTH_BOUND_BYTES


def spent(limiter: RateLimiter, i: int) -> bool:
    """Whether client i's bucket is still in the table (each spent its one token)."""
    return not limiter.check(identity(i), 60, 1, consume=False).allowed


def test_the_newest_clients_are_the_ones_kept():
    # A clock one microsecond on at every call: recency is exact, and no bucket refills
    # (a token takes a second at 60 a minute) before the looks below.
    ticks = itertools.count()
    limiter = RateLimiter(max_clients=1000, clock=lambda: 1000.0 + next(ticks) * 1e-6)
    for i in range(5000):
        limiter.check(identity(i), 60, 1)
    assert len(limiter) == 1000
    # A set of eight keeps its eight newest keys: a client is kept exactly when fewer
    # than eight newer clients landed in its set. (The sets depend on the interpreter's
    # hash seed, so which clients those are changes from run to run: about one run in
    # 170 keeps one of the oldest 2000.) An evicted client is back with a full bucket.
    newer: collections.Counter = collections.Counter()
    kept = set()
    for i in reversed(range(5000)):
        in_set = limiter.table.set_of(key_tag(DEFAULT_RULE, identity(i)))
        if newer[in_set] < 8:
            kept.add(i)
        newer[in_set] += 1
    assert [i for i in range(5000) if spent(limiter, i)] == sorted(kept)
    assert 4999 in kept
    newest = len(kept & set(range(4000, 5000)))
    assert newest >= 800, f"{newest} of the newest 1000 clients kept"
