"""Token-bucket rate limiting per client, in a bounded table.

The rate and the capacity are passed on every call, from the request's snapshot, so
a change in etcd applies to every existing bucket on its next request.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from typing import Callable, NamedTuple


class Decision(NamedTuple):
    allowed: bool
    limit: int  # requests per minute
    remaining: int  # whole tokens left after this request
    reset_seconds: int  # until the bucket is full again
    retry_after: int  # until the next request would be allowed (0 when allowed)


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class RateLimiter:
    """Buckets keyed by client identity, least recently used evicted past `max_clients`.

    An evicted client comes back with a full bucket, so the bound trades a little
    leniency under a flood of distinct clients for memory that cannot grow without end.
    """

    def __init__(self, max_clients: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, client: str, rate_per_minute: int, burst: int, consume: bool = True) -> Decision:
        """Take one token for `client` if it has one (or only look, with consume=False)."""
        now = self._clock()
        per_second = rate_per_minute / 60.0
        capacity = max(0, burst)
        with self._lock:
            bucket = self._buckets.get(client)
            if bucket is None:
                bucket = _Bucket(float(capacity), now)
                if consume:
                    self._buckets[client] = bucket
                    if len(self._buckets) > self.max_clients:
                        self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(client)
                elapsed = max(0.0, now - bucket.updated)
                bucket.tokens = min(float(capacity), bucket.tokens + elapsed * per_second)
                bucket.updated = now
            tokens = bucket.tokens
            allowed = tokens >= 1.0
            if allowed and consume:
                tokens -= 1.0
                bucket.tokens = tokens
        if per_second > 0:
            reset = math.ceil((capacity - tokens) / per_second) if tokens < capacity else 0
            retry = 0 if tokens >= 1.0 or allowed else math.ceil((1.0 - tokens) / per_second)
        else:  # a rate of 0 never refills: tell clients to come back in a minute
            reset = 60 if tokens < capacity else 0
            retry = 0 if allowed else 60
        return Decision(allowed, rate_per_minute, int(math.floor(tokens)), reset, max(retry, 0 if allowed else 1))
