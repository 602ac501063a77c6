"""Registered releases, their states and the audit of every transition, in one SQLite file
(``releases.store_path``) or, for a fleet on several machines, in PostgreSQL (``state.kind:
postgres``; ``turnout._support.pgworker``, tables in ``releases.pgschema``), shared by the
gateway's replicas, the CLI and the canary controller.

Tables::

    releases     (task, name) → version, prompt_version, spec JSON, registered_at/by, state
                 the spec and its hashes never change once written (a trigger refuses it)
    transitions  append-only (triggers refuse UPDATE and DELETE): who moved which release
                 from which state to which, when, why, and the canary share after it
    serving      one row per task: active, canary, canary_percent, previous_active, shadow,
                 shadow_percent

The state machine (every arrow is a row in ``transitions``)::

    registered ──mark_evaluated──▶ evaluated ──start_canary──▶ canary ──promote──▶ active
        │                              └──────────promote──────────────────────────▲ │
        └──promote (bootstrap or force)─────────────────────────────────────────────┘ │
    canary ──rollback──▶ retired          active ──promote(other) / rollback──▶ retired
    retired ──mark_evaluated──▶ evaluated (a re-run of the golden set)
    retired ──rollback (it is previous_active)──▶ active
    shadow ──rollback (it is previous_active, shadowed since it retired)──▶ active, the shadow ended
    registered / evaluated / retired ──start_shadow──▶ shadow ──stop_shadow──▶ the state before
    shadow ──start_canary (its shadow sample passed the task's gates: ``gated``)──▶ canary

A release holds one role at a time: a shadow release serves nobody (a transition that makes
it serve, a gated canary or a rollback to it, ends its shadow). It is sent a copy of a share of
the active release's requests (``turnout.serving.shadow``), one per task, beside the active and
canary ones.

Bootstrap: while a task has never had an active release, any registered release may be
promoted directly: there is nothing yet to compare a candidate against. After that, promoting
a release that is not ``evaluated`` or ``canary`` needs ``force`` (recorded in the why).

A task always keeps its last fully active release: a rollback drops the canary (its traffic
goes back to the active release) or, when there is no canary or it is asked to, makes
``previous_active`` active again; nothing ever leaves a task with no active release once it
has had one.

Every change runs in one ``BEGIN IMMEDIATE`` transaction (in PostgreSQL: behind the store's
advisory lock) on a worker thread that owns the write connection, so the checks and the change
are atomic across processes and machines and the event loop never waits on disk.
``data_version()`` changes whenever anyone committed, read from memory: SQLite's ``PRAGMA
data_version`` on a second connection, PostgreSQL's count of ``NOTIFY`` notices.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import orjson

from turnout._support.places import Conn, PgPlace, Place
from turnout._support.sqlite import in_transaction
from turnout._support.stateworker import Schema, migrate_at, worker
from turnout.errors import TurnoutError
from turnout.releases.base import Prompt, Release, Serving, State, Transition
from turnout.releases.pgschema import RELEASES

T = TypeVar("T")

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE releases (
            task           TEXT NOT NULL,
            name           TEXT NOT NULL,
            version        TEXT NOT NULL,
            prompt_version TEXT NOT NULL,
            spec           TEXT NOT NULL,
            registered_at  REAL NOT NULL,
            registered_by  TEXT NOT NULL,
            state          TEXT NOT NULL,
            PRIMARY KEY (task, name)
        )""",
        """CREATE TRIGGER releases_immutable BEFORE UPDATE OF
            task, name, version, prompt_version, spec, registered_at, registered_by ON releases
            BEGIN SELECT RAISE(ABORT, 'a registered release is immutable'); END""",
        """CREATE TRIGGER releases_kept BEFORE DELETE ON releases
            BEGIN SELECT RAISE(ABORT, 'a registered release is never deleted'); END""",
        """CREATE TABLE transitions (
            id         INTEGER PRIMARY KEY AUTOINCREMENT,
            task       TEXT NOT NULL,
            release    TEXT NOT NULL,
            from_state TEXT,
            to_state   TEXT NOT NULL,
            at         REAL NOT NULL,
            by         TEXT NOT NULL,
            why        TEXT NOT NULL,
            percent    REAL
        )""",
        "CREATE INDEX transitions_task ON transitions (task, id)",
        """CREATE TRIGGER transitions_no_update BEFORE UPDATE ON transitions
            BEGIN SELECT RAISE(ABORT, 'transitions are append-only'); END""",
        """CREATE TRIGGER transitions_no_delete BEFORE DELETE ON transitions
            BEGIN SELECT RAISE(ABORT, 'transitions are append-only'); END""",
        """CREATE TABLE serving (
            task            TEXT PRIMARY KEY,
            active          TEXT,
            canary          TEXT,
            canary_percent  REAL NOT NULL DEFAULT 0,
            previous_active TEXT,
            updated_at      REAL NOT NULL
        )""",
    ),
    (
        "ALTER TABLE serving ADD COLUMN shadow TEXT",
        "ALTER TABLE serving ADD COLUMN shadow_percent REAL NOT NULL DEFAULT 0",
    ),
)


