"""The circuit breaker, on a fake clock: closed → open → half-open (one probe) → closed or open."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.fakes.clock import Clock
from turnout.config import BreakerConfig
from turnout.routing.breaker import Breaker, State


def make(**cfg: Any) -> tuple[Breaker, Clock]:
    clock = Clock(1000.0)
    defaults: dict[str, Any] = {"failures": 3, "failure_rate": 0.5, "window": 10, "min_calls": 6, "cooldown_s": 10.0}
    return Breaker(BreakerConfig(**{**defaults, **cfg}), clock=clock), clock


def state(breaker: Breaker) -> State:
    # read through a call so mypy does not narrow the attribute between steps
    return breaker.state


def open_breaker(breaker: Breaker) -> None:
    for _ in range(breaker.cfg.failures):
        assert breaker.allow()
        breaker.failure()
    assert state(breaker) is State.OPEN


# --- closed → open --------------------------------------------------------------------------


def test_a_new_breaker_is_closed_and_allows_calls() -> None:
    breaker, _ = make()
    assert state(breaker) is State.CLOSED
    assert all(breaker.allow() for _ in range(100))
    assert breaker.available()
    assert breaker.retry_after() == 0.0
    assert breaker.transitions == []


def test_consecutive_failures_open_it() -> None:
    breaker, _ = make(failures=3, min_calls=100)
    breaker.failure()
    breaker.failure()
    assert state(breaker) is State.CLOSED
    breaker.failure()
    assert state(breaker) is State.OPEN
    assert breaker.transitions == [(State.CLOSED, State.OPEN)]


def test_a_success_resets_the_consecutive_count() -> None:
    breaker, _ = make(failures=3, min_calls=100)
    for _ in range(10):
        breaker.failure()
        breaker.failure()
        breaker.success()
    assert state(breaker) is State.CLOSED


def test_failure_rate_over_the_window_opens_it() -> None:
    breaker, _ = make(failures=100, failure_rate=0.5, window=10, min_calls=6)
    for _ in range(2):
        breaker.success()
        breaker.failure()
    assert state(breaker) is State.CLOSED  # 2 of 4: below min_calls
    breaker.success()
    assert state(breaker) is State.CLOSED  # 2 of 5
    breaker.failure()
    assert state(breaker) is State.OPEN  # 3 of 6 = 0.5


def test_min_calls_is_respected_even_at_a_full_failure_rate() -> None:
    breaker, _ = make(failures=100, failure_rate=0.5, window=10, min_calls=6)
    for _ in range(5):
        breaker.failure()
    assert state(breaker) is State.CLOSED
    breaker.failure()
    assert state(breaker) is State.OPEN


def test_a_rate_below_the_threshold_keeps_it_closed() -> None:
    breaker, _ = make(failures=100, failure_rate=0.5, window=10, min_calls=6)
    for _ in range(50):
        breaker.success()
        breaker.success()
        breaker.failure()  # one in three
    assert state(breaker) is State.CLOSED


def test_the_window_forgets_old_calls() -> None:
    breaker, _ = make(failures=100, failure_rate=0.5, window=4, min_calls=4)
    breaker.failure()
    breaker.failure()
    breaker.failure()  # 3 of 3, but below min_calls
    for _ in range(4):
        breaker.success()  # pushes every failure out of the window
    breaker.failure()
    assert state(breaker) is State.CLOSED  # 1 of 4


# --- open → half-open → closed / open ---------------------------------------------------------------


def test_an_open_breaker_refuses_until_the_cooldown_elapses() -> None:
    breaker, clock = make(cooldown_s=10.0)
    open_breaker(breaker)
    assert not breaker.allow()
    assert not breaker.available()
    assert breaker.retry_after() == pytest.approx(10.0)
    clock.advance(9.5)
    assert not breaker.allow()
    assert breaker.retry_after() == pytest.approx(0.5)
    clock.advance(0.5)
    assert breaker.retry_after() == 0.0
    assert breaker.available()
    assert state(breaker) is State.OPEN  # available() reserves nothing and moves nothing


def test_after_the_cooldown_exactly_one_probe_is_allowed() -> None:
    breaker, clock = make()
    open_breaker(breaker)
    clock.advance(10.0)
    assert breaker.allow()
    assert state(breaker) is State.HALF_OPEN
    assert not breaker.available()
    assert [breaker.allow() for _ in range(5)] == [False] * 5
    clock.advance(1000)
    assert not breaker.allow()  # time alone does not free the probe


def test_probe_success_closes_it() -> None:
    breaker, clock = make()
    open_breaker(breaker)
    clock.advance(10)
    assert breaker.allow()
    breaker.success()
    assert state(breaker) is State.CLOSED
    assert breaker.allow()
    assert breaker.transitions == [
        (State.CLOSED, State.OPEN),
        (State.OPEN, State.HALF_OPEN),
        (State.HALF_OPEN, State.CLOSED),
    ]


def test_after_closing_the_old_failures_no_longer_count() -> None:
    breaker, clock = make(failures=100, failure_rate=0.5, window=10, min_calls=6)
    for _ in range(6):
        breaker.failure()
    assert state(breaker) is State.OPEN
    clock.advance(10)
    assert breaker.allow()
    breaker.success()
    breaker.failure()  # 1 of 2 after the window was cleared: below min_calls
    assert state(breaker) is State.CLOSED


def test_probe_failure_reopens_with_a_fresh_cooldown() -> None:
    breaker, clock = make(cooldown_s=10.0)
    open_breaker(breaker)
    clock.advance(25)
    assert breaker.allow()
    breaker.failure()
    assert state(breaker) is State.OPEN
    assert breaker.retry_after() == pytest.approx(10.0)
    clock.advance(9.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()
    assert breaker.transitions == [
        (State.CLOSED, State.OPEN),
        (State.OPEN, State.HALF_OPEN),
        (State.HALF_OPEN, State.OPEN),
        (State.OPEN, State.HALF_OPEN),
    ]


def test_release_frees_the_probe_without_a_verdict() -> None:
    breaker, clock = make()
    open_breaker(breaker)
    clock.advance(10)
    assert breaker.allow()
    breaker.release()
    assert state(breaker) is State.HALF_OPEN
    assert breaker.available()
    assert breaker.allow()  # a new probe
    assert not breaker.allow()


def test_release_while_closed_changes_nothing() -> None:
    breaker, _ = make()
    breaker.release()
    assert state(breaker) is State.CLOSED
    assert breaker.transitions == []


def test_late_verdicts_while_open_do_not_close_it() -> None:
    breaker, _ = make()
    open_breaker(breaker)
    breaker.success()  # a call allowed before the trip, finishing late
    assert state(breaker) is State.OPEN
    breaker.failure()
    assert state(breaker) is State.OPEN
    assert breaker.transitions == [(State.CLOSED, State.OPEN)]


def test_retry_after_is_zero_unless_open() -> None:
    breaker, clock = make()
    assert breaker.retry_after() == 0.0
    open_breaker(breaker)
    clock.advance(10)
    breaker.allow()
    assert state(breaker) is State.HALF_OPEN
    assert breaker.retry_after() == 0.0


def test_uses_the_monotonic_clock_by_default() -> None:
    breaker = Breaker(BreakerConfig())
    assert breaker.allow()


# --- the whole machine, by property ----------------------------------------------------------------


class BreakerMachine(RuleBasedStateMachine):
    """Drive a breaker with random calls, verdicts and time, and check it against a model of
    the state diagram in the module's docstring."""

    @initialize(
        failures=st.integers(1, 5),
        rate=st.floats(0.1, 1.0),
        window=st.integers(1, 8),
        min_calls=st.integers(1, 8),
    )
    def setup(self, failures: int, rate: float, window: int, min_calls: int) -> None:
        self.clock = Clock(1000.0)
        self.cfg = BreakerConfig(
            failures=failures, failure_rate=rate, window=window, min_calls=min_calls, cooldown_s=5.0
        )
        self.breaker = Breaker(self.cfg, clock=self.clock)
        self.in_flight = 0  # calls allowed and not yet finished
        self.probe_out = False
        self.opened_at = 0.0

    @rule()
    def call(self) -> None:
        before = self.breaker.state
        expired = before is State.OPEN and self.clock.now - self.opened_at >= self.cfg.cooldown_s
        ok = self.breaker.allow()
        if before is State.CLOSED:
            assert ok
        elif before is State.OPEN:
            assert ok == expired
            if expired:
                assert self.breaker.state is State.HALF_OPEN
        else:
            assert ok == (not self.probe_out)
        if ok:
            self.in_flight += 1
            if self.breaker.state is State.HALF_OPEN:
                self.probe_out = True

    @precondition(lambda self: self.in_flight > 0)
    @rule(good=st.booleans())
    def verdict(self, good: bool) -> None:
        self.in_flight -= 1
        before = self.breaker.state
        if good:
            self.breaker.success()
        else:
            self.breaker.failure()
        if before is State.HALF_OPEN:
            self.probe_out = False
            assert self.breaker.state is (State.CLOSED if good else State.OPEN)
        if good:
            assert self.breaker.state is not State.OPEN or before is State.OPEN
        if self.breaker.state is State.OPEN and before is not State.OPEN:
            self.opened_at = self.clock.now

    @precondition(lambda self: self.in_flight > 0)
    @rule()
    def release(self) -> None:
        self.in_flight -= 1
        before = self.breaker.state
        self.breaker.release()
        assert self.breaker.state is before
        if before is State.HALF_OPEN:
            self.probe_out = False

    @rule(seconds=st.sampled_from([0.5, 2.0, 5.0, 30.0]))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def transitions_follow_the_diagram(self) -> None:
        legal = {
            (State.CLOSED, State.OPEN),
            (State.OPEN, State.HALF_OPEN),
            (State.HALF_OPEN, State.CLOSED),
            (State.HALF_OPEN, State.OPEN),
        }
        assert set(self.breaker.transitions) <= legal
        state = State.CLOSED
        for frm, to in self.breaker.transitions:
            assert frm is state
            state = to
        assert state is self.breaker.state

    @invariant()
    def retry_after_is_bounded(self) -> None:
        assert 0.0 <= self.breaker.retry_after() <= self.cfg.cooldown_s

    @invariant()
    def half_open_lets_one_probe_at_most(self) -> None:
        if self.breaker.state is State.HALF_OPEN:
            assert self.breaker.available() == (not self.probe_out)


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
