"""Quota invariants under random sequences of acquire / settle / release / repeat / time passing,
checked against a plain model after every step: a budget's reserved amount is the sum of the
open grants' costs, its spent amount the sum of the settled real costs, and (when every real
cost is at most its reservation) spent + reserved never passes the budget; slots in use are the
open grants; every admission and refusal is the one the model predicts, naming the same scope
and limit. Two scopes per request (a tenant and one of its tasks), so a refusal by either must
leave the other untouched. The in-process backend gets many examples, Redis fewer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from tests.test_quota_contract import REDIS_URL, drop_prefix, needs_redis
from turnout.control.quota.base import Ask, Grant, Limiter, Limits, QuotaExceeded, Scope, to_micro
from turnout.control.quota.memory import MemoryLimiter

T = TypeVar("T")

MAX_REQ = 300.0
START = datetime(2026, 7, 1, 0, 1, tzinfo=UTC).timestamp()  # a run never leaves this UTC day
TENANT = Scope("acme", Limits(concurrency=4, usd_per_day=1.0))
TASKS = {
    "a": Scope("acme/a", Limits(concurrency=3, usd_per_day=0.6)),
    "b": Scope("acme/b", Limits(concurrency=2, usd_per_day=0.6, usd_per_month=0.5)),
}
SCOPES = [TENANT, *TASKS.values()]


@dataclass
class Open:
    grant: Grant
    cost: int  # micro-dollars
    expires: float


class QuotaMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.limiter = self.make_limiter()
        self.now = START
        self.n = 0
        self.open: dict[str, Open] = {}
        self.finished: list[Grant] = []
        self.spent = {s.name: 0 for s in SCOPES}
        self.late = False  # a reservation expired before its settle: spent may then pass the budget

    def make_limiter(self) -> Limiter:
        raise NotImplementedError

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self.run(self.cleanup())
        finally:
            self.loop.close()

    async def cleanup(self) -> None:
        await self.limiter.aclose()

    # -- the model ----------------------------------------------------------------------------

    def live(self, scope: Scope) -> list[Open]:
        return [o for o in self.open.values() if o.expires > self.now and scope in o.grant.ask.scopes]

    def predict(self, scopes: tuple[Scope, ...], cost: int) -> tuple[str, str] | None:
        """The (scope, limit) that should refuse, or None to admit; in the backends' order."""
        for s in scopes:
            live = self.live(s)
            assert s.limits.concurrency is not None and s.limits.usd_per_day is not None
            if len(live) >= s.limits.concurrency:
                return s.name, "concurrency"
            used = self.spent[s.name] + sum(o.cost for o in live)
            if used + cost > to_micro(s.limits.usd_per_day):
                return s.name, "usd_per_day"
            if s.limits.usd_per_month is not None and used + cost > to_micro(s.limits.usd_per_month):
                return s.name, "usd_per_month"
        return None

    # -- rules ----------------------------------------------------------------------------------

    @rule(task=st.sampled_from(sorted(TASKS)), cost=st.integers(0, 400_000), tokens=st.integers(0, 10_000))
    def acquire(self, task: str, cost: int, tokens: int) -> None:
        self.n += 1
        scopes = (TENANT, TASKS[task])
        ask = Ask(f"r{self.n}", scopes, tokens, cost / 1_000_000, self.now)
        expected = self.predict(scopes, cost)
        grant: Grant | None = None
        refusal: QuotaExceeded | None = None
        try:
            grant = self.run(self.limiter.acquire(ask))
        except QuotaExceeded as exc:
            refusal = exc
        if refusal is not None:
            assert (refusal.scope, refusal.limit) == expected
            if refusal.limit.startswith("usd_"):
                assert refusal.remaining_usd is not None and refusal.remaining_usd >= 0
                assert refusal.retry_after > 0
            return
        assert grant is not None
        assert expected is None, f"admitted, but {expected} should have refused"
        self.open[ask.request_id] = Open(grant, cost, self.now + MAX_REQ)

    @precondition(lambda self: bool(self.open))
    @rule(data=st.data(), share=st.floats(0, 1))
    def settle(self, data: st.DataObject, share: float) -> None:
        rid = data.draw(st.sampled_from(sorted(self.open)))
        o = self.open.pop(rid)
        real = int(o.cost * share)  # never more than was reserved
        if o.expires <= self.now:
            self.late = True
        self.run(self.limiter.settle(o.grant, o.grant.ask.tokens // 2, real / 1_000_000))
        for s in o.grant.ask.scopes:
            self.spent[s.name] += real
        self.finished.append(o.grant)

    @precondition(lambda self: bool(self.open))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        o = self.open.pop(data.draw(st.sampled_from(sorted(self.open))))
        self.run(self.limiter.release(o.grant))
        self.finished.append(o.grant)

    @precondition(lambda self: bool(self.finished))
    @rule(data=st.data(), settle=st.booleans())
    def finish_again(self, data: st.DataObject, settle: bool) -> None:
        grant = data.draw(st.sampled_from(self.finished))
        if settle:
            self.run(self.limiter.settle(grant, 1_000_000, 1.0))
        else:
            self.run(self.limiter.release(grant))

    @rule(seconds=st.one_of(st.floats(0, 30), st.sampled_from([MAX_REQ - 1, MAX_REQ, MAX_REQ + 1])))
    def wait(self, seconds: float) -> None:
        self.now += seconds

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def books_balance(self) -> None:
        for s in SCOPES:
            usage = self.run(self.limiter.usage(s, self.now))
            live = self.live(s)
            assert usage["concurrency"]["in_use"] == len(live)
            reserved = sum(o.cost for o in live)
            for limit in ("usd_per_day", "usd_per_month"):
                if limit not in usage:
                    continue
                budget = usage[limit]
                assert budget["reserved"] == reserved / 1_000_000
                assert budget["spent"] == self.spent[s.name] / 1_000_000
                if not self.late:
                    assert to_micro(budget["spent"]) + to_micro(budget["reserved"]) <= to_micro(budget["limit"])


class MemoryQuotaMachine(QuotaMachine):
    def make_limiter(self) -> Limiter:
        return MemoryLimiter(MAX_REQ)


class RedisQuotaMachine(QuotaMachine):
    def make_limiter(self) -> Limiter:
        from turnout.control.quota.redis import RedisLimiter

        self.redis = RedisLimiter(REDIS_URL, f"turnout-test-{uuid.uuid4().hex[:12]}", MAX_REQ)
        return self.redis

    async def cleanup(self) -> None:
        await drop_prefix(self.redis)
        await self.redis.aclose()


def test_memory_limiter_never_drifts() -> None:
    run_state_machine_as_test(
        MemoryQuotaMachine, settings=settings(max_examples=300, stateful_step_count=60, deadline=None)
    )


@needs_redis
def test_redis_limiter_never_drifts() -> None:
    run_state_machine_as_test(
        RedisQuotaMachine, settings=settings(max_examples=30, stateful_step_count=30, deadline=None)
    )
