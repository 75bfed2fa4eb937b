"""SnapshotStore.subscribe: every publish reaches subscribers, off the publisher's thread."""

from __future__ import annotations

import threading

from config_watch import Snapshot, SnapshotStore, service_prefix
from tests.support import wait_until

PREFIXES = [service_prefix("data-processor")]


def snap(revision: int) -> Snapshot:
    return Snapshot(revision, {}, {}, PREFIXES, synced=True)


def test_subscriber_sees_the_current_snapshot_then_each_publish():
    store = SnapshotStore(snap(1))
    seen: list[int] = []
    unsubscribe = store.subscribe(lambda s: seen.append(s.revision))
    wait_until(lambda: seen == [1], message="the snapshot in force delivered first")
    for revision in (2, 3):
        store.publish(snap(revision))
        wait_until(lambda: seen[-1] == revision)
    unsubscribe()
    store.publish(snap(4))
    assert store.wait_for(lambda s: s.revision == 4, 1)
    assert 4 not in seen
    assert seen == sorted(seen)


def test_a_failing_subscriber_neither_blocks_publish_nor_other_subscribers():
    store = SnapshotStore(snap(1))
    seen: list[int] = []
    threads: set[str] = set()

    def boom(_s):
        raise RuntimeError("subscriber bug")

    def record(s):
        threads.add(threading.current_thread().name)
        seen.append(s.revision)

    store.subscribe(boom)
    store.subscribe(record)
    assert store.publish(snap(2))
    wait_until(lambda: seen and seen[-1] == 2)
    assert threading.current_thread().name not in threads  # called off the publisher's thread


def test_a_slow_subscriber_does_not_hold_up_publish_and_gets_the_newest():
    store = SnapshotStore(snap(1))
    release = threading.Event()
    seen: list[int] = []

    def slow(s):
        seen.append(s.revision)
        release.wait(5)

    store.subscribe(slow)
    wait_until(lambda: seen == [1])
    for revision in range(2, 50):
        assert store.publish(snap(revision))  # returns although the subscriber is stuck
    release.set()
    wait_until(lambda: seen[-1] == 49, message="newest snapshot delivered")
    assert seen == sorted(seen) and len(seen) < 49  # in between skipped, never backwards
