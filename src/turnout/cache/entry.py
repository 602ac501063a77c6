"""A cached answer: a whole completion, or a stream's chunks as the target sent them, with the
target that generated it and what it cost then. A hit is replayed through the same door code as
a live answer, so a replayed stream has the live stream's chunking shape.

Stored as one JSON document (``encode``); a stream's chunks are recorded as they pass to the
door (``Recording``), serialised before the door rewrites their ids, and spliced in as they are.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, NamedTuple

import orjson

from turnout.providers.base import Chunks, Completion, Stream, Usage

REPLICA = "cache"  # the replica a hit names: no upstream was called
FORMAT = 1


class Entry(NamedTuple):  # a tuple: made on every hit, in C
    target: str
    model_version: str
    cost_usd: float | None  # what generating it cost; what a hit saves
    usage: Usage | None
    body: dict[str, Any] | None = None  # a completion
    chunks: list[dict[str, Any]] | None = None  # a stream
    stored_at: float | None = None  # when it was kept (wall clock: replicas share it); None: not said

    def fresh(self, ttl_s: float, now: float) -> bool:
        """Younger than the task's time to live as it is now: a reload that shortens ``ttl_s``,
        or a retention rule that caps it, also ends the answers kept under the longer one."""
        return self.stored_at is None or now - self.stored_at < ttl_s

    def answer(self) -> Completion | Stream:
        """The answer to replay. The door rewrites its ids in place: every lookup decodes an
        entry of its own, so no two requests share one."""
        if self.chunks is not None:
            return Stream(_replay(self.chunks), self.model_version, REPLICA)
        assert self.body is not None
        return Completion(self.body, self.usage, self.model_version, REPLICA)


def encode(
    target: str,
    model_version: str,
    cost_usd: float | None,
    usage: Usage | None,
    *,
    body: bytes | None = None,
    chunks: list[bytes] | None = None,
    stored_at: float | None = None,
) -> bytes:
    """``body``: the completion as JSON; ``chunks``: each chunk as JSON, in order;
    ``stored_at``: now unless said."""
    head = orjson.dumps(
        {
            "format": FORMAT,
            "target": target,
            "model_version": model_version,
            "cost_usd": cost_usd,
            "usage": None if usage is None else _usage_list(usage),
            "stored_at": time.time() if stored_at is None else stored_at,
        }
    )
    tail = b'"body":' + body if body is not None else b'"chunks":[' + b",".join(chunks or ()) + b"]"
    return head[:-1] + b"," + tail + b"}"


def _usage_list(usage: Usage) -> list[int]:
    """The counts, the details only where the upstream reported some (an entry written before
    they were kept has the first two)."""
    counts = [usage.prompt_tokens, usage.completion_tokens]
    details = [usage.cached_tokens, usage.cache_write_tokens, usage.reasoning_tokens]
    return counts + details if any(details) else counts


def decode(raw: bytes) -> Entry | None:
    """None: not an entry this code wrote (another format, or one damaged in the store):
    treated as a miss, never replayed half-read."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return None
    body, chunks, stored_at = doc.get("body"), doc.get("chunks"), doc.get("stored_at")
    if not (isinstance(body, dict) if chunks is None else isinstance(chunks, list) and _all_dicts(chunks)):
        return None
    if not (isinstance(doc.get("target"), str) and isinstance(doc.get("model_version"), str)):
        return None
    cost, usage = doc.get("cost_usd"), doc.get("usage")
    if usage is not None and not isinstance(usage, list):
        return None
    try:
        counts = None if usage is None else Usage(*(int(n) for n in usage[:5]))
    except (TypeError, ValueError):  # not counts
        return None
    return Entry(
        doc["target"],
        doc["model_version"],
        cost if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None,
        counts,
        body,
        chunks,
        stored_at if isinstance(stored_at, (int, float)) else None,  # None in an entry written before it was kept
    )


def _all_dicts(chunks: list[Any]) -> bool:
    return all(isinstance(c, dict) for c in chunks)


async def _replay(chunks: list[dict[str, Any]]) -> AsyncGenerator[dict[str, Any]]:
    for chunk in chunks:
        yield chunk


class Recording:
    """A live stream's chunks, passed on unchanged and kept (as JSON) for the cache, up to
    ``limit`` bytes; ``whole`` once the stream ended without an error and within the limit."""

    def __init__(self, chunks: Chunks, limit: int, too_large: Callable[[], None] | None = None) -> None:
        self._inner = chunks
        self._it: AsyncIterator[dict[str, Any]] = chunks.__aiter__()
        self._limit = limit
        self._too_large = too_large  # called once, when the stream passes the limit
        self.size = 0
        self.raw: list[bytes] | None = []
        self.ended = False

    @property
    def whole(self) -> bool:
        return self.ended and self.raw is not None

    def __aiter__(self) -> Recording:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            chunk = await self._it.__anext__()
        except StopAsyncIteration:
            self.ended = True
            raise
        if self.raw is not None:
            data = orjson.dumps(chunk)
            self.size += len(data)
            if self.size > self._limit:
                self.raw = None  # too large to keep: relayed all the same
                if self._too_large is not None:
                    self._too_large()
            else:
                self.raw.append(data)
        return chunk

    async def aclose(self) -> None:
        await self._inner.aclose()
