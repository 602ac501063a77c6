"""Limits and budgets kept in this process: one replica, exact.

The check-then-debit in ``acquire`` has no ``await`` inside, so on the event loop it is atomic.
Each scope's state (its buckets, slots in use and budget windows) is one object reached by one
lookup; what an admitted request holds (its slots and reservations) is one record, so settling
it touches only what it took. Held records expire after ``max_request_s`` in order of expiry (a
heap, compacted as records are settled); a sweep, run after as many operations as there are
entries, forgets full buckets, idle scopes and budget windows that have ended.

Budget amounts are integer micro-dollars, as in Redis, so both backends agree exactly.
"""

from __future__ import annotations

import heapq
import itertools
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


class _Budget:
    """One scope's spending in one window (a UTC day or month)."""

    __slots__ = ("end", "reserved", "spent")

    def __init__(self, end: float) -> None:
        self.end = end
        self.spent = 0
        self.reserved = 0


class _State:
    """One scope: its buckets (None: full, or no such limit), the slots in use, its budget
    windows by period key (``2026-11-28``, ``2026-11``)."""

    __slots__ = ("budgets", "in_use", "rpm", "tpm")

    def __init__(self) -> None:
        self.rpm: _Bucket | None = None
        self.tpm: _Bucket | None = None
        self.in_use = 0
        self.budgets: dict[str, _Budget] = {}

    def idle(self) -> bool:
        return self.rpm is None and self.tpm is None and not self.in_use and not self.budgets


class _Held:
    """What one admitted request holds: a slot in ``slots``' scopes, ``cost`` reserved in each
    of ``budgets``, until settled, released or ``expiry``."""

    __slots__ = ("ask", "budgets", "cost", "expiry", "slots")

    def __init__(self, ask: Ask, cost: int, expiry: float) -> None:
        self.ask = ask
        self.cost = cost
        self.expiry = expiry
        self.slots: list[_State] = []
        self.budgets: list[_Budget] = []

    def drop(self) -> None:
        for state in self.slots:
            state.in_use -= 1
        for budget in self.budgets:
            budget.reserved -= self.cost


