"""``turnout keys``: issue, list and revoke API keys in the store the config's limits backend
names (a SQLite file at ``limits.keys_path``, or Redis). A running gateway sees each change on
its next request.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar

import click
import orjson

from turnout.config import Config
from turnout.keys.base import IssuedKey, KeyStore, KeyStoreError
from turnout.keys.factory import open_key_store

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


config_option = click.option(
    "--config", "-c", "config_path", type=click.Path(dir_okay=False), envvar="TURNOUT_CONFIG", help=CONFIG_HELP
)


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
@config_option
def create(tenant: str, name: str, expiry: timedelta | datetime | None, config_path: str | None) -> None:
    """Create a key for a tenant and print its secret: the only time it is shown."""
    config = _config(config_path)
    if tenant not in config.tenants:
        known = ", ".join(sorted(config.tenants)) or "none"
        _fail(f"no tenant {tenant!r} in the config (tenants: {known})")
    now = time.time()
    at = expires_at(expiry, now)
    if at is not None and at <= now:
        raise click.BadParameter(f"{_when(at)} is in the past", param_hint="'--expires'")
    key, secret = _run(config, lambda store: store.create(tenant, name, at, now))
    click.echo(f"Created key {key.id} for tenant {key.tenant!r}.")
    click.echo(f"  id:      {key.id}")
    click.echo(f"  name:    {key.name or '-'}")
    click.echo(f"  tenant:  {key.tenant}")
    click.echo(f"  expires: {_when(key.expires_at) if key.expires_at is not None else 'never'}")
    click.echo(f"  secret:  {secret}")
    click.echo("Copy the secret now: it will not be shown again (only its digest is stored).")


@keys.command(name="list")
@click.option("--tenant", "-t", help="Only this tenant's keys.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="A table to read, or JSON to process.",
)
@config_option
def list_(tenant: str | None, fmt: str, config_path: str | None) -> None:
    """List keys, never their secrets.

    Shows each key's id, tenant, name, hint (the secret's first characters), when it was
    created and expires (UTC), and its status: live, expired or revoked."""
    config = _config(config_path)
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
            _when(k.created_at),
            _when(k.expires_at) if k.expires_at is not None else "never",
            status(k, now),
        )
        for k in found
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@keys.command()
@click.argument("key_id")
@config_option
def revoke(key_id: str, config_path: str | None) -> None:
    """Revoke the key KEY_ID (as `keys list` shows it). It is refused from the next request on;
    revoking it again keeps the first time."""
    config = _config(config_path)
    now = time.time()
    key = _run(config, lambda store: store.revoke(key_id, now))
    if key is None:
        _fail(f"no key with id {key_id!r} (see `turnout keys list`)")
    if key.revoked_at is not None and key.revoked_at != now:  # revoked before: the first time stays
        click.echo(f"Key {key.id} (tenant {key.tenant!r}) was already revoked at {_when(key.revoked_at)}.")
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
        "created_at": _iso(key.created_at),
        "expires_at": _iso(key.expires_at),
        "revoked_at": _iso(key.revoked_at),
        "status": status(key, now),
    }


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat()


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _config(path: str | None) -> Config:
    # Imported here: turnout.cli registers this group, so a top-level import would be circular.
    from turnout.cli import _load

    return _load(path)


def _run(config: Config, action: Callable[[KeyStore], Awaitable[T]]) -> T:
    async def run() -> T:
        store = open_key_store(config.limits)
        await store.open()
        try:
            return await action(store)
        finally:
            await store.aclose()

    try:
        return asyncio.run(run())
    except KeyStoreError as exc:
        _fail(exc.message)


def _fail(message: str) -> NoReturn:
    click.echo(f"turnout: {message}", err=True)
    sys.exit(1)
