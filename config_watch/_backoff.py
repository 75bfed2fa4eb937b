"""Exponential backoff with full jitter for the watch loop's reconnects."""

from __future__ import annotations

import random

# First retry after at most 50 ms: most disconnects are a blip (a proxy reset, a
# leader change that settles in one or two election timeouts), and a quick first try
# catches them. Doubling to a 5 s cap keeps a dead etcd from being hammered, while
# an instance still rejoins well inside the 5 s staleness bound's order of magnitude.
BASE_DELAY = 0.05
MAX_DELAY = 5.0
FACTOR = 2.0


class Backoff:
    """Delays of `random(0, min(cap, base * factor**n))`: "full jitter".

    Full jitter spreads thousands of instances that lost the same etcd at the same
    moment, so they do not reconnect in lockstep when it returns.
    """

    def __init__(self, base: float = BASE_DELAY, cap: float = MAX_DELAY, factor: float = FACTOR,
                 rand: random.Random | None = None) -> None:
        self.base, self.cap, self.factor = base, cap, factor
        self._rand = rand or random.Random()
        self.attempts = 0

    def next_delay(self) -> float:
        # The exponent stops growing long after the cap is reached, so it never overflows.
        ceiling = min(self.cap, self.base * self.factor ** min(self.attempts, 64))
        self.attempts += 1
        return self._rand.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempts = 0
