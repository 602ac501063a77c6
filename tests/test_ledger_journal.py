"""The spill journal and the writer over it: rows the store cannot take (down, failing, slower
than traffic) wait on disk and reach the store later, in order, once each; only a full journal
drops rows; a journal left by a dead process is replayed at the next start. Real SQLite where a
store is needed, with a fault-injecting wrapper next to it."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from tests.test_ledger_writer import eventually
from turnout.config import StoreConfig
from turnout.ledger.journal import SpillJournal, decode
from turnout.ledger.record import AttemptRecord, LedgerRow
from turnout.ledger.sqlite import SQLiteStore
from turnout.ledger.store import StoreError
from turnout.ledger.writer import LedgerWriter, spill_dir

LONG = 60.0


def row(n: int) -> LedgerRow:
    return LedgerRow(
        f"req-{n:08d}",
        1_700_000_000.0 + n,
        "acme",
        "support-reply",
        "internal",
        False,
        target="qwen",
        status=200,
        attempts=[AttemptRecord("qwen", "r0", None, 12.5, 0.0, 0.0001)],
        cost_usd=0.0001,
        latency_ms=13.0,
        labels=["a", "ü"],
    )


class Flaky(SQLiteStore):
    """A real SQLite store that can be made to fail or to stall, as a broken or slow disk or
    network would."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.down = False
        self.stall: asyncio.Event | None = None  # writes wait for it when set
        self.calls = 0

    async def write_batch(self, rows: Sequence[LedgerRow]) -> None:
        self.calls += 1
        if self.stall is not None:
            await self.stall.wait()
        if self.down:
            raise StoreError("the store is down (injected)")
        await super().write_batch(rows)


async def ids_in(store: SQLiteStore) -> list[str]:
    return sorted(r.request_id for r in await store.rows_between(0, 2e9))


# --- the journal on its own --------------------------------------------------------------


def test_rows_come_back_as_written(tmp_path: Path) -> None:
    journal = SpillJournal(tmp_path / "spill", 1 << 20)
    journal.open()
    assert not journal.pending()
    assert journal.append([row(1), row(2)])
    assert journal.pending()
    assert journal.claim() is None  # the open segment is never claimed
    journal.seal()
    segment = journal.claim()
    assert segment is not None
    rows, corrupt = segment.read()
    assert (rows, corrupt) == ([row(1), row(2)], 0)
    journal.remove(segment)
    assert not journal.pending()
    assert journal.bytes == 0


def test_the_directory_and_segments_are_owner_only(tmp_path: Path) -> None:
    journal = SpillJournal(tmp_path / "spill", 1 << 20)
    journal.open()
    journal.append([row(1)])
    assert (tmp_path / "spill").stat().st_mode & 0o077 == 0
    [segment] = (tmp_path / "spill").iterdir()
    assert segment.stat().st_mode & 0o077 == 0


def test_a_full_journal_refuses_the_whole_batch(tmp_path: Path) -> None:
    one = len(SpillJournal.__name__)  # any small bound: a row is a few hundred bytes
    journal = SpillJournal(tmp_path, one)
    journal.open()
    assert not journal.append([row(1)])
    assert not journal.pending()
    roomy = SpillJournal(tmp_path, 1 << 20)
    roomy.open()
    assert roomy.append([row(1)])


def test_a_torn_last_line_is_skipped_and_counted(tmp_path: Path) -> None:
    journal = SpillJournal(tmp_path, 1 << 20)
    journal.open()
    journal.append([row(1), row(2)])
    journal.seal()
    [path] = tmp_path.iterdir()
    with path.open("ab") as f:
        f.write(b'{"request_id": "req-0000')  # the process died mid-write
    segment = journal.claim()
    assert segment is not None
    rows, corrupt = segment.read()
    assert [r.request_id for r in rows] == ["req-00000001", "req-00000002"]
    assert corrupt == 1


def test_segments_are_claimed_oldest_first(tmp_path: Path) -> None:
    journal = SpillJournal(tmp_path, 1 << 20)
    journal.open()
    for n in range(3):
        journal.append([row(n)])
        journal.seal()
    seen: list[str] = []
    while (segment := journal.claim()) is not None:
        seen.extend(r.request_id for r in segment.read()[0])
        journal.remove(segment)
    assert seen == [row(n).request_id for n in range(3)]


