"""Backoff: full jitter within [0, min(cap, base·2^(n-1))], and Retry-After honoured up to the cap."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnout.config import RetryConfig
from turnout.routing.backoff import MAX_RETRY_AFTER_S, delay, parse_retry_after


def cfg(backoff_ms: float = 100.0, max_backoff_ms: float = 1000.0) -> RetryConfig:
    return RetryConfig(attempts=5, backoff_ms=backoff_ms, max_backoff_ms=max_backoff_ms)


@given(
    backoff_ms=st.floats(0, 10_000),
    max_backoff_ms=st.floats(0, 10_000),
    attempt=st.integers(1, 40),
    seed=st.integers(0, 2**32),
)
def test_full_jitter_stays_within_its_bounds(backoff_ms: float, max_backoff_ms: float, attempt: int, seed: int) -> None:
    c = cfg(backoff_ms, max_backoff_ms)
    wait = delay(c, attempt, None, random.Random(seed))
    assert wait is not None
    upper = min(max_backoff_ms / 1000, backoff_ms / 1000 * 2 ** (attempt - 1))
    assert 0.0 <= wait <= upper + 1e-12


@pytest.mark.parametrize(("attempt", "upper"), [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (30, 1.0)])
def test_the_ceiling_doubles_up_to_the_cap(attempt: int, upper: float) -> None:
    rng = random.Random(7)
    waits = [delay(cfg(), attempt, None, rng) for _ in range(2000)]
    assert all(w is not None and 0.0 <= w <= upper for w in waits)
    # the draws really spread over the whole range (full jitter, not a fixed wait)
    assert max(w for w in waits if w is not None) > upper * 0.95
    assert min(w for w in waits if w is not None) < upper * 0.05


def test_zero_backoff_means_no_wait() -> None:
    assert delay(cfg(backoff_ms=0), 3, None) == 0.0


def test_the_rng_is_used_when_given() -> None:
    a = [delay(cfg(), 3, None, random.Random(1)) for _ in range(3)]
    b = [delay(cfg(), 3, None, random.Random(1)) for _ in range(3)]
    assert a == b


@pytest.mark.parametrize("retry_after", [0.0, 0.25, 1.0])
def test_retry_after_up_to_the_cap_is_honoured_exactly(retry_after: float) -> None:
    assert delay(cfg(max_backoff_ms=1000), 1, retry_after, random.Random(0)) == retry_after


@pytest.mark.parametrize("retry_after", [1.001, 5.0, 3600.0, float("inf")])
def test_retry_after_above_the_cap_means_fall_back(retry_after: float) -> None:
    assert delay(cfg(max_backoff_ms=1000), 1, retry_after) is None


def test_retry_after_wins_over_the_computed_backoff() -> None:
    # attempt 1 would draw from [0, 0.1]; the upstream asked for 0.9
    assert delay(cfg(), 1, 0.9) == 0.9


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("3", 3.0),
        (" 2 ", 2.0),
        ("1.5", 1.5),
        ("120", 120.0),
    ],
)
def test_parse_retry_after_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value) == expected


@pytest.mark.parametrize(
    "value", [None, "", "soon", "-1", "nan", "inf", "1e400", "-inf", "Wed, 32 Oct 2015 07:28:00 GMT"]
)
def test_parse_retry_after_ignores_what_it_cannot_use(value: str | None) -> None:
    assert parse_retry_after(value) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # past: now
        ("Wed, 21 Oct 2015 07:28:05 -0000", 5.0),
        ("Wednesday, 21-Oct-15 07:28:10 GMT", 10.0),  # RFC 850, as HTTP allows
    ],
)
def test_parse_retry_after_http_dates(value: str, expected: float) -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after(value, now) == pytest.approx(expected)


def test_parse_retry_after_is_at_most_a_day() -> None:
    assert parse_retry_after("99999999999999999999") == MAX_RETRY_AFTER_S
