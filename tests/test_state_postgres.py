"""What only the fleet's PostgreSQL state (``state.kind: postgres``) has to prove: the dialect
translation, change notices across connections (and after the listener's connection is cut),
a writer that reconnects, one advisory lock per store, canary claims with one winner, and the
``state`` config. The stores' shared contract runs on both backends in their own test files
(``test_releases_store``, ``test_review``, ``test_capture_store``)."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

pytest.importorskip("psycopg")

from tests.fakes.tcp_proxy import FaultProxy
from tests.pgstate import KINDS, raw_sql, state_place
from tests.test_capture_policy import eventually
from tests.test_ledger_store import POSTGRES_DSN, postgres_reachable
from tests.test_releases_store import TASK, bootstrap, make
from turnout._support import pgworker
from turnout._support.pgworker import PgConnection, connect, translate
from turnout._support.places import PgPlace, lock_key
from turnout.config import validate
from turnout.errors import ConfigError
from turnout.releases.canary import StepClaims
from turnout.releases.pgschema import RELEASES
from turnout.releases.registry import StoreRegistry
from turnout.releases.store import ReleaseStore, ReleaseStoreError

needs_postgres = pytest.mark.skipif(not postgres_reachable(), reason=f"no PostgreSQL at {POSTGRES_DSN}")


@pytest.fixture
async def place(tmp_path: Path) -> AsyncIterator[PgPlace]:
    async with state_place("postgres", tmp_path) as where:
        assert isinstance(where, PgPlace)
        yield where


def terminate(place: PgPlace, application_name: str) -> int:
    """Cut every connection of that name, as a failover or an idle-timeout would; how many."""
    rows = raw_sql(
        PgPlace(place.dsn),
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "  # noqa: S608 - a test constant
        f"WHERE application_name = '{application_name}' AND pid <> pg_backend_pid()",
    )
    return int(rows[0][0])


# --- the dialect -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sqlite", "postgres"),
    [
        ("SELECT a FROM t WHERE b = ? AND c = ?", "SELECT a FROM t WHERE b = %s AND c = %s"),
        ("SELECT 1 WHERE x LIKE '10%' AND y = ?", "SELECT 1 WHERE x LIKE '10%%' AND y = %s"),
        (
            "DELETE FROM t WHERE tenant IS ? AND task = ?",
            "DELETE FROM t WHERE tenant IS NOT DISTINCT FROM %s AND task = %s",
        ),
        ("INSERT OR IGNORE INTO t (a) VALUES (?)", "INSERT INTO t (a) VALUES (%s) ON CONFLICT DO NOTHING"),
        (
            "INSERT OR IGNORE INTO t (a) VALUES (?) RETURNING id",
            "INSERT INTO t (a) VALUES (%s) ON CONFLICT DO NOTHING RETURNING id",
        ),
        ("SELECT a FROM t WHERE a IS NULL", "SELECT a FROM t WHERE a IS NULL"),
    ],
)
def test_sqlite_dialect_becomes_postgres(sqlite: str, postgres: str) -> None:
    assert translate(sqlite) == postgres


def test_a_place_never_shows_its_password() -> None:
    place = PgPlace("postgresql://turnout:s3cret-pw@db:5432/turnout", "fleet")
    assert "s3cret" not in place.shown and place.shown == "postgresql://turnout@db:5432/turnout (schema fleet)"
    with pytest.raises(ValueError, match="schema"):
        PgPlace("postgresql://db/x", 'x"; DROP TABLE releases; --')


def test_lock_keys_are_stable_and_apart() -> None:
    assert lock_key("s", "releases") == lock_key("s", "releases")
    assert len({lock_key("s", "releases"), lock_key("s", "review"), lock_key("t", "releases")}) == 3
    assert -(2**63) <= lock_key("x") < 2**63


# --- the config ------------------------------------------------------------------------------


BASE = {
    "targets": {"t": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}},
    "tasks": {"x": {"route": ["t"]}},
}


def test_state_defaults_to_sqlite_files_beside_the_ledger() -> None:
    config = validate(BASE)
    assert config.state.kind == "sqlite"
    assert config.state_at(config.releases.store_path) == config.releases.store_path


def test_postgres_state_takes_the_ledgers_database_and_schema() -> None:
    config = validate(
        {
            **BASE,
            "store": {"kind": "postgres", "dsn": "postgresql://pg@db/turnout", "pg_schema": "fleet"},
            "state": {"kind": "postgres"},
        }
    )
    assert config.state_at("./.turnout/releases.db") == PgPlace("postgresql://pg@db/turnout", "fleet")


def test_postgres_state_may_have_a_database_of_its_own() -> None:
    config = validate({**BASE, "state": {"kind": "postgres", "dsn": "postgresql://pg@state/x", "pg_schema": "s"}})
    assert config.state_at("ignored") == PgPlace("postgresql://pg@state/x", "s")


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"kind": "postgres"}, "state.dsn: required when state.kind is postgres"),
        ({"kind": "postgres", "dsn": "mysql://db/x"}, "state.dsn: must start with postgresql://"),
        ({"kind": "postgres", "dsn": "postgresql://db/x", "pg_schema": "Bad-Name"}, "state.pg_schema"),
        ({"kind": "etcd"}, "state.kind"),
    ],
)
def test_bad_state_config_is_refused(state: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate({**BASE, "state": state})


def test_check_names_the_extra_when_psycopg_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from turnout.cli.preflight import preflight

    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg → ImportError
    monkeypatch.delitem(sys.modules, "turnout._support.pgworker", raising=False)
    config = validate({**BASE, "state": {"kind": "postgres", "dsn": "postgresql://db/x"}})
    assert "state.kind: postgres needs psycopg: pip install 'turnout[postgres]'" in preflight(config, env={})


# --- change notices, reconnection, locks -----------------------------------------------------


@needs_postgres
async def test_another_replicas_rollback_reaches_the_registry(place: PgPlace) -> None:
    """Two replicas on different machines share only the database: a rollback made through one
    store is served by the other's registry at its next poll (0.1 s here)."""
    async with ReleaseStore(place) as mine, ReleaseStore(place) as theirs:
        await bootstrap(theirs, "v2")
        await theirs.promote(TASK, "v2", "alice", "new prompt")
        registry = StoreRegistry(mine, interval=0.1)
        await registry.start()
        try:
            serving = registry.serving(TASK)
            assert serving is not None and serving.active is not None and serving.active.name == "v2"
            started = time.monotonic()
            await theirs.rollback(TASK, "bob", "bad answers")
            await eventually(lambda: _active(registry) == "v1", within_s=5.0)
            assert time.monotonic() - started < 5.0
        finally:
            await registry.aclose()


