"""The retention job: delete captured text past its ``ttl_days`` and record grants that ended.

Runs once when started (catching up after downtime), then every ``purge_interval_s``, until
``aclose``. Each run is one transaction in the store that also appends one ``purged`` audit
event carrying the count, so the trail shows the job ran even when there was nothing to delete.
``turnout capture purge`` runs the same ``run_once`` by hand. Every worker and replica
sharing the store schedules the job; each scheduled run is claimed in the store first
(``turnout.privacy.retention.claim``), so one of them runs it each interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from turnout._support.periodic import Periodic
from turnout.config import CaptureConfig
from turnout.privacy.capture.model import SYSTEM_ACTOR, Grant
from turnout.privacy.capture.store import CaptureStore
from turnout.privacy.retention.claim import RunClaim

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PurgeResult:
    deleted: int  # captures past their expires_at
    expired: tuple[Grant, ...]  # grants whose expiry this run recorded


class Purger:
    def __init__(self, store: CaptureStore, interval_s: float, *, clock: Callable[[], float] = time.time) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.store = store
        self.interval_s = interval_s
        self.runs = 0
        self._clock = clock
        self.claim = RunClaim(store, "capture", interval_s, clock=clock)
        self.skipped = 0  # scheduled runs another process had claimed
        self._loop = Periodic("turnout-capture-purge", self.tick, interval_s, first="now", logger=log)

    @classmethod
    def from_config(cls, store: CaptureStore, cfg: CaptureConfig) -> Purger:
        return cls(store, cfg.purge_interval_s)

    async def run_once(self, now: float | None = None, actor: str = SYSTEM_ACTOR) -> PurgeResult:
        deleted, expired = await self.store.purge(self._clock() if now is None else now, actor)
        self.runs += 1
        if deleted or expired:
            log.info("capture: purged %d captures; %d grants expired", deleted, len(expired))
        return PurgeResult(deleted, tuple(expired))

    def start(self) -> None:
        self._loop.start()  # raises if already started

    async def aclose(self) -> None:
        """Stop; a run in progress finishes first (it is one transaction). The claim goes back."""
        await self._loop.aclose()
        await self.claim.release()

    async def tick(self) -> None:
        """One scheduled run (``turnout._support.periodic``), if this process claims it."""
        if not await self.claim.claim():
            self.skipped += 1
            log.debug("capture: this interval's purge is another process's")
            return
        await self.run_once()