class MemoryLimiter:
    """The in-process ``Limiter``; see ``turnout.control.quota.base`` for the semantics."""

    def __init__(self, max_request_s: float = 600.0) -> None:
        self.max_request_s = max_request_s
        self._states: dict[str, _State] = {}
        self._held: dict[str, _Held] = {}  # request id -> what it holds
        self._expiry: list[tuple[float, int, _Held]] = []  # a heap; settled records left in it until compacted
        self._seq = itertools.count()
        self._compiled: dict[int, tuple[tuple[Scope, ...], list[_Rule]]] = {}
        self._clock = float("-inf")  # the latest ``now`` seen; the sweep's idea of the time
        self._ops = 0

    @classmethod
    def from_config(cls, cfg: LimitsConfig) -> MemoryLimiter:
        return cls(cfg.max_request_s)

    # -- the Limiter protocol -------------------------------------------------------------

    async def acquire(self, ask: Ask) -> Grant:
        return self.take(ask)

    async def settle(self, grant: Grant, tokens: int, cost_usd: float) -> None:
        self.settle_now(grant, tokens, cost_usd)

    async def release(self, grant: Grant) -> None:
        self.release_now(grant)

    # The same three without a coroutine each: nothing here waits, so the quota gate calls these
    # directly (``QuotaGate``: an exact MemoryLimiter).

    def take(self, ask: Ask) -> Grant:
        """``acquire``. The hot path, inlined: one pass checks every scope, a second takes from all."""
        now = ask.now
        if now > self._clock:
            self._clock = now
        self._ops += 1
        if self._ops >= _SWEEP_MIN and self._ops >= len(self._states) + len(self._held):
            self._ops = 0
            self._sweep(self._clock)
        heap = self._expiry
        if heap and heap[0][0] <= now:
            self._expire(now)
        rules = self._rules(ask.scopes)
        day, month = budget_periods(now)
        cost = round(ask.cost_usd * MICRO_USD)
        tokens = ask.tokens
        states = self._states
        found: list[_State] = []
        for rule in rules:  # check all first ...
            state = states.get(rule.key)
            if state is None:
                state = states[rule.key] = _State()
            if rule.rpm is not None:
                level = _refill(state.rpm, rule.rpm, now) if state.rpm is not None else float(rule.rpm)
                if level < 1:
                    raise QuotaExceeded(rule.name, "rpm", (1 - level) * 60 / rule.rpm)
            if rule.tpm is not None:
                level = _refill(state.tpm, rule.tpm, now) if state.tpm is not None else float(rule.tpm)
                if level < tokens:
                    raise QuotaExceeded(rule.name, "tpm", (tokens - level) * 60 / rule.tpm)
            if rule.concurrency is not None and state.in_use >= rule.concurrency:
                raise QuotaExceeded(rule.name, "concurrency", 1.0)
            if rule.day is not None:
                _check_budget(rule.name, rule.day, state.budgets.get(day.key), cost, day, now)
            if rule.month is not None:
                _check_budget(rule.name, rule.month, state.budgets.get(month.key), cost, month, now)
            found.append(state)
        held = _Held(ask, cost, now + self.max_request_s)
        for rule, state in zip(rules, found, strict=True):  # ... then take from all of them
            if rule.rpm is not None:
                if state.rpm is None:
                    state.rpm = _Bucket(rule.rpm, now)
                state.rpm.level -= 1
            if rule.tpm is not None:
                if state.tpm is None:
                    state.tpm = _Bucket(rule.tpm, now)
                state.tpm.level -= tokens
            if rule.concurrency is not None:
                state.in_use += 1
                held.slots.append(state)
            if rule.day is not None:
                held.budgets.append(_reserve(state, day, cost))
            if rule.month is not None:
                held.budgets.append(_reserve(state, month, cost))
        if held.slots or held.budgets:  # buckets alone hold nothing to give back
            self._hold(held)
        return Grant(ask)

    def settle_now(self, grant: Grant, tokens: int, cost_usd: float) -> None:
        if grant.done:
            return
        grant.done = True
        self._finish(grant.ask, tokens - grant.ask.tokens, round(cost_usd * MICRO_USD))

    def release_now(self, grant: Grant) -> None:
        if grant.done:
            return
        grant.done = True
        self._finish(grant.ask, -grant.ask.tokens, None)

    # -- the rest of the protocol ---------------------------------------------------------

    async def usage(self, scope: Scope, now: float) -> dict[str, Any]:
        """What ``scope`` has left at ``now`` (read only: expiry is judged at ``now``)."""
        limits, state = scope.limits, self._states.get(scope.ident)
        live = [h for h in self._held.values() if h.expiry > now]
        out: dict[str, Any] = {"scope": scope.name}
        for kind, cap in (("rpm", limits.rpm), ("tpm", limits.tpm)):
            if cap is not None:
                bucket = None if state is None else (state.rpm if kind == "rpm" else state.tpm)
                level = float(cap) if bucket is None else bucket.level_at(cap, now)
                out[kind] = {"limit": cap, "available": level}
        if limits.concurrency is not None:
            in_use = 0 if state is None else sum(1 for h in live if state in h.slots)
            out["concurrency"] = {"limit": limits.concurrency, "in_use": in_use}
        for period in budget_periods(now):
            budget_usd = _budget_limit(limits, period)
            if budget_usd is not None:
                b = None if state is None else state.budgets.get(period.key)
                spent = reserved = 0
                if b is not None:
                    spent, reserved = b.spent, sum(h.cost for h in live if b in h.budgets)
                out[period.limit] = budget_usage(budget_usd, period, spent, reserved, now)
        return out

    def stats(self) -> LimiterStats:
        return LimiterStats()  # no backend to fail

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        self._states.clear()
        self._held.clear()
        self._expiry.clear()

    # -- steps ----------------------------------------------------------------------------

    def _finish(self, ask: Ask, tpm_debit: int, real_cost: int | None) -> None:
        """settle (``real_cost`` given) or release: correct TPM by ``tpm_debit``, free the slots,
        drop the reservations and, when settling, charge the real cost to the acquire's windows."""
        held = self._held.get(ask.request_id)
        if held is not None and held.ask is ask:
            del self._held[ask.request_id]
            held.drop()
            if real_cost is not None:
                for b in held.budgets:
                    b.spent += real_cost
        elif real_cost is not None:  # expired: charged all the same, to the windows still known
            self._charge_late(ask, real_cost)
        if tpm_debit:
            for rule in self._rules(ask.scopes):
                if rule.tpm is not None:
                    self._correct_tpm(rule.key, rule.tpm, tpm_debit)

    def _charge_late(self, ask: Ask, real_cost: int) -> None:
        periods = budget_periods(ask.now)
        for rule in self._rules(ask.scopes):
            state = self._states.get(rule.key)
            if state is None:
                continue
            for period in periods:
                if _budget_limit(rule.limits, period) is not None and (b := state.budgets.get(period.key)):
                    b.spent += real_cost

    def _correct_tpm(self, name: str, cap: int, debit: int) -> None:
        state = self._states.get(name)
        bucket = None if state is None else state.tpm
        if bucket is None:  # swept because it was full; a refund leaves it full
            if debit < 0:
                return
            if state is None:
                state = self._states[name] = _State()
            bucket = state.tpm = _Bucket(cap, self._clock)
        # Adding then capping commutes with refilling, so no clock is needed here.
        bucket.level = min(float(cap), bucket.level - debit)

    # -- bookkeeping ----------------------------------------------------------------------

    def _rules(self, scopes: tuple[Scope, ...]) -> list[_Rule]:
        """Each scope once, as a rule; the gate passes the same tuple for a tenant × task every
        time, so this is one lookup."""
        found = self._compiled.get(id(scopes))
        if found is not None and found[0] is scopes:
            return found[1]
        rules = [_Rule(scope) for scope in distinct_scopes(scopes)]
        if len(self._compiled) > 4096:
            self._compiled.clear()
        self._compiled[id(scopes)] = (scopes, rules)
        return rules

    def _hold(self, held: _Held) -> None:
        rid = held.ask.request_id
        old = self._held.get(rid)
        if old is not None:  # the same id admitted twice: the first gives back what it held
            old.drop()
        self._held[rid] = held
        heap = self._expiry
        heapq.heappush(heap, (held.expiry, next(self._seq), held))
        if len(heap) > 2 * len(self._held) + 64:  # mostly settled records: keep only the live
            self._expiry = [e for e in heap if self._held.get(e[2].ask.request_id) is e[2]]
            heapq.heapify(self._expiry)

    def _expire(self, now: float) -> None:
        """Drop what requests past ``max_request_s`` still hold (the in-flight bound)."""
        heap = self._expiry
        while heap and heap[0][0] <= now:
            held = heapq.heappop(heap)[2]
            rid = held.ask.request_id
            if self._held.get(rid) is held:
                del self._held[rid]
                held.drop()

    def _sweep(self, now: float) -> None:
        """Forget what no longer matters: full buckets (a missing bucket is a full one), budget
        windows whose last reservation has expired, and scopes left with nothing."""
        self._expire(now)
        for name in list(self._states):
            state = self._states[name]
            if state.rpm is not None and state.rpm.level_at(state.rpm.cap, now) >= state.rpm.cap:
                state.rpm = None
            if state.tpm is not None and state.tpm.level_at(state.tpm.cap, now) >= state.tpm.cap:
                state.tpm = None
            for key in [k for k, b in state.budgets.items() if b.end + self.max_request_s <= now]:
                del state.budgets[key]
            if state.idle():
                del self._states[name]


