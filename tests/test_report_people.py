"""``turnout report cost`` counts people: tasks with ``review_cost_usd`` or
``escalation_cost_usd`` add their reviews and escalations to the cost per completed task.
Known answers worked out by hand; the CLI on a SQLite ledger the test writes."""

from __future__ import annotations

import dataclasses
import json
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.test_plan_cli import seed
from turnout.cli.main import main
from turnout.ledger.record import LedgerRow
from turnout.offline.reports.figures import HumanCost, compute, people_cost

PEOPLE = {"support": HumanCost(review_usd=2.0, escalation_usd=5.0)}


def row(
    n: int, task: str, outcome: str, *, reviewed: bool = False, escalated: bool = False, at: float = 100.0
) -> LedgerRow:
    return LedgerRow(
        f"r{n}",
        at + n,
        "acme",
        task,
        "internal",
        False,
        target="gpt",
        status=200,
        cost_usd=0.10 if task == "support" else 0.20,
        outcome=outcome,
        human_review=True if reviewed else None,
        escalated=True if escalated else None,
    )


def rows(at: float = 100.0) -> list[LedgerRow]:
    return [
        row(1, "support", "success", at=at),
        row(2, "support", "success", reviewed=True, at=at),
        row(3, "support", "failure", escalated=True, at=at),
        row(4, "support", "failure", reviewed=True, escalated=True, at=at),
        row(5, "other", "success", reviewed=True, at=at),  # a task without people costs
    ]


def test_people_cost_known_answer() -> None:
    # support: reviews on r2 and r4 = 2 · $2 = $4; escalations on r3 and r4 = 2 · $5 = $10; 'other' counts 0.
    assert people_cost(rows(), PEOPLE) == pytest.approx(14.0)
    assert people_cost(rows(), {}) == 0.0


def test_an_episode_is_reviewed_and_escalated_once_however_many_requests_it_made() -> None:
    # Feedback on episode T-1 sets every one of its three rows: one review, one escalation.
    episode = [
        dataclasses.replace(row(n, "support", "success", reviewed=True, escalated=True), episode_id="T-1")
        for n in (1, 2, 3)
    ]
    assert people_cost(episode, PEOPLE) == pytest.approx(2.0 + 5.0)
    [only] = compute("cost", episode, people=PEOPLE).rows
    # Spend 3 · $0.10 = $0.30, one completed task: $0.30 + $7 = $7.30, not $0.30 + 3 · $7.
    assert only["people_usd"] == pytest.approx(7.0)
    assert only["cost_per_completed_full_usd"] == pytest.approx(7.30)
    # Another tenant's T-1 is another task, with its own review.
    other = dataclasses.replace(episode[0], request_id="g1", tenant="globex")
    assert people_cost([*episode, other], PEOPLE) == pytest.approx(14.0)


def test_cost_report_adds_people_per_task() -> None:
    report = compute("cost", rows(), by=("task",), people=PEOPLE)
    by_task = {r["task"]: r for r in report.rows}
    support = by_task["support"]
    # Spend 4 · $0.10 = $0.40; 2 completed; ($0.40 + $14) ÷ 2 = $7.20 per completed task.
    assert support["people_usd"] == pytest.approx(14.0)
    assert support["cost_per_completed_usd"] == pytest.approx(0.20)
    assert support["cost_per_completed_full_usd"] == pytest.approx(7.20)
    # other: $0.20 spend, no people cost: $0.20 per completed task either way.
    assert by_task["other"]["cost_per_completed_full_usd"] == pytest.approx(0.20)
    # All: ($0.60 + $14) ÷ 3 completed = $4.866667.
    assert report.total["cost_per_completed_full_usd"] == pytest.approx(14.6 / 3)
    titles = [c.title for c in report.columns]
    assert titles.index("review+escalation") == titles.index("cost/completed") + 1


def test_without_people_the_report_is_unchanged() -> None:
    plain = compute("cost", rows(), by=("task",))
    assert "cost_per_completed_full_usd" not in plain.rows[0]
    assert "review+escalation" not in [c.title for c in plain.columns]
    assert compute("latency", rows(), people=PEOPLE).rows[0].get("people_usd") is None


def test_nothing_completed_has_no_figure() -> None:
    failed = [row(1, "support", "failure", escalated=True)]
    [only] = compute("cost", failed, people=PEOPLE).rows
    assert only["people_usd"] == 5.0 and only["cost_per_completed_full_usd"] is None


def test_the_cli_takes_people_from_the_task_config(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    seed(db, rows(at=time.time() - 3600))
    config = tmp_path / "turnout.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            store: {{kind: sqlite, path: {json.dumps(str(db))}}}
            targets:
              gpt: {{provider: openai, base_url: "http://127.0.0.1:9/v1", model: gpt}}
            tasks:
              support: {{route: [gpt], review_cost_usd: 2, escalation_cost_usd: 5}}
              other: {{route: [gpt]}}
            """
        )
    )
    result = CliRunner().invoke(
        main, ["report", "cost", "--since", "1d", "--by", "task", "--format", "json", "--config", str(config)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    by_task = {r["task"]: r for r in data["rows"]}
    assert by_task["support"]["cost_per_completed_full_usd"] == pytest.approx(7.20)
    text = CliRunner().invoke(main, ["report", "cost", "--since", "1d", "--config", str(config)]).output
    assert "cost/completed full" in text
