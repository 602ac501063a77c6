"""``turnout plan`` through click's CliRunner on a SQLite ledger the test writes."""

from __future__ import annotations

import asyncio
import json
import math
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from turnout.cli.main import main
from turnout.ledger.record import LedgerRow
from turnout.ledger.sqlite import SQLiteStore


def seed(path: Path, rows: list[LedgerRow]) -> None:
    async def write() -> None:
        store = SQLiteStore(path)
        await store.open()
        try:
            await store.write_batch(rows)
        finally:
            await store.aclose()

    asyncio.run(write())


def rows(now: float) -> list[LedgerRow]:
    """Two days of 'support' on 'gpt': 20 requests an hour, 1000 in + 360 out tokens, 2 s each,
    9 in 10 successes; plus a week-old row, another task's row and a Bedrock row."""
    start = math.floor(now / 3600) * 3600 - 48 * 3600
    out = []
    for i in range(48 * 20):
        out.append(
            LedgerRow(
                request_id=f"r{i}",
                started_at=start + i * 180,
                tenant="acme",
                task="support",
                data_class="internal",
                stream=False,
                target="gpt",
                status=200,
                prompt_tokens=1000,
                completion_tokens=360,
                latency_ms=2000,
                outcome="failure" if i % 10 == 0 else "success",
            )
        )
    old = LedgerRow("old", now - 10 * 86400, "acme", "support", "internal", False, target="gpt", status=200)
    other = LedgerRow("other", now - 60, "acme", "other", "internal", False, target="gpt", status=200)
    bedrock = LedgerRow(
        "br", now - 120, "acme", "support", "internal", False, target="qwen", status=200, outcome="failure"
    )
    return [*out, old, other, bedrock]


