"""``turnout plan``: price a task's recorded traffic on a managed API, on Bedrock open-weight
and on a self-hosted fleet (``turnout.offline.plan`` does the arithmetic; this reads the ledger and the
options and prints)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import click

from turnout.cli._common import (
    CommandError,
    Finite,
    config_option,
    format_option,
    print_json,
    read_ledger,
    since_option,
    task_option,
    when,
)
from turnout.config import Config
from turnout.control.catalog import base_model_id, price
from turnout.offline.plan.full import DEFAULT_FIXED, FixedCosts, People, full_cost, parse_fixed, parse_success
from turnout.offline.plan.full_render import full_chart, full_json, full_lines
from turnout.offline.plan.model import PlanError, plan
from turnout.offline.plan.render import as_json, table
from turnout.offline.plan.spec import (
    ManagedSpec,
    SpecError,
    catalog_managed,
    parse_bedrock,
    parse_managed,
    parse_self_hosted,
)
from turnout.offline.plan.traffic import Traffic, TrafficTally

DEFAULT_BEDROCK = "qwen.qwen3-32b-v1:0"
# p5en.48xlarge on demand ($63.296/h for 8 H200) ÷ 8; 3,543 output tokens/s: vLLM 0.6.0 serving
# Llama-3.1-70B on 4 H100 (TP=4, ShareGPT). Both from the cost reference; a 4-H200 replica
# should do better, so this errs towards self-hosted looking dear.
DEFAULT_SELF_HOSTED = "gpu_hour_usd=7.912,gpus=4,tokens_per_s=3543,utilization=0.6"
DEFAULT_SELF_HOSTED_NOTE = (
    "self-hosted defaults (no --self-hosted): 4 x H200 per replica at $7.912/GPU-hour (AWS p5en.48xlarge "
    "on demand / 8) and 3,543 output tokens/s (vLLM 0.6.0, Llama-3.1-70B on 4 x H100): measure your own"
)


def _fixed_text(fixed: FixedCosts) -> str:
    return f"on_call={fixed.on_call:g},observability={fixed.observability:g},security_review={fixed.security_review:g}"


@click.command(name="plan")
@task_option("The task whose recorded traffic to price.", required=True)
@since_option("How far back to read the ledger: a duration (7d, 36h, 2w) or an ISO date or time.")
@click.option(
    "--self-hosted",
    "self_hosted",
    help="gpu_hour_usd=…,gpus=…,tokens_per_s=…[,utilization=0.6][,count=output|total][,concurrency=N]"
    "[,min_replicas=1][,scale_down=none|hourly|night][,night=22-6][,target=NAME]. "
    f"Default: {DEFAULT_SELF_HOSTED}.",
)
@click.option(
    "--managed",
    help="input=…,output=… ($ per 1M tokens)[,target=NAME][,name=LABEL], or a priced config target or "
    "Bedrock catalog model. Default: the task's busiest target, if it has a price.",
)
@click.option("--bedrock", "bedrock", help=f"A Bedrock catalog model id. Default: {DEFAULT_BEDROCK}.")
@click.option(
    "--success-rate",
    help="A share (0.9): assumed for options whose target has no recorded feedback; or per option "
    "(managed=0.92,bedrock=0.8,self-hosted=0.85, e.g. from evals of the releases on those targets): used "
    "whatever was observed.",
)
@click.option(
    "--fixed",
    "fixed_specs",
    multiple=True,
    help="KIND:on_call=…,observability=…,security_review=… ($ a month; KIND managed, bedrock or self-hosted; "
    "repeatable; keys left out keep their default). Defaults: "
    + "; ".join(f"{k}: {_fixed_text(v)}" for k, v in DEFAULT_FIXED.items())
    + ".",
)
@click.option(
    "--review-cost",
    type=Finite(0),
    help="$ a person costs to review one answer. Default: the task's review_cost_usd, else 0.",
)
@click.option(
    "--escalation-cost",
    type=Finite(0),
    help="$ a person costs to finish one failed task. Default: the task's escalation_cost_usd, else 0.",
)
@click.option(
    "--review-rate",
    type=Finite(0, 1),
    help="Share of answers a person reviews. Default: the task's review_rate.",
)
@click.option(
    "--chart",
    "chart_path",
    type=click.Path(dir_okay=False, writable=True),
    help="Write an SVG chart of each option's full monthly cost against volume to this .svg file.",
)
@format_option()
@config_option("YAML config file: its store (the ledger to read) and targets (prices).")
def plan_command(
    task: str,
    since: float,
    self_hosted: str | None,
    managed: str | None,
    bedrock: str | None,
    success_rate: str | None,
    fixed_specs: tuple[str, ...],
    review_cost: float | None,
    escalation_cost: float | None,
    review_rate: float | None,
    chart_path: str | None,
    fmt: str,
    config: Config,
) -> None:
    """Price TASK's recorded traffic three ways: the managed API it uses, a Bedrock open-weight
    model, and a self-hosted fleet sized to its peak; monthly cost, cost per completed task,
    the break-even volume and the sensitivity to the success rate, with every assumption.

    \b
    turnout plan --task support --since 7d \\
        --self-hosted gpu_hour_usd=7.91,gpus=4,tokens_per_s=5000,scale_down=night \\
        --managed input=3,output=15 --fixed self-hosted:on_call=3000 --chart plan.svg

    The full cost adds fixed monthly costs (on-call, observability, security review) and people
    (review, escalation) to each option; cost per completed task and break-even use the total.
    """
    now = time.time()
    if since >= now:
        raise click.BadParameter("must be before now", param_hint="'--since'")
    if chart_path is not None and Path(chart_path).suffix.lower() != ".svg":
        raise click.UsageError("charts are written as SVG only: name the file .svg")
    tally = TrafficTally(task, end=now)
    read_ledger(config, since, now, tally.add, task=task)
    traffic = tally.traffic()
    notes = [f"ledger: the task's rows from {when(since)} to {when(now)}"]
    try:
        hosted = parse_self_hosted(DEFAULT_SELF_HOSTED if self_hosted is None else self_hosted)
        if self_hosted is None:
            notes.append(DEFAULT_SELF_HOSTED_NOTE)
        current = current_managed(config, traffic, managed)
        if current is None:
            notes.append("no managed option: the task's busiest target has no per-token price; pass --managed")
        assumed, given = parse_success(success_rate) if success_rate is not None else (None, {})
        bedrock_spec = open_weight(config, traffic, bedrock)
        result = plan(traffic, hosted, current, bedrock_spec, assumed, notes=notes, given_success=given)
        full = full_cost(
            result,
            traffic,
            hosted,
            parse_fixed(fixed_specs),
            people(config, task, review_cost, escalation_cost, review_rate),
        )
    except SpecError as exc:
        raise click.UsageError(str(exc)) from exc
    except PlanError as exc:
        raise CommandError(str(exc)) from exc
    if fmt == "json":
        print_json(as_json(result) | {"full_cost": full_json(result, full)})
    else:
        click.echo(table(result) + "\n" + "\n".join(full_lines(result, full)))
    if chart_path is not None:
        Path(chart_path).write_text(full_chart(result, full, traffic, hosted), encoding="utf-8")


def people(config: Config, task: str, review: float | None, escalation: float | None, rate: float | None) -> People:
    """The flags, else the task's config, else 0."""
    task_config = config.tasks.get(task)
    if task_config is not None:
        review = task_config.review_cost_usd if review is None else review
        escalation = task_config.escalation_cost_usd if escalation is None else escalation
        rate = task_config.review_rate if rate is None else rate
    return People(review or 0.0, escalation or 0.0, rate or 0.0)


