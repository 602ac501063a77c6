"""``PostgresWorker``: ``SQLiteWorker``'s counterpart for the state a fleet shares
(``state.kind: postgres``), so the stores written against SQLite (releases and their
transitions, canary claims, the review queue, capture grants, audit and text) run unchanged on
one PostgreSQL database that every replica and the CLI reach.

As with SQLite, one thread owns one connection (psycopg, autocommit) and runs every statement,
so the event loop never waits on the network. A store's bodies get a ``PgConnection`` that
speaks the little of sqlite3's dialect they use: ``?`` placeholders, ``INSERT OR IGNORE``
(``ON CONFLICT DO NOTHING``) and ``IS ?`` (``IS NOT DISTINCT FROM``). What else differs (types,
triggers, ``INSERT OR REPLACE``) is in each store's own PostgreSQL statements.

Writers serialise as SQLite's do: ``transaction(begin="BEGIN IMMEDIATE")`` first takes a
transaction-scoped advisory lock named after the store, so a store's check-then-change bodies
stay atomic across replicas on different machines.

Change notice: each committed ``transaction`` sends a ``NOTIFY`` on the store's channel (sent at
commit, never for a rolled-back one). A listener thread with a connection of its own counts the
notices; ``data_version()`` returns the count, a plain attribute read on the loop (the registry
polls it every 0.5 s, so a replica sees another's rollback within about that). A listener that
loses its connection reconnects (every 0.5 s, saying so once, then once a minute, and once
more when notices flow again) and bumps the count: a notice may have been missed, so readers
reload. A writer connection that broke is replaced on the next call.

A connection can also go silent without breaking: a NAT, load balancer or proxy between the
replica and the database forgets it, or hangs, and nothing ever arrives on it again. A listener
waiting for notices would then wait for good while other replicas' changes (a rollback) never
reach this one. So a listener that has heard nothing for ``HEARTBEAT_S`` asks the server a
``SELECT 1``, and a call on either connection that gets no answer within its deadline
(``HEARTBEAT_TIMEOUT_S``, ``CALL_TIMEOUT_S``) has its socket shut: it fails at once as a lost
connection, and the listener reconnects (readers reload), the writer on its next call. A
listener whose check went unanswered shuts the writer's connection too (it takes the same way),
so the reload does not wait out the writer's deadline: a replica cut off this way serves other
replicas' changes within about ``HEARTBEAT_S + HEARTBEAT_TIMEOUT_S`` of the network coming back.

``migrate`` is ``turnout._support.sqlite.migrate`` for PostgreSQL: the store's own history
table, every store's steps serialised on one advisory lock per schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any, TypeVar

import psycopg

from turnout._support.places import PgPlace, lock_key, schema_lock, unreachable
from turnout._support.sqlite import ErrorFactory, Migrations
from turnout._support.throttle import Throttle
from turnout.errors import StoreUnavailable, TurnoutError

log = logging.getLogger(__name__)

T = TypeVar("T")

_OR_IGNORE = re.compile(r"^\s*INSERT\s+OR\s+IGNORE\s+INTO\b", re.IGNORECASE)
_RETURNING = re.compile(r"\s+RETURNING\s+", re.IGNORECASE)
_IS_PARAM = re.compile(r"\bIS\s+\?", re.IGNORECASE)
LISTEN_POLL_S = 0.5  # how often the listener looks up from waiting, to notice a stop
HEARTBEAT_S = 5.0  # a listener that heard nothing this long checks that its server still answers
HEARTBEAT_TIMEOUT_S = 5.0  # the answer it waits for before reconnecting
CALL_TIMEOUT_S = 30.0  # a store call (statements and lock waits) unanswered this long: connection shut
STILL_DOWN_EVERY_S = 60.0  # a listener that cannot reconnect says so again at most this often


@lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """sqlite3's dialect, as the stores write it, in psycopg's."""
    sql = _IS_PARAM.sub("IS NOT DISTINCT FROM ?", sql)
    if _OR_IGNORE.match(sql):
        head, returning, tail = _split_returning(_OR_IGNORE.sub("INSERT INTO", sql, count=1))
        sql = f"{head} ON CONFLICT DO NOTHING{returning}{tail}"
    return sql.replace("%", "%%").replace("?", "%s")


def _split_returning(sql: str) -> tuple[str, str, str]:
    found = _RETURNING.search(sql)
    if found is None:
        return sql, "", ""
    return sql[: found.start()], " RETURNING ", sql[found.end() :]


class PgConnection:
    """The slice of ``sqlite3.Connection`` the stores use, over one psycopg connection."""

    dialect = "postgres"

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self.raw.execute(translate(sql), _storable(params))

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> psycopg.Cursor[Any]:
        cursor = self.raw.cursor()
        cursor.executemany(translate(sql), [_storable(p) for p in seq])
        return cursor


def _storable(params: Sequence[Any]) -> tuple[Any, ...]:
    """PostgreSQL's text cannot hold U+0000, which SQLite's can: a caller's text that carries one
    (a captured prompt, a review item) is stored with U+FFFD in its place rather than failing
    the statement, and with it every other row of its batch."""
    return tuple(v.replace("\x00", "\ufffd") if type(v) is str and "\x00" in v else v for v in params)


def shut_socket(raw: psycopg.Connection[Any]) -> None:
    """Shut ``raw``'s socket (both ways), from any thread: a call waiting on it wakes and fails as
    a lost connection, and psycopg marks the connection broken. A closed one has nothing to wake."""
    with contextlib.suppress(Exception), socket.socket(fileno=os.dup(raw.pgconn.socket)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def deadline(raw: psycopg.Connection[Any], timeout_s: float) -> Iterator[None]:
    """Shut ``raw``'s socket if the block is still running after ``timeout_s``."""
    timer = threading.Timer(timeout_s, shut_socket, (raw,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def connect(place: PgPlace, *, name: str = "turnout", timeout_s: float = 10.0) -> PgConnection:
    """A new autocommit connection whose search path is ``place``'s schema (created if missing).
    ``name``: its ``application_name``, which ``pg_stat_activity`` shows."""
    raw: psycopg.Connection[Any] = psycopg.connect(
        place.dsn, autocommit=True, connect_timeout=max(1, int(timeout_s)), application_name=name
    )
    try:
        if place.schema is not None:
            with raw.transaction():  # two processes creating one schema: one waits for the other
                raw.execute("SELECT pg_advisory_xact_lock(%s)", (schema_lock(place.schema),))
                raw.execute(f'CREATE SCHEMA IF NOT EXISTS "{place.schema}"')
            raw.execute(f'SET search_path TO "{place.schema}"')
    except BaseException:
        raw.close()
        raise
    return PgConnection(raw)


def migrate(
    conn: PgConnection,
    place: PgPlace,
    migrations: Migrations,
    *,
    what: str,
    error: ErrorFactory,
    table: str,
    label: str,
) -> None:
    """Apply the steps of ``migrations`` that ``table`` does not record yet, under one advisory
    lock per schema (so two stores' steps never race on a shared function or a new table)."""
    raw = conn.raw
    with raw.transaction():
        raw.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(place.schema or "", "migrations"),))
        raw.execute(f"CREATE TABLE IF NOT EXISTS {table} (version integer PRIMARY KEY, applied_at double precision)")
        row = raw.execute(f"SELECT COALESCE(MAX(version), 0) FROM {table}").fetchone()  # noqa: S608
        current = int(row[0]) if row else 0
        if current > len(migrations):
            raise error(
                f"the {what} at {place.shown} has schema version {current}, newer than this turnout "
                f"knows ({len(migrations)}); upgrade turnout"
            )
        for version, statements in enumerate(migrations[current:], start=current + 1):
            for statement in statements:
                raw.execute(statement)  # constants of the store's own
            raw.execute(f"INSERT INTO {table} VALUES (%s, extract(epoch from now()))", (version,))  # noqa: S608
            log.info("%s: applied schema migration %d to %s", label, version, place.shown)


