"""Purges of the in-process cache, asked from outside the gateway (``turnout cache purge``).

With ``cache.backend: memory`` the answers live inside each gateway process (each worker, each
replica), out of the CLI's reach. So the CLI writes the purge to a small log of shared state,
and every gateway follows that log: it reads ``data_version`` every ``POLL_S`` (from shared
memory for SQLite, from ``NOTIFY`` for PostgreSQL: no disk, no query) and, when it changed,
applies the purges written since it last looked, logging how many answers each dropped.

"Since it last looked" is not "after the last id it applied": PostgreSQL hands out an identity
when a row is inserted, not when it commits, so of two purges asked at once the one with the
smaller id may commit second and be invisible to a follower that has already read the other.
So each look also reads back the purges asked in the last ``LOOKBACK_S`` and applies those it
has not applied yet (it keeps their ids until they are that old); a purge applied twice would
only drop nothing the second time, but it is applied once.

    cache_purges   id, tenant (NULL: every tenant), task (NULL: every task), at, by

One SQLite file beside the release store (``cache-purges.db`` in the directory of
``releases.store_path``), or the fleet's PostgreSQL (``state.kind: postgres``). A gateway
starts from the newest purge in the log: its cache starts empty, so older ones have nothing
left to drop. The log holds names and times only, never a prompt or an answer.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turnout._support.places import Conn, PgPlace, Place, beside
from turnout._support.printable import printable
from turnout._support.stateworker import Schema, migrate_at, worker
from turnout.config import Config
from turnout.errors import TurnoutError

log = logging.getLogger(__name__)

FILE_NAME = "cache-purges.db"
POLL_S = 0.5
# A purge committed after a later-numbered one is still read this long after it was asked
# (its ``at``, the asking CLI's clock: generous, for clocks a little apart across a fleet).
LOOKBACK_S = 300.0

_TABLE = """CREATE TABLE cache_purges (
    id     {id},
    tenant TEXT,
    task   TEXT,
    at     {real} NOT NULL,
    by     TEXT NOT NULL
)"""
MIGRATIONS: tuple[tuple[str, ...], ...] = ((_TABLE.format(id="INTEGER PRIMARY KEY AUTOINCREMENT", real="REAL"),),)
PG_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (_TABLE.format(id="bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY", real="double precision"),),
)


class PurgeLogError(TurnoutError):
    """The purge log cannot be used (closed, a newer schema, the database failed)."""

    status = 500
    type = "server_error"
    code = "cache_purge_log_error"


@dataclass(frozen=True, slots=True)
class Purge:
    id: int
    tenant: str | None  # None: every tenant's answers (and those shared by every tenant)
    task: str | None  # None: every task's
    at: float
    by: str


def describe(tenant: str | None, task: str | None) -> str:
    """What a purge drops, in words: "the cached answers of tenant 'acme'"."""
    scope = named(tenant, task)
    return f"the cached answers of {scope}" if scope else "every cached answer"


def named(tenant: str | None, task: str | None) -> str:
    """Who and what a purge names: tenant 'acme' and task 'faq', or the part given; empty for neither."""
    return " and ".join(f"{kind} {name!r}" for kind, name in (("tenant", tenant), ("task", task)) if name)


def purge_log_path(store_path: str) -> str:
    """Where the gateway and the CLI find the log: beside the release store (in memory beside
    one in memory)."""
    return beside(store_path, FILE_NAME)


def purge_log_place(config: Config) -> Place:
    """Where the gateway and the CLI open the log: beside the release store, or the fleet's
    PostgreSQL."""
    return config.state_at(purge_log_path(config.releases.store_path))


class PurgeLog:
    def __init__(self, place: Place | Path) -> None:
        """``place``: the SQLite file, or the fleet's PostgreSQL (``Config.state_at``)."""
        self.place = place if isinstance(place, PgPlace) else str(place)
        self._db = worker(
            self.place, what="cache purge log", label="cache-purges", error=PurgeLogError, prepare=self._migrate
        )
        self.path = self._db.path

    async def open(self) -> None:
        await self._db.open()

    async def aclose(self) -> None:
        await self._db.aclose()

    async def __aenter__(self) -> PurgeLog:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def data_version(self) -> int:
        """Changes whenever anyone commits to the log; a few µs, no disk."""
        return self._db.data_version()

    async def request(self, tenant: str | None, task: str | None, by: str) -> Purge:
        """Ask every gateway following the log to purge; the purge as written."""
        if not by.strip():
            raise PurgeLogError("a purge needs who asked for it ('by')")
        at = time.time()
        sql = "INSERT INTO cache_purges (tenant, task, at, by) VALUES (?, ?, ?, ?) RETURNING id"
        found = await self._db.transaction(lambda c: c.execute(sql, (tenant, task, at, by)).fetchone())
        return Purge(int(found[0]), tenant, task, at, by)

    async def after(self, last: int, since: float = math.inf) -> list[Purge]:
        """The purges written after ``last``, and those asked at ``since`` or later whatever
        their id, oldest first."""
        sql = "SELECT id, tenant, task, at, by FROM cache_purges WHERE id > ? OR at >= ? ORDER BY id"
        rows = await self._db.run(lambda c: c.execute(sql, (last, since)).fetchall())
        return [_decode(row) for row in rows]

    async def last(self) -> int:
        """The newest purge's id; 0 when there is none."""
        row = await self._db.run(lambda c: c.execute("SELECT MAX(id) FROM cache_purges").fetchone())
        return 0 if row is None or row[0] is None else int(row[0])

    def _migrate(self, conn: Conn) -> None:
        migrate_at(conn, self.place, self.path, SCHEMA)


