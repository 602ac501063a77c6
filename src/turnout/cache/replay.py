"""A hit as the attempt loop's ``Result``, so every door writes it with its live code (a stream
replayed as SSE has the live stream's chunking), priced by a book in which everything is free;
and a leader's answer, recorded as it passes, as the entry its followers and later hits get.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import orjson

from turnout.cache.entry import REPLICA, Entry, Recording, encode
from turnout.control.pricing import PriceBook, Priced
from turnout.ledger.record import AttemptRecord
from turnout.providers.base import Stream, Usage
from turnout.routing.attempts import Result, Target


class FreeBook(PriceBook):
    """A hit's prices: no upstream was called, so every attempt costs 0."""

    def price_attempts(
        self, attempts: Sequence[AttemptRecord], usage: Usage | None, when: float, *, answer_s: float | None = None
    ) -> Priced:
        free = [
            a
            if a.cost_usd == 0.0
            else AttemptRecord(a.target, a.replica, a.error_class, a.latency_ms, a.offset_ms, 0.0)
            for a in attempts
        ]
        return Priced(free, 0.0)


def hit_result(entry: Entry, targets: dict[str, Target], allowed: Sequence[str], t0: float) -> Result | None:
    """None: the target that generated the entry is gone or no longer allowed for this request
    (policy still decides which answers a request may get): answered as a miss."""
    if entry.target not in allowed or entry.target not in targets:
        return None
    ms = (time.perf_counter() - t0) * 1000
    return Result(targets[entry.target], entry.answer(), [AttemptRecord(entry.target, REPLICA, None, 0.0, ms, 0.0)])


def record(result: Result, limit: int, too_large: Callable[[], None] | None = None) -> Recording | None:
    """A leader's stream, kept as it passes to the door (None: a completion, kept whole).
    ``too_large``: called once the stream passes ``limit`` (it will not be kept)."""
    answer = result.answer
    if not isinstance(answer, Stream):
        return None
    recording = Recording(answer.chunks, limit, too_large)
    answer.chunks = recording
    return recording


def entry_bytes(
    result: Result, recording: Recording | None, cost_usd: float | None, usage: Usage | None
) -> bytes | None:
    """The answer as an entry; None: a stream cut short or too large to keep."""
    answer = result.answer
    if recording is not None:
        if not recording.whole:
            return None
        return encode(result.target.name, answer.model_version, cost_usd, usage, chunks=recording.raw)
    assert not isinstance(answer, Stream)
    return encode(result.target.name, answer.model_version, cost_usd, usage, body=orjson.dumps(answer.body))
