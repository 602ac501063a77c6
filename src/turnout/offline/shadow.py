"""A shadow release's sample, summed up and judged: the pairs of ``turnout.releases.shadowstore``
side by side (served vs shadow), with intervals, and the gates it must pass before the shadow
may become a canary.

A pair's verdict on each side is its scorers' (the task's ``scoring.scorers`` and the release's
output schema); where neither exists, an answer counts as passed and an error as failed, and
the figures say ``unscored``. A shadow call that failed is a failed task for the candidate (it
would have been a failed request), and has no agreement to count.

Gates (the task's ``gates`` and ``shadow``), on the sample::

    min_pairs                    pairs ≥ shadow.min_pairs (a verdict needs a sample)
    min_agreement                agreement ≥ shadow.min_agreement          (skipped when unset)
    min_pass_rate                shadow pass rate ≥ gates.min_pass_rate, and some pair passed
    max_regression               served − shadow pass rate ≤ gates.max_regression (same requests)
    max_p95_ms                   shadow p95 ≤ gates.max_p95_ms             (skipped when unset)
    max_cost_per_pass_ratio      shadow ÷ served cost per pass ≤ threshold (skipped when unset)
    max_cost_per_completed_task  (shadow spend + review × pairs + escalation × failed) ÷ passed
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from turnout.config import TaskConfig
from turnout.offline.evals.gates import GateResult, HumanCosts, completed_cost, skipped
from turnout.offline.evals.stats import Z95, Interval, cost_per_pass, mcnemar_exact, percentile, wilson
from turnout.releases.shadowstore import Pair


@dataclass(frozen=True, slots=True)
class Side:
    """One side of the pairs: its release, pass rate and interval, latency, cost."""

    release: str | None
    scored: int  # verdicts from scorers; the rest were counted by answered or not
    passed: int
    pass_rate: float
    pass_interval: Interval
    p50_ms: float | None
    p95_ms: float | None
    cost_usd: float | None  # total; None: no pair was priced
    mean_cost_usd: float | None
    cost_interval: Interval | None  # of the mean cost per request, 95 %

    def cost_per_pass(self) -> float | None:
        return cost_per_pass(self.cost_usd, self.passed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "release": self.release,
            "scored": self.scored,
            "passed": self.passed,
            "pass_rate": self.pass_rate,
            "pass_interval": self.pass_interval.to_dict(),
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "cost_usd": self.cost_usd,
            "mean_cost_usd": self.mean_cost_usd,
            "cost_interval": None if self.cost_interval is None else self.cost_interval.to_dict(),
            "cost_per_pass_usd": self.cost_per_pass(),
        }


@dataclass(frozen=True, slots=True)
class ShadowSummary:
    task: str
    release: str
    pairs: int
    errors: int  # shadow calls that failed
    compared: int  # pairs with two answers
    agreed: int
    agreement: float | None
    agreement_interval: Interval
    served: Side
    shadow: Side
    only_served_passed: int  # pairs where the served answer passed and the shadow's did not
    only_shadow_passed: int
    first_at: float | None
    last_at: float | None
    judge_calls: int = 0  # ``compare: judge``: pairs the judge was asked about (and priced)
    judge_cost_usd: float | None = None

    @property
    def error_rate(self) -> float | None:
        return None if self.pairs == 0 else self.errors / self.pairs

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "release": self.release,
            "pairs": self.pairs,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "compared": self.compared,
            "agreed": self.agreed,
            "agreement": self.agreement,
            "agreement_interval": self.agreement_interval.to_dict(),
            "served": self.served.to_dict(),
            "shadow": self.shadow.to_dict(),
            "only_served_passed": self.only_served_passed,
            "only_shadow_passed": self.only_shadow_passed,
            "first_at": self.first_at,
            "last_at": self.last_at,
            "judge_calls": self.judge_calls,
            "judge_cost_usd": self.judge_cost_usd,
        }


def summarize(task: str, release: str, pairs: Sequence[Pair]) -> ShadowSummary:
    """The sample's figures; known answers by hand in the tests."""
    compared = [p for p in pairs if p.agree is not None]
    agreed = sum(1 for p in compared if p.agree)
    served_ok = [_served_pass(p) for p in pairs]
    shadow_ok = [_shadow_pass(p) for p in pairs]
    only_served = sum(1 for s, c in zip(served_ok, shadow_ok, strict=True) if s and not c)
    only_shadow = sum(1 for s, c in zip(served_ok, shadow_ok, strict=True) if c and not s)
    served_release = next((p.served_release for p in pairs if p.served_release), None)
    ats = [p.at for p in pairs]
    judged = [p.judge_cost_usd for p in pairs if p.judge_cost_usd is not None]
    return ShadowSummary(
        task=task,
        release=release,
        pairs=len(pairs),
        errors=sum(1 for p in pairs if p.status != 200),
        compared=len(compared),
        agreed=agreed,
        agreement=agreed / len(compared) if compared else None,
        agreement_interval=wilson(agreed, len(compared)),
        served=_side(
            served_release,
            served_ok,
            sum(1 for p in pairs if p.served_pass is not None),
            [p.served_ms for p in pairs],
            [p.served_cost_usd for p in pairs],
        ),
        shadow=_side(
            release,
            shadow_ok,
            sum(1 for p in pairs if p.shadow_pass is not None),
            [p.shadow_ms for p in pairs if p.status == 200],
            [p.shadow_cost_usd for p in pairs],
        ),
        only_served_passed=only_served,
        only_shadow_passed=only_shadow,
        first_at=min(ats) if ats else None,
        last_at=max(ats) if ats else None,
        judge_calls=len(judged),
        judge_cost_usd=sum(judged) if judged else None,
    )


