"""Reports of an eval run: a terminal comparison table, JSON, and a self-contained HTML page
(``html.render_html``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from turnout.offline.evals.gates import GateResult, all_passed
from turnout.offline.evals.runner import EvalResult, ReleaseSummary


def pct(x: float) -> str:
    return f"{x:.1%}"


def ms(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f} ms"


def usd(x: float | None) -> str:
    if x is None:
        return "—"
    return f"${x:.4f}" if x >= 0.01 else f"${x:.6f}"


def summary_rows(result: EvalResult) -> list[tuple[str, list[str]]]:
    """(label, one cell per release) rows shared by the terminal and HTML reports."""
    ss: list[ReleaseSummary] = [result.summaries[r] for r in result.releases]
    return [
        ("pass rate (95% CI)", [f"{pct(s.pass_rate)} [{pct(s.interval.low)}–{pct(s.interval.high)}]" for s in ss]),
        ("passed / runs", [f"{s.passed_runs}/{s.runs}" for s in ss]),
        ("errors", [str(s.errors) for s in ss]),
        (f"p50 latency (concurrency {result.concurrency})", [ms(s.p50_ms) for s in ss]),
        (f"p95 latency (concurrency {result.concurrency})", [ms(s.p95_ms) for s in ss]),
        ("cost, all runs", [usd(s.cost_usd) for s in ss]),
        ("cost per passed case", [usd(s.cost_per_pass) if s.cost_usd is not None else "—" for s in ss]),
    ]


def release_label(result: EvalResult, release: str) -> str:
    return f"{release} ({'baseline' if release == result.baseline else 'candidate'})"


def paired_line(result: EvalResult) -> str | None:
    c = result.comparison
    if c is None or result.baseline is None:
        return None
    return (
        f"paired difference ({result.candidate} − {result.baseline}) on {c.n} cases: {c.difference:+.1%} "
        f"(95% bootstrap CI {c.interval.low:+.1%} to {c.interval.high:+.1%}); "
        f"fixed {c.candidate_only}, broke {c.baseline_only}, McNemar exact p = {c.p_value:.3g}"
    )


def render_table(result: EvalResult, gates: Sequence[GateResult] = ()) -> str:
    """The comparison as plain text for a terminal."""
    head = (
        f"eval {result.task or ''}".rstrip()
        + f": {len(result.cases)} cases × {result.repeat} repeat{'s' if result.repeat != 1 else ''}, "
        + f"concurrency {result.concurrency}, {result.duration_s:.1f} s"
    )
    rows = [("", [release_label(result, r) for r in result.releases]), *summary_rows(result)]
    label_w = max(len(label) for label, _ in rows)
    col_w = [max(len(cells[i]) for _, cells in rows) for i in range(len(result.releases))]
    lines = [head, ""]
    for label, cells in rows:
        lines.append(
            "  ".join([label.ljust(label_w), *(c.rjust(w) for c, w in zip(cells, col_w, strict=True))]).rstrip()
        )
    paired = paired_line(result)
    if paired:
        lines += ["", paired]
    if gates:
        lines += ["", "gates"]
        name_w = max(len(g.name) for g in gates)
        for g in gates:
            lines.append(f"  {g.verdict:<4}  {g.name.ljust(name_w)}  {g.explanation}")
        failing = [g.name for g in gates if not g.passed]
        lines += ["", "verdict: " + ("PASS" if all_passed(gates) else f"FAIL ({', '.join(failing)})")]
    return "\n".join(lines) + "\n"


def to_dict(result: EvalResult, gates: Sequence[GateResult] = ()) -> dict[str, Any]:
    return {
        "version": 1,
        "passed": all_passed(gates),
        "gates": [g.to_dict() for g in gates],
        "result": result.to_dict(),
    }


def to_json(result: EvalResult, gates: Sequence[GateResult] = ()) -> str:
    return orjson.dumps(to_dict(result, gates), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


def from_json(text: str | bytes) -> tuple[EvalResult, list[GateResult]]:
    d = orjson.loads(text)
    return EvalResult.from_dict(d["result"]), [GateResult.from_dict(g) for g in d["gates"]]
