"""The ledger writer: batching by size and by time, dropping (and counting) when full, draining
on close, surviving store failures, and never making the request path wait; and, on real
PostgreSQL, that a full queue drained on close lands row for row."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Sequence

import pytest

from tests.test_ledger_store import drop_schema, needs_postgres, postgres_store, unique_schema
from turnout.config import StoreConfig
from turnout.ledger.memory import MemoryStore
from turnout.ledger.record import LedgerRow
from turnout.ledger.store import StoreError
from turnout.ledger.writer import LedgerWriter

LONG = 60.0  # an interval that never elapses during a test


def make_row(n: int, user: str | None = None) -> LedgerRow:
    return LedgerRow(f"req-{n:06d}", 1_700_000_000.0 + n, "acme", "support-reply", "internal", False, user=user)


class SpyStore(MemoryStore):
    """A memory store that records batch sizes, can hold writes at a gate and can fail."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.gate: asyncio.Event | None = None
        self.fail_with: Callable[[], Exception] | None = None

    async def write_batch(self, rows: Sequence[LedgerRow]) -> None:
        self.batches.append(len(rows))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with()
        await super().write_batch(rows)


@pytest.fixture
async def store() -> SpyStore:
    spy = SpyStore()
    await spy.open()
    return spy


async def eventually(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    async with asyncio.timeout(within_s):
        while not condition():  # noqa: ASYNC110 - polls the writer's counters; no event to await
            await asyncio.sleep(0.001)


def accepted_matches(writer: LedgerWriter, accepted: int) -> bool:
    return writer.written + writer.failed + writer.queued == accepted


async def test_submit_is_synchronous_and_leaves_the_store_alone(store: SpyStore) -> None:
    writer = LedgerWriter(store, batch_size=2, flush_interval_s=LONG)
    assert not inspect.iscoroutinefunction(writer.submit)
    writer.start()
    assert writer.submit(make_row(1)) is True
    assert writer.submit(make_row(2)) is True  # a full batch, but nothing is written inline
    assert store.batches == []
    assert writer.queued == 2
    await writer.aclose()
    assert store.batches == [2]


async def test_a_full_batch_is_written_without_waiting_for_the_interval(store: SpyStore) -> None:
    writer = LedgerWriter(store, batch_size=10, flush_interval_s=LONG)
    writer.start()
    for n in range(25):
        writer.submit(make_row(n))
    await eventually(lambda: writer.written == 20)
    assert store.batches == [10, 10]
    assert writer.queued == 5  # a partial batch waits for its interval
    await writer.aclose()
    assert store.batches == [10, 10, 5]
    assert await store.count() == 25


async def test_a_partial_batch_is_written_when_the_interval_passes(store: SpyStore) -> None:
    writer = LedgerWriter(store, batch_size=1000, flush_interval_s=0.1)
    writer.start()
    for n in range(3):
        writer.submit(make_row(n))
    for _ in range(5):
        await asyncio.sleep(0)
    assert store.batches == []  # not yet: the batch is given its interval to fill
    await eventually(lambda: writer.written == 3)
    assert store.batches == [3]
    writer.submit(make_row(3))  # the next partial batch gets its own interval
    await eventually(lambda: writer.written == 4)
    assert store.batches == [3, 1]
    await writer.aclose()


async def test_an_idle_writer_writes_nothing(store: SpyStore) -> None:
    writer = LedgerWriter(store, batch_size=10, flush_interval_s=0.001)
    writer.start()
    await asyncio.sleep(0.05)
    await writer.aclose()
    assert store.batches == []


async def test_a_full_queue_drops_counts_and_warns_once(store: SpyStore, caplog: pytest.LogCaptureFixture) -> None:
    writer = LedgerWriter(store, batch_size=100, flush_interval_s=LONG, queue_size=5)
    with caplog.at_level(logging.WARNING, logger="turnout.ledger.writer"):
        results = [writer.submit(make_row(n)) for n in range(8)]
    assert results == [True] * 5 + [False] * 3
    assert (writer.dropped, writer.queued) == (3, 5)
    warnings = [r for r in caplog.records if r.levelno == logging.ERROR]  # rows lost: an error
    assert len(warnings) == 1  # rate-limited: one line for the burst
    assert "queue is full (5 rows)" in warnings[0].getMessage()
    await writer.aclose()
    assert await store.count() == 5


async def test_drop_warnings_repeat_after_the_log_interval(store: SpyStore, caplog: pytest.LogCaptureFixture) -> None:
    writer = LedgerWriter(store, batch_size=100, flush_interval_s=LONG, queue_size=1, log_interval_s=0.0)
    with caplog.at_level(logging.WARNING, logger="turnout.ledger.writer"):
        for n in range(4):
            writer.submit(make_row(n))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert "dropped 1 rows since the last warning (3 in total)" in messages[-1]
    await writer.aclose()


async def test_close_drains_every_queued_row(store: SpyStore) -> None:
    writer = LedgerWriter(store, batch_size=256, flush_interval_s=LONG, queue_size=10_000)
    writer.start()
    assert all(writer.submit(make_row(n)) for n in range(10_000))
    await writer.aclose()
    assert await store.count() == 10_000
    assert (writer.written, writer.dropped, writer.failed, writer.queued) == (10_000, 0, 0, 0)
    assert max(store.batches) == 256


async def test_close_drains_a_writer_that_was_never_started(store: SpyStore) -> None:
    writer = LedgerWriter(store, batch_size=4, flush_interval_s=LONG)
    for n in range(10):
        writer.submit(make_row(n))
    await writer.aclose()
    assert store.batches == [4, 4, 2]
    assert await store.count() == 10


async def test_rows_submitted_while_a_write_is_in_flight_are_kept(store: SpyStore) -> None:
    store.gate = asyncio.Event()
    writer = LedgerWriter(store, batch_size=5, flush_interval_s=LONG)
    writer.start()
    for n in range(5):
        writer.submit(make_row(n))
    await eventually(lambda: store.batches == [5])  # the first batch is held at the gate
    for n in range(5, 12):
        writer.submit(make_row(n))
    assert writer.queued == 12
    assert accepted_matches(writer, 12)
    close = asyncio.create_task(writer.aclose())
    for n in range(12, 14):  # still closing: accepted and drained
        assert writer.submit(make_row(n))
    store.gate.set()
    await close
    assert await store.count() == 14
    assert writer.submit(make_row(99)) is False  # closed: refused and counted
    assert (writer.written, writer.dropped, writer.queued) == (14, 1, 0)


async def test_submit_stays_instant_while_the_store_stalls(store: SpyStore) -> None:
    store.gate = asyncio.Event()  # the disk hangs
    writer = LedgerWriter(store, batch_size=10, flush_interval_s=0.001, queue_size=50)
    writer.start()
    await asyncio.sleep(0)
    accepted = sum(writer.submit(make_row(n)) for n in range(100))
    await asyncio.sleep(0.01)
    accepted += sum(writer.submit(make_row(n)) for n in range(100, 200))
    assert writer.dropped == 200 - accepted > 0
    assert accepted_matches(writer, accepted)
    store.gate.set()
    await writer.aclose()
    assert writer.written == accepted == await store.count()


async def test_store_failures_are_counted_and_the_loop_survives(
    store: SpyStore, caplog: pytest.LogCaptureFixture
) -> None:
    writer = LedgerWriter(store, batch_size=3, flush_interval_s=LONG)
    writer.start()
    store.fail_with = lambda: RuntimeError("Failing row contains (secret-user)")
    with caplog.at_level(logging.ERROR, logger="turnout.ledger.writer"):
        for n in range(3):
            writer.submit(make_row(n, user="secret-user"))
        await eventually(lambda: writer.failed == 3)
    store.fail_with = None
    for n in range(3, 6):
        writer.submit(make_row(n))
    await writer.aclose()
    assert (writer.written, writer.failed, writer.queued) == (3, 3, 0)
    assert await store.count() == 3
    [record] = caplog.records
    message = record.getMessage()
    assert "req-000000, req-000001, req-000002" in message
    assert "RuntimeError" in message
    assert "secret-user" not in message
    assert record.exc_info is None


async def test_a_store_error_message_is_logged(store: SpyStore, caplog: pytest.LogCaptureFixture) -> None:
    store.fail_with = lambda: StoreError("SQLite ledger x.db: database or disk is full")
    writer = LedgerWriter(store, batch_size=1, flush_interval_s=LONG)
    with caplog.at_level(logging.ERROR, logger="turnout.ledger.writer"):
        writer.submit(make_row(1))
        await writer.aclose()
    assert writer.failed == 1
    assert "database or disk is full" in caplog.records[0].getMessage()


async def test_from_config_and_lifecycle_misuse(store: SpyStore) -> None:
    cfg = StoreConfig(kind="memory", batch_size=7, flush_interval_ms=125, queue_size=70)
    writer = LedgerWriter.from_config(store, cfg)
    assert (writer.batch_size, writer.flush_interval_s, writer.queue_size) == (7, 0.125, 70)
    writer.start()
    with pytest.raises(RuntimeError):
        writer.start()
    await writer.aclose()
    await writer.aclose()  # closing twice is harmless
    with pytest.raises(ValueError, match="positive"):
        LedgerWriter(store, batch_size=0)


@needs_postgres
async def test_a_full_queue_drained_on_close_lands_in_postgres() -> None:
    schema = unique_schema()
    store = postgres_store(schema)
    await store.open()
    try:
        writer = LedgerWriter(store)  # the defaults: batches of 256, a queue of 10,000
        writer.start()
        assert all(writer.submit(make_row(n)) for n in range(10_000))
        await writer.aclose()
        assert (writer.written, writer.dropped, writer.failed, writer.queued) == (10_000, 0, 0, 0)
        assert await store.count() == 10_000
        assert await store.get("req-009999") == make_row(9_999)
    finally:
        await store.aclose()
        await drop_schema(schema)