class ReleaseStoreError(TurnoutError):
    """A lifecycle step was refused (wrong state, a changed release, an unknown name), or the
    store cannot be used (closed, schema newer than this code, SQLite failed)."""

    status = 409
    type = "invalid_request_error"
    code = "release_conflict"


@dataclass(frozen=True, slots=True)
class RegisteredRelease:
    release: Release
    version: str
    prompt_version: str
    state: State
    registered_at: float
    registered_by: str


@dataclass(frozen=True, slots=True)
class ServingRow:
    task: str
    active: str | None
    canary: str | None
    canary_percent: float
    previous_active: str | None
    updated_at: float
    shadow: str | None = None
    shadow_percent: float = 0.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a registry serves from, read in one transaction."""

    serving: dict[str, Serving]
    releases: dict[str, dict[str, Release]]


def to_spec(release: Release) -> dict[str, Any]:
    """The release as JSON-able data, without task and name (they are the row's key)."""
    return {
        "route": list(release.route),
        "model_version": release.model_version,
        "tokenizer": release.tokenizer,
        "prompt": {
            "system": release.prompt.system,
            "user": release.prompt.user,
            "variables": release.prompt.variables,
        },
        "params": release.params,
        "output_schema": release.output_schema,
        "retrieval": release.retrieval,
        "safety": release.safety,
    }


def from_spec(task: str, name: str, spec: dict[str, Any]) -> Release:
    prompt = spec["prompt"]
    return Release(
        task=task,
        name=name,
        route=tuple(spec["route"]),
        model_version=spec["model_version"],
        tokenizer=spec["tokenizer"],
        prompt=Prompt(system=prompt["system"], user=prompt["user"], variables=dict(prompt["variables"])),
        params=dict(spec["params"]),
        output_schema=spec["output_schema"],
        retrieval=spec["retrieval"],
        safety=spec["safety"],
    )


class ReleaseStore:
    def __init__(self, place: Place | Path) -> None:
        """``place``: the SQLite file, or the fleet's PostgreSQL (``Config.state_at``)."""
        self.place = place if isinstance(place, PgPlace) else str(place)
        self._db = worker(
            self.place, what="release store", label="releases", error=ReleaseStoreError, prepare=self._migrate
        )
        self.path = self._db.path

    async def open(self) -> None:
        await self._db.open()

    async def aclose(self) -> None:
        await self._db.aclose()

    @property
    def _executor(self) -> ThreadPoolExecutor | None:
        # Kept from before the shared worker: the registry's tests check that it closed the store.
        return self._db.executor

    async def __aenter__(self) -> ReleaseStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- reads -----------------------------------------------------------------------------

    def data_version(self) -> int:
        """Changes whenever any connection (this process's writer, the CLI, another replica)
        commits; a few µs, from the WAL index in shared memory."""
        return self._db.data_version()

    async def releases(self, task: str) -> list[RegisteredRelease]:
        rows = await self._call(lambda c: c.execute(_SELECT + " WHERE task = ? ORDER BY registered_at, name", (task,)))
        return [_decode(row) for row in rows]

    async def get(self, task: str, name: str) -> RegisteredRelease | None:
        rows = await self._call(lambda c: c.execute(_SELECT + " WHERE task = ? AND name = ?", (task, name)))
        return _decode(rows[0]) if rows else None

    async def transitions(self, task: str, release: str | None = None, *, last: int | None = None) -> list[Transition]:
        """Oldest first; ``last``: only the newest ``last`` of them (the console's page), read
        without the rest, which a canary's steps grow by one a step for as long as it serves."""
        sql = "SELECT task, release, from_state, to_state, at, by, why, percent FROM transitions WHERE task = ?"
        args: tuple[str | int, ...] = (task,)
        if release is not None:
            sql, args = sql + " AND release = ?", (task, release)
        if last is None:
            rows = await self._call(lambda c: c.execute(sql + " ORDER BY id", args))
            return [Transition(*row) for row in rows]
        newest = await self._call(lambda c: c.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, max(0, last))))
        return [Transition(*row) for row in reversed(newest)]

    async def serving_row(self, task: str) -> ServingRow | None:
        rows = await self._call(lambda c: c.execute(_SERVING + " WHERE task = ?", (task,)))
        return ServingRow(*rows[0]) if rows else None

    async def snapshot(self) -> Snapshot:
        return await self._db.run(_snapshot)

    # --- lifecycle -------------------------------------------------------------------------

    async def register(self, release: Release, by: str, why: str = "registered from its file") -> RegisteredRelease:
        """Register a release; the same content again returns the existing registration
        (no new transition). The same name with other content is refused."""
        _who(by, why)
        version, spec = release.version, orjson.dumps(to_spec(release), option=orjson.OPT_SORT_KEYS).decode()

        def body(conn: Conn, now: float) -> RegisteredRelease:
            found = _row(conn, release.task, release.name)
            if found is not None:
                if found.version != version:
                    raise ReleaseStoreError(
                        f"release {release.name!r} of task {release.task!r} is already registered with version "
                        f"{found.version}; this one has version {version}: a registered release is immutable, "
                        "so changing a release requires a new name"
                    )
                return found
            conn.execute(
                "INSERT INTO releases VALUES (?, ?, ?, ?, ?, ?, ?, 'registered')",
                (release.task, release.name, version, release.prompt_version, spec, now, by),
            )
            _record(conn, release.task, release.name, None, "registered", now, by, why)
            if _serving(conn, release.task) is None:
                conn.execute("INSERT INTO serving (task, updated_at) VALUES (?, ?)", (release.task, now))
            registered = _row(conn, release.task, release.name)
            assert registered is not None
            return registered

        return await self._write(body)

    async def mark_evaluated(self, task: str, name: str, by: str, why: str) -> RegisteredRelease:
        """The release passed its gates. From registered or retired (a fresh run); already
        evaluated: unchanged."""
        _who(by, why)

        def body(conn: Conn, now: float) -> RegisteredRelease:
            found = _need(conn, task, name)
            if found.state == "evaluated":
                return found
            if found.state == "shadow":  # stays in shadow; stopping it returns it to evaluated
                _record(conn, task, name, "shadow", "shadow", now, by, EVALUATED_IN_SHADOW + why)
                return found
            if found.state not in ("registered", "retired"):
                raise ReleaseStoreError(
                    f"release {name!r} of task {task!r} is {found.state}; only a registered or retired release "
                    "can be marked evaluated"
                )
            _move(conn, task, name, found.state, "evaluated", now, by, why)
            return _need(conn, task, name)

        return await self._write(body)

    async def start_canary(
        self,
        task: str,
        name: str,
        percent: float,
        by: str,
        why: str,
        *,
        gated: bool = False,
        against: str | None = None,
    ) -> ServingRow:
        """Send ``percent`` of the task's traffic to an evaluated release (or change the share of
        the release already in canary). One canary per task, beside an active release. A release
        in shadow may go to canary only when its shadow sample passed the task's gates: the
        caller checked them (``gated``; ``turnout release canary`` does) and says so in ``why``;
        ``against``: the active release the sample's pairs were served by, which must still be
        the active one (refused if another was promoted since the sample was read)."""
        _who(by, why)
        _percent(percent)

        def body(conn: Conn, now: float) -> ServingRow:
            found = _need(conn, task, name)
            serving = _serving(conn, task)
            assert serving is not None  # registering made it
            if found.state == "shadow" and not gated:
                raise ReleaseStoreError(
                    f"release {name!r} of task {task!r} is in shadow; it may take traffic once its shadow sample "
                    "passes the task's gates (`turnout release canary` checks them)"
                )
            if found.state == "shadow" and against is not None and serving.active != against:
                raise ReleaseStoreError(
                    f"the shadow sample of release {name!r} of task {task!r} was measured against {against!r}, "
                    f"but {serving.active!r} is active now; check its gates again"
                )
            if found.state not in ("evaluated", "canary", "shadow"):
                hint = " (run its golden set first, or shadow it)" if found.state == "registered" else ""
                raise ReleaseStoreError(
                    f"release {name!r} of task {task!r} is {found.state}; a canary needs an evaluated release{hint}"
                )
            if serving.canary is not None and serving.canary != name:
                raise ReleaseStoreError(
                    f"task {task!r} already has release {serving.canary!r} in canary at {serving.canary_percent:g}%; "
                    "promote it or roll it back first"
                )
            if serving.active is None:
                raise ReleaseStoreError(
                    f"task {task!r} has no active release for the rest of the traffic; promote a first release "
                    "directly (bootstrap) before starting a canary"
                )
            _move(conn, task, name, found.state, "canary", now, by, why, percent)
            conn.execute(
                "UPDATE serving SET canary = ?, canary_percent = ?, updated_at = ? WHERE task = ?",
                (name, percent, now, task),
            )
            if serving.shadow == name:  # the shadow becomes the canary: no longer mirrored
                conn.execute("UPDATE serving SET shadow = NULL, shadow_percent = 0 WHERE task = ?", (task,))
            return _need_serving(conn, task)

        return await self._write(body)

    async def start_shadow(self, task: str, name: str, percent: float, by: str, why: str) -> ServingRow:
        """Mirror ``percent`` of the active release's requests to ``name`` (or change the share
        of the release already in shadow). Its answers are compared, never served. From
        registered, evaluated or retired; one shadow per task, beside an active release."""
        _who(by, why)
        _percent(percent, "shadow")

        def body(conn: Conn, now: float) -> ServingRow:
            found = _need(conn, task, name)
            serving = _serving(conn, task)
            assert serving is not None
            if found.state not in ("registered", "evaluated", "retired", "shadow"):
                raise ReleaseStoreError(
                    f"release {name!r} of task {task!r} is {found.state}; only a release that serves no traffic "
                    "(registered, evaluated or retired) can be shadowed"
                )
            if serving.shadow is not None and serving.shadow != name:
                raise ReleaseStoreError(
                    f"task {task!r} already shadows release {serving.shadow!r} at {serving.shadow_percent:g}%; "
                    "stop that shadow first"
                )
            if serving.active is None:
                raise ReleaseStoreError(
                    f"task {task!r} has no active release to compare a shadow against; promote a first release"
                )
            _move(conn, task, name, found.state, "shadow", now, by, why, percent)
            conn.execute(
                "UPDATE serving SET shadow = ?, shadow_percent = ?, updated_at = ? WHERE task = ?",
                (name, percent, now, task),
            )
            return _need_serving(conn, task)

        return await self._write(body)

    async def stop_shadow(self, task: str, by: str, why: str) -> ServingRow:
        """Stop mirroring: the shadow release returns to the state it had before its shadow
        (evaluated, if its golden set passed meanwhile)."""
        _who(by, why)

        def body(conn: Conn, now: float) -> ServingRow:
            serving = _serving(conn, task)
            if serving is None or serving.shadow is None:
                raise ReleaseStoreError(f"task {task!r} has no release in shadow")
            name = serving.shadow
            _move(conn, task, name, "shadow", _before_shadow(conn, task, name), now, by, why, 0.0)
            conn.execute(
                "UPDATE serving SET shadow = NULL, shadow_percent = 0, updated_at = ? WHERE task = ?", (now, task)
            )
            return _need_serving(conn, task)

        return await self._write(body)

    async def set_canary_percent(self, task: str, percent: float, by: str, why: str) -> ServingRow:
        """Move the running canary to another share (the canary controller's steps)."""
        _who(by, why)
        _percent(percent)

        def body(conn: Conn, now: float) -> ServingRow:
            serving = _serving(conn, task)
            if serving is None or serving.canary is None:
                raise ReleaseStoreError(f"task {task!r} has no release in canary")
            _move(conn, task, serving.canary, "canary", "canary", now, by, why, percent)
            conn.execute("UPDATE serving SET canary_percent = ?, updated_at = ? WHERE task = ?", (percent, now, task))
            return _need_serving(conn, task)

        return await self._write(body)

    async def promote(self, task: str, name: str, by: str, why: str, *, force: bool = False) -> ServingRow:
        """Make a release active for all of the task's traffic. The one it replaces is retired
        and remembered as ``previous_active`` for a rollback. From canary or evaluated; from
        registered or retired only with ``force``, or as a task's first active release
        (bootstrap)."""
        _who(by, why)

        def body(conn: Conn, now: float) -> ServingRow:
            found = _need(conn, task, name)
            serving = _serving(conn, task)
            assert serving is not None
            note = ""
            if found.state == "active":
                raise ReleaseStoreError(f"release {name!r} of task {task!r} is already active")
            if found.state == "shadow":
                raise ReleaseStoreError(
                    f"release {name!r} of task {task!r} is in shadow; start a canary from it (its shadow sample "
                    "must pass the task's gates) or stop the shadow first"
                )
            if serving.canary is not None and serving.canary != name:
                raise ReleaseStoreError(
                    f"task {task!r} has release {serving.canary!r} in canary; promote it or roll it back first"
                )
            if found.state in ("registered", "retired"):
                if serving.active is None and serving.previous_active is None and _never_active(conn, task):
                    note = " [bootstrap: the task's first active release]"
                elif force:
                    note = f" [forced: promoted from {found.state} without passing its gates]"
                else:
                    raise ReleaseStoreError(
                        f"release {name!r} of task {task!r} is {found.state}, not evaluated: run its golden set "
                        "first, or force the promotion (it is recorded)"
                    )
            if serving.active is not None:
                _move(conn, task, serving.active, "active", "retired", now, by, f"replaced by {name!r}: {why}")
            _move(conn, task, name, found.state, "active", now, by, why + note, 100.0)
            conn.execute(
                "UPDATE serving SET active = ?, canary = NULL, canary_percent = 0,"
                " previous_active = COALESCE(?, previous_active), updated_at = ? WHERE task = ?",
                (name, serving.active, now, task),
            )
            return _need_serving(conn, task)

        return await self._write(body)

    async def rollback(self, task: str, by: str, why: str, *, to_previous: bool = False) -> ServingRow:
        """Drop the canary, if there is one: its traffic returns to the active release. With
        ``to_previous``, or when there is no canary, also return all traffic to the previous
        active release (the current one is retired)."""
        _who(by, why)

        def body(conn: Conn, now: float) -> ServingRow:
            serving = _serving(conn, task)
            if serving is None or (serving.active is None and serving.canary is None):
                raise ReleaseStoreError(f"task {task!r} has no release serving traffic; nothing to roll back")
            revert = to_previous or serving.canary is None
            if revert and serving.previous_active is None:
                raise ReleaseStoreError(
                    f"task {task!r} has no previous active release to return to"
                    + ("" if serving.canary is None else "; roll back without asking for the previous one")
                )
            if serving.canary is not None:
                _move(conn, task, serving.canary, "canary", "retired", now, by, why, 0.0)
                conn.execute(
                    "UPDATE serving SET canary = NULL, canary_percent = 0, updated_at = ? WHERE task = ?", (now, task)
                )
            if revert:
                assert serving.active is not None and serving.previous_active is not None
                previous = _need(conn, task, serving.previous_active)
                _move(conn, task, serving.active, "active", "retired", now, by, why)
                _move(conn, task, previous.release.name, previous.state, "active", now, by, why, 100.0)
                # One step back only: rolling back again needs a new promotion first, so two
                # rollbacks cannot flip traffic to and fro.
                conn.execute(
                    "UPDATE serving SET active = ?, previous_active = NULL, updated_at = ? WHERE task = ?",
                    (previous.release.name, now, task),
                )
                if serving.shadow == previous.release.name:  # it serves now: no longer mirrored
                    conn.execute("UPDATE serving SET shadow = NULL, shadow_percent = 0 WHERE task = ?", (task,))
            return _need_serving(conn, task)

        return await self._write(body)

    # --- the thread ------------------------------------------------------------------------

    async def _write(self, body: Callable[[Conn, float], T]) -> T:
        return await self._db.transaction(lambda conn: body(conn, time.time()), begin="BEGIN IMMEDIATE")

    async def _call(self, fn: Callable[[Conn], Any]) -> list[Sequence[Any]]:
        return await self._db.run(lambda conn: list(fn(conn).fetchall()))

    def _migrate(self, conn: Conn) -> None:
        migrate_at(conn, self.place, self.path, SCHEMA)


