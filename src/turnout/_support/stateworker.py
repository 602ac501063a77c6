"""``worker``: the worker a store of shared state runs on, for its place: ``SQLiteWorker`` for a
path, ``PostgresWorker`` for a ``PgPlace`` (psycopg is imported only then)."""

from __future__ import annotations

from collections.abc import Callable

from turnout._support.places import Conn, PgPlace, Place, Worker


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
