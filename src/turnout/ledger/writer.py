"""Ledger rows leave the request path through a bounded in-memory queue
(``turnout._support.batching.BatchQueue``): ``submit`` appends and returns, never awaiting and
never touching disk. A background task hands the queue's batches on, by size or every
``flush_interval_s``:

* to the store, while it keeps up: a batch the store has not committed within ``slow_s`` (one
  flush interval, at least 100 ms) is also appended to the spill journal (``turnout.ledger.journal``), and so is every
  batch after it until the journal is replayed;
* to the journal, from a failed or slow store write until the store has caught up. A
  replayer feeds the journal's segments to the store, oldest first, retrying with backoff while
  the store is down, and deletes each once committed. When only the segment being appended to
  is left, it seals that one too and batches go straight to the store again while it replays
  (so the last journaled rows may land after newer ones: order in the store is by
  ``started_at``, never by arrival).

So no row waits in memory much longer than one flush interval plus one store write (at most
``slow_s``): a SIGKILL loses about that window of answered requests. Stores skip a request id
they already hold, so a batch written twice (a slow write that succeeded after all, a replay
cut by a crash) is harmless. Only a full queue or a full journal
(``store.spill_max_mb``) drops rows: counted in ``dropped``, logged at most once per
``log_interval_s``, shown in ``/metrics``; while the journal refuses rows (``over_limit``)
``/readyz`` says the replica is unready. Without a journal (the memory store,
``spill_max_mb: 0``) a failed batch is logged and counted in ``failed``.

What the log says: a WARN line when rows start going to the journal (the store failed or is
slow) and one when it is replayed and rows go straight to the store again, once per change;
store failures meanwhile at WARN, at most once per ``log_interval_s`` (the rows are kept); an
ERROR whenever rows are lost (a full queue, a full or failing journal, a failed write with no
journal, unreadable journal lines), also at most once per ``log_interval_s`` with the count.

Rows are encoded off the event loop: by the store (SQLite on its thread) or on the journal's
own thread. ``aclose`` delivers everything queued, gives the replayer ``drain_s`` to empty the
journal, and leaves the rest on disk for the next start. The writer does not own the store:
whoever opened it closes it, after the writer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from turnout._support.batching import BatchQueue, QueueWriter, RateLimit, request_ids
from turnout.config import StoreConfig
from turnout.ledger.journal import Segment, SpillJournal
from turnout.ledger.record import LedgerRow
from turnout.ledger.store import LedgerStore, StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")
SLOW_S = 0.1
RETRY_S = (0.25, 2.0)  # the replayer's backoff while the store refuses: first, most
# ``over_limit`` holds this long after the journal last refused rows, unless the journal takes
# rows or frees space first: long enough for a readiness probe to see it, and not forever for
# a replica that, taken out of service, gets no rows that could prove the journal works again.
REFUSED_HOLD_S = 30.0


class LedgerWriter(QueueWriter[LedgerRow]):
    def __init__(
        self,
        store: LedgerStore,
        batch_size: int = 256,
        flush_interval_s: float = 0.01,
        queue_size: int = 10_000,
        *,
        journal: SpillJournal | None = None,
        drain_s: float = 5.0,
        log_interval_s: float = 10.0,
    ) -> None:
        self.store = store
        self.journal = journal
        # A store write still running after this is slow: its batch is journaled too. Not
        # shorter than SLOW_S: a healthy store under load takes tens of ms for a batch, and
        # journaling those would only do the work twice.
        self.slow_s = max(flush_interval_s, SLOW_S)
        self.drain_s = drain_s
        self.stored = 0  # rows the store committed (straight or replayed)
        self.spilled = 0  # rows appended to the journal
        self.replayed = 0  # rows replayed from the journal into the store
        self.corrupt = 0  # journal lines that could not be read back (a torn write)
        self.journal_dropped = 0  # rows refused by a full (or failing) journal
        self._failed = 0  # rows lost to a failed write with no journal to keep them
        self._refused_at: float | None = None  # when the journal last refused rows (monotonic)
        self._fail_log = RateLimit(log_interval_s)
        self._spill_log = RateLimit(log_interval_s)
        self._direct = True  # False from a failed or slow store write until the replayer catches up
        self._told_spilling = False  # the log's last word: rows go to the journal
        self._backlog = False  # the journal holds rows not yet replayed
        self._in_flight: asyncio.Future[None] | None = None  # a slow store write, still running
        self._appending = False
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._caught_up = asyncio.Event()  # set when the replayer empties the journal
        self._replayer: asyncio.Task[None] | None = None
        self._io = ThreadPoolExecutor(1, thread_name_prefix="ledger-journal") if journal else None
        self.queue: BatchQueue[LedgerRow] = BatchQueue(
            "ledger",
            self._deliver,
            batch_size=batch_size,
            flush_interval_s=flush_interval_s,
            queue_size=queue_size,
            logger=log,
            noun="rows",
            on_failure=self._lost,
            log_interval_s=log_interval_s,
        )
        # The request path calls this once per request: the queue's own method, no extra frame.
        self.submit: Callable[[LedgerRow], bool] = self.queue.submit

    @classmethod
    def from_config(cls, store: LedgerStore, cfg: StoreConfig) -> LedgerWriter:
        directory = spill_dir(cfg)
        journal = None if directory is None else SpillJournal(directory, int(cfg.spill_max_mb * (1 << 20)))
        return cls(store, cfg.batch_size, cfg.flush_interval_ms / 1000, cfg.queue_size, journal=journal)

    # --- counters ----------------------------------------------------------------------------

    @property
    def written(self) -> int:
        return self.stored

    @property
    def dropped(self) -> int:
        return self.queue.dropped + self.journal_dropped

    @property
    def failed(self) -> int:
        return self._failed + self.corrupt

    @property
    def spilling(self) -> bool:
        """True while rows go to the journal (the store failed or fell behind) or wait there."""
        return self._backlog or not self._direct

    @property
    def journal_bytes(self) -> int:
        return 0 if self.journal is None else self.journal.bytes

    @property
    def alive(self) -> bool:
        """Whether its background tasks run: the queue's flush task and the journal's replayer."""
        return self.queue.running and (self._replayer is None or not self._replayer.done())

    @property
    def over_limit(self) -> bool:
        """The spill journal is at ``store.spill_max_mb``, or it refused rows (full, or failing)
        within the last ``REFUSED_HOLD_S`` and since then neither it nor the store took any."""
        journal, refused = self.journal, self._refused_at
        if journal is not None and journal.bytes >= journal.max_bytes:
            return True
        return refused is not None and time.monotonic() - refused < REFUSED_HOLD_S

    # --- life --------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the journal (rows a previous run left are replayed first) and start."""
        if self.journal is not None:
            self.journal.open()
            if self.journal.pending():
                self._direct, self._backlog = False, True
                self._wake.set()
                self._tell_spilling(True, "a previous run left rows in the journal; replaying them first")
            self._replayer = asyncio.get_running_loop().create_task(self._replay_loop(), name="ledger-replay")
        self.queue.start()

    async def aclose(self) -> None:
        """Deliver everything queued; give the replayer ``drain_s`` to empty the journal."""
        await self.queue.aclose()
        if self._replayer is not None:
            if self._backlog:
                self._caught_up.clear()
                self._wake.set()
                try:
                    async with asyncio.timeout(self.drain_s):
                        await self._caught_up.wait()
                except TimeoutError:
                    log.warning("ledger: %d bytes of rows stay in the spill journal", self.journal_bytes)
            self._stopping.set()
            self._wake.set()
            await self._replayer
        if self._in_flight is not None:
            await asyncio.wait((self._in_flight,), timeout=self.drain_s)  # it is journaled too
        if self._io is not None:
            assert self.journal is not None
            await self._run(self.journal.close)
            self._io.shutdown(wait=True)

    # --- delivery ----------------------------------------------------------------------------

    async def _deliver(self, batch: list[LedgerRow]) -> Sequence[LedgerRow]:
        if self.journal is None:
            await self.store.write_batch(batch)  # all rows or none: a failure raises
            self.stored += len(batch)
            return ()
        if self._direct and self._in_flight is None:
            write = asyncio.ensure_future(self.store.write_batch(batch))
            done, _ = await asyncio.wait((write,), timeout=self.slow_s)
            if done:
                exc = write.exception()
                if exc is None or not isinstance(exc, Exception):
                    self.stored += len(batch)
                    self._refused_at = None  # the store takes rows again
                    return ()
                if self._told_spilling:
                    self._report(batch, exc, "spilling to the journal")
                else:
                    self._tell_spilling(True, f"writing {len(batch)} rows failed ({_reason(exc)})")
            else:  # slow: keep it on disk too, and everything after it until the store catches up
                self._in_flight = write
                write.add_done_callback(self._slow_write_done)
                self._tell_spilling(True, f"a store write took longer than {self.slow_s * 1000:.0f} ms")
            self._direct = False
        await self._spill(batch)
        return ()

    async def _spill(self, batch: list[LedgerRow]) -> None:
        assert self.journal is not None
        self._appending = True
        failed: OSError | None = None
        try:
            kept = await self._run(self.journal.append, batch)
        except OSError as exc:
            kept, failed = False, exc
        finally:
            self._appending = False
        if kept:
            self.spilled += len(batch)
            self._refused_at = None
            self._backlog = True
            self._wake.set()
            return
        self.journal_dropped += len(batch)
        self._refused_at = time.monotonic()
        self._wake.set()  # the replayer checks again: an empty journal sends rows to the store
        if self._spill_log.ready():
            why = (
                f"full ({self.journal_bytes} bytes, store.spill_max_mb)"
                if failed is None
                else f"failed ({type(failed).__name__}: {failed.strerror})"
            )
            log.error(
                "ledger: spill journal %s; dropped %d rows since the last warning (%d in total)",
                why,
                self._spill_log.take(self.journal_dropped),
                self.dropped,
            )

    def _slow_write_done(self, write: asyncio.Future[None]) -> None:
        self._in_flight = None
        if not write.cancelled() and write.exception() is not None and self._fail_log.ready():
            log.warning("ledger: a slow store write failed; its rows are in the spill journal")

    # --- replay ------------------------------------------------------------------------------

    async def _replay_loop(self) -> None:
        assert self.journal is not None
        journal = self.journal
        backoff = RETRY_S[0]
        while not self._stopping.is_set():
            await self._wake.wait()
            self._wake.clear()
            while self._backlog and not self._stopping.is_set():
                segment = await self._run(journal.claim)
                if segment is None:
                    if journal.rows_in_open == 0 and not self._appending:
                        self._backlog = False  # the journal is empty
                        self._caught_up.set()
                        if self._direct:
                            self._tell_spilling(False, "")
                        break
                    # Only the open segment is left, and the store took everything before it:
                    # seal it for replay and send new batches straight to the store meanwhile
                    # (they may land before the last journaled rows; each lands once).
                    await self._run(journal.seal)
                    self._direct = True
                    continue
                if await self._replay(journal, segment):
                    backoff = RETRY_S[0]
                    continue
                try:  # the store refused: wait, unless closing
                    async with asyncio.timeout(backoff):
                        await self._stopping.wait()
                except TimeoutError:
                    pass
                backoff = min(backoff * 2, RETRY_S[1])

    async def _replay(self, journal: SpillJournal, segment: Segment) -> bool:
        """One segment into the store; False (and released) when the store refused it."""
        rows, corrupt = await self._run(segment.read)
        try:
            size = self.queue.batch_size
            for i in range(0, len(rows), size):
                await self.store.write_batch(rows[i : i + size])
        except Exception as exc:
            journal.release(segment)
            self._report(rows, exc, "retrying")
            return False
        await self._run(journal.remove, segment)
        self._refused_at = None  # space freed: the next batch may fit
        if corrupt:
            self.corrupt += corrupt
            log.error("ledger: %d unreadable lines in spill segment %s (a torn write)", corrupt, segment.path.name)
        self.stored += len(rows)
        self.replayed += len(rows)
        return True

    # --- failures ----------------------------------------------------------------------------

    def _lost(self, batch: list[LedgerRow], exc: Exception) -> None:
        self._failed += len(batch)
        self._report(batch, exc, "rows lost", lost=True)

    def _report(self, batch: Sequence[LedgerRow], exc: Exception, then: str, *, lost: bool = False) -> None:
        """A failed store write: WARN while the journal keeps the rows, ERROR when they are lost."""
        if not self._fail_log.ready():
            return
        log.log(
            logging.ERROR if lost else logging.WARNING,
            "ledger: writing %d rows failed (%s), %s; request ids %s",
            len(batch),
            _reason(exc),
            then,
            request_ids(batch),
        )

    def _tell_spilling(self, on: bool, why: str) -> None:
        """One WARN line each time rows start going to the journal, and when they stop."""
        if on == self._told_spilling:
            return
        self._told_spilling = on
        if on:
            log.warning("ledger: rows go to the spill journal in %s until the store catches up: %s", self._where(), why)
        else:
            log.warning(
                "ledger: the spill journal is replayed (%d rows so far); rows go straight to the store again",
                self.replayed,
            )

    def _where(self) -> str:
        return "(none)" if self.journal is None else str(self.journal.directory)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)


def _reason(exc: BaseException) -> str:
    # Stores raise StoreError with messages safe to log; another exception's text might quote
    # row values (a driver echoing the failing row), so only its type.
    return f"{type(exc).__name__}: {exc}" if isinstance(exc, StoreError) else type(exc).__name__


def spill_dir(cfg: StoreConfig) -> Path | None:
    """Where the journal lives: ``store.spill_dir``, else beside the SQLite file, else under
    ``./.turnout/``. None: no journal (the memory store, ``spill_max_mb: 0``)."""
    if cfg.kind not in ("sqlite", "postgres") or cfg.spill_max_mb <= 0:
        return None
    if cfg.spill_dir:
        return Path(cfg.spill_dir)
    if cfg.kind == "sqlite":
        return Path(f"{cfg.path}.spill")
    return Path("./.turnout/ledger.spill")
