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
    AuthError,
    MAINTENANCE_MODE,
    RATE_LIMIT,
    Compacted,
    ConfigWatcher,
    Settings,
    Unavailable,
    service_prefix,
)
from config_watch._backoff import Backoff
from config_watch._errors import ConfigurationError
from config_watch._model import Event, KeyValue, WatchBatch
from tests.support import record_published, wait_until

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
    """A watch stream fed by the test. `silent`: every get is a tick of silence on `clock`.

    `push` does what WatchStream's reader does with a response: it applies the events
    through the loop's `on_events` (on the pushing thread, as on the reader thread),
    then queues the response's sign of life for `get`. Nothing is applied once closed.
    """

    def __init__(self, start_revision: int, on_events, silent: bool, clock: FakeClock | None) -> None:
        self.start_revision = start_revision
        self.on_events = on_events
        self.silent = silent
        self.clock = clock
        self.progress_requests = 0
        self.asked_at: list[float] = []
        self.closed = False
        self.waiting = False
        self._items: deque = deque()
        self._cond = threading.Condition()
        self._deliver_lock = threading.RLock()

    def push(self, item) -> None:
        if isinstance(item, WatchBatch) and item.events:
            with self._deliver_lock:
                if self.closed:
                    return
                self.on_events(item.events)
            item = WatchBatch(item.header_revision)
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

    def request_progress(self, asked_at: float) -> None:
        self.progress_requests += 1
        self.asked_at.append(asked_at)

    def close(self) -> None:
        with self._deliver_lock:
            with self._cond:
                self.closed = True
                self._cond.notify_all()


class FakeSource:
    """Scripted list/check results; records every call in order. One endpoint unless
    told (the single-VM deployment); `rotate` cycles through them as EtcdSource does."""

    def __init__(self, clock: FakeClock | None = None, endpoints: int = 1) -> None:
        self.clock = clock
        self.endpoints = [f"fake-{i}:2379" for i in range(endpoints)]
        self._index = 0
        self.list_script: deque = deque()  # (revision, kvs) or an exception, one per list call
        self.default_list: tuple[int, list[KeyValue]] = (1, [])
        self.check_result: object = (1, [])
        self.silent_streams = 0  # this many of the next streams say nothing at all
        self.streams: list[FakeStream] = []
        self.calls: list[tuple] = []
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return self.endpoints[self._index]

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

    def watch(self, start_revision: int, on_events) -> FakeStream:
        self._record("watch", start_revision)
        silent = self.silent_streams > 0
        self.silent_streams -= silent
        stream = FakeStream(start_revision, on_events, silent, self.clock)
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
        self._index = (self._index + 1) % len(self.endpoints)
        return self.endpoint

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
    wait_until(lambda: watcher.connected, timeout=5, message="the response's sign of life reaches the loop")


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
    source = FakeSource(endpoints=3)
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


def test_events_of_one_revision_are_published_as_one_snapshot(make_watcher):
    source = FakeSource()
    source.default_list = (7, [])
    watcher = make_watcher(source, start=False)
    published = record_published(watcher)
    watcher.start()
    watching(source.stream(0)).push(batch(9, put(RATE_LIMIT, "9", 9), put(MAINTENANCE_MODE, "true", 9)))
    wait_until(revision_is(watcher, 9), timeout=5)
    assert [s.revision for s in published] == [7, 9]
    assert published[-1][RATE_LIMIT] == 9 and published[-1][MAINTENANCE_MODE] is True


# --- restores: the one way back -------------------------------------------------------------


def test_list_below_the_snapshot_publishes_the_restored_state_once(make_watcher, caplog):
    """A linearizable list never goes back, so a lower revision is a restore from backup."""
    source = FakeSource()
    source.list_script.extend([(10, [KeyValue(RATE_LIMIT, b"5", 10)]), (6, [KeyValue(RATE_LIMIT, b"1", 6)])])
    watcher = make_watcher(source, start=False)
    published = record_published(watcher)
    watcher.start()
    source.stream(0).push(Compacted(8))
    assert source.stream(1).start_revision == 7  # watched from the restored revision + 1
    assert watcher.store.current.revision == 6 and watcher.store.current[RATE_LIMIT] == 1
    assert [s.revision for s in published] == [10, 6]
    assert watcher.counters["restores"] == 1
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR and "restored" in r.getMessage()]
    assert loud and loud[0].json_fields["revision"] == 6 and loud[0].json_fields["previous_revision"] == 10


