"""Replicas that close or die: what the Redis limiter does with the slots and reservations they
held. Each limiter is a replica with a heartbeat key; closing deletes the key, a crash lets it
expire; either way the others drop that replica's members when a limit would refuse because of
them, or when usage is read. A live replica keeps what it holds. Runs against 127.0.0.1:6379,
a fresh key prefix per test, deleted afterwards."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

pytest.importorskip("redis")

from pydantic import ValidationError

from tests.test_quota_contract import REDIS_URL, T0, drop_prefix, needs_redis, unique_prefix
from tests.test_quota_redis import closed_port
from turnout.config import LimitsConfig
from turnout.control.quota.base import Ask, Grant, Limits, QuotaExceeded, Scope
from turnout.control.quota.redis import RedisLimiter

pytestmark = needs_redis

MAX_REQ = 600.0  # far longer than any test: nothing here is freed by expiry
THREE = Scope("acme", Limits(concurrency=3))
BUDGET = Scope("acme", Limits(usd_per_day=1.0))
TENANT = Scope("acme", Limits(rpm=1000, concurrency=3, usd_per_day=1.0, usd_per_month=10.0))
TASK = Scope("acme/chat", Limits(concurrency=2, usd_per_day=0.5))

Factory = Callable[..., RedisLimiter]


@pytest.fixture
async def replica() -> AsyncIterator[Factory]:
    """Replicas sharing one fresh prefix; closed, and their keys dropped, afterwards."""
    prefix = unique_prefix()
    made: list[RedisLimiter] = []

    def factory(**opts: Any) -> RedisLimiter:
        made.append(RedisLimiter(REDIS_URL, prefix, MAX_REQ, **opts))
        return made[-1]

    yield factory
    for limiter in made:
        await limiter.aclose()
    if made:
        cleaner = RedisLimiter(REDIS_URL, prefix, MAX_REQ)
        await drop_prefix(cleaner)
        await cleaner.aclose()


class Asks:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, *scopes: Scope, cost: float = 0.1, now: float = T0) -> Ask:
        self.n += 1
        return Ask(f"req-{self.n}", scopes or (THREE,), 10, cost, now)


async def refusal(limiter: RedisLimiter, ask: Ask) -> QuotaExceeded:
    with pytest.raises(QuotaExceeded) as info:
        await limiter.acquire(ask)
    return info.value


async def crash(limiter: RedisLimiter) -> None:
    """As if the replica were killed: it stops beating, and its heartbeat key is gone (what
    expiry does a few seconds after a SIGKILL); it neither settles nor closes."""
    assert limiter._heartbeat is not None
    await limiter._heartbeat.aclose()
    await limiter.client.delete(limiter.heartbeat_key)


async def eventually(check: Callable[[], Any], deadline_s: float = 20.0) -> None:
    """Poll an async check until it returns true (the deadline only stops a broken test)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not await check():
        assert loop.time() < end, "condition never held"
        await asyncio.sleep(0.05)


def admits(limiter: RedisLimiter, asks: Asks, *scopes: Scope, cost: float = 0.1) -> Callable[[], Any]:
    """A check for ``eventually``: one more request is admitted."""

    async def check() -> bool:
        try:
            await limiter.acquire(asks(*scopes, cost=cost))
        except QuotaExceeded:
            return False
        return True

    return check


# -- the heartbeat --------------------------------------------------------------------------------


async def test_the_first_acquire_starts_a_heartbeat_that_stays_alive(replica: Factory) -> None:
    a = replica(heartbeat_ttl_s=0.5)
    r = a.client
    assert not await r.exists(a.heartbeat_key)  # nothing held, nothing to vouch for
    await a.acquire(Asks()())
    assert 0 < await r.pttl(a.heartbeat_key) <= 500
    beat = await r.get(a.heartbeat_key)
    assert isinstance(beat, bytes) and beat.endswith(f" {os.getpid()}".encode())  # host and pid
    await asyncio.sleep(2.0)  # four TTLs: only the beats keep it
    assert await r.exists(a.heartbeat_key)
    await a.aclose()
    assert not await r.exists(a.heartbeat_key)


async def test_a_heartbeat_key_lost_while_alive_comes_back(replica: Factory) -> None:
    a = replica(heartbeat_ttl_s=0.5)
    await a.acquire(Asks()())
    await a.client.delete(a.heartbeat_key)  # Redis restarted, or someone deleted it
    await eventually(lambda: a.client.exists(a.heartbeat_key))


