"""Gates against eval results: pass, fail, and skip with a reason."""

from __future__ import annotations

import asyncio

import pytest

from turnout.config import Gates
from turnout.offline.evals import Case, EvalResult, Expectation, GateResult, Outcome, all_passed, evaluate_gates, failed
from turnout.offline.evals import run_eval as _run_eval
from turnout.offline.evals.gates import HumanCosts, cost_per_completed_task


def make_result(
    *,
    wrong: dict[str, set[int]],
    n: int = 20,
    latency: dict[str, float] | None = None,
    cost: dict[str, float | None] | None = None,
    baseline: str | None = "v1",
) -> EvalResult:
    lat = latency or {}
    costs = cost or {}

    async def call(release: str, case: Case) -> Outcome:
        assert case.variables is not None
        i = case.variables["i"]
        out = "no" if i in wrong.get(release, set()) else "yes"
        return Outcome(out, latency_ms=lat.get(release, 100.0), cost_usd=costs.get(release, 0.01))

    cases = [Case(id=f"c{i}", expect=(Expectation("equals", {"value": "yes"}),), variables={"i": i}) for i in range(n)]
    return asyncio.run(_run_eval(cases, call, candidate="v2", baseline=baseline, concurrency=4))


def by_name(results: list[GateResult]) -> dict[str, GateResult]:
    return {g.name: g for g in results}


def test_all_gates_pass() -> None:
    result = make_result(wrong={"v1": {0, 1, 2}, "v2": {0}}, latency={"v2": 250.0}, cost={"v1": 0.01, "v2": 0.011})
    gates = by_name(evaluate_gates(Gates(min_pass_rate=0.9, max_p95_ms=300, max_cost_per_pass_ratio=1.2), result))
    assert all_passed(gates.values()) and not failed(gates.values())
    assert [g.verdict for g in gates.values()] == ["pass"] * 4 + ["skip"]  # no max_cost_per_completed_task
    g = gates["min_pass_rate"]
    assert (g.observed, g.threshold) == (0.95, 0.9) and "v2 passes 95.0%" in g.explanation
    g = gates["max_regression"]
    assert g.observed == pytest.approx(-0.1) and "fixed 2, broke 0" in g.explanation
    assert gates["max_p95_ms"].observed == 250.0
    # (0.011·20/19) / (0.01·20/17)
    assert gates["max_cost_per_pass_ratio"].observed == pytest.approx((0.22 / 19) / (0.2 / 17))


def test_each_gate_fails_and_says_why() -> None:
    result = make_result(wrong={"v1": {0}, "v2": {0, 1, 2, 3, 4}}, latency={"v2": 900.0}, cost={"v1": 0.01, "v2": 0.03})
    gates = by_name(
        evaluate_gates(
            Gates(min_pass_rate=0.8, max_regression=0.05, max_p95_ms=500, max_cost_per_pass_ratio=1.5), result
        )
    )
    assert [g.name for g in failed(gates.values())] == [
        "min_pass_rate",
        "max_regression",
        "max_p95_ms",
        "max_cost_per_pass_ratio",
    ]
    assert "below the required 80.0%" in gates["min_pass_rate"].explanation
    reg = gates["max_regression"]
    assert reg.observed == pytest.approx(0.2) and "more than the allowed 5.0%" in reg.explanation
    assert "McNemar p = " in reg.explanation and "broke 4" in reg.explanation
    assert "p95 900 ms at concurrency 4; over the limit of 500 ms" in gates["max_p95_ms"].explanation
    assert gates["max_cost_per_pass_ratio"].observed == pytest.approx((0.6 / 15) / (0.2 / 19))


def test_without_baseline_regression_and_cost_are_skipped() -> None:
    result = make_result(wrong={"v2": {0}}, baseline=None)
    gates = by_name(evaluate_gates(Gates(min_pass_rate=0.5, max_cost_per_pass_ratio=1.0), result))
    for name in ("max_regression", "max_cost_per_pass_ratio"):
        g = gates[name]
        assert g.skipped and g.passed and g.verdict == "skip" and g.explanation == "skipped: no baseline"
    assert gates["max_p95_ms"].skipped and gates["max_p95_ms"].explanation == "skipped: not configured"
    assert not gates["min_pass_rate"].skipped and all_passed(gates.values())


def test_cost_gate_edge_cases() -> None:
    cfg = Gates(max_cost_per_pass_ratio=1.5)
    unknown = by_name(evaluate_gates(cfg, make_result(wrong={}, cost={"v1": None})))["max_cost_per_pass_ratio"]
    assert unknown.skipped and unknown.explanation == "skipped: cost unknown for v1"
    free = by_name(evaluate_gates(cfg, make_result(wrong={}, cost={"v1": 0.0, "v2": 0.0})))["max_cost_per_pass_ratio"]
    assert free.passed and free.observed == 1.0
    paid = by_name(evaluate_gates(cfg, make_result(wrong={}, cost={"v1": 0.0, "v2": 0.01})))["max_cost_per_pass_ratio"]
    assert not paid.passed and paid.observed is None and "inf×" in paid.explanation
    none_pass = make_result(wrong={"v2": set(range(20))})
    g = by_name(evaluate_gates(cfg, none_pass))["max_cost_per_pass_ratio"]
    assert not g.passed and "passed no case" in g.explanation


