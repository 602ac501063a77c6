"""``worker``: the worker a store of shared state runs on, for its place: ``SQLiteWorker`` for a
path, ``PostgresWorker`` for a ``PgPlace`` (psycopg is imported only then). ``migrate_at``: a
store's schema steps for the backend it opened on."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class Schema:
    """A store's tables on each backend: ``sqlite`` steps (versioned in ``sqlite_table``) and
    ``postgres`` steps (in ``pg_table``); ``what`` names the store in a refusal of a newer
    schema, ``label`` in log lines."""

    sqlite: Steps
    postgres: Steps
    what: str
    label: str
    error: Callable[[str], Exception]
    pg_table: str
    sqlite_table: str = "schema_migrations"


def migrate_at(conn: Conn, place: Place, path: str, schema: Schema) -> None:
    """Apply the steps of ``schema`` for the backend ``conn`` is on that are not recorded yet.
    For a worker's ``prepare``."""
    s = schema
    if isinstance(place, PgPlace):
        from turnout._support import pgworker

        pg = cast("pgworker.PgConnection", conn)
        pgworker.migrate(pg, place, s.postgres, what=s.what, label=s.label, error=s.error, table=s.pg_table)
        return
    from turnout._support.sqlite import migrate

    migrate(cast(Any, conn), path, s.sqlite, what=s.what, label=s.label, error=s.error, table=s.sqlite_table)
