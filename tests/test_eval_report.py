"""Reports: the terminal table, JSON that round-trips, HTML that escapes outputs."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import orjson
import pytest

from turnout.config import Gates
from turnout.offline.evals import (
    Case,
    EvalResult,
    Expectation,
    GateResult,
    Outcome,
    evaluate_gates,
    from_json,
    render_html,
    render_table,
    run_eval,
    to_json,
)

EVIL = '<script>alert("x")</script> & </pre>'


async def make_result(baseline: str | None = "v1", repeat: int = 1) -> EvalResult:
    cases = [
        Case(
            id=f"case-{i}",
            expect=(Expectation("contains", {"value": "ok"}), Expectation("regex", {"pattern": "^ok"})),
            variables={"text": f"<b>input {i}</b>"},
            tags=("<tag>", "smoke"),
        )
        for i in range(4)
    ]

    async def call(release: str, case: Case) -> Outcome:
        if case.id == "case-0" and release == "v2":
            return Outcome(EVIL, latency_ms=120.0, cost_usd=0.002)
        if case.id == "case-1" and release == "v1":
            return Outcome("", latency_ms=5.0, error="upstream <502>")
        return Outcome("ok fine", latency_ms=100.0, cost_usd=0.001)

    result = await run_eval(cases, call, candidate="v2", baseline=baseline, concurrency=2, repeat=repeat, task="orders")
    return result


def gates_for(result: EvalResult) -> list[GateResult]:
    return evaluate_gates(Gates(min_pass_rate=0.9, max_regression=0.05, max_p95_ms=1000), result)


async def test_terminal_table() -> None:
    result = await make_result()
    text = render_table(result, gates_for(result))
    assert text.startswith("eval orders: 4 cases × 1 repeat, concurrency 2,")
    header = next(line for line in text.splitlines() if "v1 (baseline)" in line)
    assert header.index("v1 (baseline)") < header.index("v2 (candidate)")
    assert re.search(r"pass rate \(95% CI\)\s+75\.0% \[\d+\.\d%–\d+\.\d%\]\s+75\.0% \[", text)
    assert re.search(r"p95 latency \(concurrency 2\)\s+100 ms\s+117 ms", text)
    assert re.search(r"cost per passed case\s+\$0\.001000\s+\$0\.001667", text)
    assert "paired difference (v2 − v1) on 4 cases: +0.0%" in text and "fixed 1, broke 1, McNemar exact p = 1" in text
    assert "  FAIL  min_pass_rate" in text and "  pass  max_regression" in text and "  pass  max_p95_ms" in text
    assert re.search(r"  skip  max_cost_per_pass_ratio\s+skipped: not configured", text)
    assert "  skip  max_cost_per_completed_task  skipped: not configured" in text
    assert text.rstrip().endswith("verdict: FAIL (min_pass_rate)")


async def test_terminal_table_without_baseline_or_gates() -> None:
    result = await make_result(baseline=None)
    text = render_table(result)
    assert "v2 (candidate)" in text and "baseline" not in text and "paired" not in text and "verdict" not in text


async def test_json_round_trip() -> None:
    result = await make_result(repeat=2)
    gates = gates_for(result)
    text = to_json(result, gates)
    doc = orjson.loads(text)
    assert doc["version"] == 1 and doc["passed"] is False
    assert doc["result"]["summaries"]["v2"]["pass_rate"] == pytest.approx(0.75)
    assert doc["result"]["runs"][0]["outcome"].keys() == {"output", "latency_ms", "cost_usd", "error"}
    back, back_gates = from_json(text)
    assert back == result and back_gates == gates


class Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            assert name not in ("src", "href") or value is None, f"external asset: {name}={value}"

    def handle_data(self, data: str) -> None:
        self.text.append(data)


async def test_html_is_self_contained_and_escapes_outputs() -> None:
    result = await make_result()
    page = render_html(result, gates_for(result))
    assert "<script" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;/pre&gt;" in page
    assert "&lt;tag&gt;" in page and "&lt;b&gt;input 0&lt;/b&gt;" in page and "upstream &lt;502&gt;" in page
    parser = Collector()
    parser.feed(page)
    assert "script" not in parser.tags and "link" not in parser.tags and "img" not in parser.tags
    assert parser.tags.count("style") == 1
    text = "".join(parser.text)
    assert EVIL in text  # shown to the reader verbatim
    for needle in ("turnout eval orders: v2 vs v1", "Gates", "Aggregates", "Cases", "FAIL", "min_pass_rate"):
        assert needle in text
    assert "case-0" in text and "(changed)" in text
    assert "request: request failed: upstream <502>" in text  # a failed request's one score
    assert "contains" in text and "regex: no match for /^ok/" in text


async def test_html_with_repeats_and_no_gates() -> None:
    result = await make_result(baseline=None, repeat=2)
    page = render_html(result)
    assert "repeat 2" in page and "No gates evaluated." in page and "(changed)" not in page
