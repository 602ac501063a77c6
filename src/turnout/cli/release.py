"""``turnout release``: register releases from their files, list and show them, and move traffic
between them (canary, promote, rollback) in the release store (``releases.store_path``). A running
gateway serves each change within about half a second.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import orjson

from turnout.cli import shadow
from turnout.cli._common import (
    CommandError,
    Finite,
    by_option,
    config_option,
    format_option,
    iso,
    nonblank,
    print_json,
    print_table,
    release_files,
    run_store,
    task_argument,
    when,
)
from turnout.config import Config
from turnout.offline.shadow import passed_note, shadow_gates
from turnout.releases.base import Transition
from turnout.releases.store import RegisteredRelease, ReleaseStore, ReleaseStoreError, ServingRow, to_spec

T = TypeVar("T")

CONFIG_HELP = (
    "YAML config file: its tasks, and its releases section (releases.path for the files, "
    "releases.store_path for the store; state.kind: postgres puts it in the fleet's database)."
)


text_or_json = format_option("Text to read, or JSON to process.")
who_option = by_option("Who: kept in the audit trail.")
why_option = click.option("--why", "why", required=True, callback=nonblank, help="Why: kept in the audit trail.")


@click.group()
def release() -> None:
    """Register task releases and move traffic between them.

    A release is a file, releases/<task>/<release>.yaml: target, model version, tokenizer,
    prompt template, parameters, output schema. Registering it stores it for good; a change is
    a new release under a new name. States: registered → evaluated (its golden set passed its
    gates) → canary → active → retired. A release may also run in shadow: it gets a copy of a
    share of the active release's requests, never serves, and may go to canary once that sample
    passes the task's gates. Every change is recorded with who, when and why.

    \b
    turnout release register extract v2 --by alice
    turnout release shadow extract v3 --percent 20 --by alice --why "compare before a canary"
    turnout release canary extract v2 --percent 5 --by alice --why "eval run 41 passed"
    turnout release promote extract v2 --by alice --why "canary healthy for a day"
    turnout release rollback extract --by alice --why "error rate up"
    turnout release list extract"""


@release.command(name="list")
@task_argument()
@text_or_json
@config_option(CONFIG_HELP)
def list_(task: str, fmt: str, config: Config) -> None:
    """List TASK's registered releases, their states and which serve traffic."""

    async def read(store: ReleaseStore) -> tuple[list[RegisteredRelease], ServingRow | None]:
        return await store.releases(task), await store.serving_row(task)

    found, serving = _run(config, read)
    if fmt == "json":
        out = {"task": task, "serving": _serving_json(serving), "releases": [_summary(r) for r in found]}
        print_json(out)
        return
    if not found:
        click.echo(f"no releases registered for task {task!r} (see `turnout release register`)")
        return
    rows = [("NAME", "STATE", "TRAFFIC", "VERSION", "PROMPT", "REGISTERED")]
    rows += [
        (
            r.release.name,
            r.state,
            _traffic(r.release.name, serving),
            r.version,
            r.prompt_version,
            f"{when(r.registered_at)} by {r.registered_by}",
        )
        for r in found
    ]
    print_table(rows)


