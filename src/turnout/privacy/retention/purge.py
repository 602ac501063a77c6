"""The retention job: delete ledger rows (and shadow pairs, the same requests' metadata) past
their tenant's and task's ``ledger_days`` and review items past ``review_days``, in batches, and
record each run in the capture audit trail with its counts.

One run walks every (tenant, task) the ledger (and the review queue) holds; a pair whose rule
keeps them for ever is skipped. Sampled review items record no tenant: the shortest
``review_days`` of any tenant for their task applies to them. Rows go ``batch_size`` at a
time, each batch its own short transaction, so the ledger writer's inserts are never held up
behind one long delete. Captured text follows its own
``capture_days`` (set on each capture when it is written, purged by the capture job); cached
answers expire with their TTL, capped by ``cache_ttl_s``.

Every worker and replica sharing the audit store schedules the job; each scheduled run
(``tick``) is claimed in that store first (``claim``), so one process runs it each interval
and the trail holds one run per interval. ``run_once`` runs unclaimed.

    purge = RetentionPurge(config, ledger_store, audit_store, reviews=review_queue)
    async with Periodic("turnout-retention", purge.tick, interval_s, first="now"): ...
    await purge.aclose()  # hands the claim back
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from turnout.config import Config
from turnout.privacy.capture.model import SYSTEM_ACTOR
from turnout.privacy.capture.store import CaptureStore
from turnout.privacy.retention.claim import RunClaim
from turnout.privacy.retention.rules import DAY_S, Rules

log = logging.getLogger("turnout.retention")


class LedgerRows(Protocol):
    """The ledger store (``turnout.ledger.store.LedgerStore``), as far as retention needs it."""

    async def tenant_tasks(self) -> list[tuple[str, str]]: ...

    async def delete_before(self, tenant: str, task: str, before: float, limit: int) -> int: ...


class ReviewItems(Protocol):
    """The review queue (``turnout.releases.review``), as far as retention needs it."""

    async def tenant_tasks(self) -> Sequence[tuple[str | None, str]]: ...

    async def delete_before(self, tenant: str | None, task: str, before: float, limit: int) -> int: ...


class ShadowPairs(Protocol):
    """The shadow store (``turnout.releases.shadowstore``), as far as retention needs it."""

    async def tenant_tasks(self) -> Sequence[tuple[str, str]]: ...

    async def delete_before(self, tenant: str, task: str, before: float, limit: int) -> int: ...


@dataclass(frozen=True, slots=True)
class PurgeRun:
    deleted: dict[tuple[str, str], int]  # ledger rows deleted per (tenant, task); pairs with none left out
    batches: int
    reviews: dict[tuple[str | None, str], int] = field(default_factory=dict)  # review items deleted
    shadow: dict[tuple[str, str], int] = field(default_factory=dict)  # shadow pairs deleted

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


class RetentionPurge:
    def __init__(
        self,
        config: Config,
        ledger: LedgerRows,
        audit: CaptureStore | None,
        *,
        reviews: ReviewItems | None = None,
        shadows: ShadowPairs | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._rules = Rules(config)
        self._tenants = list(config.tenants) or ["anonymous"]
        self._reviews = reviews
        self._shadows = shadows
        self._ledger = ledger
        self._audit = audit
        self._batch = config.retention.batch_size
        self._clock = clock
        interval = config.retention.purge_interval_s
        self.claim = None if audit is None else RunClaim(audit, "retention", interval, clock=clock)
        self.runs = 0
        self.skipped = 0  # scheduled runs another process had claimed

    async def run_once(self, actor: str = SYSTEM_ACTOR) -> PurgeRun:
        now = self._clock()
        deleted: dict[tuple[str, str], int] = {}
        batches = 0
        for tenant, task in await self._ledger.tenant_tasks():
            days = self._rules.get(tenant, task).ledger_days
            if days is None:
                continue
            count, n = await self._delete(partial(self._ledger.delete_before, tenant, task, now - days * DAY_S))
            batches += n
            if count:
                deleted[(tenant, task)] = count
        reviews = await self._purge_reviews(now) if self._reviews is not None else {}
        shadow = await self._purge_shadows(now) if self._shadows is not None else {}
        run = PurgeRun(deleted, batches, reviews, shadow)
        await self._record(run, now, actor)
        self.runs += 1
        return run

    async def tick(self) -> None:
        """One scheduled run (``turnout._support.periodic``), if this process claims it."""
        if self.claim is not None and not await self.claim.claim():
            self.skipped += 1
            log.debug("retention: this interval's run is another process's")
            return
        await self.run_once()

    async def aclose(self) -> None:
        """Once the schedule has stopped: hand the claim back."""
        if self.claim is not None:
            await self.claim.release()

    async def _purge_reviews(self, now: float) -> dict[tuple[str | None, str], int]:
        assert self._reviews is not None
        deleted: dict[tuple[str | None, str], int] = {}
        for tenant, task in await self._reviews.tenant_tasks():
            days = self._review_days(tenant, task)
            if days is None:
                continue
            count, _ = await self._delete(partial(self._reviews.delete_before, tenant, task, now - days * DAY_S))
            if count:
                deleted[(tenant, task)] = count
        return deleted

    async def _purge_shadows(self, now: float) -> dict[tuple[str, str], int]:
        assert self._shadows is not None
        deleted: dict[tuple[str, str], int] = {}
        for tenant, task in await self._shadows.tenant_tasks():
            days = self._rules.get(tenant, task).ledger_days
            if days is None:
                continue
            count, _ = await self._delete(partial(self._shadows.delete_before, tenant, task, now - days * DAY_S))
            if count:
                deleted[(tenant, task)] = count
        return deleted

    def _review_days(self, tenant: str | None, task: str) -> float | None:
        if tenant is not None:
            return self._rules.get(tenant, task).review_days
        found = [d for t in self._tenants if (d := self._rules.get(t, task).review_days) is not None]
        return min(found) if found else None

    async def _delete(self, batch: Callable[[int], Awaitable[int]]) -> tuple[int, int]:
        """``batch(limit)`` until it deletes fewer than ``batch_size``: (deleted, batches)."""
        total = batches = 0
        while True:
            gone = await batch(self._batch)
            total += gone
            batches += 1
            if self.claim is not None:
                await self.claim.keep()  # a long run keeps its claim
            if gone < self._batch:
                return total, batches

    async def _record(self, run: PurgeRun, now: float, actor: str) -> None:
        """One audit event per pair with deletions, and one for the run (even when it deleted
        nothing: the trail shows the job ran)."""
        if run.total:
            log.info("retention: deleted %d ledger rows in %d batches", run.total, run.batches)
        if self._audit is None:
            return
        for (tenant, task), count in sorted(run.deleted.items()):
            detail = f"retention: deleted {count} ledger rows past ledger_days"
            await self._audit.record_purge(now, tenant, task, actor, detail)
        for (who, task), count in sorted(run.reviews.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
            detail = f"retention: deleted {count} review items past review_days"
            await self._audit.record_purge(now, who, task, actor, detail)
        for (tenant, task), count in sorted(run.shadow.items()):
            detail = f"retention: deleted {count} shadow pairs past ledger_days"
            await self._audit.record_purge(now, tenant, task, actor, detail)
        summary = f"retention run: deleted {run.total} ledger rows of {len(run.deleted)} tenant/task pairs"
        if run.reviews:
            summary += f" and {sum(run.reviews.values())} review items"
        if run.shadow:
            summary += f" and {sum(run.shadow.values())} shadow pairs"
        await self._audit.record_purge(now, None, None, actor, summary)
