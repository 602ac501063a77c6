"""Live scoring (``tasks.T.scoring``): a share of answers scored by reference-free scorers after
they went out; the verdict in the ledger row, ``/metrics``, ``turnout report quality`` and the
canary's ``min_live_pass_rate``. Scorers are checked at start-up like a golden set's."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.asgi import ledger_rows as rows
from tests.asgi import request
from tests.conftest import AppFactory
from tests.fakes.scripted import ScriptedProvider, Step
from turnout.cli.preflight import preflight
from turnout.config import CanaryConfig, validate
from turnout.errors import ConfigError
from turnout.ledger.record import LedgerRow
from turnout.ledger.store import ReleaseStats
from turnout.offline.reports.figures import compute
from turnout.releases.canary import metric_checks
from turnout.serving.app import App
from turnout.serving.scoring import LiveScoring

SCHEMA = {"type": "object", "required": ["order_id"]}
SCORING = {"rate": 1.0, "scorers": [{"scorer": "json_schema", "schema": SCHEMA}, {"scorer": "regex", "pattern": "A-"}]}


def config(scoring: dict[str, Any] | None = SCORING, **task: Any) -> dict[str, Any]:
    return {
        "store": {"kind": "memory", "flush_interval_ms": 10},
        "targets": {"up": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}},
        "tasks": {
            "orders": {"route": ["up"], **({"scoring": scoring} if scoring else {}), **task},
            "other": {"route": ["up"]},
        },
    }


async def ask(app: App, task: str = "orders", stream: bool = False) -> int:
    body = {"model": task, "messages": [{"role": "user", "content": "order?"}], "stream": stream}
    return (await request(app, "POST", "/v1/chat/completions", body)).status


async def test_each_answer_is_scored_into_its_row_and_metrics(make_app: AppFactory) -> None:
    good, bad_json, no_match = '{"order_id": "A-17"}', "not json", '{"order_id": "B-1"}'
    fake = ScriptedProvider("up", Step(text=good), Step(text=bad_json), Step(text=no_match), Step(text=good))
    app = await make_app(config(), {"up": fake})
    assert [await ask(app) for _ in range(3)] == [200, 200, 200]
    assert await ask(app, stream=True) == 200  # a stream's text is scored once whole
    assert await ask(app, "other") == 200  # a task without scoring: nothing
    found = {r.request_id: r for r in await rows(app)}
    verdicts = sorted(((r.started_at, r.task, r.live_pass) for r in found.values()), key=lambda t: t[0])
    assert [(task, verdict) for _, task, verdict in verdicts] == [
        ("orders", True),
        ("orders", False),
        ("orders", False),
        ("orders", True),
        ("other", None),
    ]
    scraped = (await request(app, "GET", "/metrics")).body.decode()
    assert 'turnout_live_scores_total{release="none",result="pass",task="orders"} 2.0' in scraped
    assert 'turnout_live_scores_total{release="none",result="fail",task="orders"} 2.0' in scraped
    assert all(good not in repr(r) and bad_json not in repr(r) for r in found.values())  # no text kept


async def test_failed_answers_are_not_scored(make_app: AppFactory) -> None:
    from turnout.errors import UpstreamStatusError

    fake = ScriptedProvider("up", Step(error=UpstreamStatusError(500, "boom")))
    app = await make_app(config(), {"up": fake})
    assert await ask(app) == 502
    assert [r.live_pass for r in await rows(app)] == [None]


def test_the_rate_draws_a_share() -> None:
    live = LiveScoring(validate(config({**SCORING, "rate": 0.25})), random.Random(3))
    drawn = sum(live.draw("orders") is not None for _ in range(4000))
    assert 900 <= drawn <= 1100
    assert live.draw("other") is None


@pytest.mark.parametrize(
    ("scorers", "message"),
    [
        ([{"scorer": "judge", "rubric": "good?"}], "cannot score live answers"),
        ([{"scorer": "python_test", "test": "assert True"}], "cannot score live answers"),
        ([{"scorer": "json_schema", "schema": "object"}], r"tasks\.orders\.scoring\.scorers\[0\]"),
        ([], "scorers"),
    ],
)
def test_bad_scorers_are_refused_at_load_or_start(scorers: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LiveScoring(validate(config({"rate": 0.5, "scorers": scorers})))


def test_check_reports_a_scorers_bad_arguments() -> None:
    cfg = validate(config({"rate": 0.5, "scorers": [{"scorer": "regex", "pattern": "("}]}))
    problems = preflight(cfg, env={})
    assert any(p.startswith("tasks.orders.scoring.scorers[0]:") for p in problems), problems


def test_check_names_a_misspelt_scorer_argument() -> None:
    """`negat: true` in the config once passed `turnout check` and scored as if it were absent."""
    cfg = validate(config({"rate": 0.5, "scorers": [{"scorer": "regex", "pattern": "A-", "negat": True}]}))
    problems = preflight(cfg, env={})
    assert "tasks.orders.scoring.scorers[0]: unknown argument 'negat' (did you mean 'negate'?); regex takes " in (
        " ".join(problems)
    ), problems


def test_a_canary_below_the_live_pass_floor_fails_its_check() -> None:
    cfg = CanaryConfig(min_requests=10, min_live_pass_rate=0.9)
    active = ReleaseStats(requests=100, live_scored=50, live_passed=49)
    low = ReleaseStats(requests=100, live_scored=20, live_passed=15)
    (live,) = [c for c in metric_checks(cfg, low, active) if c.name == "live_pass_rate"]
    assert live.ok is False and live.value == pytest.approx(0.75) and "75.0%" in live.detail
    few = ReleaseStats(requests=100, live_scored=5, live_passed=0)
    (unchecked,) = [c for c in metric_checks(cfg, few, active) if c.name == "live_pass_rate"]
    assert unchecked.ok is None and "5 scored" in unchecked.detail
    assert "live_pass_rate" not in {c.name for c in metric_checks(CanaryConfig(), low, active)}  # off by default


def test_report_quality_shows_the_live_pass_rate_by_release() -> None:
    def row(n: int, release: str, live: bool | None) -> LedgerRow:
        return LedgerRow(
            f"r{n}", 1_700_000_000.0 + n, "acme", "orders", "internal", False, release=release, live_pass=live
        )

    made = [row(1, "v1", True), row(2, "v1", True), row(3, "v2", False), row(4, "v2", True), row(5, "v2", None)]
    report = compute("quality", made, by=("release",))
    by = {g["release"]: g for g in report.rows}
    assert (by["v1"]["live_scored"], by["v1"]["live_pass_rate"]) == (2, 1.0)
    assert (by["v2"]["live_scored"], by["v2"]["live_pass_rate"]) == (2, 0.5)
