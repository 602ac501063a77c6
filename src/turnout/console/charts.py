"""Small SVG charts for the console's pages, drawn on the server: no script, no library.

Built on the report charts' parts (``turnout.offline.reports.charts``: round ticks, palette,
inks), sized for a page rather than a file, and scaled by CSS. Every mark has a ``<title>``
(its value on hover) and a class (``line``, ``point``, ``bar``) for tests. Text is escaped
here: names come from the config and the release store, never trusted as markup.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from xml.sax.saxutils import escape, quoteattr

from turnout.offline.reports.charts import FONT, GRID, MUTED, PALETTE, nice_ticks, svg_text

WIDTH, HEIGHT = 640, 230
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 40, 34
BAR_H, BAR_GAP, LABEL_W = 20, 8, 220
Format = Callable[[float], str]


def timeline(
    title: str,
    times: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    fmt: Format,
) -> str:
    """Lines over time: ``times`` label the x positions (a few are printed), each series a
    value per position (None: a gap, nothing to show there)."""
    values = [v for _, vs in series for v in vs if v is not None]
    ticks = nice_ticks(0.0, max(values, default=1.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(len(times) - 1, 1)

    def x(i: int) -> float:
        return LEFT + i * step

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / ticks[-1])

    out = [svg_text(LEFT, 20, title, size=14, weight="600")]
    out += _grid(ticks, y, fmt)
    every = max(1, len(times) // 5)
    for i, label in enumerate(times):
        if i % every == 0 or i == len(times) - 1:
            out.append(svg_text(x(i), HEIGHT - BOTTOM + 18, label, anchor="middle", fill=MUTED, size=10))
    legend_x = float(WIDTH - RIGHT)
    for n, (name, vs) in reversed(list(enumerate(series))):
        color = PALETTE[n % len(PALETTE)]
        legend_x -= 22 + 6.5 * len(name)
        out.append(f'<rect x="{legend_x:.1f}" y="14" width="12" height="4" rx="2" fill="{color}"/>')
        out.append(svg_text(legend_x + 16, 20, name, fill=MUTED, size=11))
        points = [(x(i), y(v), v, times[i]) for i, v in enumerate(vs) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in points)
            out.append(f'<polyline class="line" points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for px, py, v, label in points:
            out.append(
                f'<circle class="point" cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{color}">'
                f"<title>{escape(name)} at {escape(label)}: {escape(fmt(v))}</title></circle>"
            )
    return _svg(out, HEIGHT, title)


def hbars(title: str, labels: Sequence[str], values: Sequence[float | None], fmt: Format) -> str:
    """One horizontal bar per label (long labels read well this way); None: "n/a"."""
    known = [v for v in values if v is not None]
    ticks = nice_ticks(0.0, max(known, default=1.0))
    height = TOP + max(len(labels), 1) * (BAR_H + BAR_GAP) + 12
    span = WIDTH - LABEL_W - RIGHT - 70  # room for the value after the bar

    def w(v: float) -> float:
        return span * v / ticks[-1]

    out = [svg_text(LEFT, 20, title, size=14, weight="600")]
    if not labels:
        out.append(svg_text(WIDTH / 2, TOP + 14, "no data in this window", anchor="middle", fill=MUTED))
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        top = TOP + i * (BAR_H + BAR_GAP)
        out.append(svg_text(LABEL_W - 8, top + BAR_H / 2 + 4, _short(label), anchor="end", size=11))
        if v is None:
            out.append(svg_text(LABEL_W + 4, top + BAR_H / 2 + 4, "n/a", fill=MUTED, size=11))
            continue
        color = PALETTE[i % len(PALETTE)]
        out.append(
            f'<rect class="bar" x="{LABEL_W}" y="{top}" width="{max(w(v), 1.0):.1f}" height="{BAR_H}" rx="3" '
            f'fill="{color}"><title>{escape(label)}: {escape(fmt(v))}</title></rect>'
        )
        out.append(svg_text(LABEL_W + max(w(v), 1.0) + 6, top + BAR_H / 2 + 4, fmt(v), size=11, weight="600"))
    return _svg(out, height, title)


def _grid(ticks: list[float], y: Callable[[float], float], fmt: Format) -> list[str]:
    out = []
    for t in ticks:
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="{GRID}"/>')
        out.append(svg_text(LEFT - 6, y(t) + 4, fmt(t), anchor="end", fill=MUTED, size=10))
    return out


def _svg(parts: list[str], height: float, title: str) -> str:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" aria-label={quoteattr(title)} '
        f'viewBox="0 0 {WIDTH} {height:.0f}" font-family={quoteattr(FONT)}>'
    )
    return "\n".join([head, *parts, "</svg>"])


def _short(label: str, most: int = 34) -> str:
    return label if len(label) <= most else label[: most - 1] + "…"
