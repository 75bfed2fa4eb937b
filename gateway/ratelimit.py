"""Token-bucket rate limiting per client, per rule, in a bounded table, shared by a fleet.

The rate and the capacity are passed on every call, from the request's snapshot, so
a change in etcd applies to every existing bucket on its next request.

In `cluster` scope the configured limit binds the whole fleet: each of the N live
instances (membership records in etcd, see `config_watch.membership`; the worker
processes of an instance share one bucket table, see `buckets`) holds 1/N of it, so
no request pays a round trip to a shared counter. Dividing both rate and burst by N
wastes tokens: a client's requests land on instances at random, so an instance's
small bucket often fills and then idles while the client is refused elsewhere (a
client at 3x the limit over four instances got 86 % of what it was allowed). Each
instance's bucket therefore holds one token more than its share (`SLACK_TOKENS`):
the ready token waits for the next request instead of spilling, and admitted traffic
comes within 1 % of the limit over ten minutes (92 % of it in a client's first 30 s
over four instances; bench/ratelimit.py has the figures of every scheme tried). A
new bucket starts at its share plus a random part of a token (randomized rounding:
whole tokens are what a bucket admits, and a share of 2.5 would otherwise admit 2
per instance), so a new client's first burst across the fleet is, on average,
exactly the configured one.

In `process` scope each process keeps buckets of its own, holding the whole limit.
"""

from __future__ import annotations

from math import ceil, floor
import random
import threading
import time
from typing import Callable, Mapping, NamedTuple

from config_watch import RATE_LIMIT, RATE_LIMIT_BURST, RATE_LIMIT_SCOPE, RATE_LIMITS, RateRule, Snapshot
from config_watch import Membership
from config_watch._pid import current_pid

from .buckets import BucketTable, Slot, key_tag, partition_tag

# Tokens a process's bucket may hold beyond its share of the burst when the limit is
# split between processes: the figure that closes the gap that random spread leaves.
SLACK_TOKENS = 1.0
# Bucket places a process remembers (its busiest clients'), so a request finds its slot
# without unpacking a set: ~1.6 MB at most, beside the table's fixed memory.
PLACES = 4096
# The name a request's limit has when no rule matches its path.
DEFAULT_RULE = ""


class Decision(NamedTuple):
    allowed: bool
    limit: int  # requests per minute, fleet-wide as configured
    remaining: int  # whole tokens left after this request, in the configured (fleet) burst's terms
    reset_seconds: int  # until the bucket is full again
    retry_after: int  # until the next request would be allowed (0 when allowed)


_new_tuple = tuple.__new__


class Share(NamedTuple):
    """One process's part of a limit."""

    per_second: float  # refill
    capacity: float  # most tokens held
    initial: float  # tokens of a new bucket


def process_share(rate_per_minute: int, burst: int, members: int) -> Share:
    """The limit split between `members` processes (1: the whole limit).

    Rate / N, burst / N plus `SLACK_TOKENS` (see the module's docstring); never less
    than one token, or a client could never be served at all.
    """
    burst = max(0, burst)
    if members <= 1:
        return Share(rate_per_minute / 60.0, float(burst), float(burst))
    share = burst / members
    return Share(rate_per_minute / 60.0 / members, max(1.0, share) + SLACK_TOKENS, max(1.0, share))


class YieldingLock:
    """A mutex whose waiters give the interpreter lock back instead of sleeping on it.

    Eight request threads asking for one client's bucket form a convoy on a plain
    `threading.Lock`: a thread made to drop the GIL inside the short critical section
    leaves the others asleep on the lock, each woken in turn only to wait for the GIL
    again. Measured in process with eight threads, the gateway's CPU per request was
    410-470 µs with a plain lock and 320-345 µs with this one (the bare handler's:
    250-275 µs). A waiter tries `SPINS` times, yielding the GIL (`time.sleep(0)`)
    between tries, so the holder runs and finishes; past that it blocks as usual (the
    holder may itself be waiting on another process's record lock).
    """

    SPINS = 100
    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        lock = self._lock
        if lock.acquire(False):
            return
        for _ in range(self.SPINS):
            time.sleep(0)
            if lock.acquire(False):
                return
        lock.acquire()

    def __exit__(self, *exc) -> None:
        self._lock.release()


