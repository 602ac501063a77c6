"""Batched counting (turnout.observe.tally) renders exactly what one-by-one counting renders."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from turnout.observe.tally import Direct, Tally, observe_all

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def pair() -> tuple[CollectorRegistry, Histogram, Counter]:
    registry = CollectorRegistry()
    histogram = Histogram("t_seconds", "t", ["task"], buckets=BUCKETS, registry=registry)
    counter = Counter("t_requests", "t", ["task"], registry=registry)
    return registry, histogram, counter


def render(registry: CollectorRegistry) -> list[str]:
    return sorted(line for line in generate_latest(registry).decode().splitlines() if "_created" not in line)


amounts = st.lists(
    st.one_of(
        st.sampled_from([*BUCKETS, 0.0, -1.0, math.inf, 1e9]),
        st.floats(min_value=-10, max_value=100, allow_nan=False),
    ),
    max_size=60,
)


@given(amounts)
def test_a_batch_renders_as_one_by_one(values: list[float]) -> None:
    one_by_one, h1, c1 = pair()
    batched, h2, c2 = pair()
    for v in values:
        h1.labels("a").observe(v)
        c1.labels("a").inc(2)
    tally = Tally()
    for v in values:
        tally.observe(h2.labels("a"), v)
        tally.inc(c2.labels("a"), 2)
    tally.apply()
    assert render(batched) == render(one_by_one)
    tally.apply()  # applied once: a second apply moves nothing
    assert render(batched) == render(one_by_one)


def test_direct_moves_the_metric_at_once() -> None:
    registry, histogram, counter = pair()
    Direct.observe(histogram.labels("a"), 0.3)
    Direct.inc(counter.labels("a"))
    text = "\n".join(render(registry))
    assert 't_seconds_bucket{le="0.5",task="a"} 1.0' in text and 't_requests_total{task="a"} 1.0' in text


class Plain:
    """A histogram without prometheus_client's fields: observed one by one."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def observe(self, amount: float) -> None:
        self.seen.append(amount)


@pytest.mark.parametrize("values", [[0.1, 0.2], [0.1, math.nan]])
def test_an_unknown_histogram_or_a_nan_is_observed_one_by_one(values: list[float]) -> None:
    plain = Plain()
    observe_all(plain, values)
    assert plain.seen[0] == 0.1 and len(plain.seen) == 2
    _, histogram, _ = pair()
    child: Any = histogram.labels("a")
    observe_all(child, values)  # a NaN: prometheus_client's own observe decides
    assert child._sum.get() == sum(values) or math.isnan(child._sum.get())
