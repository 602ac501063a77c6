"""The quota gate's hot path calls the in-process limiter and the byte counter directly, without
a coroutine per step: the same answers as the protocol's awaited calls, and a limiter that may
wait (a subclass, Redis) still goes through the protocol."""

from __future__ import annotations

from typing import Any

import pytest

from turnout.config import validate
from turnout.control.pricing import PriceBook
from turnout.control.quota.base import Ask, Grant, QuotaExceeded
from turnout.control.quota.gate import QuotaGate
from turnout.control.quota.memory import MemoryLimiter
from turnout.control.quota.plan import max_output_tokens
from turnout.control.tokens import Tokens, output_bound
from turnout.errors import RequestError
from turnout.providers.base import Usage

BODY = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "héllo 你好"}]}


def config(limits: dict[str, Any]) -> Any:
    return validate(
        {
            "targets": {"up": {"provider": "openai", "base_url": "http://up.invalid/v1", "model": "m"}},
            "tasks": {"t": {"route": ["up"]}},
            "tenants": {"acme": {"keys": ["sk-acme-0123456789"], "limits": limits}},
        }
    )


class Counting(MemoryLimiter):
    """A subclass: it could wait, so the gate must await its protocol methods."""

    def __init__(self) -> None:
        super().__init__(60)
        self.calls: list[str] = []

    async def acquire(self, ask: Ask) -> Grant:
        self.calls.append("acquire")
        return await super().acquire(ask)

    async def settle(self, grant: Grant, tokens: int, cost_usd: float) -> None:
        self.calls.append("settle")
        await super().settle(grant, tokens, cost_usd)

    async def release(self, grant: Grant) -> None:
        self.calls.append("release")
        await super().release(grant)


async def test_prompt_now_counts_what_prompt_counts_for_a_byte_counted_target() -> None:
    tokens = Tokens()
    for body in (BODY, {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 50}]}]}, {}):
        assert tokens.prompt_now(body, "up") == await tokens.prompt(body, "up")


def test_prompt_now_leaves_a_tokenizer_target_to_the_awaited_call() -> None:
    tokens = Tokens({"tok": lambda texts: sum(len(t) for t in texts)})
    assert tokens.prompt_now(BODY, "tok") is None
    assert tokens.prompt_now(BODY, "other") is not None


@pytest.mark.parametrize(
    "body",
    [
        {"max_tokens": 64},
        {"max_tokens": 64, "n": 3},
        {"max_tokens": 64, "max_completion_tokens": 200},
        {"max_tokens": True},  # a bool is no bound
        {"max_tokens": 0},
        {"max_tokens": -5},
        {"max_tokens": 2.5},
        {"max_completion_tokens": 10, "n": 2},
        {},
    ],
)
def test_the_output_bound_fast_path_agrees_with_the_full_rule(body: dict[str, Any]) -> None:
    assert max_output_tokens(body, 1000) == (output_bound(body) or 1000 * max(1, body.get("n", 1)))


async def test_the_gate_admits_settles_and_refuses_with_the_in_process_limiter_inline() -> None:
    cfg = config({"rpm": 2, "concurrency": 5, "usd_per_day": 100})
    limiter = MemoryLimiter(60)
    gate = QuotaGate(cfg, limiter, PriceBook(cfg))
    assert gate.inline is limiter
    _, first = await gate.admit("acme", "t", dict(BODY), ["up"], "r1")
    _, second = await gate.admit("acme", "t", dict(BODY), ["up"], "r2")
    assert first is not None and second is not None
    with pytest.raises(QuotaExceeded) as refused:  # rpm 2: the third is refused, taking nothing
        await gate.admit("acme", "t", dict(BODY), ["up"], "r3")
    assert refused.value.limit == "rpm"
    scope = gate.scopes[("acme", "t")][0]
    assert (await limiter.usage(scope, second.ask.now))["concurrency"]["in_use"] == 2
    await gate.settle(first, Usage(10, 5), 0.25)
    await gate.release(second)
    await gate.settle(first, Usage(10, 5), 0.25)  # a second settle is a no-op
    usage = await limiter.usage(scope, second.ask.now)
    assert usage["concurrency"]["in_use"] == 0
    assert usage["usd_per_day"]["spent"] == 0.25 and usage["usd_per_day"]["reserved"] == 0


async def test_a_limiter_subclass_is_awaited_through_the_protocol() -> None:
    cfg = config({"concurrency": 5})
    limiter = Counting()
    gate = QuotaGate(cfg, limiter, PriceBook(cfg))
    assert gate.inline is None
    _, one = await gate.admit("acme", "t", dict(BODY), ["up"], "r1")
    _, two = await gate.admit("acme", "t", dict(BODY), ["up"], "r2")
    await gate.settle(one, Usage(1, 1), 0.0)
    await gate.release(two)
    assert limiter.calls == ["acquire", "acquire", "settle", "release"]


@pytest.mark.parametrize("limiter", ["inline", "awaited"])
async def test_a_request_no_minute_of_tpm_can_hold_is_too_large_not_rate_limited(limiter: str) -> None:
    """Seen: ``tpm: 1000`` and ``max_tokens: 1030`` got 429 "retry after 6s" with the bucket full,
    and again after every wait: a client honouring Retry-After looped forever."""
    cfg = config({"tpm": 1000})
    used = MemoryLimiter(60) if limiter == "inline" else Counting()
    gate = QuotaGate(cfg, used, PriceBook(cfg))
    with pytest.raises(RequestError) as refused:
        await gate.admit("acme", "t", {**BODY, "max_tokens": 1030}, ["up"], "r1")
    assert refused.value.status == 400 and refused.value.code == "request_too_large"
    assert "more than the tpm limit of 1,000" in refused.value.message
    scope = gate.scopes[("acme", "t")][0]
    assert (await used.usage(scope, 0.0))["tpm"]["available"] == 1000.0  # nothing taken
    _, grant = await gate.admit("acme", "t", {**BODY, "max_tokens": 100}, ["up"], "r2")  # one that fits
    assert grant is not None
    with pytest.raises(RequestError, match="request counts up to"):  # unset: the default 1,024 counts
        await gate.admit("acme", "t", dict(BODY), ["up"], "r3")
    await gate.admit("acme", "t", {**BODY, "max_tokens": 400}, ["up"], "r4")
    with pytest.raises(QuotaExceeded):  # fits a minute, not what is left of this one: rate limited
        await gate.admit("acme", "t", {**BODY, "max_tokens": 400}, ["up"], "r5")
