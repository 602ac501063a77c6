"""The one batch queue under the ledger and capture writers: size and interval flushes, a
bounded queue that drops and counts, failures counted, order kept, a drain on close."""

from __future__ import annotations

import asyncio
import logging

import pytest

from turnout._support.batching import BatchQueue

log = logging.getLogger("turnout.test_batching")
LONG = 3600.0


class Sink:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next = 0
        self.keep: int | None = None  # keep only this many of each batch

    async def __call__(self, batch: list[int]) -> int:
        await self.gate.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("the store is down")
        self.batches.append(batch)
        return len(batch) if self.keep is None else min(self.keep, len(batch))


def queue(sink: Sink, **kw: object) -> BatchQueue[int]:
    opts: dict[str, object] = {"batch_size": 3, "flush_interval_s": LONG, "queue_size": 100, "logger": log}
    opts.update(kw)
    return BatchQueue("test", sink, **opts)  # type: ignore[arg-type]


def balanced(q: BatchQueue[int], accepted: int) -> bool:
    return q.written + q.failed + q.queued == accepted


async def settle(q: BatchQueue[int], sink: Sink, batches: int) -> None:
    async with asyncio.timeout(5):
        while len(sink.batches) + q.failed < batches:  # noqa: ASYNC110 - polls the sink; no event
            await asyncio.sleep(0.001)


async def test_a_full_batch_goes_at_once_a_partial_one_waits() -> None:
    sink = Sink()
    q = queue(sink)
    q.start()
    for i in range(4):
        assert q.submit(i)
    await settle(q, sink, 1)
    assert sink.batches == [[0, 1, 2]] and q.queued == 1
    await q.aclose()
    assert sink.batches == [[0, 1, 2], [3]]  # drained on close, in order
    assert (q.written, q.failed, q.queued) == (4, 0, 0)


async def test_a_partial_batch_goes_after_the_interval() -> None:
    sink = Sink()
    q = queue(sink, flush_interval_s=0.01)
    q.start()
    q.submit(7)
    await settle(q, sink, 1)
    assert sink.batches == [[7]]
    await q.aclose()


async def test_a_full_queue_drops_and_counts_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink()
    q = queue(sink, queue_size=2)
    with caplog.at_level(logging.WARNING, logger=log.name):
        accepted = [q.submit(i) for i in range(5)]
    assert accepted == [True, True, False, False, False]
    assert q.dropped == 3
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["test: queue is full (2 items); dropped 1 items since the last warning (1 in total)"]
    await q.aclose()
    assert sink.batches == [[0, 1]]


async def test_a_weight_bound_drops_what_would_pass_it() -> None:
    sink = Sink()
    q = queue(sink, weigh=lambda i: i, max_weight=10)
    assert q.submit(6) and q.submit(4)
    assert not q.submit(1)  # 11 > 10
    await q.aclose()
    assert sink.batches == [[6, 4]] and q.dropped == 1


async def test_a_failing_sink_fails_its_batch_and_the_loop_goes_on() -> None:
    sink = Sink()
    failures: list[tuple[list[int], str]] = []
    q = queue(sink, on_failure=lambda batch, exc: failures.append((batch, type(exc).__name__)))
    sink.fail_next = 1
    q.start()
    for i in range(6):
        q.submit(i)
    await settle(q, sink, 2)
    await q.aclose()
    assert failures == [([0, 1, 2], "RuntimeError")]
    assert sink.batches == [[3, 4, 5]]
    assert (q.written, q.failed) == (3, 3) and balanced(q, 6)


async def test_what_the_sink_does_not_keep_counts_as_failed() -> None:
    sink = Sink()
    sink.keep = 1
    q = queue(sink)
    for i in range(3):
        q.submit(i)
    await q.aclose()
    assert (q.written, q.failed) == (1, 2)


async def test_the_counts_always_balance_and_a_closed_queue_refuses() -> None:
    sink = Sink()
    sink.gate.clear()
    q = queue(sink)
    q.start()
    for i in range(5):
        q.submit(i)
    await asyncio.sleep(0.01)
    assert q.queued == 5 and balanced(q, 5)  # a batch held by the sink still counts as queued
    sink.gate.set()
    await q.aclose()
    assert balanced(q, 5) and q.written == 5
    assert not q.submit(9) and q.dropped == 1
    await q.aclose()  # twice is fine


async def test_start_twice_or_after_close_is_refused() -> None:
    q = queue(Sink())
    q.start()
    with pytest.raises(RuntimeError, match="already started"):
        q.start()
    await q.aclose()
    with pytest.raises(ValueError, match="positive"):
        queue(Sink(), batch_size=0)
