"""The SQLite plumbing the small stores share: WAL with a busy retry, versioned migrations,
transactions, and the worker that owns a file's connection on one thread."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from turnout._support.sqlite import SQLiteWorker, enable_wal, in_transaction, migrate
from turnout.errors import TurnoutError

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    ("CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT NOT NULL)",),
    ("ALTER TABLE things ADD COLUMN size INTEGER", "CREATE INDEX things_name ON things (name)"),
)


class ThingError(TurnoutError):
    """The store under test's own error class."""


def connect(path: Path | str) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


def prepare(conn: sqlite3.Connection) -> None:
    migrate(conn, "things.db", MIGRATIONS, what="thing store", label="things", error=ThingError)


def worker(path: Path | str, **options: Any) -> SQLiteWorker:
    return SQLiteWorker(str(path), what="thing store", label="things", error=ThingError, prepare=prepare, **options)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SQLiteWorker]:
    opened = worker(tmp_path / "things.db")
    await opened.open()
    yield opened
    await opened.aclose()


# --- enable_wal -----------------------------------------------------------------------------


def busy() -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError("database is locked")
    exc.sqlite_errorcode = sqlite3.SQLITE_BUSY
    return exc


class Flaky:
    """A connection whose journal-mode switch fails with the given errors first."""

    def __init__(self, *errors: sqlite3.Error) -> None:
        self.errors = list(errors)
        self.calls = 0

    def execute(self, sql: str) -> Flaky:
        assert sql == "PRAGMA journal_mode=WAL"
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self

    def fetchone(self) -> tuple[str]:
        return ("wal",)


def test_wal_is_switched_on(tmp_path: Path) -> None:
    conn = connect(tmp_path / "a.db")
    try:
        assert enable_wal(conn) == "wal"
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()


def test_wal_switch_retries_while_the_file_is_busy() -> None:
    conn = Flaky(busy(), busy())
    assert enable_wal(cast(sqlite3.Connection, conn)) == "wal"
    assert conn.calls == 3


def test_wal_switch_gives_up_after_its_tries() -> None:
    conn = Flaky(*(busy() for _ in range(3)))
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        enable_wal(cast(sqlite3.Connection, conn), tries=3)
    assert conn.calls == 3


def test_wal_switch_does_not_retry_other_errors() -> None:
    other = sqlite3.OperationalError("disk I/O error")
    other.sqlite_errorcode = sqlite3.SQLITE_IOERR
    conn = Flaky(other)
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        enable_wal(cast(sqlite3.Connection, conn))
    assert conn.calls == 1


def test_wal_switch_waits_out_another_process_lock(tmp_path: Path) -> None:
    holder, conn = connect(tmp_path / "a.db"), sqlite3.connect(tmp_path / "a.db", timeout=0, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        release = threading.Timer(0.1, lambda: holder.execute("COMMIT"))
        release.start()
        assert enable_wal(conn) == "wal"
        release.join()
    finally:
        conn.close()
        holder.close()


# --- in_transaction -------------------------------------------------------------------------


def test_a_transaction_commits_what_its_body_did() -> None:
    conn = connect(":memory:")
    conn.execute("CREATE TABLE t (x)")
    assert in_transaction(conn, lambda c: c.execute("INSERT INTO t VALUES (1)").rowcount) == 1
    assert not conn.in_transaction
    assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]


