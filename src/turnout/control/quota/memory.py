"""Limits and budgets kept in this process: one replica, exact.

The check-then-debit in ``acquire`` has no ``await`` inside, so on the event loop it is atomic.
Each operation is O(1) per scope (amortized): expired slots and reservations sit in a heap and
are dropped lazily when their scope is next touched; a sweep, run after as many operations as
there are entries, forgets full buckets, empty slot sets and budget windows that have ended.

Budget amounts are integer micro-dollars, as in Redis, so both backends agree exactly.
"""

from __future__ import annotations

import heapq
from typing import Any

from turnout.config import LimitsConfig
from turnout.control.quota.base import (
    MICRO_USD,
    Ask,
    Grant,
    LimiterStats,
    Limits,
    Period,
    QuotaExceeded,
    Scope,
    budget_periods,
    budget_usage,
    distinct_scopes,
    to_micro,
)

_SWEEP_MIN = 256  # operations between sweeps, at least


class _Bucket:
    """A token bucket: ``level`` at ``ts``, refilled at capacity/60 per second up to capacity."""

    __slots__ = ("cap", "level", "ts")

    def __init__(self, cap: int, now: float) -> None:
        self.cap = cap
        self.level = float(cap)
        self.ts = now

    def level_at(self, cap: int, now: float) -> float:
        # Never refilled backwards: a clock that steps back mints nothing.
        return min(float(cap), self.level + max(0.0, now - self.ts) * cap / 60)

    def refill(self, cap: int, now: float) -> float:
        self.cap = cap
        self.level = self.level_at(cap, now)
        self.ts = max(self.ts, now)
        return self.level


class _Expiring:
    """Members with an expiry (slots, reservations): a dict for O(1) lookup and a heap for
    purging in expiry order. A member is expired when its expiry <= now."""

    __slots__ = ("heap", "live")

    def __init__(self) -> None:
        self.live: dict[str, tuple[float, int]] = {}  # request id -> (expiry, amount)
        self.heap: list[tuple[float, str]] = []

    def add(self, rid: str, expiry: float, amount: int = 0) -> None:
        self.live[rid] = (expiry, amount)
        heapq.heappush(self.heap, (expiry, rid))

    def remove(self, rid: str) -> int | None:
        """Drop ``rid``; its amount, or None if it was not there (expired or removed already)."""
        entry = self.live.pop(rid, None)
        if entry is None:
            return None
        if not self.live:
            self.heap.clear()
        return entry[1]

    def purge(self, now: float) -> int:
        """Drop the expired members; the sum of their amounts."""
        freed = 0
        heap = self.heap
        while heap and heap[0][0] <= now:
            expiry, rid = heapq.heappop(heap)
            entry = self.live.get(rid)
            if entry is not None and entry[0] == expiry:
                del self.live[rid]
                freed += entry[1]
        return freed


class _Budget:
    """One scope's spending in one window (a UTC day or month)."""

    __slots__ = ("end", "reservations", "reserved", "spent")

    def __init__(self, end: float) -> None:
        self.end = end
        self.spent = 0
        self.reserved = 0
        self.reservations = _Expiring()

    def purge(self, now: float) -> None:
        self.reserved -= self.reservations.purge(now)


