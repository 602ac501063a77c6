"""``turnout retention show``: the effective retention of each tenant × task × data class."""

from __future__ import annotations

import click

from turnout.cli._common import (
    config_option,
    format_option,
    need,
    print_json,
    print_table,
    task_option,
    tenant_option,
)
from turnout.config import Config
from turnout.privacy.retention.show import Line, duration, lines

CONFIG_HELP = "YAML config file: its retention rules, capture rules, tasks' cache and tenants."


@click.group()
def retention() -> None:
    """What turnout keeps, where, and for how long (the config's `retention:` rules).

    Rules by tenant × task; the most specific rule that sets a field wins (tenant+task, task,
    tenant, then the rule naming neither). A background job in `turnout serve` deletes what is
    past its time, in batches, and records each run in the audit trail.

    \b
    turnout retention show
    turnout retention show --tenant acme --format json"""


@retention.command()
@tenant_option("Only this tenant (one of the config's; with none configured, anonymous).")
@task_option("Only this task (one of the config's).", known=True)
@format_option()
@config_option(CONFIG_HELP)
def show(tenant: str | None, task: str | None, fmt: str, config: Config) -> None:
    """Print the effective rule for each tenant × task × data class: metadata rows, captured
    text, review items and cached answers; where each is kept, for how long, and which rule
    said so."""
    if tenant is not None:  # with no tenants configured every request is the anonymous caller
        need("tenant", tenant, config.tenants or ("anonymous",))
    found = lines(config, tenant, task)
    if fmt == "json":
        print_json([line.as_json() for line in found])
        return
    if not found:
        click.echo("No tenant and task match.")
        return
    header = ["TENANT", "TASK", "CLASS", "LEDGER (METADATA)", "TEXT", "REVIEW", "CACHE"]
    print_table([header, *(_row(line) for line in found)])
    # Each kind but the cache lives in one place whatever the tenant and task: said once.
    where = [
        f"{label}: {getattr(found[0], kind).where}"
        for kind, label in (("ledger", "ledger"), ("text", "text"), ("review", "review items"))
        if any(getattr(line, kind).kept for line in found)
    ]
    if where:
        click.echo("\nwhere: " + "; ".join(where))


def _row(line: Line) -> list[str]:
    text = f"{line.text.what}: {duration(line.text)} [{line.text.source}]" if line.text.kept else "none"
    return [
        line.tenant,
        line.task,
        line.data_class,
        f"{duration(line.ledger)} [{line.ledger.source}]" if line.ledger.kept else "not kept",
        text,
        f"{duration(line.review)} [{line.review.source}]" if line.review.kept else "none",
        f"{duration(line.cache)} in {line.cache.where} [{line.cache.source}]" if line.cache.kept else "none",
    ]
