"""The ``turnout`` command: one group, each command registered from its module. What the
commands share (config loading, options, durations, errors) is in ``turnout.cli._common``."""

from __future__ import annotations

import click

from turnout.cli._common import CONTEXT_SETTINGS, CommandGroup
from turnout.cli.cache import cache
from turnout.cli.capture import capture
from turnout.cli.evaluate import eval_command
from turnout.cli.keys import keys
from turnout.cli.plan import plan_command
from turnout.cli.release import release
from turnout.cli.report import report
from turnout.cli.retention import retention
from turnout.cli.safety import safety
from turnout.cli.serve import check, serve


@click.group(cls=CommandGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="turnout")
def main() -> None:
    """turnout: one OpenAI-compatible interface over self-hosted, managed and embedded models,
    routed by policy, health and load, with a metadata-only ledger.

    Exit status: 0 done; 1 the command failed (its reason on stderr) or, for `check` and
    `eval`, found a problem or a failed gate; 2 a bad option or argument."""


for command in (serve, check, keys, capture, cache, release, eval_command, plan_command, report, retention, safety):
    main.add_command(command)
