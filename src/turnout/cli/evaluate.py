"""``turnout eval``: run a task's golden set on a candidate release (and a baseline) through the
gateway's real request path, in-process, compare them, apply the task's gates and exit 1 when
one fails. Reports go to ``--report`` as JSON and self-contained HTML."""

from __future__ import annotations

import asyncio
import getpass
import sys
import time
from pathlib import Path
from typing import Any

import click
import orjson

from turnout.config import Config
from turnout.offline.evals import (
    Case,
    Outcome,
    TextProgress,
    all_passed,
    evaluate_gates,
    golden_set_path,
    load_cases,
    render_html,
    render_table,
    run_eval,
    to_json,
)
from turnout.providers.base import Call, Completion, Timeouts
from turnout.releases.base import Release
from turnout.releases.files import load_task
from turnout.serving.app import App
from turnout.serving.tasks import FORCED_RELEASE

CONFIG_HELP = "YAML config file: targets, the task's route and gates, releases and evals paths."


@click.command("eval")
@click.argument("task")
@click.option("--candidate", required=True, help="The release to evaluate (a file under releases/TASK/).")
@click.option("--baseline", help="The release to compare against, on the same cases.")
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 256))
@click.option("--repeat", default=1, show_default=True, type=click.IntRange(1, 100), help="Runs per case.")
@click.option("--judge-target", help="The target the `judge` scorer asks.")
@click.option("--report", "report_dir", default="./.turnout/evals", show_default=True, type=click.Path())
@click.option("--by", default=getpass.getuser, help="Recorded when the gates pass and the release is marked evaluated.")
@click.option(
    "--mark/--no-mark", default=True, show_default=True, help="Mark the candidate evaluated when all gates pass."
)
@click.option(
    "--config", "-c", "config_path", type=click.Path(dir_okay=False), envvar="TURNOUT_CONFIG", help=CONFIG_HELP
)
def eval_command(
    task: str,
    candidate: str,
    baseline: str | None,
    concurrency: int,
    repeat: int,
    judge_target: str | None,
    report_dir: str,
    by: str,
    mark: bool,
    config_path: str | None,
) -> None:
    """Evaluate CANDIDATE on TASK's golden set (evals/TASK.jsonl), paired with BASELINE."""
    from turnout.cli.main import _load

    config = _load(config_path)
    code = asyncio.run(
        _evaluate(config, task, candidate, baseline, concurrency, repeat, judge_target, report_dir, by, mark)
    )
    sys.exit(code)


async def _evaluate(
    config: Config,
    task: str,
    candidate: str,
    baseline: str | None,
    concurrency: int,
    repeat: int,
    judge_target: str | None,
    report_dir: str,
    by: str,
    mark: bool,
) -> int:
    if task not in config.tasks:
        raise click.ClickException(f"unknown task {task!r}")
    files = load_task(config, task)
    releases: dict[str, Release] = {}
    for name in (candidate, baseline):
        if name is not None:
            if name not in files:
                raise click.ClickException(f"no release {name!r} for task {task!r} under {config.releases.path}")
            releases[name] = files[name]
    cases = load_cases(golden_set_path(config.releases.evals_path, task))
    app = App(config)
    await app.gateway.start()
    try:
        result = await run_eval(
            cases,
            lambda name, case: _call(app, task, releases[name], case),
            candidate=candidate,
            baseline=baseline,
            concurrency=concurrency,
            repeat=repeat,
            judge=lambda prompt, target: _judge(app, prompt, target),
            judge_target=judge_target,
            progress=TextProgress(),
            task=task,
        )
        gates = evaluate_gates(config.tasks[task].gates, result)
        click.echo(render_table(result, gates))
        stem = Path(report_dir) / f"{task}-{candidate}-{time.strftime('%Y%m%dT%H%M%S')}"
        await asyncio.to_thread(_write_reports, stem, to_json(result, gates), render_html(result, gates))
        click.echo(f"reports: {stem}.json, {stem}.html")
        passed = all_passed(gates)
        store = app.gateway.release_store
        if passed and mark and store is not None:
            await store.register(releases[candidate], by)
            why = f"eval gates passed on {len(cases)} cases: {', '.join(g.name for g in gates if not g.skipped)}"
            await store.mark_evaluated(task, candidate, by, why)
            click.echo(f"{candidate} is marked evaluated")
        return 0 if passed else 1
    finally:
        await app.gateway.aclose()


def _write_reports(stem: Path, json_text: str, html_text: str) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json_text)
    stem.with_suffix(".html").write_text(html_text)


async def _call(app: App, task: str, release: Release, case: Case) -> Outcome:
    """One case through the real request path (the task API, or chat completions for a case
    given as messages), with the release forced in-process."""
    payload: dict[str, Any]
    if case.variables is not None:
        path, payload = f"/v1/tasks/{task}", {"variables": case.variables}
    else:
        path, payload = "/v1/chat/completions", {"model": task, "messages": case.messages}
    t0 = time.perf_counter()
    status, headers, body = await _post(app, path, payload, {FORCED_RELEASE: release})
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


async def _judge(app: App, prompt: str, target: str) -> str:
    provider = app.gateway.targets[target].provider
    body = {"model": "judge", "messages": [{"role": "user", "content": prompt}], "temperature": 0}
    answer = await provider.complete(Call(body, False, Timeouts(), "eval-judge"))
    assert isinstance(answer, Completion)
    return str(answer.body["choices"][0]["message"].get("content") or "")


async def _post(app: App, path: str, payload: Any, extra: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    """A request to the app without a socket."""
    raw = orjson.dumps(payload)
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
        **extra,
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

    await app.http(scope, receive, send)
    start = sent[0]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])
