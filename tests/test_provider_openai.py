"""OpenAIProvider against the fault-injecting fake upstream: the request it sends, the answers
it returns, replica choice and breakers, and how each upstream failure is translated."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest

from tests.fakes.upstream import FakeUpstream, Fault
from turnout.config import OpenAITarget
from turnout.errors import (
    BreakerOpen,
    ConfigError,
    ContextWindowExceeded,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from turnout.providers.base import Call, Load, ReplicaLoad, Stream, Timeouts, Usage
from turnout.providers.openai import OpenAIProvider
from turnout.routing.breaker import State

KEY = "sk-test-0123456789abcdef"
FAST = Timeouts(connect=1.0, ttft=1.0, total=2.0)


def target(*urls: str, **overrides: Any) -> OpenAITarget:
    raw: dict[str, Any] = {
        "provider": "openai",
        "base_urls": list(urls),
        "model": "served-model",
        "api_key": KEY,
        "breaker": {"failures": 1, "cooldown_s": 30},
        **overrides,
    }
    return OpenAITarget.model_validate(raw)


def chat(*, stream: bool = False, timeouts: Timeouts = FAST, **extra: Any) -> Call:
    body = {"model": "caller-alias", "messages": [{"role": "user", "content": "say hi"}], **extra}
    return Call(body=body, stream=stream, timeouts=timeouts, request_id="req-1")


@asynccontextmanager
async def provider_for(*urls: str, **overrides: Any) -> AsyncIterator[OpenAIProvider]:
    """A provider that is closed afterwards and must have freed every replica slot."""
    provider = OpenAIProvider("t1", target(*urls, **overrides))
    try:
        yield provider
        assert [r.in_flight for r in provider.replicas] == [0] * len(provider.replicas), "a slot leaked"
    finally:
        await provider.aclose()


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
async def fake2() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
async def provider(fake: FakeUpstream) -> AsyncIterator[OpenAIProvider]:
    async with provider_for(fake.base_url) as p:
        yield p


async def collect(stream: Stream) -> list[dict[str, Any]]:
    return [chunk async for chunk in stream.chunks]


async def consume(stream: Stream, into: list[dict[str, Any]]) -> None:
    async for chunk in stream.chunks:
        into.append(chunk)


async def attempt(provider: OpenAIProvider, call: Call) -> None:
    """One call to its end, streaming or not."""
    if call.stream:
        await collect(await provider.stream(call))
    else:
        await provider.complete(call)


async def abandon(stream: Stream) -> None:
    close = getattr(stream.chunks, "aclose", None)
    assert close is not None, "Stream.chunks must be closable"
    await close()


async def until(condition: Callable[[], bool], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A port whose accept queue is full, so a connect to it hangs in the handshake."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        try:
            yield port
        finally:
            for filler in fillers:
                filler.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- the request sent and the answer returned -----------------------------------------------


async def test_complete_returns_body_usage_and_replica(provider: OpenAIProvider) -> None:
    completion = await provider.complete(chat())
    assert completion.body["choices"][0]["message"]["content"] == "Hello, world"
    assert completion.usage == Usage(prompt_tokens=2, completion_tokens=3)
    assert completion.model_version == "served-model"  # the model the upstream reports
    assert completion.replica == "r0"


async def test_body_is_copied_with_the_target_model(fake: FakeUpstream, provider: OpenAIProvider) -> None:
    call = chat(stream_options={"include_usage": True}, temperature=0.2)
    before = copy.deepcopy(call.body)
    await provider.complete(call)
    assert call.body == before
    sent = fake.requests[0].body
    assert sent["model"] == "served-model"
    assert sent["stream"] is False
    assert "stream_options" not in sent  # servers reject it on non-streaming calls
    assert sent["messages"] == before["messages"]
    assert sent["temperature"] == 0.2


async def test_sends_bearer_key_and_configured_headers(fake: FakeUpstream) -> None:
    async with provider_for(fake.base_url, headers={"X-Team": "search"}) as p:
        await p.complete(chat())
    headers = fake.requests[0].headers
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["X-Team"] == "search"
    assert headers["Content-Type"] == "application/json"


async def test_no_authorization_header_without_a_key(fake: FakeUpstream) -> None:
    async with provider_for(fake.base_url, api_key=None) as p:
        await p.complete(chat())
    assert "Authorization" not in fake.requests[0].headers


async def test_configured_model_version_wins(fake: FakeUpstream) -> None:
    async with provider_for(fake.base_url, model_version="served-model@2025-01") as p:
        assert (await p.complete(chat())).model_version == "served-model@2025-01"
        stream = await p.stream(chat(stream=True))
        assert stream.model_version == "served-model@2025-01"
        await collect(stream)


async def test_stream_yields_every_chunk_then_usage(provider: OpenAIProvider) -> None:
    stream = await provider.stream(chat(stream=True))
    assert stream.replica == "r0"
    assert stream.model_version == "served-model"
    chunks = await collect(stream)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello, world"
    assert chunks[-1]["choices"] == []
    assert Usage.from_openai(chunks[-1]["usage"]) == Usage(2, 3)


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        (None, {"include_usage": True}),
        ({"include_usage": False}, {"include_usage": True}),
        ({"continuous_usage_stats": True}, {"continuous_usage_stats": True, "include_usage": True}),
    ],
)
async def test_stream_always_asks_for_usage(
    fake: FakeUpstream, provider: OpenAIProvider, given: dict[str, Any] | None, sent: dict[str, Any]
) -> None:
    call = chat(stream=True) if given is None else chat(stream=True, stream_options=given)
    before = copy.deepcopy(call.body)
    await collect(await provider.stream(call))
    assert fake.requests[0].body["stream_options"] == sent
    assert fake.requests[0].body["stream"] is True
    assert fake.requests[0].body["model"] == "served-model"
    assert call.body == before


PREFILL = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "The colour is"}]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_prefill_is_continued_where_the_target_says_the_server_can(fake: FakeUpstream, stream: bool) -> None:
    # vLLM and SGLang start a new turn after a final assistant message unless asked to go on.
    async with provider_for(fake.base_url, continue_final_message=True) as p:
        call = chat(stream=stream, messages=PREFILL)
        before = copy.deepcopy(call.body)
        if stream:
            await collect(await p.stream(call))
        else:
            await p.complete(call)
        await p.complete(chat())  # a conversation ending with the user's turn asks for nothing
        await p.complete(chat(messages=PREFILL, continue_final_message=False))  # the caller's own choice
    prefilled, plain, own = (r.body for r in fake.requests)
    assert prefilled["continue_final_message"] is True
    assert prefilled["add_generation_prompt"] is False
    assert call.body == before
    assert "continue_final_message" not in plain and "add_generation_prompt" not in plain
    assert own["continue_final_message"] is False
    assert own["add_generation_prompt"] is False


async def test_a_prefill_goes_as_it_came_by_default(fake: FakeUpstream, provider: OpenAIProvider) -> None:
    await provider.complete(chat(messages=PREFILL))  # OpenAI itself refuses the vLLM fields
    sent = fake.requests[0].body
    assert "continue_final_message" not in sent and "add_generation_prompt" not in sent
    assert sent["messages"] == PREFILL


async def test_stream_returns_at_the_first_chunk(fake: FakeUpstream, provider: OpenAIProvider) -> None:
    fake.fault = Fault(chunk_delay=0.1)
    stream = await provider.stream(chat(stream=True))
    assert fake.in_flight == 1  # the upstream is still sending
    assert len(await collect(stream)) == 6  # role, three pieces, finish, usage


async def test_connections_are_pooled(fake: FakeUpstream, provider: OpenAIProvider) -> None:
    # Streams ride aiohttp's pool, answers the lean client's (turnout.providers.h1): one
    # connection each, reused call after call.
    for _ in range(3):
        await collect(await provider.stream(chat(stream=True)))
    streamed = {r.peer for r in fake.requests}
    for _ in range(3):
        await provider.complete(chat())
    assert len(streamed) == 1
    assert len({r.peer for r in fake.requests} - streamed) == 1


# -- SSE parsing ----------------------------------------------------------------------------


async def test_sse_fields_comments_crlf_and_multiline_data(fake: FakeUpstream, provider: OpenAIProvider) -> None:
    fake.fault = Fault(
        "raw",
        raw=(
            ': ping\r\n\r\ndata:{"id": "a", "choices": []}\r\n\r\n'
            'event: message\nid: 7\ndata: {"id":\ndata: "b", "choices": []}\n\n'
            'retry: 10\n\ndata: [DONE]\n\ndata: {"id": "after-done"}\n\n'
        ),
    )
    chunks = await collect(await provider.stream(chat(stream=True)))
    assert [c["id"] for c in chunks] == ["a", "b"]


async def test_sse_body_ending_without_done_ends_the_stream(fake: FakeUpstream, provider: OpenAIProvider) -> None:
    fake.fault = Fault(
        "raw",
        raw='data: {"id": "a", "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": null}]}\n\n'
        'data: {"id": "b", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n',
    )
    assert [c["id"] for c in await collect(await provider.stream(chat(stream=True)))] == ["a", "b"]


@pytest.mark.parametrize(
    "raw",
    [
        'data: {"id": "a", "choices": [{"index": 0, "delta": {"content": "hel"}, "finish_reason": null}]}\n\n',
        'data: {"id": "a", "choices": []}\n\n',
        'data: {"id": "a", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}, '
        '{"index": 1, "delta": {"content": "b"}, "finish_reason": null}]}\n\n',
    ],
    ids=["no-finish", "no-choices", "one-of-two-unfinished"],
)
async def test_sse_body_ending_without_done_before_every_choice_finished_was_cut(
    fake: FakeUpstream, provider: OpenAIProvider, raw: str
) -> None:
    """A body that ends (properly framed, or framed by the connection's end) with neither
    [DONE] nor a finish_reason for every choice is a cut stream: it ended as a complete 200
    the caller could not tell from a finished answer."""
    fake.fault = Fault("raw", raw=raw)
    stream = await provider.stream(chat(stream=True))
    with pytest.raises(UpstreamProtocolError, match=r"without \[DONE\] or a finish_reason"):
        await collect(stream)


@pytest.mark.parametrize(
    ("event", "words"),
    [
        ('{"choices": [1]}', "choice is not an object"),
        ('{"choices": {"index": 0}}', "choices are not a list"),
        ('{"choices": [{"index": 0, "delta": "hi"}]}', "delta is not an object"),
    ],
)
async def test_a_stream_chunk_a_client_cannot_read_is_a_protocol_error(
    fake: FakeUpstream, provider: OpenAIProvider, event: str, words: str
) -> None:
    """Relayed as sent, such a chunk crashed the official SDK (``'int' object has no attribute
    'index'``) and the translating doors, and the row said 200."""
    ok = '{"id": "a", "choices": [{"index": 0, "delta": {"content": "hel"}, "finish_reason": null}]}'
    fake.fault = Fault("raw", raw=f"data: {ok}\n\ndata: {event}\n\ndata: [DONE]\n\n")
    stream = await provider.stream(chat(stream=True))
    with pytest.raises(UpstreamProtocolError, match=words):
        await collect(stream)


async def test_a_null_or_missing_delta_is_read_as_an_empty_one(fake: FakeUpstream, provider: OpenAIProvider) -> None:
    fake.fault = Fault(
        "raw",
        raw='data: {"id": "a", "choices": [{"index": 0, "delta": null, "finish_reason": null}]}\n\n'
        'data: {"id": "b", "choices": [{"index": 0, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n',
    )
    chunks = await collect(await provider.stream(chat(stream=True)))
    assert [c["choices"][0]["delta"] for c in chunks] == [{}, {}]


@pytest.mark.parametrize("data", ['{"message": "engine died"}', "engine died"], ids=["json", "text"])
async def test_an_error_event_by_its_event_field_is_an_error(
    fake: FakeUpstream, provider: OpenAIProvider, data: str
) -> None:
    """``event: error`` with a body that says nothing of an error: it was relayed as a chunk
    and the stream then ended as a complete 200."""
    ok = '{"id": "a", "choices": [{"index": 0, "delta": {"content": "hel"}, "finish_reason": null}]}'
    fake.fault = Fault("raw", raw=f"data: {ok}\n\nevent: error\ndata: {data}\n\ndata: [DONE]\n\n")
    stream = await provider.stream(chat(stream=True))
    with pytest.raises(UpstreamStatusError, match="engine died") as caught:
        await collect(stream)
    assert caught.value.upstream_status == 500


async def test_sse_stream_without_chunks_is_a_protocol_error(fake: FakeUpstream, provider: OpenAIProvider) -> None:
    fake.fault = Fault("raw", raw="data: [DONE]\n\n")
    with pytest.raises(UpstreamProtocolError, match="before its first chunk"):
        await provider.stream(chat(stream=True))


async def test_flat_error_event_mid_stream(fake: FakeUpstream, provider: OpenAIProvider) -> None:
    fake.fault = Fault("raw", raw='data: {"id": "a"}\n\ndata: {"object": "error", "message": "oom", "code": 503}\n\n')
    stream = await provider.stream(chat(stream=True))
    with pytest.raises(UpstreamStatusError, match="oom") as caught:
        await collect(stream)
    assert caught.value.upstream_status == 503


# -- replicas and breakers ------------------------------------------------------------------


async def test_replica_with_fewest_calls_in_flight_is_chosen(fake: FakeUpstream, fake2: FakeUpstream) -> None:
    fake.fault = Fault(head_delay=0.5)
    async with provider_for(fake.base_url, fake2.base_url) as p:
        slow = asyncio.create_task(p.complete(chat()))
        await until(lambda: fake.in_flight == 1)
        assert [r.in_flight for r in p.replicas] == [1, 0]
        quick = [await p.complete(chat()) for _ in range(3)]
        assert [c.replica for c in quick] == ["r1", "r1", "r1"]
        assert (await slow).replica == "r0"
    assert (len(fake.requests), len(fake2.requests)) == (1, 3)


async def test_load_counts_calls_in_flight_on_each_replica(fake: FakeUpstream, fake2: FakeUpstream) -> None:
    fake.fault = Fault("hang")
    fake2.fault = Fault(chunk_delay=0.05)
    async with provider_for(fake.base_url, fake2.base_url) as p:
        idle = (ReplicaLoad("r0", 0, State.CLOSED), ReplicaLoad("r1", 0, State.CLOSED))
        assert p.load() == Load(in_flight=0, replicas=idle)
        held = asyncio.create_task(p.complete(chat(timeouts=Timeouts())))
        await until(lambda: fake.in_flight == 1)
        stream = await p.stream(chat(stream=True))  # to r1: fewer calls in flight
        busy = (ReplicaLoad("r0", 1, State.CLOSED), ReplicaLoad("r1", 1, State.CLOSED))
        assert p.load() == Load(in_flight=2, replicas=busy)
        await abandon(stream)
        held.cancel()
        with pytest.raises(asyncio.CancelledError):
            await held
        assert p.load() == Load(in_flight=0, replicas=idle)


async def test_load_shows_each_replicas_breaker(fake: FakeUpstream, provider: OpenAIProvider) -> None:
    fake.fault = Fault("status", status=500)
    with pytest.raises(UpstreamStatusError):
        await provider.complete(chat())
    assert provider.load().replicas == (ReplicaLoad("r0", 0, State.OPEN),)  # one failure opens it here


async def test_concurrent_calls_spread_over_replicas(fake: FakeUpstream, fake2: FakeUpstream) -> None:
    fake.fault = Fault(head_delay=0.2)
    fake2.fault = Fault(head_delay=0.2)
    async with provider_for(fake.base_url, fake2.base_url) as p:
        done = await asyncio.gather(*(p.complete(chat()) for _ in range(6)))
    assert sorted(c.replica for c in done) == ["r0"] * 3 + ["r1"] * 3
    assert fake.max_in_flight == fake2.max_in_flight == 3


async def test_ties_rotate(fake: FakeUpstream, fake2: FakeUpstream) -> None:
    async with provider_for(fake.base_url, fake2.base_url) as p:
        replicas = [(await p.complete(chat())).replica for _ in range(4)]
    assert replicas == ["r0", "r1", "r0", "r1"]


async def test_replica_with_open_breaker_is_skipped(fake: FakeUpstream, fake2: FakeUpstream) -> None:
    fake.fault = Fault("status", status=500, times=1)
    async with provider_for(fake.base_url, fake2.base_url) as p:
        with pytest.raises(UpstreamStatusError):
            await p.complete(chat())
        assert p.replicas[0].breaker.state is State.OPEN
        assert [(await p.complete(chat())).replica for _ in range(3)] == ["r1"] * 3
    assert len(fake.requests) == 1


async def test_every_breaker_open_raises_breaker_open(fake: FakeUpstream, fake2: FakeUpstream) -> None:
    fake.fault = fake2.fault = Fault("status", status=503)
    async with provider_for(fake.base_url, fake2.base_url) as p:
        for _ in range(2):
            with pytest.raises(UpstreamStatusError):
                await p.complete(chat())
        with pytest.raises(BreakerOpen) as caught:
            await p.stream(chat(stream=True))
    assert caught.value.retry_after is not None
    assert 25 < caught.value.retry_after <= 30
    assert (len(fake.requests), len(fake2.requests)) == (1, 1)


async def test_a_callers_4xx_does_not_trip_the_breaker(fake: FakeUpstream, provider: OpenAIProvider) -> None:
    fake.fault = Fault("status", status=400, message="context too long", times=1)
    with pytest.raises(UpstreamStatusError, match="context too long") as caught:
        await provider.complete(chat())
    assert not caught.value.retryable
    assert provider.replicas[0].breaker.state is State.CLOSED
    assert (await provider.complete(chat())).replica == "r0"


@pytest.mark.parametrize("status", [401, 404, 302])
async def test_a_replica_that_refuses_the_gateways_own_call_counts_against_its_breaker(
    fake: FakeUpstream, fake2: FakeUpstream, status: int
) -> None:
    """A 401 (its key), 404 (no such model or path) or 3xx (moved) is the replica's
    configuration, not the caller's doing: the target's breaker counts it, and so must the
    replica's, or the balancer keeps choosing the one replica that cannot answer."""
    fake.fault = Fault("status", status=status, message="no such model")
    async with provider_for(fake.base_url, fake2.base_url) as p:  # one failure opens a breaker
        for _ in range(2):  # the tie-break rotates: r0 is one of the first two chosen
            with contextlib.suppress(UpstreamStatusError):
                await p.complete(chat())
        assert len(fake.requests) == 1
        assert p.replicas[0].breaker.state is State.OPEN
        assert [(await p.complete(chat())).replica for _ in range(3)] == ["r1"] * 3


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_a_429_leaves_the_breaker_alone(fake: FakeUpstream, provider: OpenAIProvider, stream: bool) -> None:
    """Rate limited is busy, not broken: no verdict (the breaker opens after one failure here)."""
    fake.fault = Fault("status", status=429, message="slow down", times=3)
    for _ in range(3):
        with pytest.raises(UpstreamStatusError) as caught:
            await attempt(provider, chat(stream=stream))
        assert caught.value.busy and caught.value.upstream_status == 429
    assert provider.replicas[0].breaker.state is State.CLOSED
    assert provider.replicas[0].breaker._consecutive == 0
    await attempt(provider, chat(stream=stream))  # still chosen: it takes calls again at once


@pytest.mark.parametrize(
    ("retry_after", "message", "busy"),
    [
        (2, "unavailable", True),  # "come back in 2 s": load shed
        (None, "server busy, please try again.  maximum pending requests exceeded", True),  # Ollama's full queue
        (None, "The engine is currently overloaded, please try again later", True),
        (None, "Loading model", False),  # not ready: counted, the breaker opens
    ],
)
async def test_a_503_that_sheds_load_leaves_the_breaker_alone(
    fake: FakeUpstream, provider: OpenAIProvider, retry_after: int | None, message: str, busy: bool
) -> None:
    """Ollama answers 503 when its queue is full: a replica that is busy, not broken, whose
    breaker opened under load and refused the traffic it could have taken a moment later."""
    fake.fault = Fault("status", status=503, message=message, retry_after=retry_after, times=3)
    with pytest.raises(UpstreamStatusError) as caught:
        await attempt(provider, chat())
    assert caught.value.busy is busy and caught.value.upstream_status == 503
    assert (provider.replicas[0].breaker.state is State.CLOSED) is busy


async def test_a_timeout_trips_the_breaker(fake: FakeUpstream, provider: OpenAIProvider) -> None:
    fake.fault = Fault("hang")
    with pytest.raises(UpstreamTimeout):
        await provider.complete(chat(timeouts=Timeouts(ttft=0.1)))
    assert provider.replicas[0].breaker.state is State.OPEN


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("fault", "retryable", "retry_after"),
    [
        (Fault("status", status=500, message="engine dead"), True, None),
        (Fault("status", status=503, message="engine dead", flat=True), True, None),
        (Fault("status", status=429, message="engine dead", retry_after=3), True, 3.0),
        (Fault("status", status=404, message="engine dead"), False, None),
    ],
)
async def test_status_errors(
    fake: FakeUpstream,
    provider: OpenAIProvider,
    stream: bool,
    fault: Fault,
    retryable: bool,
    retry_after: float | None,
) -> None:
    fake.fault = fault
    with pytest.raises(UpstreamStatusError) as caught:
        await attempt(provider, chat(stream=stream))
    err = caught.value
    assert err.upstream_status == fault.status
    assert err.retryable is retryable
    assert err.retry_after == retry_after
    assert err.message == f"HTTP {fault.status}: engine dead (r0)"


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_key_is_said_in_the_gateways_words_and_sent_elsewhere(
    fake: FakeUpstream, provider: OpenAIProvider, status: int
) -> None:
    """An upstream's 401 text may quote the gateway's key in part (OpenAI's "sk-ab***cdef"),
    which no scrub of the whole key catches: its words are not passed on."""
    fake.fault = Fault("status", status=status, message="Incorrect API key provided: sk-ab***********wxyz")
    with pytest.raises(UpstreamStatusError) as caught:
        await attempt(provider, chat())
    err = caught.value
    assert (err.retryable, err.fallback, err.busy) == (False, True, False)
    assert "wxyz" not in err.message and "gateway's credentials" in err.message


