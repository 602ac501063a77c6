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

import asyncio
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from turnout.config import StoreConfig
from turnout.ledger.record import AttemptRecord, LedgerRow
from turnout.ledger.store import STATS_COLUMNS, ReleaseStats, StoreError, check_limit, summarize

log = logging.getLogger(__name__)

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
)

# Columns follow LedgerRow's fields, so a field added without a migration fails loudly on the
# first write instead of being silently left out.
COLUMNS = tuple(f.name for f in dataclasses.fields(LedgerRow))
# The SQL is built once from those field names; every value is a bound parameter.
_COLUMN_LIST = ", ".join(f'"{name}"' for name in COLUMNS)
_PLACEHOLDERS = ", ".join("?" for _ in COLUMNS)
_INSERT = f"INSERT OR REPLACE INTO requests ({_COLUMN_LIST}) VALUES ({_PLACEHOLDERS})"  # noqa: S608
_SELECT = f"SELECT {_COLUMN_LIST} FROM requests"  # noqa: S608
_ATTEMPTS = COLUMNS.index("attempts")
_LABELS = COLUMNS.index("labels")
_BOOLS = ("stream", "fallback")
_OPTIONAL_BOOLS = ("cache_hit", "human_review", "escalated")
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
# NULL parameters switch the tenant and task filters off; the started_at index serves the range.
_BETWEEN = (
    f"{_SELECT} WHERE started_at >= ? AND started_at < ? "
    "AND (? IS NULL OR tenant = ?) AND (? IS NULL OR task = ?) "
    "ORDER BY started_at, request_id LIMIT ?"
)
# The window's rows, summed up in Python (``summarize``): SQLite has no percentile function.
_STATS = (
    f"SELECT {', '.join(STATS_COLUMNS)} FROM requests "  # noqa: S608
    'WHERE task = ? AND "release" = ? AND started_at >= ?'
)


class SQLiteStore:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # touched only on the executor's thread

    @classmethod
    def from_config(cls, cfg: StoreConfig) -> SQLiteStore:
        return cls(cfg.path)

    async def open(self) -> None:
        if self._executor is not None:
            raise StoreError(f"the SQLite ledger store {self.path} is already open")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="turnout-ledger")
        try:
            await self._on_thread(self._connect)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def write_batch(self, rows: Sequence[LedgerRow]) -> None:
        if not rows:
            return
        # Encode here, on the caller's side, so the thread holds the database only for SQL.
        params = [_encode(row) for row in rows]
        await self._call(lambda conn: _in_transaction(conn, lambda: conn.executemany(_INSERT, params)))

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
    ) -> list[LedgerRow]:
        check_limit(limit)
        params = (since, until, tenant, tenant, task, task, limit)
        found = await self._call(lambda conn: conn.execute(_BETWEEN, params).fetchall())
        return [_decode(record) for record in found]

    async def release_stats(self, task: str, release: str, since: float) -> ReleaseStats:
        found = await self._call(lambda conn: conn.execute(_STATS, (task, release, since)).fetchall())
        return summarize(found)

    async def aclose(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        # Calls already queued on the thread run before the close; new ones are refused above.
        await asyncio.get_running_loop().run_in_executor(executor, self._disconnect)
        executor.shutdown(wait=True)  # the thread is idle by now, so this returns at once

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._on_thread(lambda: fn(self._connection()))

    async def _on_thread(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise StoreError(f"the SQLite ledger store {self.path} is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except sqlite3.Error as exc:
            # SQLite's messages name constraints and conditions, never the bound values, so
            # they are safe to carry into logs.
            raise StoreError(f"SQLite ledger {self.path}: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"the SQLite ledger store {self.path} is not open")
        return self._conn

    def _connect(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; we open them explicitly.
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        try:
            mode = _enable_wal(conn)
            if mode != "wal" and self.path != ":memory:":
                log.warning("ledger: %s is in %s journal mode, not WAL; readers may block writes", self.path, mode)
            conn.execute("PRAGMA synchronous=NORMAL")
            _migrate(conn, self.path)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _enable_wal(conn: sqlite3.Connection, tries: int = 200) -> str:
    """Switch to WAL (persistent in the file, so later opens find it on). Switching needs an
    exclusive lock and SQLite does not wait on its busy handler for it, so two processes opening
    one new file can see "database is locked": retry briefly; this thread is ours to block."""
    for _ in range(tries - 1):
        try:
            return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            time.sleep(0.01)
    return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    def apply() -> None:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
        if current > len(MIGRATIONS):
            raise StoreError(
                f"the ledger at {path} has schema version {current}, newer than this turnout "
                f"knows ({len(MIGRATIONS)}); upgrade turnout"
            )
        for version, statements in enumerate(MIGRATIONS[current:], start=current + 1):
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, time.time()))
            log.info("ledger: applied schema migration %d to %s", version, path)

    # IMMEDIATE takes the write lock before reading the version, so two processes opening the
    # same new file cannot both apply a step.
    _in_transaction(conn, apply, begin="BEGIN IMMEDIATE")


def _in_transaction(conn: sqlite3.Connection, body: Callable[[], object], begin: str = "BEGIN") -> None:
    conn.execute(begin)
    try:
        body()
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _encode(row: LedgerRow) -> tuple[Any, ...]:
    values = [getattr(row, name) for name in COLUMNS]
    values[_ATTEMPTS] = orjson.dumps(row.attempts).decode()
    values[_LABELS] = _json(row.labels)
    return tuple(values)


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