def current_managed(config: Config, traffic: Traffic, spec: str | None) -> ManagedSpec | None:
    """``--managed``, else the task's busiest target when it has a per-token price."""
    if spec is not None:
        return parse_managed(spec, lambda name: config_managed(config, name) or catalog_managed(name))
    busiest = traffic.busiest_target()
    return config_managed(config, busiest) if busiest else None


def config_managed(config: Config, name: str) -> ManagedSpec | None:
    target = config.targets.get(name)
    found = price(target) if target is not None else None
    if found is None or (found.input_per_mtok == 0 and found.output_per_mtok == 0):
        return None  # unpriced, or embedded (no marginal price): not a managed API
    return ManagedSpec(name, found.input_per_mtok, found.output_per_mtok, target=name)


def open_weight(config: Config, traffic: Traffic, model: str | None) -> ManagedSpec:
    """``--bedrock`` (default: the model of a Bedrock target that served the task, else
    ``DEFAULT_BEDROCK``), tied to the config's target for that model so its observed success
    rate applies."""
    served = {
        name: base_model_id(t.model)
        for name, t in config.targets.items()
        if t.provider == "bedrock" and name in traffic.targets
    }
    chosen = next(iter(served.values()), DEFAULT_BEDROCK) if model is None else model
    spec = parse_bedrock(chosen)
    target = next((name for name, mid in served.items() if mid == spec.name), None)
    return replace(spec, target=target)
