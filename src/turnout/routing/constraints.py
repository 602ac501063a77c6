"""A caller's own limits on one request: how long it may take, how much it may cost.

``X-Turnout-Max-Latency-Ms`` / ``metadata.max_latency_ms`` and ``X-Turnout-Max-Cost-Usd`` /
``metadata.max_cost_usd`` (the header wins). ``fit`` is pure: it keeps the targets whose recent
p95 latency and whose worst-case cost for this request fit, and says why each other one was
skipped, before any attempt. A target with no latency history yet is kept (it cannot be judged;
its first answers build the history), and so is an unpriced one (it costs 0, as the quota's
reservation counts it). Nothing fits → 422 ``constraint_unsatisfiable`` naming the limit.
``within`` runs the attempt loop under what is left of ``max_latency_ms``: one deadline for
every retry and fallback together, 504 ``max_latency_exceeded`` when it runs out.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from turnout._support.deadline import deadline_at
from turnout.errors import RequestError, TurnoutError

LATENCY = "max_latency_ms"
COST = "max_cost_usd"
# Past these a value is a mistake (a unit mix-up), not a limit: an hour, a thousand dollars.
CEILINGS = {LATENCY: 3_600_000.0, COST: 1000.0}
T = TypeVar("T")
HEADERS = {LATENCY: "X-Turnout-Max-Latency-Ms", COST: "X-Turnout-Max-Cost-Usd"}
# A limit sent as text: plain decimal digits (no sign, exponent, "inf" or "_"), as /openapi.json says.
DECIMAL = r"^[0-9]{1,10}(\.[0-9]{1,12})?$"
_DECIMAL = re.compile(DECIMAL)


class Constraints(NamedTuple):
    max_latency_ms: float | None = None
    max_cost_usd: float | None = None

    def record(self, skipped: Sequence[Skip]) -> str | None:
        """For the ledger: "max_latency_ms=800 max_cost_usd=0.01 skipped=slow:max_latency_ms"."""
        parts = [f"{LATENCY}={_num(self.max_latency_ms)}"] if self.max_latency_ms is not None else []
        if self.max_cost_usd is not None:
            parts.append(f"{COST}={_num(self.max_cost_usd)}")
        if skipped:
            parts.append("skipped=" + ",".join(f"{s.target}:{s.constraint}" for s in skipped))
        return " ".join(parts) or None


def skipped_in(record: str) -> list[tuple[str, str]]:
    """(target, constraint) for each skip in a ledger record (``Constraints.record``)."""
    for part in record.split():
        if part.startswith("skipped="):
            return [(target, limit) for target, _, limit in (s.rpartition(":") for s in part[8:].split(","))]
    return []


class Skip(NamedTuple):
    """A target left out, the limit it broke and its value there (p95 ms, or worst-case $)."""

    target: str
    constraint: str
    value: float


class ConstraintUnsatisfiable(RequestError):
    status = 422
    code = "constraint_unsatisfiable"
    skipped: Sequence[Skip] = ()  # every allowed target, and why: for the ledger row


class LatencyBudgetSpent(TurnoutError):
    """The caller's ``max_latency_ms`` ran out across attempts: no answer in time."""

    status = 504
    type = "timeout_error"
    code = "max_latency_exceeded"


def value(raw: Any, name: str, param: str) -> float | None:
    """One limit as sent (a header's text or a JSON number); None: not sent. 400 naming
    ``param`` for anything not a finite positive number within its ceiling."""
    if raw is None:
        return None
    if isinstance(raw, bool):
        raw = None  # JSON true is not a number
    elif isinstance(raw, str):
        raw = float(raw) if _DECIMAL.fullmatch(raw) else None  # "$" alone would let "5\n" in
    if not isinstance(raw, int | float) or not math.isfinite(raw) or raw <= 0 or raw > CEILINGS[name]:
        raise RequestError(
            f"'{param}' must be a positive number no larger than {_num(CEILINGS[name])}"
            + (", written as a plain decimal (0.05, not 5e-2)" if param.startswith("X-") else ""),
            param=param,
            code="invalid_value",
        )
    return float(raw)


def parse(headers: Mapping[str, str | None], meta: Mapping[str, Any] | None) -> Constraints | None:
    """The request's constraints from its headers (by lower-case name) and its metadata, the
    header winning; None when it sets none."""
    found: dict[str, float | None] = {}
    for name, header in HEADERS.items():
        sent = headers.get(header.lower())
        if sent is not None:
            found[name] = value(sent, name, header)
        else:
            found[name] = value((meta or {}).get(name), name, f"metadata.{name}")
    if found[LATENCY] is None and found[COST] is None:
        return None
    return Constraints(found[LATENCY], found[COST])


def fit(
    targets: Sequence[str],
    limits: Constraints,
    p95_ms: Callable[[str], float | None],
    worst_usd: Mapping[str, float],
) -> tuple[list[str], list[Skip]]:
    """The targets that fit, in route order, and those skipped. Raises when none fits."""
    kept: list[str] = []
    skipped: list[Skip] = []
    for name in targets:
        p95 = p95_ms(name) if limits.max_latency_ms is not None else None
        worst = worst_usd.get(name, 0.0)
        if p95 is not None and limits.max_latency_ms is not None and p95 > limits.max_latency_ms:
            skipped.append(Skip(name, LATENCY, p95))
        elif limits.max_cost_usd is not None and worst > limits.max_cost_usd:
            skipped.append(Skip(name, COST, worst))
        else:
            kept.append(name)
    if not kept:
        raise unsatisfiable(limits, skipped)
    return kept, skipped


def unsatisfiable(limits: Constraints, skipped: Sequence[Skip]) -> ConstraintUnsatisfiable:
    """Names the limit that left most targets out, and the best any target could do."""
    name = LATENCY if _count(skipped, LATENCY) >= _count(skipped, COST) else COST
    best = min((s.value for s in skipped if s.constraint == name), default=0.0)
    asked = limits.max_latency_ms if name == LATENCY else limits.max_cost_usd
    what = "recent p95 latency" if name == LATENCY else "worst-case cost for this request"
    unit = " ms" if name == LATENCY else " USD"
    err = ConstraintUnsatisfiable(
        f"no target fits {name}={_num(asked or 0.0)}: the lowest {what} among the allowed targets is "
        f"{_num(best)}{unit}",
        param=name,
    )
    err.skipped = tuple(skipped)
    return err


def spent(limits: Constraints) -> LatencyBudgetSpent:
    return LatencyBudgetSpent(f"no answer within {LATENCY}={_num(limits.max_latency_ms or 0.0)}", param=LATENCY)


async def within(limits: Constraints, t0: float, run: Callable[[], Awaitable[T]]) -> T:
    """``run()`` (the attempt loop) under what is left of ``max_latency_ms`` since ``t0``
    (``time.perf_counter()`` at the request's start); 504 when it runs out, before or during."""
    assert limits.max_latency_ms is not None
    left_s = limits.max_latency_ms / 1000 - (time.perf_counter() - t0)
    if left_s <= 0:  # spent before the first attempt (a slow limiter, a long classification)
        raise spent(limits)
    deadline = deadline_at(asyncio.get_running_loop().time() + left_s)
    try:
        async with deadline:
            return await run()
    except TimeoutError as exc:
        if not deadline.expired():
            raise  # not ours
        raise spent(limits) from exc


def _count(skipped: Sequence[Skip], name: str) -> int:
    return sum(1 for s in skipped if s.constraint == name)


def _num(x: float) -> str:
    return f"{x:.6g}"