class RateLimiter:
    """Buckets keyed by (rule, client identity) in a `BucketTable`: at most `max_clients`,
    the least recently used replaced first (within the key's set of eight).

    An evicted client comes back with a full bucket, so the bound trades a little
    leniency under a flood of distinct clients for memory fixed at the start. The
    gateway passes the table it made at import, shared by the workers of its instance;
    without one, the limiter makes its own.
    """

    def __init__(self, max_clients: int = 100_000, clock: Callable[[], float] = time.monotonic,
                 share: Callable[[int, int, int], Share] = process_share,
                 rounding: Callable[[], float] = random.random, table: BucketTable | None = None) -> None:
        self.table = table if table is not None else BucketTable(max_clients)
        self.table.attach()
        self.max_clients = self.table.max_entries
        self._clock = clock
        self._share = share
        self._rounding = rounding  # uniform in [0, 1): the random part of a split bucket's first fill
        self._last_share: tuple[tuple, Share | None] = ((), None)
        # Where this process last found each key's bucket: (slot's word, set, tag).
        # Checked against the slot's tag before use, so an eviction or a move is seen.
        self._places: dict[tuple, tuple[int, int, int]] = {}
        # The table's record locks do not exclude this process's own threads.
        self._lock = YieldingLock()

    def __len__(self) -> int:
        return len(self.table)

    def check(self, client: str, rate_per_minute: int, burst: int, consume: bool = True,
              members: int = 1, rule: str = DEFAULT_RULE, own: bool = False) -> Decision:
        """Take one token for `client` under `rule` if it has one (or only look, with consume=False).

        `rate_per_minute` and `burst` are the configured, fleet-wide limit; `members`
        the instances it is split between (1: not split). `own`: this process's own
        bucket rather than the one its instance's workers share (process scope).
        When the split changes, a bucket keeps its fill ratio; when only the burst
        changes, its tokens stay (clamped to the new capacity). A new bucket in one of
        the two partitions starts at the other's fill ratio, if it has one, so a scope
        change keeps the ratio too.
        """
        now = self._clock()
        shared = (rate_per_minute, burst, members)
        last = self._last_share  # one entry: the same limit and N, request after request
        if last[0] == shared:
            per_second, capacity, initial = last[1]
        else:
            share = self._share(rate_per_minute, burst, members)
            self._last_share = (shared, share)
            per_second, capacity, initial = share
        table = self.table
        words, floats = table.words, table.floats
        # Own buckets are tagged with the pid: a child must not take its parent's places.
        key = (rule, client, current_pid()) if own else (rule, client)
        place = self._places.get(key)
        if place is not None:
            word, set_index, tag = place
        else:
            word = None
            base = key_tag(rule, client)
            tag = partition_tag(base, current_pid()) if own else base
            set_index = table.set_of(base)
        with self._lock:
            locked = table.shared()
            if locked:
                table.lock(set_index)
            try:
                # Nearly every request: a bucket found before, still holding the key at
                # the same N. It is read and written word by word without helper calls:
                # in a busy server's cold caches each call costs a microsecond or more.
                if word is not None and words[word] == tag and words[word + 3] == members:
                    known = True
                else:
                    word, known, tokens, way = self._find(rule, client, own, set_index, tag, now, members,
                                                          rate_per_minute, burst, capacity, initial, consume,
                                                          locked)
                if known:  # refilled at the share it was measured in (the same N)
                    tokens = floats[word + 1]
                    elapsed = now - floats[word + 2]
                    if elapsed > 0.0:
                        tokens += elapsed * per_second
                    if tokens > capacity:
                        tokens = capacity
                allowed = tokens >= 1.0
                if allowed and consume:
                    tokens -= 1.0
                if known:
                    floats[word + 1] = tokens
                    floats[word + 2] = now
                elif way is not None:  # a new or rescaled bucket, whole
                    table.store(set_index, way, tag, tokens, now, members)
                    word = table.slot_word(set_index, way)
            finally:
                if locked:
                    table.unlock(set_index)
        if word is not None and (place is None or place[0] != word):
            places = self._places
            if len(places) >= PLACES:
                places.clear()  # a flood of new clients: start again, the busy ones come back first
            places[key] = (word, set_index, tag)
        return self._decision(allowed, rate_per_minute, burst, per_second, capacity, tokens)

    def _find(self, rule: str, client: str, own: bool, set_index: int, tag: int, now: float,
              members: int, rate_per_minute: int, burst: int, capacity: float, initial: float, consume: bool,
              locked: bool) -> tuple[int | None, bool, float, int | None]:
        """A key's bucket looked up in its set (called with the set locked): (its slot's
        word or None, whether it is a known bucket at the same N for `check` to refill,
        else its tokens now, and the way to store it in or None when nothing is stored)."""
        table = self.table
        values = table.read(set_index)
        found = table.find(values, tag)
        if found is not None:
            if found.members == members:
                return table.slot_word(set_index, found.way), True, 0.0, None
            # The fleet grew or shrank: same fill ratio, new size.
            return None, False, self._rescaled(found, now, rate_per_minute, burst, capacity), found.way
        # New here; the same client's bucket in the other partition gives its fill ratio
        # (the scope changed), else a new client's first fill.
        base = key_tag(rule, client)
        other = table.find(values, base if own else partition_tag(base, current_pid()))
        if other is not None:
            tokens = self._rescaled(other, now, rate_per_minute, burst, capacity)
        elif members > 1:
            tokens = min(capacity, initial + self._rounding())
        else:
            tokens = initial
        if not consume:  # a look at an unknown client adds nothing
            return None, False, tokens, None
        way, empty = table.victim(values)
        if empty:
            table.added(locked)
        return None, False, tokens, way

    def _rescaled(self, slot: Slot, now: float, rate_per_minute: int, burst: int, capacity: float) -> float:
        """A bucket's tokens now, refilled at the share it was measured in and carried
        to the new `capacity` at the same fill ratio (the fleet grew or shrank, or the scope changed)."""
        old = self._share(rate_per_minute, burst, slot.members)
        tokens = min(old.capacity, slot.tokens + max(0.0, now - slot.updated) * old.per_second)
        return tokens * capacity / old.capacity if old.capacity > 0 else min(capacity, tokens)

    @staticmethod
    def _decision(allowed: bool, rate_per_minute: int, burst: int, per_second: float, capacity: float,
                  tokens: float) -> Decision:
        if per_second > 0:
            reset = ceil((capacity - tokens) / per_second) if tokens < capacity else 0
            retry = 0 if allowed else max(1, ceil((1.0 - tokens) / per_second))
        else:  # a rate of 0 never refills: tell clients to come back in a minute
            reset = 60 if tokens < capacity else 0
            retry = 0 if allowed else 60
        # This process's fill ratio, stated in the configured burst: what the client may expect.
        remaining = 0 if tokens < 1.0 or capacity <= 0 else floor(tokens * burst / capacity + 1e-9)
        # tuple.__new__ builds the NamedTuple without its Python-level __new__: this runs
        # on every request.
        return _new_tuple(Decision, (allowed, rate_per_minute, remaining if remaining < burst else burst, reset, retry))


