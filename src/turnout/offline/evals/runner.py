"""Run a golden set against a candidate release (and optionally a baseline) and score it.

    result = await run_eval(cases, call, candidate="v2", baseline="v1", concurrency=4, repeat=1)

``call(release, case)`` is the caller's: it sends one case through turnout's real request path
as that release and returns an ``Outcome``. Both releases see the same cases, interleaved
(case 1 baseline, case 1 candidate, case 2 …) so that load and drift fall on both alike. At most
``concurrency`` cases are in flight (calls and their scoring together). A call that raises or
returns an ``error`` fails the case without running its scorers.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from turnout.offline.evals.cases import Case
from turnout.offline.evals.judge import build_scorers
from turnout.offline.evals.scoring import JudgeFn, Score, Scorer, score_case
from turnout.offline.evals.stats import Interval, PairedComparison, compare_paired, cost_per_pass, percentile, wilson


@dataclass(frozen=True, slots=True)
class Outcome:
    output: str
    latency_ms: float
    cost_usd: float | None = None
    error: str | None = None  # the request failed: no output to score

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "latency_ms": self.latency_ms, "cost_usd": self.cost_usd, "error": self.error}


Call = Callable[[str, Case], Awaitable[Outcome]]
Progress = Callable[[int, int], None]  # (done, total) after each run


@dataclass(frozen=True, slots=True)
class Run:
    """One release on one case, one repeat."""

    release: str
    case_id: str
    repeat: int
    outcome: Outcome
    scores: tuple[Score, ...]
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "release": self.release,
            "case_id": self.case_id,
            "repeat": self.repeat,
            "outcome": self.outcome.to_dict(),
            "scores": [s.to_dict() for s in self.scores],
            "passed": self.passed,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Run:
        return cls(
            release=d["release"],
            case_id=d["case_id"],
            repeat=d["repeat"],
            outcome=Outcome(**d["outcome"]),
            scores=tuple(Score.from_dict(s) for s in d["scores"]),
            passed=d["passed"],
        )


@dataclass(frozen=True, slots=True)
class ReleaseSummary:
    """Aggregates for one release. With repeats, ``pass_rate`` is the mean pass share over
    cases and the interval uses the number of cases as n (repeats of a case are not independent)."""

    release: str
    cases: int
    runs: int
    passed_runs: int
    errors: int
    pass_rate: float
    interval: Interval
    p50_ms: float | None  # over runs that returned (errors excluded)
    p95_ms: float | None
    cost_usd: float | None  # all runs; None when no run reported a cost
    cost_per_pass: float | None  # None: unknown cost, or nothing passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "release": self.release,
            "cases": self.cases,
            "runs": self.runs,
            "passed_runs": self.passed_runs,
            "errors": self.errors,
            "pass_rate": self.pass_rate,
            "interval": self.interval.to_dict(),
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "cost_usd": self.cost_usd,
            "cost_per_pass": self.cost_per_pass,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReleaseSummary:
        return cls(**{**d, "interval": Interval(**d["interval"])})


@dataclass(frozen=True, slots=True)
class EvalResult:
    candidate: str
    baseline: str | None
    cases: tuple[Case, ...]
    runs: tuple[Run, ...]  # in case order, then repeat, then baseline before candidate
    summaries: dict[str, ReleaseSummary]
    comparison: PairedComparison | None  # None without a baseline
    concurrency: int
    repeat: int
    started_at: float  # unix time
    duration_s: float
    task: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # the caller's: versions, config path…

    @property
    def releases(self) -> tuple[str, ...]:
        return (self.candidate,) if self.baseline is None else (self.baseline, self.candidate)

    def runs_for(self, case_id: str, release: str) -> list[Run]:
        return [r for r in self.runs if r.case_id == case_id and r.release == release]

    def pass_share(self, case_id: str, release: str) -> float:
        runs = self.runs_for(case_id, release)
        return sum(r.passed for r in runs) / len(runs) if runs else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "candidate": self.candidate,
            "baseline": self.baseline,
            "concurrency": self.concurrency,
            "repeat": self.repeat,
            "started_at": self.started_at,
            "duration_s": self.duration_s,
            "meta": self.meta,
            "summaries": {k: v.to_dict() for k, v in self.summaries.items()},
            "comparison": self.comparison.to_dict() if self.comparison else None,
            "cases": [c.to_dict() for c in self.cases],
            "runs": [r.to_dict() for r in self.runs],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalResult:
        return cls(
            candidate=d["candidate"],
            baseline=d["baseline"],
            cases=tuple(Case.from_dict(c) for c in d["cases"]),
            runs=tuple(Run.from_dict(r) for r in d["runs"]),
            summaries={k: ReleaseSummary.from_dict(v) for k, v in d["summaries"].items()},
            comparison=PairedComparison.from_dict(d["comparison"]) if d["comparison"] else None,
            concurrency=d["concurrency"],
            repeat=d["repeat"],
            started_at=d["started_at"],
            duration_s=d["duration_s"],
            task=d.get("task"),
            meta=dict(d.get("meta", {})),
        )


async def run_eval(
    cases: Sequence[Case],
    call: Call,
    *,
    candidate: str,
    baseline: str | None = None,
    concurrency: int = 4,
    repeat: int = 1,
    scorers: Mapping[str, Scorer] | None = None,
    judge: JudgeFn | None = None,
    judge_target: str | None = None,
    progress: Progress | None = None,
    task: str | None = None,
    seed: int = 0,
) -> EvalResult:
    """Run every case ``repeat`` times on each release and score it; see the module docstring.
    ``scorers`` defaults to every registered scorer, the ``judge`` one wired to ``judge``."""
    if concurrency < 1 or repeat < 1:
        raise ValueError("concurrency and repeat must be at least 1")
    if not cases:
        raise ValueError("no cases to run")
    if baseline == candidate:
        raise ValueError("baseline and candidate are the same release")
    active = dict(scorers) if scorers is not None else build_scorers(judge, judge_target=judge_target)
    releases = (candidate,) if baseline is None else (baseline, candidate)
    jobs = [(case, k, rel) for case in cases for k in range(repeat) for rel in releases]
    slots = asyncio.Semaphore(concurrency)
    done = 0
    results: list[Run | None] = [None] * len(jobs)
    started, t0 = time.time(), time.monotonic()

    async def one(i: int, case: Case, k: int, release: str) -> None:
        nonlocal done
        async with slots:
            outcome = await _call(call, release, case)
            if outcome.error is not None:
                scores: tuple[Score, ...] = (Score(False, None, f"request failed: {outcome.error}"),)
                passed = False
            else:
                scores, passed = await score_case(outcome.output, case, active)
        results[i] = Run(release, case.id, k, outcome, scores, passed)
        done += 1
        if progress is not None:
            progress(done, len(jobs))

    async with asyncio.TaskGroup() as tg:
        for i, (case, k, rel) in enumerate(jobs):
            tg.create_task(one(i, case, k, rel))
    runs = tuple(r for r in results if r is not None)
    summaries = {rel: summarize(rel, cases, runs) for rel in releases}
    comparison = None
    if baseline is not None:
        shares = {rel: _shares(runs, cases, rel) for rel in releases}
        comparison = compare_paired(shares[baseline], shares[candidate], seed=seed)
    return EvalResult(
        candidate=candidate,
        baseline=baseline,
        cases=tuple(cases),
        runs=runs,
        summaries=summaries,
        comparison=comparison,
        concurrency=concurrency,
        repeat=repeat,
        started_at=started,
        duration_s=time.monotonic() - t0,
        task=task,
    )


async def _call(call: Call, release: str, case: Case) -> Outcome:
    t0 = time.monotonic()
    try:
        return await call(release, case)
    except Exception as exc:  # the caller's failure is this run's, not the eval's
        return Outcome("", (time.monotonic() - t0) * 1000, None, f"{type(exc).__name__}: {exc}")


def _shares(runs: Sequence[Run], cases: Sequence[Case], release: str) -> list[float]:
    """Each case's pass share (0..1) over its repeats on ``release``, in case order."""
    tally: dict[str, list[int]] = {}
    for r in runs:
        if r.release == release:
            t = tally.setdefault(r.case_id, [0, 0])
            t[0] += r.passed
            t[1] += 1
    return [tally[c.id][0] / tally[c.id][1] if c.id in tally else 0.0 for c in cases]


