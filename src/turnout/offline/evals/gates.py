"""Gates: what a candidate must show on the golden set before it may take traffic.

=========================  ==========================================================  ==============
gate                       passes when                                                 skipped when
=========================  ==========================================================  ==============
min_pass_rate              candidate pass rate ≥ threshold, and some run passed         never
max_regression             baseline − candidate pass rate ≤ threshold (paired cases)    no baseline
max_p95_ms                 candidate p95 latency ≤ threshold                            not configured
max_cost_per_pass_ratio    candidate ÷ baseline cost per passed case ≤ threshold        no baseline, not
                                                                                        configured, or
                                                                                        cost unknown
max_cost_per_completed_    (candidate spend + review × runs + escalation × failed       not configured
task                       runs) ÷ passed runs ≤ threshold, in $                        or cost unknown
=========================  ==========================================================  ==============

``review`` and ``escalation`` are the task's ``review_cost_usd`` (a person reads every answer)
and ``escalation_cost_usd`` (a person handles every failed one); unset, each counts 0. Only
passed runs are completed tasks: a failure is paid for, not counted as done.

A candidate that passed no run fails ``min_pass_rate`` whatever its threshold (0 by default):
an eval whose every request failed (a target down, a wrong model name) or whose every scorer
failed (a judge that never answered) measured nothing, and must not mark the release evaluated
nor read as "no regression" beside a baseline that failed the same way.

Point estimates are compared, as the config documents; the explanations quote the intervals so
that a reader can tell a clear result from a lucky one. A skipped gate counts as passed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from turnout.config import Gates
from turnout.offline.evals.runner import EvalResult, ReleaseSummary


@dataclass(frozen=True, slots=True)
class GateResult:
    name: str
    passed: bool  # True when skipped
    observed: float | None
    threshold: float | None
    explanation: str
    skipped: bool = False

    @property
    def verdict(self) -> str:
        return "skip" if self.skipped else "pass" if self.passed else "FAIL"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "skipped": self.skipped,
            "observed": self.observed,
            "threshold": self.threshold,
            "explanation": self.explanation,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GateResult:
        return cls(**d)


def all_passed(results: Iterable[GateResult]) -> bool:
    return all(g.passed for g in results)


def failed(results: Iterable[GateResult]) -> list[GateResult]:
    return [g for g in results if not g.passed]


def skipped(name: str, threshold: float | None, why: str) -> GateResult:
    """A gate that does not apply (counted as passed), and why."""
    return GateResult(name, True, None, threshold, f"skipped: {why}", skipped=True)


@dataclass(frozen=True, slots=True)
class HumanCosts:
    """What people cost per task: reviewing one answer, finishing one failed task ($)."""

    review_usd: float = 0.0
    escalation_usd: float = 0.0

    @classmethod
    def of(cls, review_usd: float | None, escalation_usd: float | None) -> HumanCosts:
        return cls(review_usd or 0.0, escalation_usd or 0.0)


def evaluate_gates(gates: Gates, result: EvalResult, people: HumanCosts = HumanCosts()) -> list[GateResult]:
    return [
        _min_pass_rate(gates, result),
        _max_regression(gates, result),
        _max_p95(gates, result),
        _cost_ratio(gates, result),
        _cost_per_completed(gates, result, people),
    ]


def cost_per_completed_task(summary: ReleaseSummary, people: HumanCosts) -> float | None:
    """(spend + review × runs + escalation × failed runs) ÷ passed runs; None: unknown spend or
    nothing passed."""
    return completed_cost(summary.cost_usd, summary.runs, summary.passed_runs, people)


def completed_cost(spend_usd: float | None, runs: int, passed: int, people: HumanCosts) -> float | None:
    """(spend + review × runs + escalation × failed runs) ÷ passed runs: what one completed task
    cost, people included; None when the spend is unknown or nothing passed."""
    if spend_usd is None or passed <= 0:
        return None
    return (spend_usd + people.review_usd * runs + people.escalation_usd * (runs - passed)) / passed


def _cost_per_completed(gates: Gates, result: EvalResult, people: HumanCosts) -> GateResult:
    name, threshold = "max_cost_per_completed_task", gates.max_cost_per_completed_task
    if threshold is None:
        return skipped(name, None, "not configured")
    s = result.summaries[result.candidate]
    if s.cost_usd is None:
        return skipped(name, threshold, f"cost unknown for {result.candidate}")
    observed = cost_per_completed_task(s, people)
    if observed is None:
        return GateResult(name, False, None, threshold, f"{result.candidate} passed no run: nothing was completed")
    ok = observed <= threshold
    failed_runs = s.runs - s.passed_runs
    return GateResult(
        name,
        ok,
        observed,
        threshold,
        f"(${s.cost_usd:.6f} spend + ${people.review_usd:g} review × {s.runs} runs + "
        f"${people.escalation_usd:g} escalation × {failed_runs} failed) ÷ {s.passed_runs} passed = "
        f"${observed:.6f} per completed task; {'within' if ok else 'over'} the allowed ${threshold:g}",
    )


def _min_pass_rate(gates: Gates, result: EvalResult) -> GateResult:
    s = result.summaries[result.candidate]
    if s.passed_runs == 0:
        return GateResult("min_pass_rate", False, s.pass_rate, gates.min_pass_rate, _nothing_passed(result, s))
    ok = s.pass_rate >= gates.min_pass_rate
    return GateResult(
        "min_pass_rate",
        ok,
        s.pass_rate,
        gates.min_pass_rate,
        f"{result.candidate} passes {s.pass_rate:.1%} (95% CI {s.interval.low:.1%}–{s.interval.high:.1%}) of "
        f"{s.cases} cases; {'at least' if ok else 'below'} the required {gates.min_pass_rate:.1%}",
    )


def _nothing_passed(result: EvalResult, s: ReleaseSummary) -> str:
    if s.errors == s.runs:
        first = next((r.outcome.error for r in result.runs if r.release == s.release and r.outcome.error), None)
        why = f"every request failed, the first with {first[:200]}" if first else "every request failed"
    else:
        why = f"{s.errors} request(s) failed and no answer passed its expectations"
    return f"{s.release} passed none of its {s.runs} runs ({why}): the eval measured nothing that works"


def _max_regression(gates: Gates, result: EvalResult) -> GateResult:
    name, threshold = "max_regression", gates.max_regression
    cmp = result.comparison
    if result.baseline is None or cmp is None:
        return skipped(name, threshold, "no baseline")
    regression = 0.0 - cmp.difference  # 0.0 − x, not −x: no "-0.0%"
    ok = regression <= threshold
    lo, hi = 0.0 - cmp.interval.high, 0.0 - cmp.interval.low
    return GateResult(
        name,
        ok,
        regression,
        threshold,
        f"{result.baseline} − {result.candidate} = {regression:+.1%} (95% CI {lo:+.1%} to {hi:+.1%}, "
        f"McNemar p = {cmp.p_value:.3g}; candidate fixed {cmp.candidate_only}, broke {cmp.baseline_only}); "
        f"{'within' if ok else 'more than'} the allowed {threshold:.1%}",
    )


def _max_p95(gates: Gates, result: EvalResult) -> GateResult:
    name, threshold = "max_p95_ms", gates.max_p95_ms
    if threshold is None:
        return skipped(name, None, "not configured")
    s = result.summaries[result.candidate]
    if s.p95_ms is None:
        return GateResult(name, False, None, threshold, f"{result.candidate} returned no responses to time")
    ok = s.p95_ms <= threshold
    return GateResult(
        name,
        ok,
        s.p95_ms,
        threshold,
        f"{result.candidate} p95 {s.p95_ms:.0f} ms at concurrency {result.concurrency}; "
        f"{'within' if ok else 'over'} the limit of {threshold:.0f} ms",
    )


def _cost_ratio(gates: Gates, result: EvalResult) -> GateResult:
    name, threshold = "max_cost_per_pass_ratio", gates.max_cost_per_pass_ratio
    if threshold is None:
        return skipped(name, None, "not configured")
    if result.baseline is None:
        return skipped(name, threshold, "no baseline")
    base, cand = result.summaries[result.baseline], result.summaries[result.candidate]
    if base.cost_usd is None or cand.cost_usd is None:
        return skipped(
            name, threshold, "cost unknown for " + (result.baseline if base.cost_usd is None else result.candidate)
        )
    if cand.cost_per_pass is None:
        return GateResult(
            name, False, None, threshold, f"{result.candidate} passed no case: cost per pass is unbounded"
        )
    if base.cost_per_pass is None:
        return GateResult(
            name, True, None, threshold, f"{result.baseline} passed no case: any finite cost per pass is better"
        )
    if base.cost_per_pass == 0:
        ratio = 1.0 if cand.cost_per_pass == 0 else float("inf")
    else:
        ratio = cand.cost_per_pass / base.cost_per_pass
    ok = ratio <= threshold
    return GateResult(
        name,
        ok,
        ratio if math.isfinite(ratio) else None,
        threshold,
        f"${cand.cost_per_pass:.6f} vs ${base.cost_per_pass:.6f} per passed case = {ratio:.2f}×; "
        f"{'within' if ok else 'over'} the allowed {threshold:.2f}×",
    )
