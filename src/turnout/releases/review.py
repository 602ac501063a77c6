"""``ReviewQueue``: sampled answers awaiting a human label, beside the release store (its
SQLite file, or PostgreSQL with ``state.kind: postgres``).

The table lives in ``releases.store_path`` (``releases.db``) beside releases and transitions,
so the replicas, the CLI and the admin API share one queue and a release's quality figures sit
with its history. It has its own migrations table (``review_migrations``): the release store's
``schema_migrations`` is never touched, so the two modules version their tables apart.

Text rules: ``maybe_enqueue`` is only called where the capture decision allows text
(``mode`` is ``redacted`` or ``full``). Before anything is written the text goes through a
redactor, on the queue's worker thread: ``redactor`` in redacted mode, ``secrets`` (scrubs
secrets, keeps PII) in full mode, falling back to ``redactor``. Redacted mode without a
redactor stores nothing (fail closed). ``purge(before)`` deletes items captured earlier, for
the capture TTL.

    review_items  id, task, release, request_id, text, mode, created_at,
                  status (pending | accept | reject | escalate), note, labeled_by, labeled_at,
                  tenant, reason (NULL: sampled | escalated), answer

A sampled item's label may be changed; the latest counts. An escalated item is a caller's
ticket: ``escalate`` keeps it pending, and its first ``accept`` or ``reject`` is final (409
after that: the caller may already have read the outcome).

Escalations (``turnout.serving.output``): an answer that failed its task's output checks with
``escalate: {to: human}`` is queued whole by ``enqueue_ticket`` (always redacted, whatever the
capture mode: configuring the escalation is the opt-in), with its tenant and reason
``escalated``; the request id is the caller's ticket id. The reviewer accepts it with a
corrected ``answer`` (required for an escalated item) or rejects it; the caller reads the
outcome with ``GET /v1/tasks/{task}/tickets/{id}`` (``ticket``), its own tenant's only.
"""

from __future__ import annotations

import builtins
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, cast, get_args

from turnout._support.places import Conn, PgPlace, Place
from turnout._support.stateworker import Schema, migrate_at, worker
from turnout._support.times import iso
from turnout.errors import Conflict, RequestError, TurnoutError
from turnout.releases.pgschema import REVIEW

log = logging.getLogger(__name__)

T = TypeVar("T")
Label = Literal["accept", "reject", "escalate"]
Status = Literal["pending", "accept", "reject", "escalate"]
LABELS: tuple[Label, ...] = get_args(Label)
STATUSES: tuple[Status, ...] = get_args(Status)
MAX_NOTE = 4000
MAX_ANSWER = 50_000  # a reviewer's corrected answer, in characters
ESCALATED = "escalated"

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE review_items (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            task        TEXT NOT NULL,
            release     TEXT,
            request_id  TEXT NOT NULL UNIQUE,
            text        TEXT NOT NULL,
            mode        TEXT NOT NULL,
            created_at  REAL NOT NULL,
            status      TEXT NOT NULL DEFAULT 'pending',
            note        TEXT,
            labeled_by  TEXT,
            labeled_at  REAL
        )""",
        "CREATE INDEX review_items_task_status ON review_items (task, status, id)",
        "CREATE INDEX review_items_task_release ON review_items (task, release)",
        "CREATE INDEX review_items_created_at ON review_items (created_at)",
    ),
    # 2: escalated answers: whose (tenant), why queued (NULL: sampled) and the reviewer's answer.
    (
        "ALTER TABLE review_items ADD COLUMN tenant TEXT",
        "ALTER TABLE review_items ADD COLUMN reason TEXT",
        "ALTER TABLE review_items ADD COLUMN answer TEXT",
    ),
)


class ReviewError(TurnoutError):
    """The review queue cannot be used (closed, schema newer than this code, SQLite failed)."""


class _Redaction(Protocol):
    @property
    def text(self) -> str: ...


class TextRedactor(Protocol):
    def redact(self, text: str) -> _Redaction: ...


@dataclass(frozen=True, slots=True)
class ReviewItem:
    id: int
    task: str
    release: str | None
    request_id: str
    text: str
    mode: str
    created_at: float
    status: Status
    note: str | None
    labeled_by: str | None
    labeled_at: float | None
    tenant: str | None = None  # escalations: whose request it was
    reason: str | None = None  # None: sampled; ``escalated``: a ticket awaiting an answer
    answer: str | None = None  # the reviewer's corrected answer

    def to_json(self) -> dict[str, Any]:
        """The admin API's shape: times in ISO 8601 UTC, as the CLI writes them."""
        out = {name: getattr(self, name) for name in self.__slots__}
        out["created_at"], out["labeled_at"] = iso(self.created_at), iso(self.labeled_at)
        return out


