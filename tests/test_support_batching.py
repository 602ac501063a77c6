"""The one batch queue under the ledger and capture writers: a full batch goes at once, a partial
one after the interval; a bounded queue drops and counts; a failing or refusing sink is counted
and the loop goes on; order is kept; close drains everything and leaves no task behind.

Timing runs on a virtual clock (``tests.virtual_time``): the times asserted are the event
loop's, exact and repeatable, never the wall clock's."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import pytest

from tests import virtual_time
from turnout._support.batching import BatchQueue, RateLimit

log = logging.getLogger("turnout.test_batching")
HOUR = 3600.0


class Sink:
    """Records each batch with the loop time it arrived; can hold, fail or refuse."""

    def __init__(self) -> None:
        self.batches: list[tuple[float, list[int]]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next = 0
        self.refuse: Callable[[int], bool] = lambda item: False
        self._seen = asyncio.Condition()

    async def __call__(self, batch: list[int]) -> Sequence[int]:
        async with self._seen:
            self.batches.append((asyncio.get_running_loop().time(), batch))
            self._seen.notify_all()
        await self.gate.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("the store is down: it quoted row 42")
        return [item for item in batch if self.refuse(item)]

    async def wait_for(self, batches: int) -> None:
        async with self._seen:
            await self._seen.wait_for(lambda: len(self.batches) >= batches)

    @property
    def items(self) -> list[int]:
        return [item for _, batch in self.batches for item in batch]


def queue(sink: Sink, **kw: Any) -> BatchQueue[int]:
    opts: dict[str, Any] = {"batch_size": 3, "flush_interval_s": 10.0, "queue_size": 100, "logger": log}
    return BatchQueue("test", sink, **(opts | kw))


def balanced(q: BatchQueue[int], accepted: int) -> bool:
    return q.written + q.failed + q.queued == accepted


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    virtual_time.run(scenario())


def now() -> float:
    return asyncio.get_running_loop().time()


def test_a_full_batch_goes_at_once_a_partial_one_after_the_interval() -> None:
    async def scenario() -> None:
        sink = Sink()
        q = queue(sink)
        q.start()
        for i in range(7):
            assert q.submit(i)
        await sink.wait_for(3)
        assert sink.batches == [(0.0, [0, 1, 2]), (0.0, [3, 4, 5]), (10.0, [6])]
        assert (q.written, q.queued) == (7, 0)
        await q.aclose()

    run(scenario)


def test_the_interval_counts_from_the_first_item_of_a_partial_batch() -> None:
    async def scenario() -> None:
        sink = Sink()
        q = queue(sink)
        q.start()
        q.submit(1)
        await asyncio.sleep(4.0)
        q.submit(2)
        await sink.wait_for(1)
        q.submit(3)
        await sink.wait_for(2)
        assert sink.batches == [(10.0, [1, 2]), (20.0, [3])]
        await q.aclose()

    run(scenario)


def test_items_that_came_during_a_slow_write_wait_one_interval_from_their_arrival() -> None:
    """What a crash can lose is what waits in memory: an item that arrived while the sink was
    busy has been waiting since then, so it is due one interval after it came, not one interval
    after the write ended."""

    async def scenario() -> None:
        sink = Sink()
        q = queue(sink)
        q.start()
        sink.gate.clear()
        q.submit(1)
        await sink.wait_for(1)  # at 10; the write takes until 18
        await asyncio.sleep(2.0)
        q.submit(2)  # at 12, while the write of [1] runs
        await asyncio.sleep(6.0)
        sink.gate.set()  # the write ends at 18
        await sink.wait_for(2)
        assert sink.batches == [(10.0, [1]), (22.0, [2])]
        await q.aclose()

    run(scenario)


def test_an_idle_queue_calls_no_sink() -> None:
    async def scenario() -> None:
        sink = Sink()
        q = queue(sink)
        q.start()
        await asyncio.sleep(10 * HOUR)
        await q.aclose()
        assert sink.batches == []

    run(scenario)


def test_order_is_kept_across_batches_and_flushes() -> None:
    async def scenario() -> None:
        sink = Sink()
        q = queue(sink, batch_size=7)
        q.start()
        for i in range(100):
            q.submit(i)
            if i % 9 == 0:
                await asyncio.sleep(i % 4 * 5.0)  # some partial batches go by the interval
        await q.aclose()
        assert sink.items == list(range(100))
        assert all(len(batch) <= 7 for _, batch in sink.batches)
        assert any(len(batch) < 7 for _, batch in sink.batches[:-1])  # an interval flush happened

    run(scenario)


def test_close_drains_at_once_what_waits_for_the_interval() -> None:
    async def scenario() -> None:
        sink = Sink()
        q = queue(sink, flush_interval_s=HOUR)
        q.start()
        for i in range(5):
            q.submit(i)
        await q.aclose()
        assert sink.batches == [(0.0, [0, 1, 2]), (0.0, [3, 4])]
        assert (q.written, q.queued) == (5, 0)
        assert asyncio.all_tasks() == {asyncio.current_task()}  # the flush task is gone

    run(scenario)


def test_close_drains_a_queue_that_was_never_started() -> None:
    async def scenario() -> None:
        sink = Sink()
        q = queue(sink)
        q.submit(1)
        await q.aclose()
        assert sink.items == [1] and q.written == 1

    run(scenario)


def test_a_full_queue_drops_counts_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        sink = Sink()
        q = queue(sink, queue_size=2)
        with caplog.at_level(logging.WARNING, logger=log.name):
            assert [q.submit(i) for i in range(5)] == [True, True, False, False, False]
        assert q.dropped == 3
        assert [r.getMessage() for r in caplog.records] == [
            "test: queue is full (2 items); dropped 1 items since the last warning (1 in total)"
        ]
        await q.aclose()
        assert sink.items == [0, 1] and balanced(q, 2)

    run(scenario)


def test_a_weight_bound_drops_what_would_pass_it() -> None:
    async def scenario() -> None:
        sink = Sink()
        q = queue(sink, weigh=lambda i: i, max_weight=10)
        assert q.submit(6) and q.submit(4)
        assert not q.submit(1)  # 11 > 10
        await q.aclose()
        assert sink.items == [6, 4] and q.dropped == 1

    run(scenario)


def test_a_written_batch_makes_room_by_weight_again() -> None:
    async def scenario() -> None:
        sink = Sink()
        q = queue(sink, batch_size=2, weigh=lambda i: i, max_weight=10)
        q.start()
        assert q.submit(5) and q.submit(5)
        await sink.wait_for(1)
        assert q.submit(9)  # the first batch's weight was given back
        await q.aclose()
        assert sink.items == [5, 5, 9] and q.dropped == 0

    run(scenario)


def test_a_failing_sink_fails_its_batch_and_the_loop_goes_on() -> None:
    async def scenario() -> None:
        sink = Sink()
        failures: list[tuple[list[int], str]] = []
        q = queue(sink, on_failure=lambda batch, exc: failures.append((batch, type(exc).__name__)))
        sink.fail_next = 1
        q.start()
        for i in range(6):
            q.submit(i)
        await q.aclose()
        assert failures == [([0, 1, 2], "RuntimeError")]
        assert sink.items == [0, 1, 2, 3, 4, 5]  # the second batch was offered after the failure
        assert (q.written, q.failed) == (3, 3) and balanced(q, 6)

    run(scenario)


def test_a_failure_is_logged_by_type_only(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        sink = Sink()
        sink.fail_next = 1
        q = queue(sink)
        q.submit(1)
        with caplog.at_level(logging.ERROR, logger=log.name):
            await q.aclose()
        assert q.failed == 1

    run(scenario)
    assert [r.getMessage() for r in caplog.records] == ["test: writing 1 items failed (RuntimeError)"]


def test_what_the_sink_refuses_counts_as_failed() -> None:
    async def scenario() -> None:
        sink = Sink()
        sink.refuse = lambda item: item % 2 == 1
        q = queue(sink)
        for i in range(5):
            q.submit(i)
        await q.aclose()
        assert (q.written, q.failed) == (3, 2) and balanced(q, 5)

    run(scenario)


def test_a_batch_being_written_counts_as_queued_and_a_closed_queue_refuses() -> None:
    async def scenario() -> None:
        sink = Sink()
        sink.gate.clear()
        q = queue(sink)
        q.start()
        for i in range(5):
            q.submit(i)
        await sink.wait_for(1)
        assert q.queued == 5 and balanced(q, 5)  # the held batch is still queued
        closing = asyncio.create_task(q.aclose())
        await asyncio.sleep(HOUR)
        assert not closing.done()  # close waits for the sink
        sink.gate.set()
        await closing
        assert balanced(q, 5) and q.written == 5
        assert not q.submit(9) and q.dropped == 1
        await q.aclose()  # twice is fine

    run(scenario)


def test_start_twice_or_after_close_is_refused() -> None:
    async def scenario() -> None:
        q = queue(Sink())
        q.start()
        with pytest.raises(RuntimeError, match="already started"):
            q.start()
        await q.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            q.start()

    run(scenario)
    good: dict[str, Any] = {"batch_size": 3, "flush_interval_s": 1.0, "queue_size": 3, "logger": log}
    for bad in ({"batch_size": 0}, {"queue_size": 0}, {"flush_interval_s": 0.0}, {"max_weight": 0}):
        with pytest.raises(ValueError, match="positive"):
            BatchQueue("bad", Sink(), **(good | bad))


def test_rate_limit_allows_one_line_per_interval_and_counts_what_it_summarises() -> None:
    clock = [100.0]
    limit = RateLimit(10.0, clock=lambda: clock[0])
    assert limit.ready() and limit.take(1) == 1
    clock[0] = 109.9
    assert not limit.ready()
    clock[0] = 110.0
    assert limit.ready() and limit.take(7) == 6  # six events since the last line