async def test_an_unreachable_redis_fails_heartbeats_quietly(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RedisLimiter(f"redis://127.0.0.1:{closed_port()}/0", "t", MAX_REQ, "open", heartbeat_ttl_s=0.5)
    try:
        with caplog.at_level(logging.WARNING):
            await limiter.acquire(Asks()())
            await asyncio.sleep(0.6)  # several beats, each failing
        assert limiter.stats().backend_errors == 1  # the acquire, not the beats
        assert [r.getMessage() for r in caplog.records if "heartbeat" in r.getMessage()] == []
    finally:
        await limiter.aclose()


def test_the_heartbeat_ttl_is_configured_and_checked() -> None:
    assert LimitsConfig().heartbeat_ttl_s == 5.0
    limiter = RedisLimiter.from_config(LimitsConfig(backend="redis", heartbeat_ttl_s=2.5))
    assert limiter.heartbeat_ttl_s == 2.5
    for bad in (0, -1, 0.1):
        with pytest.raises(ValidationError):
            LimitsConfig(heartbeat_ttl_s=bad)
    with pytest.raises(ValueError, match="heartbeat_ttl_s"):
        RedisLimiter(REDIS_URL, "t", MAX_REQ, heartbeat_ttl_s=0)


# -- live, closed and dead replicas ----------------------------------------------------------------


async def test_a_live_replica_keeps_its_slots(replica: Factory) -> None:
    a, b = replica(heartbeat_ttl_s=0.5), replica(heartbeat_ttl_s=0.5)
    asks = Asks()
    for _ in range(3):
        await a.acquire(asks())
    await asyncio.sleep(1.5)  # three TTLs: the beats keep A alive
    assert (await refusal(b, asks())).limit == "concurrency"
    assert (await b.usage(THREE, T0))["concurrency"]["in_use"] == 3


async def test_a_closed_replica_frees_what_it_never_released(replica: Factory) -> None:
    a, b = replica(), replica()
    asks = Asks()
    for _ in range(3):  # never settled: as if cut by a shutdown whose releases were lost
        await a.acquire(asks(TENANT, cost=0.3))
    assert (await refusal(b, asks(TENANT, cost=0.3))).limit == "concurrency"
    await a.aclose()
    assert not await b.client.exists(a.heartbeat_key)
    await eventually(admits(b, asks, TENANT, cost=0.3))  # at B's next sweep: within a fifth of its TTL
    for _ in range(2):
        await b.acquire(asks(TENANT, cost=0.3))
    usage = await b.usage(TENANT, T0)
    assert usage["concurrency"]["in_use"] == 3
    assert (usage["usd_per_day"]["reserved"], usage["usd_per_day"]["spent"]) == (pytest.approx(0.9), 0.0)


async def test_a_crashed_replicas_slots_are_freed_once_its_heartbeat_expires(replica: Factory) -> None:
    a, b = replica(heartbeat_ttl_s=0.5), replica(heartbeat_ttl_s=0.5)
    asks = Asks()
    for _ in range(3):
        await a.acquire(asks())
    assert a._heartbeat is not None
    await a._heartbeat.aclose()  # killed: no more beats, no settle, no close
    assert (await refusal(b, asks())).limit == "concurrency"  # its key has not expired yet

    await eventually(admits(b, asks))  # the key expires within 0.5 s; B sweeps at most every 0.1 s
    assert not await b.client.exists(a.heartbeat_key)
    await b.acquire(asks())
    await b.acquire(asks())
    assert (await refusal(b, asks())).limit == "concurrency"  # B's own three now
    assert (await b.usage(THREE, T0))["concurrency"]["in_use"] == 3


async def test_a_dead_replicas_reservations_are_given_back_not_charged(replica: Factory) -> None:
    a, b = replica(), replica()
    asks = Asks()
    await a.acquire(asks(BUDGET, cost=0.8))
    refused = await refusal(b, asks(BUDGET, cost=0.5))
    assert refused.limit == "usd_per_day"
    assert refused.remaining_usd == pytest.approx(0.2)
    await crash(a)
    await b.client.delete(*[k async for k in b.client.scan_iter(match=f"{b.key_prefix}:*:swept")])
    await b.acquire(asks(BUDGET, cost=0.5))
    day = (await b.usage(BUDGET, T0))["usd_per_day"]
    assert (day["spent"], day["reserved"], day["remaining"]) == (0.0, 0.5, 0.5)


async def test_usage_drops_dead_members_in_every_scope(replica: Factory) -> None:
    a, b = replica(), replica()
    asks = Asks()
    await a.acquire(asks(TENANT, TASK, cost=0.2))
    await a.acquire(asks(TENANT, TASK, cost=0.2))
    await b.acquire(asks(TENANT, cost=0.1))
    before = await b.usage(TENANT, T0)
    assert (before["concurrency"]["in_use"], before["usd_per_month"]["reserved"]) == (3, pytest.approx(0.5))
    await crash(a)
    tenant, task = await b.usage(TENANT, T0), await b.usage(TASK, T0)
    assert tenant["concurrency"]["in_use"] == 1  # B's own is still there
    for window in ("usd_per_day", "usd_per_month"):
        assert (tenant[window]["reserved"], tenant[window]["spent"]) == (pytest.approx(0.1), 0.0)
    assert task["concurrency"]["in_use"] == 0
    assert task["usd_per_day"]["reserved"] == 0.0
    day = f"{b.key_prefix}:q:acme:usd:d:2026-03-14"
    held = {k for k in await b.client.hkeys(day) if isinstance(k, bytes) and k.startswith(b"r:")}
    assert held == {f"r:{b.replica}/req-3".encode()}


async def test_sweeps_of_a_full_limit_are_rate_limited(replica: Factory) -> None:
    """A tenant hammering a full limit does not make every refusal scan the set: one sweep per
    interval (a fifth of the TTL) per zset."""
    a, b = replica(), replica(heartbeat_ttl_s=60.0)  # B sweeps at most every 12 s
    asks = Asks()
    for _ in range(3):
        await a.acquire(asks())
    await refusal(b, asks())  # swept: A is alive
    await crash(a)
    assert (await refusal(b, asks())).limit == "concurrency"  # no second sweep so soon
    slots = f"{b.key_prefix}:q:acme:slots"
    assert 0 < await b.client.pttl(f"{slots}:swept") <= 12_000
    await b.client.delete(f"{slots}:swept")  # as if the interval had passed
    await b.acquire(asks())


async def test_admitting_below_the_limits_never_sweeps(replica: Factory) -> None:
    a = replica()
    asks = Asks()
    for _ in range(3):
        await a.release(await a.acquire(asks(TENANT, TASK, cost=0.1)))
    await a.flush()
    assert [k async for k in a.client.scan_iter(match=f"{a.key_prefix}:*:swept")] == []


async def test_a_replica_taken_for_dead_still_settles_what_it_served(replica: Factory) -> None:
    """A replica cut off from Redis past its TTL looks dead; when it comes back, its settle
    charges the real cost once and leaves no negative reservation behind."""
    a, b = replica(), replica()
    asks = Asks()
    grant = await a.acquire(asks(TENANT, cost=0.25))
    await crash(a)
    assert (await b.usage(TENANT, T0))["usd_per_day"]["reserved"] == 0.0  # swept
    await a.settle(grant, 20, 0.2)
    await a.flush()
    usage = await b.usage(TENANT, T0)
    assert usage["concurrency"]["in_use"] == 0
    for window in ("usd_per_day", "usd_per_month"):
        assert (usage[window]["spent"], usage[window]["reserved"]) == (pytest.approx(0.2), 0.0)


async def test_members_written_before_replicas_were_tagged_only_expire(replica: Factory) -> None:
    b = replica()
    one = Scope("acme", Limits(concurrency=1))
    await b.client.zadd(f"{b.key_prefix}:q:acme:slots", {"0195f3a1c2d4e5f6a7b8c9d0": T0 + MAX_REQ})
    assert (await refusal(b, Asks()(one))).limit == "concurrency"
    assert (await b.usage(one, T0))["concurrency"]["in_use"] == 1
    await b.acquire(Asks()(one, now=T0 + MAX_REQ))


async def test_a_grant_is_settled_as_its_own_replicas_wherever_it_is_settled(replica: Factory) -> None:
    a, b = replica(), replica()
    grant = await a.acquire(Asks()(TENANT, cost=0.5))
    assert isinstance(grant, Grant) and grant.holder == a.replica
    await b.settle(grant, 10, 0.25)
    await b.flush()
    usage = await a.usage(TENANT, T0)
    assert (usage["concurrency"]["in_use"], usage["usd_per_day"]["reserved"]) == (0, 0.0)
    assert usage["usd_per_day"]["spent"] == pytest.approx(0.25)
