"""``turnout serve`` and ``turnout check``: run the gateway on a config, or only check it.

Both load the config (its own rules, with key paths) and then run ``preflight`` (what start-up
would refuse on this machine), so ``check`` passes exactly the configs ``serve`` starts on.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from turnout.cli import probe as probes
from turnout.cli._common import CONFIG_PATH, FC, CommandError, config_option
from turnout.cli.preflight import preflight, shared_state
from turnout.config import Config, given, load_config, validate
from turnout.control.catalog import base_model_id, bedrock_model, price
from turnout.errors import ConfigError
from turnout.serving import server, supervisor

CONFIG_HELP = "YAML config file."
WORKERS_HELP = (
    "Worker processes on one socket, each with its own event loop ('auto': one per core; at most "
    f"{supervisor.MAX_WORKERS_PER_CORE} per core). Above "
    "1, the state workers must share needs Redis, SQLite or PostgreSQL (see 'turnout check "
    "--workers')."
)


def _workers(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return supervisor.worker_count(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


CHECK_WORKERS_HELP = (
    "Check the config as 'turnout serve --workers N' would run it: state that each worker would "
    "hold alone (limits, the ledger or the cache in memory) is a problem."
)


def workers_option(help_text: str) -> Callable[[FC], FC]:
    return click.option("--workers", default="1", metavar="N|auto", callback=_workers, help=help_text)


@click.command()
@config_option(CONFIG_HELP)
@click.option("--host", help="Address to bind (overrides server.host; default 127.0.0.1).")
@click.option("--port", type=int, help="Port to bind (overrides server.port; default 8080).")
@workers_option(WORKERS_HELP)
def serve(config: Config, host: str | None, port: int | None, workers: int) -> None:
    """Run the gateway until SIGINT/SIGTERM, then drain in-flight requests and the ledger (a
    second Ctrl-C cuts what still runs, writing its rows, and quits). SIGHUP re-reads the config
    file: tasks, tenants, policy and prices change live; the rest waits for a restart. With
    --workers, every worker takes the new file or none does; a worker that dies is started
    again, and SIGTERM drains every worker.

    Exit status 1, before anything starts, with the reason on stderr: a config the gateway
    would not start on, or an address it cannot listen on ("cannot listen on HOST:PORT:
    address already in use"); or, as it starts, a store that refuses it (the log's
    "start-up failed: REASON"), or with --workers a worker of the first start that ends before
    it serves. A PostgreSQL that does not answer yet is waited for: the
    gateway starts unready (/readyz 503) and opens it in the background."""
    config = with_address(config, host, port)
    ready(config, workers)
    source = click.get_current_context().meta.get(CONFIG_PATH)
    loader = None if source is None else Reloader(source, host, port, workers)
    if workers == 1:
        server.run(config, source=source, loader=loader)
    else:
        sys.exit(server.run_workers(config, workers, source=source, loader=loader))


@dataclass(frozen=True)
class Reloader:
    """Reads the config file again as ``serve`` read it (``--host``/``--port`` included) and
    checks what start-up would refuse; ConfigError with every problem. A worker process gets
    a copy (it pickles)."""

    path: str
    host: str | None
    port: int | None
    workers: int = 1

    def __call__(self) -> Config:
        config = load_config(self.path)
        address = {k: v for k, v in (("host", self.host), ("port", self.port)) if v is not None}
        if address:
            config = over_server(config, address)
        problems = preflight(config)
        if problems:
            raise ConfigError(problems)
        return config

    def refused(self, config: Config) -> list[str]:
        """The merged config's state that ``--workers`` processes could not share: a reload
        giving a tenant limits while ``limits.backend`` (restart-only) stays memory would give
        it N times its RPM."""
        return shared_state(config, self.workers)


def ready(config: Config, workers: int = 1) -> None:
    """Refuse, listing every problem, a config the gateway would not start on."""
    problems = preflight(config) + shared_state(config, workers)
    if problems:
        raise CommandError.listing("the gateway would not start", problems)


def with_address(config: Config, host: str | None, port: int | None) -> Config:
    """``config`` with ``--host`` and ``--port`` over its server section, validated again (a
    public host needs tenants; a port must be in range)."""
    address = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if not address:
        return config
    try:
        return over_server(config, address)
    except ConfigError as exc:
        flags = " ".join(f"--{k} {v}" for k, v in address.items())
        raise CommandError.listing(f"the config with {flags} is invalid", exc.problems) from exc


@click.command()
@config_option(CONFIG_HELP)
@workers_option(CHECK_WORKERS_HELP)
@click.option(
    "--probe",
    is_flag=True,
    help="Also contact each upstream (a GET of /v1/models, never a completion; Bedrock: its "
    "credentials resolve) and report reachability and credentials per target and replica.",
)
def check(config: Config, workers: int, probe: bool) -> None:
    """Validate the config and what start-up needs with it (drivers, model and release files,
    TURNOUT_REDACTION_KEY, state shared by --workers); print every problem with its key path
    and exit 1 if there is one. With --probe, exit 1 also when an upstream cannot be reached."""
    ready(config, workers)
    click.echo(
        f"ok: {len(config.targets)} target(s), {len(config.tasks)} task(s), {len(config.tenants)} tenant(s)"
        + ("" if config.tenants else " (no tenants: anonymous access on loopback)")
    )
    if "restricted" not in config.policy:
        click.echo("note: no policy for 'restricted' data: such requests are refused (fail closed)")
    for warning in catalog_warnings(config):
        click.echo(f"warning: {warning}")
    if probe:
        verdicts = probes.probe(config)
        for verdict in verdicts:
            for line in verdict.lines:
                click.echo(f"probe: {line}")
        down = [v.target for v in verdicts if v.ok is False]
        if down:
            raise CommandError(f"unreachable or refusing: {', '.join(down)}")


def catalog_warnings(config: Config) -> list[str]:
    """What the config leaves to chance: unpriced targets under a budget, unknown Bedrock ids."""
    out = []
    budgeted = any(
        lim.usd_per_day or lim.usd_per_month
        for t in config.tenants.values()
        for lim in (t.limits, *t.task_limits.values())
    )
    if budgeted:
        for name, target in config.targets.items():
            if price(target) is None and not any(name in v.targets for v in config.prices):
                out.append(f"targets.{name}.price: not set, so this target costs nothing against budgets")
    for name, target in config.targets.items():
        if target.provider == "bedrock" and bedrock_model(target.model) is None:
            out.append(
                f"targets.{name}.model: {base_model_id(target.model)!r} is not in turnout's Bedrock catalog; "
                "check the id (ListFoundationModels) and set context_window yourself"
            )
    return out


def over_server(config: Config, server: dict[str, Any]) -> Config:
    """``config`` with ``server`` over its server section, validated again."""
    raw = given(config)
    raw["server"] = {**raw.get("server", {}), **server}
    return validate(raw)