@release.command()
@task_argument()
@click.argument("name", required=False)
@text_or_json
@config_option(CONFIG_HELP)
def show(task: str, name: str | None, fmt: str, config: Config) -> None:
    """Show one release of TASK (default: the active one): its spec, version, prompt version,
    state and transitions."""

    async def read(store: ReleaseStore) -> tuple[RegisteredRelease, ServingRow | None, list[Transition]]:
        serving = await store.serving_row(task)
        wanted = name or (serving.active if serving else None)
        if wanted is None:
            raise ReleaseStoreError(f"task {task!r} has no active release; name one (see `turnout release list`)")
        found = await store.get(task, wanted)
        if found is None:
            raise ReleaseStoreError(f"no release {wanted!r} registered for task {task!r}")
        return found, serving, await store.transitions(task, wanted)

    found, serving, moves = _run(config, read)
    shadowed = found.state == "shadow" or any(t.to_state == "shadow" for t in moves)
    # In shadow: the sample the gates read, against the active release; else its whole history.
    baseline = serving.active if serving is not None and found.state == "shadow" else None
    sample = shadow.read_summary(config, task, found.release.name, baseline) if shadowed else None
    gates = shadow_gates(sample, config.tasks[task]) if sample is not None and task in config.tasks else None
    if fmt == "json":
        out = {**_summary(found), "spec": to_spec(found.release), "transitions": [_transition_json(t) for t in moves]}
        if sample is not None:
            out["shadow"] = {**sample.to_dict(), "gates": [g.to_dict() for g in gates or []]}
        print_json(out)
        return
    click.echo(f"release {found.release.name} of task {task}")
    click.echo(f"  state:          {found.state} ({_traffic(found.release.name, serving)} of traffic)")
    click.echo(f"  version:        {found.version}")
    click.echo(f"  prompt version: {found.prompt_version}")
    click.echo(f"  registered:     {when(found.registered_at)} by {found.registered_by}")
    click.echo("spec:")
    spec = orjson.dumps(to_spec(found.release), option=orjson.OPT_INDENT_2).decode()
    click.echo("\n".join("  " + line for line in spec.splitlines()))
    click.echo("transitions:")
    for t in moves:
        share = f" at {t.percent:g}%" if t.percent is not None and t.to_state in ("canary", "shadow") else ""
        click.echo(f"  {when(t.at)}  {t.from_state or '-'} → {t.to_state}{share}  by {t.by}: {t.why}")
    if sample is not None:
        for line in shadow.summary_lines(sample):
            click.echo(line)
        if gates is not None:
            click.echo("gates on the shadow sample (before a canary):")
            for line in shadow.gate_lines(gates):
                click.echo(line)


@release.command()
@task_argument()
@click.argument("name", required=False)
@click.option("--all", "all_", is_flag=True, help="Every release file of TASK.")
@who_option
@config_option(CONFIG_HELP)
def register(task: str, name: str | None, all_: bool, by: str, config: Config) -> None:
    """Register release NAME of TASK (or --all) from releases/<task>/<name>.yaml. The same
    content again is a no-op; other content under a registered name is refused."""
    if (name is None) == (not all_):
        raise click.UsageError("give a release NAME or --all")
    files = release_files(config, task, None if name is None else [name])

    async def write(store: ReleaseStore) -> list[tuple[RegisteredRelease, bool]]:
        out = []
        for each in files.values():
            known = await store.get(task, each.name)
            out.append((await store.register(each, by), known is None))
        return out

    for found, new in _run(config, write):
        what = "registered" if new else "already registered (unchanged)"
        click.echo(f"{found.release.name}: {what}, version {found.version}, prompt {found.prompt_version}")


@release.command()
@task_argument()
@click.argument("name")
@click.option(
    "--percent",
    required=True,
    type=Finite(0, 100, min_open=True),
    help="Share of TASK's traffic for NAME (more than 0, at most 100).",
)
@who_option
@why_option
@config_option(CONFIG_HELP)
def canary(task: str, name: str, percent: float, by: str, why: str, config: Config) -> None:
    """Send PERCENT of TASK's traffic to the evaluated release NAME (or change the share of the
    release in canary). End users stay on one side of the split. A release in shadow goes to
    canary only when its shadow sample passes the task's gates (`turnout release show` lists
    them)."""

    async def read(store: ReleaseStore) -> tuple[RegisteredRelease | None, ServingRow | None]:
        return await store.get(task, name), await store.serving_row(task)

    found, now = _run(config, read)
    gated, against = False, now.active if now is not None else None
    if found is not None and found.state == "shadow":
        if task not in config.tasks:
            raise CommandError(f"task {task!r} is not in the config: its gates are unknown")
        sample = shadow.refuse_failed(config, task, name, against)
        why, gated = why + passed_note(sample), True
    serving = _run(config, lambda store: store.start_canary(task, name, percent, by, why, gated=gated, against=against))
    click.echo(f"{task}: {name} takes {serving.canary_percent:g}% of traffic; {serving.active} the rest")