async def test_long_error_detail_is_shortened(fake: FakeUpstream, provider: OpenAIProvider) -> None:
    fake.fault = Fault("status", status=500, message="word " * 500)
    with pytest.raises(UpstreamStatusError) as caught:
        await provider.complete(chat())
    assert len(caught.value.message) < 230


@pytest.mark.parametrize("stream", [False, True])
async def test_reset_is_a_connect_error(fake: FakeUpstream, provider: OpenAIProvider, stream: bool) -> None:
    fake.fault = Fault("reset")
    with pytest.raises(UpstreamConnectError, match=r"^r0: "):
        await attempt(provider, chat(stream=stream))


async def test_refused_is_a_connect_error() -> None:
    async with provider_for(f"http://127.0.0.1:{free_port()}/v1") as p:
        with pytest.raises(UpstreamConnectError, match="cannot connect"):
            await p.complete(chat())


async def test_slow_handshake_is_a_connect_timeout(unanswered_port: int) -> None:
    async with provider_for(f"http://127.0.0.1:{unanswered_port}/v1") as p:
        with pytest.raises(UpstreamTimeout) as caught:
            await p.complete(chat(timeouts=Timeouts(connect=0.2, ttft=5.0)))
    assert caught.value.phase == "connect"


@asynccontextmanager
async def raw_upstream(answer: bytes) -> AsyncIterator[str]:
    """A server that reads one request and answers exactly ``answer``'s bytes, then hangs up."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")) if k.lower() == b"content-length"
        )
        await reader.readexactly(length)
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    finally:
        server.close()


_SSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (_SSE + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", "chunk size"),
        (
            _SSE + b"Content-Encoding: zstd\r\nContent-Length: 8\r\n\r\n(\xb5/\xfdjunk",
            "content-encoding",
        ),
        (
            _SSE + b"Content-Encoding: gzip\r\nContent-Length: 8\r\n\r\n\x1f\x8b\x08junk",
            "compressed body",
        ),
        (_SSE + b"X-Flood: y\r\n" * 200 + b"\r\n", "too many headers"),
    ],
    ids=["chunk-size", "unknown-encoding", "bad-gzip", "headers"],
)
async def test_a_stream_aiohttp_cannot_parse_says_what_was_wrong(answer: bytes, words: str) -> None:
    """Its message was the exception's type alone ("r0: ClientResponseError"), and a body that
    would not decompress was "connection lost mid-response", a connect error."""
    async with raw_upstream(answer) as url, provider_for(url) as p:
        with pytest.raises(UpstreamProtocolError, match=f"(?i)r0: invalid .*{words}") as caught:
            await attempt(p, chat(stream=True))
    assert "127.0.0.1" not in caught.value.message and "\n" not in caught.value.message


async def test_a_stream_event_of_many_data_lines_is_held_to_the_size_of_one_event() -> None:
    """Seen: the bound on a stream event held each line, not the event: one of many ``data:``
    lines (JSON whitespace, never a blank line) grew without bound, copied whole at each line."""
    first = b'data: {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "hi"}}]\n'
    padding = (b"data: " + b" " * 65536 + b"\n") * 160  # 10 MiB, each line well under the bound
    answer = _SSE + b"\r\n" + first + padding + b"data: }\n\n" + b"data: [DONE]\n\n"
    async with raw_upstream(answer) as url, provider_for(url) as p:
        with pytest.raises(UpstreamProtocolError, match="r0: a stream event is over 8 MiB"):
            await attempt(p, chat(stream=True))


async def test_a_stream_that_begins_with_a_byte_order_mark_keeps_its_first_event() -> None:
    """Seen: the first line read "\\ufeffdata: ..." and was skipped as an unknown field, so the
    answer lost its first words without a word said."""
    events = [
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "Hello"}}]},
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    body = b"\xef\xbb\xbf" + b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    async with raw_upstream(_SSE + b"\r\n" + body) as url, provider_for(url) as p:
        chunks = await collect(await p.stream(chat(stream=True)))
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["Hello", None]


@pytest.mark.parametrize("stream", [False, True])
async def test_hang_is_a_ttft_timeout(fake: FakeUpstream, provider: OpenAIProvider, stream: bool) -> None:
    fake.fault = Fault("hang")
    with pytest.raises(UpstreamTimeout) as caught:
        await attempt(provider, chat(stream=stream, timeouts=Timeouts(ttft=0.2)))
    assert caught.value.phase == "ttft"
    assert caught.value.error_class == "timeout_ttft"
    await until(lambda: fake.disconnects == 1)  # the upstream saw us hang up


async def test_slow_first_chunk_is_a_ttft_timeout(fake: FakeUpstream, provider: OpenAIProvider) -> None:
    fake.fault = Fault(first_chunk_delay=1.0)
    with pytest.raises(UpstreamTimeout) as caught:
        await provider.stream(chat(stream=True, timeouts=Timeouts(ttft=0.2)))
    assert caught.value.phase == "ttft"


async def test_total_shorter_than_ttft_is_a_total_timeout(fake: FakeUpstream, provider: OpenAIProvider) -> None:
    fake.fault = Fault(head_delay=1.0)
    with pytest.raises(UpstreamTimeout) as caught:
        await provider.complete(chat(timeouts=Timeouts(ttft=5.0, total=0.2)))
    assert caught.value.phase == "total"


async def test_total_timeout_mid_stream_raises_from_the_iterator(fake: FakeUpstream, provider: OpenAIProvider) -> None:
    fake.fault = Fault(chunk_delay=0.3)
    stream = await provider.stream(chat(stream=True, timeouts=Timeouts(ttft=1.0, total=0.5)))
    received: list[dict[str, Any]] = []
    with pytest.raises(UpstreamTimeout) as caught:
        await consume(stream, received)
    assert caught.value.phase == "total"
    assert 1 <= len(received) < 6
    assert provider.replicas[0].breaker.state is State.OPEN


@pytest.mark.parametrize("stream", [False, True])
async def test_malformed_json_is_a_protocol_error(fake: FakeUpstream, provider: OpenAIProvider, stream: bool) -> None:
    fake.fault = Fault("malformed")
    with pytest.raises(UpstreamProtocolError, match="not valid JSON"):
        await attempt(provider, chat(stream=stream))


async def test_body_cut_short_is_a_connect_error(fake: FakeUpstream, provider: OpenAIProvider) -> None:
    fake.fault = Fault("cut")
    with pytest.raises(UpstreamConnectError, match="mid-response"):
        await provider.complete(chat())


async def test_stream_cut_midway_raises_from_the_iterator(fake: FakeUpstream, provider: OpenAIProvider) -> None:
    fake.fault = Fault("cut")
    stream = await provider.stream(chat(stream=True))
    received: list[dict[str, Any]] = []
    with pytest.raises(UpstreamConnectError, match="mid-response"):
        await consume(stream, received)
    assert len(received) == 2
    assert provider.replicas[0].breaker.state is State.OPEN


async def test_error_event_mid_stream_raises_from_the_iterator(fake: FakeUpstream, provider: OpenAIProvider) -> None:
    fake.fault = Fault("error_event", status=500, message="engine crashed")
    stream = await provider.stream(chat(stream=True))
    with pytest.raises(UpstreamStatusError, match="engine crashed") as caught:
        await collect(stream)
    assert caught.value.upstream_status == 500
    assert caught.value.retryable


LEAKY_FAULTS = [
    Fault("status", status=401, message=f"Incorrect API key provided: {KEY}"),
    Fault("reset"),
    Fault("cut"),
    Fault("malformed"),
    Fault("hang"),
]


@pytest.mark.parametrize(
    ("fault", "stream"),
    [(f, False) for f in LEAKY_FAULTS]
    + [(f, True) for f in [*LEAKY_FAULTS, Fault("error_event", message=f"bad key {KEY}")]],
)
async def test_errors_never_carry_the_key(
    fake: FakeUpstream, provider: OpenAIProvider, stream: bool, fault: Fault
) -> None:
    fake.fault = fault
    with pytest.raises(UpstreamError) as caught:
        await attempt(provider, chat(stream=stream, timeouts=Timeouts(ttft=0.2)))
    assert KEY not in str(caught.value)
    assert KEY not in repr(caught.value)
    assert KEY not in str(caught.value.to_openai())


@pytest.mark.parametrize("mode", ["status", "refused"])
async def test_errors_never_carry_url_credentials(fake: FakeUpstream, mode: str) -> None:
    fake.fault = Fault("status", status=500, message="nope")
    port = fake.port if mode == "status" else free_port()
    async with provider_for(f"http://admin:hunter2@127.0.0.1:{port}/v1", api_key=None) as p:
        with pytest.raises(UpstreamError) as caught:
            await p.complete(chat())
        assert "hunter2" not in str(caught.value)
        assert "hunter2" not in repr(p.replicas)


def test_credentials_in_url_and_key_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="not both"):
        OpenAIProvider("t1", target("http://admin:hunter2@127.0.0.1:9/v1"))


# -- slots, cancellation and abandoned streams ----------------------------------------------


async def test_abandoned_stream_frees_its_slot_and_stops_the_upstream(
    fake: FakeUpstream, provider: OpenAIProvider
) -> None:
    fake.fault = Fault(chunk_delay=0.2)
    stream = await provider.stream(chat(stream=True))
    assert provider.replicas[0].in_flight == 1
    assert (await anext(stream.chunks))["choices"][0]["delta"]["role"] == "assistant"
    await abandon(stream)
    await abandon(stream)  # twice is harmless
    assert provider.replicas[0].in_flight == 0
    assert provider.replicas[0].breaker.state is State.CLOSED
    await until(lambda: fake.disconnects == 1)
    with pytest.raises(StopAsyncIteration):
        await anext(stream.chunks)


async def test_stream_abandoned_before_reading_frees_its_slot(fake: FakeUpstream, provider: OpenAIProvider) -> None:
    fake.fault = Fault(chunk_delay=0.2)
    await abandon(await provider.stream(chat(stream=True)))
    assert provider.replicas[0].in_flight == 0
    await until(lambda: fake.disconnects == 1)


async def test_cancelled_call_frees_its_slot_without_a_verdict(fake: FakeUpstream, provider: OpenAIProvider) -> None:
    fake.fault = Fault(head_delay=5.0)
    task = asyncio.create_task(provider.complete(chat(timeouts=Timeouts())))
    await until(lambda: fake.in_flight == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert provider.replicas[0].in_flight == 0
    assert provider.replicas[0].breaker.state is State.CLOSED  # failures=1 would have opened it


async def test_closing_a_finished_stream_is_harmless(provider: OpenAIProvider) -> None:
    stream = await provider.stream(chat(stream=True))
    await collect(stream)
    await abandon(stream)
    assert provider.replicas[0].in_flight == 0


# -- health and lifecycle -------------------------------------------------------------------


async def test_health_ok(fake: FakeUpstream, provider: OpenAIProvider) -> None:
    assert (await provider.health()).ok
    assert fake.requests[0].path == "/v1/models"
    assert fake.requests[0].headers["Authorization"] == f"Bearer {KEY}"


async def test_health_ok_while_one_replica_answers(fake: FakeUpstream, fake2: FakeUpstream) -> None:
    fake2.fault = Fault("status", status=503)
    async with provider_for(fake.base_url, fake2.base_url) as p:
        health = await p.health()
    assert health.ok
    assert health.detail == "failing: r1 (HTTP 503)"


async def test_health_fails_when_no_replica_answers(fake: FakeUpstream) -> None:
    fake.fault = Fault("hang")
    urls = (fake.base_url, f"http://127.0.0.1:{free_port()}/v1")
    async with provider_for(*urls, timeouts={"ttft": 0.2}) as p:
        health = await p.health()
    assert not health.ok
    assert "r0 (timeout)" in health.detail
    assert "r1 (cannot connect" in health.detail


async def test_aclose_twice_is_harmless(provider: OpenAIProvider) -> None:
    await provider.complete(chat())
    await provider.aclose()
    await provider.aclose()


# -- the fake's control surface, for end-to-end tests ---------------------------------------


async def test_fake_faults_switch_over_http(fake: FakeUpstream) -> None:
    async with aiohttp.ClientSession() as http, provider_for(fake.base_url, breaker={"failures": 5}) as provider:
        control = f"http://127.0.0.1:{fake.port}"
        async with http.post(f"{control}/_fault", json={"mode": "status", "status": 502, "times": 1}) as resp:
            assert resp.status == 200
        with pytest.raises(UpstreamStatusError):
            await provider.complete(chat())
        assert (await provider.complete(chat())).replica == "r0"
        async with http.get(f"{control}/_requests") as resp:
            seen = await resp.json()
        assert [r["body"]["model"] for r in seen] == ["served-model", "served-model"]
        async with http.post(f"{control}/_fault", json={"mode": "nonsense"}) as resp:
            assert resp.status == 400
        async with http.delete(f"{control}/_requests") as resp:
            assert resp.status == 200
    assert fake.requests == []


@pytest.mark.parametrize(
    ("message", "window"),
    [
        ("This model's maximum context length is 32768 tokens. However, you requested 40000 tokens.", 32768),
        ("the request exceeds the available context size, try increasing it", None),
    ],
)
async def test_a_prompt_too_long_for_the_server_is_context_window_exceeded(
    fake: FakeUpstream, provider: OpenAIProvider, message: str, window: int | None
) -> None:
    fake.fault = Fault("status", status=400, message=message)
    with pytest.raises(ContextWindowExceeded) as caught:
        await provider.complete(chat())
    assert caught.value.window == window
    assert not caught.value.retryable and caught.value.fallback


DEEP = '{"id": "x", "choices": [], "extra": ' + "[" * 300 + "]" * 300 + "}"


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ('{"id": "x"}', "no choices"),
        ('{"id": "x", "choices": null}', "no choices"),
        ('{"id": "x", "choices": []}', "no choices"),
        ('{"id": "x", "choices": [1]}', "no message object"),
        ('{"id": "x", "choices": [{"index": 0, "message": null, "finish_reason": "stop"}]}', "no message object"),
    ],
)
async def test_a_200_that_is_no_chat_completion_is_a_protocol_error(
    fake: FakeUpstream, provider: OpenAIProvider, raw: str, words: str
) -> None:
    """Relayed as a 200, each crashed the official SDK (``'NoneType' object is not
    subscriptable``) and the row said 200, priced."""
    fake.fault = Fault("raw", raw=raw)
    with pytest.raises(UpstreamProtocolError, match=words):
        await provider.complete(chat())


@pytest.mark.parametrize(
    "raw",
    ['{"error": {"message": "model overloaded", "code": 503}}', '{"object": "error", "message": "model overloaded"}'],
)
async def test_an_error_sent_with_a_200_is_the_upstreams_error(
    fake: FakeUpstream, provider: OpenAIProvider, raw: str
) -> None:
    fake.fault = Fault("raw", raw=raw)
    with pytest.raises(UpstreamStatusError, match="model overloaded") as caught:
        await provider.complete(chat())
    assert caught.value.retryable and provider.replicas[0].breaker.state is State.OPEN


async def test_an_answer_nested_past_what_the_gateway_can_write_is_a_protocol_error(
    fake: FakeUpstream, provider: OpenAIProvider
) -> None:
    # orjson reads 1024 levels but writes 254: relayed as is, this answer would be a 500 after
    # the upstream was paid. It is the upstream's fault, and says so.
    fake.fault = Fault("raw", raw=DEEP)
    with pytest.raises(UpstreamProtocolError, match="nests too deep"):
        await provider.complete(chat())


async def test_a_stream_event_nested_too_deep_is_a_protocol_error(fake: FakeUpstream, provider: OpenAIProvider) -> None:
    fake.fault = Fault("raw", raw=f"data: {DEEP}\n\n")
    with pytest.raises(UpstreamProtocolError, match="nests too deep"):
        await provider.stream(chat(stream=True))


async def test_an_answer_deep_enough_to_be_checked_but_writable_passes(
    fake: FakeUpstream, provider: OpenAIProvider
) -> None:
    choice = '{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}'
    fake.fault = Fault("raw", raw='{"id": "x", "choices": [' + choice + '], "extra": ' + "[" * 240 + "]" * 240 + "}")
    assert (await provider.complete(chat())).body["id"] == "x"
