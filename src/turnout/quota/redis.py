"""Limits and budgets shared by every replica, kept in Redis.

Each ``acquire``, ``settle``, ``release`` and ``usage`` is one EVALSHA of a Lua script
(``turnout.quota.redis_script``, which also draws the key layout): the script checks every
scope and limit and debits only if all pass, so concurrent requests from any number of
replicas never overshoot and a refused request takes nothing.

Time: the caller's ``ask.now`` drives refills and expiries by default (tests pass a fake clock;
NTP keeps replicas within milliseconds, and a bucket is never refilled backwards, so a lagging
clock mints nothing and a leading one at most its skew's worth of tokens). With
``server_time=True`` the scripts read Redis ``TIME`` instead, for fleets whose clocks cannot be
trusted; budget windows (which UTC day and month) still follow the caller's clock.

Redis unreachable (connection refused, timeout): ``backend_errors`` counts it, a warning is
logged at most every ``WARN_EVERY_S``, and ``acquire`` either raises ``BackendUnavailable``
(``on_backend_error="closed"``) or admits with a grant already marked done, so its settle and
release do nothing (``"open"``). A failed settle or release is logged and counted, never
raised: the answer has gone out; the slot and reservation expire after ``max_request_s``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any, Literal

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from turnout.quota import redis_script
from turnout.quota.base import (
    MICRO_USD,
    Ask,
    BackendUnavailable,
    Grant,
    Limits,
    Period,
    QuotaExceeded,
    Scope,
    budget_periods,
    budget_usage,
    distinct_scopes,
    to_micro,
)

log = logging.getLogger("turnout.quota")

WARN_EVERY_S = 10.0
_BUDGET_MARGIN_S = 3600  # budget keys outlive their window by this plus max_request_s
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError)


def _opt(value: float | None) -> float:
    return -1 if value is None else value


class RedisLimiter:
    """The shared ``Limiter``; see ``turnout.quota.base`` for the semantics."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        key_prefix: str = "turnout",
        max_request_s: float = 600.0,
        on_backend_error: Literal["closed", "open"] = "closed",
        *,
        server_time: bool = False,
        socket_timeout: float = 0.5,
        max_connections: int = 32,
        pool_timeout: float = 2.0,
    ) -> None:
        self.key_prefix = key_prefix
        self.max_request_s = max_request_s
        self.on_backend_error = on_backend_error
        self.server_time = server_time
        self.backend_errors = 0
        self._next_warning = 0.0
        # Under a burst a request waits up to pool_timeout for a pooled connection rather than
        # failing when all are busy. One immediate retry on a dropped connection only (a stale pooled
        # socket): a timeout is not retried, since the script may have run.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self.client: Redis = Redis.from_pool(pool)
        self._acquire = self.client.register_script(redis_script.ACQUIRE)
        self._finish = self.client.register_script(redis_script.FINISH)
        self._usage = self.client.register_script(redis_script.USAGE)

    # -- the Limiter protocol -------------------------------------------------------------

    async def acquire(self, ask: Ask) -> Grant:
        scopes = distinct_scopes(ask.scopes)
        day, month = budget_periods(ask.now)
        keys = [k for s in scopes for k in self._keys(s.name, day, month)]
        args: list[str | float] = [
            ask.now,
            int(self.server_time),
            self.max_request_s,
            ask.request_id,
            ask.tokens,
            to_micro(ask.cost_usd),
            math.ceil(self.max_request_s) + 1,
            self._budget_ttl(day, ask.now),
            self._budget_ttl(month, ask.now),
        ]
        for s in scopes:
            lim = s.limits
            args += [_opt(lim.rpm), _opt(lim.tpm), _opt(lim.concurrency), *_budgets_micro(lim)]
        try:
            result = await self._call(self._acquire, keys, args)
        except BackendUnavailable:
            if self.on_backend_error == "open":
                return Grant(ask, done=True)  # admitted blind: nothing to give back later
            raise
        if int(result[0]) == 1:
            return Grant(ask)
        scope, limit = scopes[int(result[1])].name, result[2].decode()
        if limit == "usd_per_day" or limit == "usd_per_month":
            period = day if limit == "usd_per_day" else month
            remaining = float(result[4]) / MICRO_USD
            raise QuotaExceeded(scope, limit, period.end - ask.now, remaining_usd=remaining)
        raise QuotaExceeded(scope, limit, float(result[3]))

    async def settle(self, grant: Grant, tokens: int, cost_usd: float) -> None:
        await self._finish_grant(grant, tokens - grant.ask.tokens, str(to_micro(cost_usd)))

    async def release(self, grant: Grant) -> None:
        await self._finish_grant(grant, -grant.ask.tokens, "")

    async def usage(self, scope: Scope, now: float) -> dict[str, Any]:
        day, month = budget_periods(now)
        lim = scope.limits
        args = [now, int(self.server_time), _opt(lim.rpm), _opt(lim.tpm), _opt(lim.concurrency), *_budgets_micro(lim)]
        raw = [v.decode() for v in await self._call(self._usage, self._keys(scope.name, day, month), args)]
        out: dict[str, Any] = {"scope": scope.name}
        if lim.rpm is not None:
            out["rpm"] = {"limit": lim.rpm, "available": float(raw[0])}
        if lim.tpm is not None:
            out["tpm"] = {"limit": lim.tpm, "available": float(raw[1])}
        if lim.concurrency is not None:
            out["concurrency"] = {"limit": lim.concurrency, "in_use": int(raw[2])}
        if lim.usd_per_day is not None:
            out["usd_per_day"] = budget_usage(lim.usd_per_day, day, int(raw[3]), int(raw[4]), now)
        if lim.usd_per_month is not None:
            out["usd_per_month"] = budget_usage(lim.usd_per_month, month, int(raw[5]), int(raw[6]), now)
        return out

    async def aclose(self) -> None:
        await self.client.aclose()  # and its pool (from_pool hands the pool to the client)

    # -- steps ----------------------------------------------------------------------------

    async def _finish_grant(self, grant: Grant, tpm_debit: int, real_micro: str) -> None:
        if grant.done:
            return
        grant.done = True
        ask = grant.ask
        scopes = distinct_scopes(ask.scopes)
        day, month = budget_periods(ask.now)
        keys = [k for s in scopes for k in self._keys(s.name, day, month)]
        args: list[str | float] = [
            ask.request_id,
            tpm_debit,
            real_micro,
            ask.now,
            self._budget_ttl(day, ask.now),
            self._budget_ttl(month, ask.now),
        ]
        for s in scopes:
            args += [_opt(s.limits.tpm), _opt(s.limits.concurrency), *_budgets_micro(s.limits)]
        # Counted and logged by _call; the slot and reservation expire after max_request_s.
        with contextlib.suppress(BackendUnavailable):
            await self._call(self._finish, keys, args)

    def _keys(self, scope: str, day: Period, month: Period) -> list[str]:
        base = f"{self.key_prefix}:q:{scope}"
        d, m = f"{base}:usd:d:{day.key}", f"{base}:usd:m:{month.key}"
        return [f"{base}:rpm", f"{base}:tpm", f"{base}:slots", d, f"{d}:exp", m, f"{m}:exp"]

    def _budget_ttl(self, period: Period, now: float) -> int:
        return math.ceil(period.end - now + self.max_request_s) + _BUDGET_MARGIN_S

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except _UNREACHABLE as exc:
            self.backend_errors += 1
            now = time.monotonic()
            if now >= self._next_warning:
                self._next_warning = now + WARN_EVERY_S
                log.warning(
                    "quota backend unreachable (%s); failing %s, %d errors so far",
                    exc,
                    self.on_backend_error,
                    self.backend_errors,
                )
            raise BackendUnavailable("the quota backend (Redis) cannot be reached") from exc


def _budgets_micro(limits: Limits) -> tuple[int, int]:
    day, month = limits.usd_per_day, limits.usd_per_month
    return (-1 if day is None else to_micro(day), -1 if month is None else to_micro(month))
