"""Counting many rows into Prometheus metrics at once (``turnout.observe.metrics``): each
counter's increments summed, each histogram's observations bucketed, then every child moved
once. prometheus_client takes a lock per ``inc`` and walks the buckets in Python per
``observe``; a batch of 256 rows takes each lock once.

``Direct`` has the same two methods and moves the metric at once (multiprocess mode, where
another process may render at any time).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from typing import Any


class Direct:
    @staticmethod
    def inc(child: Any, amount: float = 1.0) -> None:
        child.inc(amount)

    @staticmethod
    def observe(child: Any, amount: float) -> None:
        child.observe(amount)


class Tally:
    def __init__(self) -> None:
        self.sums: dict[Any, float] = {}
        self.observed: dict[Any, list[float]] = {}

    def inc(self, child: Any, amount: float = 1.0) -> None:
        sums = self.sums
        sums[child] = sums.get(child, 0.0) + amount

    def observe(self, child: Any, amount: float) -> None:
        if (amounts := self.observed.get(child)) is None:
            self.observed[child] = [amount]
        else:
            amounts.append(amount)

    def apply(self) -> None:
        for child, amount in self.sums.items():
            child.inc(amount)
        for child, amounts in self.observed.items():
            observe_all(child, amounts)
        self.sums, self.observed = {}, {}


def observe_all(histogram: Any, amounts: list[float]) -> None:
    """``histogram.observe`` for each amount, as one move of its sum and of each bucket touched:
    an amount counts in the first bucket whose upper bound is at least it (``bisect_left``), as
    prometheus_client counts it. A histogram without the fields this reads (another version of
    the library), or a NaN among the amounts, is observed one by one."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets) or _has_nan(amounts):
        for amount in amounts:
            histogram.observe(amount)
        return
    total.inc(sum(amounts))
    for at, n in Counter(bisect_left(bounds, amount) for amount in amounts).items():
        if at < len(buckets):  # past +Inf: nothing (prometheus_client counts none either)
            buckets[at].inc(n)


def _has_nan(amounts: list[float]) -> bool:
    return any(a != a for a in amounts)
