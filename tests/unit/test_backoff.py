"""Exponential backoff with full jitter."""

from __future__ import annotations

import random

from config_watch._backoff import BASE_DELAY, MAX_DELAY, Backoff


def test_delays_stay_within_the_growing_ceiling():
    backoff = Backoff(base=0.1, cap=100.0, rand=random.Random(1))
    for n in range(10):
        delay = backoff.next_delay()
        assert 0.0 <= delay <= 0.1 * 2**n


def test_delays_never_exceed_the_cap():
    backoff = Backoff(base=0.05, cap=5.0, rand=random.Random(2))
    delays = [backoff.next_delay() for _ in range(500)]
    assert max(delays) <= 5.0
    # Once the ceiling is the cap, jitter spreads delays across it (not stuck near 0).
    assert max(delays[20:]) > 2.5


def test_a_long_run_of_failures_never_overflows():
    """2000 failures in a row is under three hours of outage at the 5 s cap."""
    backoff = Backoff(rand=random.Random(3))
    for _ in range(2000):
        assert 0.0 <= backoff.next_delay() <= MAX_DELAY


def test_ceiling_doubles_each_attempt():
    class Top(random.Random):
        def uniform(self, a, b):  # the largest delay jitter could give
            return b

    backoff = Backoff(base=0.05, cap=1.0, rand=Top())
    assert [round(backoff.next_delay(), 6) for _ in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_reset_starts_over():
    backoff = Backoff(base=0.05, cap=5.0, rand=random.Random(4))
    for _ in range(8):
        backoff.next_delay()
    assert backoff.attempts == 8
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.next_delay() <= 0.05


def test_same_seed_gives_the_same_delays():
    a = Backoff(rand=random.Random(7))
    b = Backoff(rand=random.Random(7))
    assert [a.next_delay() for _ in range(10)] == [b.next_delay() for _ in range(10)]


def test_defaults_are_a_quick_first_retry_and_a_five_second_cap():
    backoff = Backoff(rand=random.Random(5))
    assert (backoff.base, backoff.cap) == (BASE_DELAY, MAX_DELAY) == (0.05, 5.0)
    assert backoff.next_delay() <= 0.05
