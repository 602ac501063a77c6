"""``turnout cache purge``: delete cached answers now, by tenant, task, both, or all of them.

``cache.backend: redis``: deleted from Redis here, at once, for every replica. ``memory``: the
answers live inside each gateway process, so the purge is written to the purge log
(``turnout.cache.purges``) that every gateway sharing the state store follows; each drops the
answers within about a second and logs how many.
"""

from __future__ import annotations

import asyncio
import getpass
import os

import click
from redis.exceptions import RedisError

from turnout._support.places import Place
from turnout.cache.factory import open_cache_store
from turnout.cache.purges import PurgeLog, PurgeLogError, describe, named, purge_log_place
from turnout.cli._common import CommandError, config_option, task_option, tenant_option
from turnout.config import Config

CONFIG_HELP = (
    "YAML config file: its cache section (backend, redis_url, key_prefix, encryption_key) and, for the "
    "in-process cache, where the state is shared (releases.store_path, state)."
)


@click.group()
def cache() -> None:
    """Manage the response cache (tasks opt in with `tasks.T.cache`).

    \b
    turnout cache purge --tenant acme
    turnout cache purge --task support-reply
    turnout cache purge                      # every cached answer"""


@cache.command()
@tenant_option("Only this tenant's answers (answers shared by every tenant are left).")
@task_option("Only this task's answers.")
@click.option("--by", "by", default=None, help="Who asks, for the gateways' logs (default: your user name).")
@config_option(CONFIG_HELP)
def purge(tenant: str | None, task: str | None, by: str | None, config: Config) -> None:
    """Delete cached answers now: a tenant's, a task's, both, or all of them.

    \b
    cache.backend redis: deleted from Redis at once, for every replica.
    cache.backend memory: written to the purge log beside the release store
    (or in the fleet's PostgreSQL); every running gateway that shares it drops
    the answers within about a second and logs how many.

    Names need not be in the config any more: a removed tenant's answers can be purged too."""
    for flag, value in (("--tenant", tenant), ("--task", task), ("--by", by)):
        if value is not None and not value.strip():  # an empty $VAR must not widen the purge to all
            raise click.UsageError(f"{flag} must not be empty (leave it out instead)")
    _note_unknown(config, tenant, task)
    if config.cache.backend != "redis":
        asked = asyncio.run(_ask(_followed(config), tenant, task, by or _user()))
        click.echo(
            f"Asked every gateway sharing {asked} to purge {describe(tenant, task)}; each does within about "
            "a second (its log says how many answers it dropped)."
        )
        return
    deleted = asyncio.run(_purge(config, tenant, task))
    scope = named(tenant, task)
    click.echo(f"Purged {deleted} cached answers{' of ' + scope if scope else ''}.")


def _note_unknown(config: Config, tenant: str | None, task: str | None) -> None:
    """A name the config lacks may be a typo, or a tenant or task since removed: the purge goes
    ahead (a removed one's answers must be purgeable) and stderr says so."""
    if tenant is not None and tenant not in config.tenants:
        click.echo(f"note: no tenant {tenant!r} in the config (a typo? purging its answers all the same)", err=True)
    if task is not None and task not in config.tasks:
        click.echo(f"note: no task {task!r} in the config (a typo? purging its answers all the same)", err=True)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return "cli"


def _followed(config: Config) -> Place:
    """Where the gateways follow the purge log. A SQLite log that does not exist yet is followed
    by no gateway (each opens it as it starts): writing a new one would purge nothing and say it
    did, as a run from another working directory than the gateway's (where a relative
    ``releases.store_path`` names another file) once did."""
    place = purge_log_place(config)
    if isinstance(place, str) and place != ":memory:":
        place = os.path.abspath(place)
        if not os.path.exists(place):
            raise CommandError(
                f"no gateway follows the purge log {place}: the file does not exist, so nothing was purged. "
                "A relative releases.store_path is taken from the working directory: run this where the "
                "gateways run, or give the path (or state: postgres) absolutely in the config."
            )
    return place


async def _ask(place: Place, tenant: str | None, task: str | None, by: str) -> str:
    """The purge into the log the gateways follow; where that log is."""
    purges = PurgeLog(place)
    try:
        async with purges:
            await purges.request(tenant, task, by)
    except PurgeLogError as exc:
        raise CommandError(f"cannot ask the gateways to purge: {exc}") from exc
    return purges.path  # the file, or the database (without its password) and schema


async def _purge(config: Config, tenant: str | None, task: str | None) -> int:
    store = open_cache_store(config)
    try:
        return await store.purge(tenant=tenant, task=task)
    except RedisError as exc:
        raise CommandError(f"cannot purge the cache: Redis failed ({type(exc).__name__}: {exc})") from exc
    finally:
        await store.aclose()
