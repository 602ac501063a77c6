"""The self-contained HTML report: one file, inline CSS, no scripts or external assets. Every
piece of text from cases and outputs goes through ``html.escape``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from html import escape
from typing import Any

import orjson

from turnout.offline.evals.cases import Case
from turnout.offline.evals.gates import GateResult, all_passed
from turnout.offline.evals.report import paired_line, release_label, summary_rows
from turnout.offline.evals.runner import EvalResult, Run

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem;color:#1b1f24;max-width:110rem}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;width:100%;margin:.5rem 0}
th,td{border:1px solid #d0d7de;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}.skip{color:#6e7781}
.verdict{font-size:1.2rem;padding:.5rem .8rem;display:inline-block;border-radius:4px}
.verdict.pass{background:#dafbe1}.verdict.fail{background:#ffebe9}
pre{white-space:pre-wrap;word-break:break-word;margin:.25rem 0;max-height:24rem;overflow:auto;
background:#f6f8fa;padding:.4rem;border-radius:4px;font-size:12px}
.tag{display:inline-block;background:#ddf4ff;border-radius:10px;padding:0 .5rem;margin:0 .2rem .2rem 0;font-size:12px}
.changed{background:#fff8c5}.run{border-top:1px dashed #d0d7de;padding-top:.25rem}.run:first-child{border-top:0}
.meta{color:#57606a}ul.scores{margin:.2rem 0;padding-left:1.1rem}
"""


def _mark(passed: bool) -> str:
    return '<span class="pass">✓ pass</span>' if passed else '<span class="fail">✗ fail</span>'


def _input(case: Case) -> str:
    shown: Any = case.messages if case.messages is not None else case.variables
    return escape(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())


def _run_cell(run: Run, case: Case, repeat: int) -> str:
    o = run.outcome
    bits = [_mark(run.passed)]
    if repeat > 1:
        bits.append(f'<span class="meta">repeat {run.repeat + 1}</span>')
    bits.append(f'<span class="meta">{o.latency_ms:,.0f} ms</span>')
    if o.cost_usd is not None:
        bits.append(f'<span class="meta">${o.cost_usd:.6f}</span>')
    body = f"<pre>{escape(o.output)}</pre>" if o.error is None else f'<pre class="fail">{escape(o.error)}</pre>'
    # a failed request carries one score and ran no scorer
    names = ["request"] if o.error is not None else [e.scorer for e in case.expect]
    items = "".join(
        f"<li>{_mark(s.passed)} {escape(name)}{': ' + escape(s.detail) if s.detail else ''}</li>"
        for name, s in zip(names, run.scores, strict=False)
    )
    return f'<div class="run">{" · ".join(bits)}{body}<ul class="scores">{items}</ul></div>'


def _cases_section(result: EvalResult) -> str:
    head = "".join(f"<th>{escape(release_label(result, r))}</th>" for r in result.releases)
    rows = []
    for case in result.cases:
        verdicts = {r: result.pass_share(case.id, r) > 0.5 for r in result.releases}
        changed = len(set(verdicts.values())) > 1
        tags = "".join(f'<span class="tag">{escape(t)}</span>' for t in case.tags)
        cells = "".join(
            "<td>" + "".join(_run_cell(run, case, result.repeat) for run in result.runs_for(case.id, r)) + "</td>"
            for r in result.releases
        )
        rows.append(
            f'<tr class="{"changed" if changed else ""}"><td><strong>{escape(case.id)}</strong>'
            f"{' <em>(changed)</em>' if changed else ''}<br>{tags}"
            f"<details><summary>input</summary><pre>{_input(case)}</pre></details></td>{cells}</tr>"
        )
    return f"<table><tr><th>case</th>{head}</tr>{''.join(rows)}</table>"


def _gates_section(gates: Sequence[GateResult]) -> str:
    if not gates:
        return "<p>No gates evaluated.</p>"
    rows = "".join(
        f'<tr><td class="{g.verdict.lower()}">{escape(g.verdict)}</td><td>{escape(g.name)}</td>'
        f'<td class="num">{"—" if g.observed is None else f"{g.observed:.4g}"}</td>'
        f'<td class="num">{"—" if g.threshold is None else f"{g.threshold:.4g}"}</td>'
        f"<td>{escape(g.explanation)}</td></tr>"
        for g in gates
    )
    ok = all_passed(gates)
    verdict = f'<p class="verdict {"pass" if ok else "fail"}">{"PASS" if ok else "FAIL"}</p>'
    head = "<tr><th>verdict</th><th>gate</th><th>observed</th><th>threshold</th><th>explanation</th></tr>"
    return f"{verdict}<table>{head}{rows}</table>"


def render_html(result: EvalResult, gates: Sequence[GateResult] = ()) -> str:
    title = f"turnout eval {result.task or ''}: {result.candidate}" + (
        f" vs {result.baseline}" if result.baseline else ""
    )
    when = dt.datetime.fromtimestamp(result.started_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    head = "".join(f"<th>{escape(release_label(result, r))}</th>" for r in result.releases)
    agg = "".join(
        f"<tr><th>{escape(label)}</th>" + "".join(f'<td class="num">{escape(c)}</td>' for c in cells) + "</tr>"
        for label, cells in summary_rows(result)
    )
    paired = paired_line(result)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body>
<h1>{escape(title)}</h1>
<p class="meta">{escape(when)} · {len(result.cases)} cases × {result.repeat} repeat(s) · concurrency
{result.concurrency} · {result.duration_s:.1f} s</p>
<h2>Gates</h2>
{_gates_section(gates)}
<h2>Aggregates</h2>
<table><tr><th></th>{head}</tr>{agg}</table>
{f"<p>{escape(paired)}</p>" if paired else ""}
<h2>Cases</h2>
{_cases_section(result)}
</body></html>
"""