_SELECT = "SELECT task, name, version, prompt_version, spec, registered_at, registered_by, state FROM releases"
_SERVING = (
    "SELECT task, active, canary, canary_percent, previous_active, updated_at, shadow, shadow_percent FROM serving"
)
EVALUATED_IN_SHADOW = "evaluated while in shadow: "


def _decode(row: Sequence[Any]) -> RegisteredRelease:
    task, name, version, prompt_version, spec, registered_at, registered_by, state = row
    release = from_spec(task, name, orjson.loads(spec))
    if release.version != version:  # the spec was edited behind our back, or hashing changed
        raise ReleaseStoreError(
            f"release {name!r} of task {task!r}: stored version {version} does not match its spec ({release.version})"
        )
    return RegisteredRelease(release, version, prompt_version, cast(State, state), registered_at, registered_by)


def _row(conn: Conn, task: str, name: str) -> RegisteredRelease | None:
    row = conn.execute(_SELECT + " WHERE task = ? AND name = ?", (task, name)).fetchone()
    return None if row is None else _decode(row)


def _need(conn: Conn, task: str, name: str) -> RegisteredRelease:
    found = _row(conn, task, name)
    if found is None:
        known = [r[0] for r in conn.execute("SELECT name FROM releases WHERE task = ? ORDER BY name", (task,))]
        raise ReleaseStoreError(
            f"no release {name!r} registered for task {task!r} (registered: {', '.join(known) or 'none'})"
        )
    return found


