"""A ``Report`` as text: an aligned terminal table, JSON, or CSV.

Tables put units where the eye reads them: dollars and percent in the cells, milliseconds in
the header; a figure that cannot be computed prints as ``–`` (spend with no price at all
prints ``unpriced``). JSON and CSV carry raw numbers (USD, ms, rates as fractions 0-1) under
the column keys, and null / an empty field where the table prints ``–``; a CSV name that a
spreadsheet would run as a formula (``=…``, ``+…``, ``-…``, ``@…``) starts with ``'``.

With ``--by``, the table and CSV end with the whole window's row, labelled ``(all)`` (the
table draws a rule above it); JSON gives it apart, as ``"total"`` (the groups are ``"rows"``).
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

import orjson

from turnout._support.printable import printable, spreadsheet_text
from turnout.offline.reports.figures import Column, Report

TITLES = {
    "cost": "Cost per completed task",
    "latency": "Latency",
    "quality": "Quality (outcomes from feedback)",
    "usage": "Usage",
}
FORMATS = ("table", "json", "csv")


def render(report: Report, fmt: str) -> str:
    if fmt == "json":
        return to_json(report)
    if fmt == "csv":
        return to_csv(report)
    return to_table(report)


def window(report: Report) -> str:
    return f"{_when(report.since)} → {_when(report.until)} UTC"


def to_table(report: Report) -> str:
    lines = [f"{TITLES[report.kind]}, {window(report)}", ""]
    lines += _grid(report.columns, report.rows, report.total_row)
    if report.hours is not None:
        lines += ["", "Requests by hour of day (UTC)", ""]
        hour_columns = [Column("hour", "hour", "text"), Column("requests", "requests"), Column("bar", "", "text")]
        peak = max(report.hours) or 1
        hour_rows = [
            {"hour": f"{h:02d}:00", "requests": n, "bar": "█" * round(30 * n / peak)}
            for h, n in enumerate(report.hours)
        ]
        lines += _grid(hour_columns, hour_rows)
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def to_json(report: Report) -> str:
    payload: dict[str, Any] = {
        "report": report.kind,
        "since": _when(report.since),
        "until": _when(report.until),
        "by": list(report.by),
        "columns": [{"key": c.key, "title": c.title, "unit": c.unit} for c in report.columns],
        "rows": report.rows,
        "total": report.total,
    }
    if report.hours is not None:
        payload["requests_by_hour_utc"] = report.hours
    payload["notes"] = report.notes
    return orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode() + "\n"


def to_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([c.key for c in report.columns])
    total = report.total_row
    for row in [*report.rows, *([total] if total is not None else [])]:
        writer.writerow(["" if row.get(c.key) is None else _raw(c, row[c.key]) for c in report.columns])
    return out.getvalue()


def cell(column: Column, value: Any) -> str:
    if value is None:
        return "unpriced" if column.key == "spend_usd" else "–"
    if column.unit == "usd":
        return usd(float(value))
    if column.unit == "pct":
        return f"{100 * value:.1f}%"
    if column.unit == "ms":
        return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"
    if column.unit == "num":
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if column.unit == "count":
        return f"{value:,}"
    return printable(str(value))  # names from the ledger: a client chose some of them


def usd(value: float) -> str:
    """Dollars with the digits that matter: cents for big sums, more for per-task costs."""
    if abs(value) >= 100:
        return f"${value:,.2f}"
    if abs(value) >= 0.01:
        return f"${value:,.4f}"
    return f"${value:.6f}"


def heading(column: Column) -> str:
    return f"{column.title} (ms)" if column.unit == "ms" else column.title


def _grid(columns: list[Column], rows: list[dict[str, Any]], total: dict[str, Any] | None = None) -> list[str]:
    """``total``: a last row below a rule."""
    head = [heading(c) for c in columns]
    body = [[cell(c, row.get(c.key)) for c in columns] for row in [*rows, *([total] if total is not None else [])]]
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(head)]
    left = [c.unit == "text" for c in columns]

    def line(cells: list[str]) -> str:
        return "  ".join(
            (v.ljust(w) if is_left else v.rjust(w)) for v, w, is_left in zip(cells, widths, left, strict=True)
        ).rstrip()

    rule = "  ".join("─" * w for w in widths)
    out = [line(head), rule]
    for i, cells in enumerate(body):
        if total is not None and i == len(rows) and rows:
            out.append(rule)
        out.append(line(cells))
    return out


def _raw(column: Column, value: Any) -> str:
    if isinstance(value, float):
        return repr(round(value, 10))
    # Names from the ledger (a client chose an unknown task's): never a formula in a spreadsheet.
    return spreadsheet_text(str(value)) if column.unit == "text" else str(value)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")
