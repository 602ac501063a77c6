"""Where ledger rows live: one small async interface, one backend per module.

    LedgerStore (Protocol)
    ├── MemoryStore     turnout.ledger.memory     tests and ``store.kind: memory``
    ├── SQLiteStore     turnout.ledger.sqlite     the default, one file under ``./.turnout/``
    └── PostgresStore   turnout.ledger.postgres   shared deployments (``pip install 'turnout[postgres]'``)

Every backend passes the one contract suite in ``tests/test_ledger_store.py``; these are its
rules:

* ``write_batch`` is atomic (all rows or none) and idempotent: a row whose ``request_id`` is
  already stored is skipped (the first write wins), so a retried or replayed batch is harmless
  and never undoes feedback recorded since.
* Rows come back equal to what was written (attempts included) and are never shared with the
  caller: mutating a returned row does not change the store.
* ``recent`` is newest first by ``started_at``, ties broken by ``request_id`` descending, so
  the order is the same on every backend.
* ``set_outcome`` touches only the outcome fields of one row (``labels`` among them), and only
  when the row belongs to the tenant given: another tenant's request id behaves exactly like an
  unknown one. It is idempotent: the same call twice leaves the same row.
* ``set_outcome_by_episode`` is ``set_outcome`` for every row of one tenant's episode, and
  answers how many rows it updated (0 for another tenant's episode, as for an unknown one).
* ``rows_between`` is the reports' read: the rows with ``since <= started_at < until``, oldest
  first (ties by ``request_id``), optionally of one tenant and one task, at most ``limit``, each
  after ``after`` when given (the previous page's last ``(started_at, request_id)``), so a
  window of any size is read in pages (``rows_in_pages``).
* ``attempt_errors`` counts the failed attempts of the rows with ``since <= started_at <
  until`` by (target, error class), in one query over every such row (the console's targets
  page: a busy window is counted whole, never a first slice of it).
* ``release_stats`` sums up one release of one task since a time, in one query, with the same
  figures on every backend (``ReleaseStats`` defines each one).
* ``aged_rows`` is the retention purge's read: at most ``limit`` rows with
  ``since <= started_at < before``, oldest first, ties in the backend's own ``order`` (SQLite's
  rowid, else the request id), each after ``after`` when given (the previous answer's last
  row), so a walk goes on where it stopped. Through the ``started_at`` index: it reads the
  rows it returns and no others. ``delete_rows`` deletes rows by request id in one short
  transaction and says how many of each (tenant, task) went.

Nothing here is on the request path: rows reach a store through ``LedgerWriter``'s queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from turnout._support.backends import Backend, load
from turnout.config import StoreConfig
from turnout.errors import StoreUnavailable, TurnoutError
from turnout.ledger.record import LedgerRow

Order = int | str  # breaks ties in ``started_at`` (``AgedRow.order``)


class AgedRow(NamedTuple):
    """What the retention purge weighs of a row: its age and whose it is."""

    started_at: float
    order: Order
    request_id: str
    tenant: str
    task: str


class StoreError(TurnoutError):
    """The store cannot be used: its schema is newer than this code, or it is closed."""


class StoreNotOpen(StoreError, StoreUnavailable):
    """Not open: not yet (PostgreSQL did not answer at start-up) or no longer (shutting down)."""


@dataclass(frozen=True, slots=True)
class ReleaseStats:
    """What one release of a task did in a window, as the canary controller compares it.

    * ``requests``: every row of the release with ``since <= started_at < until``, except
      ``turnout eval``'s (golden cases, not live traffic): rows marked ``evaluation``, whatever
      tenant the eval ran as, and those of its internal tenant ``EVAL_TENANT`` (older rows),
      and cache hits (``cache_hit``: an answer replayed, counted when it was generated).
    * ``caller_errors``: rows with a 4xx status (400-499): a bad body, a key, an unknown task,
      a quota (429), a client that went away (499). The caller's doing, not the release's: they
      count in none of the figures below. Except ``RELEASE_REJECTIONS``: a 4xx the upstream
      gave to the body the release built (``upstream_rejected``: its prompt, its model name, its
      parameters; ``context_length_exceeded``: its prompt or its targets' windows) is the
      release's failure, counted in ``errors`` (not in ``provider_errors``); so is a 400
      ``variables_unfit``: the caller's variables lack what the release's template reads.
    * ``errors``: the other failures: status 500 or above, a release's rejection, or an
      ``error_class`` on a row whose status is not 4xx (a stream that broke after its 200 went out).
    * ``provider_errors``: the part of ``errors`` that came from upstream: status 502, 503 or
      504 (every target failed, or a stream broke upstream), except ``output_invalid`` (the
      model answered, but not in the release's output schema: the release's fault).
    * ``p95_latency_ms``: the 95th percentile of ``latency_ms`` over rows that are not caller
      errors, interpolated linearly between ranks (PostgreSQL's ``percentile_cont``); None when
      there are none.
    * ``cost_usd``: the sum of ``cost_usd`` over rows that are not caller errors (no cost: 0).
    * ``outcomes``: feedbacks (``outcome`` set), not counting caller errors; ``successes``:
      those whose outcome is ``"success"``. A feedback is counted once however many rows it
      reached: feedback on an episode sets every row of it at one ``outcome_at``, so the rows of
      one episode (of one tenant) with the same ``outcome_at`` and ``outcome`` are one feedback;
      a row without an episode is its own (``feedback_key``).
    """

    requests: int = 0
    caller_errors: int = 0
    errors: int = 0
    provider_errors: int = 0
    p95_latency_ms: float | None = None
    cost_usd: float = 0.0
    outcomes: int = 0
    successes: int = 0
    live_scored: int = 0  # answers live scoring sampled (tasks.T.scoring), not counting caller errors
    live_passed: int = 0  # those that passed every scorer

    @property
    def live_pass_rate(self) -> float | None:
        """The share of scored answers that passed; None before any was scored."""
        return self.live_passed / self.live_scored if self.live_scored else None

    @property
    def served(self) -> int:
        """Requests the release answered or failed on its own account: the denominator."""
        return self.requests - self.caller_errors

    @property
    def error_rate(self) -> float:
        return self.errors / self.served if self.served else 0.0

    @property
    def provider_error_rate(self) -> float:
        return self.provider_errors / self.served if self.served else 0.0

    @property
    def cost_per_request(self) -> float:
        return self.cost_usd / self.served if self.served else 0.0

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.outcomes if self.outcomes else None


# The columns ``summarize`` reads, in its order; SQLite selects them and sums up in Python.
STATS_COLUMNS = (
    *("status", "error_class", "latency_ms", "cost_usd", "outcome", "live_pass"),
    *("request_id", "tenant", "episode_id", "outcome_at"),
)
StatsRecord = tuple[
    int, str | None, float, float | None, str | None, bool | int | None, str, str, str | None, float | None
]
# The tenant `turnout eval` runs as (``turnout.cli.evaluate``): golden cases, not live traffic.
EVAL_TENANT = "turnout-eval"
RELEASE_FAULTS = frozenset({"output_invalid"})  # 502s that are the release's, not the provider's
# 4xx error classes that are the release's, not the caller's: the upstream refused the body the
# release built (all targets answered 4xx), or no target's window holds the release's prompt,
# or its template reads what the caller's variables do not have.
RELEASE_REJECTIONS = frozenset({"upstream_rejected", "context_length_exceeded", "variables_unfit"})


def is_caller_error(status: int, error_class: str | None = None) -> bool:
    return 400 <= status <= 499 and error_class not in RELEASE_REJECTIONS


def is_error(status: int, error_class: str | None) -> bool:
    return not is_caller_error(status, error_class) and (status >= 500 or error_class is not None)


def is_provider_error(status: int, error_class: str | None) -> bool:
    return status in (502, 503, 504) and error_class not in RELEASE_FAULTS


def feedback_key(
    request_id: str, tenant: str, episode_id: str | None, outcome_at: float | None, outcome: str
) -> tuple[object, ...]:
    """Which feedback set a row's outcome: one call on an episode reaches all its rows."""
    if episode_id is None:
        return ("request", request_id)
    return ("episode", tenant, episode_id, outcome_at, outcome)


def summarize(records: Iterable[StatsRecord]) -> ReleaseStats:
    """``ReleaseStats`` from rows' ``STATS_COLUMNS``: the memory and SQLite stores' arithmetic,
    which PostgreSQL's query reproduces in SQL."""
    requests = caller = errors = provider = scored = passed = 0
    cost = 0.0
    latencies: list[float] = []
    feedbacks: set[tuple[object, ...]] = set()
    succeeded: set[tuple[object, ...]] = set()
    for record in records:
        status, error_class, latency_ms, cost_usd, outcome, live_pass, request_id, tenant, episode, at = record
        requests += 1
        if is_caller_error(status, error_class):
            caller += 1
            continue
        errors += is_error(status, error_class)
        provider += is_provider_error(status, error_class)
        latencies.append(latency_ms)
        cost += cost_usd or 0.0
        if outcome is not None:
            key = feedback_key(request_id, tenant, episode, at, outcome)
            feedbacks.add(key)
            if outcome == "success":
                succeeded.add(key)
        if live_pass is not None:
            scored += 1
            passed += bool(live_pass)
    p95 = percentile(latencies, 0.95)
    return ReleaseStats(requests, caller, errors, provider, p95, cost, len(feedbacks), len(succeeded), scored, passed)


def percentile(values: Sequence[float], q: float, *, ordered: bool = False) -> float | None:
    """Linear interpolation between closest ranks, as PostgreSQL's ``percentile_cont``.
    ``ordered``: ``values`` are sorted already (several percentiles of one sort)."""
    if not values:
        return None
    ranked = values if ordered else sorted(values)
    position = q * (len(ranked) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ranked) - 1)
    return ranked[low] + (ranked[high] - ranked[low]) * (position - low)


class LedgerStore(Protocol):
    async def open(self) -> None:
        """Connect and bring the schema up to date. Call once before anything else."""
        ...

    async def write_batch(self, rows: Sequence[LedgerRow]) -> None:
        """Store ``rows`` in one transaction, replacing rows with the same ``request_id``."""
        ...

    async def get(self, request_id: str) -> LedgerRow | None: ...

    async def recent(self, limit: int = 100) -> list[LedgerRow]:
        """Up to ``limit`` rows, newest first. ``limit`` must not be negative."""
        ...

    async def count(self) -> int: ...

    async def aged_rows(
        self, since: float, before: float, limit: int, after: tuple[float, Order] | None = None
    ) -> list[AgedRow]:
        """At most ``limit`` rows with ``since <= started_at < before``, oldest first, past
        ``after`` (an earlier answer's last ``(started_at, order)``) when given: one batch of
        the retention purge's walk."""
        ...

    async def delete_rows(self, request_ids: Sequence[str]) -> dict[tuple[str, str], int]:
        """Delete these rows (ids not stored are skipped) in one transaction: how many of each
        (tenant, task)."""
        ...

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
        """Record feedback on a stored row of ``tenant``: each argument that is not None
        replaces its field (``value`` goes to ``outcome_value``), None keeps what is stored, so
        feedback may arrive in pieces; ``outcome_at`` becomes ``at``. ``labels`` is replaced
        whole, never merged: a list (even an empty one) becomes the row's labels, in its order,
        so the same call twice leaves the same row. True if a row was updated, False if
        ``tenant`` has no row ``request_id`` (yet: rows reach the store in batches)."""
        ...

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
        """``set_outcome`` on every stored row of ``tenant`` whose ``episode_id`` is
        ``episode_id``, in one statement; the number of rows updated."""
        ...

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
        """Rows with ``since <= started_at < until`` (of ``tenant`` and ``task`` where given),
        oldest first, ties by ``request_id``; at most ``limit``, which must not be negative;
        with ``after``, only rows whose ``(started_at, request_id)`` comes after it."""
        ...

    async def attempt_errors(self, since: float, until: float) -> dict[tuple[str, str], int]:
        """How many attempts of the rows with ``since <= started_at < until`` failed, by
        ``(target, error_class)``; attempts that succeeded are not counted."""
        ...

    async def release_stats(self, task: str, release: str, since: float, until: float | None = None) -> ReleaseStats:
        """How ``release`` of ``task`` did on rows with ``since <= started_at < until`` (no
        ``until``: up to now): one query, served by the ``(task, release, started_at)`` index.
        Cache hits are left out: a hit replays an answer counted when the release generated it,
        at no cost and in a millisecond, and would make the side with the warmer cache look
        cheaper, faster and less failing than the model behind it."""
        ...

    async def aclose(self) -> None:
        """Release the connection. Safe to call twice; nothing may be called afterwards."""
        ...


# Backends by import string, loaded only when chosen, so a deployment that uses one backend
# never imports another's driver.
BACKENDS: dict[str, Backend] = {
    "memory": Backend("turnout.ledger.memory:MemoryStore"),
    "sqlite": Backend("turnout.ledger.sqlite:SQLiteStore"),
    "postgres": Backend("turnout.ledger.postgres:PostgresStore", ("asyncpg",), "postgres"),
}


def open_store(cfg: StoreConfig) -> LedgerStore:
    """Build the store ``cfg`` names. It is not yet open: ``await store.open()`` before use."""
    store: LedgerStore = load(BACKENDS, cfg.kind, "store.kind").from_config(cfg)
    return store


def check_limit(limit: int) -> None:
    if limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")


PAGE = 5_000  # rows a page of ``rows_in_pages``: some 10 MB decoded, whatever the window holds


async def rows_in_pages(
    store: LedgerStore,
    since: float,
    until: float,
    *,
    tenant: str | None = None,
    task: str | None = None,
    page: int | None = None,
) -> AsyncIterator[list[LedgerRow]]:
    """``rows_between`` over a window of any size, ``page`` rows at a time (default ``PAGE``),
    in its order: each page starts after the previous one's last row, so no row is read twice
    or skipped."""
    size = PAGE if page is None else page

    def fetch(after: tuple[float, str] | None) -> asyncio.Task[list[LedgerRow]]:
        return asyncio.create_task(store.rows_between(since, until, tenant=tenant, task=task, limit=size, after=after))

    # The next page is asked for before this one is handed over: the store reads it while the
    # caller counts this one.
    pending = fetch(None)
    try:
        while True:
            found = await pending
            more = len(found) == size and size > 0
            if more:
                pending = fetch((found[-1].started_at, found[-1].request_id))
            if found:
                yield found
            if not more:
                return
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending
