"""Managed API, Bedrock open-weight or self-hosted: what a task's traffic costs on each.

Every figure is a month of 30 days, and every volume is the observed traffic scaled by one
factor ``k`` (``k = 1``: the observed window scaled to 30 days), so the hourly shape is kept.

Per-token options (the managed API, Bedrock)::

    monthly cost  M(k) = k · (input tokens/month · input $/1M + output tokens/month · output $/1M) / 1e6

Self-hosted, ``n_h`` replicas in each hour of the day ``h`` (UTC), ``F = gpus · gpu_hour_usd``::

    capacity      C   = tokens_per_s · utilization                     tokens/s one replica carries
    demand        u_h = max(R_h / C, Q_h / concurrency)                replicas per unit of k
                  R_h = peak tokens/s of the busiest observed hour in h's group
                  Q_h = peak requests in flight in that group (only with concurrency=)
    replicas      n_h(k) = max(min_replicas, ceil(k · u_h))
    monthly cost  S(k) = F · 30 · Σ_h n_h(k)

The groups: every hour alike (``scale_down=none``: one fleet sized to the overall peak, all
day), each hour of the day its own (``hourly``), or the night hours and the day hours
(``night``). ``R_h`` counts output tokens, or input + output with ``count=total``.

Cost per completed task = monthly cost ÷ (requests/month · success rate).

Break-even against a per-token option: ``S`` is a step function of ``k`` and ``M`` a line, so
on each step (an interval of ``k`` where no ``n_h`` changes, cost ``s``) they cross at most
once, at ``k = s / M(1)``. ``break_even`` walks the steps: the first crossing, where the first
fleet (``min_replicas``) must grow, and the volume above which self-hosted stays cheaper
after every later step. Self-hosted never catches up when its cost per unit of ``k`` at scale
(``F · 30 · Σ_h u_h``) is at least ``M(1)``.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from turnout.offline.plan.spec import ManagedSpec, SelfHostedSpec
from turnout.offline.plan.traffic import HOUR, Traffic

MONTH_DAYS = 30
MONTH_HOURS = MONTH_DAYS * 24
SENSITIVITY = (0.7, 0.8, 0.9, 0.95, 0.99)
MAX_STEPS = 200_000  # steps walked for a break-even before settling for a bound on the last one

Kind = Literal["managed", "bedrock", "self-hosted"]


class PlanError(ValueError):
    """No plan to give: no traffic for the task in the window, or figures past any real fleet
    (``check_sizes``: a tokens_per_s in the wrong unit, a price of 1e308)."""


MAX_REPLICAS = 1_000_000  # in one hour: past any fleet, a spec given in the wrong unit


def check_sizes(names_costs: Sequence[tuple[str, float]], replicas: Sequence[tuple[str, int]] = ()) -> None:
    """PlanError where a monthly cost overflows (inf) or a fleet is past ``MAX_REPLICAS``:
    the figures would print as ``inf`` or as hundreds of digits, and JSON could not hold them."""
    for name, most in replicas:
        if most > MAX_REPLICAS:
            raise PlanError(
                f"{name} needs more than {MAX_REPLICAS:,} replicas in its busiest hour: check tokens_per_s "
                "(one replica's tokens per second), utilization and min_replicas"
            )
    for name, cost in names_costs:
        if not math.isfinite(cost):
            raise PlanError(f"{name}: the monthly cost overflows: check the prices, sizes and costs given")


@dataclass(frozen=True, slots=True)
class Volume:
    """The observed traffic at k = 1: scaled from the window to 30 days."""

    requests: float
    input_tokens: float
    output_tokens: float

    @property
    def tokens(self) -> float:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class Rate:
    value: float
    source: str  # where it comes from, for the assumptions


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    kind: Kind
    monthly_cost: float  # at k = 1
    requests: float  # per month
    success: Rate
    replicas: tuple[int, ...] = ()  # per hour of the day (UTC), self-hosted only
    utilization: float | None = None  # tokens served ÷ tokens the fleet could serve at full speed

    @property
    def cost_per_request(self) -> float:
        return self.monthly_cost / self.requests if self.requests else 0.0

    @property
    def cost_per_completed_task(self) -> float | None:
        return self.cost_per_task_at(self.success.value)

    def cost_per_task_at(self, success_rate: float) -> float | None:
        return self.cost_per_request / success_rate if success_rate > 0 else None


@dataclass(frozen=True, slots=True)
class BreakEven:
    """Where ``self_hosted`` and the per-token ``versus`` cost the same, in units of k."""

    self_hosted: str
    versus: str
    first: float | None  # the lowest k where self-hosted is as cheap; None: never
    first_replicas: int  # the most replicas in any hour at ``first`` (or of the first fleet)
    first_fleet_until: float  # k above which the first fleet (min_replicas) must grow
    stays_cheaper_from: float | None  # k from which self-hosted is never dearer again
    exact: bool = True  # False: stays_cheaper_from is an upper bound (too many steps to walk)
    managed_per_k: float = 0.0
    self_hosted_per_k_at_scale: float = 0.0  # S's slope once every hour has grown

    @property
    def within_first_fleet(self) -> bool:
        return self.first is not None and self.first <= self.first_fleet_until


@dataclass(frozen=True, slots=True)
class Plan:
    task: str
    days: float
    observed_requests: int
    monthly: Volume
    peak_tokens_per_s: float  # output (or total) tokens/s in the busiest hour, as sized
    peak_concurrency: int
    options: tuple[Option, ...]
    break_evens: tuple[BreakEven, ...]
    sensitivity: tuple[float, ...]
    assumptions: tuple[str, ...] = field(default=())

    def option(self, name: str) -> Option:
        return next(o for o in self.options if o.name == name)


def monthly_volume(traffic: Traffic) -> Volume:
    scale = MONTH_DAYS / traffic.days
    return Volume(traffic.requests * scale, traffic.input_tokens * scale, traffic.output_tokens * scale)


def per_token_cost(volume: Volume, spec: ManagedSpec) -> float:
    return (volume.input_tokens * spec.input_per_mtok + volume.output_tokens * spec.output_per_mtok) / 1e6


def hour_groups(spec: SelfHostedSpec) -> list[int]:
    """The group of each hour of the day: hours of one group share one replica count."""
    if spec.scale_down == "hourly":
        return list(range(24))
    if spec.scale_down == "night":
        night = spec.night_hours()
        return [1 if h in night else 0 for h in range(24)]
    return [0] * 24


def demand(traffic: Traffic, spec: SelfHostedSpec) -> list[float]:
    """``u_h`` for each hour of the day: replicas the busiest observed hour of its group needs."""
    groups = hour_groups(spec)
    rate: dict[int, float] = {}
    flight: dict[int, int] = {}
    for bucket in traffic.hours:
        tokens = bucket.output_tokens + (bucket.input_tokens if spec.count == "total" else 0)
        group = groups[bucket.hour_of_day]
        rate[group] = max(rate.get(group, 0.0), tokens / HOUR)
        flight[group] = max(flight.get(group, 0), bucket.peak_concurrency)
    out = []
    for h in range(24):
        need = rate.get(groups[h], 0.0) / spec.capacity
        if spec.concurrency is not None:
            need = max(need, flight.get(groups[h], 0) / spec.concurrency)
        out.append(need)
    return out


def replicas(demand: Sequence[float], k: float, min_replicas: int) -> tuple[int, ...]:
    # A hair under the integer stays on it: k · u_h = 3 must not become 4 by rounding error.
    return tuple(max(min_replicas, math.ceil(k * u - 1e-9)) for u in demand)


def fleet_cost(spec: SelfHostedSpec, per_hour: Sequence[int]) -> float:
    return sum(per_hour) * spec.gpus * spec.gpu_hour_usd * MONTH_DAYS


def self_hosted_option(
    traffic: Traffic, volume: Volume, spec: SelfHostedSpec, name: str, success: Rate
) -> tuple[Option, list[float]]:
    need = demand(traffic, spec)
    fleet = replicas(need, 1.0, spec.min_replicas)
    counted = volume.output_tokens + (volume.input_tokens if spec.count == "total" else 0)
    full_speed = sum(fleet) * MONTH_DAYS * HOUR * spec.tokens_per_s
    option = Option(name, "self-hosted", fleet_cost(spec, fleet), volume.requests, success, fleet, counted / full_speed)
    return option, need


def break_even(
    spec: SelfHostedSpec, need: Sequence[float], self_hosted: str, versus: str, managed_per_k: float
) -> BreakEven:
    """Walk the steps of S(k) (see the module docstring) against M(k) = managed_per_k · k."""
    slot = spec.gpus * spec.gpu_hour_usd * MONTH_DAYS  # one replica, one hour of the day, a month
    m = spec.min_replicas
    busy = [u for u in need if u > 0]
    slope = slot * sum(busy)
    first_fleet_until = m / max(busy) if busy else math.inf
    never = BreakEven(self_hosted, versus, None, m, first_fleet_until, None, True, managed_per_k, slope)
    # S(k) >= slope · k, so with M(k) = managed_per_k · k no larger, self-hosted never catches up.
    if managed_per_k <= slope:
        return never
    if not busy:  # no tokens to carry: the fleet stays at min_replicas whatever the volume
        flat = slot * 24 * m / managed_per_k
        return BreakEven(self_hosted, versus, flat, m, math.inf, flat, True, managed_per_k, slope)
    # Past k_all every busy hour has grown past min_replicas, so
    # S(k) < slope · k + slot · (busy hours + m · idle hours): self-hosted is cheaper for good from k_bound.
    k_all = m / min(busy)
    fixed = slot * (len(busy) + m * (24 - len(busy)))
    k_bound = max(k_all, fixed / (managed_per_k - slope))
    steps = step_points(busy, m, k_bound, MAX_STEPS + 1)
    exact = len(steps) <= MAX_STEPS
    edges = [0.0, *steps[:MAX_STEPS]]
    if exact and edges[-1] < k_bound:
        edges.append(k_bound)
    first: float | None = None
    stays: float | None = None
    for lo, hi in itertools.pairwise(edges):
        cost = fleet_cost(spec, replicas(need, (lo + hi) / 2, m))  # constant on the step (lo, hi]
        cross = cost / managed_per_k
        if cross > hi:
            continue  # managed cheaper over the whole step
        if first is None:
            first = max(cross, lo)
        if cross > lo:
            stays = cross  # managed was cheaper at the step's start: a later crossing
    return BreakEven(
        self_hosted,
        versus,
        first,
        _peak(need, first, m),
        first_fleet_until,
        stays if exact else k_bound,
        exact,
        managed_per_k,
        slope,
    )


def step_points(need: Sequence[float], m: int, top: float, most: int) -> list[float]:
    """The k in (0, ``top``] at which some hour's replica count grows past ``m`` or more
    (``j / u_h``, j ≥ m), ascending and without repeats: the ``most`` lowest. Merged lazily from
    one ascending run per hour, so a fleet that grows often (a small ``tokens_per_s``: millions
    of steps below ``top``) costs ``most`` of them, not all of them held at once."""
    runs = [_steps(u, m, top) for u in need if u > 0]
    distinct = (k for k, _ in itertools.groupby(heapq.merge(*runs)))
    return list(itertools.islice(distinct, most))


def _steps(u: float, m: int, top: float) -> Iterator[float]:
    """One hour's steps, ascending: its own generator (one made in a comprehension would read
    the last hour's ``u``)."""
    return (j / u for j in range(m, math.floor(top * u) + 1))


