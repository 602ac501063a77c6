"""The plumbing shared by turnout's small SQLite stores (keys, releases, capture, review).

``SQLiteWorker`` owns one file: a dedicated thread holds the write connection and runs every
statement, so the event loop never waits on disk; the file is in WAL mode with
``synchronous=NORMAL`` and created owner-only (0600). A second connection, used only on the
loop, answers ``PRAGMA data_version``: it reads the WAL index in shared memory (a few µs, no
disk I/O) and changes whenever another connection commits, which is how a process notices a
change made by another (the CLI, a replica).

``migrate`` applies a store's versioned ``MIGRATIONS`` (append-only history, one tuple of
statements per version) and records each in a migrations table; a file whose version is newer
than the code knows is refused. ``in_transaction`` runs a body between BEGIN and COMMIT.

Each store keeps its own error class: every SQLite failure, and use of a closed store, is
raised as that class, with the store's name and path in the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from turnout._support.places import Conn

log = logging.getLogger(__name__)

T = TypeVar("T")
C = TypeVar("C", bound=Conn)

Migrations = Sequence[Sequence[str]]
ErrorFactory = Callable[[str], Exception]

MEMORY = ":memory:"


def enable_wal(conn: sqlite3.Connection, tries: int = 200) -> str:
    """Switch to WAL and return the journal mode now in force; two processes opening one new
    file can see "database is locked" here (the switch does not wait on the busy handler), so
    retry briefly on this, the caller's own, thread."""
    for _ in range(tries - 1):
        try:
            return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            time.sleep(0.01)
    return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])


def create_private(path: Path) -> None:
    """Create the database file owner-only before SQLite opens it (SQLite gives its -wal and
    -shm files the same mode). Never opens a file that exists: closing any descriptor of a file
    drops every POSIX lock this process holds on it, the locks through which SQLite's other
    connections here keep the WAL alive (SQLite's documentation warns of exactly this)."""
    with contextlib.suppress(FileExistsError):  # made meanwhile by another process: SQLite opens it
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))


def in_transaction(conn: C, body: Callable[[C], T], begin: str = "BEGIN") -> T:
    """``body(conn)`` in one transaction: committed if it returns, rolled back if it raises.
    The connection must be in autocommit mode (``isolation_level=None``)."""
    conn.execute(begin)
    try:
        result = body(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def migrate(
    conn: sqlite3.Connection,
    path: str,
    migrations: Migrations,
    *,
    what: str,
    error: ErrorFactory,
    table: str = "schema_migrations",
    label: str = "sqlite",
) -> None:
    """Apply the steps of ``migrations`` that ``table`` does not record yet. ``what`` names the
    store in the refusal of a newer schema; ``label`` prefixes the log lines."""

    def apply(conn: sqlite3.Connection) -> None:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
        current = conn.execute(f"SELECT COALESCE(MAX(version), 0) FROM {table}").fetchone()[0]  # noqa: S608
        if current > len(migrations):
            raise error(
                f"the {what} at {path} has schema version {current}, newer than this turnout "
                f"knows ({len(migrations)}); upgrade turnout"
            )
        for version, statements in enumerate(migrations[current:], start=current + 1):
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"INSERT INTO {table} VALUES (?, ?)", (version, time.time()))  # noqa: S608
            log.info("%s: applied schema migration %d to %s", label, version, path)

    # IMMEDIATE takes the write lock before reading the version, so two processes opening the
    # same new file cannot both apply a step.
    in_transaction(conn, apply, begin="BEGIN IMMEDIATE")


class SQLiteWorker:
    """One SQLite file behind one thread. ``what`` names the store in error messages ("the
    release store … is not open"), ``label`` in log lines and the thread's name; ``prepare``
    runs on the thread once the connection is in WAL mode (the store's migrations). ``reader``:
    also keep the loop's ``data_version`` connection. ``:memory:`` gets neither WAL nor a
    reader (another connection would see another database). ``private``: create the file
    owner-only (0600); off, SQLite creates it with the process's umask. ``failed_as`` names the
    store in the messages of SQLite failures (default: ``what``)."""

    dialect = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        what: str,
        label: str,
        error: ErrorFactory,
        prepare: Callable[[sqlite3.Connection], None],
        reader: bool = True,
        private: bool = True,
        failed_as: str | None = None,
    ) -> None:
        self.path = path
        self.what = what
        self.failed_as = what if failed_as is None else failed_as
        self._private = private
        self.label = label
        self.error = error
        self._prepare = prepare
        self._want_reader = reader and path != MEMORY
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # the write connection: the executor's thread only
        self._reader: sqlite3.Connection | None = None  # PRAGMA data_version only, on the loop

    @property
    def executor(self) -> ThreadPoolExecutor | None:
        """The thread's executor while open; None once closed (or before opening)."""
        return self._executor

    @property
    def readable(self) -> bool:
        """Whether ``data_version`` can answer: open, with a reader."""
        return self._reader is not None

    async def open(self) -> None:
        if self._executor is not None:
            raise self.error(f"the {self.what} {self.path} is already open")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"turnout-{self.label}")
        try:
            await self._on_thread(self._connect)
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        # data_version stops here, on the loop, before the thread closes the connections.
        reader, self._reader = self._reader, None
        await asyncio.get_running_loop().run_in_executor(executor, self._disconnect, reader)
        executor.shutdown(wait=True)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)`` on the thread, with the write connection (autocommit)."""
        return await self._on_thread(lambda: fn(self._connection()))

    async def transaction(self, fn: Callable[[sqlite3.Connection], T], begin: str = "BEGIN") -> T:
        """``fn(conn)`` on the thread, in one transaction (``BEGIN IMMEDIATE`` to take the
        write lock before reading)."""
        return await self.run(lambda conn: in_transaction(conn, fn, begin))

    def data_version(self) -> int:
        """Changes whenever another connection commits; on the loop, from shared memory."""
        if self._reader is None:
            raise self._not_open()
        try:
            # Fetching the one row steps the statement to its end, so no read transaction stays
            # open to hold back WAL checkpoints.
            return int(self._reader.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc

    # --- the thread ------------------------------------------------------------------------

    async def _on_thread(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise self._not_open()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except sqlite3.Error as exc:
            # SQLite's messages name constraints and conditions, never bound values.
            raise self._failed(exc) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise self._not_open()
        return self._conn

    def _connect(self) -> None:
        memory = self.path == MEMORY
        if not memory:
            path = Path(self.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            if self._private and not path.exists():
                create_private(path)
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        reader = None
        try:
            if not memory:
                mode = enable_wal(conn)
                if mode != "wal":
                    log.warning("%s: %s is in %s journal mode, not WAL", self.label, self.path, mode)
            conn.execute("PRAGMA synchronous=NORMAL")
            self._prepare(conn)
            if self._want_reader:
                # Made here, then used only on the loop thread (and closed here once that is done).
                reader = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        except BaseException:
            conn.close()
            raise
        self._conn, self._reader = conn, reader

    def _disconnect(self, reader: sqlite3.Connection | None) -> None:
        conn, self._conn = self._conn, None
        for each in (reader, conn):  # the writer last: closing it checkpoints the WAL
            if each is not None:
                each.close()

    def _not_open(self) -> Exception:
        return self.error(f"the {self.what} {self.path} is not open")

    def _failed(self, exc: sqlite3.Error) -> Exception:
        return self.error(f"{self.failed_as} {self.path}: {exc}")
