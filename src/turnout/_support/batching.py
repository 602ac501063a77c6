"""One bounded batch queue under every background writer (ledger rows, captured text).

``submit`` is synchronous: it appends and returns, never awaiting and never touching disk, so
the request path never waits for a store. A background task owned by the queue hands batches
to ``sink``: as soon as ``batch_size`` items wait, or ``flush_interval_s`` after the first item
of a partial batch arrived. ``sink`` returns the items of the batch it refused (a record whose
redaction failed; nothing, usually): they count as ``failed``, the rest as ``written``. A sink
that raises fails its whole batch: the queue counts it, calls ``on_failure`` (or logs the
exception's type) and carries on with the next batch. Because a sink names what it refused, a
sink can wrap another (a spill journal between the queue and the store takes what the store
refused) without the queue knowing.

A full queue (``queue_size`` items, or ``max_weight`` by ``weigh``) drops the new item: counted
in ``dropped`` and logged at most once per ``log_interval_s``. We choose counting over
back-pressure on purpose: a slow or broken store must never slow down or fail a request.

``aclose`` hands everything still queued to the sink before it returns; items submitted
afterwards are dropped. At every moment: accepted == ``written`` + ``failed`` + ``queued``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
Sink = Callable[[list[T]], Awaitable[Sequence[T]]]  # the batch in, the items refused out


class RateLimit:
    """At most one log line per interval; ``take`` reports how many events it summarises."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last = -float("inf")
        self._reported = 0

    def ready(self) -> bool:
        now = self._clock()
        if now - self._last < self.interval_s:
            return False
        self._last = now
        return True

    def take(self, total: int) -> int:
        since, self._reported = total - self._reported, total
        return since