def _peak(need: Sequence[float], k: float | None, m: int) -> int:
    return max(replicas(need, k, m)) if k is not None else m


def success_rate(traffic: Traffic, target: str | None, assumed: float | None, given: float | None = None) -> Rate:
    """Given for this option (an eval's pass rate, say), else observed on ``target`` when it has
    feedback, else the stated assumption, else the rate over all the task's targets, else 1 (no
    feedback at all: every request counts as done)."""
    if given is not None:
        return Rate(given, "given for this option (--success-rate KIND=…)")
    stats = traffic.targets.get(target) if target else None
    if stats is not None and stats.success_rate is not None:
        return Rate(stats.success_rate, f"observed on {target} ({stats.outcomes} outcomes)")
    if assumed is not None:
        return Rate(assumed, "assumed (--success-rate)")
    overall = traffic.success_rate
    if overall is not None:
        outcomes = sum(s.outcomes for s in traffic.targets.values())
        return Rate(overall, f"observed over all targets ({outcomes} outcomes)")
    return Rate(1.0, "assumed 1.0: no feedback recorded, every request counts as completed")


def plan(
    traffic: Traffic,
    self_hosted: SelfHostedSpec,
    managed: ManagedSpec | None = None,
    bedrock: ManagedSpec | None = None,
    assumed_success: float | None = None,
    sensitivity: Sequence[float] = SENSITIVITY,
    notes: Sequence[str] = (),
    given_success: Mapping[Kind, float] | None = None,
) -> Plan:
    given = given_success or {}
    if not traffic.requests:
        raise PlanError(f"no traffic for task {traffic.task!r} in the window")
    volume = monthly_volume(traffic)
    options: list[Option] = []
    per_token: list[Option] = []
    kinds: list[tuple[ManagedSpec | None, Kind]] = [(managed, "managed"), (bedrock, "bedrock")]
    for spec, kind in kinds:
        if spec is not None:
            rate = success_rate(traffic, spec.target, assumed_success, given.get(kind))
            label = spec.name if kind == "managed" else f"bedrock {spec.name}"
            per_token.append(Option(label, kind, per_token_cost(volume, spec), volume.requests, rate))
    options.extend(per_token)
    hosted_rate = success_rate(traffic, self_hosted.target, assumed_success, given.get("self-hosted"))
    variants = [(self_hosted.name, _always_on(self_hosted))]
    if self_hosted.scale_down != "none":
        variants.append((f"{self_hosted.name} ({self_hosted.scale_down} scale-down)", self_hosted))
    breaks: list[BreakEven] = []
    for name, fleet in variants:
        option, need = self_hosted_option(traffic, volume, fleet, name, hosted_rate)
        options.append(option)
        breaks.extend(break_even(fleet, need, name, other.name, other.monthly_cost) for other in per_token)
    check_sizes([(o.name, o.monthly_cost) for o in options], [(o.name, max(o.replicas)) for o in options if o.replicas])
    return Plan(
        task=traffic.task,
        days=traffic.days,
        observed_requests=traffic.requests,
        monthly=volume,
        peak_tokens_per_s=_peak_rate(traffic, self_hosted),
        peak_concurrency=traffic.peak_concurrency,
        options=tuple(options),
        break_evens=tuple(breaks),
        sensitivity=tuple(sensitivity),
        assumptions=tuple(assumptions(traffic, self_hosted, managed, bedrock, notes)),
    )


