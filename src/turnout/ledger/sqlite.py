"""The SQLite ledger store: one file, stdlib ``sqlite3``, nothing on the event loop.

One dedicated thread owns the one connection and runs every statement, so the loop never
blocks on disk and the connection is never shared between threads (SQLite connections are not
safe to use from two threads at once). Calls queue on that thread in the order they were made.

The file is in WAL mode, so readers (reports, the dashboard) do not block the writer, with
``synchronous=NORMAL``: a crash of the process loses nothing committed; a power loss may lose
the last few batches, an acceptable trade for a metadata ledger written in batches.

The schema is versioned: ``schema_migrations`` records each applied step of ``MIGRATIONS``.
Steps are append-only history; a change to ``LedgerRow`` needs a new step, never an edit.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import math
import operator
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson

from turnout._support.sqlite import SQLiteWorker, migrate
from turnout.config import StoreConfig
from turnout.ledger.record import AttemptRecord, LedgerRow
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

T = TypeVar("T")

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: one column per LedgerRow field; attempts as a JSON array; "user" and "release" are
    # quoted because they are keywords in SQL dialects we will share this schema with.
    (
        """CREATE TABLE requests (
            request_id        TEXT PRIMARY KEY,
            started_at        REAL NOT NULL,
            tenant            TEXT NOT NULL,
            task              TEXT NOT NULL,
            data_class        TEXT NOT NULL,
            stream            INTEGER NOT NULL,
            "user"            TEXT,
            "release"         TEXT,
            prompt_version    TEXT,
            target            TEXT,
            replica           TEXT,
            model_version     TEXT,
            status            INTEGER NOT NULL,
            error_class       TEXT,
            attempts          TEXT NOT NULL,
            fallback          INTEGER NOT NULL,
            prompt_tokens     INTEGER,
            completion_tokens INTEGER,
            cost_usd          REAL,
            latency_ms        REAL NOT NULL,
            queue_ms          REAL,
            ttft_ms           REAL,
            generation_ms     REAL,
            fallback_ms       REAL,
            outcome           TEXT
        )""",
        "CREATE INDEX requests_started_at ON requests (started_at)",
        "CREATE INDEX requests_tenant_task ON requests (tenant, task)",
    ),
    # 2: cache and capture, and the outcome fields feedback fills in later. Appended columns,
    # so a v1 file migrates in place without copying its rows; old rows read back as None.
    (
        "ALTER TABLE requests ADD COLUMN cache_hit INTEGER",
        "ALTER TABLE requests ADD COLUMN capture_mode TEXT",
        "ALTER TABLE requests ADD COLUMN human_review INTEGER",
        "ALTER TABLE requests ADD COLUMN escalated INTEGER",
        "ALTER TABLE requests ADD COLUMN outcome_value REAL",
        "ALTER TABLE requests ADD COLUMN outcome_at REAL",
        "ALTER TABLE requests ADD COLUMN episode_id TEXT",
    ),
    # 3: release_stats reads one release of one task over a recent window (the canary's step).
    ('CREATE INDEX requests_task_release_started_at ON requests (task, "release", started_at)',),
    # 4: the labels feedback gives, a JSON array of strings like attempts; NULL: never labelled.
    ("ALTER TABLE requests ADD COLUMN labels TEXT",),
    # 5: whether the usage (and so the cost) was counted by turnout: the upstream reported none.
    ("ALTER TABLE requests ADD COLUMN usage_estimated INTEGER",),
    # 6: no query reads (tenant, task) (reports range over started_at), but every insert paid for
    # it (about 3 us a row); feedback by episode scanned the table: it gets a partial index, which
    # rows without an episode cost nothing.
    (
        "DROP INDEX requests_tenant_task",
        "CREATE INDEX requests_tenant_episode ON requests (tenant, episode_id) WHERE episode_id IS NOT NULL",
    ),
    # 7: injection screening's verdict on a flagged or blocked request (turnout.safety); NULL: none.
    ("ALTER TABLE requests ADD COLUMN safety TEXT",),
    # 8: blocked tool calls (turnout.safety.tools) and the declared data class, which
    # classification may have raised (turnout.safety.classify); NULL in older rows.
    (
        "ALTER TABLE requests ADD COLUMN tool_violations TEXT",
        "ALTER TABLE requests ADD COLUMN declared_class TEXT",
    ),
    # 9: output checks (turnout.serving.output): repairs made, where a failed answer escalated, the
    # failed checks' reasons; NULL in older rows and where nothing failed.
    (
        "ALTER TABLE requests ADD COLUMN repairs INTEGER",
        "ALTER TABLE requests ADD COLUMN escalated_to TEXT",
        "ALTER TABLE requests ADD COLUMN output_check TEXT",
    ),
    # 10: the API (door) the request came through: chat.completions, tasks, embeddings, ...
    ("ALTER TABLE requests ADD COLUMN endpoint TEXT",),
    # 11: what a cache hit saved: the cached answer's cost when it was generated (turnout.cache).
    ("ALTER TABLE requests ADD COLUMN cost_saved_usd REAL",),
    # 12: why the answer stopped (finish_reason) and the task API's documents attached.
    (
        "ALTER TABLE requests ADD COLUMN finish_reason TEXT",
        "ALTER TABLE requests ADD COLUMN documents INTEGER",
    ),
    # 13: the caller's latency and cost limits and the targets they skipped (routing.constraints).
    ("ALTER TABLE requests ADD COLUMN constraints TEXT",),
    # 14: live scoring's verdict on a sampled answer (tasks.T.scoring); NULL: not scored.
    ("ALTER TABLE requests ADD COLUMN live_pass INTEGER",),
    # 15: turnout eval's rows (golden cases, whatever tenant it ran as); NULL: live traffic.
    ("ALTER TABLE requests ADD COLUMN evaluation INTEGER",),
)

# Columns follow LedgerRow's fields, so a field added without a migration fails loudly on the
# first write instead of being silently left out.
COLUMNS = tuple(f.name for f in dataclasses.fields(LedgerRow))
# The SQL is built once from those field names; every value is a bound parameter.
_COLUMN_LIST = ", ".join(f'"{name}"' for name in COLUMNS)
# The first write of a request id wins: a batch replayed from the spill journal (or written
# twice after a store timeout) never duplicates a row nor undoes feedback recorded since.
# (Not OR IGNORE: that would also skip rows breaking NOT NULL, silently.)
# A batch goes in statements of many rows: one bind and one step per chunk instead of per
# row (a fifth less CPU per row here, and the store's thread hands the GIL back once per chunk
# rather than once per row, which the event loop sharing the core feels).
# A row's None fields are left out of its statement (the column's default is NULL) and its
# booleans bound as integers: Python's sqlite3 binds an int, a float or a str directly, but
# passes None and bool through its adapter lookup first, about five times the cost, and a
# typical row has some twenty-five Nones (half of the row's CPU, measured). Rows are grouped
# by which columns they set; each group's chunks are 64 rows, then powers of two, so a shape
# uses at most seven statements (the connection's statement cache keeps them).
_CHUNK = 64  # rows; 64 x the columns stays far below SQLite's 32,766 bound parameters


@functools.lru_cache(maxsize=256)
def _shape(nones: bytes) -> tuple[Callable[[Sequence[Any]], Sequence[Any]], str, str]:
    """What a row of this shape (which fields are None) binds: the getter of the columns it
    sets, their list and one row's placeholders."""
    kept = [i for i, none in enumerate(nones) if not none]  # request_id and five more: never one
    columns = ", ".join(f'"{COLUMNS[i]}"' for i in kept)
    return operator.itemgetter(*kept), columns, "(" + ", ".join("?" * len(kept)) + ")"


