"""The PostgreSQL ledger store: asyncpg and a small pool, for gateways that share one ledger.

Same table as SQLite, with PostgreSQL's types: ``boolean`` for flags, ``jsonb`` for attempts
and labels, and ``double precision`` unix seconds for times (parity with SQLite and with
``LedgerRow``; floats round-trip exactly). Every value is a bound parameter, sent in binary.

``write_batch`` is one transaction of ``executemany`` over a prepared
``INSERT … ON CONFLICT (request_id) DO NOTHING`` (the first write of an id wins, so a replayed
batch never undoes feedback recorded since). Measured on loopback PostgreSQL 15 (rows/s,
inserts; 20 batches, median): at the writer's default batch of 256 it is level with the other
two ways to upsert, ``copy_records_to_table`` into a temporary staging table then
``INSERT … SELECT … ON CONFLICT`` (≈46-50k vs ≈44-50k) and one ``INSERT … SELECT FROM
unnest($1::text[], …)`` (≈47-52k); at 64 rows COPY is slowest (≈24-29k vs ≈33-41k: the
temporary table costs more than it saves) and only at 1000 rows does COPY lead (≈77k vs ≈62k).
Either way far above what a gateway produces, so the simplest statement wins. Rows are written
in ``request_id`` order, so two batches that share ids lock them in the same order and cannot
deadlock each other.

The schema is versioned like SQLite's: ``schema_migrations`` records each applied step of
``MIGRATIONS`` (append-only history). Two processes opening one new database serialise on an
advisory lock, so a step runs once.

``schema`` puts the tables in a PostgreSQL schema of their own (created if missing), which
tests use to stay apart from each other in one database.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson

from turnout._support.places import schema_lock
from turnout.config import StoreConfig
from turnout.errors import ConfigError
from turnout.ledger.record import AttemptRecord, LedgerRow
from turnout.ledger.store import (
    EVAL_TENANT,
    RELEASE_FAULTS,
    RELEASE_REJECTIONS,
    AgedRow,
    Order,
    ReleaseStats,
    StoreError,
    StoreNotOpen,
    check_limit,
)

log = logging.getLogger(__name__)

# {p} is the schema qualifier: "" or '"name".'; the name is checked against _IDENTIFIER.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: one column per LedgerRow field of the time, in field order. request_id compares
    # bytewise ("C"), whatever the database's collation, so ``recent`` breaks ties in the same
    # order as the other backends.
    (
        """CREATE TABLE {p}requests (
            request_id        text COLLATE "C" PRIMARY KEY,
            started_at        double precision NOT NULL,
            tenant            text NOT NULL,
            task              text NOT NULL,
            data_class        text NOT NULL,
            stream            boolean NOT NULL,
            "user"            text,
            "release"         text,
            prompt_version    text,
            target            text,
            replica           text,
            model_version     text,
            status            integer NOT NULL,
            error_class       text,
            attempts          jsonb NOT NULL,
            fallback          boolean NOT NULL,
            prompt_tokens     integer,
            completion_tokens integer,
            cost_usd          double precision,
            latency_ms        double precision NOT NULL,
            queue_ms          double precision,
            ttft_ms           double precision,
            generation_ms     double precision,
            fallback_ms       double precision,
            outcome           text
        )""",
        "CREATE INDEX requests_started_at ON {p}requests (started_at)",
        "CREATE INDEX requests_tenant_task ON {p}requests (tenant, task)",
    ),
    # 2: cache and capture, and the outcome fields feedback fills in later (as in SQLite).
    (
        """ALTER TABLE {p}requests
            ADD COLUMN cache_hit     boolean,
            ADD COLUMN capture_mode  text,
            ADD COLUMN human_review  boolean,
            ADD COLUMN escalated     boolean,
            ADD COLUMN outcome_value double precision,
            ADD COLUMN outcome_at    double precision,
            ADD COLUMN episode_id    text""",
    ),
    # 3: release_stats reads one release of one task over a recent window (as in SQLite).
    ('CREATE INDEX requests_task_release_started_at ON {p}requests (task, "release", started_at)',),
    # 4: the labels feedback gives, a jsonb array of strings (as in SQLite); NULL: never labelled.
    ("ALTER TABLE {p}requests ADD COLUMN labels jsonb",),
    # 5: whether the usage (and so the cost) was counted by turnout: the upstream reported none.
    ("ALTER TABLE {p}requests ADD COLUMN usage_estimated boolean",),
    # 6: as in SQLite: (tenant, task) is read by no query; feedback by episode gets an index.
    (
        "DROP INDEX {p}requests_tenant_task",
        "CREATE INDEX requests_tenant_episode ON {p}requests (tenant, episode_id) WHERE episode_id IS NOT NULL",
    ),
    # 7: injection screening's verdict on a flagged or blocked request (turnout.safety); NULL: none.
    ("ALTER TABLE {p}requests ADD COLUMN safety text",),
    # 8: blocked tool calls (turnout.safety.tools) and the declared data class, which
    # classification may have raised (turnout.safety.classify); NULL in older rows.
    (
        "ALTER TABLE {p}requests ADD COLUMN tool_violations text",
        "ALTER TABLE {p}requests ADD COLUMN declared_class text",
    ),
    # 9: output checks (as in SQLite): repairs, where a failed answer escalated, the reasons.
    (
        """ALTER TABLE {p}requests
            ADD COLUMN repairs      integer,
            ADD COLUMN escalated_to text,
            ADD COLUMN output_check text""",
    ),
    # 10: the API (door) the request came through, as in SQLite.
    ("ALTER TABLE {p}requests ADD COLUMN endpoint text",),
    # 11: what a cache hit saved, as in SQLite.
    ("ALTER TABLE {p}requests ADD COLUMN cost_saved_usd double precision",),
    # 12: why the answer stopped and the documents attached, as in SQLite.
    (
        """ALTER TABLE {p}requests
            ADD COLUMN finish_reason text,
            ADD COLUMN documents     integer""",
    ),
    # 13: the caller's latency and cost limits and the targets they skipped, as in SQLite.
    ("ALTER TABLE {p}requests ADD COLUMN constraints text",),
    # 14: live scoring's verdict on a sampled answer, as in SQLite.
    ("ALTER TABLE {p}requests ADD COLUMN live_pass boolean",),
    # 15: turnout eval's rows, as in SQLite.
    ("ALTER TABLE {p}requests ADD COLUMN evaluation boolean",),
)

COLUMNS = tuple(f.name for f in dataclasses.fields(LedgerRow))
_ATTEMPTS = COLUMNS.index("attempts")
_LABELS = COLUMNS.index("labels")
_COLUMN_LIST = ", ".join(f'"{name}"' for name in COLUMNS)
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PostgresStore:
    def __init__(self, dsn: str, *, schema: str | None = None, pool_size: int = 4, timeout_s: float = 30.0) -> None:
        if schema is not None and not _IDENTIFIER.fullmatch(schema):
            raise ValueError(f"schema must be a lower-case SQL identifier, got {schema!r}")
        self.dsn = dsn
        self.schema = schema
        self.pool_size = pool_size
        self.timeout_s = timeout_s
        self._pool: asyncpg.Pool | None = None
        self._sql = _Statements('"' + schema + '".' if schema else "")

    @classmethod
    def from_config(cls, cfg: StoreConfig) -> PostgresStore:
        if not cfg.dsn:
            raise ConfigError(["store.dsn: required when store.kind is postgres, e.g. postgresql://user@host:5432/db"])
        return cls(cfg.dsn, schema=cfg.pg_schema)

    async def open(self) -> None:
        if self._pool is not None:
            raise StoreError(f"the PostgreSQL ledger store {self._where} is already open")
        async with self._errors(opening=True):
            pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                timeout=self.timeout_s,  # connecting
                command_timeout=self.timeout_s,
                server_settings={"application_name": "turnout-ledger"},
            )
            try:
                async with pool.acquire() as conn:
                    await self._migrate(conn)
            except BaseException:
                pool.terminate()
                raise
        self._pool = pool

    async def write_batch(self, rows: Sequence[LedgerRow]) -> None:
        if not rows:
            return
        # Sorted by id: two batches sharing ids take their locks in one order (no deadlock).
        params = [_encode(row) for row in sorted(rows, key=lambda r: r.request_id)]
        async with self._connection() as conn, conn.transaction():
            await conn.executemany(self._sql.upsert, params)

    async def get(self, request_id: str) -> LedgerRow | None:
        async with self._connection() as conn:
            found = await conn.fetchrow(self._sql.get, request_id)
        return None if found is None else _decode(found)

    async def recent(self, limit: int = 100) -> list[LedgerRow]:
        check_limit(limit)
        async with self._connection() as conn:
            found = await conn.fetch(self._sql.recent, limit)
        return [_decode(record) for record in found]

    async def count(self) -> int:
        async with self._connection() as conn:
            return int(await conn.fetchval(self._sql.count))

    async def aged_rows(
        self, since: float, before: float, limit: int, after: tuple[float, Order] | None = None
    ) -> list[AgedRow]:
        check_limit(limit)
        async with self._connection() as conn:
            if after is None:
                found = await conn.fetch(self._sql.aged_first, since, before, limit)
            else:
                lower = max(since, after[0])  # the range starts at the last row's time, as in SQLite
                found = await conn.fetch(self._sql.aged_after, lower, before, limit, after[0], str(after[1]))
        return [AgedRow(*record) for record in found]

    async def delete_rows(self, request_ids: Sequence[str]) -> dict[tuple[str, str], int]:
        if not request_ids:
            return {}
        async with self._connection() as conn:
            gone = await conn.fetch(self._sql.delete_rows, list(request_ids))
        return dict(collections.Counter((str(r[0]), str(r[1])) for r in gone))

    async def set_outcome(
        self,
        request_id: str,
        tenant: str,
        outcome: str | None,
        human_review: bool | None,
        escalated: bool | None,
        value: float | None,
        episode_id: str | None,
        at: float,
        *,
        labels: list[str] | None = None,
    ) -> bool:
        params = (outcome, human_review, escalated, value, episode_id, at, request_id, tenant, _json(labels))
        async with self._connection() as conn:
            status = await conn.execute(self._sql.set_outcome, *params)
        return status != "UPDATE 0"

    async def set_outcome_by_episode(
        self,
        episode_id: str,
        tenant: str,
        outcome: str | None,
        human_review: bool | None,
        escalated: bool | None,
        value: float | None,
        at: float,
        *,
        labels: list[str] | None = None,
    ) -> int:
        params = (outcome, human_review, escalated, value, at, episode_id, tenant, _json(labels))
        async with self._connection() as conn:
            status = await conn.execute(self._sql.set_outcome_by_episode, *params)
        return int(status.rsplit(" ", 1)[-1])

    async def rows_between(
        self,
        since: float,
        until: float,
        *,
        tenant: str | None = None,
        task: str | None = None,
        limit: int = 1_000_000,
        after: tuple[float, str] | None = None,
    ) -> list[LedgerRow]:
        check_limit(limit)
        async with self._connection() as conn:
            if after is None:
                found = await conn.fetch(self._sql.between, since, until, tenant, task, limit)
            else:  # the range starts at the last row's time, as in aged_rows
                lower = max(since, after[0])
                found = await conn.fetch(self._sql.between_after, lower, until, tenant, task, limit, *after)
        # Up to a console overview's 100,000 rows: decoded off the event loop, not stalling it.
        return await asyncio.to_thread(_decode_all, found)

    async def attempt_errors(self, since: float, until: float) -> dict[tuple[str, str], int]:
        async with self._connection() as conn:
            found = await conn.fetch(self._sql.attempt_errors, since, until)
        return {(target, error_class): n for target, error_class, n in found}

    async def release_stats(self, task: str, release: str, since: float, until: float | None = None) -> ReleaseStats:
        end = math.inf if until is None else until
        faults, rejections = sorted(RELEASE_FAULTS), sorted(RELEASE_REJECTIONS)
        async with self._connection() as conn:
            found = await conn.fetchrow(
                self._sql.release_stats, task, release, since, faults, end, EVAL_TENANT, rejections
            )
        assert found is not None  # an aggregate without GROUP BY always answers one row
        return ReleaseStats(*found.values())

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # close() waits for calls in flight to release their connections; a stuck one is cut.
        try:
            async with asyncio.timeout(self.timeout_s):
                await pool.close()
        except TimeoutError:
            log.warning("ledger: PostgreSQL connections still busy after %.0fs; terminating", self.timeout_s)
            pool.terminate()

    @property
    def _where(self) -> str:
        return f"(schema {self.schema})" if self.schema else "(schema from search_path)"

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        if self._pool is None:
            raise StoreNotOpen(f"the PostgreSQL ledger store {self._where} is not open")
        async with self._errors(), self._pool.acquire() as conn:
            yield conn

    @asynccontextmanager
    async def _errors(self, opening: bool = False) -> AsyncIterator[None]:
        try:
            yield
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"PostgreSQL ledger: {_describe(exc, opening)}") from exc
        except TimeoutError as exc:
            raise StoreError(f"PostgreSQL ledger: no answer within {self.timeout_s:g}s") from exc
        except OSError as exc:
            raise StoreError(f"PostgreSQL ledger unreachable: {type(exc).__name__}: {exc}") from exc

    async def _migrate(self, conn: asyncpg.pool.PoolConnectionProxy) -> None:
        sql = self._sql
        async with conn.transaction():
            # Held to the end of the transaction: a second process waits here, then finds the
            # steps applied.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(self.schema))
            if self.schema:
                await conn.execute("SELECT pg_advisory_xact_lock($1)", schema_lock(self.schema))
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            await conn.execute(sql.create_migrations)
            current = int(await conn.fetchval(sql.current_version))
            if current > len(MIGRATIONS):
                raise StoreError(
                    f"the PostgreSQL ledger {self._where} has schema version {current}, newer than "
                    f"this turnout knows ({len(MIGRATIONS)}); upgrade turnout"
                )
            for version, statements in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in statements:
                    await conn.execute(statement.format(p=sql.prefix))
                await conn.execute(sql.record_version, version, time.time())
                log.info("ledger: applied schema migration %d to PostgreSQL %s", version, self._where)


class _Statements:
    """The store's SQL, built once per schema from LedgerRow's field names; every value is a
    bound parameter."""

    def __init__(self, prefix: str) -> None:
        p = self.prefix = prefix
        placeholders = ", ".join(f"${i}" for i in range(1, len(COLUMNS) + 1))
        select = f"SELECT {_COLUMN_LIST} FROM {p}requests"  # noqa: S608
        self.upsert = (
            f"INSERT INTO {p}requests ({_COLUMN_LIST}) VALUES ({placeholders}) "  # noqa: S608
            "ON CONFLICT (request_id) DO NOTHING"
        )
        self.get = f"{select} WHERE request_id = $1"
        self.recent = f"{select} ORDER BY started_at DESC, request_id DESC LIMIT $1"
        self.count = f"SELECT count(*) FROM {p}requests"  # noqa: S608
        # None keeps the stored value: feedback may arrive in pieces. Labels (the last
        # parameter, JSON text) replace the stored array whole.
        self.set_outcome = f"""UPDATE {p}requests SET
            outcome = COALESCE($1, outcome),
            human_review = COALESCE($2, human_review),
            escalated = COALESCE($3, escalated),
            outcome_value = COALESCE($4, outcome_value),
            episode_id = COALESCE($5, episode_id),
            labels = COALESCE($9::jsonb, labels),
            outcome_at = $6
            WHERE request_id = $7 AND tenant = $8"""  # noqa: S608
        self.set_outcome_by_episode = f"""UPDATE {p}requests SET
            outcome = COALESCE($1, outcome),
            human_review = COALESCE($2, human_review),
            escalated = COALESCE($3, escalated),
            outcome_value = COALESCE($4, outcome_value),
            labels = COALESCE($8::jsonb, labels),
            outcome_at = $5
            WHERE episode_id = $6 AND tenant = $7"""  # noqa: S608
        # The retention purge's walk: started_at's index serves the range, oldest first; ties
        # are sorted by request id within each run of equal times only (an incremental sort).
        aged = (
            f"SELECT started_at, request_id, request_id, tenant, task FROM {p}requests "  # noqa: S608
            "WHERE started_at >= $1 AND started_at < $2"
        )
        self.aged_first = f"{aged} ORDER BY started_at, request_id LIMIT $3"
        self.aged_after = f"{aged} AND (started_at, request_id) > ($4, $5) ORDER BY started_at, request_id LIMIT $3"
        self.delete_rows = f"DELETE FROM {p}requests WHERE request_id = ANY($1::text[]) RETURNING tenant, task"  # noqa: S608
        # NULL parameters switch the tenant and task filters off; started_at's index serves the range.
        between = (
            f"{select} WHERE started_at >= $1 AND started_at < $2 "
            "AND ($3::text IS NULL OR tenant = $3) AND ($4::text IS NULL OR task = $4)"
        )
        self.between = f"{between} ORDER BY started_at, request_id LIMIT $5"
        # The next page: past the previous one's last row.
        self.between_after = (
            f"{between} AND (started_at, request_id) > ($6, $7) ORDER BY started_at, request_id LIMIT $5"
        )
        # Each failed attempt of the window's rows: one element of the attempts array each.
        self.attempt_errors = (
            "SELECT a->>'target', a->>'error_class', count(*) "  # noqa: S608
            f"FROM {p}requests, jsonb_array_elements(attempts) AS a "
            "WHERE started_at >= $1 AND started_at < $2 AND a->>'error_class' IS NOT NULL "
            "GROUP BY 1, 2"
        )
        # ReleaseStats' figures in SQL, as turnout.ledger.store.summarize computes them.
        caller = "(status BETWEEN 400 AND 499 AND COALESCE(error_class, '') <> ALL ($7::text[]))"
        served = f"NOT {caller}"
        # One feedback per key, as turnout.ledger.store.feedback_key.
        feedback = (
            "CASE WHEN episode_id IS NULL THEN jsonb_build_array('request', request_id) "
            "ELSE jsonb_build_array('episode', tenant, episode_id, outcome_at, outcome) END"
        )
        self.release_stats = f"""SELECT
            count(*),
            count(*) FILTER (WHERE {caller}),
            count(*) FILTER (WHERE {served} AND (status >= 500 OR error_class IS NOT NULL)),
            count(*) FILTER (WHERE status IN (502, 503, 504)
                             AND COALESCE(error_class, '') <> ALL ($4::text[])),
            percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) FILTER (WHERE {served}),
            COALESCE(sum(cost_usd) FILTER (WHERE {served}), 0),
            count(DISTINCT {feedback}) FILTER (WHERE {served} AND outcome IS NOT NULL),
            count(DISTINCT {feedback}) FILTER (WHERE {served} AND outcome = 'success'),
            count(live_pass) FILTER (WHERE {served}),
            count(*) FILTER (WHERE {served} AND live_pass)
            FROM {p}requests WHERE task = $1 AND "release" = $2 AND started_at >= $3 AND started_at < $5
            AND tenant <> $6 AND evaluation IS NOT TRUE AND cache_hit IS NOT TRUE"""  # noqa: S608
        self.create_migrations = (
            f"CREATE TABLE IF NOT EXISTS {p}schema_migrations "
            "(version integer PRIMARY KEY, applied_at double precision NOT NULL)"
        )
        self.current_version = f"SELECT COALESCE(max(version), 0) FROM {p}schema_migrations"  # noqa: S608
        self.record_version = f"INSERT INTO {p}schema_migrations VALUES ($1, $2)"  # noqa: S608


def _describe(exc: asyncpg.PostgresError | asyncpg.InterfaceError, opening: bool) -> str:
    """What failed, safe to log. The server's detail may quote the failing row ("Failing row
    contains …") and asyncpg's own message quotes a value it could not encode, so once rows are
    involved only the error's class and the names PostgreSQL reports go into the text. While
    opening there are no rows, and the message ("database … does not exist") is the useful part."""
    if opening:
        return f"{type(exc).__name__}: {exc.args[0] if exc.args else ''}"
    parts = [type(exc).__name__]
    if isinstance(exc, asyncpg.PostgresError):
        parts.append(f"SQLSTATE {exc.sqlstate}")
        where = ".".join(name for name in (exc.table_name, exc.column_name) if name)
        if where:
            parts.append(f"on {where}")
        if exc.constraint_name:
            parts.append(f"constraint {exc.constraint_name}")
    return " ".join(parts)


def _lock_key(schema: str | None) -> int:
    digest = hashlib.blake2b(f"turnout.ledger:{schema or ''}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _encode(row: LedgerRow) -> tuple[Any, ...]:
    # PostgreSQL text cannot hold NUL: a caller's episode id or an upstream's model name that
    # carries one is stored with U+FFFD in its place rather than failing the whole batch.
    values = [_text(v) if type(v) is str else v for v in (getattr(row, name) for name in COLUMNS)]
    values[_ATTEMPTS] = orjson.dumps(row.attempts).decode()
    values[_LABELS] = _json(row.labels)
    return tuple(values)


def _text(value: str) -> str:
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _json(labels: list[str] | None) -> str | None:
    return None if labels is None else orjson.dumps(labels).decode()


def _decode(record: asyncpg.Record) -> LedgerRow:
    values = dict(zip(COLUMNS, record.values(), strict=True))
    values["attempts"] = [AttemptRecord(**a) for a in orjson.loads(values["attempts"])]
    if values["labels"] is not None:
        values["labels"] = orjson.loads(values["labels"])
    return LedgerRow(**values)


def _decode_all(records: list[asyncpg.Record]) -> list[LedgerRow]:
    return [_decode(record) for record in records]
