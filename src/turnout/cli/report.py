"""``turnout report cost|latency|quality|usage``: figures and charts from the ledger.

Reads the configured ledger (``store:``, opened by the same factory the gateway uses) a page at
a time (``rows_between``), counting the report (and the chart) as the rows come, so a window of
any size is read whole in bounded memory; it writes nothing to it. The arithmetic is in
``turnout.offline.reports.figures``, whose docstring defines every figure.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from turnout.cli import shadow
from turnout.cli._common import (
    AGO,
    TIME_METAVAR,
    Finite,
    config_option,
    format_option,
    read_ledger,
    since_option,
    task_option,
    tenant_option,
)
from turnout.config import Config
from turnout.ledger.record import LedgerRow
from turnout.offline.reports.charts import ChartTally
from turnout.offline.reports.figures import DIMENSIONS, KINDS, HumanCost, ReportTally
from turnout.offline.reports.render import FORMATS, render

DEFAULT_BY = {"quality": "release"}


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
@click.argument("kind", type=click.Choice((*KINDS, "shadow")))
@since_option("Start: a duration back from now (7d, 24h) or an ISO date or time.")
@click.option(
    "--until",
    type=AGO,
    metavar=TIME_METAVAR,
    help="End (exclusive): a duration back from now or an ISO date or time. Default: now.",
)
@click.option(
    "--by", "by_text", help=f"Group by, comma-separated: {', '.join(DIMENSIONS)}. Default: release for quality."
)
@format_option("A table to read, JSON or CSV to process.", FORMATS)
@click.option("--chart", "chart_path", type=click.Path(dir_okay=False), help="Also write a chart (.svg).")
@click.option(
    "--review-cost",
    type=Finite(min=0),
    help="USD of human work per failed or reviewed task.",
)
@tenant_option("Only this tenant's requests.")
@task_option("Only this task's requests.")
@config_option("YAML config file: its store (the ledger to read).")
def report(
    kind: str,
    since: float,
    until: float | None,
    by_text: str | None,
    fmt: str,
    chart_path: str | None,
    review_cost: float | None,
    tenant: str | None,
    task: str | None,
    config: Config,
) -> None:
    """Cost per completed task, latency, quality or usage, from the ledger.

    \b
    turnout report cost --since 7d --by task,release --review-cost 4.50
    turnout report latency --by target --chart latency.svg
    turnout report quality --format json
    turnout report usage --by tenant --chart usage.svg
    turnout report shadow --task extract

    shadow: each shadow release's sample beside the served answers (agreement, pass rates,
    latency, cost, with 95% intervals), from the shadow store.

    Tasks with review_cost_usd or escalation_cost_usd add "cost/completed full": (spend +
    reviewed tasks × review + escalated tasks × escalation) ÷ completed tasks, where a task is
    an episode (or a request without one): its review is paid once, not once per request.

    Charts: cost → cost per completed task by release (with --by day: a trend by day);
    latency → p50/p95/p99 by day; quality → success rate by release; usage → requests by hour
    of day (UTC), one strip per day. SVG only: open it in a browser."""
    end = until if until is not None else time.time()
    try:
        by = parse_by(by_text if by_text is not None else DEFAULT_BY.get(kind))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--by'") from exc
    if end <= since:
        raise click.UsageError("--until must be after --since")
    if chart_path is not None and Path(chart_path).suffix.lower() != ".svg":
        raise click.UsageError("charts are written as SVG only: name the file .svg (PNG is not supported)")
    if kind == "shadow":  # from the shadow store, not the ledger
        if fmt not in ("table", "json", "csv"):
            raise click.UsageError("shadow reports are a table, JSON or CSV")
        click.echo(shadow.report(config, since, end, task, fmt), nl=False)
        return
    tally = ReportTally(kind, by, review_cost=review_cost, people=people(config))
    drawn = ChartTally(kind, by=by, review_cost=review_cost) if chart_path is not None else None

    def each(row: LedgerRow) -> None:
        tally.add(row)
        if drawn is not None:
            drawn.add(row)

    read_ledger(config, since, end, each, tenant=tenant, task=task)
    click.echo(render(tally.report(since, end), fmt), nl=False)
    if chart_path is not None and drawn is not None:
        Path(chart_path).write_text(drawn.svg(since, end), encoding="utf-8")
        click.echo(f"chart: {chart_path}", err=True)


def people(config: Config) -> dict[str, HumanCost]:
    """Per task with a ``review_cost_usd`` or ``escalation_cost_usd``: what people cost."""
    return {
        name: HumanCost(task.review_cost_usd or 0.0, task.escalation_cost_usd or 0.0)
        for name, task in config.tasks.items()
        if task.review_cost_usd is not None or task.escalation_cost_usd is not None
    }