def _served_pass(p: Pair) -> bool:
    return True if p.served_pass is None else p.served_pass


def _shadow_pass(p: Pair) -> bool:
    if p.status != 200:
        return False
    return True if p.shadow_pass is None else p.shadow_pass


def _side(
    release: str | None, verdicts: list[bool], scored: int, latencies: list[float], costs: list[float | None]
) -> Side:
    n, passed = len(verdicts), sum(verdicts)
    priced = [c for c in costs if c is not None]
    total = sum(priced) if priced else None
    mean = total / len(priced) if total is not None else None
    return Side(
        release=release,
        scored=scored,
        passed=passed,
        pass_rate=passed / n if n else 0.0,
        pass_interval=wilson(passed, n),
        p50_ms=percentile(latencies, 50) if latencies else None,
        p95_ms=percentile(latencies, 95) if latencies else None,
        cost_usd=total,
        mean_cost_usd=mean,
        cost_interval=_mean_interval(priced),
    )


def _mean_interval(values: list[float]) -> Interval | None:
    """Normal-approximation 95 % interval of the mean; None below two values."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = Z95 * sd / math.sqrt(n)
    return Interval(max(0.0, mean - half), mean + half)


# --- gates ---------------------------------------------------------------------------------


def passed_note(summary: ShadowSummary) -> str:
    """What a canary's transition records of the shadow sample that let it start."""
    agreement = "" if summary.agreement is None else f", agreement {summary.agreement:.1%}"
    return f" [shadow sample passed the gates: {summary.pairs} pairs{agreement}, pass {summary.shadow.pass_rate:.1%}]"


def refusal(summary: ShadowSummary, task: TaskConfig) -> str | None:
    """Why the shadow may not take traffic yet (each failing gate), or None when it may."""
    failed = [g for g in shadow_gates(summary, task) if not g.passed]
    if not failed:
        return None
    lines = [f"  {g.name}: {g.explanation}" for g in failed]
    return (
        f"release {summary.release!r} of task {summary.task!r} is in shadow and its sample does not pass the "
        "task's gates, so it may not take traffic yet:\n" + "\n".join(lines)
    )


def shadow_gates(summary: ShadowSummary, task: TaskConfig) -> list[GateResult]:
    """Every gate on the shadow sample, in the order of the module's table."""
    people = HumanCosts.of(task.review_cost_usd, task.escalation_cost_usd)
    return [
        _min_pairs(summary, task.shadow.min_pairs),
        _min_agreement(summary, task.shadow.min_agreement),
        _min_pass_rate(summary, task.gates.min_pass_rate),
        _max_regression(summary, task.gates.max_regression),
        _max_p95(summary, task.gates.max_p95_ms),
        _cost_ratio(summary, task.gates.max_cost_per_pass_ratio),
        _cost_per_completed(summary, task.gates.max_cost_per_completed_task, people),
    ]


def _min_pairs(s: ShadowSummary, need: int) -> GateResult:
    ok = s.pairs >= need
    return GateResult(
        "min_pairs", ok, float(s.pairs), float(need), f"{s.pairs} mirrored requests; {need} needed for a verdict"
    )


def _min_agreement(s: ShadowSummary, threshold: float | None) -> GateResult:
    name = "min_agreement"
    if threshold is None:
        return skipped(name, None, "not configured")
    if s.agreement is None:
        return GateResult(name, False, None, threshold, f"{s.release} answered no mirrored request")
    ok = s.agreement >= threshold
    ci = s.agreement_interval
    return GateResult(
        name,
        ok,
        s.agreement,
        threshold,
        f"{s.release} agrees with the served answer on {s.agreement:.1%} (95% CI {ci.low:.1%}–{ci.high:.1%}) of "
        f"{s.compared} pairs; {'at least' if ok else 'below'} the required {threshold:.1%}",
    )


