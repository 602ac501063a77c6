"""The capture store: grants and revocation, the audit trail that cannot be changed (SQLite
triggers), expiry recorded exactly once across connections, and the purge."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import pytest

from tests.pgstate import KINDS, pg_errors, raw_sql, state_place
from tests.test_capture_policy import eventually
from turnout.config import StoreConfig
from turnout.privacy.capture import CaptureRow, CaptureStore, CaptureStoreError, Purger, PurgeResult, capture_path

T0 = 1_800_000_000.0
DAY = 86_400.0


@pytest.fixture(params=KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CaptureStore]:
    """The same contract on both state backends (``state.kind``)."""
    async with state_place(request.param, tmp_path / "capture.db") as place:
        s = CaptureStore(place)
        await s.open()
        yield s
        await s.aclose()


def row(request_id: str, captured_at: float, ttl: float = DAY, grant_id: str | None = None) -> CaptureRow:
    mode: Literal["redacted", "full"] = "full" if grant_id else "redacted"
    return CaptureRow(request_id, "acme", "support", mode, grant_id, captured_at, captured_at + ttl, "p", "c")


def test_capture_path_is_beside_the_ledger() -> None:
    assert capture_path(StoreConfig(path="/var/lib/turnout/ledger.db")) == "/var/lib/turnout/capture.db"


async def test_grant_is_stored_and_audited(store: CaptureStore) -> None:
    grant = await store.create_grant("acme", "support", T0, T0 + 1800, "  ticket 4812 ", " alice ")
    assert grant.id.startswith("grt_") and len(grant.id) == 20
    assert (grant.reason, grant.granted_by) == ("ticket 4812", "alice")
    assert await store.grant(grant.id) == grant
    assert await store.grants() == [grant]
    assert await store.grants("bravo") == []
    [event] = await store.audit()
    assert (event.event, event.grant_id, event.actor, event.at) == ("granted", grant.id, "alice", T0)
    assert (event.tenant, event.task) == ("acme", "support")
    assert "30 min" in event.detail and "ticket 4812" in event.detail


async def test_grant_status_through_its_life(store: CaptureStore) -> None:
    grant = await store.create_grant("acme", "support", T0, T0 + 60, "r", "alice")
    assert grant.status(T0 - 1) == "pending" and not grant.live(T0 - 1)
    assert grant.status(T0) == "active" and grant.live(T0)
    assert grant.status(T0 + 60) == "expired" and not grant.live(T0 + 60)
    assert await store.live_grants(T0 + 59) == [grant]
    assert await store.live_grants(T0 + 60) == []


async def test_revoke_once(store: CaptureStore) -> None:
    grant = await store.create_grant("acme", "support", T0, T0 + 600, "r", "alice")
    revoked = await store.revoke_grant(grant.id, "bob", T0 + 60)
    assert revoked is not None and (revoked.revoked_at, revoked.revoked_by) == (T0 + 60, "bob")
    assert revoked.status(T0 + 61) == "revoked"
    again = await store.revoke_grant(grant.id, "carol", T0 + 120)
    assert again == revoked  # the first revocation stays
    assert await store.live_grants(T0 + 61) == []
    assert [e.event for e in await store.audit()] == ["granted", "revoked"]
    assert (await store.audit())[1].actor == "bob"
    assert await store.revoke_grant("grt_0000000000000000", "bob", T0) is None


async def test_revoking_an_expired_grant_records_its_expiry_instead(store: CaptureStore) -> None:
    grant = await store.create_grant("acme", "support", T0, T0 + 60, "r", "alice")
    found = await store.revoke_grant(grant.id, "bob", T0 + 61)
    assert found is not None and found.revoked_at is None
    assert [e.event for e in await store.audit()] == ["granted", "expired"]


async def test_expiry_is_recorded_exactly_once(store: CaptureStore, tmp_path: Path) -> None:
    grant = await store.create_grant("acme", "support", T0, T0 + 60, "r", "alice")
    assert await store.expire_grants(T0 + 59) == []
    assert await store.expire_grants(T0 + 60) == [grant]
    assert await store.expire_grants(T0 + 61) == []
    # Another process (another connection to the file) finds nothing left to record.
    other = CaptureStore(store.place)
    await other.open()
    try:
        assert await other.expire_grants(T0 + 120) == []
        await other.purge(T0 + 120)
    finally:
        await other.aclose()
    expired = [e for e in await store.audit() if e.event == "expired"]
    assert len(expired) == 1
    assert (expired[0].grant_id, expired[0].at, expired[0].actor) == (grant.id, T0 + 60, "turnout")


async def test_a_revoked_grant_never_expires(store: CaptureStore) -> None:
    grant = await store.create_grant("acme", "support", T0, T0 + 60, "r", "alice")
    await store.revoke_grant(grant.id, "bob", T0 + 30)
    assert await store.expire_grants(T0 + 120) == []


REFUSED: tuple[type[Exception], ...] = (sqlite3.IntegrityError, *pg_errors())


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit SET actor = 'mallory'",
        "UPDATE audit SET detail = '' WHERE event = 'granted'",
        "DELETE FROM audit",
        "DELETE FROM audit WHERE event = 'used'",
        "DELETE FROM grants",
        "UPDATE grants SET ends_at = ends_at + 86400",
        "UPDATE grants SET revoked_at = NULL, revoked_by = NULL",
    ],
)
async def test_the_audit_trail_and_grants_cannot_be_rewritten(store: CaptureStore, sql: str) -> None:
    grant = await store.create_grant("acme", "support", T0, T0 + 600, "r", "alice")
    await store.write_captures([row("req-1", T0 + 1, grant_id=grant.id)])
    await store.revoke_grant(grant.id, "bob", T0 + 2)
    before = (await store.audit(), await store.grants())
    with pytest.raises(REFUSED, match=r"append-only|cannot be deleted|only be revoked"):
        raw_sql(store.place, sql)
    assert (await store.audit(), await store.grants()) == before


async def test_a_grant_event_cannot_be_written_twice(store: CaptureStore) -> None:
    grant = await store.create_grant("acme", "support", T0, T0 + 600, "r", "alice")
    with pytest.raises(REFUSED, match=r"(?i)unique|duplicate key"):
        raw_sql(
            store.place,
            f"INSERT INTO audit (at, event, grant_id, actor) VALUES (0, 'granted', '{grant.id}', 'x')",  # noqa: S608
        )


async def test_captures_under_a_grant_are_audited_as_used(store: CaptureStore) -> None:
    grant = await store.create_grant("acme", "support", T0, T0 + 600, "r", "alice")
    await store.write_captures([row("req-1", T0 + 1, grant_id=grant.id), row("req-2", T0 + 2)])
    assert [r.request_id for r in await store.captures()] == ["req-1", "req-2"]
    used = [e for e in await store.audit() if e.event == "used"]
    assert [(e.grant_id, e.request_id, e.at) for e in used] == [(grant.id, "req-1", T0 + 1)]


async def test_a_text_holding_a_nul_is_kept_with_the_rest_of_its_batch(store: CaptureStore) -> None:
    """A caller's prompt may hold U+0000 (``"\\u0000"`` in its JSON, which redaction reads as the
    character): PostgreSQL's text refused it and the whole batch, other requests' text included,
    was lost. It is kept with U+FFFD in its place there (SQLite keeps the character)."""
    odd = CaptureRow("req-1", "acme", "support", "redacted", None, T0, T0 + DAY, "a\x00b", "c\x00")
    await store.write_captures([odd, row("req-2", T0 + 1)])
    kept = {r.request_id: r for r in await store.captures()}
    assert sorted(kept) == ["req-1", "req-2"]
    assert kept["req-1"].prompt_text in ("a\x00b", "a\ufffdb")


async def test_full_capture_needs_a_grant_in_the_schema(store: CaptureStore) -> None:
    bad = CaptureRow("req-1", "acme", "support", "full", None, T0, T0 + DAY, "p", None)
    with pytest.raises(CaptureStoreError, match=r"(?i)check"):
        await store.write_captures([bad])


async def test_purge_deletes_only_expired_captures_and_audits_it(store: CaptureStore) -> None:
    grant = await store.create_grant("acme", "support", T0, T0 + 60, "r", "alice")
    await store.write_captures([row("old", T0, ttl=10), row("edge", T0, ttl=100), row("new", T0, ttl=DAY)])
    deleted, expired = await store.purge(T0 + 100)
    assert deleted == 2 and expired == [grant]
    assert [r.request_id for r in await store.captures()] == ["new"]
    events = await store.audit()
    assert [e.event for e in events] == ["granted", "expired", "purged"]
    assert events[-1].detail == "deleted 2 captures past their retention" and events[-1].actor == "turnout"
    deleted, expired = await store.purge(T0 + 200, actor="cli")
    assert (deleted, expired) == (0, [])
    assert [(e.event, e.actor) for e in await store.audit()][-1] == ("purged", "cli")


async def test_audit_filters_and_limits(store: CaptureStore) -> None:
    a = await store.create_grant("acme", "support", T0, T0 + 60, "r", "alice")
    await store.create_grant("bravo", "support", T0, T0 + 60, "r", "alice")
    await store.revoke_grant(a.id, "bob", T0 + 1)
    assert [e.event for e in await store.audit("acme")] == ["granted", "revoked"]
    assert [e.tenant for e in await store.audit(limit=2)] == ["bravo", "acme"]  # the last two, oldest first


async def test_version_changes_when_another_connection_commits(store: CaptureStore) -> None:
    before = store.version()
    assert store.version() == before
    other = CaptureStore(store.place)
    await other.open()
    try:
        await other.create_grant("acme", "support", T0, T0 + 60, "r", "alice")
    finally:
        await other.aclose()
    await eventually(lambda: store.version() != before)  # PostgreSQL: a notice, within ms


async def test_in_memory_store_counts_its_own_changes() -> None:
    s = CaptureStore(":memory:")
    await s.open()
    try:
        before = s.version()
        await s.create_grant("acme", "support", T0, T0 + 60, "r", "alice")
        assert s.version() != before
    finally:
        await s.aclose()


async def test_file_is_owner_only(tmp_path: Path) -> None:
    s = CaptureStore(tmp_path / "capture.db")
    await s.open()
    await s.aclose()
    assert (tmp_path / "capture.db").stat().st_mode & 0o777 == 0o600


async def test_closed_store_refuses(tmp_path: Path) -> None:
    s = CaptureStore(tmp_path / "capture.db")
    with pytest.raises(CaptureStoreError, match="not open"):
        await s.grants()
    await s.open()
    with pytest.raises(CaptureStoreError, match="already open"):
        await s.open()
    await s.aclose()
    await s.aclose()  # twice is fine


@pytest.mark.parametrize("kind", KINDS)
async def test_newer_schema_is_refused(kind: str, tmp_path: Path) -> None:
    async with state_place(kind, tmp_path / "capture.db") as place:
        s = CaptureStore(place)
        await s.open()
        await s.aclose()
        table = "capture_migrations" if kind == "postgres" else "schema_migrations"
        raw_sql(place, f"INSERT INTO {table} VALUES (99, 0)")  # noqa: S608
        with pytest.raises(CaptureStoreError, match="newer than this turnout"):
            await CaptureStore(place).open()


async def test_purger_runs_at_start_then_every_interval(store: CaptureStore) -> None:
    now = [T0]
    await store.write_captures([row("old", T0 - 2 * DAY), row("new", T0)])
    purger = Purger(store, 0.02, clock=lambda: now[0])
    purger.start()
    try:
        await eventually(lambda: purger.runs >= 3)
        assert [r.request_id for r in await store.captures()] == ["new"]
    finally:
        await purger.aclose()
    runs = purger.runs
    purged = [e for e in await store.audit() if e.event == "purged"]
    assert len(purged) == runs and purged[0].detail == "deleted 1 captures past their retention"
    await asyncio.sleep(0.05)
    assert purger.runs == runs  # stopped


async def test_of_two_purgers_sharing_the_store_one_runs_each_interval(store: CaptureStore) -> None:
    """Seen: every worker and replica purged captures each interval, one ``purged`` event each.
    Each scheduled run is claimed in the store now: one runs, the other skips the interval."""
    now = [T0]
    await store.write_captures([row("old", T0 - 2 * DAY), row("new", T0)])
    other = CaptureStore(store.place)
    await other.open()
    a, b = Purger(store, 3600, clock=lambda: now[0]), Purger(other, 3600, clock=lambda: now[0])
    try:
        for _ in range(3):
            await asyncio.gather(a.tick(), b.tick())
            now[0] += 3600
        purged = [e for e in await store.audit() if e.event == "purged"]
        assert [e.detail for e in purged] == ["deleted 1 captures past their retention"] + [
            "deleted 0 captures past their retention"
        ] * 2
        assert sorted((a.runs, b.runs)) == [0, 3] and a.skipped + b.skipped == 3
    finally:
        await a.aclose()
        await b.aclose()
        await other.aclose()


async def test_purger_run_once(store: CaptureStore) -> None:
    grant = await store.create_grant("acme", "support", T0, T0 + 60, "r", "alice")
    result = await Purger(store, 3600).run_once(T0 + 60)
    assert result == PurgeResult(0, (grant,))
    with pytest.raises(ValueError, match="positive"):
        Purger(store, 0)