def test_watch_answer_below_the_snapshot_relists_and_applies_later_writes(make_watcher):
    """Restored from 8 to 4: the watch from 9 would wait for a future revision forever."""
    source = FakeSource()
    source.list_script.extend([(8, [KeyValue(RATE_LIMIT, b"5", 8)]), (4, [KeyValue(RATE_LIMIT, b"2", 4)])])
    watcher = make_watcher(source)
    watching(source.stream(0)).push(batch(4))  # the created answer of the watch from 9
    resumed = source.stream(1)
    assert resumed.start_revision == 5
    assert watcher.store.current.revision == 4 and watcher.store.current[RATE_LIMIT] == 2
    watching(resumed).push(batch(5, put(RATE_LIMIT, "3", 5)))
    wait_until(lambda: watcher.store.current[RATE_LIMIT] == 3, timeout=5, message="write after the restore")


def test_watch_answer_below_the_snapshot_from_a_lagging_member_is_no_proof(make_watcher):
    clock = FakeClock()
    source = FakeSource(clock)
    source.list_script.extend([(8, []), (8, [])])  # the relist shows etcd did not go back
    watcher = make_watcher(source, clock=clock)
    watching(source.stream(0)).push(batch(6))
    stream = watching(source.stream(1))
    assert watcher.counters["restores"] == 0 and watcher.store.current.revision == 8
    clock.advance(3)
    stream.push(WatchBatch(6, asked_at=clock(), complete=True))  # the member still lags
    wait_until(lambda: watcher.connected, timeout=5)
    assert watcher.staleness() >= 3  # alive, but not proof that the snapshot is current
    assert source.count("list") == 2 and len(source.streams) == 2  # confirmed once, not again


def test_check_below_the_snapshot_is_no_proof_and_the_loop_relists(make_watcher):
    clock = FakeClock()
    source = FakeSource(clock)
    source.list_script.extend([(8, [KeyValue(RATE_LIMIT, b"5", 8)]), (4, [KeyValue(RATE_LIMIT, b"2", 4)])])
    watcher = make_watcher(source, clock=clock)
    watching(source.stream(0))
    source.check_result = (4, [KeyValue(RATE_LIMIT, b"2", 4)])
    clock.advance(3)  # stale: the request checks
    watcher.ensure_fresh()
    assert source.count("check") == 1
    assert source.stream(1).start_revision == 5  # the loop relisted and published the restored state
    assert watcher.store.current[RATE_LIMIT] == 2 and watcher.counters["restores"] == 1


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
    assert ("close",) in source.calls  # on a new connection


def read_on(stream: FakeStream, item) -> None:
    """Push `item` and wait until the loop took it and waits on `stream` again."""
    stream.push(item)
    wait_until(lambda: stream.waiting and not stream._items, timeout=5,
               message="loop back on the same stream after the answer")


def test_an_answer_asked_before_a_check_moved_the_snapshot_ahead_costs_no_relist(make_watcher, caplog):
    """Only other ranges' writes raised etcd's revision: the check publishes 12 with the
    same config while the stream has delivered up to 8, and a progress answer to a
    question sent before the check then says 9. Nothing was restored and no member
    lags: no relist, no warning."""
    clock = FakeClock()
    source = FakeSource(clock)
    source.list_script.extend([(8, [KeyValue(RATE_LIMIT, b"5", 8)]), (12, [KeyValue(RATE_LIMIT, b"5", 8)])])
    watcher = make_watcher(source, clock=clock)
    stream = watching(source.stream(0))
    asked_before = stream.asked_at[0]
    source.check_result = (12, [KeyValue(RATE_LIMIT, b"5", 8)])
    clock.advance(3)  # stale: the next request checks
    assert watcher.ensure_fresh().revision == 12
    read_on(stream, WatchBatch(9, asked_at=asked_before, complete=True))
    assert source.count("list") == 1 and len(source.streams) == 1
    assert watcher.counters["below_snapshot"] == 0
    assert not [r for r in caplog.records if "below the snapshot" in r.getMessage()]
    assert watcher.staleness() < 1  # the check's proof stands; the old answer adds none
    # A question sent after the check and answered below it is a lagging member again.
    clock.advance(1)
    stream.push(WatchBatch(9, asked_at=clock(), complete=True))
    assert source.stream(1).start_revision == 13
    assert source.count("list") == 2 and watcher.counters["below_snapshot"] == 1
    assert watcher.counters["restores"] == 0


