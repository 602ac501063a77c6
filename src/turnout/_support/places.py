"""Where a store of shared state opens: a SQLite file's path, or a ``PgPlace`` (``state.kind:
postgres``), and the one interface the stores use of either worker (``Worker``, ``Conn``;
``_support.stateworker.worker`` opens one). Choosing a place imports no driver."""

from __future__ import annotations

import errno
import hashlib
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


def lock_key(*parts: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``parts`` (PostgreSQL's advisory locks)."""
    digest = hashlib.blake2b(":".join(("turnout", *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def schema_lock(schema: str) -> int:
    """The lock every store takes around ``CREATE SCHEMA IF NOT EXISTS``: two at once (the
    ledger and a store of shared state, two replicas) otherwise collide on the catalog."""
    return lock_key(schema, "schema")


# Network failures that a database coming back would end (not a wrong password, not a file in
# the way): refused, reset, no route, a name that does not resolve yet, no answer in time.
_NO_ROUTE = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN})


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) says PostgreSQL could not be reached, as
    opposed to refusing us: a socket that failed, a timeout, a server starting or shutting
    down (SQLSTATE class 57P), a connection exception (class 08), or psycopg's failure to
    connect (no SQLSTATE). A refusal with a reason (authentication, a missing database, a
    schema newer than this code) is not."""
    seen: set[int] = set()
    each: BaseException | None = exc
    while each is not None and id(each) not in seen:
        seen.add(id(each))
        if isinstance(each, (ConnectionError, TimeoutError)):
            return True
        if isinstance(each, OSError) and (each.errno in _NO_ROUTE or type(each).__name__ == "gaierror"):
            return True
        state = getattr(each, "sqlstate", None)
        if isinstance(state, str) and state.startswith(("08", "57P")):
            return True
        if state is None and type(each).__name__ == "OperationalError" and type(each).__module__.startswith("psycopg"):
            return _psycopg_unreachable(str(each))
        each = each.__cause__ or each.__context__
    return False


def _psycopg_unreachable(message: str) -> bool:
    """psycopg's failure to connect carries no SQLSTATE, only libpq's text: a server that
    answered says ``FATAL:`` and why (a missing database, a wrong password), unless it is
    starting up, shutting down or recovering ("the database system is ...")."""
    return "FATAL:" not in message or "the database system is" in message
