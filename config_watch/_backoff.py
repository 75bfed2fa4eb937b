"""When the watch loop tries again: exponential backoff with full jitter, reset only
after a healthy stretch, and a slow fixed pace for errors only an operator can fix."""

from __future__ import annotations

import random

# First retry after at most 50 ms: most disconnects are a blip (a proxy reset, a
# leader change that settles in one or two election timeouts), and a quick first try
# catches them. Doubling to a 5 s cap keeps a dead etcd from being hammered, while
# an instance still rejoins well inside the 5 s staleness bound's order of magnitude
# (and a request's staleness check wakes the loop as soon as etcd answers again).
BASE_DELAY = 0.05
MAX_DELAY = 5.0
FACTOR = 2.0
# The delays start over only once a watch has stayed healthy this long, not on its
# first reply: a member that accepts a watch and drops it again and again must be
# backed off like any other failure. client-go's reflector waits 2 min (its cap is
# 30 s), LaunchDarkly's streaming source 60 s (cap 30 s): a few caps' worth of good
# behaviour. Our cap is 5 s, so 30 s is six caps and several progress round trips,
# while a member that recovered for good regains the 50 ms first retry within a minute.
RESET_AFTER = 30.0
# Errors only an operator can fix (credentials refused, permission denied, unreadable
# TLS files) are retried at this fixed pace: never a tight loop of refused logins, yet
# a fix is picked up within half a minute.
PERMANENT_DELAY = 30.0


class Backoff:
    """Delays of `random(0, min(cap, base * factor**n))`: "full jitter".

    Full jitter spreads thousands of instances that lost the same etcd at the same
    moment, so they do not reconnect in lockstep when it returns.
    """

    def __init__(self, base: float = BASE_DELAY, cap: float = MAX_DELAY, factor: float = FACTOR,
                 rand: random.Random | None = None, reset_after: float = RESET_AFTER,
                 permanent_delay: float = PERMANENT_DELAY) -> None:
        self.base, self.cap, self.factor = base, cap, factor
        self.reset_after = reset_after
        self.permanent_delay = permanent_delay
        self._rand = rand or random.Random()
        self.attempts = 0

    def next_delay(self) -> float:
        # The exponent stops growing long after the cap is reached, so it never overflows.
        ceiling = min(self.cap, self.base * self.factor ** min(self.attempts, 64))
        self.attempts += 1
        return self._rand.uniform(0, ceiling)

    def healthy_for(self, seconds: float) -> None:
        """The current connection has been healthy `seconds`: start over once it is long enough."""
        if seconds >= self.reset_after:
            self.attempts = 0

    def reset(self) -> None:
        self.attempts = 0
