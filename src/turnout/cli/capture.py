"""``turnout capture``: grant, list and revoke full-capture grants, read the audit trail, purge.

The store is ``capture.db`` beside the ledger (the directory of ``store.path``), or the fleet's
PostgreSQL; a gateway with its ledger in memory (or none) keeps capture in memory, and every
command here refuses it. A running gateway sees a new grant or a revocation within a second.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from turnout.cli._common import (
    CommandError,
    by_option,
    config_option,
    format_option,
    iso,
    nonblank,
    print_listing,
    run_store,
    task_option,
    tenant_option,
    when,
)
from turnout.config import Config
from turnout.privacy.capture.model import AuditEvent, Grant
from turnout.privacy.capture.policy import rule_for
from turnout.privacy.capture.purge import Purger
from turnout.privacy.capture.store import CaptureStore
from turnout.serving.runtime import capture_place

T = TypeVar("T")

MAX_GRANT_MINUTES = 24 * 60  # a grant is for an investigation, not a standing permission
CLI_ACTOR = "cli"

CONFIG_HELP = (
    "YAML config file: its tenants, tasks and capture rules, and store.path (capture.db lives beside it; "
    "with state.kind: postgres, in the fleet's database)."
)


@click.group()
def capture() -> None:
    """Grant and audit the capture of prompt and completion text.

    Text is kept only where the config's capture rules say so: `redacted` after secrets and PII
    are replaced; `full` only while a grant made here is live (secrets are still scrubbed).
    Every grant, its use, its expiry or revocation, and every purge are in the audit trail.

    \b
    turnout capture grant --tenant acme --task support --minutes 30 --reason "ticket 4812" --by alice
    turnout capture list --active
    turnout capture revoke grt_3f9c0a1b2c3d4e5f --by alice
    turnout capture audit --tenant acme"""


@capture.command()
@tenant_option("The tenant; it must be in the config.", required=True, known=True)
@task_option("The task; it must be in the config.", required=True, known=True)
@click.option(
    "--minutes",
    required=True,
    type=click.IntRange(1, MAX_GRANT_MINUTES),
    help=f"How long the grant lasts, from now (1 to {MAX_GRANT_MINUTES}).",
)
@click.option("--reason", required=True, callback=nonblank, help="Why: kept in the audit trail.")
@by_option("Who grants it: kept in the audit trail.")
@config_option(CONFIG_HELP)
def grant(tenant: str, task: str, minutes: int, reason: str, by: str, config: Config) -> None:
    """Allow full capture for a tenant and task for MINUTES from now.

    The config's capture rule for the pair must say `mode: full`; the grant is what makes it
    take effect."""
    mode, _ = rule_for(config.capture, tenant, task)
    if mode != "full":
        raise CommandError(
            f"the capture rule for tenant {tenant!r} and task {task!r} is {mode!r}, so a grant would change "
            "nothing; add a capture rule with mode: full for them first"
        )
    now = time.time()
    made = _run(config, lambda store: store.create_grant(tenant, task, now, now + minutes * 60, reason, by))
    click.echo(f"Granted {made.id}: full capture for tenant {tenant!r}, task {task!r}.")
    click.echo(f"  from:   {_when(made.starts_at)}")
    click.echo(f"  until:  {_when(made.ends_at)} ({minutes} min)")
    click.echo(f"  by:     {made.granted_by}")
    click.echo(f"  reason: {made.reason}")
    click.echo(f"Revoke early with: turnout capture revoke {made.id} --by NAME")


@capture.command(name="list")
@click.option("--active", is_flag=True, help="Only grants live now.")
@tenant_option("Only this tenant's grants.")
@format_option()
@config_option(CONFIG_HELP)
def list_(active: bool, tenant: str | None, fmt: str, config: Config) -> None:
    """List grants with their status: active, expired or revoked."""
    now = time.time()

    async def grants(store: CaptureStore) -> list[Grant]:
        await store.expire_grants(now)  # so the trail shows every expiry this listing reports
        return await store.grants(tenant)

    found = [g for g in _run(config, grants) if not active or g.live(now)]
    print_listing(
        fmt,
        found,
        as_json=lambda g: _grant_json(g, now),
        header=("ID", "TENANT", "TASK", "FROM", "UNTIL", "BY", "STATUS", "REASON"),
        as_row=lambda g: _grant_row(g, now),
        none="no active grants" if active else "no grants",
    )


@capture.command()
@click.argument("grant_id")
@by_option("Who revokes it: kept in the audit trail.")
@config_option(CONFIG_HELP)
def revoke(grant_id: str, by: str, config: Config) -> None:
    """End the grant GRANT_ID now (as `capture list` shows it)."""
    now = time.time()
    found = _run(config, lambda store: store.revoke_grant(grant_id, by, now))
    if found is None:
        raise CommandError(f"no grant with id {grant_id!r} (see `turnout capture list`)")
    if found.revoked_at is not None and found.revoked_at != now:
        click.echo(f"Grant {found.id} was already revoked at {_when(found.revoked_at)} by {found.revoked_by}.")
    elif found.revoked_at is None:
        click.echo(f"Grant {found.id} already expired at {_when(found.ends_at)}; nothing to revoke.")
    else:
        click.echo(f"Revoked {found.id} (tenant {found.tenant!r}, task {found.task!r}).")


@capture.command()
@tenant_option("Only events about this tenant (purge runs name no tenant).")
@click.option("--limit", type=click.IntRange(1), help="Only the last N events.")
@format_option()
@config_option(CONFIG_HELP)
def audit(tenant: str | None, limit: int | None, fmt: str, config: Config) -> None:
    """Print the audit trail, oldest first: grants, uses, expiries, revocations, purges."""
    now = time.time()

    async def events(store: CaptureStore) -> list[AuditEvent]:
        await store.expire_grants(now)
        return await store.audit(tenant, limit)

    print_listing(
        fmt,
        _run(config, events),
        as_json=_event_json,
        header=("ID", "AT", "EVENT", "GRANT", "TENANT", "TASK", "REQUEST", "ACTOR", "DETAIL"),
        as_row=_event_row,
        none="no audit events",
    )


@capture.command()
@config_option(CONFIG_HELP)
def purge(config: Config) -> None:
    """Delete captured text past its retention now, and record grants that ended."""
    result = _run(config, lambda store: Purger(store, config.capture.purge_interval_s).run_once(actor=CLI_ACTOR))
    click.echo(f"Purged {result.deleted} captures; recorded {len(result.expired)} expired grants.")


def _grant_row(g: Grant, now: float) -> tuple[str, ...]:
    status = g.status(now) + (f" by {g.revoked_by}" if g.revoked_by else "")
    return (g.id, g.tenant, g.task, _when(g.starts_at), _when(g.ends_at), g.granted_by, status, g.reason)


def _event_row(e: AuditEvent) -> tuple[str, ...]:
    return (
        str(e.id),
        _when(e.at),
        e.event,
        e.grant_id or "-",
        e.tenant or "-",
        e.task or "-",
        e.request_id or "-",
        e.actor,
        e.detail,
    )


def _grant_json(g: Grant, now: float) -> dict[str, Any]:
    return {
        "id": g.id,
        "tenant": g.tenant,
        "task": g.task,
        "starts_at": iso(g.starts_at),
        "ends_at": iso(g.ends_at),
        "reason": g.reason,
        "granted_by": g.granted_by,
        "revoked_at": iso(g.revoked_at),
        "revoked_by": g.revoked_by,
        "status": g.status(now),
    }


def _event_json(e: AuditEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": iso(e.at),
        "event": e.event,
        "grant_id": e.grant_id,
        "tenant": e.tenant,
        "task": e.task,
        "request_id": e.request_id,
        "actor": e.actor,
        "detail": e.detail,
    }


def _when(at: float) -> str:
    return when(at, seconds=True)  # grants last minutes: the seconds matter


def _run(config: Config, action: Callable[[CaptureStore], Awaitable[T]]) -> T:
    place = capture_place(config)
    if place == ":memory:":  # a grant written to a file here would never reach the gateway
        raise CommandError(
            f"with store.kind: {config.store.kind}, the gateway keeps capture (grants, audit, text) in memory, "
            "where no command reaches it; give it a sqlite or postgres ledger, or state.kind: postgres"
        )
    return run_store(lambda: CaptureStore(place), action, "the capture store")