def while_publishing(watcher: ConfigWatcher, revision: int, action) -> None:
    """Run `action` while the check publishes `revision`: after the snapshot is in force,
    before the check goes on (the loop may read a response in that moment)."""
    publish = watcher.store.publish

    def hooked(snapshot, restore=False):
        published = publish(snapshot, restore)
        if snapshot.revision == revision:
            action()
        return published

    watcher.store.publish = hooked


@pytest.mark.parametrize("changed", [False, True], ids=["same config", "config changed"])
def test_a_response_read_the_moment_a_check_publishes_costs_no_relist(make_watcher, changed):
    """The loop may read a response the moment the check's snapshot is in force, before
    the check returns: a progress answer to a question sent before it (the config the
    same), or a response the stream had on its way while the check found changes it
    missed. Neither is a restore or a lagging member."""
    clock = FakeClock()
    source = FakeSource(clock)
    source.list_script.extend([(8, [KeyValue(RATE_LIMIT, b"5", 8)])])
    watcher = make_watcher(source, clock=clock)
    stream = watching(source.stream(0))
    answer = WatchBatch(9, asked_at=stream.asked_at[0], complete=True) if not changed else WatchBatch(10)
    source.check_result = (12, [KeyValue(RATE_LIMIT, b"7" if changed else b"5", 11 if changed else 8)])

    def read_now():
        stream.push(answer)
        wait_until(lambda: not stream._items and (stream.waiting or len(source.streams) > 1 or source.count("list") > 1),
                   timeout=5, message="the loop read the response")

    while_publishing(watcher, 12, read_now)
    clock.advance(3)  # stale: the next request checks
    assert watcher.ensure_fresh()[RATE_LIMIT] == (7 if changed else 5)
    if changed:
        assert source.stream(1).start_revision == 13  # the stream is replaced, from the check's revision
    else:
        watching(stream)
    assert source.count("list") == 1 and watcher.counters["below_snapshot"] == 0


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


# --- errors by meaning ---------------------------------------------------------------


class MaxRand:
    """Backoff's random source, pinned to the longest delay."""

    def uniform(self, low: float, high: float) -> float:
        return high


def test_refused_credentials_are_permanent_retried_slowly_and_reported(make_watcher, caplog):
    source = FakeSource()
    source.list_script.extend([AuthError("etcd refused user 'gateway': authentication failed")] * 3)
    backoff = Backoff(base=0.001, cap=0.005, rand=random.Random(0), permanent_delay=60)
    watcher = make_watcher(source, backoff=backoff)
    assert watcher.wait_settled(5) and not watcher.synced
    status = watcher.status()
    assert status.state == "failed" and status.error_kind == "permanent"
    assert "ETCD_PASSWORD" in status.reason and "gateway" not in status.reason  # no user name for anyone
    watcher.stop()
    assert source.count("list") == 1  # one try, then the slow pace: no tight loop of refused logins
    assert source.count("rotate") == 0 and backoff.failures("fake-0:2379") == 0
    logged = [r for r in caplog.records if r.name == "config_watch._watcher" and r.levelno >= logging.WARNING]
    assert logged and all(r.exc_info is None for r in logged)  # no stack trace for a known error


def test_unreadable_tls_files_from_the_source_factory_are_a_permanent_settings_error(make_watcher):
    def factory():
        raise ConfigurationError("ETCD_CERT: cannot read /secrets/cert.pem: No such file or directory")

    watcher = ConfigWatcher(factory, PREFIXES, settings(), backoff=Backoff(permanent_delay=60)).start()
    try:
        assert watcher.wait_settled(5)
        status = watcher.status()
        assert status.error_kind == "permanent" and status.reason == "bad setting: ETCD_CERT"
        assert "/secrets" in status.error and "/secrets" not in str(status.to_json(details=False))
    finally:
        watcher.stop()


