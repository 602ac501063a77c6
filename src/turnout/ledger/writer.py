"""Ledger rows leave the request path through a bounded in-memory queue.

``submit`` is synchronous: it appends to the queue and returns, never awaiting and never
touching disk. A background task owned by the writer takes rows off the queue and writes them
to the store in batches: as soon as ``batch_size`` rows are waiting, or ``flush_interval_s``
after the first row of a partial batch arrived.

When the queue is full the row is dropped, ``dropped`` is incremented and a warning is logged
at most once per ``log_interval_s``. We choose counting and logging over back-pressure on
purpose: a slow or broken disk must never slow down or fail a request, and a missing ledger
row is visible in the counters (and in metrics built on them).

A failed store write is logged (request ids only, never row contents), its rows are counted in
``failed``, and the loop carries on with the next batch; failed rows are not retried.

``aclose`` writes everything still queued before it returns, so a graceful shutdown loses
nothing. The writer does not own the store: whoever opened it closes it, after the writer.

At every moment: rows accepted by ``submit`` == ``written`` + ``failed`` + ``queued``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from turnout.config import StoreConfig
from turnout.ledger.record import LedgerRow
from turnout.ledger.store import LedgerStore, StoreError

log = logging.getLogger(__name__)


class LedgerWriter:
    def __init__(
        self,
        store: LedgerStore,
        batch_size: int = 256,
        flush_interval_s: float = 0.25,
        queue_size: int = 10_000,
        *,
        log_interval_s: float = 10.0,
    ) -> None:
        if batch_size <= 0 or queue_size <= 0 or flush_interval_s <= 0:
            raise ValueError("batch_size, queue_size and flush_interval_s must be positive")
        self.store = store
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.queue_size = queue_size
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self._rows: deque[LedgerRow] = deque()
        self._writing = 0  # rows taken off the queue whose write has not finished
        self._nonempty = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._drop_log = _RateLimit(log_interval_s)
        self._fail_log = _RateLimit(log_interval_s)

    @classmethod
    def from_config(cls, store: LedgerStore, cfg: StoreConfig) -> LedgerWriter:
        return cls(store, cfg.batch_size, cfg.flush_interval_ms / 1000, cfg.queue_size)

    @property
    def queued(self) -> int:
        """Rows accepted and not yet written or failed (including a batch being written)."""
        return len(self._rows) + self._writing

    def start(self) -> None:
        """Start the flush task on the running loop. Rows submitted before this are kept."""
        if self._task is not None or self._closing:
            raise RuntimeError("the ledger writer was already started or closed")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="turnout-ledger-writer")

    def submit(self, row: LedgerRow) -> bool:
        """Queue ``row`` for writing; False (and counted in ``dropped``) when the queue is full
        or the writer is closed. Call from the event loop's thread."""
        if self._closed or len(self._rows) >= self.queue_size:
            self.dropped += 1
            if self._drop_log.ready():
                log.warning(
                    "ledger: %s; dropped %d rows since the last warning (%d in total)",
                    "writer is closed" if self._closed else f"queue is full ({self.queue_size} rows)",
                    self._drop_log.take(self.dropped),
                    self.dropped,
                )
            return False
        self._rows.append(row)
        self._nonempty.set()
        if len(self._rows) >= self.batch_size:
            self._full.set()
        return True

    async def aclose(self) -> None:
        """Write everything queued, then stop. Rows submitted afterwards are dropped."""
        if self._closed:
            return
        self._closing = True
        self._nonempty.set()
        self._full.set()
        if self._task is None:  # never started: drain anyway
            self._task = asyncio.get_running_loop().create_task(self._run(), name="turnout-ledger-writer")
        await self._task

    async def _run(self) -> None:
        while True:
            await self._nonempty.wait()
            # A partial batch gets one interval to fill up; a full one goes at once.
            due = self._closing
            if not due and len(self._rows) < self.batch_size:
                try:
                    async with asyncio.timeout(self.flush_interval_s):
                        await self._full.wait()
                except TimeoutError:
                    due = True
            await self._write_queued(partial=due or self._closing)
            if not self._rows:
                if self._closing:
                    # Closed in the same step as the last emptiness check: a row submitted
                    # later is refused and counted, never left unwritten in the queue.
                    self._closed = True
                    return
                self._nonempty.clear()
            if len(self._rows) < self.batch_size:
                self._full.clear()

    async def _write_queued(self, partial: bool) -> None:
        """Write full batches; with ``partial``, also every row queued now. Rows arriving
        during the writes wait for the next round."""
        leftover = len(self._rows) if partial else 0
        while len(self._rows) >= self.batch_size or leftover > 0:
            n = min(self.batch_size, len(self._rows))
            leftover = max(0, leftover - n)
            await self._write([self._rows.popleft() for _ in range(n)])

    async def _write(self, batch: list[LedgerRow]) -> None:
        self._writing = len(batch)
        try:
            await self.store.write_batch(batch)
        except Exception as exc:  # any store failure: count it and keep the loop alive
            self.failed += len(batch)
            if self._fail_log.ready():
                # Stores raise StoreError with messages safe to log; another exception's text
                # might quote row values (a driver echoing the failing row), so only its type.
                reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, StoreError) else type(exc).__name__
                log.error(
                    "ledger: writing %d rows failed (%s); request ids %s; "
                    "%d rows failed since the last error (%d in total)",
                    len(batch),
                    reason,
                    _ids(batch),
                    self._fail_log.take(self.failed),
                    self.failed,
                )
        else:
            self.written += len(batch)
        finally:
            self._writing = 0


class _RateLimit:
    """At most one log line per interval; ``take`` reports how many events it summarises."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last = -float("inf")
        self._reported = 0

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return False
        self._last = now
        return True

    def take(self, total: int) -> int:
        since, self._reported = total - self._reported, total
        return since


def _ids(batch: list[LedgerRow], shown: int = 5) -> str:
    ids = ", ".join(row.request_id for row in batch[:shown])
    return ids + (f" and {len(batch) - shown} more" if len(batch) > shown else "")
