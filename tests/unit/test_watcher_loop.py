"""The list-then-watch loop, driven by a scripted fake source (no etcd)."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque

import pytest

from config_watch import (
    GLOBAL_PREFIX,
    RATE_LIMIT,
    Compacted,
    ConfigWatcher,
    Settings,
    Unavailable,
    service_prefix,
)
from config_watch._backoff import Backoff
from config_watch._model import Event, KeyValue, WatchBatch
from tests.support import wait_until

PREFIXES = [service_prefix("api-gateway"), GLOBAL_PREFIX]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


class FakeStream:
    """A watch stream fed by the test. `silent`: every get is a tick of silence on `clock`."""

    def __init__(self, start_revision: int, silent: bool, clock: FakeClock | None) -> None:
        self.start_revision = start_revision
        self.silent = silent
        self.clock = clock
        self.progress_requests = 0
        self.closed = False
        self.waiting = False
        self._items: deque = deque()
        self._cond = threading.Condition()

    def push(self, item) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    def get(self, timeout: float):
        with self._cond:
            if self.silent and not self.closed and not self._items:
                self.clock.advance(timeout)
                return None
            self.waiting = True
            try:
                self._cond.wait_for(lambda: self._items or self.closed, timeout)
            finally:
                self.waiting = False
            if self.closed:
                raise Unavailable("watch stream closed")
            if not self._items:
                return None
            item = self._items.popleft()
        if isinstance(item, BaseException):
            raise item
        return item

    def request_progress(self) -> None:
        self.progress_requests += 1

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class FakeSource:
    """Scripted list/check results; records every call in order."""

    endpoint = "fake-0:2379"

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock
        self.list_script: deque = deque()  # (revision, kvs) or an exception, one per list call
        self.default_list: tuple[int, list[KeyValue]] = (1, [])
        self.check_result: object = (1, [])
        self.silent_streams = 0  # this many of the next streams say nothing at all
        self.streams: list[FakeStream] = []
        self.calls: list[tuple] = []
        self._lock = threading.Lock()
        self._rotations = 0

    def _record(self, *call) -> None:
        with self._lock:
            self.calls.append(call)

    def count(self, name: str) -> int:
        with self._lock:
            return sum(1 for c in self.calls if c[0] == name)

    def list(self, timeout: float):
        self._record("list")
        item = self.list_script.popleft() if self.list_script else self.default_list
        if isinstance(item, BaseException):
            raise item
        return item

    def watch(self, start_revision: int) -> FakeStream:
        self._record("watch", start_revision)
        silent = self.silent_streams > 0
        self.silent_streams -= silent
        stream = FakeStream(start_revision, silent, self.clock)
        with self._lock:
            self.streams.append(stream)
        return stream

    def check(self, timeout: float):
        self._record("check")
        if isinstance(self.check_result, BaseException):
            raise self.check_result
        return self.check_result

    def rotate(self) -> str:
        self._record("rotate")
        self._rotations += 1
        return f"fake-{self._rotations}:2379"

    def reconnect(self) -> None:
        self._record("reconnect")

    def close(self) -> None:
        self._record("close")

    def stream(self, index: int) -> FakeStream:
        return wait_until(lambda: len(self.streams) > index and self.streams[index], timeout=5,
                          message=f"watch stream #{index}")


def settings(**env) -> Settings:
    base = {"ETCD_DEAD_STREAM_SECONDS": "30", "CONFIG_STALENESS_SECONDS": "2", "ETCD_REQUEST_TIMEOUT_SECONDS": "1",
            "CONFIG_CHECK_TIMEOUT_SECONDS": "0.5"}
    return Settings.from_env({**base, **{k: str(v) for k, v in env.items()}})


@pytest.fixture
def make_watcher():
    started: list[ConfigWatcher] = []

    def make(source: FakeSource, clock: FakeClock | None = None, backoff: Backoff | None = None,
             start: bool = True, **env) -> ConfigWatcher:
        kwargs = {"clock": clock} if clock else {}
        watcher = ConfigWatcher(lambda: source, PREFIXES, settings(**env),
                                backoff=backoff or Backoff(base=0.001, cap=0.005, rand=random.Random(0)), **kwargs)
        started.append(watcher)
        return watcher.start() if start else watcher

    yield make
    for w in started:
        w.stop(timeout=5)
        assert not w.alive, "watcher thread still running after stop"


def put(key: str, value: str, rev: int) -> Event:
    return Event("put", key, value.encode(), rev)


def batch(rev: int, *events: Event) -> WatchBatch:
    return WatchBatch(rev, tuple(events))


def watching(stream: FakeStream) -> FakeStream:
    """`stream` once the loop is blocked reading it."""
    wait_until(lambda: stream.waiting, timeout=5, message="loop waiting on the stream")
    return stream


def revision_is(watcher: ConfigWatcher, rev: int):
    return lambda: watcher.store.current.revision == rev


# --- list, then watch ------------------------------------------------------------------


def test_initial_list_then_watch_from_the_next_revision(make_watcher):
    source = FakeSource()
    source.default_list = (7, [KeyValue(RATE_LIMIT, b"5", 6)])
    watcher = make_watcher(source)
    assert source.stream(0).start_revision == 8
    assert source.calls[:2] == [("list",), ("watch", 8)]
    snap = watcher.store.current
    assert snap.revision == 7 and snap.synced and snap[RATE_LIMIT] == 5
    assert watcher.synced


def test_empty_etcd_syncs_at_revision_zero_and_watches_from_one(make_watcher):
    source = FakeSource()
    source.default_list = (0, [])
    watcher = make_watcher(source)
    assert source.stream(0).start_revision == 1
    assert watcher.synced and watcher.store.current.synced


def test_watch_events_are_published_one_revision_at_a_time(make_watcher):
    source = FakeSource()
    source.default_list = (7, [])
    watcher = make_watcher(source)
    source.stream(0).push(batch(9, put(RATE_LIMIT, "9", 9)))
    wait_until(revision_is(watcher, 9), timeout=5)
    assert watcher.store.current[RATE_LIMIT] == 9
    assert watcher.connected


def test_progress_notification_changes_nothing(make_watcher):
    source = FakeSource()
    source.default_list = (7, [])
    watcher = make_watcher(source)
    before = watcher.store.current
    source.stream(0).push(batch(50))
    wait_until(lambda: watcher.connected, timeout=5)
    assert watcher.store.current is before


# --- resume, relist, never backwards ---------------------------------------------------


def test_stream_error_resumes_from_last_applied_revision_on_the_next_endpoint(make_watcher):
    source = FakeSource()
    source.default_list = (7, [])
    watcher = make_watcher(source)
    first = source.stream(0)
    first.push(batch(9, put(RATE_LIMIT, "9", 9)))
    wait_until(revision_is(watcher, 9), timeout=5)
    first.push(Unavailable("connection reset"))
    assert source.stream(1).start_revision == 10
    assert source.count("list") == 1  # resumed, not restarted
    calls = source.calls
    assert calls.index(("rotate",)) < calls.index(("watch", 10))
    assert watcher.store.current[RATE_LIMIT] == 9
    assert watcher.endpoint == "fake-1:2379"
    assert first.closed


def test_compacted_revision_relists_and_swaps_in_the_fresh_snapshot(make_watcher):
    source = FakeSource()
    source.list_script.extend([(7, [KeyValue(RATE_LIMIT, b"5", 6)]), (25, [KeyValue(RATE_LIMIT, b"3", 24)])])
    watcher = make_watcher(source)
    source.stream(0).push(Compacted(20))
    assert source.stream(1).start_revision == 26
    snap = watcher.store.current
    assert snap.revision == 25 and snap[RATE_LIMIT] == 3
    assert source.count("list") == 2
    assert watcher.counters["relists"] == 2


def test_published_revisions_never_go_backwards_when_a_list_is_older(make_watcher):
    source = FakeSource()
    source.list_script.extend([(10, [KeyValue(RATE_LIMIT, b"5", 10)]), (6, [KeyValue(RATE_LIMIT, b"1", 6)])])
    watcher = make_watcher(source, start=False)
    published: list[int] = []
    original = watcher.store.publish

    def recording_publish(snapshot):
        ok = original(snapshot)
        published.append(watcher.store.current.revision)
        return ok

    watcher.store.publish = recording_publish
    watcher.start()
    source.stream(0).push(Compacted(8))
    assert source.stream(1).start_revision == 11
    assert watcher.store.current.revision == 10 and watcher.store.current[RATE_LIMIT] == 5
    assert len(published) == 2  # both lists were offered to the store
    assert published == sorted(published) and published[-1] == 10


# --- dead streams and errors -------------------------------------------------------------


def test_silent_stream_gets_progress_requests_and_is_declared_dead(make_watcher):
    clock = FakeClock()
    source = FakeSource(clock)
    source.default_list = (7, [])
    source.silent_streams = 1
    watcher = make_watcher(source, clock=clock, ETCD_DEAD_STREAM_SECONDS=3)  # a tick of silence is 1 s
    second = source.stream(1)
    first = source.streams[0]
    assert first.closed
    assert first.progress_requests == 3  # on opening, at 1 s and at 2 s of silence; dead at 3 s
    assert second.start_revision == 8
    assert source.calls.index(("rotate",)) < source.calls.index(("watch", 8), 2)
    assert "silent" in (watcher.last_error or "")


def test_unexpected_exception_is_logged_and_the_loop_goes_on(make_watcher):
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger("config_watch._watcher")
    logger.addHandler(handler)
    try:
        source = FakeSource()
        source.list_script.extend([RuntimeError("kaboom"), (4, [])])
        watcher = make_watcher(source)
        assert source.stream(0).start_revision == 5
        assert watcher.synced
    finally:
        logger.removeHandler(handler)
    errors = [r for r in records if r.exc_info and isinstance(r.exc_info[1], RuntimeError)]
    assert errors and errors[0].levelno == logging.ERROR
    assert "kaboom" in str(errors[0].exc_info[1])


def test_loop_survives_a_long_outage(make_watcher):
    """Over a thousand failed attempts in a row (an hour at the 5 s cap), then etcd returns."""
    source = FakeSource()
    source.list_script.extend([Unavailable("connection refused")] * 1100 + [(3, [])])
    watcher = make_watcher(source, backoff=Backoff(base=1e-6, cap=1e-6, rand=random.Random(0)))
    wait_until(lambda: watcher.synced or not watcher.alive, timeout=20, message="synced or dead")
    assert watcher.alive, "the watch thread died"
    assert source.stream(0).start_revision == 4


def test_stop_returns_promptly_while_blocked_in_get(make_watcher):
    source = FakeSource()
    watcher = make_watcher(source)  # a tick is 10 s: get blocks long
    stream = watching(source.stream(0))
    started = time.monotonic()
    watcher.stop(timeout=5)
    assert time.monotonic() - started < 1.0
    assert not watcher.alive
    assert stream.closed
    assert source.calls[-1] == ("close",)


# --- the staleness guard ---------------------------------------------------------------


def test_ensure_fresh_on_a_stale_watcher_checks_and_catches_up(make_watcher):
    clock = FakeClock()
    source = FakeSource(clock)
    source.default_list = (7, [KeyValue(RATE_LIMIT, b"5", 7)])
    watcher = make_watcher(source, clock=clock)
    watching(source.stream(0))
    source.check_result = (12, [KeyValue(RATE_LIMIT, b"42", 12)])
    clock.advance(3)  # past the 2 s staleness bound
    snap = watcher.ensure_fresh()
    assert source.count("check") == 1
    assert snap.revision == 12 and snap[RATE_LIMIT] == 42
    assert watcher.store.current is snap
    assert watcher.counters["check_catchups"] == 1
    # The watch that missed the change is replaced, resuming after the caught-up revision.
    assert source.stream(1).start_revision == 13
    assert ("reconnect",) in source.calls


def test_ensure_fresh_does_nothing_when_fresh(make_watcher):
    clock = FakeClock()
    source = FakeSource(clock)
    source.default_list = (7, [])
    watcher = make_watcher(source, clock=clock)
    watching(source.stream(0))
    clock.advance(1)  # inside the 2 s bound
    before = watcher.store.current
    assert watcher.ensure_fresh() is before
    assert source.count("check") == 0


def test_events_read_after_a_freeze_do_not_count_as_fresh(make_watcher):
    """An event that sat in a socket buffer through a freeze says nothing about now."""
    clock = FakeClock()
    source = FakeSource(clock)
    source.default_list = (7, [KeyValue(RATE_LIMIT, b"5", 7)])
    watcher = make_watcher(source, clock=clock)
    stream = watching(source.stream(0))
    clock.advance(3)  # frozen past the 2 s staleness bound
    stream.push(batch(8, put(RATE_LIMIT, "6", 8)))
    wait_until(revision_is(watcher, 8), timeout=5)
    assert watcher.staleness() >= 3
    source.check_result = (10, [KeyValue(RATE_LIMIT, b"9", 10)])
    assert watcher.ensure_fresh()[RATE_LIMIT] == 9
    assert source.count("check") == 1


def test_progress_answer_proves_freshness_as_of_its_question(make_watcher):
    clock = FakeClock()
    source = FakeSource(clock)
    source.default_list = (7, [])
    watcher = make_watcher(source, clock=clock)
    stream = watching(source.stream(0))
    asked = clock()
    clock.advance(3)
    # The answer to a question sent before the freeze, read after it: still stale.
    stream.push(WatchBatch(7, asked_at=asked, complete=True))
    wait_until(lambda: watcher.connected, timeout=5)
    assert watcher.staleness() == 3
    # The answer to a question sent now.
    stream.push(WatchBatch(7, asked_at=clock() - 0.25, complete=True))
    wait_until(lambda: watcher.staleness() == 0.25, timeout=5, message="fresh as of the question")
    assert watcher.ensure_fresh() is watcher.store.current
    assert source.count("check") == 0


def test_failing_check_leaves_the_last_good_snapshot_in_force(make_watcher):
    clock = FakeClock()
    source = FakeSource(clock)
    source.default_list = (7, [KeyValue(RATE_LIMIT, b"5", 7)])
    watcher = make_watcher(source, clock=clock)
    watching(source.stream(0))
    before = watcher.store.current
    source.check_result = Unavailable("deadline exceeded")
    clock.advance(3)
    assert watcher.ensure_fresh() is before
    assert source.count("check") == 1
    assert before[RATE_LIMIT] == 5


def test_check_that_finds_nothing_newer_publishes_nothing(make_watcher):
    clock = FakeClock()
    source = FakeSource(clock)
    source.default_list = (7, [KeyValue(RATE_LIMIT, b"5", 7)])
    watcher = make_watcher(source, clock=clock)
    watching(source.stream(0))
    before = watcher.store.current
    source.check_result = (7, [KeyValue(RATE_LIMIT, b"5", 7)])
    clock.advance(3)
    assert watcher.ensure_fresh() is before
    assert watcher.staleness() == 0  # the check counts as word from etcd
    assert len(source.streams) == 1  # the healthy watch is left alone


def test_failed_check_is_not_repeated_by_every_request(make_watcher):
    clock = FakeClock()
    source = FakeSource(clock)
    source.default_list = (7, [])
    watcher = make_watcher(source, clock=clock)
    watching(source.stream(0))
    source.check_result = Unavailable("deadline exceeded")
    clock.advance(3)
    for _ in range(5):
        watcher.ensure_fresh()
    assert source.count("check") == 1
    clock.advance(1.0)  # the pause after a failure is at most a second
    watcher.ensure_fresh()
    assert source.count("check") == 2
