"""Statistics for eval runs: Wilson intervals, the paired comparison of two releases on the same
cases (exact McNemar test and a seeded paired bootstrap), latency percentiles, cost per pass.

Pure functions over plain numbers, so each has a known answer to test against.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


@dataclass(frozen=True, slots=True)
class Interval:
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"low": self.low, "high": self.high}

    def __str__(self) -> str:
        return f"[{self.low:.3f}, {self.high:.3f}]"


def wilson(successes: float, n: int, z: float = Z95) -> Interval:
    """Wilson score interval for a proportion (95% by default). ``successes`` may be fractional
    (mean pass share over repeats × cases). No trials: the uninformative [0, 1]."""
    if n <= 0:
        return Interval(0.0, 1.0)
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # at 0/n and n/n the bound is exactly 0 or 1; floating point would land a hair inside
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return Interval(low, high)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: under no difference the discordant pairs split
    Binomial(b + c, ½). ``b``, ``c``: pairs where only one side passed."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    # integers until the division: 2·tail/2ⁿ (true division of ints is correctly rounded)
    return min(1.0, float(2 * tail / 2**n))


def paired_bootstrap(
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    iterations: int = 5000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """Percentile bootstrap CI of mean(candidate − baseline), resampling cases (pairs) with
    replacement. Values are per-case pass shares (0/1, or fractions with repeats)."""
    if len(baseline) != len(candidate):
        raise ValueError("paired samples must have the same length")
    n = len(baseline)
    if n == 0:
        return Interval(-1.0, 1.0)
    diffs = [c - b for b, c in zip(baseline, candidate, strict=True)]
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(iterations))
    alpha = (1 - confidence) / 2
    return Interval(percentile(means, alpha * 100), percentile(means, (1 - alpha) * 100))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default). ``q`` in [0, 100]."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def cost_per_pass(total_cost_usd: float | None, passes: float) -> float | None:
    """Spend on every attempt (failed ones too) ÷ passed attempts; None when the cost is unknown
    or nothing passed (an infinite cost per pass)."""
    if total_cost_usd is None or passes <= 0:
        return None
    return total_cost_usd / passes


@dataclass(frozen=True, slots=True)
class PairedComparison:
    """Candidate vs baseline on the same cases. A case's verdict for the McNemar counts is its
    majority over repeats (more than half passed); the bootstrap uses the pass shares."""

    n: int  # cases
    both_pass: int
    baseline_only: int  # candidate broke these
    candidate_only: int  # candidate fixed these
    both_fail: int
    difference: float  # candidate − baseline pass rate
    interval: Interval  # bootstrap CI of the difference
    p_value: float  # exact McNemar, two-sided

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "both_pass": self.both_pass,
            "baseline_only": self.baseline_only,
            "candidate_only": self.candidate_only,
            "both_fail": self.both_fail,
            "difference": self.difference,
            "interval": self.interval.to_dict(),
            "p_value": self.p_value,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PairedComparison:
        return cls(**{**d, "interval": Interval(**d["interval"])})


def compare_paired(
    baseline: Sequence[float], candidate: Sequence[float], *, iterations: int = 5000, seed: int = 0
) -> PairedComparison:
    """``baseline[i]`` and ``candidate[i]``: case i's pass share (0..1) under each release."""
    if len(baseline) != len(candidate):
        raise ValueError("paired samples must have the same length")
    n = len(baseline)
    counts = {(True, True): 0, (True, False): 0, (False, True): 0, (False, False): 0}
    for b, c in zip(baseline, candidate, strict=True):
        counts[(b > 0.5, c > 0.5)] += 1
    diff = (sum(candidate) - sum(baseline)) / n if n else 0.0
    return PairedComparison(
        n=n,
        both_pass=counts[(True, True)],
        baseline_only=counts[(True, False)],
        candidate_only=counts[(False, True)],
        both_fail=counts[(False, False)],
        difference=diff,
        interval=paired_bootstrap(baseline, candidate, iterations=iterations, seed=seed),
        p_value=mcnemar_exact(counts[(True, False)], counts[(False, True)]),
    )