class PostgresWorker:
    """``SQLiteWorker``'s interface on PostgreSQL. ``label`` names the store's lock, channel,
    thread and log lines; ``prepare`` runs once on the thread (the store's migrations);
    ``reader``: keep a listener so ``data_version`` can answer."""

    dialect = "postgres"

    def __init__(
        self,
        place: PgPlace,
        *,
        what: str,
        label: str,
        error: ErrorFactory,
        prepare: Callable[[PgConnection], None],
        reader: bool = True,
        failed_as: str | None = None,
    ) -> None:
        self.place = place
        self.path = place.shown
        self.what = what
        self.label = label
        self.failed_as = what if failed_as is None else failed_as
        self.error = error
        self._prepare = prepare
        self._want_reader = reader
        self._lock = lock_key(place.schema or "", label, "write")
        self._channel = f"turnout_{place.schema or 'public'}_{label}"[:63]
        self._executor: ThreadPoolExecutor | None = None
        self._conn: PgConnection | None = None
        self._version = 0
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._listener: threading.Thread | None = None

    @property
    def executor(self) -> ThreadPoolExecutor | None:
        return self._executor

    @property
    def readable(self) -> bool:
        return self._listener is not None

    async def open(self) -> None:
        if self._executor is not None:
            raise self.error(f"the {self.what} {self.path} is already open")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"turnout-{self.label}")
        try:
            await self._on_thread(self._connect_and_prepare)
            if self._want_reader:
                self._start_listener()
                await asyncio.to_thread(self._listening.wait, 10.0)
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        executor, self._executor = self._executor, None
        listener, self._listener = self._listener, None
        self._stop.set()
        if listener is not None:
            await asyncio.to_thread(listener.join, 5.0)
        if executor is None:
            return
        await asyncio.get_running_loop().run_in_executor(executor, self._disconnect)
        executor.shutdown(wait=True)

    async def run(self, fn: Callable[[PgConnection], T]) -> T:
        """``fn(conn)`` on the thread (autocommit)."""
        return await self._on_thread(lambda: self._bounded(fn))

    async def transaction(self, fn: Callable[[PgConnection], T], begin: str = "BEGIN") -> T:
        """``fn(conn)`` in one transaction; ``BEGIN IMMEDIATE`` (SQLite's writer lock) takes the
        store's advisory lock first. Committed transactions notify the store's listeners."""
        return await self._on_thread(
            lambda: self._bounded(lambda conn: self._in_transaction(conn, fn, begin != "BEGIN"))
        )

    def data_version(self) -> int:
        if self._listener is None:
            raise self._not_open()
        return self._version

    # --- the thread ------------------------------------------------------------------------

    def _bounded(self, fn: Callable[[PgConnection], T]) -> T:
        """``fn`` on the writer connection, which is shut if the server has not answered it
        within ``CALL_TIMEOUT_S`` (a connection gone silent fails the call, not every call after)."""
        conn = self._connection()
        with deadline(conn.raw, CALL_TIMEOUT_S):
            return fn(conn)

    def _in_transaction(self, conn: PgConnection, fn: Callable[[PgConnection], T], writer: bool) -> T:
        with conn.raw.transaction():
            if writer:
                conn.raw.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock,))
            result = fn(conn)
            conn.raw.execute("SELECT pg_notify(%s, '')", (self._channel,))
        return result

    async def _on_thread(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise self._not_open()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except psycopg.Error as exc:
            raise self._failed(exc) from exc

    def _connect_and_prepare(self) -> None:
        self._prepare(self._connection())

    def _connection(self) -> PgConnection:
        conn = self._conn
        if conn is None or conn.raw.closed or conn.raw.broken:
            if conn is not None:
                log.warning("%s: the connection to %s was lost; reconnecting", self.label, self.path)
                conn.raw.close()
            self._conn = conn = connect(self.place, name=f"turnout-{self.label}")
        return conn

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.raw.close()

    # --- the listener ----------------------------------------------------------------------

    def _start_listener(self) -> None:
        self._stop.clear()
        self._listening.clear()
        self._listener = threading.Thread(target=self._listen, name=f"turnout-{self.label}-listen", daemon=True)
        self._listener.start()

    def _listen(self) -> None:
        down_since: float | None = None  # while the database does not answer: one line, not one a try
        still_down = Throttle(1 / STILL_DOWN_EVERY_S, 1)
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self.place.dsn, autocommit=True, connect_timeout=5, application_name=f"turnout-{self.label}-listen"
                ) as raw:
                    raw.execute(f'LISTEN "{self._channel}"')
                    self._version += 1  # (re)listening: anything may have changed meanwhile
                    self._listening.set()
                    if down_since is not None:
                        log.warning(
                            "%s: change notices from %s flow again, after %.0f s",
                            self.label,
                            self.path,
                            time.monotonic() - down_since,
                        )
                        down_since = None
                    for _ in self._notices(raw):
                        self._version += 1
            except psycopg.Error as exc:
                if down_since is None:
                    down_since = time.monotonic()
                    still_down.allow()  # the next line about it after STILL_DOWN_EVERY_S
                    log.warning("%s: change notices from %s stopped (%s); retrying", self.label, self.path, exc)
                elif still_down.allow():
                    log.warning(
                        "%s: change notices from %s still stopped after %.0f s (%s); retrying",
                        self.label,
                        self.path,
                        time.monotonic() - down_since,
                        exc,
                    )
                self._stop.wait(LISTEN_POLL_S)

    def _notices(self, raw: psycopg.Connection[Any]) -> Iterator[object]:
        """The notices as they come; after ``HEARTBEAT_S`` without any, a ``SELECT 1`` that must
        be answered within ``HEARTBEAT_TIMEOUT_S`` (else the socket is shut: psycopg.Error)."""
        heard = time.monotonic()
        while not self._stop.is_set():
            for notice in raw.notifies(timeout=LISTEN_POLL_S):
                heard = time.monotonic()
                yield notice
            if time.monotonic() - heard >= HEARTBEAT_S:
                try:
                    with deadline(raw, HEARTBEAT_TIMEOUT_S):
                        raw.execute("SELECT 1")
                except psycopg.Error:
                    # The writer's connection takes the same way to the server: most likely gone
                    # silent too, and a reload waiting on it would wait out CALL_TIMEOUT_S.
                    conn = self._conn
                    if conn is not None:
                        shut_socket(conn.raw)
                    raise
                heard = time.monotonic()

    def _not_open(self) -> Exception:
        return self.error(f"the {self.what} {self.path} is not open")

    def _failed(self, exc: psycopg.Error) -> Exception:
        # psycopg's messages name constraints and conditions, never bound values.
        primary = exc.diag.message_primary if isinstance(exc, psycopg.DatabaseError) else None
        message = f"{self.failed_as} {self.path}: {primary or str(exc).strip()}"
        error = self.error(message)
        if unreachable(exc) and isinstance(error, TurnoutError) and not isinstance(error, StoreUnavailable):
            return _unavailable(type(error))(message)
        return error


_UNAVAILABLE: dict[type[TurnoutError], type[TurnoutError]] = {}  # one per store's error class


def _unavailable(error: type[TurnoutError]) -> type[TurnoutError]:
    """``error`` as a store raises it when PostgreSQL does not answer: still caught as ``error``,
    and a ``StoreUnavailable`` too (503 with Retry-After, not the store's own refusal: a
    release store's 409 said a lifecycle step conflicted, where the database had gone)."""
    found = _UNAVAILABLE.get(error)
    if found is None:
        answer = {k: getattr(StoreUnavailable, k) for k in ("status", "type", "code", "retry_after_s")}
        found = _UNAVAILABLE[error] = type(error.__name__, (error, StoreUnavailable), answer)
    return found
