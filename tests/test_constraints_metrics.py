"""``turnout_constraint_skips_total{task,target,constraint}``: the targets a caller's limits
left out, counted from the ledger row's ``constraints`` record, label values kept bounded."""

from __future__ import annotations

from tests.test_metrics import metrics_of, row, runtime, scrape, value
from turnout.observe.metrics import OTHER
from turnout.routing.constraints import COST, LATENCY, Constraints, Skip, skipped_in
from turnout.serving.runtime import Runtime

__all__ = ["runtime"]  # the fixture, shared with test_metrics

SKIPS = "turnout_constraint_skips_total"


def test_the_record_reads_back_as_its_skips() -> None:
    skips = [Skip("primary", LATENCY, 900.0), Skip("a:b", COST, 0.2)]  # a target name may hold a colon
    assert skipped_in(Constraints(800.0, 0.01).record(skips) or "") == [("primary", LATENCY), ("a:b", COST)]
    assert skipped_in("max_latency_ms=800") == []


async def test_each_skip_is_counted_by_task_target_and_constraint(runtime: Runtime) -> None:
    metrics = metrics_of(runtime)
    record = Constraints(800.0, 0.01).record([Skip("primary", LATENCY, 900.0), Skip("secondary", COST, 0.2)])
    metrics.observe(row(target="secondary", constraints=record))
    metrics.observe(row(target=None, status=422, error_class="constraint_unsatisfiable", constraints=record))
    metrics.observe(row(constraints="max_latency_ms=800"))  # limits that skipped nothing
    samples = scrape(metrics)["turnout_constraint_skips"]
    assert value(samples, SKIPS, task="chat", target="primary", constraint=LATENCY) == 2
    assert value(samples, SKIPS, task="chat", target="secondary", constraint=COST) == 2
    assert len([s for s in samples if s.name == SKIPS]) == 2


async def test_unknown_names_stay_bounded(runtime: Runtime) -> None:
    metrics = metrics_of(runtime)
    metrics.observe(row(constraints="max_cost_usd=1 skipped=gone-target:max_cost_usd,primary:bogus"))
    samples = scrape(metrics)["turnout_constraint_skips"]
    assert value(samples, SKIPS, target=OTHER, constraint=COST) == 1
    assert value(samples, SKIPS, target="primary", constraint=OTHER) == 1
