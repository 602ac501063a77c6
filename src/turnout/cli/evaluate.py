"""``turnout eval``: run a task's golden set on a candidate release (and a baseline) through the
gateway's real request path, in-process, compare them, apply the task's gates and exit 1 when
one fails. Reports go to ``--report`` as JSON and self-contained HTML."""

from __future__ import annotations

import asyncio
import getpass
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import orjson

from turnout.cli._common import CommandError, config_option, release_files, task_argument, tenant_option
from turnout.cli.import_reviews import import_reviews
from turnout.config import DATA_CLASSES, Config
from turnout.control.auth import Tenant
from turnout.ledger import store as ledger
from turnout.offline.evals import (
    Case,
    GateResult,
    Outcome,
    TextProgress,
    all_passed,
    build_scorers,
    evaluate_gates,
    failed,
    golden_set_path,
    load_cases,
    render_html,
    render_table,
    run_eval,
)
from turnout.offline.evals.gates import HumanCosts
from turnout.offline.evals.jail import sandbox_problem
from turnout.offline.evals.judge import JudgeScorer
from turnout.offline.evals.judge_spend import JudgeSpend
from turnout.offline.evals.report import to_dict
from turnout.offline.evals.sandbox import PythonTest
from turnout.providers.base import Call, Completion, Timeouts
from turnout.releases.base import Release
from turnout.serving.app import App
from turnout.serving.asgi import Receive, Send
from turnout.serving.boundary import ErrorBoundary
from turnout.serving.chat import CHAT
from turnout.serving.tasks import TASKS

CONFIG_HELP = "YAML config file: targets, the task's route and gates, releases and evals paths."


# Who `turnout eval` is when no --tenant is given: a name no key maps to, so no HTTP client can
# be it; every task and data class, and no limits (no config scope names it).
EVAL_TENANT = Tenant(ledger.EVAL_TENANT, frozenset(DATA_CLASSES), None)  # left out of canary judging