@functools.lru_cache(maxsize=512)
def _insert_rows(nones: bytes, n: int) -> str:
    _, columns, placeholders = _shape(nones)
    return (
        f"INSERT INTO requests ({columns}) VALUES "  # noqa: S608
        + ", ".join([placeholders] * n)
        + " ON CONFLICT (request_id) DO NOTHING"
    )


def _statements(rows: Sequence[LedgerRow]) -> Iterator[tuple[str, list[Any]]]:
    """The batch's insert statements and their parameters. A request id repeated in the batch
    keeps its first row here, since grouping by shape reorders the rows."""
    first: dict[str, LedgerRow] = {}
    for row in rows:
        first.setdefault(row.request_id, row)
    shapes: dict[bytes, list[list[Any]]] = {}
    last: list[list[Any]] = []  # the last row's group
    kept: Callable[[Sequence[Any]], Sequence[Any]] | None = None
    unset = 0
    for row in first.values():
        values = _encode(row)
        # Rows of a batch mostly share a shape: the last one's is checked first, in C (as many
        # Nones, none of them in a column it sets), before the whole mask is built.
        if kept is not None and values.count(None) == unset and None not in kept(values):
            last.append(values)
            continue
        nones = bytes(map(operator.is_, values, _NONES))
        if (same := shapes.get(nones)) is None:
            same = shapes[nones] = []
        same.append(values)
        last, (kept, _, _), unset = same, _shape(nones), nones.count(1)
    for nones, group in shapes.items():
        pick = _shape(nones)[0]
        start = 0
        while start < len(group):
            left = len(group) - start
            n = _CHUNK if left >= _CHUNK else 1 << (left.bit_length() - 1)
            chunk = group[start : start + n]
            start += n
            yield _insert_rows(nones, n), list(itertools.chain.from_iterable(map(pick, chunk)))