class MemoryLimiter:
    """The in-process ``Limiter``; see ``turnout.control.quota.base`` for the semantics."""

    def __init__(self, max_request_s: float = 600.0) -> None:
        self.max_request_s = max_request_s
        self._buckets: dict[tuple[str, str], _Bucket] = {}  # (scope, "rpm" | "tpm")
        self._slots: dict[str, _Expiring] = {}  # scope -> requests holding a slot
        self._budgets: dict[tuple[str, str], _Budget] = {}  # (scope, "usd_per_day:2026-11-28")
        self._clock = float("-inf")  # the latest ``now`` seen; the sweep's idea of the time
        self._ops = 0

    @classmethod
    def from_config(cls, cfg: LimitsConfig) -> MemoryLimiter:
        return cls(cfg.max_request_s)

    # -- the Limiter protocol -------------------------------------------------------------

    async def acquire(self, ask: Ask) -> Grant:
        now = ask.now
        self._tick(now)
        scopes = distinct_scopes(ask.scopes)
        periods = budget_periods(now)
        cost = to_micro(ask.cost_usd)
        for scope in scopes:  # check every scope and limit first ...
            self._check(scope, ask.tokens, cost, periods, now)
        for scope in scopes:  # ... then take from all of them
            self._take(scope, ask, cost, periods, now)
        return Grant(ask)

    async def settle(self, grant: Grant, tokens: int, cost_usd: float) -> None:
        if grant.done:
            return
        grant.done = True
        self._finish(grant.ask, tokens - grant.ask.tokens, to_micro(cost_usd))

    async def release(self, grant: Grant) -> None:
        if grant.done:
            return
        grant.done = True
        self._finish(grant.ask, -grant.ask.tokens, None)

    async def usage(self, scope: Scope, now: float) -> dict[str, Any]:
        limits = scope.limits
        out: dict[str, Any] = {"scope": scope.name}
        for kind, cap in (("rpm", limits.rpm), ("tpm", limits.tpm)):
            if cap is not None:
                bucket = self._buckets.get((scope.name, kind))
                level = float(cap) if bucket is None else bucket.level_at(cap, now)
                out[kind] = {"limit": cap, "available": level}
        if limits.concurrency is not None:
            slots = self._slots.get(scope.name)
            in_use = 0 if slots is None else sum(1 for exp, _ in slots.live.values() if exp > now)
            out["concurrency"] = {"limit": limits.concurrency, "in_use": in_use}
        for period in budget_periods(now):
            budget_usd = _budget_limit(limits, period)
            if budget_usd is not None:
                b = self._budgets.get((scope.name, f"{period.limit}:{period.key}"))
                spent = reserved = 0
                if b is not None:
                    b.purge(now)
                    spent, reserved = b.spent, b.reserved
                out[period.limit] = budget_usage(budget_usd, period, spent, reserved, now)
        return out

    def stats(self) -> LimiterStats:
        return LimiterStats()  # no backend to fail

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        self._buckets.clear()
        self._slots.clear()
        self._budgets.clear()

    # -- steps ----------------------------------------------------------------------------

    def _check(self, scope: Scope, tokens: int, cost: int, periods: tuple[Period, Period], now: float) -> None:
        """Raise QuotaExceeded if ``scope`` lacks room; changes nothing a request could see."""
        name, limits = scope.name, scope.limits
        if limits.rpm is not None:
            level = self._bucket(name, "rpm", limits.rpm, now).refill(limits.rpm, now)
            if level < 1:
                raise QuotaExceeded(name, "rpm", (1 - level) * 60 / limits.rpm)
        if limits.tpm is not None:
            level = self._bucket(name, "tpm", limits.tpm, now).refill(limits.tpm, now)
            if level < tokens:
                raise QuotaExceeded(name, "tpm", (tokens - level) * 60 / limits.tpm)
        if limits.concurrency is not None:
            slots = self._slots.get(name)
            if slots is not None:
                slots.purge(now)
                if len(slots.live) >= limits.concurrency:
                    raise QuotaExceeded(name, "concurrency", 1.0)
            elif limits.concurrency < 1:
                raise QuotaExceeded(name, "concurrency", 1.0)
        for period in periods:
            budget_usd = _budget_limit(limits, period)
            if budget_usd is None:
                continue
            b = self._budgets.get((name, f"{period.limit}:{period.key}"))
            used = 0
            if b is not None:
                b.purge(now)
                used = b.spent + b.reserved
            budget = to_micro(budget_usd)
            if used + cost > budget:
                remaining = max(0, budget - used) / MICRO_USD
                raise QuotaExceeded(name, period.limit, period.end - now, remaining_usd=remaining)

    def _take(self, scope: Scope, ask: Ask, cost: int, periods: tuple[Period, Period], now: float) -> None:
        name, limits = scope.name, scope.limits
        expiry = now + self.max_request_s
        if limits.rpm is not None:
            self._buckets[(name, "rpm")].level -= 1
        if limits.tpm is not None:
            self._buckets[(name, "tpm")].level -= ask.tokens
        if limits.concurrency is not None:
            self._slots.setdefault(name, _Expiring()).add(ask.request_id, expiry)
        for period in periods:
            if _budget_limit(limits, period) is not None:
                key = (name, f"{period.limit}:{period.key}")
                b = self._budgets.get(key)
                if b is None:
                    b = self._budgets[key] = _Budget(period.end)
                b.reserved += cost
                b.reservations.add(ask.request_id, expiry, cost)

    def _finish(self, ask: Ask, tpm_debit: int, real_cost: int | None) -> None:
        """settle (``real_cost`` given) or release: correct TPM by ``tpm_debit``, free the slot,
        drop the reservation and, when settling, charge the real cost to the acquire's windows."""
        periods = budget_periods(ask.now)
        for scope in distinct_scopes(ask.scopes):
            name, limits = scope.name, scope.limits
            if limits.tpm is not None and tpm_debit:
                bucket = self._buckets.get((name, "tpm"))
                if bucket is None:  # swept because it was full; a refund leaves it full
                    if tpm_debit < 0:
                        continue
                    bucket = self._buckets[(name, "tpm")] = _Bucket(limits.tpm, self._clock)
                # Adding then capping commutes with refilling, so no clock is needed here.
                bucket.level = min(float(limits.tpm), bucket.level - tpm_debit)
            if limits.concurrency is not None and (slots := self._slots.get(name)) is not None:
                slots.remove(ask.request_id)
            for period in periods:
                if _budget_limit(limits, period) is None:
                    continue
                b = self._budgets.get((name, f"{period.limit}:{period.key}"))
                if b is None:  # the window ended long ago and was swept
                    continue
                amount = b.reservations.remove(ask.request_id)
                if amount is not None:
                    b.reserved -= amount
                if real_cost is not None:  # charged even if the reservation had expired
                    b.spent += real_cost

    # -- bookkeeping ----------------------------------------------------------------------

    def _bucket(self, scope: str, kind: str, cap: int, now: float) -> _Bucket:
        bucket = self._buckets.get((scope, kind))
        if bucket is None:
            bucket = self._buckets[(scope, kind)] = _Bucket(cap, now)
        return bucket

    def _tick(self, now: float) -> None:
        self._clock = max(self._clock, now)
        self._ops += 1
        if self._ops >= max(_SWEEP_MIN, len(self._buckets) + len(self._slots) + len(self._budgets)):
            self._ops = 0
            self._sweep(self._clock)

    def _sweep(self, now: float) -> None:
        """Forget what no longer matters: full buckets (a missing bucket is a full one), slot
        sets with no live slot, and budget windows whose last reservation has expired."""
        for key in [k for k, b in self._buckets.items() if b.level_at(b.cap, now) >= b.cap]:
            del self._buckets[key]
        for name in list(self._slots):
            slots = self._slots[name]
            slots.purge(now)
            if not slots.live:
                del self._slots[name]
        for key in [k for k, b in self._budgets.items() if b.end + self.max_request_s <= now]:
            del self._budgets[key]


def _budget_limit(limits: Limits, period: Period) -> float | None:
    return limits.usd_per_day if period.limit == "usd_per_day" else limits.usd_per_month
