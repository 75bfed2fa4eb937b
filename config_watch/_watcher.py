"""The list-then-watch loop: run → list_and_watch → relist → watch → handle_watch.

One daemon thread keeps the store's snapshot equal to etcd: it lists the watched
prefixes at one revision, publishes that snapshot, then watches from the next
revision. It resumes after a disconnect from the last revision it applied, relists
when that revision was compacted, and never publishes a revision older than the one
in force, except once after a restore, which only a linearizable list can prove.
The request path adds a staleness guard (`ensure_fresh`) for instances whose thread
was frozen by CPU throttling, and wakes a loop that is sleeping out its backoff as
soon as etcd answers again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Protocol, Sequence

from ._backoff import Backoff
from ._errors import EXPIRED, PERMANENT, EtcdError, Failure, Unavailable, failure_of
from ._model import Event, KeyValue, WatchBatch
from ._settings import Settings
from ._snapshot import Rejection, Snapshot, SnapshotStore
from ._status import FAILED, INITIALIZING, INTERRUPTED, VALID, Status

log = logging.getLogger(__name__)

# While the loop is down, a request checks etcd at most this often (per process), so
# a return of etcd is noticed within a second without costing every request a call.
DISCONNECTED_CHECK_INTERVAL = 1.0

# Applies one response's events (whole revisions, in order).
OnEvents = Callable[[Sequence[Event]], None]


class Stream(Protocol):
    """One watch, opened by `Source.watch`. Its reader applies events through the
    `on_events` given there; `get` hands the loop each response's sign of life."""

    def get(self, timeout: float) -> WatchBatch | None: ...
    def request_progress(self, asked_at: float) -> None: ...
    def close(self) -> None: ...  # bounded; no event is applied after it returns


class Source(Protocol):
    """The lister-watcher. `list` and `check` read linearizably (etcd's default)."""

    endpoint: str

    def list(self, timeout: float) -> tuple[int, list[KeyValue]]: ...
    def check(self, timeout: float) -> tuple[int, list[KeyValue]]: ...  # over a new connection
    def watch(self, start_revision: int, on_events: OnEvents) -> Stream: ...
    def rotate(self) -> str: ...
    def close(self) -> None: ...  # drops the connection; the next call opens a new one


class _Restart(Exception):
    """The stream was closed on purpose (a nudge from the request path)."""


class _BelowSnapshot(Exception):
    """A watch response's revision is below the snapshot's: a restore, or a member that
    lags. A watch header proves neither; a linearizable relist tells them apart."""