def _active(registry: StoreRegistry) -> str | None:
    serving = registry.serving(TASK)
    return None if serving is None or serving.active is None else serving.active.name


@needs_postgres
async def test_a_cut_listener_reconnects_and_readers_reload(place: PgPlace) -> None:
    async with ReleaseStore(place) as mine, ReleaseStore(place) as theirs:
        before = mine.data_version()
        assert terminate(place, "turnout-releases-listen") >= 2  # both stores' listeners
        await eventually(lambda: mine.data_version() != before)  # reconnected: reload, a notice may be lost
        await asyncio.sleep(0.2)
        settled = mine.data_version()
        await theirs.register(make("v1"), "alice")
        await eventually(lambda: mine.data_version() != settled)  # notices flow again


@needs_postgres
async def test_a_cut_writer_connection_fails_one_call_then_reconnects(place: PgPlace) -> None:
    async with ReleaseStore(place) as store:
        await store.register(make("v1"), "alice")
        # This store's writer connection only: another process's, on the shared database, is not
        # this test's to cut (nor to count).
        pid = await store._db.run(lambda conn: conn.raw.execute("SELECT pg_backend_pid()").fetchone()[0])
        assert raw_sql(PgPlace(place.dsn), f"SELECT pg_terminate_backend({int(pid)})") == [(True,)]
        seen: list[object] = []
        for _ in range(2):  # the call that meets the dead connection says so; the next reconnects
            try:
                seen.append([r.release.name for r in await store.releases(TASK)])
            except ReleaseStoreError as exc:
                seen.append(exc.message)
        assert seen[-1] == ["v1"]
        assert all(each == ["v1"] or "release store" in str(each) for each in seen)


