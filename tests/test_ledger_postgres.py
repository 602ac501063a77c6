"""What only the PostgreSQL ledger store has to prove: the table's types and indexes, schemas
that keep tests apart, its pool under load, a graceful close, and errors that say what failed
without quoting row values. The shared contract is in ``test_ledger_store.py``."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator

import pytest

pytest.importorskip("asyncpg")

from tests.test_ledger_store import (
    POSTGRES_DSN,
    drop_schema,
    full_row,
    make_row,
    needs_postgres,
    postgres_sql,
    unique_schema,
)
from turnout.config import StoreConfig
from turnout.errors import ConfigError
from turnout.ledger.postgres import PostgresStore
from turnout.ledger.record import LedgerRow
from turnout.ledger.store import StoreError, open_store


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    name = unique_schema()
    yield name
    await drop_schema(name)


async def opened(schema: str, **opts: int) -> PostgresStore:
    store = PostgresStore(POSTGRES_DSN, schema=schema, **opts)
    await store.open()
    return store


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@needs_postgres
async def test_one_column_per_field_with_postgres_types_and_the_indexes(schema: str) -> None:
    await (await opened(schema)).aclose()
    columns = await postgres_sql(
        schema,
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = $1 AND table_name = 'requests' ORDER BY ordinal_position",
        schema,
    )
    assert [name for name, _ in columns] == [f.name for f in LedgerRow.__dataclass_fields__.values()]
    types = dict(columns)
    assert (types["started_at"], types["outcome_at"], types["cost_usd"]) == ("double precision",) * 3
    assert (types["stream"], types["cache_hit"], types["human_review"]) == ("boolean",) * 3
    assert types["usage_estimated"] == "boolean"
    assert (types["attempts"], types["labels"], types["status"]) == ("jsonb", "jsonb", "integer")
    collation = await postgres_sql(
        schema,
        "SELECT collation_name FROM information_schema.columns "
        "WHERE table_schema = $1 AND table_name = 'requests' AND column_name = 'request_id'",
        schema,
    )
    assert collation == [("C",)]  # ties in recent() order bytewise, as in Python and SQLite
    indexes = await postgres_sql(
        schema, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1 ORDER BY indexname", schema
    )
    defs = {name: definition.split(" USING btree ")[1] for name, definition in indexes}
    assert defs == {
        "requests_pkey": "(request_id)",
        "requests_started_at": "(started_at)",
        "requests_tenant_episode": "(tenant, episode_id) WHERE (episode_id IS NOT NULL)",
        "requests_task_release_started_at": "(task, release, started_at)",
        "schema_migrations_pkey": "(version)",
    }


@needs_postgres
async def test_attempts_are_a_jsonb_array(schema: str) -> None:
    store = await opened(schema)
    await store.write_batch([full_row(1)])
    await store.aclose()
    [(kind, target)] = await postgres_sql(
        schema, "SELECT jsonb_typeof(attempts), attempts -> 1 ->> 'target' FROM requests"
    )
    assert (kind, target) == ("array", "deepseek-br")


@needs_postgres
async def test_labels_are_a_jsonb_array_or_null(schema: str) -> None:
    store = await opened(schema)
    await store.write_batch([full_row(1), make_row(2), make_row(3)])
    assert await store.set_outcome("req-000002", "acme", None, None, None, None, None, 1.0, labels=["a", "é"])
    await store.aclose()
    found = await postgres_sql(
        schema, "SELECT request_id, jsonb_typeof(labels), labels ->> 0 FROM requests ORDER BY request_id"
    )
    assert found == [("req-000001", "array", "refund"), ("req-000002", "array", "a"), ("req-000003", None, None)]


@needs_postgres
async def test_schemas_keep_stores_apart(schema: str) -> None:
    other = unique_schema()
    a, b = await opened(schema), await opened(other)
    try:
        await a.write_batch([make_row(1)])
        assert await b.count() == 0
        assert await b.set_outcome("req-000001", "acme", "x", None, None, None, None, 1.0) is False
    finally:
        await a.aclose()
        await b.aclose()
        await drop_schema(other)


@needs_postgres
async def test_more_calls_than_connections_all_complete(schema: str) -> None:
    store = await opened(schema, pool_size=2)
    await asyncio.gather(*(store.write_batch([make_row(n)]) for n in range(100)))
    found = await asyncio.gather(*(store.get(f"req-{n:06d}") for n in range(100)))
    assert found == [make_row(n) for n in range(100)]
    await store.aclose()


@needs_postgres
async def test_close_waits_for_a_write_in_flight(schema: str) -> None:
    store = await opened(schema)
    write = asyncio.create_task(store.write_batch([make_row(n) for n in range(2000)]))
    await asyncio.sleep(0)  # the write has taken its connection
    await store.aclose()
    await write
    assert await postgres_sql(schema, "SELECT count(*) FROM requests") == [(2000,)]


@needs_postgres
async def test_a_value_of_the_wrong_type_fails_without_quoting_it(schema: str) -> None:
    store = await opened(schema)
    bad = make_row(2, user="secret-user", status="secret-status")  # status must be an int
    with pytest.raises(StoreError) as caught:
        await store.write_batch([make_row(1), bad])
    assert "secret" not in str(caught.value)
    assert "DataError" in str(caught.value)
    assert await store.count() == 0
    await store.aclose()


@needs_postgres
async def test_a_write_stuck_behind_a_lock_gives_up_after_the_timeout(schema: str) -> None:
    import asyncpg

    store = PostgresStore(POSTGRES_DSN, schema=schema, timeout_s=0.5)
    await store.open()
    blocker = await asyncpg.connect(POSTGRES_DSN)
    try:
        async with blocker.transaction():
            await blocker.execute(f'LOCK TABLE "{schema}".requests IN ACCESS EXCLUSIVE MODE')
            with pytest.raises(StoreError, match=r"no answer within 0\.5s"):
                await store.write_batch([make_row(1)])
        await store.write_batch([make_row(2)])  # the lock is gone: the pool recovered
        assert await store.count() == 1
    finally:
        await blocker.close()
        await store.aclose()


@needs_postgres
async def test_opening_twice_is_refused(schema: str) -> None:
    store = await opened(schema)
    with pytest.raises(StoreError, match="already open"):
        await store.open()
    await store.aclose()


async def test_an_unreachable_server_fails_open_with_a_store_error() -> None:
    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{closed_port()}/test", timeout_s=2.0)
    with pytest.raises(StoreError, match="unreachable"):
        await store.open()
    with pytest.raises(StoreError, match="not open"):
        await store.count()


@needs_postgres
async def test_a_missing_database_fails_open_with_a_store_error() -> None:
    dsn = POSTGRES_DSN.rsplit("/", 1)[0] + "/turnout_no_such_database"
    with pytest.raises(StoreError, match="InvalidCatalogNameError"):
        await PostgresStore(dsn).open()


def test_a_schema_must_be_a_plain_identifier() -> None:
    for bad in ('x"; DROP TABLE requests; --', "Upper", "1starts_with_digit", ""):
        with pytest.raises(ValueError, match="schema"):
            PostgresStore(POSTGRES_DSN, schema=bad)


def test_from_config_needs_a_dsn() -> None:
    with pytest.raises(ConfigError, match=r"store\.dsn"):
        open_store(StoreConfig(kind="postgres"))
    store = open_store(StoreConfig(kind="postgres", dsn=POSTGRES_DSN))
    assert isinstance(store, PostgresStore)
    assert (store.dsn, store.schema) == (POSTGRES_DSN, None)


def test_without_asyncpg_open_store_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "asyncpg" or m.startswith("asyncpg.")] + ["asyncpg"]:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import asyncpg` raise ImportError
    monkeypatch.delitem(sys.modules, "turnout.ledger.postgres", raising=False)
    with pytest.raises(ConfigError, match=r"pip install 'turnout\[postgres\]'"):
        open_store(StoreConfig(kind="postgres", dsn=POSTGRES_DSN))