def test_p95_gate_fails_when_nothing_returned() -> None:
    async def call(release: str, case: Case) -> Outcome:
        return Outcome("", latency_ms=1.0, error="timeout")

    cases = [Case(id="a", expect=(Expectation("equals", {"value": "x"}),), variables={})]
    result = asyncio.run(_run_eval(cases, call, candidate="v2"))
    g = by_name(evaluate_gates(Gates(max_p95_ms=100), result))["max_p95_ms"]
    assert not g.passed and g.observed is None and "no responses" in g.explanation


def run_failing(failure: str, baseline: str | None) -> list[GateResult]:
    """Every run fails: its request (``failure`` "request") or its scorer (an answer that never
    matches), on both releases."""

    async def call(release: str, case: Case) -> Outcome:
        if failure == "request":
            return Outcome("", latency_ms=1.0, error="HTTP 502: every target failed")
        return Outcome("something else", latency_ms=1.0, cost_usd=0.01)

    cases = [Case(id=f"c{i}", expect=(Expectation("equals", {"value": "x"}),), variables={}) for i in range(5)]
    return evaluate_gates(Gates(), asyncio.run(_run_eval(cases, call, candidate="v2", baseline=baseline)))


@pytest.mark.parametrize("baseline", [None, "v1"])
@pytest.mark.parametrize("failure", ["request", "scorer"])
def test_a_candidate_that_passed_nothing_fails_whatever_the_threshold(failure: str, baseline: str | None) -> None:
    # The default gates (min_pass_rate 0) passed a candidate whose every request failed, and
    # marked it evaluated; beside a baseline that failed alike, "no regression" passed too.
    gates = run_failing(failure, baseline)
    assert not all_passed(gates)
    g = by_name(gates)["min_pass_rate"]
    assert not g.passed and g.observed == 0.0 and "v2 passed none of its 5 runs" in g.explanation
    if failure == "request":
        assert "every request failed, the first with HTTP 502: every target failed" in g.explanation


def test_gate_result_round_trip() -> None:
    g = GateResult("max_p95_ms", False, 900.0, 500.0, "over", skipped=False)
    assert GateResult.from_dict(g.to_dict()) == g


def test_cost_per_completed_task_known_answer() -> None:
    # 20 runs at $0.01, 4 fail: spend $0.20; review $0.50 × 20 = $10; escalation $3 × 4 = $12.
    # ($0.20 + $10 + $12) ÷ 16 passed = $22.20 / 16 = $1.3875 per completed task.
    result = make_result(wrong={"v2": {0, 1, 2, 3}}, baseline=None)
    people = HumanCosts.of(0.5, 3.0)
    assert cost_per_completed_task(result.summaries["v2"], people) == pytest.approx(1.3875)
    passing = by_name(evaluate_gates(Gates(max_cost_per_completed_task=1.39), result, people))
    g = passing["max_cost_per_completed_task"]
    assert g.passed and not g.skipped and g.observed == pytest.approx(1.3875) and g.threshold == 1.39
    assert "÷ 16 passed = $1.387500 per completed task; within the allowed $1.39" in g.explanation
    failing = by_name(evaluate_gates(Gates(max_cost_per_completed_task=1.38), result, people))
    assert not failing["max_cost_per_completed_task"].passed
    assert "over the allowed $1.38" in failing["max_cost_per_completed_task"].explanation


def test_cost_per_completed_task_without_people_is_spend_per_pass() -> None:
    # No review or escalation cost: $0.20 ÷ 16 = $0.0125, the same as cost per pass.
    result = make_result(wrong={"v2": {0, 1, 2, 3}}, baseline=None)
    g = by_name(evaluate_gates(Gates(max_cost_per_completed_task=0.013), result))["max_cost_per_completed_task"]
    assert g.passed and g.observed == pytest.approx(0.0125) == result.summaries["v2"].cost_per_pass
    # Escalation alone: ($0.20 + $2 × 4) ÷ 16 = $0.5125.
    assert cost_per_completed_task(result.summaries["v2"], HumanCosts.of(None, 2.0)) == pytest.approx(0.5125)


def test_cost_per_completed_task_gate_edge_cases() -> None:
    cfg = Gates(max_cost_per_completed_task=1.0)
    off = by_name(evaluate_gates(Gates(), make_result(wrong={})))["max_cost_per_completed_task"]
    assert off.skipped and off.explanation == "skipped: not configured"
    unknown = by_name(evaluate_gates(cfg, make_result(wrong={}, cost={"v2": None})))["max_cost_per_completed_task"]
    assert unknown.skipped and unknown.passed and unknown.explanation == "skipped: cost unknown for v2"
    none_pass = by_name(evaluate_gates(cfg, make_result(wrong={"v2": set(range(20))}), HumanCosts.of(0.1, 0.1)))
    g = none_pass["max_cost_per_completed_task"]
    assert not g.passed and g.observed is None and "nothing was completed" in g.explanation


def test_task_config_takes_human_costs_and_the_gate() -> None:
    from pydantic import ValidationError

    from turnout.config import TaskConfig

    task = TaskConfig(
        route=["a"], review_cost_usd=0.5, escalation_cost_usd=3, gates=Gates(max_cost_per_completed_task=2)
    )
    assert (task.review_cost_usd, task.escalation_cost_usd, task.gates.max_cost_per_completed_task) == (0.5, 3, 2)
    assert TaskConfig(route=["a"]).review_cost_usd is None
    with pytest.raises(ValidationError):
        TaskConfig(route=["a"], escalation_cost_usd=-1)
    with pytest.raises(ValidationError):
        Gates(max_cost_per_completed_task=0)