@needs_postgres
async def test_a_store_waits_for_another_replicas_write_transaction(place: PgPlace) -> None:
    """``BEGIN IMMEDIATE``'s counterpart: while another connection holds the store's write lock,
    a change waits for it instead of acting on what may be stale."""
    async with ReleaseStore(place) as store:
        await bootstrap(store, "v2")
        holder = connect(place)
        try:
            holder.raw.execute("BEGIN")
            holder.raw.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(place.schema or "", "releases", "write"),))
            promotion = asyncio.create_task(store.promote(TASK, "v2", "alice", "waits"))
            await asyncio.sleep(0.3)
            assert not promotion.done()
            holder.raw.execute("COMMIT")
            row = await asyncio.wait_for(promotion, 10)
            assert row.active == "v2"
        finally:
            holder.raw.close()


@needs_postgres
async def test_reopening_runs_no_migration_twice_and_refuses_a_newer_schema(place: PgPlace) -> None:
    stores = [ReleaseStore(place) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))  # four replicas starting at once
    await asyncio.gather(*(s.aclose() for s in stores))
    assert raw_sql(place, "SELECT count(*) FROM releases_migrations") == [(len(RELEASES),)]
    raw_sql(place, "INSERT INTO releases_migrations VALUES (99, 0)")
    with pytest.raises(ReleaseStoreError, match="newer than this turnout"):
        await ReleaseStore(place).open()


@needs_postgres
async def test_an_unreachable_database_is_a_clear_store_error() -> None:
    store = ReleaseStore(PgPlace("postgresql://nobody:pw@127.0.0.1:9/none", "x"))
    with pytest.raises(ReleaseStoreError, match=r"release store postgresql://nobody@127\.0\.0\.1:9/none") as refused:
        await store.open()
    assert "pw" not in refused.value.message


# --- canary claims ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_of_many_replicas_one_claims_a_canary_step(kind: str, tmp_path: Path) -> None:
    now = [1000.0]
    async with state_place(kind, tmp_path / "releases.db") as where:
        replicas = [StepClaims(where, clock=lambda: now[0], ttl_s=60) for _ in range(6)]
        won = await asyncio.gather(*(c.claim(TASK, "v2", 900.0, "step", f"r{i}") for i, c in enumerate(replicas)))
        assert sum(won) == 1
        assert not await replicas[0].claim(TASK, "v2", 900.0, "step", "late")
        assert await replicas[0].claim(TASK, "v2", 950.0, "step", "next step")  # another step: its own claim
        now[0] += 61  # the winner died before acting: its claim goes stale and may be taken over
        assert sum(await asyncio.gather(*(c.claim(TASK, "v2", 900.0, "step", "x") for c in replicas))) == 1


def test_pg_connection_passes_rows_through(tmp_path: Path) -> None:
    if not postgres_reachable():
        pytest.skip("no PostgreSQL")
    conn = connect(PgPlace(POSTGRES_DSN))
    try:
        assert isinstance(conn, PgConnection)
        assert conn.execute("SELECT ?::int + 1, ?::text", (41, "x%")).fetchone() == (42, "x%")
        assert conn.executemany("SELECT ?::int", [(1,), (2,)]).rowcount in (-1, 1, 2)
    finally:
        conn.raw.close()


# --- the CLI on the fleet's database ---------------------------------------------------------


