"""The full cost (``full.py``) as table lines, JSON and an SVG chart of monthly cost against
volume (the chart drawn by ``offline/reports/charts.py``)."""

from __future__ import annotations

from typing import Any

from turnout.offline.plan.full import FullCost, chart_range, curve
from turnout.offline.plan.model import Plan
from turnout.offline.plan.render import count, grid, money
from turnout.offline.plan.spec import SelfHostedSpec
from turnout.offline.plan.traffic import Traffic
from turnout.offline.reports.charts import line_chart


def full_lines(plan: Plan, full: FullCost) -> list[str]:
    options = full.options
    people = full.people
    lines = [
        "",
        f"Full monthly cost (fixed costs; people: review ${people.review_usd:g} × {people.review_rate:.0%} of "
        f"answers, escalation ${people.escalation_usd:g} × each failed task):",
    ]
    lines += grid(
        ["", *(o.name for o in options)],
        [
            ["model (tokens or GPUs)", *(money(o.model_usd) for o in options)],
            ["  of which GPU idle", *(money(o.idle_usd) for o in options)],
            ["on-call", *(money(o.fixed.on_call) for o in options)],
            ["observability", *(money(o.fixed.observability) for o in options)],
            ["security review", *(money(o.fixed.security_review) for o in options)],
            ["review + escalation", *(money(o.people_usd) for o in options)],
            ["total a month", *(money(o.total_usd) for o in options)],
            ["success rate", *(f"{o.success:.0%}" for o in options)],
            ["cost per completed task", *(money(o.cost_per_completed_task) for o in options)],
        ],
    )
    if full.break_evens:
        lines += ["", "Break-even on the full cost (monthly volume at which totals are equal):"]
        for b in full.break_evens:
            at = (
                f"{count(b.k * plan.monthly.requests)} requests/month ({b.k:.3g}x today)"
                if b.k is not None
                else "never below 1000x today's volume"
            )
            lines.append(f"  {b.self_hosted} vs {b.versus}: {at}")
    return lines


def full_json(plan: Plan, full: FullCost) -> dict[str, Any]:
    return {
        "people": {
            "review_usd": full.people.review_usd,
            "escalation_usd": full.people.escalation_usd,
            "review_rate": full.people.review_rate,
        },
        "options": [
            {
                "name": o.name,
                "kind": o.kind,
                "model_usd": o.model_usd,
                "idle_usd": o.idle_usd,
                "fixed": {
                    "on_call": o.fixed.on_call,
                    "observability": o.fixed.observability,
                    "security_review": o.fixed.security_review,
                    "total": o.fixed.total,
                },
                "people_usd": o.people_usd,
                "total_usd": o.total_usd,
                "success_rate": o.success,
                "cost_per_completed_task": o.cost_per_completed_task,
            }
            for o in full.options
        ],
        "break_evens": [
            {
                "self_hosted": b.self_hosted,
                "versus": b.versus,
                "k": b.k,
                "requests": None if b.k is None else b.k * plan.monthly.requests,
            }
            for b in full.break_evens
        ],
    }


def full_chart(plan: Plan, full: FullCost, traffic: Traffic, spec: SelfHostedSpec) -> str:
    """Monthly full cost of every option against monthly requests, one line each."""
    ks = chart_range(full)
    labels = [count(k * plan.monthly.requests) for k in ks]
    return line_chart(
        f"turnout plan: {plan.task}, monthly cost against volume",
        "fixed costs, model cost and people; today's hourly shape kept",
        labels,
        curve(full, traffic, spec, ks),
        "$ a month",
        money_axis,
        x_label="requests a month",
    )


def money_axis(value: float) -> str:
    return money(value)