class _Rule:
    """A scope's limits as the hot path reads them: budgets already in micro-dollars."""

    __slots__ = ("concurrency", "day", "key", "limits", "month", "name", "rpm", "tpm")

    def __init__(self, scope: Scope) -> None:
        limits = self.limits = scope.limits
        self.name = scope.name  # for messages
        self.key = scope.ident  # for the state
        self.rpm, self.tpm, self.concurrency = limits.rpm, limits.tpm, limits.concurrency
        self.day = None if limits.usd_per_day is None else to_micro(limits.usd_per_day)
        self.month = None if limits.usd_per_month is None else to_micro(limits.usd_per_month)


def _check_budget(name: str, budget: int, window: _Budget | None, cost: int, period: Period, now: float) -> None:
    used = 0 if window is None else window.spent + window.reserved
    if used + cost > budget:
        remaining = max(0, budget - used) / MICRO_USD
        raise QuotaExceeded(name, period.limit, period.end - now, remaining_usd=remaining)


def _reserve(state: _State, period: Period, cost: int) -> _Budget:
    window = state.budgets.get(period.key)
    if window is None:
        window = state.budgets[period.key] = _Budget(period.end)
    window.reserved += cost
    return window


def _refill(bucket: _Bucket, cap: int, now: float) -> float:
    """``bucket.refill`` inlined for the hot path: the level at ``now``, stored."""
    level = bucket.level
    if now > bucket.ts:
        level += (now - bucket.ts) * cap / 60
        bucket.ts = now
    bucket.cap = cap
    bucket.level = level = min(level, float(cap))
    return level


def _budget_limit(limits: Limits, period: Period) -> float | None:
    return limits.usd_per_day if period.limit == "usd_per_day" else limits.usd_per_month
