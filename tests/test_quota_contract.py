"""One contract for every Limiter backend: in-process and Redis (127.0.0.1:6379, a fresh key
prefix per test, deleted afterwards). Every call passes its own ``now``: nothing here reads
the wall clock. A new backend joins by adding its name to BACKENDS."""

from __future__ import annotations

import socket
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from turnout.config import Config, LimitsConfig
from turnout.control.quota.base import Ask, Limiter, LimiterStats, Limits, QuotaExceeded, Scope
from turnout.control.quota.factory import open_limiter
from turnout.control.quota.memory import MemoryLimiter
from turnout.control.quota.plan import scopes
from turnout.errors import ConfigError

BACKENDS = ["memory", "redis"]
REDIS_URL = "redis://127.0.0.1:6379/0"
MAX_REQ = 300.0
T0 = datetime(2026, 3, 14, 12, 0, tzinfo=UTC).timestamp()  # a Saturday noon, mid-month
DAY_END = datetime(2026, 3, 15, tzinfo=UTC).timestamp()
MONTH_END = datetime(2026, 4, 1, tzinfo=UTC).timestamp()


def redis_reachable() -> bool:
    try:
        import redis  # noqa: F401
    except ImportError:
        return False
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


needs_redis = pytest.mark.skipif(not redis_reachable(), reason="no Redis at 127.0.0.1:6379")


def unique_prefix() -> str:
    return f"turnout-test-{uuid.uuid4().hex[:12]}"


async def drop_prefix(limiter: Any) -> None:
    """Delete every key under the limiter's prefix (tests share one Redis)."""
    keys = [k async for k in limiter.client.scan_iter(match=f"{limiter.key_prefix}:*", count=500)]
    if keys:
        await limiter.client.delete(*keys)


@pytest.fixture(params=BACKENDS)
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[Limiter]:
    if request.param == "memory":
        mem = MemoryLimiter(MAX_REQ)
        yield mem
        await mem.aclose()
        return
    if not redis_reachable():
        pytest.skip("no Redis at 127.0.0.1:6379")
    from turnout.control.quota.redis import RedisLimiter

    red = RedisLimiter(REDIS_URL, unique_prefix(), MAX_REQ)
    try:
        yield red
    finally:
        await drop_prefix(red)
        await red.aclose()


