"""``turnout cache purge``: delete cached answers from the shared cache (``cache.backend: redis``).

The in-process backend keeps answers inside each gateway process: they go when it restarts, and
the gateway drops those of a release that stopped serving on its own; so a purge here needs the
shared backend.
"""

from __future__ import annotations

import asyncio

import click
from redis.exceptions import RedisError

from turnout.cache.factory import open_cache_store
from turnout.cli._common import CommandError, config_option, task_option, tenant_option
from turnout.config import Config

CONFIG_HELP = "YAML config file: its cache section (backend, redis_url, key_prefix, encryption_key)."


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
@config_option(CONFIG_HELP)
def purge(tenant: str | None, task: str | None, config: Config) -> None:
    """Delete cached answers now: a tenant's, a task's, both, or all of them.

    Names need not be in the config any more: a removed tenant's answers can be purged too."""
    if config.cache.backend != "redis":
        raise CommandError(
            "cache.backend is 'memory': answers live inside each gateway process and go when it restarts; "
            "`turnout cache purge` needs cache.backend: redis"
        )
    deleted = asyncio.run(_purge(config, tenant, task))
    scope = " and ".join(f"{kind} {name!r}" for kind, name in (("tenant", tenant), ("task", task)) if name)
    click.echo(f"Purged {deleted} cached answers{' of ' + scope if scope else ''}.")


async def _purge(config: Config, tenant: str | None, task: str | None) -> int:
    store = open_cache_store(config)
    try:
        return await store.purge(tenant=tenant, task=task)
    except RedisError as exc:
        raise CommandError(f"cannot purge the cache: Redis failed ({type(exc).__name__}: {exc})") from exc
    finally:
        await store.aclose()
