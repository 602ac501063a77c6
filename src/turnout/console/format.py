"""Template filters: how the console prints times, money, rates and durations. A figure that
cannot be computed prints ``–``, as in the reports' tables."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from turnout.offline.reports.render import usd

DASH = "–"


def when(ts: float | str | None) -> str:
    """Epoch seconds, or ISO 8601 as the admin API writes times."""
    if ts is None:
        return DASH
    return datetime.fromtimestamp(_seconds(ts), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(ts: float | str | None, now: float) -> str:
    if ts is None:
        return DASH
    s = now - _seconds(ts)
    if s < 0:
        return "in " + _span(-s)
    return _span(s) + " ago"


def _seconds(ts: float | str) -> float:
    return datetime.fromisoformat(ts).timestamp() if isinstance(ts, str) else ts


def money(value: float | None) -> str:
    return DASH if value is None else usd(value)


def pct(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.1f}%"


def ms(value: float | None) -> str:
    if value is None:
        return DASH
    return f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


def num(value: int | float | None) -> str:
    return DASH if value is None else f"{value:,}"


def _span(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


FILTERS: dict[str, Callable[..., Any]] = {
    "when": when,
    "ago": ago,
    "money": money,
    "pct": pct,
    "ms": ms,
    "num": num,
}
