"""The caller's max_latency_ms / max_cost_usd (turnout.routing.constraints) and the live latency
window it reads (turnout.routing.latency): parsing, the pure selection, its ledger record."""

from __future__ import annotations

import asyncio
import math
import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnout.errors import RequestError
from turnout.routing import constraints
from turnout.routing.constraints import (
    COST,
    LATENCY,
    Constraints,
    ConstraintUnsatisfiable,
    LatencyBudgetSpent,
    Skip,
    fit,
    parse,
    value,
    within,
)
from turnout.routing.latency import MIN_SAMPLES, LatencyWindow

LAT_HEADER = "x-turnout-max-latency-ms"
COST_HEADER = "x-turnout-max-cost-usd"


# --- values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"), [(800, 800.0), ("800", 800.0), ("2.5", 2.5), ("0.000000001", 1e-9), (0.01, 0.01)]
)
def test_a_positive_number_or_its_text_is_a_limit(raw: object, expected: float) -> None:
    assert value(raw, LATENCY, "p") == expected


def test_nothing_sent_is_no_limit() -> None:
    assert value(None, COST, "p") is None


BAD_TEXT = ("0", "-5", "abc", "", "nan", "inf", "1e3", "+5", "5_0", " 5", "5.", "5\n", "99999999999")
BAD_JSON = (-1, 0, float("nan"), float("inf"), True, [1], {"a": 1}, 1e12)


@pytest.mark.parametrize("raw", [*BAD_TEXT, *BAD_JSON])
def test_a_bad_value_is_a_400_naming_its_field(raw: object) -> None:
    with pytest.raises(RequestError) as caught:
        value(raw, LATENCY, "X-Turnout-Max-Latency-Ms")
    assert caught.value.status == 400
    assert caught.value.param == "X-Turnout-Max-Latency-Ms"
    assert caught.value.code == "invalid_value"
    assert "X-Turnout-Max-Latency-Ms" in caught.value.message


def test_the_ceiling_is_inclusive() -> None:
    assert value(constraints.CEILINGS[COST], COST, "p") == constraints.CEILINGS[COST]
    with pytest.raises(RequestError):
        value(constraints.CEILINGS[COST] * 1.01, COST, "p")


def test_parse_reads_headers_and_metadata_the_header_winning() -> None:
    assert parse({}, None) is None
    assert parse({}, {"other": 1}) is None
    assert parse({LAT_HEADER: "500"}, None) == Constraints(500.0, None)
    assert parse({}, {COST: "0.02"}) == Constraints(None, 0.02)
    both = parse({LAT_HEADER: "500", COST_HEADER: None}, {LATENCY: 9000, COST: 0.5})
    assert both == Constraints(500.0, 0.5)


def test_parse_names_the_metadata_field_or_the_header() -> None:
    with pytest.raises(RequestError) as meta:
        parse({}, {COST: "lots"})
    assert meta.value.param == "metadata.max_cost_usd"
    with pytest.raises(RequestError) as head:
        parse({COST_HEADER: "-1"}, {COST: 0.5})
    assert head.value.param == "X-Turnout-Max-Cost-Usd"


# --- selection -----------------------------------------------------------------------------

P95 = {"fast": 100.0, "slow": 900.0}


def test_a_slow_target_is_skipped_and_the_route_order_kept() -> None:
    kept, skipped = fit(["slow", "fast", "new"], Constraints(max_latency_ms=500), P95.get, {})
    assert kept == ["fast", "new"]  # no history yet: kept, its answers build it
    assert skipped == [Skip("slow", LATENCY, 900.0)]


def test_an_expensive_target_is_skipped_an_unpriced_one_kept() -> None:
    worst = {"pricey": 0.2, "cheap": 0.001}
    kept, skipped = fit(["pricey", "cheap", "free"], Constraints(max_cost_usd=0.01), P95.get, worst)
    assert kept == ["cheap", "free"]
    assert skipped == [Skip("pricey", COST, 0.2)]