class BatchQueue(Generic[T]):
    def __init__(
        self,
        name: str,
        sink: Sink[T],
        *,
        batch_size: int,
        flush_interval_s: float,
        queue_size: int,
        logger: logging.Logger,
        noun: str = "items",
        weigh: Callable[[T], int] | None = None,
        max_weight: int | None = None,
        on_failure: Callable[[list[T], Exception], None] | None = None,
        log_interval_s: float = 10.0,
    ) -> None:
        if batch_size <= 0 or queue_size <= 0 or flush_interval_s <= 0 or (max_weight is not None and max_weight <= 0):
            raise ValueError("batch_size, queue_size, flush_interval_s and max_weight must be positive")
        self.name = name
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.queue_size = queue_size
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self._sink = sink
        self._log = logger
        self._noun = noun
        self._weigh = weigh
        self._max_weight = max_weight
        self._weight = 0
        self._on_failure = on_failure
        self._items: deque[T] = deque()
        self._writing = 0  # items handed to the sink whose batch has not finished
        self._nonempty = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._drop_log = RateLimit(log_interval_s)
        self._since = 0.0  # the loop's time when the oldest queued item (at most) arrived
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def queued(self) -> int:
        """Items accepted and not yet written or failed (including a batch being written)."""
        return len(self._items) + self._writing

    @property
    def running(self) -> bool:
        """Whether the flush task is alive: started, and neither returned nor crashed."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the flush task on the running loop. Items submitted before this are kept."""
        if self._task is not None or self._closing:
            raise RuntimeError(f"{self.name} was already started or closed")
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name=self.name)

    def submit(self, item: T) -> bool:
        """Queue ``item``; False (and counted in ``dropped``) when full or closed. Call from the
        event loop's thread."""
        items = self._items
        weight = self._weigh(item) if self._weigh is not None else 0
        if self._closed or len(items) >= self.queue_size or self._over(weight):
            self._drop()
            return False
        if not items:  # a partial batch starts: it is due one interval from now
            if self._loop is not None:
                self._since = self._loop.time()
            self._nonempty.set()  # set while anything is queued: cleared only once it is empty
        items.append(item)
        self._weight += weight
        if len(items) >= self.batch_size:
            self._full.set()
        return True

    async def aclose(self) -> None:
        """Write everything queued, then stop. Items submitted afterwards are dropped."""
        if self._closed:
            return
        self._closing = True
        self._nonempty.set()
        self._full.set()
        if self._task is None:  # never started: drain anyway
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)
        await self._task

    def _over(self, weight: int) -> bool:
        return self._max_weight is not None and self._weight + weight > self._max_weight

    def _drop(self) -> None:
        self.dropped += 1
        if self._drop_log.ready():
            reason = "writer is closed" if self._closed else f"queue is full ({self.queue_size} {self._noun})"
            since = self._drop_log.take(self.dropped)
            self._log.error(  # items lost: an error, like every loss
                "%s: %s; dropped %d %s since the last warning (%d in total)",
                self.name,
                reason,
                since,
                self._noun,
                self.dropped,
            )

    async def _run(self) -> None:
        while True:
            await self._nonempty.wait()
            # A partial batch gets one interval from its first item's arrival to fill up (items
            # that came during the last write have waited already); a full one goes at once.
            due = self._closing
            if not due and len(self._items) < self.batch_size:
                left = self._since + self.flush_interval_s - asyncio.get_running_loop().time()
                try:
                    if left > 0:
                        async with asyncio.timeout(left):
                            await self._full.wait()
                    else:
                        due = True
                except TimeoutError:
                    due = True
            await self._write_queued(partial=due or self._closing)
            if not self._items:
                if self._closing:
                    # Closed in the same step as the last emptiness check: an item submitted
                    # later is refused and counted, never left unwritten in the queue.
                    self._closed = True
                    return
                self._nonempty.clear()
            if len(self._items) < self.batch_size:
                self._full.clear()

    async def _write_queued(self, partial: bool) -> None:
        """Write full batches; with ``partial``, also every item queued now. Items arriving
        during the writes wait for the next round."""
        leftover = len(self._items) if partial else 0
        while len(self._items) >= self.batch_size or leftover > 0:
            n = min(self.batch_size, len(self._items))
            leftover = max(0, leftover - n)
            batch = [self._items.popleft() for _ in range(n)]
            if self._weigh is not None:
                self._weight -= sum(self._weigh(item) for item in batch)
            await self._write(batch)

    async def _write(self, batch: list[T]) -> None:
        self._writing = len(batch)
        try:
            refused = await self._sink(batch)
        except Exception as exc:  # any sink failure: count it and keep the loop alive
            self.failed += len(batch)
            if self._on_failure is not None:
                self._on_failure(batch, exc)
            else:
                self._log.error("%s: writing %d %s failed (%s)", self.name, len(batch), self._noun, type(exc).__name__)
        else:
            self.written += len(batch) - len(refused)
            self.failed += len(refused)
        finally:
            self._writing = 0


class QueueWriter(Generic[T]):
    """A writer over a ``BatchQueue`` (``self.queue``): its settings and counters, start and
    close, so the ledger and capture writers show the same face."""

    queue: BatchQueue[T]

    @property
    def batch_size(self) -> int:
        return self.queue.batch_size

    @property
    def flush_interval_s(self) -> float:
        return self.queue.flush_interval_s

    @property
    def queue_size(self) -> int:
        return self.queue.queue_size

    @property
    def queued(self) -> int:
        """Accepted and not yet written or failed (including a batch being written)."""
        return self.queue.queued

    @property
    def written(self) -> int:
        return self.queue.written

    @property
    def dropped(self) -> int:
        return self.queue.dropped

    @property
    def failed(self) -> int:
        return self.queue.failed

    def start(self) -> None:
        """Start the flush task on the running loop. What was submitted before is kept."""
        self.queue.start()

    async def aclose(self) -> None:
        """Write everything queued, then stop; what is submitted afterwards is dropped."""
        await self.queue.aclose()


class _HasRequestId(Protocol):
    @property
    def request_id(self) -> str: ...


def request_ids(items: Sequence[_HasRequestId], shown: int = 5) -> str:
    """A batch named in a log line by its first request ids: never by its contents."""
    ids = ", ".join(item.request_id for item in items[:shown])
    return ids + (f" and {len(items) - shown} more" if len(items) > shown else "")
