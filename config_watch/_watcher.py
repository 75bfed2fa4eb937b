"""The list-then-watch loop: Run → list_and_watch → relist → watch → handle_watch.

One daemon thread keeps the store's snapshot equal to etcd: it lists the watched
prefixes at one revision, publishes that snapshot, then watches from the next
revision. It resumes after a disconnect from the last revision it applied, relists
when that revision was compacted, and never publishes a revision older than the one
in force. The request path adds a staleness guard (`ensure_fresh`) for instances
whose thread was frozen by CPU throttling.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Protocol, Sequence

from ._backoff import Backoff
from ._errors import AuthError, Compacted, EtcdError, Unavailable
from ._model import Event, KeyValue, WatchBatch
from ._settings import Settings
from ._snapshot import Rejection, Snapshot, SnapshotStore

log = logging.getLogger(__name__)


class Stream(Protocol):
    def get(self, timeout: float) -> WatchBatch | None: ...
    def request_progress(self) -> None: ...
    def close(self) -> None: ...


class Source(Protocol):
    endpoint: str

    def list(self, timeout: float) -> tuple[int, list[KeyValue]]: ...
    def watch(self, start_revision: int) -> Stream: ...
    def check(self, timeout: float) -> tuple[int, list[KeyValue]]: ...
    def rotate(self) -> str: ...
    def reconnect(self) -> None: ...
    def close(self) -> None: ...


def is_expired(err: BaseException) -> bool:
    """The resume revision is gone: list again instead of watching."""
    return isinstance(err, Compacted)


class _Restart(Exception):
    """The stream was closed on purpose (a nudge from the request path)."""


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
    ) -> None:
        self._source_factory = source_factory
        self._source: Source | None = None
        self.prefixes = tuple(prefixes)
        self.settings = settings
        self.store = SnapshotStore(Snapshot.defaults(self.prefixes))
        self._clock = clock
        self._backoff = backoff or Backoff()
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream: Stream | None = None
        self._need_relist = True
        self._restart_requested = False
        # Serialises "read current, build next, publish" between the loop and the guard.
        self._apply_lock = threading.Lock()
        # One request at a time runs the staleness check; the others wait for it.
        self._check_lock = threading.Lock()
        # After a failed check, none before this time: an etcd outage must not cost
        # every request a check's deadline.
        self._next_check_at = 0.0
        self.started_at = clock()
        self.connected = False
        self.last_contact: float | None = None
        self.last_error: str | None = None
        self.endpoint: str | None = None
        self.counters = {"relists": 0, "reconnects": 0, "rejected": 0, "checks": 0, "check_catchups": 0}

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> "ConfigWatcher":
        self._thread = threading.Thread(target=self.run, name="config-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and close the connection; returns within about `timeout`."""
        self._stop.set()
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

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    # --- the loop ------------------------------------------------------------------

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.list_and_watch()
            except _Restart:
                # Asked for by the staleness check: a new connection, no backoff.
                self._restart_requested = False
                self.connected = False
                try:
                    if self._source is not None:
                        self._source.reconnect()
                except Exception:
                    log.exception("reconnect after a requested restart failed; retrying in 1 s")
                    self._stop.wait(1.0)
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
        self._contact(asked_at)
        self.counters["relists"] += 1
        with self._apply_lock:
            current = self.store.current
            snapshot, rejections = current.relisted(revision, kvs)
            self._log_rejections(rejections)
            published = self.store.publish(snapshot)
        self._need_relist = False
        self._synced.set()
        log.info(
            "listed %s at revision %d",
            ",".join(self.prefixes),
            revision,
            extra={"json_fields": {"revision": revision, "keys": len(kvs), "published": published,
                                   "endpoint": self.endpoint}},
        )

    def relist_revision(self) -> int:
        """Where the next watch starts: just after the revision in force."""
        return self.store.current.revision + 1

    def watch(self) -> None:
        start = self.relist_revision()
        stream = self._source.watch(start)
        if hasattr(stream, "on_events"):
            # Applied on the stream's own reader thread (looked up per call, so a
            # wrapper installed on the instance sees every event).
            stream.on_events = lambda events: self.apply(events)
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
                stream.request_progress()
                asked_at = self._clock()
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
            if not self.connected:
                log.info("watching from revision %d", self.store.current.revision + 1,
                         extra={"json_fields": {"endpoint": self.endpoint}})
            self.connected = True
            self.last_error = None
            self._backoff.reset()
            if batch.asked_at and (batch.complete or batch.header_revision <= self.store.current.revision):
                # Current as of the question: etcd was at most at the answer's revision
                # then, and everything up to it is in the snapshot (through the stream,
                # or through a list or check that reached that far).
                self._contact(min(now, batch.asked_at))
            if batch.events:
                self.apply(batch.events)

    def apply(self, events: Sequence[Event]) -> None:
        with self._apply_lock:
            current = self.store.current
            snapshot, rejections = current.apply(events)
            self._log_rejections(rejections)
            if snapshot is not current:
                self.store.publish(snapshot)
        if snapshot is not current:
            log.info(
                "applied revision %d",
                snapshot.revision,
                extra={"json_fields": {"revision": snapshot.revision,
                                       "changes": [{"key": e.key, "kind": e.kind} for e in events
                                                   if snapshot.in_scope(e.key)]}},
            )

    def _handle_error(self, err: BaseException) -> None:
        """Decide how the loop goes on after `err`: relist now, or back off and re-watch."""
        self.connected = False
        if self._stop.is_set():
            return
        if is_expired(err):
            log.warning("watch revision compacted; listing again", extra={"json_fields": {"error": str(err)}})
            self._need_relist = True
            return
        delay = self._backoff.next_delay()
        self.counters["reconnects"] += 1
        if isinstance(err, (Unavailable, AuthError)):
            self.last_error = f"{type(err).__name__}: {err}"
            log.warning(
                "etcd unavailable; retrying",
                extra={"json_fields": {"error": self.last_error, "endpoint": self.endpoint,
                                       "retry_in_seconds": round(delay, 3), "attempt": self._backoff.attempts}},
            )
        else:  # unexpected: keep the stack trace, keep going
            self.last_error = f"{type(err).__name__}: {err}"
            log.exception("watch loop error; retrying", extra={"json_fields": {"retry_in_seconds": round(delay, 3)}})
        if self._source is not None:
            self.endpoint = self._source.rotate()
        self._stop.wait(delay)

    # --- request path --------------------------------------------------------------

    def _contact(self, at: float | None = None) -> None:
        at = self._clock() if at is None else at
        if self.last_contact is None or at > self.last_contact:
            self.last_contact = at

    def staleness(self) -> float:
        """Seconds since the snapshot was last proven current: the sending of the last
        answered progress request, list or check (since start if none yet)."""
        last = self.last_contact if self.last_contact is not None else self.started_at
        return max(0.0, self._clock() - last)

    def ensure_fresh(self) -> Snapshot:
        """The snapshot to serve, checked against etcd first if it may be stale.

        Under normal operation the watch hears from etcd every few seconds and this is
        one comparison. After a freeze (CPU throttled between requests) or a silent
        drop, one request asks etcd directly with a short deadline and catches up.
        """
        if self.staleness() <= self.settings.staleness or self._clock() < self._next_check_at:
            return self.store.current
        if not self._check_lock.acquire(timeout=self.settings.check_timeout):
            return self.store.current
        try:
            if self.staleness() > self.settings.staleness and self._clock() >= self._next_check_at:
                if not self.check_now() and self.staleness() > self.settings.staleness:
                    self._next_check_at = self._clock() + min(self.settings.staleness, 1.0)
        finally:
            self._check_lock.release()
        return self.store.current

    def check_now(self) -> bool:
        """Read the watched range over a fresh connection; catch up if etcd is ahead."""
        self.counters["checks"] += 1
        asked_at = self._clock()  # a reply proves etcd's state as of the question, no later
        try:
            if self._source is None:
                return False
            revision, kvs = self._source.check(self.settings.check_timeout)
        except EtcdError as err:
            log.warning("staleness check failed; serving the last good snapshot",
                        extra={"json_fields": {"error": str(err), "revision": self.store.current.revision}})
            return False
        self._contact(asked_at)
        self._synced.set()
        with self._apply_lock:
            current = self.store.current
            if revision <= current.revision:
                return False
            snapshot, rejections = current.relisted(revision, kvs)
            self._log_rejections(rejections)
            self.store.publish(snapshot)
        if not snapshot.same_config(current):
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

    def status(self) -> dict:
        snapshot = self.store.current
        staleness = self.staleness()
        return {
            "revision": snapshot.revision,
            "synced": self.synced,
            "connected": self.connected,
            "staleness_seconds": round(staleness, 3),
            "stale": staleness > self.settings.staleness,
            "endpoint": self.endpoint,
            "etcd_version": getattr(self._source, "server_version", None),
            "last_error": self.last_error,
            "rejected": [r.to_json() for r in snapshot.rejected.values()],
            "counters": dict(self.counters),
        }
