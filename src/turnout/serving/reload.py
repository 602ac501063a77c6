"""Config reload without a restart: what a new config file may change live, and what waits.

A reload (SIGHUP, or ``POST /admin/reload``) reads the file again and validates it in full
(the CLI's loader: the file's own rules and what start-up would refuse). The sections
``LIVE`` are then taken from the new file; every other section keeps the running value,
because it names something opened once at start-up (the listening socket, the ledger, the
limiter's backend, the providers and their connection pools, the release store, the cache)
and is listed in the answer as needing a restart. The merged config is validated once more
(a new task routed to a target that only a restart would open is refused here), and only
then swapped in: ``App.reload`` builds a new runtime view and pipeline over the same open
resources, so a request already running finishes on the config it started with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from turnout.config import Config, given, validate
from turnout.errors import ConfigError, RequestError

# Read per request through objects rebuilt on reload: routes, tenants and their keys and
# limits, data-class policy, prices.
LIVE = ("tasks", "tenants", "policy", "prices")


class Loader(Protocol):
    def __call__(self) -> Config:
        """The config file read again; ConfigError with its problems."""
        ...

    def refused(self, config: Config) -> list[str]:
        """What this server may not run ``config`` (the merged one) with: with ``--workers``,
        state each worker would hold alone (limits a reload gives a tenant, in memory)."""
        ...


class ReloadRefused(RequestError):
    """The new file is invalid (or needs what only a restart opens): the old config stays."""

    status = 422
    code = "invalid_config"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("config reload refused, the running config is kept:\n" + "\n".join(problems))
        self.problems = problems

    def to_openai(self) -> dict[str, Any]:
        body = super().to_openai()
        body["error"]["problems"] = self.problems
        return body


@dataclass(frozen=True)
class Plan:
    """The config to swap in; ``changed``: the live sections that differ from the running
    config; ``restart``: the sections whose change waits for a restart."""

    config: Config
    changed: list[str] = field(default_factory=list)
    restart: list[str] = field(default_factory=list)


def plan(running: Config, loader: Loader) -> Plan:
    """Load the file again and merge it over ``running``; ReloadRefused with every problem."""
    try:
        fresh = loader()
    except ConfigError as exc:
        raise ReloadRefused(exc.problems) from None
    now, new = running.model_dump(), fresh.model_dump()
    restart = sorted(k for k in new if k not in LIVE and new[k] != now[k])
    changed = [k for k in LIVE if new[k] != now[k]]
    now_set, new_set = given(running), given(fresh)  # what each file set: the merge's input
    merged: dict[str, Any] = {}
    for k in new:
        source = new_set if k in LIVE else now_set
        if k in source:
            merged[k] = source[k]
    # A problem of the merged config may come from a running section the file already changes
    # (``limits.backend: redis`` written, memory running): say so, or the advice reads as ignored.
    hint = [f"(not applied until a restart: {', '.join(restart)})"] if restart else []
    try:
        config = validate(merged)
    except ConfigError as exc:
        raise ReloadRefused(exc.problems + hint) from None
    problems = loader.refused(config)
    if problems:
        raise ReloadRefused(problems + hint)
    return Plan(config, changed, restart)