class EvalGroup(click.Group):
    """``turnout eval TASK --candidate …`` runs a golden set (the ``run`` command, named or
    not: anything but a subcommand's name or ``--help`` goes to ``run``, options before TASK
    included); ``turnout eval import-reviews TASK`` grows one from production."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group("eval", cls=EvalGroup)
def eval_command() -> None:
    """Evaluate a release on a task's golden set (`turnout eval TASK --candidate NAME`, the same
    as `turnout eval run TASK …`), or grow the golden set from reviewed production samples
    (`turnout eval import-reviews TASK`)."""


@eval_command.command("run")
@task_argument()
@click.option("--candidate", required=True, help="The release to evaluate (a file under releases/TASK/).")
@click.option("--baseline", help="The release to compare against, on the same cases.")
@click.option("--concurrency", default=4, type=click.IntRange(1, 256), help="Cases (and runs) in flight at once.")
@click.option("--repeat", default=1, type=click.IntRange(1, 100), help="Runs per case.")
@click.option(
    "--judge-target",
    callback=lambda ctx, _param, value: _known_target(ctx.params["config"], value),
    help="The target the `judge` scorer asks where a case names none; it must be in the config.",
)
@click.option(
    "--report", "report_dir", default="./.turnout/evals", type=click.Path(), help="Where the JSON and HTML reports go."
)
@click.option(
    "--by",
    default=getpass.getuser,
    show_default="your user name",
    help="Recorded when the gates pass and the release is marked evaluated.",
)
@click.option("--mark/--no-mark", default=True, help="Mark the candidate evaluated when all gates pass.")
@tenant_option(
    "Evaluate as this tenant (its data classes, tasks, limits and budgets apply). Default: an "
    "internal identity, turnout-eval, that may use every task and data class, has no limits and "
    "no HTTP client can present.",
    known=True,
)
@config_option(CONFIG_HELP)
def eval_run(config: Config, **options: Any) -> None:
    """Evaluate CANDIDATE on TASK's golden set (evals/TASK.jsonl), paired with BASELINE; exit 1
    when a gate fails."""
    run = Run(**options)
    if run.baseline is not None and run.baseline == run.candidate:
        raise click.BadParameter("the baseline must be another release than the candidate", param_hint="--baseline")
    releases = release_files(config, run.task, [n for n in (run.candidate, run.baseline) if n is not None])
    cases = load_cases(golden_set_path(config.releases.evals_path, run.task))
    _check_sandbox(config, cases)
    _check_judges(config, cases, run.judge_target)
    gates = asyncio.run(_evaluate(config, run, releases, cases))
    if not all_passed(gates):
        raise CommandError(f"gates failed: {', '.join(g.name for g in failed(gates))}")


def _check_sandbox(config: Config, cases: list[Case]) -> None:
    """Refuse before calling any model when python_test would refuse each case anyway."""
    uses_code = any(exp.scorer == PythonTest.name for case in cases for exp in case.expect)
    if uses_code and not config.evals.allow_unsandboxed_code:
        problem = sandbox_problem()
        if problem is not None:
            raise CommandError(problem)


def _known_target(config: Config, name: str | None) -> str | None:
    if name is not None and name not in config.targets:
        known = ", ".join(sorted(config.targets))
        raise click.BadParameter(f"no target {name!r} in the config (targets: {known})", param_hint="--judge-target")
    return name


def _check_judges(config: Config, cases: list[Case], default: str | None) -> None:
    """Refuse before calling any model when a `judge` expectation has no target, or one the
    config lacks: each such case would fail (the judge never asked) and read as a regression."""
    problems = []
    for case in cases:
        for exp in case.expect:
            if exp.scorer != JudgeScorer.name:
                continue
            target = exp.args.get("target") or default
            where = f"case {case.id!r} (line {case.line})"
            if not target:
                problems.append(f"{where}: a judge expectation with no target: give --judge-target or its 'target'")
            elif target not in config.targets:
                problems.append(f"{where}: judge target {target!r} is not in the config")
    if problems:
        raise CommandError.listing("the golden set's judges cannot be asked", problems)


@dataclass(frozen=True, slots=True)
class Run:
    """One ``turnout eval``: its options, as the command line gave them."""

    task: str
    candidate: str
    baseline: str | None
    concurrency: int
    repeat: int
    judge_target: str | None
    report_dir: str
    by: str
    mark: bool
    tenant: str | None


async def _evaluate(config: Config, run: Run, releases: dict[str, Release], cases: list[Case]) -> list[GateResult]:
    task, candidate = run.task, run.candidate
    app = App(config, offline=True)  # never a canary controller nor a retention purge
    await app.runtime.start()
    tenant = app.runtime.auth.tenants[run.tenant] if run.tenant is not None else EVAL_TENANT
    spend = JudgeSpend()
    try:
        result = await run_eval(
            cases,
            lambda name, case: _call(app, task, releases[name], case, tenant),
            candidate=candidate,
            baseline=run.baseline,
            concurrency=run.concurrency,
            repeat=run.repeat,
            scorers=build_scorers(
                lambda prompt, target: _judge(app, prompt, target, spend),
                judge_target=run.judge_target,
                allow_unsandboxed_code=config.evals.allow_unsandboxed_code,
            ),
            progress=TextProgress(),
            task=task,
        )
        task_config = config.tasks[task]
        people = HumanCosts.of(task_config.review_cost_usd, task_config.escalation_cost_usd)
        gates = evaluate_gates(task_config.gates, result, people)
        click.echo(render_table(result, gates))
        if spend.calls:
            click.echo(spend.line())
        stem = Path(run.report_dir) / f"{task}-{candidate}-{time.strftime('%Y%m%dT%H%M%S')}"
        report = to_dict(result, gates) | {"judge": spend.to_dict()}
        json_text = orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()
        await asyncio.to_thread(_write_reports, stem, json_text, render_html(result, gates))
        click.echo(f"reports: {stem}.json, {stem}.html")
        store = app.runtime.release_store
        if all_passed(gates) and run.mark and store is not None:
            await store.register(releases[candidate], run.by)
            found = await store.get(task, candidate)
            if found is not None and found.state in PAST_EVALUATED:  # serving already: nothing to mark
                click.echo(f"{candidate} is {found.state} already; its state is left as it is")
                return gates
            why = f"eval gates passed on {len(cases)} cases: {', '.join(g.name for g in gates if not g.skipped)}"
            await store.mark_evaluated(task, candidate, run.by, why)
            click.echo(f"{candidate} is marked evaluated")
        return gates
    finally:
        await app.runtime.aclose()


PAST_EVALUATED = frozenset({"canary", "active"})  # states a passing eval leaves as they are


def _write_reports(stem: Path, json_text: str, html_text: str) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json_text)
    stem.with_suffix(".html").write_text(html_text)


async def _call(app: App, task: str, release: Release, case: Case, tenant: Tenant) -> Outcome:
    """One case through the real request path (the task API, or chat completions for a case
    given as messages), with the release forced in-process."""
    t0 = time.perf_counter()
    if case.variables is not None:
        status, headers, body = await _post(app, True, task, {"variables": case.variables}, release, tenant)
    else:
        messages = {"model": task, "messages": case.messages}
        status, headers, body = await _post(app, False, task, messages, release, tenant)
    latency_ms = (time.perf_counter() - t0) * 1000
    data: Any = orjson.loads(body) if body else {}
    cost = float(headers["x-turnout-cost-usd"]) if "x-turnout-cost-usd" in headers else None
    if status != 200:
        message = data.get("error", {}).get("message", "") if isinstance(data, dict) else ""
        return Outcome("", latency_ms, cost, f"HTTP {status}: {message}")
    if "output" in data:
        output = data["output"]
        text = output if isinstance(output, str) else orjson.dumps(output).decode()
    else:
        text = data["choices"][0]["message"].get("content") or ""
    return Outcome(text, latency_ms, cost)


async def _judge(app: App, prompt: str, target: str, spend: JudgeSpend | None = None) -> str:
    """One judge call straight to ``target``'s provider; its cost is added to ``spend``."""
    provider = app.runtime.targets[target].provider
    body = {"model": "judge", "messages": [{"role": "user", "content": prompt}], "temperature": 0}
    started, t0 = time.time(), time.perf_counter()
    answer = await provider.complete(Call(body, False, Timeouts(), "eval-judge"))
    assert isinstance(answer, Completion)
    if spend is not None:
        spend.add(app.runtime.prices.request_cost(target, answer.usage, time.perf_counter() - t0, started))
    return str(answer.body["choices"][0]["message"].get("content") or "")


async def _post(
    app: App, task_api: bool, task: str, payload: Any, release: Release, tenant: Tenant
) -> tuple[int, dict[str, str], bytes]:
    """A request through the pipeline without a socket, as ``release`` and ``tenant``."""
    raw = orjson.dumps(payload)
    scope = {
        "type": "http",
        "method": "POST",
        "path": f"/v1/tasks/{task}" if task_api else "/v1/chat/completions",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
    }
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.Event().wait()  # nothing more: the client stays
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    async def forced(scope: dict[str, Any], receive: Receive, send: Send, request_id: str) -> None:
        if task_api:
            await app.pipeline.run(TASKS, scope, receive, send, request_id, task=task, release=release, tenant=tenant)
        else:
            await app.pipeline.run(CHAT, scope, receive, send, request_id, release=release, tenant=tenant)

    await ErrorBoundary(forced)(scope, receive, send)  # the boundary every request has
    start = sent[0]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


eval_command.add_command(import_reviews)
