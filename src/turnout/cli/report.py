"""``turnout report cost|latency|quality|usage``: figures and charts from the ledger.

Reads the configured ledger (``store:``, opened by the same factory the gateway uses) with one
bounded query, ``rows_between``; it writes nothing to it. The arithmetic is in
``turnout.offline.reports.figures``, whose docstring defines every figure.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import click

from turnout.config import Config
from turnout.ledger.record import LedgerRow
from turnout.ledger.store import StoreError, open_store
from turnout.offline.reports.charts import chart
from turnout.offline.reports.figures import DIMENSIONS, KINDS, compute
from turnout.offline.reports.render import FORMATS, render

MAX_ROWS = 2_000_000  # a guard for the one query; a week of a busy gateway fits
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([mhdw])")
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DEFAULT_BY = {"quality": "release"}


def parse_when(text: str, now: float) -> float:
    """``7d``, ``24h``, ``30m``, ``2w`` (that long before ``now``) or an ISO date or time (UTC
    unless it names its offset)."""
    text = text.strip()
    relative = _RELATIVE.fullmatch(text)
    if relative:
        return now - float(relative.group(1)) * _UNITS[relative.group(2)]
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (7d, 24h, 30m, 2w) nor an ISO date or time") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def parse_by(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in parts if p not in DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown dimension {unknown[0]!r}; use {', '.join(DIMENSIONS)}")
    if len(set(parts)) != len(parts):
        raise ValueError("a dimension is named twice")
    return parts


@click.command(name="report")
@click.argument("kind", type=click.Choice(KINDS))
@click.option("--since", default="7d", show_default=True, help="Start: a duration back from now (7d, 24h) or ISO.")
@click.option("--until", default=None, help="End (exclusive): a duration back from now or ISO; default now.")
@click.option("--by", "by_text", default=None, help=f"Group by, comma-separated: {', '.join(DIMENSIONS)}.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--chart", "chart_path", type=click.Path(dir_okay=False), help="Also write a chart (.svg).")
@click.option("--review-cost", type=click.FloatRange(min=0), help="USD of human work per failed or reviewed task.")
@click.option("--tenant", help="Only this tenant's requests.")
@click.option("--task", help="Only this task's requests.")
@click.option(
    "--config", "-c", "config_path", type=click.Path(dir_okay=False), envvar="TURNOUT_CONFIG", help="YAML config file."
)
def report(
    kind: str,
    since: str,
    until: str | None,
    by_text: str | None,
    fmt: str,
    chart_path: str | None,
    review_cost: float | None,
    tenant: str | None,
    task: str | None,
    config_path: str | None,
) -> None:
    """Cost per completed task, latency, quality or usage, from the ledger.

    \b
    turnout report cost --since 7d --by task,release --review-cost 4.50
    turnout report latency --by target --chart latency.svg
    turnout report quality --format json
    turnout report usage --by tenant --chart usage.svg

    Charts: cost → cost per completed task by release (with --by day: a trend by day);
    latency → p50/p95/p99 by day; quality → success rate by release; usage → requests by hour
    of day (UTC), one strip per day. SVG only: open it in a browser."""
    from turnout.cli.main import _load

    now = time.time()
    try:
        start = parse_when(since, now)
        end = parse_when(until, now) if until else now
        by = parse_by(by_text if by_text is not None else DEFAULT_BY.get(kind))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if end <= start:
        raise click.UsageError("--until must be after --since")
    if chart_path is not None and Path(chart_path).suffix.lower() != ".svg":
        raise click.UsageError("charts are written as SVG only: name the file .svg (PNG is not supported)")
    config = _load(config_path)
    rows = _rows(config, start, end, tenant, task)
    if len(rows) >= MAX_ROWS:
        click.echo(f"warning: the window holds {MAX_ROWS:,} rows or more; only the oldest were read", err=True)
    result = compute(kind, rows, by=by, since=start, until=end, review_cost=review_cost)
    click.echo(render(result, fmt), nl=False)
    if chart_path is not None:
        svg = chart(kind, rows, since=start, until=end, by=by, review_cost=review_cost)
        Path(chart_path).write_text(svg, encoding="utf-8")
        click.echo(f"chart: {chart_path}", err=True)


def _rows(config: Config, since: float, until: float, tenant: str | None, task: str | None) -> Sequence[LedgerRow]:
    cfg = config.store
    if cfg.kind == "none":
        _fail("the config has no ledger (store.kind: none): nothing to report")
    if cfg.kind == "memory":
        _fail("the config's ledger is in memory (store.kind: memory): it lives only inside a running gateway")
    if cfg.kind == "sqlite" and cfg.path != ":memory:" and not Path(cfg.path).is_file():
        _fail(f"no ledger at {cfg.path}: has the gateway run with this config?")

    async def read() -> list[LedgerRow]:
        store = open_store(cfg)
        await store.open()
        try:
            return await store.rows_between(since, until, tenant=tenant, task=task, limit=MAX_ROWS)
        finally:
            await store.aclose()

    try:
        return asyncio.run(read())
    except StoreError as exc:
        _fail(exc.message)


def _fail(message: str) -> NoReturn:
    click.echo(f"turnout report: {message}", err=True)
    sys.exit(1)
