"""Charts as hand-written SVG: no plotting library to install, files any browser opens.

    cost     bars: cost per completed task by release (with ``--by day``: a trend line by day)
    latency  lines: p50 / p95 / p99 latency by day
    quality  bars: success rate by release
    usage    heat strip: requests by UTC hour of day, one strip per day

Every chart has a title, a subtitle with the window, labelled axes with round ticks, light
grid lines and values on hover (``<title>``). Marks carry a class (``bar``, ``point``,
``cell``) so tests can count them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from xml.sax.saxutils import escape

from turnout.ledger.record import LedgerRow
from turnout.offline.reports.figures import ReportTally, dimension
from turnout.offline.reports.render import usd

WIDTH, HEIGHT = 880, 460
LEFT, RIGHT, TOP, BOTTOM = 84, 28, 76, 72
FONT = "Inter, 'Segoe UI', 'Helvetica Neue', Helvetica, Arial, sans-serif"
PALETTE = ("#2563eb", "#f59e0b", "#dc2626", "#16a34a", "#9333ea")
INK, MUTED, GRID = "#0f172a", "#64748b", "#e2e8f0"
Format = Callable[[float], str]


def chart(
    kind: str,
    rows: Iterable[LedgerRow],
    *,
    since: float,
    until: float,
    by: Sequence[str] = (),
    review_cost: float | None = None,
) -> str:
    """The chart for a report of ``kind`` (see the module docstring)."""
    tally = ChartTally(kind, by=by, review_cost=review_cost)
    for row in rows:
        tally.add(row)
    return tally.svg(since, until)


class ChartTally:
    """A chart's figures counted a row at a time, as ``ReportTally`` counts a report's: the
    report command feeds both from one read of the ledger."""

    def __init__(self, kind: str, *, by: Sequence[str] = (), review_cost: float | None = None) -> None:
        self.kind, self.review_cost, self.requests = kind, review_cost, 0
        self.trend = kind == "latency" or (kind == "cost" and tuple(by) == ("day",))
        self.groups = ReportTally(kind, ("day",) if self.trend else ("release",), review_cost=review_cost)
        self.matrix: dict[str, list[int]] = {}  # usage: per day, requests per UTC hour

    def add(self, row: LedgerRow) -> None:
        self.requests += 1
        if self.kind == "usage":
            strip = self.matrix.get(day := dimension("day", row))
            if strip is None:
                strip = self.matrix[day] = [0] * 24
            strip[datetime.fromtimestamp(row.started_at, UTC).hour] += 1
        else:
            self.groups.add(row)

    def svg(self, since: float, until: float) -> str:
        kind, review_cost = self.kind, self.review_cost
        subtitle = f"{_day(since)} → {_day(until)} UTC · {self.requests:,} requests"
        if kind == "usage":
            days = sorted(self.matrix)
            return heat_strip("Requests by hour of day (UTC)", subtitle, days, [self.matrix[d] for d in days])
        groups = self.groups.report(since, until).rows
        if kind == "latency":
            series = [(f"p{q}", [r[f"latency_p{q}_ms"] for r in groups]) for q in (50, 95, 99)]
            days = [str(r["day"]) for r in groups]
            return line_chart("Latency by day", subtitle, days, series, "ms", lambda v: f"{v:,.0f} ms")
        if kind == "quality":
            labels = [r["release"] for r in groups]
            return bar_chart(
                "Success rate by release", subtitle, labels, [r["success_rate"] for r in groups], "%", _pct, top=1.0
            )
        key = "cost_per_completed_usd" if review_cost is None else "cost_per_completed_with_review_usd"
        if self.trend:
            title = "Cost per completed task by day" + (
                f" (review ${review_cost:g}/item)" if review_cost is not None else ""
            )
            days = [str(r["day"]) for r in groups]
            return line_chart(
                title, subtitle, days, [("cost per completed task", [r[key] for r in groups])], "USD", usd
            )
        title = "Cost per completed task by release" + (
            f" (incl. review at ${review_cost:g}/item)" if review_cost is not None else ""
        )
        return bar_chart(title, subtitle, [r["release"] for r in groups], [r[key] for r in groups], "USD", usd)


def line_chart(
    title: str,
    subtitle: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    unit: str,
    fmt: Format,
    x_label: str = "day (UTC)",
) -> str:
    values = [v for _, vs in series for v in vs if v is not None]
    ticks = nice_ticks(0.0, max(values, default=1.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(len(labels) - 1, 1)

    def x(i: int) -> float:
        return LEFT + (i * step if len(labels) > 1 else plot_w / 2)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / ticks[-1])

    out = _frame(title, subtitle) + _y_axis(ticks, y, fmt, unit)
    every = max(1, math.ceil(len(labels) / 12))  # at most about 12 labels on the x axis
    for i, label in enumerate(labels):
        if i % every == 0:
            out.append(svg_text(x(i), HEIGHT - BOTTOM + 22, label[5:] if len(label) == 10 else label, anchor="middle"))
    out.append(svg_text(LEFT + plot_w / 2, HEIGHT - 18, x_label, anchor="middle", fill=MUTED))
    for n, (name, vs) in enumerate(series):
        color = PALETTE[n % len(PALETTE)]
        points = [(x(i), y(v), v, labels[i]) for i, v in enumerate(vs) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in points)
            out.append(f'<polyline class="line" points="{path}" fill="none" stroke="{color}" stroke-width="2.5"/>')
        for px, py, v, label in points:
            out.append(
                f'<circle class="point" cx="{px:.1f}" cy="{py:.1f}" r="4" fill="#fff" stroke="{color}" '
                f'stroke-width="2"><title>{escape(name)} {escape(label)}: {escape(fmt(v))}</title></circle>'
            )
        if len(series) < 2:  # one line: the title names it
            continue
        lx = WIDTH - RIGHT - sum(28 + 7 * len(later) for later, _ in series[n:])  # top right
        out.append(f'<rect x="{lx}" y="{TOP - 30}" width="14" height="4" rx="2" fill="{color}"/>')
        out.append(svg_text(lx + 20, TOP - 24, name, size=12))
    return _svg(out)


def bar_chart(
    title: str,
    subtitle: str,
    labels: Sequence[str],
    values: Sequence[float | None],
    unit: str,
    fmt: Format,
    top: float | None = None,
) -> str:
    known = [v for v in values if v is not None]
    ticks = nice_ticks(0.0, top if top is not None else max(known, default=1.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(len(labels), 1)
    bar_w = min(96.0, slot * 0.62)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / ticks[-1])

    out = _frame(title, subtitle) + _y_axis(ticks, y, fmt, unit)
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        cx = LEFT + slot * (i + 0.5)
        out.append(svg_text(cx, HEIGHT - BOTTOM + 22, _short(label), anchor="middle"))
        if v is None:
            out.append(svg_text(cx, y(0) - 8, "n/a", anchor="middle", fill=MUTED, size=12))
            continue
        color = PALETTE[i % len(PALETTE)]
        out.append(
            f'<rect class="bar" x="{cx - bar_w / 2:.1f}" y="{y(v):.1f}" width="{bar_w:.1f}" '
            f'height="{y(0) - y(v):.1f}" rx="3" fill="{color}"><title>{escape(label)}: {escape(fmt(v))}</title></rect>'
        )
        out.append(svg_text(cx, y(v) - 8, fmt(v), anchor="middle", size=12, weight="600"))
    out.append(svg_text(LEFT + plot_w / 2, HEIGHT - 18, "release", anchor="middle", fill=MUTED))
    return _svg(out)


def heat_strip(title: str, subtitle: str, days: Sequence[str], matrix: Sequence[Sequence[int]]) -> str:
    peak = max((n for strip in matrix for n in strip), default=0) or 1
    label_w, cell_w, cell_h, gap = 96, 30.0, 22.0, 2.0
    height = TOP + len(days) * (cell_h + gap) + 88
    top = TOP + 16  # room for the hour labels under the subtitle
    height += 16
    out = _frame(title, subtitle, height)
    for h in range(24):
        cx = label_w + h * (cell_w + gap) + cell_w / 2
        if h % 3 == 0:
            out.append(svg_text(cx, top - 8, f"{h:02d}:00", anchor="middle", fill=MUTED, size=11))
    for d, (day, strip) in enumerate(zip(days, matrix, strict=True)):
        cy = top + d * (cell_h + gap)
        weekday = datetime.fromisoformat(day).strftime("%a")
        out.append(svg_text(label_w - 10, cy + cell_h / 2 + 4, f"{weekday} {day[5:]}", anchor="end", size=12))
        for h, n in enumerate(strip):
            cx = label_w + h * (cell_w + gap)
            out.append(
                f'<rect class="cell" x="{cx:.1f}" y="{cy:.1f}" width="{cell_w}" height="{cell_h}" rx="3" '
                f'fill="{heat(n / peak)}"><title>{day} {h:02d}:00 UTC: {n:,} requests</title></rect>'
            )
    legend_y = top + len(days) * (cell_h + gap) + 18
    out.append(svg_text(label_w, legend_y + 12, "0", anchor="end", fill=MUTED, size=11))
    for i in range(10):
        out.append(
            f'<rect x="{label_w + 6 + i * 22}" y="{legend_y}" width="20" height="14" rx="2" fill="{heat(i / 9)}"/>'
        )
    out.append(svg_text(label_w + 6 + 10 * 22 + 6, legend_y + 12, f"{peak:,} requests/hour", fill=MUTED, size=11))
    out.append(svg_text(label_w + 12 * (cell_w + gap), legend_y + 48, "hour of day (UTC)", anchor="middle", fill=MUTED))
    return _svg(out, height)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values from ``low`` to at least ``high``: steps of 1, 2, 2.5 or 5 × 10^k."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    n = math.ceil((high - low) / step - 1e-9)
    return [low + i * step for i in range(n + 1)]


def heat(share: float) -> str:
    """From a pale slate (nothing) to deep blue (the peak)."""
    lo, hi = (241, 245, 249), (30, 64, 175)
    t = 0.0 if share <= 0 else 0.12 + 0.88 * min(share, 1.0)  # any traffic is visibly not empty
    r, g, b = (round(a + (z - a) * t) for a, z in zip(lo, hi, strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def _frame(title: str, subtitle: str, height: float = HEIGHT) -> list[str]:
    return [
        f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        svg_text(24, 34, title, size=20, weight="700"),
        svg_text(24, 56, subtitle, fill=MUTED, size=13),
    ]


def _y_axis(ticks: list[float], y: Callable[[float], float], fmt: Format, unit: str) -> list[str]:
    out = []
    for t in ticks:
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="{GRID}"/>')
        out.append(svg_text(LEFT - 10, y(t) + 4, _tick(fmt(t)), anchor="end", fill=MUTED, size=11))
    out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="{MUTED}"/>')
    mid = (y(ticks[0]) + y(ticks[-1])) / 2
    out.append(
        f'<text x="18" y="{mid:.1f}" transform="rotate(-90 18 {mid:.1f})" text-anchor="middle" '
        f'font-size="12" fill="{MUTED}">{escape(unit)}</text>'
    )
    return out


def svg_text(
    x: float, y: float, text: str, *, anchor: str = "start", fill: str = INK, size: int = 12, weight: str = "400"
) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" font-weight="{weight}" '
        f'fill="{fill}">{escape(text)}</text>'
    )


def _svg(parts: list[str], height: float = HEIGHT) -> str:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0f}" '
        f'viewBox="0 0 {WIDTH} {height:.0f}" font-family="{FONT}">'
    )
    return "\n".join([head, *parts, "</svg>"]) + "\n"


def _tick(label: str) -> str:
    """``$0.004000`` → ``$0.004``: ticks are round, their trailing zeros are noise."""
    trimmed = re.sub(r"(\.\d*?)0+(?=\D|$)", r"\1", label)
    return re.sub(r"\.(?=\D|$)", "", trimmed)


def _short(label: str, most: int = 18) -> str:
    return label if len(label) <= most else label[: most - 1] + "…"


def _pct(v: float) -> str:
    return f"{100 * v:.0f}%"


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")