@release.command(name="shadow")
@task_argument()
@click.argument("name", required=False)
@click.option(
    "--percent",
    type=Finite(0, 100, min_open=True),
    help="Share of the active release's requests copied to NAME (more than 0, at most 100).",
)
@click.option("--stop", is_flag=True, help="Stop TASK's shadow: its release returns to its earlier state.")
@who_option
@why_option
@config_option(CONFIG_HELP)
def shadow_(task: str, name: str | None, percent: float | None, stop: bool, by: str, why: str, config: Config) -> None:
    """Copy PERCENT of the requests TASK's active release serves to release NAME, after their
    answers went out: NAME's answers are compared with the served ones and scored, never
    served (`turnout release show TASK NAME` shows the sample; tasks.TASK.shadow caps the
    concurrency and the daily spend). Again with another PERCENT changes the share; --stop ends
    it."""
    if stop:
        if percent is not None:
            raise click.UsageError("--stop takes no --percent")
        stopped = _run(config, lambda store: store.serving_row(task))
        serving = _run(config, lambda store: store.stop_shadow(task, by, why))
        was = stopped.shadow if stopped is not None else None
        click.echo(f"{task}: no shadow (stopped {was}); {serving.active} serves")
        return
    if name is None or percent is None:
        raise click.UsageError("give a release NAME and --percent (or --stop)")
    serving = _run(config, lambda store: store.start_shadow(task, name, percent, by, why))
    click.echo(
        f"{task}: {name} gets a copy of {serving.shadow_percent:g}% of {serving.active}'s requests (never served); "
        f"see `turnout release show {task} {name}`"
    )


@release.command()
@task_argument()
@click.argument("name")
@click.option(
    "--force",
    is_flag=True,
    help="Promote a release that has not passed its gates (recorded in the audit trail).",
)
@who_option
@why_option
@config_option(CONFIG_HELP)
def promote(task: str, name: str, force: bool, by: str, why: str, config: Config) -> None:
    """Make NAME TASK's active release for all traffic; the one it replaces is retired and kept
    for a rollback. NAME must be evaluated or in canary, unless it is the task's first release
    (bootstrap) or --force is given."""
    serving = _run(config, lambda store: store.promote(task, name, by, why, force=force))
    was = f" (was {serving.previous_active})" if serving.previous_active else ""
    click.echo(f"{task}: {serving.active} is active for all traffic{was}")


@release.command()
@task_argument()
@click.option(
    "--to-previous",
    is_flag=True,
    help="Also return all traffic to the previously active release (the default when no canary runs).",
)
@who_option
@why_option
@config_option(CONFIG_HELP)
def rollback(task: str, to_previous: bool, by: str, why: str, config: Config) -> None:
    """Drop TASK's canary (its traffic returns to the active release); with no canary, or with
    --to-previous, return all traffic to the previously active release."""
    serving = _run(config, lambda store: store.rollback(task, by, why, to_previous=to_previous))
    click.echo(f"{task}: {serving.active} is active for all traffic; no canary")


def _summary(r: RegisteredRelease) -> dict[str, Any]:
    return {
        "task": r.release.task,
        "name": r.release.name,
        "state": r.state,
        "version": r.version,
        "prompt_version": r.prompt_version,
        "registered_at": iso(r.registered_at),
        "registered_by": r.registered_by,
    }


def _serving_json(s: ServingRow | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {
        "active": s.active,
        "canary": s.canary,
        "canary_percent": s.canary_percent,
        "previous_active": s.previous_active,
        "shadow": s.shadow,
        "shadow_percent": s.shadow_percent,
        "updated_at": iso(s.updated_at),
    }


def _transition_json(t: Transition) -> dict[str, Any]:
    return {
        "release": t.release,
        "from_state": t.from_state,
        "to_state": t.to_state,
        "at": iso(t.at),
        "by": t.by,
        "why": t.why,
        "percent": t.percent,
    }


def _traffic(name: str, serving: ServingRow | None) -> str:
    if serving is None:
        return "0%"
    if name == serving.canary:
        return f"{serving.canary_percent:g}%"
    if name == serving.active:
        return f"{100 - serving.canary_percent:g}%" if serving.canary else "100%"
    if name == serving.shadow:
        return f"0% (shadow of {serving.shadow_percent:g}%)"
    return "0%"


def _run(config: Config, action: Callable[[ReleaseStore], Awaitable[T]]) -> T:
    return run_store(lambda: ReleaseStore(config.state_at(config.releases.store_path)), action, "the release store")
