"""The provider protocol: four methods, one module per provider, a registry by name.

A provider owns its transport (pooled HTTP client, worker thread, ...) and translates vendor
errors into ``turnout.errors.UpstreamError`` subclasses at its edge. It never retries: the
attempt loop in ``turnout.routing.attempts`` owns retries, breakers and fallback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

from turnout.routing.breaker import State


@dataclass(slots=True)
class Timeouts:
    """Per-phase deadlines in seconds: TCP connect, time to first token (or to the response
    head for non-streaming calls), and the whole call."""

    connect: float = 5.0
    ttft: float = 30.0
    total: float = 120.0


@dataclass(slots=True)
class Call:
    """One attempt's input. ``body`` is the caller's OpenAI chat body; the provider sets the
    target's own model name on its copy and must not mutate this dict."""

    body: dict[str, Any]
    stream: bool
    timeouts: Timeouts
    request_id: str


@dataclass(slots=True)
class Usage:
    """What an answer used. ``prompt_tokens`` counts every input token, cached or not (OpenAI's
    convention); the details are what the upstream reported of them, 0 where it said nothing:
    ``cached_tokens`` read from its prompt cache, ``cache_write_tokens`` written to it (Bedrock's
    cacheWrite, as ``cache_creation_input_tokens``), ``reasoning_tokens`` of the completion."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @classmethod
    def from_openai(cls, raw: Any) -> Usage | None:
        """The upstream's usage object, read defensively: without a ``prompt_tokens`` count
        (``{}``, only ``total_tokens``), or with a count that is negative or not a number, it is
        None, and the gateway counts the answer itself: an upstream cannot make an answer free,
        or credit a budget, by what it reports. ``completion_tokens`` left out is 0 (embedding
        servers report only the prompt)."""
        if not isinstance(raw, dict):
            return None
        prompt_tokens = _count(raw.get("prompt_tokens"))
        completion = raw.get("completion_tokens")
        completion_tokens = 0 if completion is None else _count(completion)
        if prompt_tokens is None or completion_tokens is None:
            return None
        usage = cls(prompt_tokens, completion_tokens)
        prompt, completion = raw.get("prompt_tokens_details"), raw.get("completion_tokens_details")
        # Cache reads: OpenAI's prompt_tokens_details.cached_tokens, DeepSeek's
        # prompt_cache_hit_tokens, or an Anthropic-style cache_read_input_tokens beside them
        # (some proxies): each a part of prompt_tokens, read at the cached price.
        read = _count(prompt.get("cached_tokens")) if isinstance(prompt, dict) else None
        for name in _CACHE_READS:
            read = read or _count(raw.get(name))
        usage.cached_tokens = min(read or 0, usage.prompt_tokens)
        if isinstance(completion, dict):
            usage.reasoning_tokens = min(_count(completion.get("reasoning_tokens")) or 0, usage.completion_tokens)
        usage.cache_write_tokens = _count(raw.get("cache_creation_input_tokens")) or 0
        return usage

    @property
    def uncached_tokens(self) -> int:
        """The input tokens neither read from nor written to a prompt cache (Anthropic's
        ``input_tokens``)."""
        return max(0, self.prompt_tokens - self.cached_tokens - self.cache_write_tokens)


_CACHE_READS = ("prompt_cache_hit_tokens", "cache_read_input_tokens")


@dataclass(slots=True)
class Completion:
    """A finished non-streaming answer: an OpenAI ``chat.completion`` object."""

    body: dict[str, Any]
    usage: Usage | None
    model_version: str
    replica: str = ""
    queue_ms: float | None = None  # time spent waiting for a local worker, if any


class Chunks(Protocol):
    """An async iterator of chunk dicts that can be closed before its end (an async generator
    is one). ``aclose`` must free the upstream work even if iteration never began."""

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]: ...

    def __anext__(self) -> Awaitable[dict[str, Any]]: ...

    def aclose(self) -> Awaitable[None]: ...


@dataclass(slots=True)
class Stream:
    """A started stream. ``chunks`` yields OpenAI ``chat.completion.chunk`` dicts; the first
    chunk has already been received when the provider returns this object (so time to first
    token is known and a failure before it can still fall back). A chunk carrying ``usage``
    is yielded as the provider got it; the gateway decides whether the caller sees it."""

    chunks: Chunks
    model_version: str
    replica: str = ""
    queue_ms: float | None = None


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """One replica: turnout's calls in flight there, its breaker and, where its server's
    ``/metrics`` are read (``turnout.providers.balance``), what it last reported; None: unknown."""

    name: str
    in_flight: int
    breaker: State
    waiting: float | None = None  # requests queued at the server
    running: float | None = None  # requests it is running, from every client
    kv_cache: float | None = None  # the KV cache's fraction in use


@dataclass(frozen=True, slots=True)
class Load:
    """What a provider is doing now, read at scrape time (``/metrics``) and by routing.
    ``None``: this provider does not know."""

    in_flight: int | None = None  # calls running at the target
    queued: int | None = None  # calls waiting for a worker (the embedded model)
    replicas: tuple[ReplicaLoad, ...] = ()  # per replica, where the target has several


@dataclass(frozen=True, slots=True)
class ReplicaHealth:
    """One replica's probe: its label (never its URL) and, when it failed, why."""

    name: str
    ok: bool
    detail: str = ""


@dataclass(slots=True)
class Health:
    """A probe's answer. ``detail`` names replicas by label and failures by kind, never by URL
    or credential: the admin view (``GET /admin/targets``) shows it."""

    ok: bool
    detail: str = ""
    replicas: tuple[ReplicaHealth, ...] = ()  # per replica, where the target has several


class Provider(Protocol):
    """``health`` also warms the provider up (a local model is loaded by its first call), so
    the gateway calls it once at start-up, then for ``GET /admin/targets`` and, at most every few
    seconds, for ``/metrics``. ``stream`` returns only
    once the first chunk has arrived; errors before that raise from ``stream`` itself, errors
    after it raise from iterating ``chunks``. Closing ``chunks`` early (``aclose``) must stop
    the upstream work: a disconnected client frees its slot."""

    name: str

    async def complete(self, call: Call) -> Completion: ...

    async def stream(self, call: Call) -> Stream: ...

    async def health(self) -> Health: ...

    def load(self) -> Load:
        """A cheap snapshot (no I/O): in-flight and queued calls, per replica where known."""
        ...

    async def aclose(self) -> None: ...


def _count(value: Any) -> int | None:
    """A token count as an upstream reported it; None when it is not one (negative, not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e15:
        return None
    return int(value)