_SELECT = f"SELECT {_COLUMN_LIST} FROM requests"  # noqa: S608
# The retention purge's walk, oldest first along the started_at index (whose entries are in
# (started_at, rowid) order: no sort), reading the rows it returns and no others. The rows a
# run deletes are mostly the oldest, so a run costs what it deletes, not what the ledger holds.
_AGED = "SELECT started_at, rowid, request_id, tenant, task FROM requests WHERE started_at >= ? AND started_at < ?"
_AGED_FIRST = f"{_AGED} ORDER BY started_at, rowid LIMIT ?"
_AGED_AFTER = f"{_AGED} AND (started_at, rowid) > (?, ?) ORDER BY started_at, rowid LIMIT ?"
# One parameter however many ids (SQLite caps a statement's parameters): a JSON array.
_DELETE_ROWS = "DELETE FROM requests WHERE request_id IN (SELECT value FROM json_each(?)) RETURNING tenant, task"
_ATTEMPTS = COLUMNS.index("attempts")
_LABELS = COLUMNS.index("labels")
_BOOLS = ("stream", "fallback")
_OPTIONAL_BOOLS = ("cache_hit", "human_review", "escalated", "usage_estimated", "live_pass", "evaluation")
# None keeps the stored value: feedback may arrive in pieces. Labels come as JSON text and
# replace the stored array whole.
_SET_OUTCOME = """UPDATE requests SET
    outcome = COALESCE(?, outcome),
    human_review = COALESCE(?, human_review),
    escalated = COALESCE(?, escalated),
    outcome_value = COALESCE(?, outcome_value),
    episode_id = COALESCE(?, episode_id),
    labels = COALESCE(?, labels),
    outcome_at = ?
    WHERE request_id = ? AND tenant = ?"""
_SET_OUTCOME_BY_EPISODE = """UPDATE requests SET
    outcome = COALESCE(?, outcome),
    human_review = COALESCE(?, human_review),
    escalated = COALESCE(?, escalated),
    outcome_value = COALESCE(?, outcome_value),
    labels = COALESCE(?, labels),
    outcome_at = ?
    WHERE episode_id = ? AND tenant = ?"""
# NULL parameters switch the tenant and task filters off; the started_at index serves the range
# (and the order of its first column: ties are sorted by request id among equal times only).
_BETWEEN_WHERE = (
    f"{_SELECT} WHERE started_at >= ? AND started_at < ? AND (? IS NULL OR tenant = ?) AND (? IS NULL OR task = ?)"
)
_BETWEEN = f"{_BETWEEN_WHERE} ORDER BY started_at, request_id LIMIT ?"
# The next page: past the previous one's last row.
_BETWEEN_AFTER = f"{_BETWEEN_WHERE} AND (started_at, request_id) > (?, ?) ORDER BY started_at, request_id LIMIT ?"
# Each failed attempt of the window's rows (the attempts JSON array, one element each).
_ATTEMPT_ERRORS = (
    "SELECT json_extract(a.value, '$.target'), json_extract(a.value, '$.error_class'), count(*) "
    "FROM requests, json_each(requests.attempts) AS a "
    "WHERE started_at >= ? AND started_at < ? AND json_extract(a.value, '$.error_class') IS NOT NULL "
    "GROUP BY 1, 2"  # by position: requests has columns named target and error_class too
)
# The window's rows, summed up in Python (``summarize``): SQLite has no percentile function.
_STATS = (
    f"SELECT {', '.join(STATS_COLUMNS)} FROM requests "  # noqa: S608
    'WHERE task = ? AND "release" = ? AND started_at >= ? AND started_at < ? AND tenant <> ? '
    "AND evaluation IS NOT 1 AND cache_hit IS NOT 1"
)


