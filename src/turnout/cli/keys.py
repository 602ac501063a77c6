"""``turnout keys``: issue, list and revoke API keys in the store the config's limits backend
names (a SQLite file at ``limits.keys_path``, or Redis). A running gateway sees each change on
its next request.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from turnout.cli._common import (
    AHEAD,
    TIME_METAVAR,
    CommandError,
    config_option,
    format_option,
    print_listing,
    run_store,
    tenant_option,
    when,
)
from turnout.config import Config
from turnout.control.keys.base import MAX_KEY_TTL_S, IssuedKey, KeyStore
from turnout.control.keys.factory import open_key_store

T = TypeVar("T")

CONFIG_HELP = (
    "YAML config file: its tenants, and its limits section for where keys live "
    "(limits.keys_path, or Redis when limits.backend is redis)."
)


@click.group()
def keys() -> None:
    """Issue, list and revoke API keys.

    A key's secret is shown once, when it is created; only its SHA-256 digest is stored. Keys
    live where the config's limits backend says: a SQLite file at limits.keys_path, or Redis.
    A running gateway sees new and revoked keys on its next request.

    \b
    turnout keys create --tenant acme --name ci --expires 90d -c turnout.yaml
    turnout keys list --tenant acme -c turnout.yaml
    turnout keys revoke key_3f9c0a1b2c3d4e5f -c turnout.yaml"""


@keys.command()
@tenant_option("The tenant the key belongs to; it must be in the config.", required=True, known=True)
@click.option(
    "--name",
    "-n",
    default="",
    show_default=False,
    help="A label to recognise the key by in `keys list` (e.g. who holds it).",
)
@click.option(
    "--expires",
    "expires_at",
    type=AHEAD,
    metavar=TIME_METAVAR,
    help="When the key stops working: a duration from now (30d, 12h, 90m) or an ISO date or date-time "
    "(2026-12-31, 2026-12-31T18:00+02:00; without a zone: UTC). Default: never.",
)
@config_option(CONFIG_HELP)
def create(tenant: str, name: str, expires_at: float | None, config: Config) -> None:
    """Create a key for a tenant and print its secret: the only time it is shown."""
    now = time.time()
    if expires_at is not None and expires_at - now > MAX_KEY_TTL_S:
        raise click.BadParameter("at most 100 years from now (the admin API's bound too)", param_hint="--expires")
    if not name.isprintable():
        raise click.BadParameter("a key's name is printed in tables: no control characters", param_hint="--name")
    key, secret = _run(config, lambda store: store.create(tenant, name, expires_at, now))
    click.echo(f"Created key {key.id} for tenant {key.tenant!r}.")
    click.echo(f"  id:      {key.id}")
    click.echo(f"  name:    {key.name or '-'}")
    click.echo(f"  tenant:  {key.tenant}")
    click.echo(f"  expires: {when(key.expires_at) if key.expires_at is not None else 'never'}")
    click.echo(f"  secret:  {secret}")
    click.echo("Copy the secret now: it will not be shown again (only its digest is stored).")


@keys.command(name="list")
@tenant_option("Only this tenant's keys; it must be in the config.", known=True)
@format_option()
@config_option(CONFIG_HELP)
def list_(tenant: str | None, fmt: str, config: Config) -> None:
    """List keys, never their secrets.

    Shows each key's id, tenant, name, hint (the secret's first characters), when it was
    created and expires (UTC), and its status: live, expired or revoked, oldest first. With
    --format json, an array of objects: the first key's id is `.[0].id` (jq).
    A tenant not in the config is refused (exit 1), as `keys create` refuses it; without
    --tenant every key is listed, those of tenants since removed from the config too."""
    found = _run(config, lambda store: store.list(tenant))
    now = time.time()
    print_listing(
        fmt,
        found,
        as_json=lambda k: _as_json(k, now),
        header=("ID", "TENANT", "NAME", "HINT", "CREATED", "EXPIRES", "STATUS"),
        as_row=lambda k: _as_row(k, now),
        none=f"no keys for tenant {tenant!r}" if tenant else "no keys",
    )


@keys.command()
@click.argument("key_id")
@config_option(CONFIG_HELP)
def revoke(key_id: str, config: Config) -> None:
    """Revoke the key KEY_ID (as `keys list` shows it). It is refused from the next request on;
    revoking it again keeps the first time."""
    now = time.time()
    key = _run(config, lambda store: store.revoke(key_id, now))
    if key is None:
        raise CommandError(f"no key with id {key_id!r} (see `turnout keys list`)")
    if key.revoked_at is not None and key.revoked_at != now:  # revoked before: the first time stays
        click.echo(f"Key {key.id} (tenant {key.tenant!r}) was already revoked at {when(key.revoked_at)}.")
    else:
        click.echo(f"Revoked key {key.id} (tenant {key.tenant!r}, name {key.name or '-'}).")


def _as_row(k: IssuedKey, now: float) -> tuple[str, ...]:
    expires = when(k.expires_at) if k.expires_at is not None else "never"
    return (k.id, k.tenant, k.name or "-", k.hint, when(k.created_at), expires, k.status(now))


def _as_json(key: IssuedKey, now: float) -> dict[str, Any]:
    return key.to_json(now)


def _run(config: Config, action: Callable[[KeyStore], Awaitable[T]]) -> T:
    return run_store(lambda: open_key_store(config.limits), action, "the key store")
