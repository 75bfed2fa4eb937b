"""Token buckets per client and rule, split between processes, with an injected clock."""

from __future__ import annotations

import pytest

from config_watch import RateRule
from gateway import RateLimiter
from gateway.ratelimit import SLACK_TOKENS, Limit, RuleTable, path_under, process_share


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


def drain(limiter: RateLimiter, client: str, rate: int, burst: int, members: int = 1) -> int:
    """Requests allowed back to back before the first refusal."""
    allowed = 0
    while limiter.check(client, rate, burst, members=members).allowed:
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
    # Recency is the time of a bucket's last check: a millisecond between checks
    # (a thousandth of a token at 60/min).
    limiter = RateLimiter(max_clients=3, clock=clock)
    for client in ("a", "b", "c"):
        drain(limiter, client, rate=60, burst=1)
        clock.advance(0.001)
    limiter.check("a", 60, 1)  # a is now the most recently used (and still empty)
    clock.advance(0.001)
    limiter.check("d", 60, 1)  # over the bound: b, least recently used, goes
    clock.advance(0.001)
    assert len(limiter) == 3
    assert limiter.check("b", 60, 1).allowed  # b came back with a full bucket (and c was evicted)
    assert not limiter.check("a", 60, 1).allowed  # a kept its empty bucket
    assert not limiter.check("d", 60, 1).allowed
    assert len(limiter) == 3


# --- the limit split between processes (cluster scope) -----------------------------


@pytest.fixture
def split_limiter(clock):
    # No random part in a new bucket's first fill: the arithmetic is checked exactly.
    return RateLimiter(max_clients=1000, clock=clock, rounding=lambda: 0.0)


def test_one_process_holds_the_whole_limit():
    assert process_share(60, 10, 1) == (1.0, 10.0, 10.0)


def test_a_split_limit_refills_at_rate_over_n_with_burst_over_n_plus_slack():
    share = process_share(120, 10, 4)
    assert share.per_second == pytest.approx(0.5)  # 120/min / 60 / 4
    assert share.capacity == pytest.approx(2.5 + SLACK_TOKENS)
    assert share.initial == pytest.approx(2.5)


def test_a_split_share_is_never_below_one_token():
    share = process_share(60, 5, 1000)
    assert share.initial == 1.0 and share.capacity == 1.0 + SLACK_TOKENS


def test_a_new_client_gets_its_share_of_the_burst_in_one_process(split_limiter):
    assert drain(split_limiter, "a", rate=60, burst=6, members=2) == 3


def test_the_random_part_of_a_first_fill_rounds_a_fractional_share(clock):
    # A share of 2.5 tokens admits 2 or 3, 2.5 on average, never more than the capacity.
    low = RateLimiter(clock=clock, rounding=lambda: 0.49)
    high = RateLimiter(clock=clock, rounding=lambda: 0.5)
    assert drain(low, "a", rate=60, burst=5, members=2) == 2
    assert drain(high, "a", rate=60, burst=5, members=2) == 3


def test_a_split_bucket_refills_at_its_share_of_the_rate(split_limiter, clock):
    drain(split_limiter, "a", rate=120, burst=4, members=4)  # 0.5 token/s in this process
    clock.advance(1.9)
    assert not split_limiter.check("a", 120, 4, members=4).allowed
    clock.advance(0.2)
    assert split_limiter.check("a", 120, 4, members=4).allowed


def test_a_change_of_n_keeps_the_fill_ratio(split_limiter):
    split_limiter.check("a", 60, 10, members=2)  # share 5 (capacity 6): 4 tokens left
    # Four members now: capacity 2.5 + 1 = 3.5; 4/6 of it is 2.33 tokens: two requests.
    assert drain(split_limiter, "a", rate=60, burst=10, members=4) == 2


def test_a_scope_change_to_process_keeps_the_fill_ratio(split_limiter):
    for _ in range(3):
        split_limiter.check("a", 60, 10, members=2)  # 2 of capacity 6 left: a third full
    # Process scope: capacity 10, a third full = 3.33 tokens.
    assert drain(split_limiter, "a", rate=60, burst=10, members=1) == 3


def test_a_burst_change_without_a_change_of_n_clamps_instead_of_scaling(split_limiter):
    split_limiter.check("a", 60, 100, members=1)  # 99 tokens
    assert drain(split_limiter, "a", rate=60, burst=3, members=1) == 3


def test_headers_state_the_configured_limit_not_the_share(split_limiter):
    decision = split_limiter.check("a", 60, 10, members=4)
    assert decision.limit == 60
    # 1.5 of 3.5 tokens left: the same fill ratio in the configured burst's terms.
    assert decision.remaining == 4


def test_each_rule_has_its_own_buckets(split_limiter):
    drain(split_limiter, "a", rate=60, burst=2)
    assert split_limiter.check("a", 60, 2, rule="jobs").allowed


# --- rules -------------------------------------------------------------------------


def test_longest_matching_prefix_wins():
    table = RuleTable({"v1": RateRule("/v1", 100, 10), "jobs": RateRule("/v1/jobs", 60, 5),
                       "job": RateRule("/v1/jobs/x", 6, 1)})
    assert table.limit_for("/v1/jobs/7", 1, 1) == Limit("jobs", 60, 5)
    assert table.limit_for("/v1/jobs/x/1", 1, 1) == Limit("job", 6, 1)
    assert table.limit_for("/v1/users", 1, 1) == Limit("v1", 100, 10)
    assert table.limit_for("/v2", 30, 3) == Limit("", 30, 3)


def test_a_prefix_matches_whole_path_segments():
    assert path_under("/v1/jobs", "/v1/jobs") and path_under("/v1/jobs/7", "/v1/jobs")
    assert not path_under("/v1/jobsearch", "/v1/jobs")
    assert path_under("/v1/jobs/7", "/v1/") and not path_under("/v1", "/v1/")
    assert path_under("/anything", "/")


def test_rules_with_the_same_prefix_resolve_by_name():
    table = RuleTable({"b": RateRule("/x", 2, 2), "a": RateRule("/x", 1, 1)})
    assert table.limit_for("/x", 9, 9).rule == "a"


def test_policy_header_item():
    assert Limit("jobs", 60, 10).policy() == "60;w=60;burst=10"


def test_random_spread_over_four_processes_admits_the_limit_within_a_few_percent():
    # The gateway's own limiter on a virtual clock (bench/ratelimit.py): a client at 3x the
    # limit, each request to a random one of four processes, ten simulated minutes.
    from bench.ratelimit import admitted_ratio

    ratios = [admitted_ratio(4, process_share, True, 600.0, seed) for seed in range(3)]
    assert all(0.95 <= r <= 1.05 for r in ratios), ratios
