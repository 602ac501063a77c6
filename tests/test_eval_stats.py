"""Statistics against answers worked out by hand."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from turnout.offline.evals.stats import (
    Interval,
    compare_paired,
    cost_per_pass,
    mcnemar_exact,
    paired_bootstrap,
    percentile,
    wilson,
)


def test_wilson_known_values() -> None:
    # 8/10: centre (0.8 + z²/20)/(1 + z²/10), the textbook [0.490, 0.943]
    iv = wilson(8, 10)
    assert iv.low == pytest.approx(0.4901625, abs=1e-6) and iv.high == pytest.approx(0.9433178, abs=1e-6)
    # 0/10 and 10/10 stay inside [0, 1] and are not degenerate
    assert wilson(0, 10).low == 0.0 and wilson(0, 10).high == pytest.approx(0.2775328, abs=1e-6)
    assert wilson(10, 10).high == 1.0 and wilson(10, 10).low == pytest.approx(0.7224672, abs=1e-6)
    assert wilson(0, 0) == Interval(0.0, 1.0)
    # symmetric around ½
    a, b = wilson(30, 100), wilson(70, 100)
    assert a.low == pytest.approx(1 - b.high) and a.high == pytest.approx(1 - b.low)


def test_mcnemar_exact_by_hand() -> None:
    # candidate fixes 10, breaks 2: 12 discordant pairs; P = 2·(C(12,0)+C(12,1)+C(12,2))/2¹² = 158/4096
    assert mcnemar_exact(2, 10) == pytest.approx(float(Fraction(158, 4096)))
    assert mcnemar_exact(10, 2) == mcnemar_exact(2, 10)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == 1.0  # two-sided tail capped at 1
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    # large counts: no overflow, and agrees with the normal approximation roughly
    p = mcnemar_exact(400, 500)
    z = (500 - 400) / math.sqrt(900)
    assert p == pytest.approx(math.erfc(z / math.sqrt(2)), rel=0.2)


def synthetic(n: int = 100, both: int = 70, fixed: int = 10, broke: int = 2) -> tuple[list[float], list[float]]:
    """n cases: ``both`` pass on each, candidate fixes ``fixed`` and breaks ``broke``; the rest fail on both."""
    base = [1.0] * both + [0.0] * fixed + [1.0] * broke
    cand = [1.0] * both + [1.0] * fixed + [0.0] * broke
    rest = n - len(base)
    return base + [0.0] * rest, cand + [0.0] * rest


def test_paired_comparison_on_synthetic_outcomes() -> None:
    base, cand = synthetic()
    c = compare_paired(base, cand, seed=7)
    assert (c.n, c.both_pass, c.candidate_only, c.baseline_only, c.both_fail) == (100, 70, 10, 2, 18)
    assert c.difference == pytest.approx(0.08)
    assert c.p_value == pytest.approx(158 / 4096)
    # the bootstrap CI agrees with the normal approximation of the paired difference:
    # d ∈ {+1 ×10, −1 ×2, 0 ×88}: var = 12/100 − 0.08² = 0.1136; se = √(0.1136/100) = 0.0337
    se = math.sqrt((12 / 100 - 0.08**2) / 100)
    assert c.interval.low == pytest.approx(0.08 - 1.96 * se, abs=0.02)
    assert c.interval.high == pytest.approx(0.08 + 1.96 * se, abs=0.02)
    assert c.interval.low > 0  # a significant improvement, as McNemar says (p < 0.05)


def test_bootstrap_is_seeded_and_degenerate_cases_are_exact() -> None:
    base, cand = synthetic()
    assert paired_bootstrap(base, cand, seed=1) == paired_bootstrap(base, cand, seed=1)
    same = [1.0, 0.0, 1.0, 1.0]
    assert paired_bootstrap(same, same) == Interval(0.0, 0.0)
    assert paired_bootstrap([0.0] * 5, [1.0] * 5) == Interval(1.0, 1.0)
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap([1.0], [1.0, 0.0])


def test_no_difference_is_not_significant() -> None:
    base, cand = synthetic(fixed=5, broke=5)
    c = compare_paired(base, cand)
    assert c.difference == 0 and c.p_value == 1.0 and c.interval.low < 0 < c.interval.high


def test_repeats_use_majority_for_mcnemar_and_shares_for_the_difference() -> None:
    # three repeats: shares 2/3 (majority pass) vs 1/3 (majority fail)
    c = compare_paired([2 / 3, 1.0, 0.0], [1 / 3, 1.0, 0.0])
    assert (c.baseline_only, c.candidate_only, c.both_pass, c.both_fail) == (1, 0, 1, 1)
    assert c.difference == pytest.approx(-1 / 9)


def test_percentile_interpolates_like_numpy() -> None:
    xs = [float(x) for x in range(1, 101)]  # 1..100
    assert percentile(xs, 50) == pytest.approx(50.5)
    assert percentile(xs, 95) == pytest.approx(95.05)
    assert percentile([5.0], 95) == 5.0
    assert percentile([3.0, 1.0, 2.0], 0) == 1.0 and percentile([3.0, 1.0, 2.0], 100) == 3.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_cost_per_pass() -> None:
    assert cost_per_pass(1.0, 4) == 0.25
    assert cost_per_pass(None, 4) is None
    assert cost_per_pass(1.0, 0) is None
