"""A flood of distinct clients cannot grow the rate limiter's table without end."""

from __future__ import annotations

import gc
import os

from gateway import RateLimiter

CLIENTS = 1_000_000
DEFAULT_MAX_CLIENTS = 100_000
# Measured with tracemalloc: a full table of 100 000 clients holds about 32 MB, some
# 320 bytes a client (the identity string, the bucket with its two floats, the
# OrderedDict's entry and link). The bound is twice that, for allocator slack and RSS
# noise; a table that kept all 1 000 000 clients would need about 320 MB, ten times more.
MEMORY_BOUND_BYTES = 64 * 1024 * 1024
# Between 200 000 and 1 000 000 clients the table is full and only evicts. Keeping those
# 800 000 clients would cost about 245 MiB more; a bounded table grows by a tenth of
# that at most, in steps, as the OrderedDict's hash table is rebuilt under churn and
# the allocator fragments (about 10 MiB observed).
PLATEAU_GROWTH_BOUND_BYTES = 24 * 1024 * 1024


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
            assert len(limiter) == DEFAULT_MAX_CLIENTS
            plateau_start = rss_bytes()
    gc.collect()
    after = rss_bytes()
    print(f"{CLIENTS} clients: table {len(limiter)}, RSS +{(after - before) / 2**20:.1f} MiB "
          f"(+{(after - plateau_start) / 2**20:.1f} MiB over the last {CLIENTS - 200_000} clients)")
    assert len(limiter) == DEFAULT_MAX_CLIENTS
    assert after - before < MEMORY_BOUND_BYTES
    assert after - plateau_start < PLATEAU_GROWTH_BOUND_BYTES


def test_the_newest_clients_are_the_ones_kept():
    limiter = RateLimiter(max_clients=1000)
    for i in range(5000):
        limiter.check(identity(i), 60, 1)
    assert len(limiter) == 1000
    # The last 1000 clients have spent their one token; an evicted one is back with a full bucket.
    assert not limiter.check(identity(4999), 60, 1, consume=False).allowed
    assert not limiter.check(identity(4000), 60, 1, consume=False).allowed
    assert limiter.check(identity(3999), 60, 1, consume=False).allowed