def test_a_limit_equal_to_the_value_fits() -> None:
    kept, _ = fit(["slow"], Constraints(900.0, 0.2), P95.get, {"slow": 0.2})
    assert kept == ["slow"]


def test_latency_is_not_read_without_a_latency_limit() -> None:
    def boom(name: str) -> float | None:
        raise AssertionError("p95 read without max_latency_ms")

    kept, _ = fit(["slow"], Constraints(max_cost_usd=1.0), boom, {})
    assert kept == ["slow"]


def test_nothing_fits_is_a_422_naming_the_limit_and_the_best_on_offer() -> None:
    with pytest.raises(ConstraintUnsatisfiable) as caught:
        fit(["slow", "fast"], Constraints(max_latency_ms=50), P95.get, {})
    err = caught.value
    assert (err.status, err.code, err.param) == (422, "constraint_unsatisfiable", LATENCY)
    assert "max_latency_ms=50" in err.message and "100 ms" in err.message
    assert err.skipped == (Skip("slow", LATENCY, 900.0), Skip("fast", LATENCY, 100.0))  # for the row
    body = err.to_openai()["error"]
    assert body["type"] == "invalid_request_error" and body["code"] == "constraint_unsatisfiable"


def test_nothing_fits_on_cost_names_the_cost() -> None:
    with pytest.raises(ConstraintUnsatisfiable) as caught:
        fit(["fast", "pricey"], Constraints(max_latency_ms=50, max_cost_usd=0.01), P95.get, {"pricey": 0.5})
    assert caught.value.param == LATENCY  # one each: the tie goes to latency
    with pytest.raises(ConstraintUnsatisfiable) as caught:
        fit(["a", "b"], Constraints(max_cost_usd=0.01), P95.get, {"a": 0.5, "b": 0.03})
    assert caught.value.param == COST
    assert "0.03 USD" in caught.value.message


names = st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f"]), min_size=1, max_size=6, unique=True)
maybe_ms = st.one_of(st.none(), st.floats(0, 10_000, allow_nan=False))
usd = st.floats(0, 10, allow_nan=False)


@given(
    route=names,
    p95=st.dictionaries(st.sampled_from("abcdef"), maybe_ms),
    worst=st.dictionaries(st.sampled_from("abcdef"), usd),
    max_ms=st.one_of(st.none(), st.floats(1, 10_000, allow_nan=False)),
    max_usd=st.one_of(st.none(), st.floats(0.0001, 10, allow_nan=False)),
)
def test_never_picks_a_target_that_cannot_fit(
    route: list[str], p95: dict[str, float | None], worst: dict[str, float], max_ms: float | None, max_usd: float | None
) -> None:
    limits = Constraints(max_ms, max_usd)
    refused: ConstraintUnsatisfiable | None = None
    try:
        kept, skipped = fit(route, limits, p95.get, worst)
    except ConstraintUnsatisfiable as err:
        refused, kept, skipped = err, [], list(err.skipped)
    if refused is not None:
        assert refused.param in (LATENCY, COST)
        assert all(_breaks(n, limits, p95, worst) for n in route)  # only when truly none fits
    for name in kept:
        assert not _breaks(name, limits, p95, worst)
    assert [s.target for s in skipped] == [n for n in route if n not in kept]
    assert kept == [n for n in route if n in kept]  # the route's order
    for s in skipped:
        assert _breaks(s.target, limits, p95, worst)


def _breaks(name: str, limits: Constraints, p95: dict[str, float | None], worst: dict[str, float]) -> bool:
    seen = p95.get(name)
    slow = limits.max_latency_ms is not None and seen is not None and seen > limits.max_latency_ms
    dear = limits.max_cost_usd is not None and worst.get(name, 0.0) > limits.max_cost_usd
    return slow or dear


# --- the ledger record ---------------------------------------------------------------------


def test_the_record_names_the_limits_and_the_skips() -> None:
    limits = Constraints(800.0, 0.01)
    assert limits.record([]) == "max_latency_ms=800 max_cost_usd=0.01"
    skips = [Skip("slow", LATENCY, 900.0), Skip("pricey", COST, 0.2)]
    assert (
        limits.record(skips) == "max_latency_ms=800 max_cost_usd=0.01 skipped=slow:max_latency_ms,pricey:max_cost_usd"
    )
    assert Constraints(None, 0.5).record([]) == "max_cost_usd=0.5"