@dataclass(frozen=True, slots=True)
class Quality:
    """Labels of one release: ``accept_rate`` is accepted over accepted + rejected (escalated
    items await a decision); None before any such label."""

    sampled: int = 0
    pending: int = 0
    accept: int = 0
    reject: int = 0
    escalate: int = 0

    @property
    def labeled(self) -> int:
        return self.accept + self.reject + self.escalate

    @property
    def accept_rate(self) -> float | None:
        decided = self.accept + self.reject
        return self.accept / decided if decided else None

    def to_json(self) -> dict[str, Any]:
        return {
            "sampled": self.sampled,
            "pending": self.pending,
            "accept": self.accept,
            "reject": self.reject,
            "escalate": self.escalate,
            "accept_rate": self.accept_rate,
        }


_COLUMNS = (
    "id, task, release, request_id, text, mode, created_at, status, note, labeled_by, labeled_at,"
    " tenant, reason, answer"
)


class ReviewQueue:
    def __init__(
        self,
        place: Place | Path,
        *,
        redactor: TextRedactor | None = None,
        secrets: TextRedactor | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.place = place if isinstance(place, PgPlace) else str(place)
        self.redactor = redactor
        self.secrets = secrets
        self.clock = clock
        # No data_version reader: nothing polls the queue for others' changes.
        self._db = worker(
            self.place, what="review queue", label="review", error=ReviewError, prepare=self._migrate, reader=False
        )
        self.path = self._db.path

    async def open(self) -> None:
        await self._db.open()

    async def aclose(self) -> None:
        await self._db.aclose()

    async def maybe_enqueue(
        self,
        task: str,
        release: str | None,
        request_id: str,
        text: str,
        rate: float,
        rng: random.Random,
        *,
        mode: Literal["redacted", "full"] = "redacted",
    ) -> ReviewItem | None:
        """Queue the answer with probability ``rate``; the drawn item, or None. Call it only
        where the capture decision allows text, and after the answer has gone out."""
        if rate <= 0 or rng.random() >= rate:
            return None
        scrub = self.redactor if mode == "redacted" or self.secrets is None else self.secrets
        if scrub is None:
            log.warning("review: no redactor for %s mode; request %s not queued", mode, request_id)
            return None
        now = self.clock()

        def insert(conn: Conn) -> ReviewItem | None:
            clean = scrub.redact(text).text
            cur = conn.execute(
                "INSERT OR IGNORE INTO review_items (task, release, request_id, text, mode, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (task, release, request_id, clean, mode, now),
            )
            return _inserted(conn, cur.fetchone())

        return await self._call(insert)

    async def enqueue_ticket(
        self, task: str, release: str | None, request_id: str, tenant: str, text: str
    ) -> ReviewItem | None:
        """Queue an escalated request for a person to answer, redacted; the item (None when the
        request id is queued already). ``ReviewError`` without a redactor: nothing unredacted is
        ever stored."""
        scrub = self.redactor
        if scrub is None:
            raise ReviewError("the review queue has no redactor: escalations cannot be queued")
        now = self.clock()

        def insert(conn: Conn) -> ReviewItem | None:
            clean = scrub.redact(text).text
            cur = conn.execute(
                "INSERT OR IGNORE INTO review_items (task, release, request_id, text, mode, created_at, tenant, reason)"
                " VALUES (?, ?, ?, ?, 'redacted', ?, ?, ?) RETURNING id",
                (task, release, request_id, clean, now, tenant, ESCALATED),
            )
            return _inserted(conn, cur.fetchone())

        return await self._call(insert)

    async def ticket(self, request_id: str) -> ReviewItem | None:
        """The escalated item of ``request_id``; None when there is none (a sampled one is none)."""

        def read(conn: Conn) -> ReviewItem | None:
            sql = f"SELECT {_COLUMNS} FROM review_items WHERE request_id = ? AND reason = ?"  # noqa: S608
            row = conn.execute(sql, (request_id, ESCALATED)).fetchone()
            return None if row is None else _decode(row)

        return await self._call(read)

    async def list(
        self, task: str | None = None, status: Status | None = None, *, limit: int = 100
    ) -> builtins.list[ReviewItem]:
        """Newest first; ``task`` and ``status`` narrow it when given."""
        if status is not None and status not in STATUSES:
            raise RequestError(f"status must be one of {', '.join(STATUSES)}, not {status!r}", param="status")
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        where, args = _where(task=task, status=status)
        sql = f"SELECT {_COLUMNS} FROM review_items{where} ORDER BY id DESC LIMIT ?"  # noqa: S608
        rows = await self._call(lambda c: c.execute(sql, (*args, limit)).fetchall())
        return [_decode(row) for row in rows]

    async def get(self, item_id: int) -> ReviewItem | None:
        return await self._call(lambda c: _get(c, item_id))

    async def label(
        self, item_id: int, label: str, note: str | None, by: str, answer: str | None = None
    ) -> ReviewItem | None:
        """Record a human's label, and for an escalation the corrected ``answer`` (kept when a
        later label gives none); None for an unknown item. Accepting an escalated item needs an
        answer: it is what the caller receives."""
        if label not in LABELS:
            raise RequestError(f"label must be one of {', '.join(LABELS)}, not {label!r}", param="label")
        if not by.strip():
            raise RequestError("a label needs who gave it ('by')", param="by")
        if note is not None and len(note) > MAX_NOTE:
            raise RequestError(f"the note is longer than {MAX_NOTE} characters", param="note")
        if answer is not None and len(answer) > MAX_ANSWER:
            raise RequestError(f"the answer is longer than {MAX_ANSWER} characters", param="answer")
        now = self.clock()

        def update(conn: Conn) -> ReviewItem | None:
            found = _get(conn, item_id)
            if found is None:
                return None
            if found.reason == ESCALATED:
                _may_close(found, label, answer)
            conn.execute(
                "UPDATE review_items SET status = ?, note = ?, labeled_by = ?, labeled_at = ?,"
                " answer = COALESCE(?, answer) WHERE id = ?",
                (label, note, by, now, answer, item_id),
            )
            return _get(conn, item_id)

        return await self._call(update)

    async def quality(self, task: str, release: str | None = None) -> Quality:
        """Label counts of the task's items (of one release when given)."""
        where, args = _where(task=task, release=release)
        sql = f"SELECT status, COUNT(*) FROM review_items{where} GROUP BY status"  # noqa: S608
        counts = dict(await self._call(lambda c: c.execute(sql, args).fetchall()))
        return Quality(
            sampled=sum(counts.values()),
            pending=counts.get("pending", 0),
            accept=counts.get("accept", 0),
            reject=counts.get("reject", 0),
            escalate=counts.get("escalate", 0),
        )

    async def purge(self, before: float) -> int:
        """Delete items queued before ``before`` (the capture TTL); how many went."""
        return await self._call(
            lambda c: c.execute("DELETE FROM review_items WHERE created_at < ?", (before,)).rowcount
        )

    async def tenant_tasks(self) -> tuple[tuple[str | None, str], ...]:
        """Every (tenant, task) with items; tenant None: sampled items, which record none."""
        found = await self._call(lambda c: c.execute("SELECT DISTINCT tenant, task FROM review_items").fetchall())
        return tuple((tenant, str(task)) for tenant, task in found)

    async def delete_before(self, tenant: str | None, task: str, before: float, limit: int) -> int:
        """Delete at most ``limit`` of the pair's items queued before ``before`` (the retention
        purge's batch; ``turnout.privacy.retention``): how many."""
        sql = (
            "DELETE FROM review_items WHERE id IN (SELECT id FROM review_items "
            "WHERE tenant IS ? AND task = ? AND created_at < ? LIMIT ?)"
        )
        deleted: int = await self._call(lambda c: c.execute(sql, (tenant, task, before, limit)).rowcount)
        return deleted

    # --- the thread ------------------------------------------------------------------------

    async def _call(self, fn: Callable[[Conn], T]) -> T:
        return await self._db.run(fn)

    def _migrate(self, conn: Conn) -> None:
        migrate_at(conn, self.place, self.path, SCHEMA)


def _where(**filters: str | None) -> tuple[str, tuple[str, ...]]:
    given = {k: v for k, v in filters.items() if v is not None}
    if not given:
        return "", ()
    return " WHERE " + " AND ".join(f"{k} = ?" for k in given), tuple(given.values())


def _inserted(conn: Conn, row: Sequence[Any] | None) -> ReviewItem | None:
    """The item an ``INSERT OR IGNORE … RETURNING id`` made; None when the id was queued already."""
    return None if row is None else _get(conn, int(row[0]))


def _may_close(ticket: ReviewItem, label: str, answer: str | None) -> None:
    """A ticket's outcome is given once: a caller may have read it, and acted on it."""
    if ticket.status in ("accept", "reject"):
        outcome = "answered" if ticket.status == "accept" else "rejected"
        raise Conflict(
            f"review item {ticket.id} is an escalated request already {outcome} by {ticket.labeled_by} "
            f"at {iso(ticket.labeled_at)}: its outcome is final"
        )
    if label == "accept" and not (answer or ticket.answer):
        raise RequestError("accepting an escalated item needs an 'answer' for the caller", param="answer")


def _get(conn: Conn, item_id: int | None) -> ReviewItem | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM review_items WHERE id = ?", (item_id,)).fetchone()  # noqa: S608
    return None if row is None else _decode(row)


def _decode(row: Sequence[Any]) -> ReviewItem:
    values = list(row)
    values[7] = cast(Status, values[7])
    return ReviewItem(*values)


# Its own table in SQLite too: the release store's schema_migrations versions the release tables.
SCHEMA = Schema(MIGRATIONS, REVIEW, "review queue", "review", ReviewError, "review_migrations", "review_migrations")
