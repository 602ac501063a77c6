"""One background loop for every periodic job (canary checks, release and grant refreshes,
capture purges): an owned task, stopped and awaited on close, that never dies of a failed run.

    async with Periodic("turnout-purge", purge, 3600.0, first="now"):
        ...  # or start() / aclose(), e.g. pushed on the runtime's AsyncExitStack

``first`` says when the first run comes: ``"now"`` (a job that catches up after downtime) or
``"later"``, one interval after ``start`` (a refresh whose caller has just loaded). ``tick``
may return how long to wait before the next run (a loop with several schedules, like the
canary controller's); ``None`` waits ``interval_s``. A run that raises is logged by type and
place only (the message may quote request content): the first failure of a streak as an
error, the rest at debug level, and the recovery once. ``aclose`` lets a run in progress
finish (each run is one unit of work, such as one transaction) and then ends the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Literal

from turnout._support.failures import describe

Tick = Callable[[], Awaitable[float | None]]

log = logging.getLogger("turnout")


class Periodic:
    def __init__(
        self,
        name: str,
        tick: Tick,
        interval_s: float,
        *,
        first: Literal["now", "later"],
        logger: logging.Logger = log,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.name = name
        self.interval_s = interval_s
        self.runs = 0  # completed runs, failed ones included
        self.failures = 0  # runs that raised
        self._tick = tick
        self._first = first
        self._log = logger
        self._failing = False
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"{self.name} was already started")
        self._stop.clear()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def aclose(self) -> None:
        """Stop after the run in progress, if any. Safe to call twice, or before ``start``."""
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            await task

    async def __aenter__(self) -> Periodic:
        self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _run(self) -> None:
        wait = 0.0 if self._first == "now" else self.interval_s
        while not await self._stopped_within(wait):
            wait = await self._once()

    async def _once(self) -> float:
        try:
            after = await self._tick()
        except Exception as exc:  # the loop outlives one bad run; the next one retries
            self.failures += 1
            level = logging.DEBUG if self._failing else logging.ERROR
            self._log.log(level, "%s: a run failed (%s); retrying every %gs", self.name, describe(exc), self.interval_s)
            self._failing, after = True, None
        else:
            if self._failing:
                self._log.warning("%s: runs succeed again", self.name)
            self._failing = False
        self.runs += 1
        return self.interval_s if after is None else max(0.0, after)

    async def _stopped_within(self, wait: float) -> bool:
        if self._stop.is_set():
            return True
        if wait <= 0:
            await asyncio.sleep(0)  # yield once, so a zero wait can never starve the loop
            return self._stop.is_set()
        try:
            async with asyncio.timeout(wait):
                await self._stop.wait()
        except TimeoutError:
            return False
        return True
