"""Ledger rows leave the request path through a bounded in-memory queue
(``turnout._support.batching.BatchQueue``): ``submit`` appends and returns, never awaiting and
never touching disk; a background task writes batches to the store by size or by
``flush_interval_s``; a full queue drops the row, counted in ``dropped`` and logged at most once
per ``log_interval_s`` (a slow or broken disk must never slow down or fail a request, and a
missing row is visible in the counters and in metrics built on them).

A failed store write is logged (request ids only, never row contents), its rows are counted in
``failed``, and the loop carries on with the next batch; failed rows are not retried.

``aclose`` writes everything still queued before it returns, so a graceful shutdown loses
nothing. The writer does not own the store: whoever opened it closes it, after the writer.

At every moment: rows accepted by ``submit`` == ``written`` + ``failed`` + ``queued``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from turnout._support.batching import BatchQueue, QueueWriter, RateLimit, request_ids
from turnout.config import StoreConfig
from turnout.ledger.record import LedgerRow
from turnout.ledger.store import LedgerStore, StoreError

log = logging.getLogger(__name__)


class LedgerWriter(QueueWriter[LedgerRow]):
    def __init__(
        self,
        store: LedgerStore,
        batch_size: int = 256,
        flush_interval_s: float = 0.25,
        queue_size: int = 10_000,
        *,
        log_interval_s: float = 10.0,
    ) -> None:
        self.store = store
        self._fail_log = RateLimit(log_interval_s)
        self.queue: BatchQueue[LedgerRow] = BatchQueue(
            "ledger",
            self._write,
            batch_size=batch_size,
            flush_interval_s=flush_interval_s,
            queue_size=queue_size,
            logger=log,
            noun="rows",
            on_failure=self._failed,
            log_interval_s=log_interval_s,
        )
        # The request path calls this once per request: the queue's own method, no extra frame.
        self.submit: Callable[[LedgerRow], bool] = self.queue.submit

    @classmethod
    def from_config(cls, store: LedgerStore, cfg: StoreConfig) -> LedgerWriter:
        return cls(store, cfg.batch_size, cfg.flush_interval_ms / 1000, cfg.queue_size)

    async def _write(self, batch: list[LedgerRow]) -> Sequence[LedgerRow]:
        await self.store.write_batch(batch)  # all rows or none: a failure raises
        return ()

    def _failed(self, batch: list[LedgerRow], exc: Exception) -> None:
        if not self._fail_log.ready():
            return
        # Stores raise StoreError with messages safe to log; another exception's text might
        # quote row values (a driver echoing the failing row), so only its type.
        reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, StoreError) else type(exc).__name__
        log.error(
            "ledger: writing %d rows failed (%s); request ids %s; %d rows failed since the last error (%d in total)",
            len(batch),
            reason,
            request_ids(batch),
            self._fail_log.take(self.failed),
            self.failed,
        )
