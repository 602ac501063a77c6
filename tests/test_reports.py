"""Report figures on a synthetic ledger whose answers are worked out by hand below, then the
three formats and the SVG charts (parsed back with xml.etree and their marks counted).

The ledger: ten requests of task ``support``, one every six hours from Monday 2026-03-02 00:00
UTC (days 03-02 ×4, 03-03 ×4, 03-04 ×2; hours 00, 06, 12, 18). Even requests are release v1 at
$0.05, odd ones v2 at $0.07: spend $0.25 + $0.35 = $0.60. Requests 0-5 succeeded (3 per
release), 6 failed and was reviewed, 7 failed and was escalated, 8 and 9 have no feedback.
Request 0 was retried (two attempts at one target); request 1 timed out at its first target and
fell back. Latency of request n is 100·(n+1) ms; queue 10 ms; tokens 100 in, 20 out."""

from __future__ import annotations

import csv
import dataclasses
import io
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import orjson
import pytest

from turnout.ledger.record import AttemptRecord, LedgerRow
from turnout.offline.reports.charts import chart, heat, nice_ticks
from turnout.offline.reports.figures import Report, compute
from turnout.offline.reports.render import render, usd

BASE = datetime(2026, 3, 2, tzinfo=UTC).timestamp()
SVG = "{http://www.w3.org/2000/svg}"


def ledger() -> list[LedgerRow]:
    rows = []
    for n in range(10):
        ok = AttemptRecord("primary", "r1", None, 100.0 * (n + 1))
        attempts = [ok]
        if n == 0:
            attempts = [AttemptRecord("primary", "r1", "http_503", 5.0), ok]
        if n == 1:
            attempts = [AttemptRecord("primary", "r1", "timeout_ttft", 50.0), dataclasses.replace(ok, target="backup")]
        rows.append(
            LedgerRow(
                request_id=f"req-{n:02d}",
                started_at=BASE + n * 6 * 3600,
                tenant="acme",
                task="support",
                data_class="internal",
                stream=False,
                release="v1" if n % 2 == 0 else "v2",
                target="backup" if n == 1 else "primary",
                status=200,
                attempts=attempts,
                fallback=n == 1,
                prompt_tokens=100,
                completion_tokens=20,
                cost_usd=0.05 if n % 2 == 0 else 0.07,
                latency_ms=100.0 * (n + 1),
                queue_ms=10.0,
                outcome="success" if n < 6 else "failure" if n < 8 else None,
                human_review=True if n == 6 else None,
                escalated=True if n == 7 else None,
            )
        )
    return rows


def one(report: Report, **key: str) -> dict[str, object]:
    [found] = [r for r in report.rows if all(r[k] == v for k, v in key.items())]
    return found


# --- cost ---------------------------------------------------------------------------------------


def test_cost_per_completed_task_is_all_spend_over_successes() -> None:
    [row] = compute("cost", ledger()).rows
    assert row["requests"] == 10
    assert row["spend_usd"] == pytest.approx(0.60)
    assert row["completed"] == 6
    assert row["cost_per_completed_usd"] == pytest.approx(0.10)  # 0.60 / 6
    assert row["retry_rate"] == pytest.approx(0.2)  # requests 0 and 1 had two attempts
    assert row["fallback_rate"] == pytest.approx(0.1)
    assert row["timeout_rate"] == pytest.approx(0.1)
    assert row["review_rate"] == pytest.approx(1 / 8)  # 8 tasks have feedback, one reviewed
    assert row["escalation_rate"] == pytest.approx(1 / 8)
    assert row["unpriced"] == 0


def test_a_review_cost_is_charged_per_failed_or_reviewed_task() -> None:
    [row] = compute("cost", ledger(), review_cost=3.0).rows
    assert row["reviewed_or_failed"] == 2  # 6 (failed, reviewed) and 7 (failed)
    assert row["cost_per_completed_with_review_usd"] == pytest.approx((0.60 + 2 * 3.0) / 6)
    assert row["cost_per_completed_usd"] == pytest.approx(0.10)


def test_cost_by_release_and_the_total_row() -> None:
    report = compute("cost", ledger(), by=["release"])
    assert [r["release"] for r in report.rows] == ["v1", "v2"]  # the groups; the total apart
    assert one(report, release="v1")["cost_per_completed_usd"] == pytest.approx(0.25 / 3)
    assert one(report, release="v2")["cost_per_completed_usd"] == pytest.approx(0.35 / 3)
    assert report.total["cost_per_completed_usd"] == pytest.approx(0.10)
    assert report.total_row == {"release": "(all)", **report.total}