def summarize(release: str, cases: Sequence[Case], runs: Sequence[Run]) -> ReleaseSummary:
    mine = [r for r in runs if r.release == release]
    n_cases = len(cases)
    shares = _shares(mine, cases, release)
    latencies = [r.outcome.latency_ms for r in mine if r.outcome.error is None]
    costs = [r.outcome.cost_usd for r in mine if r.outcome.cost_usd is not None]
    total_cost = sum(costs) if costs else None
    passed_runs = sum(r.passed for r in mine)
    return ReleaseSummary(
        release=release,
        cases=n_cases,
        runs=len(mine),
        passed_runs=passed_runs,
        errors=sum(r.outcome.error is not None for r in mine),
        pass_rate=sum(shares) / n_cases if n_cases else 0.0,
        interval=wilson(sum(shares), n_cases),
        p50_ms=percentile(latencies, 50) if latencies else None,
        p95_ms=percentile(latencies, 95) if latencies else None,
        cost_usd=total_cost,
        cost_per_pass=cost_per_pass(total_cost, passed_runs),
    )


class TextProgress:
    """A progress callback drawing ``[#####-----]  12/40  30%  3.1/s`` on a terminal (stderr by
    default); when the stream is not a terminal, one line per tenth."""

    def __init__(self, stream: TextIO | None = None, *, width: int = 30, label: str = "eval") -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.label = label
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._t0 = time.monotonic()
        self._last_tenth = -1

    def __call__(self, done: int, total: int) -> None:
        frac = done / total if total else 1.0
        if not self.tty:
            tenth = int(frac * 10)
            if tenth == self._last_tenth:
                return
            self._last_tenth = tenth
        filled = round(frac * self.width)
        rate = done / max(time.monotonic() - self._t0, 1e-9)
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"{self.label} [{bar}] {done:>{len(str(total))}}/{total} {frac:4.0%} {rate:.1f}/s"
        end = "\n" if (done >= total or not self.tty) else ""
        self.stream.write(("\r" if self.tty else "") + line + end)
        self.stream.flush()
