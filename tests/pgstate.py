"""Where a test's store of shared state opens on either backend (``state.kind``): a SQLite file
under the test's directory, or a PostgreSQL schema of its own, dropped afterwards. Test files
parametrize their store fixtures over ``KINDS`` so that one contract holds on both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.test_ledger_store import POSTGRES_DSN, drop_schema, postgres_reachable, unique_schema
from turnout._support.places import PgPlace, Place

KINDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(not postgres_reachable(), reason="no PostgreSQL"))]


@asynccontextmanager
async def state_place(kind: str, path: Path) -> AsyncIterator[Place]:
    """``path`` for sqlite; for postgres a fresh schema in the test database."""
    if kind == "sqlite":
        yield str(path)
        return
    pytest.importorskip("psycopg")
    schema = unique_schema()
    try:
        yield PgPlace(POSTGRES_DSN, schema)
    finally:
        await drop_schema(schema)


def is_postgres(place: object) -> bool:
    return isinstance(place, PgPlace)


def raw_sql(place: Place, statement: str) -> list[tuple[Any, ...]]:
    """One statement on a connection of its own, outside any store: what another program (or
    a careless operator) could do to the tables. The rows it returns, if any."""
    if isinstance(place, PgPlace):
        from turnout._support import pgworker

        conn = pgworker.connect(place)
        try:
            cursor = conn.execute(statement)
            return [tuple(r) for r in cursor.fetchall()] if cursor.description else []
        finally:
            conn.raw.close()
    import sqlite3

    db = sqlite3.connect(place, isolation_level=None)
    try:
        return [tuple(r) for r in db.execute(statement).fetchall()]
    finally:
        db.close()


def pg_errors() -> tuple[type[Exception], ...]:
    try:
        import psycopg
    except ImportError:
        return ()
    return (psycopg.Error,)
