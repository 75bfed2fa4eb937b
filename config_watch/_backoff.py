"""When the watch loop tries again: exponential backoff with full jitter, kept per
endpoint, reset only after a healthy stretch, and a slow fixed pace for errors only
an operator can fix."""

from __future__ import annotations

import random
from dataclasses import dataclass

# First retry after at most 50 ms: most disconnects are a blip (a proxy reset, a
# leader change that settles in one or two election timeouts), and a quick first try
# catches them. Doubling to a 5 s cap keeps a dead etcd from being hammered, while
# an instance still rejoins well inside the 5 s staleness bound's order of magnitude
# (and a request's staleness check wakes the loop as soon as etcd answers again).
BASE_DELAY = 0.05
MAX_DELAY = 5.0
FACTOR = 2.0
# An endpoint's delays start over only once a watch on it has stayed healthy this
# long, not on its first reply: a member that accepts a watch and drops it again and
# again must be backed off like any other failure. client-go's reflector waits 2 min
# (its cap is 30 s), LaunchDarkly's streaming source 60 s (cap 30 s): a few caps' worth
# of good behaviour. Our cap is 5 s, so 30 s is six caps and several progress round
# trips, while a member that recovered for good regains the 50 ms first retry within a
# minute.
RESET_AFTER = 30.0
# Errors only an operator can fix (credentials refused, permission denied, unreadable
# TLS files) are retried at this fixed pace: never a tight loop of refused logins, yet
# a fix is picked up within half a minute.
PERMANENT_DELAY = 30.0


@dataclass
class _Schedule:
    """One endpoint's failures in a row, and when it may be tried again."""

    failures: int = 0
    retry_at: float = float("-inf")


class Backoff:
    """Delays of `random(0, min(cap, base * factor**n))` ("full jitter"), one series per
    endpoint, as gRPC keeps one per subchannel.

    The n-th failure in a row of an endpoint draws its delay: that endpoint is not
    tried again before the delay has passed since the failure. The loop moves on to the
    next endpoint at once and waits only what is left of *that* endpoint's delay, so a
    fault on one member does not hold up a healthy one, while each member, flapping or
    dead, is backed off on its own count. With one endpoint this is the plain series.
    A dead cluster still backs off exponentially overall: every member's count grows
    as it fails, and each is tried no more often than its own delays allow.

    Full jitter spreads thousands of instances that lost the same etcd at the same
    moment, so they do not reconnect in lockstep when it returns. Times are the
    caller's clock (`now`); the object holds no clock of its own.
    """

    def __init__(self, base: float = BASE_DELAY, cap: float = MAX_DELAY, factor: float = FACTOR,
                 rand: random.Random | None = None, reset_after: float = RESET_AFTER,
                 permanent_delay: float = PERMANENT_DELAY) -> None:
        self.base, self.cap, self.factor = base, cap, factor
        self.reset_after = reset_after
        self.permanent_delay = permanent_delay
        self._rand = rand or random.Random()
        # Keyed by endpoint (None before a source exists): the configured endpoints only.
        self._schedules: dict[str | None, _Schedule] = {}

    def failed(self, endpoint: str | None, now: float) -> float:
        """Count a failure of `endpoint` at `now`; returns the delay it drew."""
        schedule = self._schedules.setdefault(endpoint, _Schedule())
        # The exponent stops growing long after the cap is reached, so it never overflows.
        ceiling = min(self.cap, self.base * self.factor ** min(schedule.failures, 64))
        schedule.failures += 1
        delay = self._rand.uniform(0, ceiling)
        schedule.retry_at = now + delay
        return delay

    def wait(self, endpoint: str | None, now: float) -> float:
        """Seconds from `now` until `endpoint` may be tried: what is left of the delay
        its last failure drew (none for an endpoint that has not failed)."""
        schedule = self._schedules.get(endpoint)
        return max(0.0, schedule.retry_at - now) if schedule else 0.0

    def healthy_for(self, endpoint: str | None, seconds: float) -> None:
        """A watch on `endpoint` has been healthy `seconds`: its series starts over once
        that is long enough. Other endpoints keep theirs."""
        if seconds >= self.reset_after:
            self._schedules.pop(endpoint, None)

    def failures(self, endpoint: str | None) -> int:
        """`endpoint`'s failures since its last healthy stretch."""
        schedule = self._schedules.get(endpoint)
        return schedule.failures if schedule else 0
