"""The resizable pool: grows at once, shrinks without losing a job, bounds its queue."""

from __future__ import annotations

import threading

import pytest

from processor import PoolClosed, QueueFull, ResizablePool
from tests.support import wait_until


class Gate:
    """Jobs that block until released, and record the pool size they ran under."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.sizes: list[int] = []
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0

    def job(self, info):
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.sizes.append(info.threads)
        try:
            if not self.release.wait(10):
                raise TimeoutError("gate never opened")
            return info.threads
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture
def pools():
    made: list[ResizablePool] = []

    def make(threads: int, queue_limit: int = 16) -> ResizablePool:
        made.append(ResizablePool(threads, queue_limit))
        return made[-1]

    yield make
    for pool in made:
        pool.shutdown(5)


def test_grow_starts_workers_at_once(pools):
    pool, gate = pools(1), Gate()
    futures = [pool.submit(gate.job) for _ in range(3)]
    wait_until(lambda: pool.stats()["busy"] == 1, message="first job running")
    assert pool.resize(3, revision=7) == 1
    stats = pool.stats()
    assert (stats["threads"], stats["revision"]) == (3, 7)
    wait_until(lambda: pool.stats()["workers"] == 3, message="new workers running")
    wait_until(lambda: pool.stats()["busy"] == 3, message="three jobs running after the grow")
    gate.release.set()
    assert [f.result(5) for f in futures] == [1, 3, 3]


def test_shrink_lets_running_jobs_finish(pools):
    pool, gate = pools(4), Gate()
    futures = [pool.submit(gate.job) for _ in range(4)]
    wait_until(lambda: pool.stats()["busy"] == 4)
    more = [pool.submit(gate.job) for _ in range(3)]  # queued behind them
    pool.resize(1)
    stats = pool.stats()
    assert (stats["threads"], stats["workers"], stats["busy"], stats["queued"]) == (1, 4, 4, 3)  # nobody interrupted
    gate.release.set()
    assert [f.result(5) for f in futures] == [4, 4, 4, 4]
    assert [f.result(5) for f in more] == [1, 1, 1]
    wait_until(lambda: pool.stats()["workers"] == 1, message="surplus workers gone")
    assert pool.stats()["done"] == 7


def test_shrink_then_only_the_new_size_runs_at_once(pools):
    pool, gate = pools(4), Gate()
    pool.resize(2)
    wait_until(lambda: pool.stats()["workers"] == 2, message="idle surplus leaves at once")
    futures = [pool.submit(gate.job) for _ in range(5)]
    wait_until(lambda: pool.stats()["busy"] == 2)
    assert pool.stats()["queued"] == 3
    gate.release.set()
    for f in futures:
        f.result(5)
    assert gate.most == 2


def test_queue_is_bounded(pools):
    pool, gate = pools(1, queue_limit=2), Gate()
    running = pool.submit(gate.job)
    wait_until(lambda: pool.stats()["busy"] == 1)
    queued = [pool.submit(gate.job) for _ in range(2)]
    with pytest.raises(QueueFull):
        pool.submit(gate.job)
    assert pool.stats()["queued"] == 2
    gate.release.set()
    assert [f.result(5) for f in [running, *queued]] == [1, 1, 1]


def test_idle_workers_take_jobs_beyond_the_queue_limit(pools):
    pool, gate = pools(3, queue_limit=1), Gate()
    wait_until(lambda: pool.stats()["workers"] == 3)
    futures = [pool.submit(gate.job) for _ in range(4)]  # three run, one waits
    wait_until(lambda: pool.stats()["busy"] == 3)
    gate.release.set()
    assert len([f.result(5) for f in futures]) == 4


def test_failures_are_counted_and_the_pool_goes_on(pools):
    pool = pools(1)

    def boom(info):
        raise ValueError("bad input")

    failed = pool.submit(boom)
    with pytest.raises(ValueError):
        failed.result(5)
    assert pool.submit(lambda info: "ok").result(5) == "ok"
    wait_until(lambda: pool.stats()["done"] == 1)
    stats = pool.stats()
    assert (stats["failed"], stats["done"], stats["workers"]) == (1, 1, 1)


def test_shutdown_finishes_running_and_queued_jobs(pools):
    pool, gate = pools(1), Gate()
    futures = [pool.submit(gate.job) for _ in range(4)]
    wait_until(lambda: pool.stats()["busy"] == 1)
    result: list[bool] = []
    closer = threading.Thread(target=lambda: result.append(pool.shutdown(10)))
    closer.start()
    wait_until(lambda: pool.closed)
    with pytest.raises(PoolClosed):
        pool.submit(gate.job)
    gate.release.set()
    closer.join(10)
    assert result == [True]
    assert [f.result(0) for f in futures] == [1, 1, 1, 1]
    assert pool.stats()["workers"] == 0


def test_shutdown_reports_a_timeout(pools):
    pool, gate = pools(1), Gate()
    pool.submit(gate.job)
    wait_until(lambda: pool.stats()["busy"] == 1)
    assert pool.shutdown(0.05) is False
    gate.release.set()


def test_resize_rejects_a_size_below_one(pools):
    with pytest.raises(ValueError):
        pools(2).resize(0)