def _decode(row: Sequence[Any]) -> Purge:
    id_, tenant, task, at, by = row
    return Purge(int(id_), tenant, task, float(at), str(by))


SCHEMA = Schema(MIGRATIONS, PG_MIGRATIONS, "cache purge log", "cache-purges", PurgeLogError, "cache_purges_migrations")

Drop = Callable[[str | None, str | None], Awaitable[int]]  # (tenant, task) -> answers dropped


class Follower:
    """A gateway's side: ``start`` notes where the log ends; each ``__call__`` (a ``Periodic``
    tick) applies what was written since, when ``data_version`` says anything was, and what
    committed late (the module docstring)."""

    def __init__(self, purges: PurgeLog, drop: Drop, clock: Callable[[], float] = time.time) -> None:
        self._log = purges
        self._drop = drop
        self._clock = clock
        self._version: int | None = None
        self._last = 0
        self._recent: dict[int, float] = {}  # id -> at: applied (or older than this gateway) within LOOKBACK_S
        self.applied = 0  # purges applied
        self.dropped = 0  # answers they dropped

    async def start(self) -> None:
        self._version = self._log.data_version()
        self._last = await self._log.last()
        # The cache starts empty: what was asked before now has nothing to drop here.
        self._recent = {p.id: p.at for p in await self._log.after(self._last, self._clock() - LOOKBACK_S)}

    async def __call__(self) -> None:
        version = self._log.data_version()
        if version == self._version:
            return
        since = self._clock() - LOOKBACK_S
        self._recent = {id_: at for id_, at in self._recent.items() if at >= since}
        # The version before the rows: a purge written in between is read now or on the next tick.
        for purge in await self._log.after(self._last, since):
            if purge.id in self._recent:
                continue
            dropped = await self._drop(purge.tenant, purge.task)
            self._last = max(self._last, purge.id)
            self._recent[purge.id] = purge.at
            self.applied += 1
            self.dropped += dropped
            what = describe(purge.tenant, purge.task)
            # "by" is free text from the CLI: printable, so it cannot forge log lines
            log.info("cache: purged %s (%d dropped here), asked by %s", what, dropped, printable(purge.by))
        self._version = version
