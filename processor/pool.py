"""A thread pool whose size can change while it runs.

`concurrent.futures.ThreadPoolExecutor` fixes its size at creation, and the processor's
size follows an etcd key live. Here `resize(n)` starts the missing workers at once;
surplus workers leave only between jobs, so a shrink never interrupts or loses a job.
The queue is bounded: a job that does not fit is refused (`QueueFull`), never held
without limit.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, NamedTuple

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """Every worker is busy and the queue holds its limit of jobs."""


class PoolClosed(RuntimeError):
    """The pool is draining for shutdown and takes no new job."""


class RunInfo(NamedTuple):
    """What a job learns about the pool it runs in, as it starts."""

    threads: int  # the pool's size (its target) when the job started
    revision: int  # the configuration revision that size came from
    queued_seconds: float


class _Job(NamedTuple):
    fn: Callable[[RunInfo], Any]
    future: Future
    enqueued_at: float


class ResizablePool:
    """Workers that run submitted jobs in order; their number follows `resize()`."""

    def __init__(self, threads: int, queue_limit: int, name: str = "job") -> None:
        if threads < 1 or queue_limit < 1:
            raise ValueError("a pool needs at least one thread and room for one queued job")
        self.queue_limit = queue_limit
        self._name = name
        self._lock = threading.Lock()
        # Signalled when a job is queued, the size drops, or the pool closes.
        self._work = threading.Condition(self._lock)
        # Signalled when a worker leaves or a job ends (shutdown and tests wait on it).
        self._idle = threading.Condition(self._lock)
        self._queue: collections.deque[_Job] = collections.deque()
        self._target = threads
        self._revision = 0
        self._workers = 0  # started (or being started) and not yet gone
        self._live = 0  # running their loop: what `stats()` reports as workers
        self._busy = 0
        self._done = 0
        self._failed = 0
        self._started = 0  # workers ever started; names them
        self._closed = False
        # Wall-clock time (time.time(), comparable across processes on one machine) when
        # the live workers last came to equal the size: what "resized" means to a caller.
        self._settled_at = time.time()
        with self._lock:
            names = self._reserve()
        self._start(names)

    # --- size ---------------------------------------------------------------------

    def resize(self, threads: int, revision: int = 0) -> int:
        """Set the number of workers to `threads`; returns the size before.

        Growing starts the new workers before returning (each is running when its
        start returns). Shrinking wakes idle workers so the surplus leaves at once;
        busy ones leave after their job.
        """
        if threads < 1:
            raise ValueError(f"a pool needs at least one thread, not {threads}")
        with self._lock:
            before, self._target, self._revision = self._target, threads, revision
            if self._closed:
                return before
            names = self._reserve()
            if threads < before:
                self._work.notify_all()
            self._settle()
        self._start(names)
        return before

    def _settle(self) -> None:
        # Called with the lock held, after the workers or the size changed.
        if self._live == self._workers == self._target:
            self._settled_at = time.time()

    def _reserve(self) -> list[str]:
        # Called with the lock held: count the workers to start, name them.
        names = []
        while self._workers < self._target:
            self._workers += 1
            self._started += 1
            names.append(f"{self._name}-{self._started}")
        return names

    def _start(self, names: list[str]) -> None:
        # Outside the lock: a new worker takes it at once, and must not wait for the
        # starter to finish starting the others.
        for i, name in enumerate(names):
            try:
                threading.Thread(target=self._worker, name=name, daemon=True).start()
            except RuntimeError:  # "can't start new thread": run with the workers there are
                with self._lock:
                    self._workers -= len(names) - i
                log.exception("could not start pool workers; running with fewer",
                              extra={"json_fields": {"missing": len(names) - i, "threads": self._target}})
                return

    # --- jobs ---------------------------------------------------------------------

    def submit(self, fn: Callable[[RunInfo], Any]) -> Future:
        """Queue `fn(RunInfo)`; its Future holds the result or the exception it raised."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise PoolClosed("the pool is draining")
            # A free worker takes a job at once: the limit counts only jobs that wait.
            free = max(0, min(self._workers, self._target) - self._busy)
            if len(self._queue) >= self.queue_limit + free:
                raise QueueFull(f"{len(self._queue)} jobs queued, limit {self.queue_limit}")
            self._queue.append(_Job(fn, future, time.monotonic()))
            self._work.notify()
        return future

    def _worker(self) -> None:
        with self._lock:
            self._live += 1
            self._settle()
        while True:
            with self._lock:
                while True:
                    if self._workers > self._target:
                        return self._leave()
                    if self._queue:
                        job = self._queue.popleft()
                        self._busy += 1
                        info = RunInfo(self._target, self._revision, time.monotonic() - job.enqueued_at)
                        break
                    if self._closed:
                        return self._leave()
                    self._work.wait()
            failed = False
            if job.future.set_running_or_notify_cancel():
                try:
                    job.future.set_result(job.fn(info))
                except BaseException as exc:  # the job's failure is its caller's answer
                    failed = True
                    job.future.set_exception(exc)
                    log.exception("job failed", extra={"json_fields": {"error": f"{type(exc).__name__}: {exc}"}})
            with self._lock:
                self._busy -= 1
                if failed:
                    self._failed += 1
                else:
                    self._done += 1
                self._idle.notify_all()

    def _leave(self) -> None:
        # Called with the lock held; the worker's thread ends after this.
        self._workers -= 1
        self._live -= 1
        self._settle()
        self._idle.notify_all()

    # --- state and shutdown -------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """`threads` is the size the pool follows; `workers` the threads alive now
        (above `threads` while a shrink waits for busy workers to finish);
        `settled_at` the wall-clock time the two last became equal."""
        with self._lock:
            return {"threads": self._target, "workers": self._live, "busy": self._busy,
                    "queued": len(self._queue), "done": self._done, "failed": self._failed,
                    "queue_limit": self.queue_limit, "revision": self._revision,
                    "settled_at": round(self._settled_at, 6)}

    @property
    def threads(self) -> int:
        return self._target

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no job is queued or running; whether that happened in time."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._queue and not self._busy, timeout)

    def shutdown(self, timeout: float) -> bool:
        """Take no new job, finish the queued and running ones, let every worker go.

        Returns whether all of it happened within `timeout` seconds.
        """
        with self._lock:
            self._closed = True
            self._work.notify_all()
            return self._idle.wait_for(lambda: self._workers == 0 and self._live == 0, timeout)

    @property
    def closed(self) -> bool:
        return self._closed