# --- the gateway's rate-limit step: rules, scope and the fleet's member count ---------


class Limit(NamedTuple):
    """The configured, fleet-wide limit a request is held to."""

    rule: str  # the matching rule's name, DEFAULT_RULE when none matches
    rate: int  # requests per minute per client
    burst: int

    def policy(self) -> str:
        """The limit as a `RateLimit-Policy` item: `60;w=60;burst=10`."""
        return f"{self.rate};w=60;burst={self.burst}"


def path_under(path: str, prefix: str) -> bool:
    """Whether a rule for `prefix` covers `path`: the path itself and whatever lies below
    it, by whole segments (`/v1/jobs` covers `/v1/jobs/7`, not `/v1/jobsearch`)."""
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/")


class RuleTable:
    """Named rules, longest prefix first (ties: by name), so the first match is the one."""

    def __init__(self, rules: Mapping[str, RateRule]) -> None:
        self.rules = rules
        self._ordered = sorted(rules.items(), key=lambda item: (-len(item[1].prefix), item[0]))
        self._default = Limit(DEFAULT_RULE, -1, -1)  # the last default limit handed out

    def limit_for(self, path: str, default_rate: int, default_burst: int) -> Limit:
        for name, rule in self._ordered:
            if path_under(path, rule.prefix):
                return Limit(name, rule.rate, rule.burst)
        default = self._default
        if default.rate != default_rate or default.burst != default_burst:
            default = self._default = Limit(DEFAULT_RULE, default_rate, default_burst)
        return default