class SQLiteStore:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        # The ledger file keeps the process's umask (it is not created owner-only), and its
        # failures read "SQLite ledger <path>: …".
        self._db = SQLiteWorker(
            self.path,
            what="SQLite ledger store",
            label="ledger",
            error=StoreError,
            prepare=lambda conn: _migrate(conn, self.path),
            reader=False,
            private=False,
            failed_as="SQLite ledger",
        )

    @classmethod
    def from_config(cls, cfg: StoreConfig) -> SQLiteStore:
        return cls(cfg.path)

    async def open(self) -> None:
        await self._db.open()

    async def write_batch(self, rows: Sequence[LedgerRow]) -> None:
        if not rows:
            return

        def insert(conn: sqlite3.Connection) -> None:
            # Encoded on the store's thread, off the event loop. Nothing comes back: the cursor
            # must stay (and be finalized) on the thread.
            for sql, params in _statements(rows):
                conn.execute(sql, params)

        await self._db.transaction(insert)

    async def get(self, request_id: str) -> LedgerRow | None:
        found = await self._call(lambda conn: conn.execute(f"{_SELECT} WHERE request_id = ?", (request_id,)).fetchone())
        return None if found is None else _decode(found)

    async def recent(self, limit: int = 100) -> list[LedgerRow]:
        check_limit(limit)
        found = await self._call(
            lambda conn: conn.execute(
                f"{_SELECT} ORDER BY started_at DESC, request_id DESC LIMIT ?", (limit,)
            ).fetchall()
        )
        return [_decode(record) for record in found]

    async def count(self) -> int:
        found = await self._call(lambda conn: conn.execute("SELECT COUNT(*) FROM requests").fetchone())
        return int(found[0])

    async def aged_rows(
        self, since: float, before: float, limit: int, after: tuple[float, Order] | None = None
    ) -> list[AgedRow]:
        check_limit(limit)
        # After a row, the range starts at its time: SQLite takes the lower bound it is given
        # for the index and would otherwise read from ``since`` again, every batch.
        sql, params = (
            (_AGED_FIRST, (since, before, limit))
            if after is None
            else (_AGED_AFTER, (max(since, after[0]), before, *after, limit))
        )
        found = await self._call(lambda conn: conn.execute(sql, params).fetchall())
        return [AgedRow(*record) for record in found]

    async def delete_rows(self, request_ids: Sequence[str]) -> dict[tuple[str, str], int]:
        """In one short transaction (the writer's batches go between two of them)."""
        if not request_ids:
            return {}
        ids = orjson.dumps(list(request_ids)).decode()
        gone = await self._db.transaction(lambda conn: conn.execute(_DELETE_ROWS, (ids,)).fetchall())
        return dict(collections.Counter((str(tenant), str(task)) for tenant, task in gone))

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
        params = (outcome, human_review, escalated, value, episode_id, _json(labels), at, request_id, tenant)
        updated = await self._call(lambda conn: conn.execute(_SET_OUTCOME, params).rowcount)
        return updated > 0

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
        params = (outcome, human_review, escalated, value, _json(labels), at, episode_id, tenant)
        updated: int = await self._call(lambda conn: conn.execute(_SET_OUTCOME_BY_EPISODE, params).rowcount)
        return updated

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
        check_limit(limit)
        filters = (tenant, tenant, task, task)
        # After a row, the range starts at its time (as in aged_rows), so the index is entered there.
        sql, params = (
            (_BETWEEN, (since, until, *filters, limit))
            if after is None
            else (_BETWEEN_AFTER, (max(since, after[0]), until, *filters, *after, limit))
        )
        # Decoded on the store's thread: up to a console overview's 100,000 rows, a second or
        # more of Python that would otherwise stall every request on the event loop.
        return await self._call(lambda conn: [_decode(record) for record in conn.execute(sql, params)])

    async def attempt_errors(self, since: float, until: float) -> dict[tuple[str, str], int]:
        found = await self._call(lambda conn: conn.execute(_ATTEMPT_ERRORS, (since, until)).fetchall())
        return {(target, error_class): n for target, error_class, n in found}

    async def release_stats(self, task: str, release: str, since: float, until: float | None = None) -> ReleaseStats:
        params = (task, release, since, math.inf if until is None else until, EVAL_TENANT)
        found = await self._call(lambda conn: conn.execute(_STATS, params).fetchall())
        return summarize(found)

    async def aclose(self) -> None:
        # Calls already queued on the thread run before the close; new ones are refused.
        await self._db.aclose()

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._db.run(fn)


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    migrate(conn, path, MIGRATIONS, what="ledger", error=StoreError, label="ledger")


_FIELDS = operator.attrgetter(*COLUMNS)  # every column's value in one C call
_NONES = (None,) * len(COLUMNS)
_BOOL_AT = tuple(COLUMNS.index(name) for name in (*_BOOLS, *_OPTIONAL_BOOLS))


def _encode(row: LedgerRow) -> list[Any]:
    values = list(_FIELDS(row))
    values[_ATTEMPTS] = orjson.dumps(row.attempts).decode()
    if row.labels is not None:
        values[_LABELS] = orjson.dumps(row.labels).decode()
    for at in _BOOL_AT:  # an int binds directly; a bool goes through the adapters
        if (flag := values[at]) is not None:
            values[at] = 1 if flag else 0
    return values


def _json(labels: list[str] | None) -> str | None:
    return None if labels is None else orjson.dumps(labels).decode()


def _decode(record: Sequence[Any]) -> LedgerRow:
    values = dict(zip(COLUMNS, record, strict=True))
    for name in _BOOLS:
        values[name] = bool(values[name])
    for name in _OPTIONAL_BOOLS:
        if values[name] is not None:
            values[name] = bool(values[name])
    values["attempts"] = [AttemptRecord(**a) for a in orjson.loads(values["attempts"])]
    if values["labels"] is not None:
        values["labels"] = orjson.loads(values["labels"])
    return LedgerRow(**values)