def test_status_is_valid_while_the_watch_opens_after_a_list_and_interrupted_once_it_fails(make_watcher):
    """Between a list and the watch's first answer (at a cold start, while gRPC loads)
    nothing is down: the snapshot was just listed. A failure makes it `interrupted`
    until the watch answers again."""
    source = FakeSource()
    source.default_list = (7, [])
    watcher = make_watcher(source)
    first = watching(source.stream(0))
    assert not watcher.connected and watcher.status().state == "valid"
    first.push(Unavailable("connection reset by peer"))
    second = watching(source.stream(1))  # resumed, without a list
    assert source.count("list") == 1
    assert not watcher.connected and watcher.status().state == "interrupted"
    second.push(batch(7))
    wait_until(lambda: watcher.connected, timeout=5)
    assert watcher.status().state == "valid"


def test_transient_errors_back_off_and_rotate(make_watcher):
    source = FakeSource()
    source.list_script.extend([Unavailable("connection refused"), Unavailable("no leader"), (3, [])])
    backoff = Backoff(base=0.001, cap=0.005, rand=random.Random(0))
    watcher = make_watcher(source, backoff=backoff)
    assert watcher.wait_synced(5)
    assert source.count("rotate") == 2 and backoff.failures("fake-0:2379") == 2
    assert source.stream(0).start_revision == 4


# --- backoff: per endpoint, reset only after its healthy stretch ------------------------------


def retry_waits(caplog) -> list[float]:
    """The waits the loop logged before each transient retry, in order."""
    return [r.json_fields["retry_in_seconds"] for r in caplog.records
            if r.name == "config_watch._watcher" and "retry_in_seconds" in getattr(r, "json_fields", {})]


def test_watch_accepted_then_dropped_backs_off_like_any_failure(make_watcher, caplog):
    """One endpoint (the single-VM deployment): the plain doubling series, as ever."""
    source = FakeSource()
    source.default_list = (7, [])
    backoff = Backoff(base=0.002, cap=1.0, rand=MaxRand())
    make_watcher(source, backoff=backoff)
    for i in range(4):
        stream = watching(source.stream(i))
        stream.push(batch(7))  # the watch-created reply
        stream.push(Unavailable("connection reset by peer"))
    source.stream(4)
    assert backoff.failures("fake-0:2379") == 4  # not reset by the replies
    assert retry_waits(caplog) == [0.002, 0.004, 0.008, 0.016]


def test_a_fault_on_one_member_tries_the_next_at_once(make_watcher, caplog):
    source = FakeSource(endpoints=3)
    source.default_list = (7, [])
    backoff = Backoff(base=100, cap=100, rand=MaxRand())  # a member that failed waits 100 s
    watcher = make_watcher(source, backoff=backoff)
    watching(source.stream(0)).push(Unavailable("connection reset by peer"))
    assert source.stream(1).start_revision == 8  # not after fake-0's 100 s
    assert watcher.endpoint == "fake-1:2379"
    watching(source.stream(1)).push(Unavailable("connection reset by peer"))
    source.stream(2)
    assert [backoff.failures(e) for e in source.endpoints] == [1, 1, 0]
    watching(source.stream(2)).push(Unavailable("connection reset by peer"))
    wait_until(lambda: len(retry_waits(caplog)) == 3, timeout=5)
    # Back at fake-0, the loop waits out what is left of its delay: no tight loop.
    assert retry_waits(caplog)[:2] == [0.0, 0.0] and 99 < retry_waits(caplog)[2] <= 100
    assert len(source.streams) == 3


def test_with_every_member_down_each_backs_off_on_its_own_count(make_watcher, caplog):
    clock = FakeClock()  # stands still, so each wait is the whole delay left
    source = FakeSource(clock, endpoints=3)
    source.list_script.extend([Unavailable("connection refused")] * 12 + [(3, [])])
    backoff = Backoff(base=0.002, cap=1.0, rand=MaxRand())
    watcher = make_watcher(source, clock=clock, backoff=backoff)
    assert watcher.wait_synced(5)
    # Each member is tried at once the first time, then no sooner than its own doubling
    # delay allows: the cluster as a whole backs off exponentially too.
    assert retry_waits(caplog) == [0, 0, 0.002, 0.002, 0.002, 0.004, 0.004, 0.004, 0.008, 0.008, 0.008, 0.016]
    assert [backoff.failures(e) for e in source.endpoints] == [4, 4, 4]