def test_a_segment_another_process_appends_to_is_not_claimed(tmp_path: Path) -> None:
    path = tmp_path / f"{1:020d}-1{'.jsonl'}"
    path.write_bytes(b"")
    holder = subprocess.Popen(  # another live writer holds its open segment's lock
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
            str(path),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        journal = SpillJournal(tmp_path, 1 << 20)
        journal.open()
        assert journal.claim() is None
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    segment = journal.claim()  # the kernel dropped the dead process's lock
    assert segment is not None and segment.path == path


def test_a_claimed_segment_is_not_claimed_twice(tmp_path: Path) -> None:
    journal = SpillJournal(tmp_path, 1 << 20)
    journal.open()
    journal.append([row(1)])
    journal.seal()
    first = journal.claim()
    assert first is not None
    other = SpillJournal(tmp_path, 1 << 20)
    other.open()
    assert other.claim() is None
    journal.release(first)
    assert other.claim() is not None


def test_lines_from_a_newer_version_keep_the_fields_this_one_knows() -> None:
    got = decode(
        b'{"request_id":"r","started_at":1.0,"tenant":"t","task":"k","data_class":"public","stream":false,'
        b'"from_the_future":1,"attempts":[{"target":"a","replica":"b","error_class":null,"latency_ms":1.0,"x":2}]}'
    )
    assert got.request_id == "r"
    assert got.attempts == [AttemptRecord("a", "b", None, 1.0)]
    with pytest.raises(ValueError, match="row"):
        decode(b"[1, 2]")


def test_where_the_journal_lives() -> None:
    assert spill_dir(StoreConfig(path="/x/ledger.db")) == Path("/x/ledger.db.spill")
    assert spill_dir(StoreConfig(kind="postgres", dsn="postgresql://x/y")) == Path("./.turnout/ledger.spill")
    assert spill_dir(StoreConfig(spill_dir="/var/spill")) == Path("/var/spill")
    assert spill_dir(StoreConfig(spill_max_mb=0)) is None
    assert spill_dir(StoreConfig(kind="memory")) is None


# --- the writer over a failing or slow store -------------------------------------------------


@pytest.fixture
async def flaky(tmp_path: Path) -> AsyncIterator[Flaky]:
    store = Flaky(tmp_path / "ledger.db")
    await store.open()
    yield store
    await store.aclose()


def writer_for(store: SQLiteStore, tmp_path: Path, **kw: float) -> LedgerWriter:
    journal = SpillJournal(tmp_path / "spill", int(kw.pop("max_bytes", 1 << 24)))
    return LedgerWriter(
        store, batch_size=50, flush_interval_s=kw.pop("flush", 0.01), journal=journal, drain_s=kw.pop("drain", 5.0)
    )


async def test_rows_written_while_the_store_is_down_arrive_once_it_is_back(flaky: Flaky, tmp_path: Path) -> None:
    writer = writer_for(flaky, tmp_path)
    writer.start()
    flaky.down = True
    for n in range(500):
        assert writer.submit(row(n))
        if n % 50 == 0:
            await asyncio.sleep(0.005)
    await eventually(lambda: writer.spilled == 500)
    assert writer.spilling
    assert writer.journal_bytes > 0
    assert await flaky.count() == 0
    flaky.down = False
    for n in range(500, 600):  # traffic goes on meanwhile: it queues behind the journal
        writer.submit(row(n))
    await eventually(lambda: writer.written == 600, within_s=15)
    assert await ids_in(flaky) == [row(n).request_id for n in range(600)]
    await eventually(lambda: not writer.spilling)
    assert writer.journal_bytes == 0
    assert writer.dropped == 0
    await writer.aclose()
    assert not list((tmp_path / "spill").iterdir())


async def test_a_slow_write_is_journaled_after_one_interval_and_nothing_is_doubled(
    flaky: Flaky, tmp_path: Path
) -> None:
    writer = writer_for(flaky, tmp_path, flush=0.02)
    writer.start()
    flaky.stall = asyncio.Event()
    for n in range(120):
        writer.submit(row(n))
    # The stalled batch and everything after it reach the disk without waiting for the store.
    await eventually(lambda: writer.spilled == 120)
    assert writer.queued == 0
    flaky.stall.set()
    await eventually(lambda: not writer.spilling, within_s=10)
    assert await ids_in(flaky) == [row(n).request_id for n in range(120)]  # the stalled batch landed twice, kept once
    await writer.aclose()


async def test_a_journal_left_by_a_crash_is_replayed_at_start(flaky: Flaky, tmp_path: Path) -> None:
    left = SpillJournal(tmp_path / "spill", 1 << 20)
    left.open()
    left.append([row(n) for n in range(30)])
    left.close()  # as a killed process leaves it: the lock gone with the process
    writer = writer_for(flaky, tmp_path)
    writer.start()
    assert writer.spilling
    writer.submit(row(30))
    await eventually(lambda: writer.written == 31)
    await writer.aclose()
    assert await ids_in(flaky) == [row(n).request_id for n in range(31)]


async def test_rows_stay_on_disk_when_the_store_is_down_at_close(flaky: Flaky, tmp_path: Path) -> None:
    writer = writer_for(flaky, tmp_path, drain=0.2)
    writer.start()
    flaky.down = True
    for n in range(40):
        writer.submit(row(n))
    await writer.aclose()
    assert writer.spilled == 40
    assert writer.dropped == 0
    flaky.down = False
    again = writer_for(flaky, tmp_path)
    again.start()
    await eventually(lambda: again.written == 40)
    await again.aclose()
    assert len(await ids_in(flaky)) == 40


async def test_a_full_journal_drops_counts_and_logs(
    flaky: Flaky, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = writer_for(flaky, tmp_path, max_bytes=2000)
    writer.start()
    flaky.down = True
    with caplog.at_level(logging.ERROR, "turnout.ledger.writer"):
        for n in range(200):
            writer.submit(row(n))
        await eventually(lambda: writer.spilled + writer.dropped == 200)
    assert writer.dropped > 0
    assert writer.journal_bytes <= 2000
    assert "spill journal full" in caplog.text
    assert "req-" not in caplog.text.split("spill journal full")[1].split("\n")[0]  # no row contents
    flaky.down = False
    await eventually(lambda: writer.written == writer.spilled)
    await writer.aclose()


async def test_an_unwritable_journal_counts_rows_as_dropped(flaky: Flaky, tmp_path: Path) -> None:
    writer = writer_for(flaky, tmp_path)
    writer.start()
    flaky.down = True
    real_append = writer.journal.append if writer.journal else None
    assert real_append is not None

    def broken(rows: Sequence[LedgerRow]) -> bool:
        raise OSError(28, "No space left on device")  # a full disk (root ignores file modes)

    writer.journal.append = broken  # type: ignore[union-attr,method-assign]
    writer.submit(row(1))
    await eventually(lambda: writer.dropped == 1)
    writer.journal.append = real_append  # type: ignore[union-attr,method-assign]
    flaky.down = False
    writer.submit(row(2))
    await eventually(lambda: writer.written == 1, within_s=10)
    await writer.aclose()


async def test_without_a_journal_a_failed_batch_is_counted_failed(flaky: Flaky) -> None:
    writer = LedgerWriter(flaky, batch_size=10, flush_interval_s=0.01)
    writer.start()
    flaky.down = True
    writer.submit(row(1))
    await eventually(lambda: writer.failed == 1)
    await writer.aclose()


async def test_metrics_and_readyz_numbers_follow_the_journal(flaky: Flaky, tmp_path: Path) -> None:
    writer = writer_for(flaky, tmp_path)
    writer.start()
    flaky.down = True
    writer.submit(row(1))
    await eventually(lambda: writer.spilled == 1)
    assert writer.spilling and writer.journal_bytes > 0
    flaky.down = False
    await eventually(lambda: not writer.spilling)
    assert writer.journal_bytes == 0 and writer.written == 1
    await writer.aclose()


def test_the_segment_lock_is_a_real_flock(tmp_path: Path) -> None:
    journal = SpillJournal(tmp_path, 1 << 20)
    journal.open()
    journal.append([row(1)])
    [path] = tmp_path.iterdir()
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


async def test_steady_traffic_goes_back_to_the_store_while_the_journal_replays(flaky: Flaky, tmp_path: Path) -> None:
    """Traffic never pauses, so the open segment is never empty: the writer must still return
    to direct writes (and stop paying for every row twice) once the store has caught up."""
    writer = writer_for(flaky, tmp_path)
    writer.start()
    flaky.down = True
    n = 0
    for _ in range(20):
        for _ in range(10):
            writer.submit(row(n))
            n += 1
        await asyncio.sleep(0.005)
    await eventually(lambda: writer.spilled == n)
    flaky.down = False
    spilled_when_back = writer.spilled
    for _ in range(200):  # a second of steady traffic after the store came back
        for _ in range(5):
            writer.submit(row(n))
            n += 1
        await asyncio.sleep(0.005)
    assert not writer.spilling
    assert writer.spilled - spilled_when_back < n // 4  # most rows after the return went straight in
    await writer.aclose()
    assert len(await ids_in(flaky)) == n
