"""What only the Redis limiter has to prove: one round trip per call, a TTL on every key, no
overshoot when many tasks and two replicas race for one budget, Redis ``TIME`` when asked, and
the configured behaviour when Redis cannot be reached. Runs against 127.0.0.1:6379 with a fresh
key prefix per test, deleted afterwards."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

pytest.importorskip("redis")

from tests.test_quota_contract import (
    DAY_END,
    MONTH_END,
    REDIS_URL,
    T0,
    drop_prefix,
    needs_redis,
    unique_prefix,
)
from turnout.quota.base import Ask, BackendUnavailable, Grant, Limits, QuotaExceeded, Scope
from turnout.quota.redis import RedisLimiter

pytestmark = needs_redis

MAX_REQ = 300.0
EVERYTHING = Limits(rpm=100, tpm=100_000, concurrency=10, usd_per_day=10.0, usd_per_month=100.0)
TENANT = Scope("acme", EVERYTHING)
TASK = Scope("acme/support-reply", EVERYTHING)

LimiterFactory = Callable[..., RedisLimiter]


@pytest.fixture
async def make_limiter() -> AsyncIterator[LimiterFactory]:
    """RedisLimiters sharing one fresh prefix (several make "replicas"); keys dropped after."""
    prefix = unique_prefix()
    made: list[RedisLimiter] = []

    def factory(**opts: Any) -> RedisLimiter:
        opts = {"url": REDIS_URL, "key_prefix": prefix, "max_request_s": MAX_REQ, **opts}
        made.append(RedisLimiter(**opts))
        return made[-1]

    yield factory
    if made:
        await drop_prefix(made[0])
    for limiter in made:
        await limiter.aclose()


def ask(n: int, *scopes: Scope, now: float = T0, tokens: int = 100, cost: float = 0.1) -> Ask:
    return Ask(f"req-{n}", scopes or (TENANT, TASK), tokens, cost, now)


def count_commands(limiter: RedisLimiter) -> list[str]:
    """Record every command the limiter's client sends (one entry per round trip)."""
    sent: list[str] = []
    real: Callable[..., Awaitable[Any]] = limiter.client.execute_command

    async def counting(*args: Any, **options: Any) -> Any:
        sent.append(str(args[0]))
        return await real(*args, **options)

    limiter.client.execute_command = counting  # type: ignore[method-assign]
    return sent


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- round trips ---------------------------------------------------------------------------------