def test_a_spent_budget_is_a_504_naming_the_limit() -> None:
    err = constraints.spent(Constraints(max_latency_ms=250))
    assert (err.status, err.code, err.param) == (504, "max_latency_exceeded", LATENCY)
    assert "250" in err.message


# --- the latency window --------------------------------------------------------------------


def test_no_p95_before_enough_samples() -> None:
    window = LatencyWindow()
    assert window.p95("t") is None
    for _ in range(MIN_SAMPLES - 1):
        window.observe("t", 10.0)
    assert window.p95("t") is None
    window.observe("t", 10.0)
    assert window.p95("t") == 10.0


def test_p95_is_the_nearest_rank() -> None:
    window = LatencyWindow()
    for ms in range(1, 101):  # 1..100
        window.observe("t", float(ms))
    assert window.p95("t") == 95.0
    window.observe("t", 1000.0)  # 2..100, 1000: the cached value is dropped
    assert window.p95("t") == 96.0


def test_the_window_is_bounded_and_forgets_the_old() -> None:
    window = LatencyWindow(size=10)
    for _ in range(10):
        window.observe("t", 5000.0)
    for _ in range(10):
        window.observe("t", 20.0)
    assert window.p95("t") == 20.0  # the slow past has left the window
    assert window.p95("other") is None


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=MIN_SAMPLES, max_size=300))
def test_p95_is_a_sample_at_or_above_95_percent_of_the_window(samples: list[float]) -> None:
    window = LatencyWindow(size=200)
    for ms in samples:
        window.observe("t", ms)
    kept = samples[-200:]
    p95 = window.p95("t")
    assert p95 in kept
    assert sum(1 for ms in kept if ms <= p95) >= math.ceil(0.95 * len(kept))


@given(st.text(max_size=24))
def test_text_is_a_limit_only_when_it_matches_the_documented_pattern(raw: str) -> None:
    """/openapi.json documents the headers with ``DECIMAL``: text outside it is refused (the
    contract test's negative data), text inside it is refused only out of range."""
    try:
        got = value(raw, COST, "p")
    except RequestError:
        got = None
    if re.fullmatch(constraints.DECIMAL.strip("^$"), raw) is None:
        assert got is None
    else:
        assert got == (float(raw) if 0 < float(raw) <= constraints.CEILINGS[COST] else None)


# --- the deadline across attempts ----------------------------------------------------------


async def test_within_returns_what_finishes_in_time() -> None:
    async def run() -> str:
        return "answer"

    assert await within(Constraints(max_latency_ms=60_000), time.perf_counter(), run) == "answer"


async def test_within_cuts_the_attempts_when_the_budget_runs_out() -> None:
    cancelled = asyncio.Event()

    async def run() -> str:
        try:
            await asyncio.Event().wait()  # an upstream that never answers
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    with pytest.raises(LatencyBudgetSpent) as caught:
        await within(Constraints(max_latency_ms=100), time.perf_counter(), run)
    assert cancelled.is_set()  # the attempt was cancelled, not left running
    assert caught.value.param == LATENCY


async def test_within_spent_before_the_first_attempt_makes_none() -> None:
    calls: list[str] = []

    async def run() -> str:
        calls.append("attempt")
        return "answer"

    with pytest.raises(LatencyBudgetSpent):
        await within(Constraints(max_latency_ms=100), time.perf_counter() - 1.0, run)
    assert calls == []


async def test_within_lets_a_timeout_of_its_own_through() -> None:
    async def run() -> str:
        raise TimeoutError("an inner timeout, not the caller's budget")

    with pytest.raises(TimeoutError) as caught:
        await within(Constraints(max_latency_ms=60_000), time.perf_counter(), run)
    assert not isinstance(caught.value, LatencyBudgetSpent)
