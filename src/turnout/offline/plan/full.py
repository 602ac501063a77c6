"""The full cost of each option: what the GPUs or tokens cost (``model.py``) plus what a team
pays every month whatever the volume, and what people cost per task.

Per option, at volume ``k`` (``k = 1``: today's traffic scaled to a month, as in ``model.py``)::

    fixed         X   = on_call + observability + security_review              $ a month, any volume
    people        P(k) = k · requests · (review_rate · review + (1 − success) · escalation)
    total         T(k) = X + model cost(k) + P(k)
    cost per completed task = T(1) ÷ (requests · success)

The GPU fleet's idle time is already in the self-hosted model cost (every GPU-hour of a fleet
sized to the peak is paid); ``idle_usd`` shows the share of it no token used:
``model cost · (1 − utilization)``.

Break-even on the full cost: on each step of the self-hosted fleet (``model.py``: constant
fleet cost ``s`` on ``(lo, hi]``), ``T_S(k) − T_M(k) = a + b·k`` with
``a = X_S + s − X_M`` and ``b = P_S(1) − P_M(1) − M(1)``; the first ``k`` where it is ≤ 0 is the
break-even. The walk stops at ``MAX_K`` times today's volume.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import cast

from turnout.offline.plan.model import (
    MAX_STEPS,
    Kind,
    Option,
    Plan,
    check_sizes,
    demand,
    fleet_cost,
    replicas,
    step_points,
)
from turnout.offline.plan.spec import SelfHostedSpec, SpecError, parse_pairs
from turnout.offline.plan.traffic import Traffic

MAX_K = 1000.0
FIXED_KEYS = ("on_call", "observability", "security_review")


@dataclass(frozen=True, slots=True)
class FixedCosts:
    """$ a month that do not scale with volume."""

    on_call: float = 0.0
    observability: float = 0.0
    security_review: float = 0.0

    @property
    def total(self) -> float:
        return self.on_call + self.observability + self.security_review


# Rough defaults to override with your own figures (--fixed): a managed API needs no pager of
# its own and a light security review of the vendor; a self-hosted fleet needs a share of an
# on-call rotation, its own dashboards and alerts, and a review of the serving stack.
DEFAULT_FIXED: Mapping[Kind, FixedCosts] = {
    "managed": FixedCosts(on_call=0.0, observability=100.0, security_review=250.0),
    "bedrock": FixedCosts(on_call=0.0, observability=100.0, security_review=250.0),
    "self-hosted": FixedCosts(on_call=2000.0, observability=300.0, security_review=500.0),
}


@dataclass(frozen=True, slots=True)
class People:
    """What people cost: reviewing one answer, finishing one failed task ($), and the share of
    answers reviewed."""

    review_usd: float = 0.0
    escalation_usd: float = 0.0
    review_rate: float = 0.0

    def per_request(self, success: float) -> float:
        return self.review_rate * self.review_usd + (1 - success) * self.escalation_usd


@dataclass(frozen=True, slots=True)
class FullOption:
    name: str
    kind: Kind
    model_usd: float  # the option's monthly cost in model.py: tokens or GPU-hours
    fixed: FixedCosts
    people_usd: float  # at k = 1
    idle_usd: float | None  # self-hosted: the part of model_usd no token used
    requests: float
    success: float

    @property
    def total_usd(self) -> float:
        return self.model_usd + self.fixed.total + self.people_usd

    @property
    def cost_per_completed_task(self) -> float | None:
        done = self.requests * self.success
        return self.total_usd / done if done > 0 else None

    def at(self, k: float, model_usd: float) -> float:
        """Total monthly cost at volume k, given the model cost at k."""
        return self.fixed.total + model_usd + k * self.people_usd


@dataclass(frozen=True, slots=True)
class FullBreakEven:
    self_hosted: str
    versus: str
    k: float | None  # None: not below MAX_K


@dataclass(frozen=True, slots=True)
class FullCost:
    options: tuple[FullOption, ...]
    break_evens: tuple[FullBreakEven, ...]
    people: People

    def option(self, name: str) -> FullOption:
        return next(o for o in self.options if o.name == name)


def parse_fixed(specs: Sequence[str]) -> dict[Kind, FixedCosts]:
    """``KIND:on_call=…,observability=…,security_review=…`` (KIND: managed, bedrock or
    self-hosted); keys left out keep their default."""
    out: dict[Kind, FixedCosts] = dict(DEFAULT_FIXED)
    for spec in specs:
        name, sep, rest = spec.partition(":")
        if not sep or name.strip() not in DEFAULT_FIXED:
            raise SpecError(f"{spec!r}: expected KIND:key=value,... with KIND managed, bedrock or self-hosted")
        kind = cast(Kind, name.strip())
        out[kind] = FixedCosts(**{**_as_dict(out[kind]), **_fixed_values(parse_pairs(rest))})
    return out


def _as_dict(fixed: FixedCosts) -> dict[str, float]:
    return {key: getattr(fixed, key) for key in FIXED_KEYS}


def _fixed_values(pairs: dict[str, str]) -> dict[str, float]:
    unknown = sorted(set(pairs) - set(FIXED_KEYS))
    if unknown:
        raise SpecError(f"unknown key(s) {', '.join(unknown)}; expected {', '.join(FIXED_KEYS)}")
    out = {}
    for key, raw in pairs.items():
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not value >= 0 or math.isinf(value):
            raise SpecError(f"{key}={raw}: expected $ a month, 0 or more")
        out[key] = value
    return out


def full_option(option: Option, fixed: FixedCosts, people: People) -> FullOption:
    idle = option.monthly_cost * (1 - option.utilization) if option.utilization is not None else None
    success = option.success.value
    return FullOption(
        option.name,
        option.kind,
        option.monthly_cost,
        fixed,
        option.requests * people.per_request(success),
        idle,
        option.requests,
        success,
    )


def full_cost(
    result: Plan,
    traffic: Traffic,
    spec: SelfHostedSpec,
    fixed: Mapping[Kind, FixedCosts] = DEFAULT_FIXED,
    people: People = People(),
) -> FullCost:
    options = tuple(full_option(o, fixed[o.kind], people) for o in result.options)
    check_sizes([(o.name, o.total_usd) for o in options])
    breaks = []
    for b in result.break_evens:
        hosted = next(o for o in options if o.name == b.self_hosted)
        versus = next(o for o in options if o.name == b.versus)
        fleet = spec if "scale-down" in b.self_hosted else _always_on(spec)
        k = break_even_k(fleet, demand(traffic, fleet), hosted, versus)
        breaks.append(FullBreakEven(b.self_hosted, b.versus, k))
    return FullCost(options, tuple(breaks), people)


def _always_on(spec: SelfHostedSpec) -> SelfHostedSpec:
    return replace(spec, scale_down="none")


def self_hosted_model_cost(spec: SelfHostedSpec, need: Sequence[float], k: float) -> float:
    return fleet_cost(spec, replicas(need, k, spec.min_replicas))


def step_edges(need: Sequence[float], m: int, top: float) -> list[float]:
    """The k at which some hour's replica count changes, up to ``top``; past MAX_STEPS of them,
    the walk ends at the last one."""
    inner = [k for k in step_points(need, m, top, MAX_STEPS + 1) if k != top]
    if len(inner) > MAX_STEPS:
        return [0.0, *inner[:MAX_STEPS]]
    return [0.0, *inner, top]


def break_even_k(spec: SelfHostedSpec, need: Sequence[float], hosted: FullOption, versus: FullOption) -> float | None:
    """The lowest k ≤ MAX_K where the self-hosted total is at most the per-token one."""
    per_k = versus.model_usd  # the per-token option's model cost is linear in k
    b = hosted.people_usd - versus.people_usd - per_k
    for lo, hi in _pairs(step_edges(need, spec.min_replicas, MAX_K)):
        s = self_hosted_model_cost(spec, need, (lo + hi) / 2)
        a = hosted.fixed.total + s - versus.fixed.total
        if b < 0:
            k = max(lo, -a / b)
            if k <= hi:
                return k
        elif a + b * lo <= 0:
            return lo
    return None


def _pairs(edges: list[float]) -> list[tuple[float, float]]:
    return [(lo, hi) for lo, hi in itertools.pairwise(edges) if hi > lo]


def curve(full: FullCost, traffic: Traffic, spec: SelfHostedSpec, ks: Sequence[float]) -> list[tuple[str, list[float]]]:
    """Total monthly cost of each option at each k (for the chart)."""
    out = []
    for o in full.options:
        if o.kind == "self-hosted":
            fleet = spec if "scale-down" in o.name else _always_on(spec)
            need = demand(traffic, fleet)
            values = [o.at(k, self_hosted_model_cost(fleet, need, k)) for k in ks]
        else:
            values = [o.at(k, k * o.model_usd) for k in ks]
        out.append((o.name, values))
    return out


def chart_range(full: FullCost) -> list[float]:
    """13 volumes from 0 to past the last finite break-even (at least twice today's)."""
    found = [b.k for b in full.break_evens if b.k is not None]
    top = min(MAX_K, max([2.0, *(1.5 * k for k in found)]))
    return [top * i / 12 for i in range(13)]


def parse_success(text: str) -> tuple[float | None, dict[Kind, float]]:
    """``0.9`` (every option without observed feedback) or ``managed=0.92,self-hosted=0.85``
    (those options, whatever was observed: an eval's pass rate, say)."""
    if "=" not in text:
        return _share("success rate", text), {}
    given: dict[Kind, float] = {}
    for key, raw in parse_pairs(text).items():
        if key not in DEFAULT_FIXED:
            raise SpecError(f"{key}: expected managed, bedrock or self-hosted")
        given[cast(Kind, key)] = _share(key, raw)
    return None, given


def _share(key: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise SpecError(f"{key}={raw}: expected a share in (0, 1]")
    return value
