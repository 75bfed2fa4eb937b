"""The circuit breaker's states and its live thresholds, on a scripted clock."""

from __future__ import annotations

import json
import logging

import pytest

from gateway.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, Permit, Refusal, Thresholds


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def breaker(clock):
    return CircuitBreaker("processor", clock=clock)


T = Thresholds(failures=3, open_seconds=10, half_open_successes=2)


def call(breaker: CircuitBreaker, ok: bool, t: Thresholds = T) -> Permit | Refusal:
    permit = breaker.acquire(t)
    if isinstance(permit, Permit):
        breaker.record(permit, ok, t)
    return permit


def test_consecutive_failures_open_it_and_a_success_resets_the_count(breaker):
    call(breaker, False)
    call(breaker, False)
    call(breaker, True)
    assert breaker.failures == 0 and breaker.state == CLOSED
    for _ in range(3):
        call(breaker, False)
    assert breaker.state == OPEN


def test_open_refuses_with_the_seconds_left(breaker, clock):
    for _ in range(3):
        call(breaker, False)
    clock.now += 2.5
    refusal = breaker.acquire(T)
    assert refusal == Refusal(OPEN, 8)
    assert breaker.status(T)["seconds_left_open"] == pytest.approx(7.5)


def test_whole_cycle_open_half_open_closed(breaker, clock):
    for _ in range(3):
        call(breaker, False)
    clock.now += 10
    assert call(breaker, True) == Permit(trial=True)
    assert breaker.state == HALF_OPEN
    assert call(breaker, True) == Permit(trial=True)
    assert breaker.state == CLOSED and breaker.failures == 0


def test_a_failed_trial_opens_it_again_for_a_full_period(breaker, clock):
    for _ in range(3):
        call(breaker, False)
    clock.now += 10
    call(breaker, True)
    call(breaker, False)
    assert breaker.state == OPEN
    assert breaker.acquire(T) == Refusal(OPEN, 10)


def test_half_open_bounds_trial_calls_in_flight(breaker, clock):
    for _ in range(3):
        call(breaker, False)
    clock.now += 10
    first, second = breaker.acquire(T), breaker.acquire(T)
    assert first == second == Permit(trial=True)
    assert breaker.acquire(T) == Refusal(HALF_OPEN, 1)
    breaker.record(first, True, T)
    third = breaker.acquire(T)  # a slot came free
    assert third == Permit(trial=True)
    breaker.record(second, True, T)
    assert breaker.state == CLOSED
    breaker.record(third, True, T)  # a trial finishing after the close changes nothing
    assert breaker.state == CLOSED and breaker.trials == 0


def test_lowering_failures_below_the_count_opens_on_the_next_failure(breaker):
    high = T._replace(failures=10)
    for _ in range(4):
        call(breaker, False, high)
    low = T._replace(failures=2)
    assert breaker.state == CLOSED and breaker.failures == 4  # the change alone opens nothing
    assert breaker.acquire(low) == Permit(trial=False)
    call(breaker, False, low)
    assert breaker.state == OPEN


def test_shortening_open_seconds_shortens_the_period_running(breaker, clock):
    long = T._replace(open_seconds=3600)
    for _ in range(3):
        call(breaker, False, long)
    clock.now += 5
    assert breaker.acquire(long) == Refusal(OPEN, 3595)
    short = T._replace(open_seconds=5)
    assert breaker.acquire(short) == Permit(trial=True)


def test_lengthening_open_seconds_lengthens_the_period_running(breaker, clock):
    for _ in range(3):
        call(breaker, False)
    clock.now += 9
    assert breaker.acquire(T._replace(open_seconds=20)) == Refusal(OPEN, 11)


def test_half_open_successes_change_applies_without_a_reset(breaker, clock):
    many = T._replace(half_open_successes=5)
    for _ in range(3):
        call(breaker, False, many)
    clock.now += 10
    for _ in range(3):
        call(breaker, True, many)
    assert breaker.state == HALF_OPEN and breaker.successes == 3
    call(breaker, True, T._replace(half_open_successes=4))
    assert breaker.state == CLOSED


def test_a_threshold_change_keeps_counts_and_state(breaker, clock):
    call(breaker, False)
    call(breaker, False)
    other = Thresholds(failures=50, open_seconds=99, half_open_successes=9)
    status = breaker.status(other)
    assert status["state"] == CLOSED and status["consecutive_failures"] == 2


def test_calls_let_through_before_it_opened_do_not_close_it(breaker):
    early = breaker.acquire(T)
    for _ in range(3):
        call(breaker, False)
    breaker.record(early, True, T)
    assert breaker.state == OPEN


def test_each_transition_is_one_structured_log_line(breaker, clock, caplog):
    caplog.set_level(logging.INFO, logger="gateway.breaker")
    for _ in range(3):
        call(breaker, False, T._replace(revision=7))
    clock.now += 10
    call(breaker, True, T._replace(revision=8))
    call(breaker, True, T._replace(revision=8))
    lines = [r.json_fields for r in caplog.records]
    assert [(f["from"], f["to"]) for f in lines] == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    assert lines[0]["revision"] == 7 and lines[0]["failures"] == 3 and lines[0]["event"] == "breaker_transition"
    json.dumps(lines)  # plain data