@pytest.fixture
def config(tmp_path: Path) -> str:
    db = tmp_path / "ledger.db"
    seed(db, rows(time.time()))
    path = tmp_path / "turnout.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            store: {{kind: sqlite, path: {json.dumps(str(db))}}}
            targets:
              gpt:
                provider: openai
                base_url: "http://127.0.0.1:9/v1"
                model: gpt
                price: {{input_per_mtok: 3, output_per_mtok: 15}}
              qwen: {{provider: bedrock, region: us-east-1, model: us.qwen.qwen3-32b-v1:0}}
            tasks:
              support: {{route: [gpt, qwen]}}
              other: {{route: [gpt]}}
            """
        )
    )
    return str(path)


def invoke(config: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["plan", *args, "--config", config], env={"TURNOUT_CONFIG": None})


SELF_HOSTED = "--self-hosted=gpu_hour_usd=2,gpus=1,tokens_per_s=10,utilization=0.5,scale_down=hourly"


def test_table(config: str) -> None:
    result = invoke(config, "--task", "support", SELF_HOSTED)
    assert result.exit_code == 0, result.output
    text = result.output
    for column in ("gpt", "bedrock qwen.qwen3-32b-v1:0", "self-hosted", "self-hosted (hourly scale-down)"):
        assert column in text
    for part in ("monthly cost", "cost per completed task", "replicas", "utilization", "Break-even", "Assumptions:"):
        assert part in text
    assert "success rate of gpt: 0.9, observed on gpt (960 outcomes)" in text
    # The Bedrock target served the task: its own (single, failed) outcome is its rate, with its count.
    assert "success rate of bedrock qwen.qwen3-32b-v1:0: 0, observed on qwen (1 outcomes)" in text
    # Two days of rows: too short a window to scale to a month, and the plan says so.
    assert "too short to scale to a month" in text and "under 7 days" in text


def test_json_figures(config: str) -> None:
    result = invoke(config, "--task", "support", SELF_HOSTED, "--format", "json", "--since", "3d")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["observed_requests"] == 961  # 960 + the Bedrock row; the week-old and other-task rows left out
    gpt = next(o for o in plan["options"] if o["name"] == "gpt")
    month = plan["monthly"]
    expected = (month["input_tokens"] * 3 + month["output_tokens"] * 15) / 1e6
    assert gpt["monthly_cost"] == pytest.approx(expected)
    assert gpt["success"]["value"] == pytest.approx(0.9)
    hosted = next(o for o in plan["options"] if o["name"] == "self-hosted")
    # Busiest hour: 20 · 360 / 3600 = 2 tokens/s on replicas carrying 10 · 0.5 = 5: one replica.
    assert max(hosted["replicas"]) == 1
    assert hosted["monthly_cost"] == pytest.approx(2 * 720)
    assert plan["peak_concurrency"] == 1
    assert set(hosted["sensitivity"]) == {"0.7", "0.8", "0.9", "0.95", "0.99"}


def test_managed_by_spec_and_by_name(config: str) -> None:
    result = invoke(config, "--task", "support", "--managed", "input=1,output=2,name=api", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["options"][0]["name"] == "api"
    result = invoke(config, "--task", "support", "--managed", "deepseek.v3.2", "--bedrock", "openai.gpt-oss-120b-1:0")
    assert result.exit_code == 0, result.output
    assert "deepseek.v3.2" in result.output and "bedrock openai.gpt-oss-120b-1:0" in result.output
    assert "self-hosted defaults (no --self-hosted)" in result.output


def test_errors(config: str) -> None:
    bad = invoke(config, "--task", "support", "--self-hosted", "gpus=1")
    assert bad.exit_code == 2 and "missing gpu_hour_usd, tokens_per_s" in bad.output
    bad = invoke(config, "--task", "support", "--since", "soon")
    assert bad.exit_code == 2 and "expected a duration" in bad.output
    bad = invoke(config, "--task", "support", "--bedrock", "acme.x")
    assert bad.exit_code == 2 and "not in turnout's Bedrock catalog" in bad.output
    empty = invoke(config, "--task", "nothing")
    assert empty.exit_code == 1 and "no traffic for task 'nothing'" in empty.output


@pytest.mark.parametrize(
    ("option", "value"),
    [("--review-cost", "nan"), ("--review-cost", "inf"), ("--escalation-cost", "nan"), ("--review-rate", "nan")],
)
def test_a_cost_or_rate_that_is_not_a_finite_number_is_refused(config: str, option: str, value: str) -> None:
    # NaN passed click's ranges (it compares false with both ends): every full cost read $nan.
    bad = invoke(config, "--task", "support", SELF_HOSTED, option, value)
    assert bad.exit_code == 2 and f"{value!r} is not a finite number" in bad.output


@pytest.mark.parametrize("spec", ["gpu_hour_usd=inf,gpus=4,tokens_per_s=900", "gpu_hour_usd=3,gpus=4,tokens_per_s=inf"])
def test_a_self_hosted_figure_that_is_not_finite_is_refused(config: str, spec: str) -> None:
    bad = invoke(config, "--task", "support", "--self-hosted", spec)
    assert bad.exit_code == 2 and "=inf: expected a number above 0" in bad.output


def test_the_ledger_is_read_whole_a_page_at_a_time_only_the_tasks_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the task's rows of the window are read (``rows_between``), and all of them, in
    pages: it read the oldest 2,000,000 rows and priced them as the whole window (a warning on
    stderr), so a busy week was planned on its first days' volume."""
    now = time.time()
    older = [
        LedgerRow(f"s{i}", now - 3600 + i, "acme", "support", "internal", False, target="gpt", status=200)
        for i in range(3)
    ]
    newer = [
        LedgerRow(f"o{i}", now - 60 + i, "acme", "other", "internal", False, target="gpt", status=200) for i in range(8)
    ]
    seed(tmp_path / "ledger.db", [*older, *newer])
    path = tmp_path / "turnout.yaml"
    path.write_text(
        f"store: {{kind: sqlite, path: {json.dumps(str(tmp_path / 'ledger.db'))}}}\n"
        "targets: {gpt: {provider: openai, base_url: 'http://127.0.0.1:9/v1', model: gpt}}\n"
        "tasks: {support: {route: [gpt]}, other: {route: [gpt]}}\n"
    )
    monkeypatch.setattr("turnout.cli._common.LEDGER_LIMIT", 5, raising=False)  # the old cap, if any
    monkeypatch.setattr("turnout.ledger.store.PAGE", 3, raising=False)  # fewer than the other task's rows
    result = invoke(str(path), "--task", "support", SELF_HOSTED, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["observed_requests"] == 3
    result = invoke(str(path), "--task", "other", SELF_HOSTED, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["observed_requests"] == 8  # three pages: 3, 3 and 2
    assert result.stderr == ""


def test_a_missing_ledger_is_reported_not_created(tmp_path: Path) -> None:
    path = tmp_path / "turnout.yaml"
    path.write_text(
        f"store: {{kind: sqlite, path: {json.dumps(str(tmp_path / 'none.db'))}}}\n"
        "targets: {gpt: {provider: openai, base_url: 'http://127.0.0.1:9/v1', model: gpt}}\n"
        "tasks: {support: {route: [gpt]}}\n"
    )
    result = invoke(str(path), "--task", "support")
    assert result.exit_code == 1 and "turnout: no ledger at" in result.stderr
    assert not (tmp_path / "none.db").exists()