def test_an_episode_is_one_task_however_many_requests_it_took() -> None:
    rows = ledger()[:4]  # $0.05 + $0.07 + $0.05 + $0.07, all successes
    rows = [dataclasses.replace(r, episode_id="T-1") if i < 3 else r for i, r in enumerate(rows)]
    [row] = compute("cost", rows).rows
    assert row["completed"] == 2  # T-1 and request 3
    assert row["cost_per_completed_usd"] == pytest.approx(0.24 / 2)


def test_an_episode_that_failed_then_succeeded_is_completed() -> None:
    rows = [dataclasses.replace(r, episode_id="T-9") for r in ledger()[5:7]]  # success, failure
    [row] = compute("cost", rows, review_cost=1.0).rows
    assert (row["completed"], row["reviewed_or_failed"]) == (1, 1)  # not failed, but reviewed


def test_two_tenants_that_use_one_episode_id_have_two_tasks() -> None:
    """Callers choose their episode ids: acme's T-1 failed, globex's T-1 succeeded. Merged, the
    one task would be completed and not failed; apart, one of each."""
    acme = [dataclasses.replace(r, episode_id="T-1", outcome="failure") for r in ledger()[:2]]
    globex = [dataclasses.replace(r, episode_id="T-1", tenant="globex") for r in ledger()[2:4]]  # successes
    cost = compute("cost", acme + globex, review_cost=1.0)
    [row] = cost.rows
    assert (row["completed"], row["reviewed_or_failed"]) == (1, 1)
    assert row["cost_per_completed_usd"] == pytest.approx(0.24)
    assert row["cost_per_completed_with_review_usd"] == pytest.approx(0.24 + 1.0)
    [quality] = compute("quality", acme + globex).rows
    assert quality["tasks"] == 2 and quality["success_rate"] == pytest.approx(0.5)
    by_tenant = compute("cost", acme + globex, by=["tenant"])
    assert [(r["tenant"], r["completed"]) for r in by_tenant.rows] == [("acme", 0), ("globex", 1)]
    assert by_tenant.total["completed"] == 1


def test_spend_without_any_price_is_unpriced_never_zero() -> None:
    rows = [dataclasses.replace(r, cost_usd=None) for r in ledger()]
    report = compute("cost", rows)
    [row] = report.rows
    assert row["spend_usd"] is None and row["cost_per_completed_usd"] is None
    assert row["unpriced"] == 10
    assert "10 request(s) used tokens but have no price" in report.notes[0]
    assert "unpriced" in render(report, "table")


def refused(n: int, status: int, tenant: str = "scanner", cost: float | None = None) -> LedgerRow:
    """A request refused before any target (a bad body, a policy, a quota), as older gateways
    wrote it: no attempt and no cost."""
    return LedgerRow(f"ref-{n:02d}", BASE + n, tenant, "support", "", False, status=status, cost_usd=cost)


def test_requests_that_reached_no_target_cost_zero_not_unpriced() -> None:
    """Seen: a tenant whose requests were all refused (400, 403, 429) showed spend "unpriced":
    they reached no target and cost exactly $0. A stream whose client left (499) may have been
    billed by its target: with no attempt on record its cost stays unknown."""
    rows = [refused(0, 400), refused(1, 403), refused(2, 429), refused(3, 404, tenant="now", cost=0.0)]
    rows += [refused(4, 499, tenant="leaver"), *ledger()]
    report = compute("cost", rows, by=["tenant"])
    assert one(report, tenant="scanner")["spend_usd"] == 0.0
    assert one(report, tenant="scanner")["unpriced"] == 0
    assert one(report, tenant="now")["spend_usd"] == 0.0  # as the gateway writes them now
    assert one(report, tenant="leaver")["spend_usd"] is None
    assert report.total["spend_usd"] == pytest.approx(0.60)
    table = render(report, "table")
    lines = {line.split()[0]: line for line in table.splitlines() if line.strip()}
    assert "unpriced" in lines["leaver"] and "unpriced" not in lines["scanner"]
    assert not compute("cost", rows[:4]).notes


def test_no_completed_task_gives_no_cost_per_task() -> None:
    [row] = compute("cost", ledger()[6:]).rows
    assert row["completed"] == 0 and row["cost_per_completed_usd"] is None


