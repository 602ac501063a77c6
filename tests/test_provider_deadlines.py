"""The HTTP providers share one deadline rule (``turnout.providers.transport``): ``total``
bounds the whole call from its start — head, body and every event of a stream — so a server
that answers slowly and then trickles its stream is cut ``total`` after the call began, by the
openai provider and by the Bedrock provider alike."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from turnout.config import validate
from turnout.errors import UpstreamTimeout
from turnout.providers.base import Call, Provider, Timeouts
from turnout.providers.registry import create

HEAD_S = 1.5  # the server's delay before the response head
CHUNK_S = 0.25  # then one event every quarter second
TOTAL_S = 2.0  # cut here, counted from the call's start (not from the head)
WORDS = tuple(f" w{i}" for i in range(40))  # ten seconds of trickle


def target(raw: dict[str, Any]) -> Any:
    return validate({"targets": {"t": raw}, "tasks": {"task": {"route": ["t"]}}}).targets["t"]


@pytest.fixture(params=["openai", "bedrock"])
async def slow(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Provider]:
    if request.param == "openai":
        from tests.fakes.upstream import FakeUpstream, Fault

        async with FakeUpstream() as fake:
            fake.reply = WORDS
            fake.fault = Fault(head_delay=HEAD_S, chunk_delay=CHUNK_S)
            p = create("t", target({"provider": "openai", "base_url": fake.base_url, "model": "served"}))
            yield p
            await p.aclose()
        return
    from tests.fakes.bedrock import FakeBedrock, Reply, use_fake_credentials
    from tests.fakes.bedrock import Fault as BedrockFault

    use_fake_credentials(monkeypatch)
    async with FakeBedrock() as fake:
        fake.reply = Reply(text=WORDS)
        fake.fault = BedrockFault(head_delay=HEAD_S, chunk_delay=CHUNK_S)
        raw = {"provider": "bedrock", "region": "us-east-1", "model": "deepseek.v3-v1:0", "endpoint_url": fake.url}
        p = create("t", target(raw))
        yield p
        await p.aclose()


def call(stream: bool) -> Call:
    body = {"model": "task", "messages": [{"role": "user", "content": "Count."}], "max_tokens": 64}
    return Call(body, stream, Timeouts(connect=2, ttft=5, total=TOTAL_S), "req-deadline")


async def test_a_trickling_stream_is_cut_total_seconds_after_the_call_began(slow: Provider) -> None:
    started = time.monotonic()
    stream = await slow.stream(call(True))
    received: list[object] = []
    with pytest.raises(UpstreamTimeout) as caught:
        await read_all(stream.chunks, received)
    elapsed = time.monotonic() - started
    assert caught.value.phase == "total"
    assert len(received) >= 1  # the stream had started: the cut is the total's, not the ttft's
    # Counted from the head instead, the cut would come at HEAD_S + TOTAL_S (3.5 s); the
    # margin is for a busy machine, whose timers fire late but never early.
    assert TOTAL_S - 0.01 <= elapsed < HEAD_S + TOTAL_S - 0.5
    assert slow.load().in_flight == 0  # the cut call was settled


async def read_all(chunks: Any, into: list[object]) -> None:
    async for chunk in chunks:
        into.append(chunk)


async def test_a_slow_head_within_ttft_but_past_total_is_a_total_timeout(slow: Provider) -> None:
    fast_total = Call(call(False).body, False, Timeouts(connect=2, ttft=5, total=HEAD_S / 2), "req-head")
    with pytest.raises(UpstreamTimeout) as caught:
        await slow.complete(fast_total)
    assert caught.value.phase == "total"
    assert slow.load().in_flight == 0
