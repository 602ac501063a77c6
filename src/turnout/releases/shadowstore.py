"""Shadow pairs: for each request mirrored to a task's shadow release (``turnout.serving.shadow``),
how the shadow answer compared with the one served: agreement, each side's verdict under the
task's scorers, latency, cost and tokens. Never text: captured shadow answers, where the capture
policy keeps text, go to the capture store like any other.

One SQLite file beside the release store (``shadow.db`` in the directory of
``releases.store_path``) or, for a fleet, the fleet's PostgreSQL (``state.kind: postgres``,
table ``shadow_pairs``), written in batches by the gateway's shadow writer and read by ``turnout
release show``, ``turnout release canary`` (the shadow gates) and ``turnout report shadow``. A
request id is written once: a replayed batch changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

from turnout._support.places import Conn, PgPlace, Place, beside
from turnout._support.stateworker import Schema, migrate_at, worker
from turnout.errors import TurnoutError

FILE_NAME = "shadow.db"
MAX_READ = 200_000  # the newest pairs a summary reads

_TABLE = """CREATE TABLE shadow_pairs (
    request_id        TEXT PRIMARY KEY,
    at                {real} NOT NULL,
    tenant            TEXT NOT NULL,
    task              TEXT NOT NULL,
    served_release    TEXT,
    shadow_release    TEXT NOT NULL,
    shadow_target     TEXT,
    status            INTEGER NOT NULL,
    error_class       TEXT,
    agree             INTEGER,
    served_pass       INTEGER,
    shadow_pass       INTEGER,
    served_ms         {real} NOT NULL,
    shadow_ms         {real} NOT NULL,
    served_cost_usd   {real},
    shadow_cost_usd   {real},
    prompt_tokens     INTEGER,
    completion_tokens INTEGER
)"""
_INDEX = "CREATE INDEX shadow_pairs_task ON shadow_pairs (task, shadow_release, at)"
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (_TABLE.format(real="REAL"), _INDEX),
    ("ALTER TABLE shadow_pairs ADD COLUMN judge_cost_usd REAL",),
)
PG_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (_TABLE.format(real="double precision"), _INDEX),
    ("ALTER TABLE shadow_pairs ADD COLUMN judge_cost_usd double precision",),
)

_COLUMNS = (
    "request_id, at, tenant, task, served_release, shadow_release, shadow_target, status, error_class, agree,"
    " served_pass, shadow_pass, served_ms, shadow_ms, served_cost_usd, shadow_cost_usd, prompt_tokens,"
    " completion_tokens, judge_cost_usd"
)
_INSERT = (
    f"INSERT INTO shadow_pairs ({_COLUMNS}) VALUES ({', '.join('?' * 19)})"  # noqa: S608 - constants only
    " ON CONFLICT (request_id) DO NOTHING"
)


class ShadowStoreError(TurnoutError):
    """The shadow store cannot be used (closed, a newer schema, the database failed)."""

    status = 500
    type = "server_error"
    code = "shadow_store_error"


@dataclass(frozen=True, slots=True)
class Pair:
    """One mirrored request. ``status``: the shadow call's (200, or its error's); ``agree`` is
    None when there was no shadow answer to compare (or the judge gave no verdict); a
    ``*_pass`` is None where the task has no scorer and the release no output schema."""

    request_id: str
    at: float
    tenant: str
    task: str
    served_release: str | None
    shadow_release: str
    shadow_target: str | None
    status: int
    error_class: str | None
    agree: bool | None
    served_pass: bool | None
    shadow_pass: bool | None
    served_ms: float
    shadow_ms: float
    served_cost_usd: float | None
    shadow_cost_usd: float | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    judge_cost_usd: float | None = None  # ``compare: judge``: what asking the judge cost


def shadow_path(store_path: str) -> str:
    """Where the gateway and the CLI find the shadow store: beside the release store (in memory
    beside one in memory)."""
    return beside(store_path, FILE_NAME)


class ShadowStore:
    def __init__(self, place: Place | Path) -> None:
        """``place``: the SQLite file, or the fleet's PostgreSQL (``Config.state_at``)."""
        self.place = place if isinstance(place, PgPlace) else str(place)
        self._db = worker(
            self.place, what="shadow store", label="shadow", error=ShadowStoreError, prepare=self._migrate, reader=False
        )
        self.path = self._db.path

    async def open(self) -> None:
        await self._db.open()

    async def aclose(self) -> None:
        await self._db.aclose()

    async def __aenter__(self) -> ShadowStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def write_pairs(self, pairs: Sequence[Pair]) -> None:
        """One transaction; a request id already stored is left as it is."""
        if not pairs:
            return
        rows = [_encode(p) for p in pairs]
        await self._db.transaction(lambda conn: conn.executemany(_INSERT, rows))

    async def pairs(
        self,
        task: str,
        release: str | None = None,
        *,
        since: float | None = None,
        limit: int = MAX_READ,
        baseline: str | None = None,
    ) -> list[Pair]:
        """The newest pairs of ``task`` (of one shadow release; of those whose served answer
        came from ``baseline``, the active release a sample is judged against), newest first."""
        sql = f"SELECT {_COLUMNS} FROM shadow_pairs WHERE task = ?"  # noqa: S608
        args: list[Any] = [task]
        if release is not None:
            sql, args = sql + " AND shadow_release = ?", [*args, release]
        if baseline is not None:
            sql, args = sql + " AND served_release = ?", [*args, baseline]
        if since is not None:
            sql, args = sql + " AND at >= ?", [*args, since]
        sql += f" ORDER BY at DESC LIMIT {int(limit)}"
        rows = await self._db.run(lambda conn: conn.execute(sql, args).fetchall())
        return [_decode(row) for row in rows]

    async def spent(self, since: float) -> dict[str, float]:
        """Shadow spend by task since ``since`` (a replica's daily cap starts from it)."""
        sql = "SELECT task, SUM(shadow_cost_usd) FROM shadow_pairs WHERE at >= ? GROUP BY task"
        rows = await self._db.run(lambda conn: conn.execute(sql, (since,)).fetchall())
        return {task: float(total or 0.0) for task, total in rows}

    async def tenant_tasks(self) -> tuple[tuple[str, str], ...]:
        """Every (tenant, task) with pairs (the retention purge walks them)."""
        found = await self._db.run(lambda c: c.execute("SELECT DISTINCT tenant, task FROM shadow_pairs").fetchall())
        return tuple((str(tenant), str(task)) for tenant, task in found)

    async def delete_before(self, tenant: str, task: str, before: float, limit: int) -> int:
        """Delete at most ``limit`` of the pair's rows written before ``before`` (a retention
        batch: pairs are request metadata and follow ``ledger_days``): how many."""
        sql = (
            "DELETE FROM shadow_pairs WHERE request_id IN (SELECT request_id FROM shadow_pairs "
            "WHERE tenant = ? AND task = ? AND at < ? LIMIT ?)"
        )
        deleted: int = await self._db.transaction(lambda c: c.execute(sql, (tenant, task, before, limit)).rowcount)
        return deleted

    def _migrate(self, conn: Conn) -> None:
        migrate_at(conn, self.place, self.path, SCHEMA)


def _bit(value: bool | None) -> int | None:
    return None if value is None else int(value)


def _encode(p: Pair) -> tuple[Any, ...]:
    row = list(astuple(p))
    for i in (9, 10, 11):  # agree, served_pass, shadow_pass
        row[i] = _bit(row[i])
    return tuple(row)


def _decode(row: Sequence[Any]) -> Pair:
    values = list(row)
    for i in (9, 10, 11):
        values[i] = None if values[i] is None else bool(values[i])
    return Pair(*values)


SCHEMA = Schema(MIGRATIONS, PG_MIGRATIONS, "shadow store", "shadow", ShadowStoreError, "shadow_migrations")