# --- latency, quality, usage ---------------------------------------------------------------------


def test_latency_percentiles_interpolate_between_ranks() -> None:
    [row] = compute("latency", ledger()).rows
    # 100..1000 ms: p50 at rank 4.5, p95 at 8.55, p99 at 8.91
    assert (row["latency_p50_ms"], row["latency_p95_ms"], row["latency_p99_ms"]) == pytest.approx((550, 955, 991))
    assert row["queue_p95_ms"] == pytest.approx(10.0)
    assert row["ttft_p50_ms"] is None  # no streams


def test_latency_leaves_out_caller_errors() -> None:
    rows = [*ledger(), LedgerRow("req-x", BASE, "acme", "support", "internal", False, status=429, latency_ms=1e6)]
    [row] = compute("latency", rows).rows
    assert row["requests"] == 10 and row["latency_p99_ms"] == pytest.approx(991)


def test_latency_by_day() -> None:
    report = compute("latency", ledger(), by=["day"])
    assert [r["day"] for r in report.rows] == ["2026-03-02", "2026-03-03", "2026-03-04"]
    assert one(report, day="2026-03-02")["latency_p50_ms"] == pytest.approx(250)  # 100, 200, 300, 400


def test_quality_per_release() -> None:
    report = compute("quality", ledger(), by=["release"])
    v1, v2 = one(report, release="v1"), one(report, release="v2")
    # v1: 0, 2, 4 succeeded, 6 failed (reviewed), 8 unknown; v2: 1, 3, 5 succeeded, 7 failed, 9 unknown
    assert (v1["outcomes"], v1["successes"], v1["success_rate"]) == (4, 3, 0.75)
    assert (v1["review_rate"], v1["escalation_rate"]) == (0.25, 0.0)
    assert (v2["review_rate"], v2["escalation_rate"]) == (0.0, 0.25)


def test_usage_tokens_per_request_and_hours() -> None:
    report = compute("usage", ledger())
    [row] = report.rows
    assert (row["prompt_tokens_per_request"], row["completion_tokens_per_request"]) == (100, 20)
    assert row["total_tokens"] == 1200
    assert report.hours is not None
    assert {h: n for h, n in enumerate(report.hours) if n} == {0: 3, 6: 3, 12: 2, 18: 2}
    assert row["peak_hour_utc"] == "00:00"


def test_unknown_kind_or_dimension_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown report"):
        compute("vibes", [])
    with pytest.raises(ValueError, match="unknown --by"):
        compute("cost", [], by=["colour"])


# --- formats -------------------------------------------------------------------------------------


def test_table_is_aligned_with_units() -> None:
    text = render(compute("cost", ledger(), by=["release"], since=BASE, until=BASE + 3 * 86400), "table")
    lines = text.splitlines()
    assert lines[0] == "Cost per completed task, 2026-03-02 00:00 → 2026-03-05 00:00 UTC"
    header, rule = lines[2], lines[3]
    assert header.split()[:3] == ["release", "requests", "spend"]
    assert len(header) <= len(rule)
    body = [line for line in lines[4:] if line and not line.startswith("─")]
    assert [b.split()[0] for b in body] == ["v1", "v2", "(all)"]
    assert "$0.1000" in body[2] and "20.0%" in body[2]
    ends = {len(line) for line in body}  # right-aligned numbers: every row ends in one column
    assert len(ends) == 1


def test_latency_table_names_milliseconds() -> None:
    assert "latency p95 (ms)" in render(compute("latency", ledger()), "table")


def test_usage_table_has_the_hours() -> None:
    text = render(compute("usage", ledger()), "table")
    assert "Requests by hour of day (UTC)" in text
    assert any(line.startswith("06:00") and line.rstrip().endswith("█" * 30) for line in text.splitlines())


def test_json_carries_raw_numbers() -> None:
    payload = orjson.loads(render(compute("cost", ledger(), by=["release"]), "json"))
    assert payload["report"] == "cost" and payload["by"] == ["release"]
    assert [r["release"] for r in payload["rows"]] == ["v1", "v2"]
    assert payload["total"]["cost_per_completed_usd"] == pytest.approx(0.10)  # the window's: no label
    assert {"key": "retry_rate", "title": "retry", "unit": "pct"} in payload["columns"]
    usage = orjson.loads(render(compute("usage", ledger()), "json"))
    assert sum(usage["requests_by_hour_utc"]) == 10


