"""A ``Plan`` as text to read (options as columns) or as JSON to process."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from turnout.offline.plan.model import BreakEven, Option, Plan


def money(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"${value:,.0f}"
    if value >= 1:
        return f"${value:,.2f}"
    return f"${value:#.3g}"


def count(value: float) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def replicas(option: Option) -> str:
    if not option.replicas:
        return "-"
    low, high = min(option.replicas), max(option.replicas)
    return str(high) if low == high else f"{low}-{high} (by hour)"


def grid(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def break_even_line(plan: Plan, b: BreakEven) -> str:
    month = plan.monthly

    def at(k: float) -> str:
        return f"{count(k * month.requests)} requests/month ({count(k * month.tokens)} tokens)"

    head = f"{b.self_hosted} vs {b.versus}: "
    if b.first is None:
        return (
            head + "never: each 1x of today's traffic adds "
            f"{money(b.self_hosted_per_k_at_scale)}/month self-hosted at scale against "
            f"{money(b.managed_per_k)}/month per-token"
        )
    text = head + f"break-even at {at(b.first)} on {b.first_replicas} replica(s) at peak"
    if b.first_fleet_until == math.inf:
        text += "; the fleet never needs to grow"
    elif b.within_first_fleet:
        text += f"; the first fleet carries up to {at(b.first_fleet_until)}, then grows"
    else:
        text += f", beyond the first fleet (it grows above {at(b.first_fleet_until)})"
    if b.stays_cheaper_from is not None and b.stays_cheaper_from > b.first * (1 + 1e-9):
        bound = "" if b.exact else "at most "
        text += (
            f"; each added replica makes {b.versus} cheaper again for a while; "
            f"{b.self_hosted} stays cheaper above {bound}{at(b.stays_cheaper_from)}"
        )
    elif b.stays_cheaper_from is not None:
        text += f"; {b.self_hosted} stays cheaper above it"
    now = b.self_hosted if _cheaper_now(plan, b) else b.versus
    return text + f". Today: {count(month.requests)} requests/month, {now} cheaper"


def _cheaper_now(plan: Plan, b: BreakEven) -> bool:
    return plan.option(b.self_hosted).monthly_cost <= b.managed_per_k


def table(plan: Plan) -> str:
    month = plan.monthly
    options = plan.options
    lines = [
        f"turnout plan: task {plan.task!r}, {plan.days:g} days observed ({plan.observed_requests:,} requests), "
        f"per 30-day month: {count(month.requests)} requests, {count(month.input_tokens)} input + "
        f"{count(month.output_tokens)} output tokens",
        f"peak: {plan.peak_tokens_per_s:,.1f} tokens/s in the busiest hour, "
        f"{plan.peak_concurrency} requests in flight at once",
        "",
    ]
    lines += grid(
        ["", *(o.name for o in options)],
        [
            ["monthly cost", *(money(o.monthly_cost) for o in options)],
            ["cost per request", *(money(o.cost_per_request) for o in options)],
            ["success rate", *(f"{o.success.value:.0%}" for o in options)],
            ["cost per completed task", *(money(o.cost_per_completed_task) for o in options)],
            ["replicas", *(replicas(o) for o in options)],
            ["utilization", *("-" if o.utilization is None else f"{o.utilization:.0%}" for o in options)],
        ],
    )
    if plan.break_evens:
        lines += ["", "Break-even (monthly volume at which costs are equal, today's hourly shape kept):"]
        lines += [f"  {break_even_line(plan, b)}" for b in plan.break_evens]
    lines += ["", "Cost per completed task by success rate:"]
    lines += grid(
        ["success rate", *(o.name for o in options)],
        [[f"{p:.0%}", *(money(o.cost_per_task_at(p)) for o in options)] for p in plan.sensitivity],
    )
    lines += ["", "Assumptions:"]
    lines += [f"  - success rate of {o.name}: {o.success.value:.3g}, {o.success.source}" for o in options]
    lines += [f"  - {a}" for a in plan.assumptions]
    return "\n".join(lines)


def as_json(plan: Plan) -> dict[str, Any]:
    month = plan.monthly
    out = asdict(plan)
    out["monthly"]["tokens"] = month.tokens
    for raw, option in zip(out["options"], plan.options, strict=True):
        raw["cost_per_request"] = option.cost_per_request
        raw["cost_per_completed_task"] = option.cost_per_completed_task
        raw["sensitivity"] = {f"{p:g}": option.cost_per_task_at(p) for p in plan.sensitivity}
    for raw, b in zip(out["break_evens"], plan.break_evens, strict=True):
        for key in ("first", "first_fleet_until", "stays_cheaper_from"):
            k = raw.pop(key)
            raw[key] = (
                None
                if k is None or k == math.inf
                else {"k": k, "requests": k * month.requests, "tokens": k * month.tokens}
            )
        raw["within_first_fleet"] = b.within_first_fleet
    return out
