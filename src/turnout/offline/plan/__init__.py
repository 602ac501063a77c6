"""``turnout plan``: what a task's recorded traffic would cost on a managed API, on Bedrock
open-weight models and on a self-hosted fleet, per month and per completed task, with the
break-even volume and the sensitivity to the success rate.

    traffic.py   Traffic, traffic_from_rows     ledger rows → hourly volumes, concurrency, success
    spec.py      ManagedSpec, SelfHostedSpec    the options, parsed from key=value specs
    model.py     plan() → Plan                  the arithmetic (formulas in its docstring)
    render.py    table(), as_json()             text to read, JSON to process
"""

from turnout.offline.plan.model import BreakEven, Option, Plan, PlanError, Rate, Volume, plan
from turnout.offline.plan.spec import (
    ManagedSpec,
    SelfHostedSpec,
    SpecError,
    parse_bedrock,
    parse_managed,
    parse_self_hosted,
)
from turnout.offline.plan.traffic import HourBucket, TargetStats, Traffic, traffic_from_rows

__all__ = [
    "BreakEven",
    "HourBucket",
    "ManagedSpec",
    "Option",
    "Plan",
    "PlanError",
    "Rate",
    "SelfHostedSpec",
    "SpecError",
    "TargetStats",
    "Traffic",
    "Volume",
    "parse_bedrock",
    "parse_managed",
    "parse_self_hosted",
    "plan",
    "traffic_from_rows",
]
