"""A circuit breaker whose thresholds are read from the request's snapshot on every call.

Closed: calls go through; `failures` consecutive failures open it. Open: calls are
refused at once until `open-seconds` have passed since it opened. Half-open: at most
`half-open-successes` trial calls are in flight at a time; that many successes close
it, one failure opens it again.

The thresholds are arguments, not state, so an operator's change applies to the breaker
in force on its next call without resetting anything: lowering `failures` below the
count opens it on the next failure, and the open period is measured against the
current `open-seconds` on every call (shortening it shortens the period already
running). State is per worker process, as in Envoy, APISIX and pybreaker.

Why not pybreaker (1.4.1), whose thresholds have setters: its `call()` holds one lock
across the guarded call, so a worker's threads would reach the upstream one at a time;
its half-open state has no bound on trial calls but that lock; its open period runs on
the wall clock (a clock step shortens or stretches it); and the seconds left open are
only in private state. Its open-period and count handling would otherwise have fit.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Callable, NamedTuple

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"

# What a caller refused in half-open (every trial slot taken) is told to wait: a trial
# call takes at most the upstream timeout, usually far less.
HALF_OPEN_RETRY_AFTER = 1


class Thresholds(NamedTuple):
    """The breaker's thresholds from one snapshot (and that snapshot's revision, for logs)."""

    failures: int
    open_seconds: int
    half_open_successes: int
    revision: int = 0


class Permit(NamedTuple):
    """Leave to call the upstream; hand it back to `record`."""

    trial: bool  # a half-open trial call


class Refusal(NamedTuple):
    """The breaker refused the call: the state, and seconds until it may let calls through."""

    state: str
    retry_after: int


class CircuitBreaker:
    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self.state = CLOSED
        self.failures = 0  # consecutive failures (kept while open, reset by a success or on closing)
        self.successes = 0  # trial successes since it went half-open
        self.trials = 0  # trial calls in flight
        self.opened_at = 0.0
        self.transitions = 0

    def _move(self, to: str, thresholds: Thresholds, reason: str) -> None:
        before, self.state = self.state, to
        self.transitions += 1
        if to == OPEN:
            self.opened_at = self._clock()
            self.successes = 0
        elif to == HALF_OPEN:
            self.successes = 0
        elif to == CLOSED:
            self.failures = 0
            self.successes = 0
        level = logging.INFO if to == CLOSED else logging.WARNING
        log.log(level, "circuit breaker %s: %s -> %s (%s)", self.name, before, to, reason, extra={"json_fields": {
            "event": "breaker_transition", "breaker": self.name, "from": before, "to": to, "reason": reason,
            "failures": self.failures, "revision": thresholds.revision,
            "thresholds": {"failures": thresholds.failures, "open_seconds": thresholds.open_seconds,
                           "half_open_successes": thresholds.half_open_successes}}})

    def _open_left(self, thresholds: Thresholds) -> float:
        return self.opened_at + thresholds.open_seconds - self._clock()

    def acquire(self, thresholds: Thresholds) -> Permit | Refusal:
        """A permit to call the upstream now, or why not."""
        with self._lock:
            if self.state == OPEN:
                left = self._open_left(thresholds)
                if left > 0:
                    return Refusal(OPEN, max(1, math.ceil(left)))
                self._move(HALF_OPEN, thresholds, f"{thresholds.open_seconds} s open elapsed")
            if self.state == HALF_OPEN:
                if self.trials >= thresholds.half_open_successes:
                    return Refusal(HALF_OPEN, HALF_OPEN_RETRY_AFTER)
                self.trials += 1
                return Permit(trial=True)
            return Permit(trial=False)

    def record(self, permit: Permit, ok: bool, thresholds: Thresholds) -> None:
        """The outcome of a call made under `permit`: ok, or a failure (error, timeout, 5xx)."""
        with self._lock:
            if permit.trial:
                self.trials -= 1
            if ok:
                if self.state == HALF_OPEN and permit.trial:
                    self.successes += 1
                    if self.successes >= thresholds.half_open_successes:
                        self._move(CLOSED, thresholds, f"{self.successes} trial calls succeeded")
                elif self.state == CLOSED:
                    self.failures = 0
                # A call let through before the breaker opened proves nothing about now.
                return
            self.failures += 1
            if self.state == CLOSED and self.failures >= thresholds.failures:
                self._move(OPEN, thresholds, f"{self.failures} consecutive failures")
            elif self.state == HALF_OPEN:
                self._move(OPEN, thresholds, "a trial call failed")

    def release(self, permit: Permit) -> None:
        """A call made under `permit` ended with no verdict on the upstream."""
        if permit.trial:
            with self._lock:
                self.trials -= 1

    def status(self, thresholds: Thresholds) -> dict:
        with self._lock:
            state = self.state
            left = self._open_left(thresholds) if state == OPEN else 0.0
            if state == OPEN and left <= 0:
                state = HALF_OPEN  # what the next call will find
            return {"state": state, "consecutive_failures": self.failures,
                    "seconds_left_open": round(max(0.0, left), 3), "half_open_successes": self.successes,
                    "trials_in_flight": self.trials, "transitions": self.transitions,
                    "thresholds": {"failures": thresholds.failures, "open_seconds": thresholds.open_seconds,
                                   "half_open_successes": thresholds.half_open_successes}}