@pytest.mark.parametrize("error", [ValueError("no"), KeyboardInterrupt()])
def test_a_transaction_rolls_back_when_its_body_raises(error: BaseException) -> None:
    conn = connect(":memory:")
    conn.execute("CREATE TABLE t (x)")

    def body(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO t VALUES (1)")
        raise error

    with pytest.raises(type(error)):
        in_transaction(conn, body)
    assert not conn.in_transaction
    assert conn.execute("SELECT x FROM t").fetchall() == []


def test_an_immediate_transaction_takes_the_write_lock_first(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    conn, other = connect(path), sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        enable_wal(conn)

        def body(c: sqlite3.Connection) -> None:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")

        in_transaction(conn, body, begin="BEGIN IMMEDIATE")
    finally:
        other.close()
        conn.close()


# --- migrate --------------------------------------------------------------------------------


def versions(conn: sqlite3.Connection, table: str = "schema_migrations") -> list[int]:
    return [row[0] for row in conn.execute(f"SELECT version FROM {table} ORDER BY version")]  # noqa: S608


def test_migrations_are_applied_once_in_order() -> None:
    conn = connect(":memory:")
    for _ in range(2):
        prepare(conn)
    assert versions(conn) == [1, 2]
    assert [row[1] for row in conn.execute("PRAGMA table_info(things)")] == ["id", "name", "size"]


def test_only_the_new_steps_are_applied() -> None:
    conn = connect(":memory:")
    migrate(conn, "x", MIGRATIONS[:1], what="thing store", error=ThingError)
    migrate(conn, "x", MIGRATIONS, what="thing store", error=ThingError)
    assert versions(conn) == [1, 2]


def test_migrations_can_have_their_own_table() -> None:
    conn = connect(":memory:")
    migrate(conn, "x", MIGRATIONS, what="thing store", error=ThingError, table="thing_migrations")
    assert versions(conn, "thing_migrations") == [1, 2]
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'schema_migrations'").fetchall() == []


def test_a_newer_schema_is_refused_with_the_stores_error() -> None:
    conn = connect(":memory:")
    prepare(conn)
    conn.execute("INSERT INTO schema_migrations VALUES (7, 0)")
    with pytest.raises(ThingError) as caught:
        prepare(conn)
    assert caught.value.message == (
        "the thing store at things.db has schema version 7, newer than this turnout knows (2); upgrade turnout"
    )
    assert not conn.in_transaction


def test_a_failing_step_leaves_nothing_behind() -> None:
    conn = connect(":memory:")
    broken = (*MIGRATIONS, ("CREATE TABLE more (x)", "NOT SQL"))
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, "x", broken, what="thing store", error=ThingError)
    assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall() == []


def test_processes_opening_a_new_file_together_apply_each_step_once(tmp_path: Path) -> None:
    path, errors = tmp_path / "a.db", list[BaseException]()
    start = threading.Barrier(4)

    def open_one() -> None:
        conn = sqlite3.connect(path, timeout=10, isolation_level=None)
        try:
            start.wait()
            enable_wal(conn)
            prepare(conn)
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for each in threads:
        each.start()
    for each in threads:
        each.join()
    assert errors == []
    conn = connect(path)
    assert versions(conn) == [1, 2]
    conn.close()


# --- SQLiteWorker ---------------------------------------------------------------------------


async def test_the_worker_runs_everything_on_its_own_thread(db: SQLiteWorker) -> None:
    names = {await db.run(lambda _: threading.current_thread().name) for _ in range(5)}
    assert len(names) == 1 and names.pop().startswith("turnout-things")
    assert threading.current_thread().name not in names


async def test_the_worker_opens_a_migrated_owner_only_wal_file(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "things.db"
    opened = worker(path)
    await opened.open()
    try:
        assert await opened.run(lambda c: c.execute("PRAGMA journal_mode").fetchone()) == ("wal",)
        assert await opened.run(lambda c: c.execute("PRAGMA synchronous").fetchone()) == (1,)  # NORMAL
        assert await opened.run(versions) == [1, 2]
        await opened.transaction(lambda c: c.execute("INSERT INTO things (name) VALUES ('a')"))
        files = [p for p in path.parent.iterdir() if p.name.startswith("things.db")]
        assert {p.name for p in files} >= {"things.db", "things.db-wal", "things.db-shm"}
        assert {stat.S_IMODE(os.stat(p).st_mode) for p in files} == {0o600}
    finally:
        await opened.aclose()


async def test_a_transaction_rolls_back_and_maps_sqlite_errors(db: SQLiteWorker) -> None:
    def body(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO things (name) VALUES ('kept?')")
        c.execute("INSERT INTO things (name) VALUES (NULL)")

    with pytest.raises(ThingError, match=r"^thing store .*things\.db: NOT NULL constraint failed") as caught:
        await db.transaction(body, begin="BEGIN IMMEDIATE")
    assert isinstance(caught.value.__cause__, sqlite3.IntegrityError)
    assert await db.run(lambda c: c.execute("SELECT COUNT(*) FROM things").fetchone()) == (0,)


async def test_other_errors_pass_through_unchanged(db: SQLiteWorker) -> None:
    def body(_: sqlite3.Connection) -> None:
        raise ThingError("refused by the store's own rule")

    with pytest.raises(ThingError, match=r"^refused by the store's own rule$"):
        await db.transaction(body)


async def test_data_version_moves_when_another_connection_commits(db: SQLiteWorker, tmp_path: Path) -> None:
    assert db.readable
    before = db.data_version()
    assert db.data_version() == before  # reading does not move it
    other = connect(tmp_path / "things.db")
    other.execute("INSERT INTO things (name) VALUES ('x')")
    other.close()
    assert db.data_version() != before


async def test_a_closed_worker_says_so(tmp_path: Path) -> None:
    closed = worker(tmp_path / "things.db")
    message = r"^the thing store .*things\.db is not open$"
    with pytest.raises(ThingError, match=message):
        await closed.run(lambda c: None)
    with pytest.raises(ThingError, match=message):
        closed.data_version()
    await closed.open()
    await closed.aclose()
    await closed.aclose()  # again: nothing to do
    assert closed.executor is None and not closed.readable
    with pytest.raises(ThingError, match=message):
        await closed.transaction(lambda c: None)
    with pytest.raises(ThingError, match=message):
        closed.data_version()


async def test_a_second_open_is_refused(db: SQLiteWorker) -> None:
    with pytest.raises(ThingError, match="is already open"):
        await db.open()
    assert await db.run(lambda c: 1) == 1  # still usable


async def test_a_failed_open_closes_and_can_be_retried(tmp_path: Path) -> None:
    path = tmp_path / "things.db"
    conn = connect(path)
    prepare(conn)
    conn.execute("INSERT INTO schema_migrations VALUES (9, 0)")
    opened = worker(path)
    with pytest.raises(ThingError, match="schema version 9, newer"):
        await opened.open()
    assert opened.executor is None and not opened.readable
    conn.execute("DELETE FROM schema_migrations WHERE version = 9")
    conn.close()
    await opened.open()
    await opened.aclose()


@pytest.mark.parametrize(
    ("path", "options"), [(":memory:", {}), ("things.db", {"reader": False})], ids=["memory", "no-reader"]
)
async def test_without_a_reader_there_is_no_data_version(tmp_path: Path, path: str, options: dict[str, Any]) -> None:
    opened = worker(path if path == ":memory:" else tmp_path / path, **options)
    await opened.open()
    try:
        assert not opened.readable
        with pytest.raises(ThingError, match="is not open"):
            opened.data_version()
        await opened.transaction(lambda c: c.execute("INSERT INTO things (name) VALUES ('x')"))
        rows: Sequence[Any] = await opened.run(lambda c: c.execute("SELECT name FROM things").fetchall())
        assert rows == [("x",)]
    finally:
        await opened.aclose()
    assert not (tmp_path / ":memory:").exists()


async def test_a_second_store_on_an_open_file_keeps_the_first_ones_locks(tmp_path: Path) -> None:
    """Opening another store on a file this process already has open must not open (and close)
    the file itself: closing any descriptor drops every POSIX lock the process holds on it, and
    the next connection of another process to close would then think it was the last one and
    delete the WAL under our feet (seen: releases.db-wal "(deleted)", release transitions from
    the CLI ignored by a running gateway)."""
    path = tmp_path / "shared.db"
    first = worker(path)
    await first.open()
    second = worker(path)
    try:
        await first.transaction(lambda c: c.execute("INSERT INTO things (name) VALUES ('a')"))
        await second.open()  # e.g. the review queue, then the release store, on one file
        # Another process (the CLI) connects, writes and disconnects.
        script = (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute(\"INSERT INTO things (name) VALUES ('cli')\"); c.close()"
        )
        await asyncio.to_thread(subprocess.run, [sys.executable, "-c", script, str(path)], check=True, timeout=30)
        assert (tmp_path / "shared.db-wal").exists()  # still ours: not checkpointed and deleted
        names = await first.run(lambda c: [r[0] for r in c.execute("SELECT name FROM things ORDER BY id")])
        assert names == ["a", "cli"]  # and what the other process wrote is seen here
    finally:
        await second.aclose()
        await first.aclose()
