"""The in-memory ledger store: a dict, for tests and for ``store.kind: memory``.

It keeps the same promises as the durable backends (see ``turnout.ledger.store``), including
copying rows in and out, so code tested against it behaves the same on SQLite.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections import Counter
from collections.abc import Sequence

from turnout.config import StoreConfig
from turnout.ledger.record import LedgerRow
from turnout.ledger.store import (
    EVAL_TENANT,
    STATS_COLUMNS,
    AgedRow,
    Order,
    ReleaseStats,
    StoreError,
    check_limit,
    summarize,
)

_STATS = operator.attrgetter(*STATS_COLUMNS)  # a row's values for summarize, in its order


class MemoryStore:
    def __init__(self) -> None:
        self._rows: dict[str, LedgerRow] = {}
        self._open = False

    @classmethod
    def from_config(cls, cfg: StoreConfig) -> MemoryStore:
        return cls()

    async def open(self) -> None:
        self._open = True

    async def write_batch(self, rows: Sequence[LedgerRow]) -> None:
        self._check_open()
        # Copy everything before storing anything, so a bad row leaves the store unchanged.
        copies = [copy_row(row) for row in rows]
        for row in copies:
            self._rows.setdefault(row.request_id, row)  # the first write of an id wins

    async def get(self, request_id: str) -> LedgerRow | None:
        self._check_open()
        row = self._rows.get(request_id)
        return None if row is None else copy_row(row)

    async def recent(self, limit: int = 100) -> list[LedgerRow]:
        self._check_open()
        check_limit(limit)
        newest = sorted(self._rows.values(), key=lambda r: (r.started_at, r.request_id), reverse=True)
        return [copy_row(row) for row in newest[:limit]]

    async def count(self) -> int:
        self._check_open()
        return len(self._rows)

    async def aged_rows(
        self, since: float, before: float, limit: int, after: tuple[float, Order] | None = None
    ) -> list[AgedRow]:
        self._check_open()
        check_limit(limit)
        found = sorted(
            AgedRow(r.started_at, r.request_id, r.request_id, r.tenant, r.task)
            for r in self._rows.values()
            if since <= r.started_at < before
        )
        if after is not None:
            found = [r for r in found if (r.started_at, r.order) > after]
        return found[:limit]

    async def delete_rows(self, request_ids: Sequence[str]) -> dict[tuple[str, str], int]:
        self._check_open()
        deleted: dict[tuple[str, str], int] = {}
        for request_id in dict.fromkeys(request_ids):
            row = self._rows.pop(request_id, None)
            if row is not None:
                deleted[(row.tenant, row.task)] = deleted.get((row.tenant, row.task), 0) + 1
        return deleted

    async def set_outcome(
        self,
        request_id: str,
        tenant: str,
        outcome: str | None,
        human_review: bool | None,
        escalated: bool | None,
        value: float | None,
        episode_id: str | None,
        at: float,
        *,
        labels: list[str] | None = None,
    ) -> bool:
        self._check_open()
        row = self._rows.get(request_id)
        if row is None or row.tenant != tenant:
            return False
        given = {
            "outcome": outcome,
            "human_review": human_review,
            "escalated": escalated,
            "outcome_value": value,
            "episode_id": episode_id,
        }
        for name, new in given.items():
            if new is not None:
                setattr(row, name, new)
        if labels is not None:
            row.labels = list(labels)  # replaced whole; a copy, so the caller's list is not shared
        row.outcome_at = at
        return True

    async def set_outcome_by_episode(
        self,
        episode_id: str,
        tenant: str,
        outcome: str | None,
        human_review: bool | None,
        escalated: bool | None,
        value: float | None,
        at: float,
        *,
        labels: list[str] | None = None,
    ) -> int:
        self._check_open()
        ids = [r.request_id for r in self._rows.values() if r.tenant == tenant and r.episode_id == episode_id]
        for request_id in ids:
            await self.set_outcome(request_id, tenant, outcome, human_review, escalated, value, None, at, labels=labels)
        return len(ids)

    async def rows_between(
        self,
        since: float,
        until: float,
        *,
        tenant: str | None = None,
        task: str | None = None,
        limit: int = 1_000_000,
        after: tuple[float, str] | None = None,
    ) -> list[LedgerRow]:
        self._check_open()
        check_limit(limit)
        found = sorted(
            (
                r
                for r in self._rows.values()
                if since <= r.started_at < until
                and (tenant is None or r.tenant == tenant)
                and (task is None or r.task == task)
                and (after is None or (r.started_at, r.request_id) > after)
            ),
            key=lambda r: (r.started_at, r.request_id),
        )
        return [copy_row(row) for row in found[:limit]]

    async def attempt_errors(self, since: float, until: float) -> dict[tuple[str, str], int]:
        self._check_open()
        found: Counter[tuple[str, str]] = Counter(
            (a.target, a.error_class)
            for r in self._rows.values()
            if since <= r.started_at < until
            for a in r.attempts
            if a.error_class is not None
        )
        return dict(found)

    async def release_stats(self, task: str, release: str, since: float, until: float | None = None) -> ReleaseStats:
        self._check_open()
        end = math.inf if until is None else until
        return summarize(
            _STATS(r)
            for r in self._rows.values()
            if r.task == task
            and r.release == release
            and since <= r.started_at < end
            and r.tenant != EVAL_TENANT
            and not r.evaluation
            and not r.cache_hit
        )

    async def aclose(self) -> None:
        self._open = False

    def _check_open(self) -> None:
        if not self._open:
            raise StoreError("the memory ledger store is not open")


def copy_row(row: LedgerRow) -> LedgerRow:
    """A copy that shares nothing mutable with ``row`` (attempts and labels are its lists)."""
    return dataclasses.replace(
        row,
        attempts=[dataclasses.replace(a) for a in row.attempts],
        labels=None if row.labels is None else list(row.labels),
    )