class RateLimitResult(NamedTuple):
    decision: Decision
    limit: Limit
    members: int  # processes the limit is split between (1 in process scope)

    def headers(self) -> dict[str, str]:
        d = self.decision
        limit_text, policy = _LIMIT_TEXTS.get(self.limit) or _limit_texts(self.limit)
        return {
            "RateLimit-Limit": limit_text,
            "RateLimit-Remaining": str(d.remaining),
            "RateLimit-Reset": str(d.reset_seconds),
            "RateLimit-Policy": policy,
        }


# The RateLimit-Limit and RateLimit-Policy texts of the limits in use (the default and
# the rules: a handful), made once rather than on every request.
_LIMIT_TEXTS: dict[Limit, tuple[str, str]] = {}


def _limit_texts(limit: Limit) -> tuple[str, str]:
    if len(_LIMIT_TEXTS) >= 256:  # limits changed many times: start again
        _LIMIT_TEXTS.clear()
    texts = _LIMIT_TEXTS[limit] = (str(limit.rate), limit.policy())
    return texts


class _Plan(NamedTuple):
    """What the rate-limit step decides once per snapshot and member list, not per request."""

    snapshot: Snapshot
    listed: Mapping | None
    rules: RuleTable
    rate: int  # the default limit
    burst: int
    members: int
    own: bool  # process scope: this process's own buckets


class FleetRateLimit:
    """One process's rate-limit step: picks the request's limit (rule or default), splits
    it between the live members in `cluster` scope, keeps this process's membership
    renewed, and reports all of it for `/_status`."""

    def __init__(self, max_clients: int, membership: Membership | None,
                 clock: Callable[[], float] = time.monotonic, table: BucketTable | None = None) -> None:
        self.limiter = RateLimiter(max_clients, clock=clock, table=table)
        self.membership = membership
        self._table = RuleTable({})
        self._plan: _Plan | None = None

    def _rules(self, snapshot: Snapshot) -> RuleTable:
        rules = snapshot.family(RATE_LIMITS)
        table = self._table
        if table.rules is not rules and dict(table.rules) != dict(rules):
            table = self._table = RuleTable(rules)
        elif table.rules is not rules:
            table.rules = rules  # same rules in a newer snapshot: next time, one identity check
        return table

    def members(self, snapshot: Snapshot, listed: Mapping | None = None) -> int:
        """N: the live instances in `cluster` scope (from `listed`, the member list if
        given; the workers of an instance share one bucket table), 1 in `process` scope."""
        if snapshot[RATE_LIMIT_SCOPE] != "cluster" or self.membership is None:
            return 1
        return self.membership.count(listed)

    def _new_plan(self, snapshot: Snapshot, listed: Mapping | None) -> _Plan:
        plan = self._plan = _Plan(snapshot, listed, self._rules(snapshot), snapshot[RATE_LIMIT],
                                  snapshot[RATE_LIMIT_BURST], self.members(snapshot, listed),
                                  snapshot[RATE_LIMIT_SCOPE] == "process")
        return plan

    def check(self, snapshot: Snapshot, path: str, client: str, consume: bool = True) -> RateLimitResult:
        """The decision for one request (consume=False: look without taking a token)."""
        membership = self.membership
        listed = membership.serve() if membership is not None else None
        plan = self._plan  # the same snapshot and member list as the last request, nearly always
        if plan is None or plan.snapshot is not snapshot or plan.listed is not listed:
            plan = self._new_plan(snapshot, listed)
        limit = plan.rules.limit_for(path, plan.rate, plan.burst)
        decision = self.limiter.check(client, limit.rate, limit.burst, consume, members=plan.members, rule=limit.rule,
                                      own=plan.own)
        return RateLimitResult(decision, limit, plan.members)

    def status(self, snapshot: Snapshot, details: bool = False) -> dict:
        rules = self._rules(snapshot)
        out = {
            "scope": snapshot[RATE_LIMIT_SCOPE],
            "members": self.members(snapshot),
            "default": Limit(DEFAULT_RULE, snapshot[RATE_LIMIT], snapshot[RATE_LIMIT_BURST]).policy(),
            "rules": {name: {"prefix": rule.prefix, "rate": rule.rate, "burst": rule.burst, "policy": rule.policy()}
                      for name, rule in sorted(rules.rules.items())},
            "buckets": len(self.limiter),
        }
        if self.membership is not None:
            out["live_members"] = len(self.membership.members())
            out.update(self.membership.status(details))
        return out