@needs_postgres
def test_a_grant_made_from_one_machine_is_listed_from_another(tmp_path: Path, place: PgPlace) -> None:
    """Two working directories with nothing on disk in common: `turnout capture` on each reads
    and writes the one database (``state.kind: postgres``)."""
    import yaml

    from tests.test_cli_common import invoke

    homes = []
    for name in ("laptop", "ci"):
        home = tmp_path / name
        home.mkdir()
        (home / "turnout.yaml").write_text(
            yaml.safe_dump(
                {
                    "store": {"path": str(home / "ledger.db")},
                    "state": {"kind": "postgres", "dsn": place.dsn, "pg_schema": place.schema},
                    "capture": {"rules": [{"tenant": "acme", "task": "support", "mode": "full"}]},
                    "targets": {"t": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}},
                    "tenants": {"acme": {"keys": ["sk-acme-0123456789abcdef"]}},
                    "tasks": {"support": {"route": ["t"]}},
                }
            )
        )
        homes.append(home / "turnout.yaml")
    made = invoke(
        "capture", "grant", "--tenant", "acme", "--task", "support", "--minutes", "30",
        "--reason", "ticket 4812", "--by", "alice", "-c", str(homes[0]),
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    listed = invoke("capture", "list", "--format", "json", "-c", str(homes[1]))
    assert listed.exit_code == 0, listed.output
    (grant,) = orjson.loads(listed.stdout)
    assert (grant["tenant"], grant["reason"], grant["granted_by"]) == ("acme", "ticket 4812", "alice")
    assert not list(tmp_path.rglob("capture.db")), "no capture file on either machine"


@needs_postgres
async def test_a_listener_that_cannot_reconnect_says_so_once_and_again_when_it_is_back(
    place: PgPlace, caplog: pytest.LogCaptureFixture
) -> None:
    """It retries every 0.5 s; an outage is one line (and one a minute), not two a second."""
    port = int(place.dsn.rsplit(":", 1)[1].split("/")[0])
    with FaultProxy(port) as proxy:
        via = PgPlace(place.dsn.replace(f":{port}/", f":{proxy.port}/"), place.schema)
        async with ReleaseStore(via) as store:
            caplog.clear()
            await asyncio.to_thread(proxy.cut)
            await asyncio.sleep(2.5)  # five tries
            before = store.data_version()
            await asyncio.to_thread(proxy.restore)
            await eventually(lambda: store.data_version() != before)
            lines = [r.getMessage() for r in caplog.records if "change notices" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "stopped" in lines[0] and "flow again" in lines[1]


@needs_postgres
async def test_a_rollback_reaches_a_replica_whose_connections_went_silent(
    place: PgPlace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NAT or proxy that forgets a connection breaks nothing: no error ever arrives, the
    listener would wait for notices for good and the replica serve the rolled-back release. Its
    heartbeat finds the silence, the listener reconnects and the registry reloads, also through
    a writer connection gone silent the same way."""
    monkeypatch.setattr(pgworker, "HEARTBEAT_S", 0.5)
    monkeypatch.setattr(pgworker, "HEARTBEAT_TIMEOUT_S", 0.5)
    port = int(place.dsn.rsplit(":", 1)[1].split("/")[0])
    with FaultProxy(port) as proxy:
        via = PgPlace(place.dsn.replace(f":{port}/", f":{proxy.port}/"), place.schema)
        async with ReleaseStore(via) as mine, ReleaseStore(place) as theirs:
            await bootstrap(theirs, "v2")
            await theirs.promote(TASK, "v2", "alice", "new prompt")
            registry = StoreRegistry(mine, interval=0.1)
            await registry.start()
            try:
                assert _active(registry) == "v2"
                proxy.hang()
                await theirs.rollback(TASK, "bob", "bad answers")
                await eventually(lambda: _active(registry) == "v1", within_s=20.0)
            finally:
                await registry.aclose()


def test_a_schema_name_with_a_final_line_break_is_refused() -> None:
    from turnout._support.places import PgPlace

    with pytest.raises(ValueError, match="schema name"):
        PgPlace("postgresql://127.0.0.1/test", "turnout\n")


@needs_postgres
async def test_a_database_that_does_not_answer_is_told_from_one_that_refuses() -> None:
    """Start-up waits out the first (``serving/waiting.py``) and ends on the second."""
    import asyncpg
    import psycopg

    from turnout._support.places import unreachable

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    base = POSTGRES_DSN.rsplit("/", 1)[0]
    down, missing = f"postgresql://postgres@127.0.0.1:{closed}/test", base + "/turnout_no_such_database"
    told = {}
    for name, dsn in (("down", down), ("missing", missing)):
        with pytest.raises(psycopg.OperationalError) as sync_failure:
            psycopg.connect(dsn, connect_timeout=5)
        with pytest.raises((OSError, asyncpg.PostgresError)) as async_failure:
            await asyncpg.connect(dsn, timeout=5)
        told[name] = (unreachable(sync_failure.value), unreachable(async_failure.value))
    assert told == {"down": (True, True), "missing": (False, False)}
    assert unreachable(ReleaseStoreError("release store: failed")) is False