def test_an_endpoint_starts_over_after_its_own_healthy_stretch(make_watcher):
    clock = FakeClock()
    source = FakeSource(clock, endpoints=2)
    source.default_list = (7, [])
    backoff = Backoff(base=0.001, cap=0.005, rand=random.Random(0), reset_after=30)
    make_watcher(source, clock=clock, backoff=backoff, ETCD_DEAD_STREAM_SECONDS=100)
    a, b = source.endpoints
    for i in range(2):  # a, then b: each accepts the watch and drops it
        stream = watching(source.stream(i))
        stream.push(batch(7))
        stream.push(Unavailable("connection reset by peer"))
    third = watching(source.stream(2))  # on a again
    read_on(third, batch(7))  # handled, so the stream's start is stamped before the clock moves
    asked = third.progress_requests
    clock.advance(29)
    third.push(batch(7))
    wait_until(lambda: third.progress_requests > asked, timeout=5, message="the loop read on")
    assert backoff.failures(a) == 1  # 29 s healthy: not yet
    clock.advance(2)
    third.push(batch(7))
    wait_until(lambda: backoff.failures(a) == 0, timeout=5, message="a starts over after 30 s healthy")
    assert backoff.failures(b) == 1  # b has not proven itself: it keeps its count


# --- recovery: a request's check wakes the loop -----------------------------------------------


def test_successful_check_wakes_a_loop_sleeping_out_its_backoff(make_watcher):
    clock = FakeClock()
    source = FakeSource(clock)
    source.default_list = (7, [])
    backoff = Backoff(base=100, cap=100, rand=MaxRand())  # a 100 s sleep after the first failure
    watcher = make_watcher(source, clock=clock, backoff=backoff)
    watching(source.stream(0)).push(Unavailable("etcd stopped"))
    wait_until(lambda: watcher.failure is not None, timeout=5)
    source.check_result = (9, [KeyValue(RATE_LIMIT, b"9", 9)])  # etcd is back, with a new write
    snapshot = watcher.ensure_fresh()  # not stale, but the loop is down: the request may check
    assert snapshot.revision == 9 and snapshot[RATE_LIMIT] == 9
    assert source.stream(1).start_revision == 10  # re-watched at once, not after 100 s


def test_while_the_loop_is_down_requests_check_at_most_once_a_second(make_watcher):
    clock = FakeClock()
    source = FakeSource(clock)
    source.default_list = (7, [])
    watcher = make_watcher(source, clock=clock, backoff=Backoff(base=100, cap=100, rand=MaxRand()))
    watching(source.stream(0)).push(Unavailable("etcd stopped"))
    wait_until(lambda: watcher.failure is not None, timeout=5)
    source.check_result = Unavailable("connection refused")
    for _ in range(5):
        watcher.ensure_fresh()
    assert source.count("check") == 1
    clock.advance(0.9)
    watcher.ensure_fresh()
    assert source.count("check") == 1
    clock.advance(0.2)
    watcher.ensure_fresh()
    assert source.count("check") == 2


# --- one clock, and a promise kept ----------------------------------------------------------


def test_progress_questions_are_stamped_by_the_injected_clock(make_watcher):
    clock = FakeClock()
    source = FakeSource(clock)
    source.default_list = (7, [])
    make_watcher(source, clock=clock)
    stream = watching(source.stream(0))
    assert stream.asked_at and set(stream.asked_at) == {clock()}  # the fake time, not time.monotonic()


def test_synced_is_reported_only_once_its_snapshot_is_published(make_watcher):
    """A never-synced watcher whose request check reaches etcd first."""
    clock = FakeClock()
    source = FakeSource(clock)
    source.list_script.extend([Unavailable("connection refused")] * 1000)
    source.check_result = (5, [KeyValue(RATE_LIMIT, b"9", 5)])
    watcher = make_watcher(source, clock=clock, start=False,
                           backoff=Backoff(base=100, cap=100, rand=MaxRand()))
    seen_synced: list[bool] = []
    original = watcher.store.publish

    def publish(snapshot, restore=False):
        seen_synced.append(watcher.synced)
        return original(snapshot, restore=restore)

    watcher.store.publish = publish
    watcher.start()
    wait_until(lambda: watcher.failure is not None, timeout=5)
    assert watcher.ensure_fresh()[RATE_LIMIT] == 9
    assert seen_synced[0] is False and watcher.synced