class Asks:
    """Builds asks with unique request ids."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, *scopes: Scope, now: float = T0, tokens: int = 0, cost: float = 0.0) -> Ask:
        self.n += 1
        return Ask(f"req-{self.n}", scopes, tokens, cost, now)


@pytest.fixture
def ask() -> Asks:
    return Asks()


def scope(name: str = "acme", **limits: Any) -> Scope:
    return Scope(name, Limits(**limits))


async def refused(limiter: Limiter, ask: Ask) -> QuotaExceeded:
    with pytest.raises(QuotaExceeded) as info:
        await limiter.acquire(ask)
    return info.value


# -- requests per minute ---------------------------------------------------------------------


async def test_rpm_refuses_the_request_past_the_limit_and_refills(limiter: Limiter, ask: Asks) -> None:
    s = scope(rpm=3)
    for _ in range(3):
        await limiter.acquire(ask(s))
    refusal = await refused(limiter, ask(s, now=T0 + 1))
    assert (refusal.scope, refusal.limit, refusal.type) == ("acme", "rpm", "rate_limit_exceeded")
    assert refusal.retry_after == pytest.approx(19.0)  # one token back every 20 s, 1 s gone
    await refused(limiter, ask(s, now=T0 + 19.9))
    await limiter.acquire(ask(s, now=T0 + 20))
    await refused(limiter, ask(s, now=T0 + 20))
    for _ in range(3):  # a full minute later the bucket is full again, and no fuller
        await limiter.acquire(ask(s, now=T0 + 600))
    await refused(limiter, ask(s, now=T0 + 600))


async def test_release_does_not_give_back_the_request(limiter: Limiter, ask: Asks) -> None:
    s = scope(rpm=1)
    await limiter.release(await limiter.acquire(ask(s)))
    await refused(limiter, ask(s))


# -- tokens per minute -----------------------------------------------------------------------


async def test_tpm_takes_the_estimate_and_settle_refunds(limiter: Limiter, ask: Asks) -> None:
    s = scope(tpm=1000)
    grant = await limiter.acquire(ask(s, tokens=600))
    refusal = await refused(limiter, ask(s, tokens=500))
    assert refusal.limit == "tpm"
    assert refusal.retry_after == pytest.approx(6.0)  # 100 tokens short at 1000/60 per second
    await limiter.settle(grant, 200, 0.0)  # used 400 fewer than estimated
    assert (await limiter.usage(s, T0))["tpm"] == {"limit": 1000, "available": pytest.approx(800.0)}
    await limiter.acquire(ask(s, tokens=500))


async def test_tpm_settle_overdraft_leaves_the_bucket_below_zero(limiter: Limiter, ask: Asks) -> None:
    s = scope(tpm=1000)
    grant = await limiter.acquire(ask(s, tokens=300))
    await limiter.settle(grant, 1300, 0.0)
    assert (await limiter.usage(s, T0))["tpm"]["available"] == pytest.approx(-300.0)
    refusal = await refused(limiter, ask(s, tokens=1))
    assert refusal.retry_after == pytest.approx(301 * 60 / 1000)
    await limiter.acquire(ask(s, tokens=1, now=T0 + refusal.retry_after + 1e-6))


async def test_tpm_refund_never_overfills(limiter: Limiter, ask: Asks) -> None:
    s = scope(tpm=1000)
    grant = await limiter.acquire(ask(s, tokens=100))
    await limiter.acquire(ask(s, tokens=900, now=T0 + 6))  # refilled 100 meanwhile
    await limiter.release(grant)  # +100
    assert (await limiter.usage(s, T0 + 6))["tpm"]["available"] == pytest.approx(200.0)
    await limiter.settle(await limiter.acquire(ask(s, tokens=50, now=T0 + 60)), 0, 0.0)
    assert (await limiter.usage(s, T0 + 60))["tpm"]["available"] == pytest.approx(1000.0)


async def test_tpm_release_gives_back_the_estimate(limiter: Limiter, ask: Asks) -> None:
    s = scope(tpm=1000)
    grant = await limiter.acquire(ask(s, tokens=700))
    await refused(limiter, ask(s, tokens=700))
    await limiter.release(grant)
    await limiter.acquire(ask(s, tokens=700))


async def test_a_request_larger_than_the_bucket_is_refused(limiter: Limiter, ask: Asks) -> None:
    refusal = await refused(limiter, ask(scope(tpm=100), tokens=101))
    assert refusal.retry_after == pytest.approx(0.6)


# -- concurrency ------------------------------------------------------------------------------


async def test_concurrency_slots_are_freed_by_settle_and_release(limiter: Limiter, ask: Asks) -> None:
    s = scope(concurrency=2)
    a = await limiter.acquire(ask(s))
    b = await limiter.acquire(ask(s))
    refusal = await refused(limiter, ask(s))
    assert (refusal.limit, refusal.retry_after) == ("concurrency", 1.0)
    await limiter.settle(a, 10, 0.0)
    c = await limiter.acquire(ask(s))
    await refused(limiter, ask(s))
    await limiter.release(b)
    await limiter.acquire(ask(s))
    await refused(limiter, ask(s))
    await limiter.release(c)
    assert (await limiter.usage(s, T0))["concurrency"] == {"limit": 2, "in_use": 1}


async def test_concurrency_slots_expire_after_max_request_s(limiter: Limiter, ask: Asks) -> None:
    s = scope(concurrency=1)
    held = await limiter.acquire(ask(s))
    await refused(limiter, ask(s, now=T0 + MAX_REQ - 0.5))
    assert (await limiter.usage(s, T0 + MAX_REQ - 0.5))["concurrency"]["in_use"] == 1
    assert (await limiter.usage(s, T0 + MAX_REQ))["concurrency"]["in_use"] == 0
    late = await limiter.acquire(ask(s, now=T0 + MAX_REQ))
    await limiter.release(held)  # the expired one's release must not free the new slot
    await refused(limiter, ask(s, now=T0 + MAX_REQ + 1))
    await limiter.release(late)
    await limiter.acquire(ask(s, now=T0 + MAX_REQ + 1))


# -- budgets -----------------------------------------------------------------------------------


async def test_budget_reservation_counts_and_refusal_names_the_budget(limiter: Limiter, ask: Asks) -> None:
    s = scope(usd_per_day=1.0)
    await limiter.acquire(ask(s, cost=0.4))
    await limiter.acquire(ask(s, cost=0.4))
    refusal = await refused(limiter, ask(s, cost=0.4, now=T0 + 10))
    assert (refusal.limit, refusal.type, refusal.code, refusal.status) == (
        "usd_per_day",
        "budget_exceeded",
        "budget_exceeded",
        429,
    )
    assert refusal.remaining_usd == pytest.approx(0.2)
    assert refusal.retry_after == pytest.approx(DAY_END - T0 - 10)  # until UTC midnight
    await limiter.acquire(ask(s, cost=0.2))  # exactly what is left still fits
    await refused(limiter, ask(s, cost=0.000001))


async def test_settle_replaces_the_reservation_by_the_real_cost(limiter: Limiter, ask: Asks) -> None:
    s = scope(usd_per_day=1.0)
    a = await limiter.acquire(ask(s, cost=0.4))
    b = await limiter.acquire(ask(s, cost=0.4))
    await refused(limiter, ask(s, cost=0.4))
    await limiter.settle(a, 0, 0.1)
    day = (await limiter.usage(s, T0))["usd_per_day"]
    assert (day["spent"], day["reserved"], day["remaining"]) == pytest.approx((0.1, 0.4, 0.5))
    c = await limiter.acquire(ask(s, cost=0.4))
    await limiter.release(b)
    day = (await limiter.usage(s, T0))["usd_per_day"]
    assert (day["spent"], day["reserved"]) == pytest.approx((0.1, 0.4))
    await limiter.settle(c, 0, 0.7)  # more than reserved: the real cost is charged anyway
    day = (await limiter.usage(s, T0))["usd_per_day"]
    assert (day["spent"], day["reserved"], day["remaining"]) == pytest.approx((0.8, 0.0, 0.2))


async def test_month_budget_refuses_until_the_month_ends(limiter: Limiter, ask: Asks) -> None:
    s = scope(usd_per_day=5.0, usd_per_month=6.0)
    await limiter.settle(await limiter.acquire(ask(s, cost=5.0)), 0, 5.0)
    refusal = await refused(limiter, ask(s, cost=1.0))
    assert (refusal.limit, refusal.remaining_usd) == ("usd_per_day", 0.0)
    tomorrow = DAY_END + 60
    await limiter.settle(await limiter.acquire(ask(s, cost=1.0, now=tomorrow)), 0, 1.0)
    refusal = await refused(limiter, ask(s, cost=0.5, now=tomorrow))
    assert (refusal.limit, refusal.type) == ("usd_per_month", "budget_exceeded")
    assert refusal.remaining_usd == 0.0
    assert refusal.retry_after == pytest.approx(MONTH_END - tomorrow)
    next_month = MONTH_END + 1
    await limiter.acquire(ask(s, cost=5.0, now=next_month))
    usage = await limiter.usage(s, next_month)
    assert usage["usd_per_month"]["period"] == "2026-04"
    assert usage["usd_per_day"]["period"] == "2026-04-01"
    assert (usage["usd_per_month"]["spent"], usage["usd_per_month"]["reserved"]) == (0.0, 5.0)


async def test_a_new_utc_day_starts_fresh(limiter: Limiter, ask: Asks) -> None:
    s = scope(usd_per_day=1.0)
    await limiter.settle(await limiter.acquire(ask(s, cost=1.0)), 0, 1.0)
    await refused(limiter, ask(s, cost=0.1, now=DAY_END - 0.001))
    await limiter.acquire(ask(s, cost=1.0, now=DAY_END))
    yesterday = (await limiter.usage(s, T0))["usd_per_day"]
    assert (yesterday["period"], yesterday["spent"]) == ("2026-03-14", 1.0)


async def test_reservations_expire_after_max_request_s(limiter: Limiter, ask: Asks) -> None:
    s = scope(usd_per_day=1.0)
    lost = await limiter.acquire(ask(s, cost=1.0))
    await refused(limiter, ask(s, cost=0.5, now=T0 + MAX_REQ - 1))
    await limiter.acquire(ask(s, cost=0.5, now=T0 + MAX_REQ))
    assert (await limiter.usage(s, T0 + MAX_REQ))["usd_per_day"]["reserved"] == 0.5
    await limiter.settle(lost, 0, 0.25)  # a late settle still charges what was spent
    day = (await limiter.usage(s, T0 + MAX_REQ))["usd_per_day"]
    assert (day["spent"], day["reserved"]) == (0.25, 0.5)


async def test_settle_charges_the_window_the_request_started_in(limiter: Limiter, ask: Asks) -> None:
    s = scope(usd_per_day=1.0)
    grant = await limiter.acquire(ask(s, cost=0.5, now=DAY_END - 1))
    await limiter.settle(grant, 0, 0.3)
    assert (await limiter.usage(s, DAY_END - 1))["usd_per_day"]["spent"] == 0.3
    assert (await limiter.usage(s, DAY_END + 1))["usd_per_day"]["spent"] == 0.0


async def test_micro_dollar_amounts_add_up_exactly(limiter: Limiter, ask: Asks) -> None:
    s = scope(usd_per_day=0.3)
    for _ in range(3):
        await limiter.settle(await limiter.acquire(ask(s, cost=0.1)), 0, 0.1)  # 0.1 * 3 > 0.3 in floats
    assert (await limiter.usage(s, T0))["usd_per_day"]["remaining"] == 0.0
    await limiter.acquire(ask(s, cost=0.0))
    await refused(limiter, ask(s, cost=0.000001))


async def test_free_requests_reserve_and_release_nothing(limiter: Limiter, ask: Asks) -> None:
    s = scope(usd_per_day=1.0, usd_per_month=2.0)
    await limiter.release(await limiter.acquire(ask(s, cost=0.0)))
    await limiter.settle(await limiter.acquire(ask(s, cost=0.0)), 0, 0.0)
    lost = await limiter.acquire(ask(s, cost=0.0))
    await limiter.acquire(ask(s, cost=0.0, now=T0 + MAX_REQ))  # purges the expired free one
    await limiter.release(lost)
    day = (await limiter.usage(s, T0 + MAX_REQ))["usd_per_day"]
    assert (day["spent"], day["reserved"], day["remaining"]) == (0.0, 0.0, 1.0)


# -- several scopes ---------------------------------------------------------------------------


async def test_a_refusal_in_one_scope_leaves_the_others_untouched(limiter: Limiter, ask: Asks) -> None:
    tenant = scope("acme", rpm=10, tpm=10_000, concurrency=5, usd_per_day=10.0, usd_per_month=100.0)
    task = scope("acme/support-reply", rpm=1, usd_per_day=1.0)
    stingy = scope("acme/summarize", usd_per_day=0.1)
    await limiter.acquire(ask(tenant, task, tokens=100, cost=0.5))
    before = await limiter.usage(tenant, T0)
    refusal = await refused(limiter, ask(tenant, task, tokens=100, cost=0.5))
    assert (refusal.scope, refusal.limit) == ("acme/support-reply", "rpm")
    refusal = await refused(limiter, ask(tenant, stingy, tokens=100, cost=0.5))
    assert (refusal.scope, refusal.limit) == ("acme/summarize", "usd_per_day")
    assert await limiter.usage(tenant, T0) == before
    assert (await limiter.usage(stingy, T0))["usd_per_day"]["reserved"] == 0.0
    assert before["rpm"]["available"] == pytest.approx(9.0)
    assert before["concurrency"]["in_use"] == 1
    assert before["usd_per_day"]["reserved"] == 0.5


async def test_the_first_scope_to_refuse_is_named(limiter: Limiter, ask: Asks) -> None:
    tenant, task = scope("acme", concurrency=1), scope("acme/chat", concurrency=1)
    await limiter.acquire(ask(tenant, task))
    refusal = await refused(limiter, ask(tenant, task))
    assert (refusal.scope, refusal.limit) == ("acme", "concurrency")
    other = scope("acme/other", concurrency=1)
    refusal = await refused(limiter, ask(other, task))
    assert refusal.scope == "acme/chat"
    assert (await limiter.usage(other, T0))["concurrency"]["in_use"] == 0


async def test_a_scope_named_twice_counts_once(limiter: Limiter, ask: Asks) -> None:
    s = scope(rpm=2, concurrency=2)
    await limiter.acquire(ask(s, s))
    assert (await limiter.usage(s, T0))["rpm"]["available"] == pytest.approx(1.0)


async def test_a_tenant_named_like_another_tenants_task_scope_has_its_own_state(limiter: Limiter, ask: Asks) -> None:
    """Tenant "acme/chat" and tenant "acme"'s use of task "chat" are both called "acme/chat";
    they must not count against one state (in memory, or under one Redis key)."""
    config = Config.model_validate(
        {
            "targets": {"up": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}},
            "tenants": {
                "acme": {"task_limits": {"chat": {"usd_per_day": 1.0, "concurrency": 1}}},
                "acme/chat": {"limits": {"usd_per_day": 100.0, "concurrency": 5}},
                "acme%2Fchat": {"limits": {"usd_per_day": 100.0, "concurrency": 5}},
            },
            "tasks": {"chat": {"route": ["up"]}},
        }
    )
    found = scopes(config)
    (acme_chat,) = found[("acme", "chat")]
    (other,) = found[("acme/chat", "chat")]
    (escaped,) = found[("acme%2Fchat", "chat")]
    assert acme_chat.name == other.name == "acme/chat"  # what messages call them
    await limiter.acquire(ask(other, cost=50.0))
    await limiter.acquire(ask(escaped, cost=50.0))
    await limiter.acquire(ask(acme_chat, cost=1.0))  # the other tenants' spend is not acme's
    assert (await limiter.usage(acme_chat, T0))["usd_per_day"]["reserved"] == 1.0
    assert (await limiter.usage(other, T0))["usd_per_day"]["reserved"] == 50.0
    assert (await limiter.usage(other, T0))["concurrency"]["in_use"] == 1


async def test_scopes_without_limits_admit_everything(limiter: Limiter, ask: Asks) -> None:
    s = scope()
    for _ in range(100):
        await limiter.acquire(ask(s, tokens=10**9, cost=10**6))
    assert await limiter.usage(s, T0) == {"scope": "acme"}


# -- idempotency -------------------------------------------------------------------------------


async def test_settle_and_release_are_idempotent(limiter: Limiter, ask: Asks) -> None:
    s = scope(tpm=1000, concurrency=2, usd_per_day=1.0, usd_per_month=10.0)
    grant = await limiter.acquire(ask(s, tokens=500, cost=0.5))
    other = await limiter.acquire(ask(s, tokens=100, cost=0.2))
    await limiter.settle(grant, 300, 0.25)
    after = await limiter.usage(s, T0)
    await limiter.settle(grant, 300, 0.25)
    await limiter.release(grant)
    assert await limiter.usage(s, T0) == after
    assert after["usd_per_day"]["spent"] == 0.25
    assert after["usd_per_day"]["reserved"] == 0.2
    assert after["concurrency"]["in_use"] == 1
    await limiter.release(other)
    await limiter.release(other)
    await limiter.settle(other, 1000, 1.0)
    usage = await limiter.usage(s, T0)
    assert usage["usd_per_day"]["reserved"] == 0.0
    assert usage["concurrency"]["in_use"] == 0
    assert usage["tpm"]["available"] == pytest.approx(700.0)
    assert grant.done and other.done


# -- usage ---------------------------------------------------------------------------------------


async def test_usage_reports_every_limit(limiter: Limiter, ask: Asks) -> None:
    s = scope(rpm=60, tpm=6000, concurrency=4, usd_per_day=2.0, usd_per_month=30.0)
    await limiter.settle(await limiter.acquire(ask(s, tokens=1000, cost=0.5)), 400, 0.125)
    await limiter.acquire(ask(s, tokens=1000, cost=0.5))
    now = T0 + 1  # one second's refill: 1 request, 100 tokens
    assert await limiter.usage(s, now) == {
        "scope": "acme",
        "rpm": {"limit": 60, "available": pytest.approx(60 - 2 + 1)},
        "tpm": {"limit": 6000, "available": pytest.approx(6000 - 1000 + 600 - 1000 + 100)},
        "concurrency": {"limit": 4, "in_use": 1},
        "usd_per_day": {
            "limit": 2.0,
            "period": "2026-03-14",
            "spent": 0.125,
            "reserved": 0.5,
            "remaining": 1.375,
            "resets_in": pytest.approx(DAY_END - now),
        },
        "usd_per_month": {
            "limit": 30.0,
            "period": "2026-03",
            "spent": 0.125,
            "reserved": 0.5,
            "remaining": 29.375,
            "resets_in": pytest.approx(MONTH_END - now),
        },
    }


async def test_usage_of_an_unseen_scope_is_all_room(limiter: Limiter) -> None:
    usage = await limiter.usage(scope("new", rpm=5, usd_per_day=1.0), T0)
    assert usage["rpm"] == {"limit": 5, "available": 5.0}
    assert usage["usd_per_day"]["remaining"] == 1.0


# -- stats ---------------------------------------------------------------------------------------


async def test_stats_count_no_backend_error_while_the_backend_answers(limiter: Limiter, ask: Asks) -> None:
    assert limiter.stats() == LimiterStats()
    s = scope(rpm=1, concurrency=1, usd_per_day=1.0)
    await limiter.settle(await limiter.acquire(ask(s, tokens=5, cost=0.1)), 5, 0.05)
    await refused(limiter, ask(s))
    await limiter.usage(s, T0)
    assert limiter.stats() == LimiterStats(backend_errors=0)  # a refusal is not a backend error


# -- the factory ---------------------------------------------------------------------------------


async def test_factory_picks_the_memory_backend() -> None:
    limiter = open_limiter(LimitsConfig(max_request_s=42))
    assert isinstance(limiter, MemoryLimiter)
    assert limiter.max_request_s == 42
    await limiter.aclose()


@needs_redis
async def test_factory_picks_the_redis_backend() -> None:
    from turnout.control.quota.redis import RedisLimiter

    cfg = LimitsConfig(backend="redis", redis_url=REDIS_URL, key_prefix="tq", on_backend_error="open")
    limiter = open_limiter(cfg)
    assert isinstance(limiter, RedisLimiter)
    assert (limiter.key_prefix, limiter.on_backend_error, limiter.max_request_s) == ("tq", "open", 600.0)
    await limiter.aclose()


def test_factory_without_the_redis_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "redis" or m.startswith("redis.")] + ["redis"]:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import redis...` raise ImportError
    monkeypatch.delitem(sys.modules, "turnout.control.quota.redis", raising=False)
    with pytest.raises(ConfigError, match=r"pip install 'turnout\[redis\]'"):
        open_limiter(LimitsConfig(backend="redis"))


# -- the in-process backend's memory --------------------------------------------------------------


async def test_memory_limiter_forgets_what_no_longer_matters() -> None:
    limiter = MemoryLimiter(MAX_REQ)
    asks = Asks()
    for n in range(2000):
        s = scope(f"tenant-{n}", rpm=10, tpm=1000, concurrency=2, usd_per_day=1.0)
        await limiter.settle(await limiter.acquire(asks(s, tokens=10, cost=0.01)), 10, 0.01)
    held = await limiter.acquire(asks(scope("busy", concurrency=2), now=T0 + 1))
    assert len(limiter._states) > 2000
    # Two days later every bucket is full, every slot expired, every window over: ten
    # thousand more requests from one tenant trigger a sweep that drops the lot.
    quiet = scope("quiet", rpm=10_000)
    for _ in range(10_000):
        await limiter.acquire(asks(quiet, now=DAY_END + 86_400))
    assert set(limiter._states) == {"quiet"}
    assert limiter._states["quiet"].rpm is not None and limiter._states["quiet"].budgets == {}
    assert limiter._held == {}
    assert len(limiter._expiry) < 100  # settled and expired records do not pile up
    await limiter.release(held)  # its scope was forgotten: still fine
    await limiter.aclose()
