"""The ``turnout`` command: a thin layer from arguments to a Config and a server."""

from __future__ import annotations

import sys

import click

from turnout.cli.capture import capture
from turnout.cli.evaluate import eval_command
from turnout.cli.keys import keys
from turnout.cli.plan import plan_command
from turnout.cli.release import release
from turnout.cli.report import report
from turnout.config import Config, load_config
from turnout.errors import ConfigError

CONFIG_HELP = "YAML config file (default: the built-in embedded SmolLM2 setup, SQLite under ./.turnout/)."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="turnout")
def main() -> None:
    """turnout: one OpenAI-compatible interface over self-hosted, managed and embedded models,
    routed by policy, health and load, with a metadata-only ledger."""


main.add_command(keys)
main.add_command(capture)
main.add_command(release)
main.add_command(eval_command)
main.add_command(plan_command)
main.add_command(report)


@main.command()
@click.option(
    "--config", "-c", "config_path", type=click.Path(dir_okay=False), envvar="TURNOUT_CONFIG", help=CONFIG_HELP
)
@click.option("--host", help="Address to bind (overrides server.host; default 127.0.0.1).")
@click.option("--port", type=int, help="Port to bind (overrides server.port; default 8080).")
def serve(config_path: str | None, host: str | None, port: int | None) -> None:
    """Run the gateway until SIGINT/SIGTERM, then drain in-flight requests and the ledger."""
    from turnout.serving.server import run

    config = _load(config_path, host=host, port=port)
    run(config)


@main.command()
@click.option(
    "--config", "-c", "config_path", type=click.Path(dir_okay=False), envvar="TURNOUT_CONFIG", help=CONFIG_HELP
)
def check(config_path: str | None) -> None:
    """Validate the config; print every problem with its key path and exit 1 if there is one."""
    config = _load(config_path)
    click.echo(
        f"ok: {len(config.targets)} target(s), {len(config.tasks)} task(s), {len(config.tenants)} tenant(s)"
        + ("" if config.tenants else " (no tenants: anonymous access on loopback)")
    )
    if "restricted" not in config.policy:
        click.echo("note: no policy for 'restricted' data: such requests are refused (fail closed)")
    for warning in catalog_warnings(config):
        click.echo(f"warning: {warning}")


def catalog_warnings(config: Config) -> list[str]:
    from turnout.control.catalog import base_model_id, bedrock_model, price

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


def _load(path: str | None, host: str | None = None, port: int | None = None) -> Config:
    try:
        config = load_config(path)
        if host is not None or port is not None:
            raw = config.model_dump()
            raw["server"].update({k: v for k, v in (("host", host), ("port", port)) if v is not None})
            from turnout.config import validate

            config = validate(raw)
    except ConfigError as exc:
        click.echo(f"turnout: {path or 'built-in config'} is invalid:", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(1)
    return config
