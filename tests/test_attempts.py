"""The attempt loop's decisions per error kind: retry here, fall back, or stop."""

from __future__ import annotations

import pytest

from tests.fakes.clock import Clock
from tests.fakes.scripted import ScriptedProvider, Step
from turnout.config import BreakerConfig, RetryConfig
from turnout.errors import (
    AllTargetsFailed,
    ContextWindowExceeded,
    Overloaded,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatusError,
)
from turnout.providers.base import Completion, Timeouts
from turnout.routing.attempts import Target, execute
from turnout.routing.breaker import Breaker, State


def target(
    name: str, *steps: Step, window: int | None = None, attempts: int = 2, breaker: Breaker | None = None
) -> Target:
    return Target(
        name,
        ScriptedProvider(name, *steps),
        breaker or Breaker(BreakerConfig()),
        RetryConfig(attempts=attempts, backoff_ms=0),
        Timeouts(),
        window,
    )


def state(b: Breaker) -> State:
    return b.state  # read afresh: each call may move it


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


@pytest.mark.parametrize("status", [301, 302, 304, 307, 308])
async def test_an_upstream_redirect_is_the_targets_fault_not_passed_on_as_the_answers_status(status: int) -> None:
    """The gateway follows no redirect and the caller asked for none: a 3xx is a target whose
    ``base_url`` moved. It was answered to the caller with its own status (a 304 with a body,
    which broke the caller's keep-alive connection), typed as the caller's own mistake."""
    a, b = target("a", Step(UpstreamStatusError(status, "Found"))), target("b")
    result = await execute([a, b], BODY, stream=False, request_id="r")
    assert result.target is b and calls(a) == 1  # not retried; the next target answers
    assert a.breaker._consecutive == 1  # it counts against the target
    alone = target("a", Step(UpstreamStatusError(status, "Found")))
    with pytest.raises(AllTargetsFailed) as info:
        await execute([alone], BODY, stream=False, request_id="r")
    assert (info.value.status, info.value.code, info.value.type) == (502, "all_targets_failed", "upstream_error")


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


def opened(cooldown_s: float = 60.0) -> Breaker:
    breaker = Breaker(BreakerConfig(failures=1, cooldown_s=cooldown_s))
    breaker.failure()
    return breaker


@pytest.mark.parametrize("window", [None, 128_000], ids=["unknown", "larger"])
async def test_too_long_here_but_open_where_it_might_fit_is_not_the_prompts_fault(window: int | None) -> None:
    # The open target might have taken the prompt: a 400 would tell the caller to shorten a
    # prompt that fits once it is back, and OpenAI's clients do not retry a 400.
    big = target("big", window=window, breaker=opened())
    small = target("small", Step(ContextWindowExceeded("small: prompt is 9000 tokens", window=8_000)))
    with pytest.raises(AllTargetsFailed) as info:
        await execute([big, small], BODY, stream=False, request_id="r")
    assert (info.value.status, info.value.code) == (502, "all_targets_failed")
    assert info.value.message.startswith("all targets failed (big: circuit open; small: prompt is 9000 tokens")


@pytest.mark.parametrize("said", [8_000, None], ids=["window-in-the-error", "window-from-the-config"])
async def test_too_long_here_and_open_where_it_would_not_fit_either_is_context_length_exceeded(
    said: int | None,
) -> None:
    smaller = target("smaller", window=4_000, breaker=opened())  # first: open, and too small anyway
    # Bedrock's error does not say the window: the target's configured one stands in.
    small = target("small", Step(ContextWindowExceeded("small: prompt is 9000 tokens", window=said)), window=8_000)
    with pytest.raises(AllTargetsFailed) as info:
        await execute([smaller, small], BODY, stream=False, request_id="r")
    assert (info.value.status, info.value.code) == (400, "context_length_exceeded")
    assert info.value.message.startswith("the prompt does not fit the context window of any target")


@pytest.mark.parametrize(
    "busy", [Overloaded("local: the queue is full"), UpstreamStatusError(429, "slow down", retry_after=7)]
)
async def test_too_long_here_and_busy_there_is_busy_not_the_prompts_fault(busy: UpstreamError) -> None:
    # The busy target may take the prompt once it has room: answered as all-busy (503).
    small = target("small", Step(ContextWindowExceeded("small: prompt is 9000 tokens", window=8_000)))
    loaded = target("loaded", Step(busy))
    with pytest.raises(AllTargetsFailed) as info:
        await execute([small, loaded], BODY, stream=False, request_id="r")
    assert (info.value.status, info.value.code) == (503, "all_targets_failed")
    assert info.value.retry_after == (busy.retry_after or 1.0)
    assert info.value.message.startswith("all targets failed (small: prompt is 9000 tokens")


async def test_retryable_error_is_retried_then_falls_back() -> None:
    a = target("a", Step(UpstreamError("flaky")), attempts=3)
    b = target("b")
    result = await execute([a, b], BODY, stream=False, request_id="r")
    assert result.target is b and calls(a) == 3


