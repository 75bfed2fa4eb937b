"""The bucket table shared by the processes forked after it was made (the workers of
one instance), through real forked processes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import pytest

from gateway.buckets import BucketTable, key_tag
from gateway.ratelimit import RateLimiter, YieldingLock

FORK = multiprocessing.get_context("fork")


def in_child(target, *args) -> int:
    """Run `target(*args)` in a forked child; its exit code."""
    child = FORK.Process(target=target, args=args)
    child.start()
    child.join(30)
    assert not child.is_alive(), "the child hung"
    return child.exitcode


def spend(table: BucketTable, client: str, count: int, own: bool = False) -> None:
    limiter = RateLimiter(table=table)
    for _ in range(count):
        assert limiter.check(client, 60, 5, own=own).allowed


def admitted(limiter: RateLimiter, client: str, tries: int, own: bool = False) -> int:
    return sum(limiter.check(client, 60, 5, own=own).allowed for _ in range(tries))


def test_a_forked_process_spends_from_the_same_bucket():
    table = BucketTable(100)
    assert in_child(spend, table, "x", 3) == 0
    # Two of the five tokens are left for this process: the child's three are gone here too.
    assert admitted(RateLimiter(table=table), "x", 5) == 2
    assert len(table) == 1


def test_own_buckets_are_apart_and_start_at_the_shared_fill_ratio():
    table = BucketTable(100)
    limiter = RateLimiter(table=table)
    assert admitted(limiter, "x", 3) == 3  # the shared bucket: two of five left
    # A process's own bucket starts at the shared bucket's ratio (a scope change keeps it)...
    assert in_child(spend, table, "x", 2, True) == 0
    # ...and the child's own spending is not this process's: its own bucket starts at two as well.
    assert admitted(limiter, "x", 5, own=True) == 2
    assert admitted(limiter, "x", 5) == 2  # the shared bucket was not touched by either


def spend_own_with(limiter: RateLimiter, client: str, expected: int) -> None:
    assert admitted(limiter, client, expected + 3, own=True) == expected


def test_a_forked_child_does_not_reach_its_parents_own_bucket_through_the_limiter_it_inherited():
    table = BucketTable(100)
    limiter = RateLimiter(table=table)
    assert admitted(limiter, "x", 3, own=True) == 3  # this process's own bucket: two of five left
    # The child uses the very limiter object, with its memory of where "x" lives: its
    # own bucket is still its own, new and full.
    assert in_child(spend_own_with, limiter, "x", 5) == 0
    assert admitted(limiter, "x", 5, own=True) == 2


def hammer(table: BucketTable, results, index: int) -> None:
    limiter = RateLimiter(table=table)
    counts = [0, 0]

    def run(slot: int) -> None:
        for _ in range(1500):
            counts[slot] += limiter.check("hot", 0, 2000).allowed

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results[index] = sum(counts)


def test_two_processes_of_two_threads_never_lose_an_update():
    # 6000 tries at one bucket of 2000 tokens that never refills: exactly 2000 pass,
    # whatever the interleaving (a lost update would let more through).
    table = BucketTable(100)
    results = FORK.Array("i", 2)
    children = [FORK.Process(target=hammer, args=(table, results, i)) for i in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    assert [c.exitcode for c in children] == [0, 0]
    assert sum(results) == 2000, list(results)


def die_holding_the_lock(table: BucketTable, set_index: int) -> None:
    table.attach()  # a second process: from now on the sets are locked
    table.lock(set_index)
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_process_killed_holding_a_set_lock_does_not_wedge_the_others():
    table = BucketTable(100)
    set_index = table.set_of(key_tag("", "x"))
    assert in_child(die_holding_the_lock, table, set_index) == -signal.SIGKILL
    done = threading.Event()
    thread = threading.Thread(target=lambda: (admitted(RateLimiter(table=table), "x", 1), done.set()), daemon=True)
    thread.start()
    assert done.wait(10), "the dead process's lock was never released"


def test_a_process_alone_locks_nothing_until_a_second_one_attaches():
    table = BucketTable(100)
    RateLimiter(table=table)
    RateLimiter(table=table)  # the same process again: still one
    assert not table.shared()
    assert in_child(spend, table, "x", 1) == 0
    assert table.shared()


def attach_and_stamp(table: BucketTable, stamps) -> None:
    RateLimiter(table=table)  # attaches: the second process
    stamps[1] = time.monotonic()


def test_a_newcomer_starts_only_after_the_first_process_gave_up_updating_alone():
    # The first process may be half way through an update without locks when a second
    # attaches; the newcomer must not touch a bucket before that update is over, which
    # the first process signals at the start of its next update.
    table = BucketTable(100, solo_wait=30.0)
    limiter = RateLimiter(table=table)
    assert admitted(limiter, "x", 1) == 1  # alone: no locks
    stamps = FORK.Array("d", 2)
    child = FORK.Process(target=attach_and_stamp, args=(table, stamps))
    child.start()
    deadline = time.monotonic() + 30
    while not table.shared():  # the child has attached and now waits
        assert time.monotonic() < deadline, "the child never attached"
        time.sleep(0.005)
    time.sleep(0.2)  # it goes on waiting while this process has not updated again
    assert child.is_alive()
    stamps[0] = time.monotonic()
    assert admitted(limiter, "x", 1) == 1  # the next update: locked, and it lets the child go
    child.join(30)
    assert child.exitcode == 0
    assert stamps[1] >= stamps[0], "the newcomer went ahead while the first process could still be updating alone"


def test_the_table_holds_at_most_its_size_in_whole_sets():
    assert (BucketTable(100_000).capacity, BucketTable(3).capacity, BucketTable(1009).capacity) == (100_000, 3, 1008)
    with pytest.raises(ValueError):
        BucketTable(0)


def test_the_yielding_lock_excludes_threads_and_falls_back_to_blocking():
    lock = YieldingLock()
    inside = [0]
    most = [0]
    counter = [0]

    def run():
        for _ in range(300):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
                value = counter[0]
                time.sleep(0)  # give the GIL away inside: another thread must still wait
                counter[0] = value + 1
                inside[0] -= 1

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (counter[0], most[0]) == (1200, 1)

    # A holder that keeps the lock past the waiter's spins: the waiter blocks, then gets it.
    got = threading.Event()
    lock.__enter__()
    waiter = threading.Thread(target=lambda: (lock.__enter__(), got.set(), lock.__exit__()))
    waiter.start()
    time.sleep(0.2)  # far longer than 100 yields
    assert not got.is_set()
    lock.__exit__()
    assert got.wait(5)
    waiter.join(5)