class ConfigWatcher:
    """Keeps `store.current` in step with etcd from a background thread."""

    def __init__(
        self,
        source_factory: Callable[[], Source],
        prefixes: Sequence[str],
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
        applied_log_level: int = logging.INFO,
    ) -> None:
        self._source_factory = source_factory
        self._source: Source | None = None
        self.prefixes = tuple(prefixes)
        self.settings = settings
        # Each change is logged at this level (the member watch: DEBUG, or a fleet
        # of N processes would log every join and leave N times).
        self._applied_log_level = applied_log_level
        self.store = SnapshotStore(Snapshot.defaults(self.prefixes))
        # The one clock of every freshness figure (progress questions included).
        self._clock = clock
        self._backoff = backoff or Backoff()
        self._stop = threading.Event()
        # Set to cut a backoff sleep short: etcd answered a request's check.
        self._wake = threading.Event()
        self._synced = threading.Event()
        # Synced, or failed in a way only an operator can fix: a cold start waits no longer.
        self._settled = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream: Stream | None = None
        self._need_relist = True
        self._restart_requested = False
        # A watch response below the snapshot's revision asks for a relist to tell a
        # restore from a lagging member; the revision that relist confirmed (a lagging
        # member) is not relisted for again until the stream next fails.
        self._verify_pending = False
        self._confirmed_revision: int | None = None
        # When a staleness check last published a revision the stream had not reached
        # (only another range's writes raised etcd's revision, say): a progress answer to
        # a question sent before then may be below the snapshot and mean nothing more.
        self._ahead_of_stream_at: float | None = None
        # Serialises "read current, build next, publish" between the loop and the guard.
        self._apply_lock = threading.Lock()
        # One request at a time runs the staleness check; the others wait for it.
        self._check_lock = threading.Lock()
        # No check before this time: an etcd outage must not cost every request a
        # check's deadline.
        self._next_check_at = 0.0
        self.started_at = clock()
        self.connected = False
        self._connected_since = 0.0
        self.last_contact: float | None = None
        # The last error of the loop, until it next succeeds.
        self.failure: Failure | None = None
        self.endpoint: str | None = None
        self.counters = {"relists": 0, "reconnects": 0, "rejected": 0, "checks": 0, "check_catchups": 0,
                         "restores": 0, "below_snapshot": 0}

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> "ConfigWatcher":
        self._thread = threading.Thread(target=self.run, name="config-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and close the connection; returns within about `timeout`, and
        no event is applied after it returns."""
        self._stop.set()
        self._wake.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._source is not None:
            self._source.close()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def wait_settled(self, timeout: float) -> bool:
        """Wait until synced, or failed for a reason only an operator can fix."""
        return self._settled.wait(timeout)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    @property
    def last_error(self) -> str | None:
        return self.failure.detail if self.failure else None

    # --- the loop ------------------------------------------------------------------

    def run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            self._restart_requested = False  # a nudge given before this attempt is met by it
            try:
                self.list_and_watch()
            except _Restart:
                # Asked for by the staleness check: a new connection, no backoff.
                self.connected = False
                if self._source is not None:
                    self._source.close()
            except _BelowSnapshot as below:
                self.connected = False
                self.counters["below_snapshot"] += 1  # each costs one confirming relist
                self._need_relist = True
                self._verify_pending = True
                log.warning("watch answered below the snapshot's revision; relisting to tell a restore "
                            "from a lagging member", extra={"json_fields": {"revision": self.store.current.revision,
                                                                            "watch_revision": below.args[0]}})
            except Exception as err:  # each kind is handled; the loop never dies
                try:
                    self._handle_error(err)
                except Exception:
                    log.exception("watch loop error handler failed; retrying in 1 s")
                    self._stop.wait(1.0)

    def list_and_watch(self) -> None:
        if self._source is None:
            self._source = self._source_factory()
            self.endpoint = self._source.endpoint
        if self._need_relist:
            self.relist()
        self.watch()

    def relist(self) -> None:
        asked_at = self._clock()
        revision, kvs = self._source.list(self.settings.request_timeout)
        self.counters["relists"] += 1
        with self._apply_lock:
            current = self.store.current
            # A linearizable read never goes back, so a lower revision means the store
            # was restored from a backup: its state replaces ours, from scratch.
            restored = current.synced and revision < current.revision
            base = Snapshot.defaults(self.prefixes) if restored else current
            snapshot, rejections = base.relisted(revision, kvs)
            self._log_rejections(rejections)
            published = self.store.publish(snapshot, restore=restored)
        self._need_relist = False
        if self._verify_pending and not restored:
            self._confirmed_revision = self.store.current.revision
        self._verify_pending = False
        self._contact(asked_at)
        self._synced.set()
        self._settled.set()
        self.failure = None
        if restored:
            self.counters["restores"] += 1
            log.error(
                "etcd's revision went back from %d to %d: the store was restored from a backup; "
                "published the restored state",
                current.revision, revision,
                extra={"json_fields": {"revision": revision, "previous_revision": current.revision,
                                       "keys": len(kvs), "endpoint": self.endpoint}},
            )
        log.info(
            "listed %s at revision %d",
            ",".join(self.prefixes),
            revision,
            extra={"json_fields": {"revision": revision, "keys": len(kvs), "published": published,
                                   "endpoint": self.endpoint}},
        )

    def next_watch_revision(self) -> int:
        """Where the next watch starts: just after the revision in force."""
        return self.store.current.revision + 1

    def watch(self) -> None:
        stream = self._source.watch(self.next_watch_revision(), self.apply)
        self._stream = stream
        try:
            if self._stop.is_set():
                return
            if self._restart_requested:  # asked for while this stream was being opened
                raise _Restart()
            self.handle_watch(stream)
        finally:
            self._stream = None
            stream.close()

    def handle_watch(self, stream: Stream) -> None:
        # A progress request every third of the dead-stream bound (or half the
        # staleness bound, if shorter): its answers keep a silent stream talking well
        # inside the one, and they are the watch's only proof of being current, due
        # well inside the other. Events prove nothing about the present: read after a
        # freeze, they may be old.
        tick = min(self.settings.dead_stream / 3, self.settings.staleness / 2)
        last_response = self._clock()
        asked_at: float | None = None
        while not self._stop.is_set():
            if asked_at is None or self._clock() - asked_at >= tick:
                asked_at = self._clock()
                stream.request_progress(asked_at)
            try:
                batch = stream.get(timeout=tick)
            except EtcdError:
                if self._restart_requested or self._stop.is_set():
                    raise _Restart() from None
                raise
            now = self._clock()
            if batch is None:
                silent = now - last_response
                if silent >= self.settings.dead_stream:
                    raise Unavailable(f"watch silent for {silent:.1f}s (stalled or half-open connection)")
                continue
            last_response = now
            revision = self.store.current.revision
            below = batch.header_revision < revision
            if below and self._confirmed_revision != revision and not self._asked_before_check(batch):
                if self._restart_requested:
                    # A check caught up past this stream, which is being replaced: a
                    # response it still had on its way says nothing of a restore.
                    raise _Restart()
                raise _BelowSnapshot(batch.header_revision)
            self._mark_connected(now)
            # Below the snapshot (a member the relist showed to lag): alive, but no proof.
            if batch.asked_at and not below and (batch.complete or batch.header_revision <= revision):
                # Current as of the question: etcd was at most at the answer's revision
                # then, and everything up to it is in the snapshot (through the stream,
                # or through a list or check that reached that far).
                self._contact(min(now, batch.asked_at))

    def _asked_before_check(self, batch: WatchBatch) -> bool:
        """`batch` answers a progress question sent before a check moved the snapshot
        ahead of the stream: below it by the check's doing, not a restore's or a lagging
        member's. A question sent after the check is answered at the check's revision or
        above by a member that keeps up, so the next answer still tells."""
        ahead = self._ahead_of_stream_at
        return bool(batch.asked_at) and ahead is not None and batch.asked_at <= ahead

    def _mark_connected(self, now: float) -> None:
        if not self.connected:
            log.info("watching from revision %d", self.store.current.revision + 1,
                     extra={"json_fields": {"endpoint": self.endpoint}})
            self._connected_since = now
            self.connected = True
            self.failure = None
        self._backoff.healthy_for(self.endpoint, now - self._connected_since)

    def apply(self, events: Sequence[Event]) -> None:
        """Apply one response's events (on the stream's reader thread): one snapshot."""
        with self._apply_lock:
            current = self.store.current
            snapshot, rejections = current.apply(events)
            self._log_rejections(rejections)
            if snapshot is not current:
                self.store.publish(snapshot)
        if snapshot is not current:
            log.log(
                self._applied_log_level,
                "applied revision %d",
                snapshot.revision,
                extra={"json_fields": {"revision": snapshot.revision,
                                       "changes": [{"key": e.key, "kind": e.kind} for e in events
                                                   if snapshot.in_scope(e.key)]}},
            )

    def _handle_error(self, err: BaseException) -> None:
        """Go on after `err` by what it means: relist now, back off and try the next
        endpoint, or (only an operator can fix it) try again slowly."""
        self.connected = False
        if self._stop.is_set():
            return
        failure = failure_of(err)
        self._confirmed_revision = None
        if failure.kind == EXPIRED:
            log.warning("watch revision compacted; listing again", extra={"json_fields": {"error": str(err)}})
            self._need_relist = True
            return
        self.failure = failure
        self.counters["reconnects"] += 1
        fields = {"error": failure.detail, "reason": failure.reason, "endpoint": self.endpoint,
                  "revision": self.store.current.revision}
        if failure.kind == PERMANENT:
            delay = self._backoff.permanent_delay
            log.error("watch loop stopped by %s; retrying in %.0f s (only an operator can fix this)",
                      failure.reason, delay,
                      extra={"json_fields": {**fields, "retry_in_seconds": delay}})
            self._settled.set()  # after the log: a request answered 503 finds the reason logged
        else:
            # The failed endpoint's count grows; the next one is tried once its own
            # delay allows (at once if it has not failed lately): see Backoff.
            now = self._clock()
            failed = self.endpoint
            self._backoff.failed(failed, now)
            if self._source is not None:
                self.endpoint = self._source.rotate()
            delay = self._backoff.wait(self.endpoint, now)
            fields.update(retry_in_seconds=round(delay, 3), attempt=self._backoff.failures(failed),
                          next_endpoint=self.endpoint)
            if isinstance(err, EtcdError):
                log.warning("etcd unavailable; retrying", extra={"json_fields": fields})
            else:  # unexpected: keep the stack trace, keep going
                log.error("watch loop error; retrying", exc_info=err, extra={"json_fields": fields})
        self._wake.wait(delay)

    # --- request path --------------------------------------------------------------

    def _contact(self, at: float) -> None:
        if self.last_contact is None or at > self.last_contact:
            self.last_contact = at

    def staleness(self) -> float:
        """Seconds since the snapshot was last proven current: the sending of the last
        answered progress request, list or check (since start if none yet)."""
        last = self.last_contact if self.last_contact is not None else self.started_at
        return max(0.0, self._clock() - last)

    def _check_due(self) -> bool:
        if self._clock() < self._next_check_at:
            return False
        # Stale; or the loop is down for a passing reason, and a check may find etcd back
        # before its backoff ends (a refused password will not mend itself that fast).
        failure = self.failure
        down = failure is not None and failure.kind != PERMANENT and not self.connected
        return down or self.staleness() > self.settings.staleness

    def ensure_fresh(self) -> Snapshot:
        """The snapshot to serve, checked against etcd first if it may be stale.

        Under normal operation the watch hears from etcd every few seconds and this is
        one comparison. After a freeze (CPU throttled between requests) or a silent
        drop, one request asks etcd directly with a short deadline and catches up.
        """
        if not self._check_due():
            return self.store.current
        if not self._check_lock.acquire(timeout=self.settings.check_timeout):
            return self.store.current
        try:
            if self._check_due():
                answered = self.check_now()
                if not answered and self.staleness() > self.settings.staleness:
                    self._next_check_at = self._clock() + min(self.settings.staleness, DISCONNECTED_CHECK_INTERVAL)
                elif not self.connected:
                    self._next_check_at = self._clock() + DISCONNECTED_CHECK_INTERVAL
        finally:
            self._check_lock.release()
        return self.store.current

    def check_now(self) -> bool:
        """Read the watched range over a fresh connection; catch up if etcd is ahead.
        Returns whether etcd answered with a revision the snapshot can stand on."""
        self.counters["checks"] += 1
        asked_at = self._clock()  # a reply proves etcd's state as of the question, no later
        source = self._source
        if source is None:
            return False
        try:
            revision, kvs = source.check(self.settings.check_timeout)
        except EtcdError as err:
            log.warning("staleness check failed; serving the last good snapshot",
                        extra={"json_fields": {"error": str(err), "revision": self.store.current.revision}})
            return False
        published = missed = False
        with self._apply_lock:
            current = self.store.current
            restored = current.synced and revision < current.revision
            if not restored and (revision > current.revision or not current.synced):
                snapshot, rejections = current.relisted(revision, kvs)
                self._log_rejections(rejections)
                missed = not snapshot.same_config(current)  # changes the stream did not deliver
                # Both before the loop can see the snapshot: from then on, a response the
                # stream had on its way may be below it (see handle_watch).
                self._ahead_of_stream_at = self._clock()
                if missed:
                    self._restart_requested = True  # the stream is replaced below
                published = self.store.publish(snapshot)
        if restored:
            # Not proof of freshness: the snapshot is of a history etcd no longer has.
            # The loop relists (and publishes the restored state) at once.
            log.error("staleness check found etcd at revision %d, below the snapshot's %d: restored "
                      "from a backup? relisting", revision, current.revision,
                      extra={"json_fields": {"revision": revision, "previous_revision": current.revision}})
            self._need_relist = True
            self.restart_stream()
            self._wake.set()
            return False
        self._contact(asked_at)
        if published:
            self._synced.set()
            self._settled.set()
        if not self.connected:
            self._wake.set()  # etcd answers: the loop need not sleep out its backoff
        if published and missed:
            self.counters["check_catchups"] += 1
            log.warning("staleness check found changes the watch had not delivered; caught up",
                        extra={"json_fields": {"from_revision": current.revision, "revision": revision}})
            self.restart_stream()
        return True

    def restart_stream(self) -> None:
        """Drop the watch connection; the loop re-watches at once from the revision in force."""
        self._restart_requested = True
        stream = self._stream
        if stream is not None:
            stream.close()

    def _log_rejections(self, rejections: list[Rejection]) -> None:
        for r in rejections:
            self.counters["rejected"] += 1
            log.error(
                "rejected value for %s at revision %d: %s; last good value stays",
                r.key, r.revision, r.reason,
                extra={"json_fields": {"event": "config_rejected", **r.to_json()}},
            )

    def status(self) -> Status:
        snapshot = self.store.current
        staleness = self.staleness()
        failure = self.failure
        if failure is not None and failure.kind == PERMANENT:
            state = FAILED
        elif self.connected or (self.synced and failure is None):
            # Watching; or opening the watch right after a list (at a cold start, while
            # gRPC loads): nothing is down then, the snapshot was just listed.
            state = VALID
        else:
            state = INTERRUPTED if self.synced else INITIALIZING
        return Status(
            state=state,
            revision=snapshot.revision,
            synced=self.synced,
            connected=self.connected,
            staleness_seconds=staleness,
            stale=staleness > self.settings.staleness,
            error_kind=failure.kind if failure else None,
            reason=failure.reason if failure else None,
            error=failure.detail if failure else None,
            endpoint=self.endpoint,
            etcd_version=getattr(self._source, "server_version", None),
            rejected=tuple(snapshot.rejected.values()),
            counters=dict(self.counters),
        )