async def test_each_call_is_one_round_trip(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter()
    await limiter.release(await limiter.acquire(ask(0)))  # loads the scripts if Redis lacks them
    await limiter.usage(TENANT, T0)
    sent = count_commands(limiter)
    grant = await limiter.acquire(ask(1))
    assert sent == ["EVALSHA"]
    await limiter.settle(grant, 50, 0.05)
    assert sent == ["EVALSHA"] * 2
    await limiter.release(await limiter.acquire(ask(2)))
    assert sent == ["EVALSHA"] * 4
    with pytest.raises(QuotaExceeded):
        await limiter.acquire(ask(3, cost=1000.0))
    assert sent == ["EVALSHA"] * 5
    await limiter.usage(TASK, T0)
    assert sent == ["EVALSHA"] * 6
    await limiter.settle(grant, 50, 0.05)  # a repeat does not even reach Redis
    assert len(sent) == 6


async def test_a_script_flushed_from_redis_is_loaded_again(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter()
    limiter._acquire.sha = "0" * 40  # as if Redis had restarted without its script cache
    sent = count_commands(limiter)
    await limiter.acquire(ask(1))
    assert sent == ["EVALSHA", "SCRIPT LOAD", "EVALSHA"]
    await limiter.acquire(ask(2))
    assert sent[3:] == ["EVALSHA"]


# -- keys and TTLs ---------------------------------------------------------------------------------


async def test_every_key_expires(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter()
    await limiter.settle(await limiter.acquire(ask(1)), 500, 0.05)
    await limiter.acquire(ask(2))  # still open: its slot and reservation stay
    await limiter.release(await limiter.acquire(ask(3)))
    r = limiter.client
    p = limiter.key_prefix
    keys = sorted([k.decode() async for k in r.scan_iter(match=f"{p}:*")])
    expected = []
    for scope in ("acme", "acme/support-reply"):
        base = f"{p}:q:{scope}"
        expected += [f"{base}:rpm", f"{base}:tpm", f"{base}:slots"]
        for window in ("usd:d:2026-03-14", "usd:m:2026-03"):
            expected += [f"{base}:{window}", f"{base}:{window}:exp"]
    assert keys == sorted(expected)
    for key in keys:
        ttl = await r.ttl(key)
        assert ttl > 0, key
        if key.endswith(("rpm", "tpm")):
            assert ttl <= 180
        elif key.endswith("slots"):
            assert ttl <= math.ceil(MAX_REQ) + 1
        elif ":usd:d:" in key:
            assert DAY_END - T0 < ttl <= DAY_END - T0 + MAX_REQ + 3601
        else:
            assert MONTH_END - T0 < ttl <= MONTH_END - T0 + MAX_REQ + 3601


async def test_budget_hash_layout_in_micro_dollars(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter()
    a = await limiter.acquire(ask(1, TENANT, cost=0.25))
    await limiter.acquire(ask(2, TENANT, cost=0.125))
    await limiter.settle(a, 0, 0.2)
    day = f"{limiter.key_prefix}:q:acme:usd:d:2026-03-14"
    assert await limiter.client.hgetall(day) == {b"spent": b"200000", b"reserved": b"125000", b"r:req-2": b"125000"}
    assert await limiter.client.zrange(f"{day}:exp", 0, -1, withscores=True) == [(b"req-2", T0 + MAX_REQ)]
    await limiter.acquire(ask(3, TENANT, cost=0.0, now=T0 + MAX_REQ))  # purges the expired reservation
    assert await limiter.client.hgetall(day) == {b"spent": b"200000", b"reserved": b"0", b"r:req-3": b"0"}


async def test_a_late_settle_after_the_budget_key_expired_still_sets_a_ttl(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter()
    grant = await limiter.acquire(ask(1, TENANT))
    day = f"{limiter.key_prefix}:q:acme:usd:d:2026-03-14"
    await limiter.client.delete(day, f"{day}:exp")  # as if both had expired
    await limiter.settle(grant, 100, 0.05)
    assert await limiter.client.hget(day, "spent") == b"50000"
    assert await limiter.client.ttl(day) > 0


# -- races -------------------------------------------------------------------------------------------


async def test_two_replicas_racing_for_one_budget_admit_exactly_what_fits(make_limiter: LimiterFactory) -> None:
    replicas = [make_limiter(), make_limiter()]
    budget = Scope("acme", Limits(usd_per_day=1.0))  # 50 worst cases of $0.02
    asks = [ask(n, budget, cost=0.02) for n in range(200)]
    results = await asyncio.gather(*(replicas[n % 2].acquire(a) for n, a in enumerate(asks)), return_exceptions=True)
    grants = [g for g in results if isinstance(g, Grant)]
    refusals = [e for e in results if isinstance(e, QuotaExceeded)]
    assert (len(grants), len(refusals)) == (50, 150)
    assert {(e.limit, e.remaining_usd) for e in refusals} == {("usd_per_day", 0.0)}
    assert (await replicas[0].usage(budget, T0))["usd_per_day"]["reserved"] == 1.0
    await asyncio.gather(*(replicas[n % 2].settle(g, 10, 0.01) for n, g in enumerate(grants)))
    day = (await replicas[1].usage(budget, T0))["usd_per_day"]
    assert (day["spent"], day["reserved"], day["remaining"]) == (0.5, 0.0, 0.5)


async def test_racing_tasks_never_overshoot_slots_or_buckets(make_limiter: LimiterFactory) -> None:
    replicas = [make_limiter(), make_limiter()]
    tenant = Scope("acme", Limits(rpm=30))
    task = Scope("acme/chat", Limits(concurrency=7))
    results = await asyncio.gather(
        *(replicas[n % 2].acquire(ask(n, tenant, task)) for n in range(200)), return_exceptions=True
    )
    admitted = [g for g in results if isinstance(g, Grant)]
    assert len(admitted) == 7
    assert {e.limit for e in results if isinstance(e, QuotaExceeded)} == {"concurrency"}
    assert (await replicas[0].usage(tenant, T0))["rpm"]["available"] == pytest.approx(23.0)
    await asyncio.gather(*(replicas[1].release(g) for g in admitted))
    results = await asyncio.gather(
        *(replicas[n % 2].acquire(ask(1000 + n, tenant)) for n in range(200)), return_exceptions=True
    )
    assert sum(isinstance(g, Grant) for g in results) == 23


# -- time -------------------------------------------------------------------------------------------


async def test_server_time_ignores_the_callers_clock(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter(server_time=True)
    s = Scope("acme", Limits(rpm=2, concurrency=5))
    await limiter.acquire(ask(1, s, now=T0))
    await limiter.acquire(ask(2, s, now=T0 + 3600))  # a replica an hour ahead mints nothing
    refusal = await _refusal(limiter.acquire(ask(3, s, now=T0 + 7200)))
    assert refusal.limit == "rpm"
    assert 0 < refusal.retry_after <= 30
    # slots are scored by Redis time too: not expired, whatever the caller's clock says
    assert (await limiter.usage(s, T0 + 10 * MAX_REQ))["concurrency"]["in_use"] == 2


async def _refusal(call: Any) -> QuotaExceeded:
    with pytest.raises(QuotaExceeded) as info:
        await call
    return info.value


# -- Redis unreachable ----------------------------------------------------------------------------


async def test_unreachable_redis_fails_closed(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RedisLimiter(f"redis://127.0.0.1:{closed_port()}/0", "t", MAX_REQ, "closed")
    try:
        with caplog.at_level(logging.WARNING, logger="turnout.quota"):
            for n in range(3):
                with pytest.raises(BackendUnavailable) as info:
                    await limiter.acquire(ask(n))
                assert (info.value.status, info.value.code) == (503, "quota_backend_unavailable")
            with pytest.raises(BackendUnavailable):
                await limiter.usage(TENANT, T0)
            await limiter.settle(Grant(ask(9)), 10, 0.01)  # after the answer: logged, not raised
        assert limiter.backend_errors == 5
        warnings = [r for r in caplog.records if r.name == "turnout.quota"]
        assert len(warnings) == 1  # rate-limited
        assert "unreachable" in warnings[0].getMessage()
    finally:
        await limiter.aclose()


async def test_unreachable_redis_fails_open() -> None:
    limiter = RedisLimiter(f"redis://127.0.0.1:{closed_port()}/0", "t", MAX_REQ, "open")
    try:
        grant = await limiter.acquire(ask(1))
        assert grant.done  # admitted blind: settle and release have nothing to give back
        await limiter.settle(grant, 10, 0.01)
        await limiter.release(grant)
        await limiter.acquire(ask(2))
        assert limiter.backend_errors == 2
    finally:
        await limiter.aclose()