def test_csv_has_one_line_per_group_and_empty_unknowns() -> None:
    text = render(compute("cost", ledger()[6:], by=["release"]), "csv")
    records = list(csv.DictReader(io.StringIO(text)))
    assert [r["release"] for r in records] == ["v1", "v2", "(all)"]
    assert records[0]["cost_per_completed_usd"] == ""  # nothing completed
    assert float(records[2]["spend_usd"]) == pytest.approx(0.24)


def test_dollars_keep_the_digits_that_matter() -> None:
    assert (usd(1234.5), usd(0.1), usd(0.000123)) == ("$1,234.50", "$0.1000", "$0.000123")


# --- charts ----------------------------------------------------------------------------------------


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # noqa: S314 - our own output
    assert root.tag == f"{SVG}svg"
    return root


def marks(root: ET.Element, cls: str) -> list[ET.Element]:
    return [e for e in root.iter() if e.get("class") == cls]


def texts(root: ET.Element) -> list[str]:
    return [e.text or "" for e in root.iter(f"{SVG}text")]


def test_cost_chart_has_one_bar_per_release() -> None:
    root = parse(chart("cost", ledger(), since=BASE, until=BASE + 3 * 86400))
    bars = marks(root, "bar")
    assert len(bars) == 2
    assert "Cost per completed task by release" in texts(root)
    assert {"$0.0833", "$0.1167"} <= set(texts(root))  # the values over the bars
    assert float(bars[1].get("height", 0)) > float(bars[0].get("height", 0))  # v2 costs more


def test_a_release_with_nothing_completed_gets_no_bar() -> None:
    root = parse(chart("cost", ledger()[6:], since=BASE, until=BASE + 86400))
    assert marks(root, "bar") == [] and texts(root).count("n/a") == 2


def test_cost_trend_by_day_has_one_point_per_day() -> None:
    root = parse(chart("cost", ledger(), since=BASE, until=BASE + 3 * 86400, by=["day"], review_cost=2.0))
    assert len(marks(root, "point")) == 2  # day 3 (requests 8, 9) completed nothing: no point
    assert any(t.startswith("Cost per completed task by day") for t in texts(root))


def test_latency_chart_has_three_lines_over_the_days() -> None:
    root = parse(chart("latency", ledger(), since=BASE, until=BASE + 3 * 86400))
    assert len(marks(root, "line")) == 3
    assert len(marks(root, "point")) == 9  # p50, p95, p99 × 3 days
    assert {"p50", "p95", "p99", "03-02", "03-04"} <= set(texts(root))


def test_usage_heat_strip_has_24_cells_per_day() -> None:
    root = parse(chart("usage", ledger(), since=BASE, until=BASE + 3 * 86400))
    cells = marks(root, "cell")
    assert len(cells) == 72
    assert cells[0].get("fill") == heat(1.0)  # Monday 00:00 is the peak hour of the window
    assert cells[1].get("fill") == heat(0.0)


def test_quality_chart_bars_success_rates() -> None:
    root = parse(chart("quality", ledger(), since=BASE, until=BASE + 3 * 86400))
    assert len(marks(root, "bar")) == 2 and "75%" in texts(root)


def test_nice_ticks_are_round_and_cover_the_top() -> None:
    assert nice_ticks(0, 955) == [0, 200, 400, 600, 800, 1000]
    assert nice_ticks(0, 0.1167) == pytest.approx([0, 0.025, 0.05, 0.075, 0.1, 0.125])
    assert nice_ticks(0, 0) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])


def test_estimated_usage_is_said_not_hidden() -> None:
    """Rows whose upstream reported no usage carry the gateway's count: the spend and the
    tokens rest on it, and the cost and usage reports say for how many requests."""
    rows = ledger()
    rows[2] = dataclasses.replace(rows[2], usage_estimated=True)
    rows[5] = dataclasses.replace(rows[5], usage_estimated=True)
    rows[6] = dataclasses.replace(rows[6], usage_estimated=False)
    assert any(n.startswith("2 request(s) have tokens the gateway counted itself") for n in compute("cost", rows).notes)
    assert any("their tokens are an estimate" in n for n in compute("usage", rows).notes)
    assert not any("counted itself" in n for n in compute("cost", ledger()).notes)
    assert not any("counted itself" in n for n in compute("latency", rows).notes)
