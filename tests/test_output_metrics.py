"""Output checks in Prometheus: ``turnout_output_checks_failed_total{task,reason}``,
``turnout_repairs_total{task}`` and ``turnout_escalations_total{task,to}``, fed from the ledger
row, scraped from ``/metrics`` after real requests through the App (a repair, an escalation to
a stronger target, one to a person, a refusal), and kept to bounded label values."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.asgi import request
from tests.conftest import AppFactory
from tests.fakes.upstream import FakeUpstream
from tests.test_metrics import metrics_of, row, runtime, scrape, value
from tests.test_output_checks import BAD, GOOD, LEAK, Setup, chat, config
from turnout.observe.metrics import NONE, OTHER
from turnout.serving.runtime import Runtime

__all__ = ["runtime"]  # the fixture, shared with test_metrics

FAILED = "turnout_output_checks_failed_total"
REPAIRS = "turnout_repairs_total"
ESCALATIONS = "turnout_escalations_total"


@pytest.fixture
async def setup(make_app: AppFactory, tmp_path: Path) -> AsyncIterator[Setup]:
    async with FakeUpstream() as small, FakeUpstream() as strong:
        small.reply, strong.reply = (BAD,), (GOOD,)
        app = await make_app(config(small, strong, tmp_path))
        yield Setup(app, small, strong)


async def metrics(setup: Setup) -> dict[str, list[Sample]]:
    resp = await request(setup.app, "GET", "/metrics")
    assert resp.status == 200
    return {f.name: f.samples for f in text_string_to_metric_families(resp.body.decode())}


async def test_repairs_escalations_and_failures_are_counted_on_metrics(setup: Setup) -> None:
    setup.small.queue = [(BAD,), (GOOD,)]
    assert (await chat(setup.app, "extract")).status == 200  # one schema failure, one repair
    setup.small.reply = (BAD,)  # the queue's last reply stays: back to failing
    assert (await chat(setup.app, "upgrade")).status == 200  # two failures, one repair, to strong
    assert (await chat(setup.app, "person")).status == 202  # one failure, to a person
    setup.small.reply = (LEAK,)
    assert (await chat(setup.app, "safe")).status == 502  # a leak, repaired into another leak
    m = await metrics(setup)
    failed, repairs, escalations = m["turnout_output_checks_failed"], m["turnout_repairs"], m["turnout_escalations"]
    assert value(failed, FAILED, task="extract", reason="schema") == 1
    assert value(failed, FAILED, task="upgrade", reason="schema") == 2
    assert value(failed, FAILED, task="person", reason="schema") == 1
    assert value(failed, FAILED, task="safe", reason="secrets") == 2
    assert value(repairs, REPAIRS, task="extract") == 1
    assert value(repairs, REPAIRS, task="upgrade") == 1
    assert value(repairs, REPAIRS, task="safe") == 1
    assert value(repairs, REPAIRS, task="person") == 0  # repair_attempts 0: straight to a person
    assert value(escalations, ESCALATIONS, task="upgrade", to="strong") == 1
    assert value(escalations, ESCALATIONS, task="person", to="human") == 1
    assert value(escalations, ESCALATIONS, task="safe") == 0
    assert b"AKIA" not in (await request(setup.app, "GET", "/metrics")).body  # never the leaked value


async def test_an_answer_that_passes_counts_nothing(setup: Setup) -> None:
    setup.small.reply = (GOOD,)
    assert (await chat(setup.app, "extract")).status == 200
    m = await metrics(setup)
    assert not [s for s in m["turnout_output_checks_failed"] if s.name == FAILED]
    assert not [s for s in m["turnout_repairs"] if s.name == REPAIRS]
    assert not [s for s in m["turnout_escalations"] if s.name == ESCALATIONS]


async def test_labels_stay_within_their_vocabularies(runtime: Runtime) -> None:
    m = metrics_of(runtime)
    m.observe(row(output_check="schema surprise json surprise", repairs=3, escalated_to="someone-else"))
    m.observe(row(task="unknown-task", output_check="max_chars", escalated_to="human"))
    m.observe(row(escalated_to="primary"))
    s = scrape(m)
    failed, escalations = s["turnout_output_checks_failed"], s["turnout_escalations"]
    assert value(failed, FAILED, task="chat", reason="schema") == 1
    assert value(failed, FAILED, task="chat", reason="json") == 1
    assert value(failed, FAILED, task="chat", reason=OTHER) == 2
    assert value(failed, FAILED, task=OTHER, reason="max_chars") == 1
    assert value(s["turnout_repairs"], REPAIRS, task="chat") == 3
    assert value(escalations, ESCALATIONS, task="chat", to=OTHER) == 1
    assert value(escalations, ESCALATIONS, task=OTHER, to="human") == 1
    assert value(escalations, ESCALATIONS, task="chat", to="primary") == 1
    labels = {(x.labels.get("task"), x.labels.get("to")) for x in escalations if x.name == ESCALATIONS}
    assert all(to in {"primary", "secondary", "human", OTHER, NONE} for _, to in labels)


async def test_a_row_without_output_checks_touches_no_output_series(runtime: Runtime) -> None:
    m = metrics_of(runtime)
    m.observe(row())
    s = scrape(m)
    for family, name in (("turnout_output_checks_failed", FAILED), ("turnout_repairs", REPAIRS)):
        assert not [x for x in s[family] if x.name == name]
