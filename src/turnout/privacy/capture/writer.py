"""Captured text leaves the request path through a bounded in-memory queue, as ledger rows do.

``submit`` is synchronous: it appends to the queue (``turnout._support.batching.BatchQueue``)
and returns, never awaiting, never touching disk and never redacting (redaction is CPU work the
request should not wait for). The queue's task takes batches, every ``flush_interval_s`` or as
soon as ``batch_size`` records wait; the writer redacts them off the loop (a worker thread) and
writes them to the store in one transaction with a ``used`` audit event per record kept under
a grant.

Before anything is written, every text goes through a redactor:

* ``redacted`` mode: ``redactor`` (secrets and PII replaced by typed placeholders);
* ``full`` mode: ``secrets`` (a redactor that scrubs secrets only and keeps PII). Without one,
  full mode falls back to ``redactor`` too: the safe side, at the cost of the PII a grant was
  meant to reveal.

A redactor that raises makes the writer refuse that record (counted in ``failed``, logged by
request id); raw text is never written instead. When the queue is full (``queue_size`` records or
``queue_chars`` characters of text) the record is dropped, counted in ``dropped`` and logged at
most once per ``log_interval_s``: capture is best-effort and must never slow a request.

``aclose`` redacts and writes everything still queued before it returns. The writer does not
own the store: whoever opened it closes it, after the writer.

At every moment: records accepted == ``written`` + ``failed`` + ``queued``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from turnout._support.batching import BatchQueue, QueueWriter, request_ids
from turnout.config import CaptureConfig
from turnout.privacy.capture.model import CaptureRow, Decision, TextRedactor
from turnout.privacy.capture.store import CaptureStore

log = logging.getLogger(__name__)

DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class _Pending:
    request_id: str
    tenant: str
    task: str
    mode: Literal["redacted", "full"]
    grant_id: str | None
    at: float
    prompt_text: str
    completion_text: str | None

    @property
    def chars(self) -> int:
        return len(self.prompt_text) + len(self.completion_text or "")


class CaptureWriter(QueueWriter[_Pending]):
    def __init__(
        self,
        store: CaptureStore,
        redactor: TextRedactor,
        *,
        secrets: TextRedactor | None = None,
        ttl_days: float = 30.0,
        ttl_days_for: Callable[[str, str], float] | None = None,
        batch_size: int = 64,
        flush_interval_s: float = 0.5,
        queue_size: int = 1_000,
        queue_chars: int = 32 * 1024 * 1024,
        log_interval_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl_days <= 0:
            raise ValueError("ttl_days must be positive")
        self.store = store
        self.redactor = redactor
        self.secrets = secrets
        self.ttl_s = ttl_days * DAY_S
        # Per tenant and task (``retention.rules[].capture_days``); None: ``ttl_days`` for all.
        self._ttl_days_for = ttl_days_for
        self.queue_chars = queue_chars
        self._clock = clock
        self.queue: BatchQueue[_Pending] = BatchQueue(
            "capture",
            self._write,
            batch_size=batch_size,
            flush_interval_s=flush_interval_s,
            queue_size=queue_size,
            logger=log,
            noun="records",
            weigh=_chars,
            max_weight=queue_chars,
            on_failure=_failed,
            log_interval_s=log_interval_s,
        )
        if secrets is None:
            log.info("capture: no secrets-only redactor; full-mode text is redacted like redacted mode")

    @classmethod
    def from_config(
        cls, store: CaptureStore, cfg: CaptureConfig, redactor: TextRedactor, secrets: TextRedactor | None = None
    ) -> CaptureWriter:
        return cls(store, redactor, secrets=secrets, ttl_days=cfg.ttl_days)

    def submit(
        self,
        request_id: str,
        tenant: str,
        task: str,
        decision: Decision,
        prompt_text: str,
        completion_text: str | None,
        at: float | None = None,
    ) -> bool:
        """Queue one request's text as ``decision`` says; True when queued. A decision that
        keeps no text (``metadata``, or not sampled) is ignored and returns False. Call from
        the event loop's thread."""
        if not decision.capture or decision.mode == "metadata":
            return False
        item = _Pending(
            request_id,
            tenant,
            task,
            decision.mode,
            decision.grant_id,
            self._clock() if at is None else at,
            prompt_text,
            completion_text,
        )
        return self.queue.submit(item)

    def _ttl_s(self, tenant: str, task: str) -> float:
        return self.ttl_s if self._ttl_days_for is None else self._ttl_days_for(tenant, task) * DAY_S

    async def _write(self, batch: list[_Pending]) -> list[_Pending]:
        """Redact off the loop, then store; a record whose redaction fails is refused."""
        rows, refused = await asyncio.to_thread(self._prepare, batch)
        await self.store.write_captures(rows)
        return refused

    def _prepare(self, batch: Sequence[_Pending]) -> tuple[list[CaptureRow], list[_Pending]]:
        """On a worker thread: redact every text. Raw text is never kept instead of a failed
        redaction: that record is refused."""
        rows, refused = [], []
        for item in batch:
            try:
                rows.append(self._redacted(item))
            except Exception as exc:
                log.error("capture: redacting request %s failed (%s); not kept", item.request_id, type(exc).__name__)
                refused.append(item)
        return rows, refused

    def _redacted(self, item: _Pending) -> CaptureRow:
        scrub = self.redactor if item.mode == "redacted" or self.secrets is None else self.secrets
        prompt = scrub.redact(item.prompt_text).text
        completion = None if item.completion_text is None else scrub.redact(item.completion_text).text
        return CaptureRow(
            item.request_id,
            item.tenant,
            item.task,
            item.mode,
            item.grant_id,
            item.at,
            item.at + self._ttl_s(item.tenant, item.task),
            prompt,
            completion,
        )


def _failed(batch: list[_Pending], exc: Exception) -> None:
    """Count and carry on; never log the records themselves."""
    log.error(
        "capture: writing %d records failed (%s); request ids %s", len(batch), type(exc).__name__, request_ids(batch)
    )


def _chars(item: _Pending) -> int:
    return item.chars
