"""``worker``: the worker a store of shared state runs on, for its place: ``SQLiteWorker`` for a
path, ``PostgresWorker`` for a ``PgPlace`` (psycopg is imported only then). ``migrate_at``: a
store's schema steps for the backend it opened on."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from turnout._support.places import Conn, PgPlace, Place, Worker

Steps = Sequence[Sequence[str]]


def worker(
    place: Place,
    *,
    what: str,
    label: str,
    error: Callable[[str], Exception],
    prepare: Callable[[Conn], None],
    reader: bool = True,
    private: bool = True,
) -> Worker:
    """The worker for ``place``. ``prepare(conn)`` runs once it is open (the store's migrations;
    ``conn.dialect`` tells it which). ``private``: a SQLite file is created owner-only."""
    if isinstance(place, PgPlace):
        from turnout._support.pgworker import PostgresWorker  # psycopg only for a fleet

        return PostgresWorker(place, what=what, label=label, error=error, prepare=prepare, reader=reader)
    from turnout._support.sqlite import SQLiteWorker

    return SQLiteWorker(place, what=what, label=label, error=error, prepare=prepare, reader=reader, private=private)


def migrate_at(
    conn: Conn,
    place: Place,
    path: str,
    *,
    sqlite: Steps,
    postgres: Steps,
    what: str,
    label: str,
    error: Callable[[str], Exception],
    sqlite_table: str = "schema_migrations",
    pg_table: str,
) -> None:
    """Apply a store's steps not yet recorded: ``sqlite`` (versioned in ``sqlite_table``) in a
    SQLite file, ``postgres`` (in ``pg_table``) in PostgreSQL. For a worker's ``prepare``."""
    if isinstance(place, PgPlace):
        from turnout._support import pgworker

        pg = cast("pgworker.PgConnection", conn)
        pgworker.migrate(pg, place, postgres, what=what, label=label, error=error, table=pg_table)
        return
    from turnout._support.sqlite import migrate

    migrate(cast(Any, conn), path, sqlite, what=what, label=label, error=error, table=sqlite_table)
