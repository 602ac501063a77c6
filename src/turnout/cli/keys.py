"""``turnout keys``: issue, list and revoke API keys in the store the config's limits backend
names (a SQLite file at ``limits.keys_path``, or Redis). A running gateway sees each change on
its next request.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click
import orjson

from turnout.cli._common import (
    config_option,
    fail,
    format_option,
    iso,
    load_config,
    need,
    print_table,
    run_store,
    when,
)
from turnout.config import Config
from turnout.control.keys.base import IssuedKey, KeyStore, KeyStoreError
from turnout.control.keys.factory import open_key_store

T = TypeVar("T")

CONFIG_HELP = (
    "YAML config file: its tenants, and its limits section for where keys live "
    "(limits.keys_path, or Redis when limits.backend is redis)."
)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")


def parse_expiry(text: str) -> timedelta | datetime:
    """``30d``, ``12h``, ``90m`` (also ``s`` and ``w``) from now, or an ISO date or date-time;
    raises ValueError with a message for the user."""
    if m := _DURATION.match(text):
        amount = int(m.group(1)) * _UNITS[m.group(2)]
        if amount <= 0:
            raise ValueError(f"{text!r} is not in the future")
        return timedelta(seconds=amount)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (30d, 12h, 90m) nor an ISO date (2026-12-31)") from None
    # A date or time without a zone is UTC, so the meaning does not depend on the machine.
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _expiry_option(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | datetime | None:
    if value is None:
        return None
    try:
        return parse_expiry(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def expires_at(expiry: timedelta | datetime | None, now: float) -> float | None:
    if expiry is None:
        return None
    if isinstance(expiry, timedelta):
        return now + expiry.total_seconds()
    return expiry.timestamp()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option("--tenant", "-t", required=True, help="The tenant the key belongs to; it must be in the config.")
@click.option("--name", "-n", default="", help="A label to recognise the key by in `keys list` (e.g. who holds it).")
@click.option(
    "--expires",
    "expiry",
    metavar="DURATION|DATE",
    callback=_expiry_option,
    help="When the key stops working: a duration from now (30d, 12h, 90m) or an ISO date or date-time "
    "(2026-12-31, 2026-12-31T18:00+02:00; without a zone: UTC). Default: never.",
)
@config_option(CONFIG_HELP)
def create(tenant: str, name: str, expiry: timedelta | datetime | None, config_path: str | None) -> None:
    """Create a key for a tenant and print its secret: the only time it is shown."""
    config = load_config(config_path)
    need("tenant", tenant, config.tenants)
    now = time.time()
    at = expires_at(expiry, now)
    if at is not None and at <= now:
        raise click.BadParameter(f"{when(at)} is in the past", param_hint="'--expires'")
    key, secret = _run(config, lambda store: store.create(tenant, name, at, now))
    click.echo(f"Created key {key.id} for tenant {key.tenant!r}.")
    click.echo(f"  id:      {key.id}")
    click.echo(f"  name:    {key.name or '-'}")
    click.echo(f"  tenant:  {key.tenant}")
    click.echo(f"  expires: {when(key.expires_at) if key.expires_at is not None else 'never'}")
    click.echo(f"  secret:  {secret}")
    click.echo("Copy the secret now: it will not be shown again (only its digest is stored).")


@keys.command(name="list")
@click.option("--tenant", "-t", help="Only this tenant's keys.")
@format_option()
@config_option(CONFIG_HELP)
def list_(tenant: str | None, fmt: str, config_path: str | None) -> None:
    """List keys, never their secrets.

    Shows each key's id, tenant, name, hint (the secret's first characters), when it was
    created and expires (UTC), and its status: live, expired or revoked."""
    config = load_config(config_path)
    found = _run(config, lambda store: store.list(tenant))
    now = time.time()
    if fmt == "json":
        click.echo(orjson.dumps([_as_json(k, now) for k in found], option=orjson.OPT_INDENT_2).decode())
        return
    if not found:
        click.echo(f"no keys for tenant {tenant!r}" if tenant else "no keys")
        return
    rows = [("ID", "TENANT", "NAME", "HINT", "CREATED", "EXPIRES", "STATUS")]
    rows += [
        (
            k.id,
            k.tenant,
            k.name or "-",
            k.hint,
            when(k.created_at),
            when(k.expires_at) if k.expires_at is not None else "never",
            status(k, now),
        )
        for k in found
    ]
    print_table(rows)


@keys.command()
@click.argument("key_id")
@config_option(CONFIG_HELP)
def revoke(key_id: str, config_path: str | None) -> None:
    """Revoke the key KEY_ID (as `keys list` shows it). It is refused from the next request on;
    revoking it again keeps the first time."""
    config = load_config(config_path)
    now = time.time()
    key = _run(config, lambda store: store.revoke(key_id, now))
    if key is None:
        fail(f"no key with id {key_id!r} (see `turnout keys list`)")
    if key.revoked_at is not None and key.revoked_at != now:  # revoked before: the first time stays
        click.echo(f"Key {key.id} (tenant {key.tenant!r}) was already revoked at {when(key.revoked_at)}.")
    else:
        click.echo(f"Revoked key {key.id} (tenant {key.tenant!r}, name {key.name or '-'}).")


def status(key: IssuedKey, now: float) -> str:
    if key.revoked_at is not None:
        return "revoked"
    return "live" if key.live(now) else "expired"


def _as_json(key: IssuedKey, now: float) -> dict[str, Any]:
    return {
        "id": key.id,
        "tenant": key.tenant,
        "name": key.name,
        "hint": key.hint,
        "created_at": iso(key.created_at),
        "expires_at": iso(key.expires_at),
        "revoked_at": iso(key.revoked_at),
        "status": status(key, now),
    }


def _run(config: Config, action: Callable[[KeyStore], Awaitable[T]]) -> T:
    return run_store(lambda: open_key_store(config.limits), action, KeyStoreError)