def _always_on(spec: SelfHostedSpec) -> SelfHostedSpec:
    return replace(spec, scale_down="none")


def _peak_rate(traffic: Traffic, spec: SelfHostedSpec) -> float:
    total = spec.count == "total"
    return max((h.output_tokens + (h.input_tokens if total else 0)) / HOUR for h in traffic.hours)


MIN_WINDOW_DAYS = 7  # a week: the shortest window that holds the weekly shape


def assumptions(
    traffic: Traffic,
    spec: SelfHostedSpec,
    managed: ManagedSpec | None,
    bedrock: ManagedSpec | None,
    notes: Sequence[str],
) -> list[str]:
    out = [
        f"window: {traffic.days:g} days of recorded traffic, scaled to {MONTH_DAYS} days, keeping its hourly shape",
    ]
    if traffic.days < MIN_WINDOW_DAYS:
        out.append(
            f"warning: {traffic.days:g} days is too short to scale to a month: a window under "
            f"{MIN_WINDOW_DAYS} days misses the weekly shape (weekends, Monday peaks); pass a longer --since "
            "once the ledger holds more"
        )
    for price, label in ((managed, "managed"), (bedrock, "bedrock")):
        if price is not None:
            out.append(
                f"{label} {price.name}: ${price.input_per_mtok:g} in, ${price.output_per_mtok:g} out per 1M tokens"
            )
    out += [
        f"self-hosted replica: {spec.gpus} GPU(s) at ${spec.gpu_hour_usd:g}/GPU-hour, "
        f"{spec.tokens_per_s:g} {spec.count} tokens/s at full speed, planned at {spec.utilization:.0%} "
        f"({spec.capacity:g} tokens/s), at least {spec.min_replicas} replica(s)",
        "replicas sized to the busiest observed hour's average token rate"
        + (f" and to {spec.concurrency} requests in flight per replica" if spec.concurrency else "")
        + "; bursts within an hour ride on the utilization headroom",
    ]
    if spec.scale_down == "night":
        start, stop = spec.night
        out.append(f"scale-down: night hours {start:02d}:00-{stop:02d}:00 UTC sized to the night's busiest hour")
    elif spec.scale_down == "hourly":
        out.append("scale-down: each hour of the day (UTC) sized to its own busiest observed hour")
    out += [
        "self-hosted cost counts GPU-hours only: no engineering, storage, egress or reserved-capacity discounts",
        "cost per completed task = monthly cost ÷ (requests × success rate): failures are paid for, not redone",
        *notes,
    ]
    return out