def _serving(conn: Conn, task: str) -> ServingRow | None:
    row = conn.execute(_SERVING + " WHERE task = ?", (task,)).fetchone()
    return None if row is None else ServingRow(*row)


def _need_serving(conn: Conn, task: str) -> ServingRow:
    row = _serving(conn, task)
    assert row is not None
    return row


def _never_active(conn: Conn, task: str) -> bool:
    row = conn.execute("SELECT 1 FROM transitions WHERE task = ? AND to_state = 'active' LIMIT 1", (task,)).fetchone()
    return row is None


def _move(
    conn: Conn,
    task: str,
    name: str,
    from_state: State,
    to_state: State,
    now: float,
    by: str,
    why: str,
    percent: float | None = None,
) -> None:
    conn.execute("UPDATE releases SET state = ? WHERE task = ? AND name = ?", (to_state, task, name))
    _record(conn, task, name, from_state, to_state, now, by, why, percent)


def _record(
    conn: Conn,
    task: str,
    name: str,
    from_state: State | None,
    to_state: State,
    now: float,
    by: str,
    why: str,
    percent: float | None = None,
) -> None:
    conn.execute(
        "INSERT INTO transitions (task, release, from_state, to_state, at, by, why, percent)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (task, name, from_state, to_state, now, by, why, percent),
    )


