"""Embeddings at the provider edge: one request's inputs cut into batches the target takes,
sent a few at a time, checked, and put back together in the caller's order.

A provider that embeds has ``embed(call)`` for one batch. ``call.body`` is the gateway's
embeddings body (``{"input": [str, ...], "dimensions"?: int, "user"?: str, ...}``, ``input``
always a list of non-empty strings); the answer's body holds ``data``: one
``{"index": i, "embedding": [float, ...]}`` per input, ``index`` counted within the batch, in
any order. ``Batched`` wraps such a provider in the usual four-method protocol: its
``complete`` embeds a whole request, so the attempt loop, breakers and fallback treat an
embedding target like any other, and a fallback re-embeds every input at the next target
(never a mix of two models' vectors in one answer).

What ``Batched`` checks of every batch, so a caller never stores a wrong vector: one vector per
input, each a list of numbers of one length, that length the ``dimensions`` asked for when
asked. Anything else is an ``UpstreamProtocolError``: the next target may answer properly.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any, Protocol

from turnout.errors import ConfigError, UpstreamError, UpstreamProtocolError, UpstreamTimeout
from turnout.providers.base import Call, Completion, Health, Load, Provider, Stream, Usage


class Embedder(Provider, Protocol):
    """A provider that can embed. ``embed_batch``: inputs per call by default;
    ``embed_batch_max``: the most its upstream takes in one call (None: no known limit)."""

    embed_batch: int
    embed_batch_max: int | None

    async def embed(self, call: Call) -> Completion: ...


class Batched:
    """An embedding target as the attempt loop sees it: ``complete`` embeds the call's whole
    ``input``, ``batch`` inputs per upstream call, at most ``parallel`` calls at once, within
    the call's ``total`` deadline."""

    def __init__(self, inner: Embedder, batch: int | None, parallel: int) -> None:
        self.inner = inner
        self.name = inner.name
        limit = inner.embed_batch_max
        wanted = batch or inner.embed_batch
        self.batch = wanted if limit is None else min(wanted, limit)
        self.parallel = parallel

    async def complete(self, call: Call) -> Completion:
        inputs: list[str] = call.body["input"]
        batches = split(inputs, self.batch)
        total_s = call.timeouts.total
        answers: list[Completion | None] = [None] * len(batches)
        try:
            async with asyncio.timeout(total_s):
                if len(batches) == 1:  # the usual request: no tasks to start
                    answers[0] = await self.inner.embed(call)
                else:
                    await self._all(call, batches, answers)
            return self._join(call, batches, [a for a in answers if a is not None])
        except TimeoutError:
            raise _spent(UpstreamTimeout("total", total_s), answers) from None
        except UpstreamError as exc:  # the batches answered before it were embedded: paid for
            raise _spent(exc, answers) from None

    async def stream(self, call: Call) -> Stream:
        raise UpstreamProtocolError(f"{self.name}: embeddings are never streamed")

    async def health(self) -> Health:
        return await self.inner.health()

    def load(self) -> Load:
        return self.inner.load()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def _all(self, call: Call, batches: list[list[str]], answers: list[Completion | None]) -> None:
        """Every batch into ``answers``, ``parallel`` at a time; the first failure cancels the rest."""
        order = iter(range(len(batches)))  # shared: each batch is taken by one worker

        async def worker() -> None:
            for k in order:
                part = Call({**call.body, "input": batches[k]}, False, call.timeouts, call.request_id)
                answers[k] = await self.inner.embed(part)

        workers = [asyncio.ensure_future(worker()) for _ in range(min(self.parallel, len(batches)))]
        try:
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        if any(a is None for a in answers):  # pragma: no cover - every worker ended without failing
            raise UpstreamProtocolError(f"{self.name}: a batch went unanswered")

    def _join(self, call: Call, batches: list[list[str]], answers: list[Completion]) -> Completion:
        dimensions = call.body.get("dimensions")
        data: list[dict[str, Any]] = []
        size: int | None = dimensions
        for batch, answer in zip(batches, answers, strict=True):
            vectors = vectors_of(answer.body, len(batch), self.name)
            for vector in vectors:
                size = check_vector(vector, size, dimensions, self.name)
                data.append({"object": "embedding", "index": len(data), "embedding": vector})
        usages = [a.usage for a in answers]
        usage = None if any(u is None for u in usages) else Usage(sum(u.prompt_tokens for u in usages if u), 0)
        first = answers[0]
        replicas = list(dict.fromkeys(a.replica for a in answers if a.replica))
        tokens = None if usage is None else {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens}
        body = {"object": "list", "data": data, "model": first.model_version, "usage": tokens}
        return Completion(body, usage, first.model_version, ",".join(replicas), first.queue_ms)


def batched(name: str, provider: Provider, batch: int | None, parallel: int) -> Batched:
    """Target ``name``'s provider as an embedding target; ConfigError where it cannot embed."""
    if not callable(getattr(provider, "embed", None)):
        raise ConfigError([f"targets.{name}.embedding_space: this target's provider does not embed"])
    return Batched(provider, batch, parallel)  # type: ignore[arg-type]  # it has embed(): checked above


def split(inputs: Sequence[str], size: int) -> list[list[str]]:
    """``inputs`` in order, ``size`` at a time (the last batch may be shorter)."""
    return [list(inputs[i : i + size]) for i in range(0, len(inputs), size)]


def vectors_of(body: dict[str, Any], count: int, target: str) -> list[list[Any]]:
    """A batch answer's vectors in input order, by each item's ``index``."""
    data = body.get("data")
    if not isinstance(data, list) or len(data) != count:
        got = len(data) if isinstance(data, list) else "no"
        raise UpstreamProtocolError(f"{target}: {got} embeddings for {count} inputs")
    ordered: list[list[Any] | None] = [None] * count
    for position, item in enumerate(data):
        index = item.get("index", position) if isinstance(item, dict) else None
        vector = item.get("embedding") if isinstance(item, dict) else None
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
            raise UpstreamProtocolError(f"{target}: embedding {position} has no valid index")
        if ordered[index] is not None:
            raise UpstreamProtocolError(f"{target}: two embeddings have index {index}")
        if not isinstance(vector, list):
            raise UpstreamProtocolError(f"{target}: embedding {position} is not a list of numbers")
        ordered[index] = vector
    return [v for v in ordered if v is not None]


def check_vector(vector: list[Any], size: int | None, dimensions: int | None, target: str) -> int:
    """The vector's length, which every vector of the answer shares (``dimensions`` when asked);
    a vector of anything but finite numbers is refused."""
    if size is not None and len(vector) != size:
        asked = f"{dimensions} asked" if dimensions is not None else f"{size} in the others"
        raise UpstreamProtocolError(f"{target}: an embedding has {len(vector)} dimensions, {asked}")
    # C-speed passes (a request's vectors can hold millions of numbers): the types, then finiteness.
    if not vector or not set(map(type, vector)) <= _NUMBERS or not all(map(math.isfinite, vector)):
        raise UpstreamProtocolError(f"{target}: an embedding is empty or holds something other than numbers")
    return len(vector)


_NUMBERS = frozenset({float, int})  # not bool: true is no coordinate


def _spent(exc: UpstreamError, answers: list[Completion | None]) -> UpstreamError:
    """``exc`` carrying the tokens of the batches that were answered before it."""
    tokens = sum(a.usage.prompt_tokens for a in answers if a is not None and a.usage is not None)
    if tokens:
        exc.spent = Usage(tokens, 0)
    return exc