# -- busy is not broken: a full queue or a 429 gives the breaker no verdict ----------------------


async def test_a_full_queue_falls_back_at_once_and_never_opens_the_breaker() -> None:
    local = target("local", Step(Overloaded("local: the queue is full")), attempts=3)
    backup = target("backup")
    for _ in range(12):  # well past the 5 consecutive failures that open a breaker
        result = await execute([local, backup], BODY, stream=False, request_id="r")
        assert result.target is backup
        assert [a.error_class for a in result.attempts] == ["overloaded", None]
    assert calls(local) == 12  # one try each: a retry would most likely find the queue full still
    assert local.breaker.state is State.CLOSED and local.breaker._consecutive == 0
    assert local.breaker.transitions == []


async def test_an_idle_target_that_was_overloaded_is_tried_again_at_once() -> None:
    local = target("local", *[Step(Overloaded("local: the queue is full"))] * 6, Step(text="idle again"))
    for _ in range(6):
        with pytest.raises(AllTargetsFailed) as info:
            await execute([local], BODY, stream=False, request_id="r")
        assert info.value.status == 503 and info.value.retry_after is not None
    result = await execute([local], BODY, stream=False, request_id="r")  # not "circuit open"
    assert result.target is local and result.attempts[-1].error_class is None


async def test_a_429_is_retried_but_counts_neither_way() -> None:
    clock = Clock()
    breaker = Breaker(BreakerConfig(failures=5), clock)
    down = target("a", Step(UpstreamConnectError("refused")), attempts=4, breaker=breaker)
    with pytest.raises(AllTargetsFailed):
        await execute([down], BODY, stream=False, request_id="r")
    assert breaker._consecutive == 4
    busy = Step(UpstreamStatusError(429, "slow down"))
    a = target("a", busy, attempts=2, breaker=breaker)
    for _ in range(5):
        with pytest.raises(AllTargetsFailed) as info:
            await execute([a], BODY, stream=False, request_id="r")
        assert info.value.status == 503
    assert calls(a) == 10  # retried at the same target, as its Retry-After allows
    # Neither a failure (the breaker is still closed) nor a success (the count stands).
    assert breaker.state is State.CLOSED and breaker._consecutive == 4


async def test_a_busy_half_open_probe_hands_the_probe_back() -> None:
    clock = Clock()
    breaker = Breaker(BreakerConfig(failures=1, cooldown_s=10), clock)
    breaker.failure()
    assert state(breaker) is State.OPEN
    clock.now = 11.0
    a = target("a", Step(Overloaded("local: the queue is full")), Step(), breaker=breaker)
    with pytest.raises(AllTargetsFailed):
        await execute([a], BODY, stream=False, request_id="r")
    assert state(breaker) is State.HALF_OPEN  # not reopened for another cool-down
    result = await execute([a], BODY, stream=False, request_id="r")  # the next call probes
    assert result.target is a and state(breaker) is State.CLOSED


@pytest.mark.parametrize(
    ("error", "consecutive"),
    [(UpstreamStatusError(429, "throttled"), 0), (UpstreamStatusError(500, "broken"), 1)],
    ids=["busy", "broken"],
)
async def test_a_stream_cut_by_a_busy_upstream_gives_no_verdict(error: UpstreamError, consecutive: int) -> None:
    a = target("a", Step(error, fail_after=1))
    result = await execute([a], BODY, stream=True, request_id="r")
    assert not isinstance(result.answer, Completion)
    with pytest.raises(UpstreamStatusError):
        async for _ in result.answer.chunks:
            pass
    assert a.breaker._consecutive == consecutive


# -- the message names each target once ----------------------------------------------------------


async def test_the_message_names_each_target_once_with_its_reason() -> None:
    # Providers name their target in their own messages (they are logged alone too).
    too_long = ContextWindowExceeded("local: prompt is 5000 tokens, the model's context is 2048", window=2048)
    local, small = target("local", Step(too_long)), target("small", window=1024)
    with pytest.raises(AllTargetsFailed) as info:
        await execute([local, small], BODY, stream=False, request_id="r")
    assert info.value.message == (
        "the prompt does not fit the context window of any target (local: prompt is 5000 tokens, the model's "
        "context is 2048; small: skipped: its context window of 1024 tokens is no larger than 2048)"
    )
    assert (info.value.status, info.value.code) == (400, "context_length_exceeded")

    full = target("local", Step(Overloaded("local: the queue is full: 1 running and 0 waiting (queue_size 0)")))
    down = target("remote", Step(UpstreamConnectError("connection refused")), attempts=3)
    with pytest.raises(AllTargetsFailed) as info:
        await execute([full, down], BODY, stream=False, request_id="r")
    assert info.value.message == (
        "all targets failed (local: the queue is full: 1 running and 0 waiting (queue_size 0); "
        "remote: connection refused (3 tries))"
    )