def _snapshot(conn: Conn) -> Snapshot:
    def read(conn: Conn) -> Snapshot:
        releases: dict[str, dict[str, Release]] = {}
        for row in conn.execute(_SELECT):
            found = _decode(row)
            releases.setdefault(found.release.task, {})[found.release.name] = found.release
        serving: dict[str, Serving] = {}
        for row in conn.execute(_SERVING):
            s = ServingRow(*row)
            by_name = releases.get(s.task, {})
            serving[s.task] = Serving(
                active=by_name.get(s.active) if s.active else None,
                canary=by_name.get(s.canary) if s.canary else None,
                canary_percent=s.canary_percent if s.canary else 0.0,
                shadow=by_name.get(s.shadow) if s.shadow else None,
                shadow_percent=s.shadow_percent if s.shadow else 0.0,
            )
        return Snapshot(serving=serving, releases=releases)

    # One read transaction: serving and releases from the same commit.
    return in_transaction(conn, read)


def _who(by: str, why: str) -> None:
    if not by.strip():
        raise ReleaseStoreError("every transition needs who made it ('by')")
    if not why.strip():
        raise ReleaseStoreError("every transition needs a reason ('why')")


def _percent(percent: float, what: str = "canary") -> None:
    if not 0 < percent <= 100:
        raise ReleaseStoreError(f"a {what} share must be more than 0 and at most 100 percent, not {percent:g}")


def _before_shadow(conn: Conn, task: str, name: str) -> State:
    """The state a release had before its shadow; evaluated if its golden set passed meanwhile."""
    rows = conn.execute(
        "SELECT from_state, to_state, why FROM transitions WHERE task = ? AND release = ? ORDER BY id DESC",
        (task, name),
    ).fetchall()
    for from_state, to_state, why in rows:
        if to_state != "shadow":
            break
        if from_state == "shadow" and str(why).startswith(EVALUATED_IN_SHADOW):
            return "evaluated"
        if from_state != "shadow":
            return cast(State, from_state)
    return "registered"


SCHEMA = Schema(MIGRATIONS, RELEASES, "release store", "releases", ReleaseStoreError, "releases_migrations")
