"""Exponential backoff with full jitter, one series per endpoint."""

from __future__ import annotations

import random

import pytest

from config_watch._backoff import BASE_DELAY, MAX_DELAY, Backoff

A, B = "10.0.0.1:2379", "10.0.0.2:2379"


class Top(random.Random):
    def uniform(self, a, b):  # the largest delay jitter could give
        return b


def test_delays_stay_within_the_growing_ceiling():
    backoff = Backoff(base=0.1, cap=100.0, rand=random.Random(1))
    for n in range(10):
        assert 0.0 <= backoff.failed(A, now=0.0) <= 0.1 * 2**n


def test_delays_never_exceed_the_cap():
    backoff = Backoff(base=0.05, cap=5.0, rand=random.Random(2))
    delays = [backoff.failed(A, now=0.0) for _ in range(500)]
    assert max(delays) <= 5.0
    # Once the ceiling is the cap, jitter spreads delays across it (not stuck near 0).
    assert max(delays[20:]) > 2.5


def test_a_long_run_of_failures_never_overflows():
    """2000 failures in a row is under three hours of outage at the 5 s cap."""
    backoff = Backoff(rand=random.Random(3))
    for _ in range(2000):
        assert 0.0 <= backoff.failed(A, now=0.0) <= MAX_DELAY


def test_ceiling_doubles_each_failure():
    backoff = Backoff(base=0.05, cap=1.0, rand=Top())
    assert [round(backoff.failed(A, now=0.0), 6) for _ in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_one_endpoint_waits_the_plain_series():
    """The single-VM deployment: each wait is the whole delay its failure drew."""
    backoff = Backoff(base=0.05, cap=5.0, rand=random.Random(8))
    reference = random.Random(8)
    for n in range(12):
        backoff.failed(A, now=100.0 + n)
        expected = reference.uniform(0, min(5.0, 0.05 * 2**n))
        assert backoff.wait(A, now=100.0 + n) == pytest.approx(expected, abs=1e-9)


def test_the_wait_is_what_is_left_of_the_delay_since_the_failure():
    backoff = Backoff(base=4.0, cap=4.0, rand=Top())
    backoff.failed(A, now=10.0)
    assert backoff.wait(A, now=10.0) == 4.0
    assert backoff.wait(A, now=13.0) == 1.0
    assert backoff.wait(A, now=15.0) == 0.0


def test_each_endpoint_keeps_its_own_count():
    backoff = Backoff(base=1.0, cap=100.0, rand=Top())
    for _ in range(5):
        backoff.failed(A, now=0.0)
    assert backoff.wait(B, now=0.0) == 0.0  # B has not failed: tried at once
    assert backoff.failed(B, now=0.0) == 1.0  # and its first failure draws the first delay
    assert (backoff.failures(A), backoff.failures(B)) == (5, 1)


def test_a_healthy_stretch_starts_only_that_endpoint_over():
    backoff = Backoff(base=0.05, cap=5.0, rand=random.Random(4), reset_after=30)
    for _ in range(8):
        backoff.failed(A, now=0.0)
        backoff.failed(B, now=0.0)
    backoff.healthy_for(A, 29.9)
    assert backoff.failures(A) == 8
    backoff.healthy_for(A, 30)
    assert backoff.failures(A) == 0 and backoff.wait(A, now=0.0) == 0.0
    assert backoff.failed(A, now=0.0) <= 0.05
    assert backoff.failures(B) == 8


def test_same_seed_gives_the_same_delays():
    a = Backoff(rand=random.Random(7))
    b = Backoff(rand=random.Random(7))
    assert [a.failed(A, 0.0) for _ in range(10)] == [b.failed(A, 0.0) for _ in range(10)]


def test_defaults_are_a_quick_first_retry_and_a_five_second_cap():
    backoff = Backoff(rand=random.Random(5))
    assert (backoff.base, backoff.cap) == (BASE_DELAY, MAX_DELAY) == (0.05, 5.0)
    assert backoff.failed(A, now=0.0) <= 0.05