def _min_pass_rate(s: ShadowSummary, threshold: float) -> GateResult:
    side, ci = s.shadow, s.shadow.pass_interval
    if s.pairs == 0:
        return GateResult("min_pass_rate", False, None, threshold, f"{s.release} has no mirrored request yet")
    if side.passed == 0:  # as the eval's gate: whatever the threshold, nothing passed is no evidence
        why = "every shadow call failed" if s.errors == s.pairs else "no answer passed its scorers"
        return GateResult(
            "min_pass_rate", False, side.pass_rate, threshold, f"{s.release} passed none of {s.pairs} pairs ({why})"
        )
    ok = side.pass_rate >= threshold
    how = "" if side.scored else " (unscored: answered counts as passed)"
    return GateResult(
        "min_pass_rate",
        ok,
        side.pass_rate,
        threshold,
        f"{s.release} passes {side.pass_rate:.1%} (95% CI {ci.low:.1%}–{ci.high:.1%}) of {s.pairs} mirrored "
        f"requests{how}; {'at least' if ok else 'below'} the required {threshold:.1%}",
    )


def _max_regression(s: ShadowSummary, threshold: float) -> GateResult:
    if s.pairs == 0:  # no pair says anything either way; min_pairs is the gate that fails
        return GateResult("max_regression", True, None, threshold, f"{s.release}: no mirrored request to compare yet")
    regression = s.served.pass_rate - s.shadow.pass_rate
    ok = regression <= threshold
    p = mcnemar_exact(s.only_served_passed, s.only_shadow_passed)
    return GateResult(
        "max_regression",
        ok,
        regression,
        threshold,
        f"{s.served.release} − {s.release} = {regression:+.1%} on the same {s.pairs} requests (McNemar p = {p:.3g}; "
        f"only served passed {s.only_served_passed}, only shadow {s.only_shadow_passed}); "
        f"{'within' if ok else 'more than'} the allowed {threshold:.1%}",
    )


def _max_p95(s: ShadowSummary, threshold: float | None) -> GateResult:
    name = "max_p95_ms"
    if threshold is None:
        return skipped(name, None, "not configured")
    if s.shadow.p95_ms is None:
        return GateResult(name, False, None, threshold, f"{s.release} answered no mirrored request")
    ok = s.shadow.p95_ms <= threshold
    return GateResult(
        name,
        ok,
        s.shadow.p95_ms,
        threshold,
        f"{s.release} p95 {s.shadow.p95_ms:.0f} ms on mirrored requests; "
        f"{'within' if ok else 'over'} the limit of {threshold:.0f} ms",
    )


def _cost_ratio(s: ShadowSummary, threshold: float | None) -> GateResult:
    name = "max_cost_per_pass_ratio"
    if threshold is None:
        return skipped(name, None, "not configured")
    # As the golden set's gate reads it (``turnout.offline.evals.gates``), the served release
    # in the baseline's place.
    if s.served.cost_usd is None or s.shadow.cost_usd is None:
        return skipped(name, threshold, "cost unknown")
    served, shadow = s.served.cost_per_pass(), s.shadow.cost_per_pass()
    if shadow is None:
        return GateResult(name, False, None, threshold, f"{s.release} passed nothing: cost per pass is unbounded")
    if served is None:
        return GateResult(
            name, True, None, threshold, "the served release passed nothing: any finite cost per pass is better"
        )
    ratio = shadow / served if served else (1.0 if shadow == 0 else math.inf)
    ok = ratio <= threshold
    return GateResult(
        name,
        ok,
        ratio if math.isfinite(ratio) else None,
        threshold,
        f"${shadow:.6f} ÷ ${served or 0:.6f} per passed request = {ratio:.2f}; "
        f"{'within' if ok else 'over'} the allowed {threshold:g}",
    )


def _cost_per_completed(s: ShadowSummary, threshold: float | None, people: HumanCosts) -> GateResult:
    name = "max_cost_per_completed_task"
    if threshold is None:
        return skipped(name, None, "not configured")
    if s.shadow.cost_usd is None:
        return skipped(name, threshold, "cost unknown")
    failed = s.pairs - s.shadow.passed
    observed = completed_cost(s.shadow.cost_usd, s.pairs, s.shadow.passed, people)
    if observed is None:
        return GateResult(name, False, None, threshold, f"{s.release} passed nothing: nothing was completed")
    ok = observed <= threshold
    return GateResult(
        name,
        ok,
        observed,
        threshold,
        f"(${s.shadow.cost_usd:.6f} spend + ${people.review_usd:g} review × {s.pairs} + ${people.escalation_usd:g} "
        f"escalation × {failed} failed) ÷ {s.shadow.passed} passed = ${observed:.6f} per completed task; "
        f"{'within' if ok else 'over'} the allowed ${threshold:g}",
    )
