"""The overview's figures: ledger rows of one window in, tiles, tables and charts out (pure).

Definitions are the reports' (``turnout.offline.reports.figures``): cost per completed task is
``compute("cost")``'s, by task × release × target; latency percentiles are over requests that
are not caller errors (4xx); an error is a 5xx, or an error class on a row that is not a 4xx
(``turnout.ledger.store.is_error``); a fallback is a request answered or failed after leaving
its first target. Phases: ``queue`` (waiting for a local slot), ``ttft`` (time to first
token, streams), ``generation`` (first token to last) and ``total``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from turnout.console.charts import hbars, timeline
from turnout.ledger.record import LedgerRow
from turnout.ledger.store import is_caller_error, is_error, percentile
from turnout.offline.reports.figures import TOTAL, compute
from turnout.offline.reports.render import usd

WINDOWS = {"15m": 900.0, "1h": 3600.0, "6h": 6 * 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}
DEFAULT_WINDOW = "1h"
ROW_LIMIT = 100_000  # the most rows one page reads: a week of heavy traffic is summarised, not all read
BUCKETS = 30
BY = ("task", "release", "target")
PHASES = (("queue", "queue_ms"), ("ttft", "ttft_ms"), ("generation", "generation_ms"), ("total", "latency_ms"))
MAX_GROUPS = 50  # task × release × target rows in the table and bars; the smallest others are summed as one
UNKNOWN = "(unknown task)"  # every name a client made up (404s): any tenant can invent thousands
OTHER = "(other)"


@dataclass(slots=True)
class Overview:
    window: str
    since: float
    until: float
    tiles: dict[str, Any]
    groups: list[dict[str, Any]]  # one per task × release × target, then the window's, "(all)"
    charts: list[str]
    notes: list[str] = field(default_factory=list)


def build(
    rows: Sequence[LedgerRow],
    window: str,
    since: float,
    until: float,
    truncated: bool,
    known: Collection[str] | None = None,
) -> Overview:
    """``known``: the tasks the gateway serves; rows naming any other task that never reached a
    target are summed as one ``(unknown task)`` group, so made-up names cannot flood the page."""
    rows, notes = _folded(rows, known)
    cost = compute("cost", rows, by=BY, since=since, until=until)
    groups: dict[tuple[str, ...], list[LedgerRow]] = defaultdict(list)
    for row in rows:
        groups[_key(row)].append(row)
    out = []
    for figures in cost.rows:
        mine = groups[tuple(figures[d] for d in BY)]
        out.append({**figures, **_health(mine), **_phases(mine)})
    # The window's row, last, labelled as the reports label it; a group named "all" is a group.
    whole = {**dict.fromkeys(BY, TOTAL), **cost.total, **_health(rows), **_phases(rows)}
    out.append(whole)
    tiles = {
        "requests": whole["requests"],
        "errors": whole["errors"],
        "error_rate": whole.get("error_rate"),
        "fallbacks": whole["fallbacks"],
        "fallback_rate": whole.get("fallback_rate"),
        "completed": whole.get("completed", 0),
        "spend_usd": whole.get("spend_usd"),
        "cost_per_completed_usd": whole.get("cost_per_completed_usd"),
        "total_p95_ms": whole.get("total_p95_ms"),
    }
    notes = list(cost.notes) + notes
    if truncated:
        notes.append(f"this window holds more than {ROW_LIMIT:,} requests: the figures cover its first {ROW_LIMIT:,}")
    return Overview(window, since, until, tiles, out, _charts(rows, since, until, out[:-1]), notes)


def _folded(rows: Sequence[LedgerRow], known: Collection[str] | None) -> tuple[Sequence[LedgerRow], list[str]]:
    notes = []
    if known is not None:
        made_up = {r.task for r in rows if r.target is None and r.task not in known}
        if made_up:
            rows = [replace(r, task=UNKNOWN) if r.task in made_up and r.target is None else r for r in rows]
            notes.append(f"{len(made_up):,} task names the gateway does not serve are summed as {UNKNOWN}")
    counts = Counter(_key(r) for r in rows)
    if len(counts) > MAX_GROUPS:
        kept = {k for k, _ in counts.most_common(MAX_GROUPS - 1)}
        rows = [r if _key(r) in kept else replace(r, task=OTHER, release=OTHER, target=OTHER) for r in rows]
        notes.append(f"the {len(counts) - len(kept):,} smallest task · release · target groups are summed as {OTHER}")
    return rows, notes


def _key(row: LedgerRow) -> tuple[str, ...]:
    return tuple(_name(getattr(row, d)) for d in BY)


def _name(value: Any) -> str:
    return "(none)" if value is None else str(value)


def _health(rows: Sequence[LedgerRow]) -> dict[str, Any]:
    n = len(rows)
    errors = sum(is_error(r.status, r.error_class) for r in rows)
    fallbacks = sum(r.fallback for r in rows)
    return {
        "requests": n,
        "errors": errors,
        "error_rate": errors / n if n else None,
        "fallbacks": fallbacks,
        "fallback_rate": fallbacks / n if n else None,
    }


def _phases(rows: Sequence[LedgerRow]) -> dict[str, Any]:
    served = [r for r in rows if not is_caller_error(r.status, r.error_class)]
    out: dict[str, Any] = {}
    for phase, attr in PHASES:
        values = [v for r in served if (v := getattr(r, attr)) is not None]
        out[f"{phase}_p50_ms"] = percentile(values, 0.5)
        out[f"{phase}_p95_ms"] = percentile(values, 0.95)
    return out


def _charts(rows: Sequence[LedgerRow], since: float, until: float, groups: list[dict[str, Any]]) -> list[str]:
    step = (until - since) / BUCKETS
    buckets: list[list[LedgerRow]] = [[] for _ in range(BUCKETS)]
    for row in rows:
        i = int((row.started_at - since) / step)
        buckets[min(max(i, 0), BUCKETS - 1)].append(row)
    fmt = "%H:%M" if until - since <= 86400 else "%m-%d %H:%M"
    times = [datetime.fromtimestamp(since + (i + 1) * step, UTC).strftime(fmt) for i in range(BUCKETS)]
    traffic = timeline(
        f"Requests, errors and fallbacks (per {_span(step)})",
        times,
        [
            ("requests", [float(len(b)) for b in buckets]),
            ("errors", [float(sum(is_error(r.status, r.error_class) for r in b)) for b in buckets]),
            ("fallbacks", [float(sum(r.fallback for r in b)) for b in buckets]),
        ],
        _count,
    )
    phases = [_phases(b) for b in buckets]
    latency = timeline(
        "Latency (ms)",
        times,
        [
            ("total p50", [p["total_p50_ms"] for p in phases]),
            ("total p95", [p["total_p95_ms"] for p in phases]),
            ("ttft p95", [p["ttft_p95_ms"] for p in phases]),
        ],
        _ms,
    )
    labels = [" · ".join(str(g[d]) for d in BY) for g in groups if g["requests"]]
    values = [g.get("cost_per_completed_usd") for g in groups if g["requests"]]
    cost = hbars("Cost per completed task (task · release · target)", labels, values, usd)
    return [traffic, latency, cost]


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _count(v: float) -> str:
    return f"{v:,.0f}" if v >= 10 or v == int(v) else f"{v:.1f}"


def _ms(v: float) -> str:
    return f"{v:,.0f}" if v >= 10 else f"{v:.1f}"
