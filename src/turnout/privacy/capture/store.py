"""The capture store: grants, their audit trail and captured text, in one SQLite file beside
the ledger (``capture.db`` in the directory of ``store.path``) or, for a fleet, in PostgreSQL
(``state.kind: postgres``: ``turnout._support.pgworker``, tables in ``capture.pgschema``, where
``version()`` counts the store's change notices).

As in the ledger and key stores, one dedicated thread owns the write connection and runs every
statement, so the event loop never waits on disk; the file is in WAL mode with
``synchronous=NORMAL``. A second, read-only connection answers ``PRAGMA data_version`` on the
loop (shared memory, no disk I/O): it changes whenever another connection commits, which is
how a running gateway notices a grant or revocation made by ``turnout capture``.

The audit table is append-only in the schema itself: triggers abort any UPDATE or DELETE of
its rows, and a partial unique index lets each grant be ``granted``, ``expired`` and
``revoked`` at most once. Grants cannot be deleted, and the only change a grant accepts is its
one revocation. (Whoever can write the file can still drop the triggers; the guarantee is
against the application and mistakes, not against the file's owner.)

``purge_runs`` says which process runs each purge job this interval (``claim_run``: the
workers and replicas sharing the store each schedule the jobs; see
``turnout.privacy.retention.claim``).

The file is created owner-only (0600): it may hold prompt text.

The schema is versioned: ``schema_migrations`` records each applied step of ``MIGRATIONS``,
which are append-only history.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from turnout._support.places import Conn, PgPlace, Place
from turnout._support.stateworker import Schema, migrate_at, worker
from turnout.config import StoreConfig
from turnout.privacy.capture.model import SYSTEM_ACTOR, AuditEvent, CaptureRow, CaptureStoreError, Event, Grant
from turnout.privacy.capture.pgschema import CAPTURE

T = TypeVar("T")

FILE_NAME = "capture.db"

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE grants (
            id         TEXT PRIMARY KEY,
            tenant     TEXT NOT NULL,
            task       TEXT NOT NULL,
            starts_at  REAL NOT NULL,
            ends_at    REAL NOT NULL,
            reason     TEXT NOT NULL CHECK (length(trim(reason)) > 0),
            granted_by TEXT NOT NULL CHECK (length(trim(granted_by)) > 0),
            revoked_at REAL,
            revoked_by TEXT,
            CHECK (ends_at > starts_at)
        )""",
        "CREATE INDEX grants_tenant_task ON grants (tenant, task)",
        "CREATE INDEX grants_ends_at ON grants (ends_at)",
        """CREATE TRIGGER grants_no_delete BEFORE DELETE ON grants
           BEGIN SELECT RAISE(ABORT, 'capture grants cannot be deleted'); END""",
        # A grant changes once: its revocation, which sets both fields and nothing else.
        """CREATE TRIGGER grants_revoke_only BEFORE UPDATE ON grants
           WHEN OLD.revoked_at IS NOT NULL OR NEW.revoked_at IS NULL OR NEW.revoked_by IS NULL
             OR NEW.id IS NOT OLD.id OR NEW.tenant IS NOT OLD.tenant OR NEW.task IS NOT OLD.task
             OR NEW.starts_at IS NOT OLD.starts_at OR NEW.ends_at IS NOT OLD.ends_at
             OR NEW.reason IS NOT OLD.reason OR NEW.granted_by IS NOT OLD.granted_by
           BEGIN SELECT RAISE(ABORT, 'a capture grant can only be revoked, once'); END""",
        """CREATE TABLE audit (
            id         INTEGER PRIMARY KEY AUTOINCREMENT,
            at         REAL NOT NULL,
            event      TEXT NOT NULL CHECK (event IN ('granted', 'used', 'expired', 'revoked', 'purged')),
            grant_id   TEXT,
            tenant     TEXT,
            task       TEXT,
            request_id TEXT,
            actor      TEXT NOT NULL,
            detail     TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX audit_tenant ON audit (tenant, id)",
        # Exactly once per grant, whichever process notices first.
        """CREATE UNIQUE INDEX audit_once ON audit (grant_id, event)
           WHERE event IN ('granted', 'expired', 'revoked')""",
        """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
           BEGIN SELECT RAISE(ABORT, 'the capture audit trail is append-only'); END""",
        """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
           BEGIN SELECT RAISE(ABORT, 'the capture audit trail is append-only'); END""",
        """CREATE TABLE captures (
            request_id      TEXT PRIMARY KEY,
            tenant          TEXT NOT NULL,
            task            TEXT NOT NULL,
            mode            TEXT NOT NULL CHECK (mode IN ('redacted', 'full')),
            grant_id        TEXT,
            captured_at     REAL NOT NULL,
            expires_at      REAL NOT NULL,
            prompt_text     TEXT NOT NULL,
            completion_text TEXT,
            CHECK (mode = 'redacted' OR grant_id IS NOT NULL)
        )""",
        "CREATE INDEX captures_expires_at ON captures (expires_at)",
        "CREATE INDEX captures_tenant_task ON captures (tenant, task)",
    ),
    # 2: which process runs a purge job (retention, captured text) this interval: the workers
    # and replicas that share this store each tick, one claims the run (``claim_run``).
    (
        """CREATE TABLE purge_runs (
            name          TEXT PRIMARY KEY,
            owner         TEXT NOT NULL,
            claimed_at    REAL NOT NULL,
            claimed_until REAL NOT NULL
        )""",
    ),
)

_GRANT_COLUMNS = "id, tenant, task, starts_at, ends_at, reason, granted_by, revoked_at, revoked_by"
_SELECT_GRANTS = f"SELECT {_GRANT_COLUMNS} FROM grants"  # noqa: S608 - constants only
_AUDIT_COLUMNS = "at, event, grant_id, tenant, task, request_id, actor, detail"
_INSERT_AUDIT = f"INSERT INTO audit ({_AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
_SELECT_AUDIT = f"SELECT id, {_AUDIT_COLUMNS} FROM audit"  # noqa: S608
_SELECT_UNRECORDED_EXPIRY = (
    f"{_SELECT_GRANTS} g WHERE revoked_at IS NULL AND ends_at <= ? AND NOT EXISTS "  # noqa: S608
    "(SELECT 1 FROM audit a WHERE a.grant_id = g.id AND a.event = 'expired') ORDER BY ends_at, id"
)
_CAPTURE_COLUMNS = "request_id, tenant, task, mode, grant_id, captured_at, expires_at, prompt_text, completion_text"
_INSERT_CAPTURE = f"INSERT OR REPLACE INTO captures ({_CAPTURE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
_UPSERT_CAPTURE = (  # PostgreSQL's spelling of the same
    f"INSERT INTO captures ({_CAPTURE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
    " ON CONFLICT (request_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _CAPTURE_COLUMNS.split(", ")[1:])
)
_SELECT_CAPTURES = f"SELECT {_CAPTURE_COLUMNS} FROM captures"  # noqa: S608
# Insert, or take over a claim that ran out (or is the claimant's own): one statement, so of two
# processes claiming at once exactly one wins, as canary steps are claimed (releases.canary).
_CLAIM_RUN = """INSERT INTO purge_runs (name, owner, claimed_at, claimed_until) VALUES (?, ?, ?, ?)
    ON CONFLICT (name) DO UPDATE
    SET owner = excluded.owner, claimed_at = excluded.claimed_at, claimed_until = excluded.claimed_until
    WHERE purge_runs.claimed_until <= excluded.claimed_at OR purge_runs.owner = excluded.owner"""
_RENEW_RUN = "UPDATE purge_runs SET claimed_until = ? WHERE name = ? AND owner = ?"


def capture_path(store: StoreConfig) -> str:
    """Where the gateway and ``turnout capture`` find the capture store: beside the ledger."""
    return str(Path(store.path).parent / FILE_NAME)


def new_grant_id() -> str:
    return "grt_" + secrets.token_hex(8)


class CaptureStore:
    def __init__(self, place: Place | Path) -> None:
        """``place``: the SQLite file, or the fleet's PostgreSQL (``Config.state_at``)."""
        self.place = place if isinstance(place, PgPlace) else str(place)
        self._db = worker(
            self.place, what="capture store", label="capture", error=CaptureStoreError, prepare=self._migrate
        )
        self.path = self._db.path
        self._insert_capture = _UPSERT_CAPTURE if isinstance(self.place, PgPlace) else _INSERT_CAPTURE
        self._changes = 0  # grant changes made through this object (all an in-memory file sees)

    async def open(self) -> None:
        await self._db.open()

    async def aclose(self) -> None:
        await self._db.aclose()

    def version(self) -> tuple[int, int]:
        """Changes whenever anything commits to the file (another process included). Cheap
        enough for the loop: it reads shared memory, never the disk."""
        if not self._db.readable:
            return (0, self._changes)
        return (self._db.data_version(), self._changes)

    # --- grants ----------------------------------------------------------------------------

    async def create_grant(
        self, tenant: str, task: str, starts_at: float, ends_at: float, reason: str, granted_by: str
    ) -> Grant:
        grant = Grant(new_grant_id(), tenant, task, starts_at, ends_at, reason.strip(), granted_by.strip())
        minutes = (ends_at - starts_at) / 60

        def insert(conn: Conn) -> None:
            conn.execute(
                f"INSERT INTO grants ({_GRANT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL)",  # noqa: S608
                (grant.id, tenant, task, starts_at, ends_at, grant.reason, grant.granted_by),
            )
            detail = f"full capture for {minutes:g} min until {_iso(ends_at)}: {grant.reason}"
            conn.execute(_INSERT_AUDIT, (starts_at, "granted", grant.id, tenant, task, None, grant.granted_by, detail))

        await self._write(insert)
        return grant

    async def revoke_grant(self, grant_id: str, by: str, now: float) -> Grant | None:
        """Revoke a grant that has not ended; a grant already revoked or expired is returned
        unchanged (its expiry recorded first if nobody had). None: no such grant."""

        def revoke(conn: Conn) -> Grant | None:
            _expire(conn, now)
            row = conn.execute(_SELECT_GRANTS + " WHERE id = ?", (grant_id,)).fetchone()
            if row is None:
                return None
            grant = _grant(row)
            if grant.revoked_at is not None or grant.ends_at <= now:
                return grant
            conn.execute("UPDATE grants SET revoked_at = ?, revoked_by = ? WHERE id = ?", (now, by, grant_id))
            detail = f"{_remaining(grant.ends_at - now)} before its end at {_iso(grant.ends_at)}"
            conn.execute(_INSERT_AUDIT, (now, "revoked", grant_id, grant.tenant, grant.task, None, by, detail))
            return _grant(conn.execute(_SELECT_GRANTS + " WHERE id = ?", (grant_id,)).fetchone())

        return await self._write(revoke)

    async def expire_grants(self, now: float) -> list[Grant]:
        """Record ``expired`` for every grant whose end has passed and that has no such event
        yet (exactly once per grant, across processes); return those."""
        expired = await self._write(lambda conn: _expire(conn, now))
        return expired

    async def grant(self, grant_id: str) -> Grant | None:
        row = await self._call(lambda conn: conn.execute(_SELECT_GRANTS + " WHERE id = ?", (grant_id,)).fetchone())
        return None if row is None else _grant(row)

    async def grants(self, tenant: str | None = None) -> list[Grant]:
        where, params = ("", ()) if tenant is None else (" WHERE tenant = ?", (tenant,))
        rows = await self._call(
            lambda conn: conn.execute(_SELECT_GRANTS + where + " ORDER BY starts_at, id", params).fetchall()
        )
        return [_grant(row) for row in rows]

    async def live_grants(self, now: float) -> list[Grant]:
        """Grants not revoked and not yet ended (pending ones included): the policy's cache."""
        rows = await self._call(
            lambda conn: conn.execute(
                _SELECT_GRANTS + " WHERE revoked_at IS NULL AND ends_at > ? ORDER BY starts_at, id", (now,)
            ).fetchall()
        )
        return [_grant(row) for row in rows]

    # --- captures and the audit trail ------------------------------------------------------

    async def write_captures(self, rows: Sequence[CaptureRow]) -> None:
        """Store captured rows and, in the same transaction, one ``used`` event per row kept
        under a grant. Atomic; a request id written again replaces its row."""
        if not rows:
            return
        captures = [
            (
                r.request_id,
                r.tenant,
                r.task,
                r.mode,
                r.grant_id,
                r.captured_at,
                r.expires_at,
                r.prompt_text,
                r.completion_text,
            )
            for r in rows
        ]
        used = [
            (r.captured_at, "used", r.grant_id, r.tenant, r.task, r.request_id, SYSTEM_ACTOR, "full capture")
            for r in rows
            if r.grant_id is not None
        ]

        def insert(conn: Conn) -> None:
            conn.executemany(self._insert_capture, captures)
            conn.executemany(_INSERT_AUDIT, used)

        await self._write(insert, grants_changed=False)

    async def purge(self, now: float, actor: str = SYSTEM_ACTOR) -> tuple[int, list[Grant]]:
        """Delete captures past their ``expires_at`` and record expired grants, then one
        ``purged`` event with the count. Returns (captures deleted, grants newly expired)."""

        def purge(conn: Conn) -> tuple[int, list[Grant]]:
            expired = _expire(conn, now)
            deleted = conn.execute("DELETE FROM captures WHERE expires_at <= ?", (now,)).rowcount
            detail = f"deleted {deleted} captures past their retention"
            conn.execute(_INSERT_AUDIT, (now, "purged", None, None, None, None, actor, detail))
            return deleted, expired

        return await self._write(purge)

    async def record_purge(self, at: float, tenant: str | None, task: str | None, actor: str, detail: str) -> None:
        """One ``purged`` event for a purge made elsewhere (the retention job's ledger and
        review deletions), its counts in ``detail``."""
        params = (at, "purged", None, tenant, task, None, actor, detail)
        await self._write(lambda conn: conn.execute(_INSERT_AUDIT, params), grants_changed=False)

    async def claim_run(self, name: str, owner: str, now: float, until: float) -> bool:
        """Claim the run of the purge job ``name`` from ``now`` until ``until``: True when
        ``owner`` holds it now (nobody had it, the last claim ran out by ``now``, or it was
        ``owner``'s own), False when another process holds it."""
        params = (name, owner, now, until)
        claimed: int = await self._call(lambda conn: conn.execute(_CLAIM_RUN, params).rowcount)
        return claimed > 0

    async def renew_run(self, name: str, owner: str, until: float) -> bool:
        """Move the end of ``owner``'s claim on ``name`` to ``until`` (a long run keeps it; a
        stopping process hands it back with ``until`` now). False: not ``owner``'s any more."""
        params = (until, name, owner)
        renewed: int = await self._call(lambda conn: conn.execute(_RENEW_RUN, params).rowcount)
        return renewed > 0

    async def audit(self, tenant: str | None = None, limit: int | None = None) -> list[AuditEvent]:
        """The trail, oldest first (the last ``limit`` events when given)."""
        where, params = ("", list[object]()) if tenant is None else (" WHERE tenant = ?", list[object]([tenant]))
        sql = _SELECT_AUDIT + where + " ORDER BY id"
        if limit is not None:
            sql = f"SELECT * FROM ({_SELECT_AUDIT}{where} ORDER BY id DESC LIMIT ?) AS recent ORDER BY id"  # noqa: S608
            params = [*params, limit]
        rows = await self._call(lambda conn: conn.execute(sql, params).fetchall())
        return [AuditEvent(row[0], row[1], cast(Event, row[2]), *row[3:]) for row in rows]

    async def captures(self, tenant: str | None = None) -> list[CaptureRow]:
        where, params = ("", ()) if tenant is None else (" WHERE tenant = ?", (tenant,))
        rows = await self._call(
            lambda conn: conn.execute(_SELECT_CAPTURES + where + " ORDER BY captured_at, request_id", params).fetchall()
        )
        return [CaptureRow(*row) for row in rows]

    # --- the thread ------------------------------------------------------------------------

    async def _write(self, fn: Callable[[Conn], T], *, grants_changed: bool = True) -> T:
        # IMMEDIATE: take the write lock before reading, so the "exactly once" reads and the
        # writes that depend on them cannot interleave with another process's.
        result = await self._db.transaction(fn, begin="BEGIN IMMEDIATE")
        if grants_changed:
            self._changes += 1
        return result

    async def _call(self, fn: Callable[[Conn], T]) -> T:
        return await self._db.run(fn)

    def _migrate(self, conn: Conn) -> None:
        migrate_at(conn, self.place, self.path, SCHEMA)


def _expire(conn: Conn, now: float) -> list[Grant]:
    rows = conn.execute(_SELECT_UNRECORDED_EXPIRY, (now,)).fetchall()
    expired = [_grant(row) for row in rows]
    detail = f"recorded at {_iso(now)}"
    conn.executemany(
        _INSERT_AUDIT, [(g.ends_at, "expired", g.id, g.tenant, g.task, None, SYSTEM_ACTOR, detail) for g in expired]
    )
    return expired


def _grant(row: Sequence[Any]) -> Grant:
    return Grant(*row)


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


def _remaining(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


SCHEMA = Schema(MIGRATIONS, CAPTURE, "capture store", "capture", CaptureStoreError, "capture_migrations")
