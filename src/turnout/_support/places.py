"""Where a store of shared state opens: a SQLite file's path, or a ``PgPlace`` (``state.kind:
postgres``), and the one interface the stores use of either worker (``Worker``, ``Conn``;
``_support.stateworker.worker`` opens one). Choosing a place imports no driver."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeAlias, TypeVar

T = TypeVar("T")

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def beside(path: str, name: str) -> str:
    """The SQLite file ``name`` in the directory of ``path`` (another store's file): where a
    store found by another's setting lives; in memory beside one in memory."""
    return path if path == ":memory:" else str(Path(path).parent / name)


@dataclass(frozen=True, slots=True)
class PgPlace:
    """Where a fleet's shared state lives: a DSN and the schema of turnout's tables (None: the
    connection's default search path)."""

    dsn: str
    schema: str | None = None

    def __post_init__(self) -> None:
        if self.schema is not None and not _IDENTIFIER.fullmatch(self.schema):
            raise ValueError(f"not a plain lower-case schema name: {self.schema!r}")

    @property
    def shown(self) -> str:
        """The DSN without its password, and the schema: for messages and logs."""
        where = without_password(self.dsn)
        return where if self.schema is None else f"{where} (schema {self.schema})"


def without_password(dsn: str) -> str:
    """A PostgreSQL URL with no password in it: neither ``user:PASSWORD@`` (to the last ``@``
    before the query: a password may hold ``@`` or ``/``) nor a ``password=`` parameter of
    the query, which libpq and asyncpg read as well."""
    scheme, sep, rest = dsn.partition("://")
    if not sep:
        return dsn
    head, query_sep, query = rest.partition("?")
    userinfo, at, host = head.rpartition("@")
    if at:
        head = f"{userinfo.split(':', 1)[0]}@{host}"
    params = [p for p in query.split("&") if p.split("=", 1)[0].strip().lower() != "password"]
    return f"{scheme}://{head}" + (query_sep + "&".join(params) if params and query_sep else "")


Place: TypeAlias = str | PgPlace


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    """What a store's bodies use of ``sqlite3.Connection`` (and ``pgworker.PgConnection``)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...
    def executemany(self, sql: str, seq: Sequence[Sequence[Any]], /) -> Cursor: ...


class Worker(Protocol):
    """A store's database behind one thread: ``SQLiteWorker`` or ``PostgresWorker``."""

    path: str
    dialect: str

    @property
    def executor(self) -> ThreadPoolExecutor | None: ...
    @property
    def readable(self) -> bool: ...
    async def open(self) -> None: ...
    async def aclose(self) -> None: ...
    async def run(self, fn: Callable[[Any], T]) -> T: ...
    async def transaction(self, fn: Callable[[Any], T], begin: str = "BEGIN") -> T: ...
    def data_version(self) -> int: ...


def dialect(conn: object) -> str:
    """``postgres`` for a ``PgConnection``, else ``sqlite``."""
    return str(getattr(conn, "dialect", "sqlite"))
