"""The attempt loop's decisions per error kind: retry here, fall back, or stop."""

from __future__ import annotations

import pytest

from tests.fakes.scripted import ScriptedProvider, Step
from turnout.config import BreakerConfig, RetryConfig
from turnout.errors import AllTargetsFailed, ContextWindowExceeded, UpstreamError, UpstreamStatusError
from turnout.providers.base import Timeouts
from turnout.routing.attempts import Target, execute
from turnout.routing.breaker import Breaker


def target(name: str, *steps: Step, window: int | None = None, attempts: int = 2) -> Target:
    return Target(
        name,
        ScriptedProvider(name, *steps),
        Breaker(BreakerConfig()),
        RetryConfig(attempts=attempts, backoff_ms=0),
        Timeouts(),
        window,
    )


def calls(t: Target) -> int:
    assert isinstance(t.provider, ScriptedProvider)
    return len(t.provider.calls)


BODY = {"model": "t", "messages": [{"role": "user", "content": "hi"}]}


async def test_fallback_only_error_skips_retries_but_tries_the_next_target() -> None:
    timeout = UpstreamStatusError(408, "ModelTimeoutException", retryable=False, fallback=True)
    a, b = target("a", Step(timeout)), target("b")
    result = await execute([a, b], BODY, stream=False, request_id="r")
    assert result.target is b
    assert (calls(a), calls(b)) == (1, 1)
    assert [x.error_class for x in result.attempts] == ["http_408", None]
    assert a.breaker._consecutive == 1  # it counts against the target


async def test_a_request_error_stops_the_walk() -> None:
    a, b = target("a", Step(UpstreamStatusError(400, "bad"))), target("b")
    with pytest.raises(AllTargetsFailed) as info:
        await execute([a, b], BODY, stream=False, request_id="r")
    assert info.value.status == 400 and calls(b) == 0


async def test_too_long_prompt_goes_only_to_larger_or_unknown_windows() -> None:
    small = target("small", Step(ContextWindowExceeded("too long")), window=8_000)
    same = target("same", window=8_000)
    smaller = target("smaller", window=4_000)
    bigger = target("bigger", window=128_000)
    result = await execute([small, same, smaller, bigger], BODY, stream=False, request_id="r")
    assert result.target is bigger
    assert (calls(small), calls(same), calls(smaller), calls(bigger)) == (1, 0, 0, 1)
    assert [x.target for x in result.attempts] == ["small", "same", "smaller", "bigger"]
    assert small.breaker._consecutive == 0  # not the target's fault


async def test_too_long_everywhere_is_a_400_context_length_exceeded() -> None:
    a = target("a", Step(ContextWindowExceeded("too long", window=8_000)))
    b = target("b", window=4_000)
    with pytest.raises(AllTargetsFailed) as info:
        await execute([a, b], BODY, stream=False, request_id="r")
    assert info.value.status == 400
    assert info.value.code == "context_length_exceeded"


async def test_retryable_error_is_retried_then_falls_back() -> None:
    a = target("a", Step(UpstreamError("flaky")), attempts=3)
    b = target("b")
    result = await execute([a, b], BODY, stream=False, request_id="r")
    assert result.target is b and calls(a) == 3
