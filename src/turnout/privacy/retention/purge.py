"""The retention job: delete ledger rows (and shadow pairs, the same requests' metadata) past
their tenant's and task's ``ledger_days`` and review items past ``review_days``, in batches, and
record each run in the capture audit trail with its counts.

The ledger is walked, not asked pair by pair: it has no (tenant, task) index (every insert
would pay for one), so a run reads old rows along the ``started_at`` index, oldest first,
``batch_size`` at a time (``aged_rows``, each batch where the last stopped), and deletes those
past their own tenant's and task's ``ledger_days`` (``delete_rows``, one short transaction):
no call holds the ledger's thread, or the writer's inserts behind it, for long. For each
``ledger_days`` the rules name, a run reads the rows that crossed that cutoff since the
previous run (from one interval before the previous cutoff, for rows written late), so it costs
what aged in one interval, not what the ledger holds. The first run of a process, and one a day
after, reads every row older than the shortest ``ledger_days`` instead: rows written much later
than they started (a spill journal replayed after a long outage) are caught there.

The review queue and the shadow store are walked pair by pair (``tenant_tasks``, then
``delete_before`` in batches); a pair whose rule keeps them for ever is skipped. Sampled review
items record no tenant: the shortest ``review_days`` of any tenant for their task applies to
them. Captured text follows its own
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

import collections
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from turnout.config import Config
from turnout.ledger.store import AgedRow, Order
from turnout.privacy.capture.model import SYSTEM_ACTOR
from turnout.privacy.capture.store import CaptureStore
from turnout.privacy.retention.claim import RunClaim
from turnout.privacy.retention.rules import DAY_S, Rules

log = logging.getLogger("turnout.retention")

FULL_WALK_S = DAY_S  # how often a run reads every old row again, not only what aged since the last


class LedgerRows(Protocol):
    """The ledger store (``turnout.ledger.store.LedgerStore``), as far as retention needs it."""

    async def aged_rows(
        self, since: float, before: float, limit: int, after: tuple[float, Order] | None = None
    ) -> list[AgedRow]: ...

    async def delete_rows(self, request_ids: Sequence[str]) -> dict[tuple[str, str], int]: ...


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
        self._interval = interval = config.retention.purge_interval_s
        self.claim = None if audit is None else RunClaim(audit, "retention", interval, clock=clock)
        self._walked: dict[float, float] = {}  # ledger_days: the cutoff the last run read up to
        self._full_at = -math.inf  # when a run last read every old row
        self.runs = 0
        self.skipped = 0  # scheduled runs another process had claimed

    async def run_once(self, actor: str = SYSTEM_ACTOR) -> PurgeRun:
        now = self._clock()
        deleted, batches = await self._purge_ledger(now)
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

    async def _purge_ledger(self, now: float) -> tuple[dict[tuple[str, str], int], int]:
        """Ledger rows past their pair's ``ledger_days``: (deleted per pair, batches read)."""
        cutoffs = {days: now - days * DAY_S for days in self._rules.ledger_days}
        if not cutoffs:
            return {}, 0
        full = now - self._full_at >= FULL_WALK_S
        if full:  # every row older than the shortest ledger_days, in one walk
            spans = [(-math.inf, max(cutoffs.values()))]
        else:  # what crossed each cutoff since the last run, and one interval before
            spans = [(self._walked.get(days, -math.inf) - self._interval, c) for days, c in cutoffs.items()]
        deleted: collections.Counter[tuple[str, str]] = collections.Counter()
        batches = 0
        for since, before in spans:
            batches += await self._walk(since, before, now, deleted)
        self._walked = cutoffs
        if full:
            self._full_at = now
        return dict(deleted), batches

    async def _walk(
        self, since: float, before: float, now: float, deleted: collections.Counter[tuple[str, str]]
    ) -> int:
        """Read the rows with ``since <= started_at < before``, a batch at a time, deleting
        those past their pair's rule: how many batches."""
        after: tuple[float, Order] | None = None
        batches = 0
        while True:
            rows = await self._ledger.aged_rows(since, before, self._batch, after)
            doomed = [r.request_id for r in rows if self._past(r, now)]
            if doomed:
                deleted.update(await self._ledger.delete_rows(doomed))
            batches += 1
            if self.claim is not None:
                await self.claim.keep()
            if len(rows) < self._batch:
                return batches
            after = (rows[-1].started_at, rows[-1].order)

    def _past(self, row: AgedRow, now: float) -> bool:
        days = self._rules.get(row.tenant, row.task).ledger_days
        return days is not None and row.started_at < now - days * DAY_S

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
