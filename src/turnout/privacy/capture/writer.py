"""Captured text leaves the request path through a bounded in-memory queue, as ledger rows do.

``submit`` is synchronous: it appends to the queue and returns, never awaiting, never touching
disk and never redacting (redaction is CPU work the request should not wait for). A background
task takes everything queued, every ``flush_interval_s`` or as soon as ``batch_size`` records
wait, redacts it off the loop (a worker thread) and writes it to the store in one transaction
with a ``used`` audit event per record kept under a grant.

Before anything is written, every text goes through a redactor:

* ``redacted`` mode: ``redactor`` (secrets and PII replaced by typed placeholders);
* ``full`` mode: ``secrets`` (a redactor that scrubs secrets only and keeps PII). Without one,
  full mode falls back to ``redactor`` too: the safe side, at the cost of the PII a grant was
  meant to reveal.

A redactor that raises drops that record (counted in ``failed``, logged by request id); raw
text is never written instead. When the queue is full (``queue_size`` records or
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
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

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


class CaptureWriter:
    def __init__(
        self,
        store: CaptureStore,
        redactor: TextRedactor,
        *,
        secrets: TextRedactor | None = None,
        ttl_days: float = 30.0,
        batch_size: int = 64,
        flush_interval_s: float = 0.5,
        queue_size: int = 1_000,
        queue_chars: int = 32 * 1024 * 1024,
        log_interval_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if min(batch_size, queue_size, queue_chars) <= 0 or flush_interval_s <= 0 or ttl_days <= 0:
            raise ValueError("batch_size, queue_size, queue_chars, flush_interval_s and ttl_days must be positive")
        self.store = store
        self.redactor = redactor
        self.secrets = secrets
        self.ttl_s = ttl_days * DAY_S
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.queue_size = queue_size
        self.queue_chars = queue_chars
        self.log_interval_s = log_interval_s
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self._clock = clock
        self._items: deque[_Pending] = deque()
        self._chars = 0
        self._writing = 0
        self._nonempty = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._last_drop_log = -float("inf")
        if secrets is None:
            log.info("capture: no secrets-only redactor; full-mode text is redacted like redacted mode")

    @classmethod
    def from_config(
        cls, store: CaptureStore, cfg: CaptureConfig, redactor: TextRedactor, secrets: TextRedactor | None = None
    ) -> CaptureWriter:
        return cls(store, redactor, secrets=secrets, ttl_days=cfg.ttl_days)

    @property
    def queued(self) -> int:
        return len(self._items) + self._writing

    def start(self) -> None:
        if self._task is not None or self._closing:
            raise RuntimeError("the capture writer was already started or closed")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="turnout-capture-writer")

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
        if self._closed or len(self._items) >= self.queue_size or self._chars + item.chars > self.queue_chars:
            self._drop()
            return False
        self._items.append(item)
        self._chars += item.chars
        self._nonempty.set()
        if len(self._items) >= self.batch_size:
            self._full.set()
        return True

    async def aclose(self) -> None:
        """Write everything queued, then stop; later submissions are dropped."""
        if self._closed:
            return
        self._closing = True
        self._nonempty.set()
        self._full.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="turnout-capture-writer")
        await self._task

    async def _run(self) -> None:
        while True:
            await self._nonempty.wait()
            if not self._closing and len(self._items) < self.batch_size:
                try:
                    async with asyncio.timeout(self.flush_interval_s):
                        await self._full.wait()
                except TimeoutError:
                    pass
            while self._items:
                n = min(self.batch_size, len(self._items))
                batch = [self._items.popleft() for _ in range(n)]
                self._chars -= sum(item.chars for item in batch)
                await self._write(batch)
            # Nothing awaits between the emptiness check above and here, so no record can
            # slip in unseen.
            if self._closing:
                self._closed = True
                return
            self._nonempty.clear()
            self._full.clear()

    async def _write(self, batch: list[_Pending]) -> None:
        self._writing = len(batch)
        try:
            rows, unredactable = await asyncio.to_thread(self._prepare, batch)
            self.failed += unredactable
            self._writing = len(rows)
            try:
                await self.store.write_captures(rows)
            except Exception as exc:  # count and carry on; never log the rows themselves
                self.failed += len(rows)
                log.error(
                    "capture: writing %d records failed (%s); request ids %s",
                    len(rows),
                    type(exc).__name__,
                    _ids(rows),
                )
            else:
                self.written += len(rows)
        finally:
            self._writing = 0

    def _prepare(self, batch: Sequence[_Pending]) -> tuple[list[CaptureRow], int]:
        """On a worker thread: redact every text. A record whose redaction fails is dropped;
        returns the rows and how many were dropped."""
        rows = []
        for item in batch:
            scrub = self.redactor if item.mode == "redacted" or self.secrets is None else self.secrets
            try:
                prompt = scrub.redact(item.prompt_text).text
                completion = None if item.completion_text is None else scrub.redact(item.completion_text).text
            except Exception as exc:
                log.error("capture: redacting request %s failed (%s); not kept", item.request_id, type(exc).__name__)
                continue
            rows.append(
                CaptureRow(
                    item.request_id,
                    item.tenant,
                    item.task,
                    item.mode,
                    item.grant_id,
                    item.at,
                    item.at + self.ttl_s,
                    prompt,
                    completion,
                )
            )
        return rows, len(batch) - len(rows)

    def _drop(self) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_drop_log >= self.log_interval_s:
            self._last_drop_log = now
            reason = "writer is closed" if self._closed else f"queue is full ({self.queue_size} records)"
            log.warning("capture: %s; %d records dropped in total", reason, self.dropped)


def _ids(rows: Sequence[CaptureRow], shown: int = 5) -> str:
    ids = ", ".join(row.request_id for row in rows[:shown])
    return ids + (f" and {len(rows) - shown} more" if len(rows) > shown else "")
