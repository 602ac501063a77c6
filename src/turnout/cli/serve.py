"""``turnout serve`` and ``turnout check``: run the gateway on a config, or only check it.

Both load the config (its own rules, with key paths) and then run ``preflight`` (what start-up
would refuse on this machine), so ``check`` passes exactly the configs ``serve`` starts on.
"""

from __future__ import annotations

import click

from turnout.cli._common import CONFIG_PATH, CommandError, config_option
from turnout.cli.preflight import preflight
from turnout.config import Config, validate
from turnout.control.catalog import base_model_id, bedrock_model, price
from turnout.errors import ConfigError
from turnout.serving import server

CONFIG_HELP = "YAML config file."


@click.command()
@config_option(CONFIG_HELP)
@click.option("--host", help="Address to bind (overrides server.host; default 127.0.0.1).")
@click.option("--port", type=int, help="Port to bind (overrides server.port; default 8080).")
def serve(config: Config, host: str | None, port: int | None) -> None:
    """Run the gateway until SIGINT/SIGTERM, then drain in-flight requests and the ledger."""
    config = with_address(config, host, port)
    ready(config)
    server.run(config, source=click.get_current_context().meta.get(CONFIG_PATH))


def ready(config: Config) -> None:
    """Refuse, listing every problem, a config the gateway would not start on."""
    problems = preflight(config)
    if problems:
        raise CommandError.listing("the gateway would not start", problems)


def with_address(config: Config, host: str | None, port: int | None) -> Config:
    """``config`` with ``--host`` and ``--port`` over its server section, validated again (a
    public host needs tenants; a port must be in range)."""
    given = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if not given:
        return config
    raw = config.model_dump()
    raw["server"].update(given)
    try:
        return validate(raw)
    except ConfigError as exc:
        flags = " ".join(f"--{k} {v}" for k, v in given.items())
        raise CommandError.listing(f"the config with {flags} is invalid", exc.problems) from exc


@click.command()
@config_option(CONFIG_HELP)
def check(config: Config) -> None:
    """Validate the config and what start-up needs with it (drivers, model and release files,
    TURNOUT_REDACTION_KEY); print every problem with its key path and exit 1 if there is one."""
    ready(config)
    click.echo(
        f"ok: {len(config.targets)} target(s), {len(config.tasks)} task(s), {len(config.tenants)} tenant(s)"
        + ("" if config.tenants else " (no tenants: anonymous access on loopback)")
    )
    if "restricted" not in config.policy:
        click.echo("note: no policy for 'restricted' data: such requests are refused (fail closed)")
    for warning in catalog_warnings(config):
        click.echo(f"warning: {warning}")


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
