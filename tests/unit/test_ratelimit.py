"""Token buckets per client, with an injected clock."""

from __future__ import annotations

import pytest

from gateway import RateLimiter


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def limiter(clock):
    return RateLimiter(max_clients=1000, clock=clock)


def drain(limiter: RateLimiter, client: str, rate: int, burst: int) -> int:
    """Requests allowed back to back before the first refusal."""
    allowed = 0
    while limiter.check(client, rate, burst).allowed:
        allowed += 1
        assert allowed <= burst, "more requests allowed than the burst"
    return allowed


def test_new_client_may_send_exactly_burst_requests_at_once(limiter):
    assert drain(limiter, "a", rate=60, burst=5) == 5


def test_refused_request_has_retry_after_of_at_least_one_second(limiter):
    drain(limiter, "a", rate=600, burst=2)  # 10 tokens/s: the next token is 0.1 s away
    decision = limiter.check("a", 600, 2)
    assert not decision.allowed
    assert decision.retry_after == 1
    assert decision.remaining == 0


def test_retry_after_is_the_time_until_the_next_token(limiter):
    drain(limiter, "a", rate=6, burst=1)  # one token every 10 s
    decision = limiter.check("a", 6, 1)
    assert not decision.allowed and decision.retry_after == 10


def test_tokens_refill_at_rate_per_minute_divided_by_sixty(limiter, clock):
    drain(limiter, "a", rate=60, burst=10)  # one token per second
    clock.advance(3.0)
    assert drain(limiter, "a", rate=60, burst=10) == 3
    clock.advance(0.5)
    assert not limiter.check("a", 60, 10).allowed
    clock.advance(0.5)
    assert limiter.check("a", 60, 10).allowed


def test_refill_never_exceeds_the_burst(limiter, clock):
    drain(limiter, "a", rate=60, burst=4)
    clock.advance(3600)
    assert drain(limiter, "a", rate=60, burst=4) == 4


def test_allowed_decision_reports_limit_remaining_and_reset(limiter):
    decision = limiter.check("a", 120, 10)  # 2 tokens/s
    assert decision.allowed
    assert decision.limit == 120
    assert decision.remaining == 9
    assert decision.reset_seconds == 1  # one token short of full, at 2 tokens/s
    assert decision.retry_after == 0
    for _ in range(4):
        decision = limiter.check("a", 120, 10)
    assert decision.remaining == 5 and decision.reset_seconds == 3  # 5 tokens at 2/s = 2.5 s, rounded up


def test_full_bucket_reports_zero_reset(limiter):
    decision = limiter.check("a", 60, 10, consume=False)
    assert decision.allowed and decision.remaining == 10 and decision.reset_seconds == 0


def test_clients_have_separate_buckets(limiter):
    drain(limiter, "a", rate=60, burst=2)
    assert limiter.check("b", 60, 2).allowed


def test_lowering_the_burst_clamps_existing_buckets(limiter):
    limiter.check("a", 60, 100)  # 99 tokens left
    assert drain(limiter, "a", rate=60, burst=3) == 3


def test_raising_the_rate_applies_to_existing_buckets_on_next_request(limiter, clock):
    drain(limiter, "a", rate=60, burst=10)
    clock.advance(1.0)
    # Refill since the last request counts at the rate in force now: 600/min = 10 tokens/s.
    assert drain(limiter, "a", rate=600, burst=10) == 10


def test_rate_zero_blocks_once_the_burst_is_spent(limiter, clock):
    assert drain(limiter, "a", rate=0, burst=3) == 3
    clock.advance(86_400)
    decision = limiter.check("a", 0, 3)
    assert not decision.allowed
    assert decision.retry_after >= 1


def test_rate_zero_with_zero_burst_blocks_every_request(limiter):
    decision = limiter.check("a", 0, 0)
    assert not decision.allowed and decision.retry_after >= 1


def test_look_without_consuming_takes_no_token(limiter):
    for _ in range(5):
        decision = limiter.check("a", 60, 2, consume=False)
        assert decision.allowed and decision.remaining == 2
    assert drain(limiter, "a", rate=60, burst=2) == 2
    looked = limiter.check("a", 60, 2, consume=False)
    assert not looked.allowed and looked.retry_after >= 1


def test_look_at_an_unknown_client_does_not_add_it_to_the_table(limiter):
    limiter.check("ghost", 60, 2, consume=False)
    assert len(limiter) == 0


def test_clock_going_backwards_does_not_add_tokens(limiter, clock):
    drain(limiter, "a", rate=60, burst=2)
    clock.advance(-100)
    assert not limiter.check("a", 60, 2).allowed


def test_table_evicts_the_least_recently_used_client_past_max_clients(clock):
    limiter = RateLimiter(max_clients=3, clock=clock)
    for client in ("a", "b", "c"):
        drain(limiter, client, rate=60, burst=1)
    limiter.check("a", 60, 1)  # a is now the most recently used (and still empty)
    limiter.check("d", 60, 1)  # over the bound: b, least recently used, goes
    assert len(limiter) == 3
    assert limiter.check("b", 60, 1).allowed  # b came back with a full bucket (and c was evicted)
    assert not limiter.check("a", 60, 1).allowed  # a kept its empty bucket
    assert not limiter.check("d", 60, 1).allowed
    assert len(limiter) == 3
