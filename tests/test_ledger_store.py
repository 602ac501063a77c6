"""One contract for every ledger store backend, then what only SQLite has to prove (files,
WAL, migrations). A new backend joins by adding its kind to BACKENDS."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from turnout.config import StoreConfig
from turnout.ledger.memory import MemoryStore
from turnout.ledger.record import AttemptRecord, LedgerRow
from turnout.ledger.sqlite import SQLiteStore
from turnout.ledger.store import LedgerStore, StoreError, open_store

BACKENDS = ["memory", "sqlite"]


def make_row(n: int, **fields: object) -> LedgerRow:
    row = LedgerRow(
        request_id=f"req-{n:06d}",
        started_at=1_700_000_000.0 + n,
        tenant="acme",
        task="support-reply",
        data_class="internal",
        stream=False,
    )
    return dataclasses.replace(row, **fields)  # type: ignore[arg-type]


def full_row(n: int) -> LedgerRow:
    """Every field set to a non-default value, so a dropped or swapped column shows."""
    return make_row(
        n,
        started_at=1_700_000_000.123456,
        stream=True,
        user="u-42",
        release="support-reply@7",
        prompt_version="p3",
        target="deepseek-br",
        replica="us-east-1",
        model_version="deepseek.v3-v1:0",
        status=200,
        error_class="timeout_ttft",
        attempts=[
            AttemptRecord(
                target="qwen-vllm", replica="http://vllm:8000/v1", error_class="timeout_ttft", latency_ms=30000.5
            ),
            AttemptRecord(target="deepseek-br", replica="us-east-1", error_class=None, latency_ms=812.25),
        ],
        fallback=True,
        prompt_tokens=1234,
        completion_tokens=56,
        cost_usd=0.000123,
        latency_ms=30812.75,
        queue_ms=1.5,
        ttft_ms=400.0,
        generation_ms=412.25,
        fallback_ms=30000.5,
        outcome="success",
    )


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LedgerStore]:
    cfg = StoreConfig(kind=request.param, path=str(tmp_path / "state" / "ledger.db"))
    opened = open_store(cfg)
    await opened.open()
    yield opened
    await opened.aclose()


# --- the contract -----------------------------------------------------------------------------


async def test_a_new_store_is_empty(store: LedgerStore) -> None:
    assert await store.count() == 0
    assert await store.recent() == []
    assert await store.get("req-000001") is None


async def test_every_field_round_trips(store: LedgerStore) -> None:
    row = full_row(1)
    await store.write_batch([row])
    assert await store.get(row.request_id) == row


async def test_none_fields_and_defaults_round_trip(store: LedgerStore) -> None:
    row = make_row(1)  # every optional field None, no attempts, stream and fallback False
    await store.write_batch([row])
    got = await store.get(row.request_id)
    assert got == row
    assert got is not None
    assert got.user is None
    assert got.cost_usd is None
    assert got.attempts == []
    assert got.stream is False
    assert got.fallback is False


async def test_attempts_round_trip_in_order(store: LedgerStore) -> None:
    attempts = [AttemptRecord(f"t{i}", f"r{i}", None if i == 2 else "connect", i * 1.25) for i in range(3)]
    await store.write_batch([make_row(1, attempts=attempts)])
    got = await store.get("req-000001")
    assert got is not None
    assert got.attempts == attempts
    assert all(isinstance(a, AttemptRecord) for a in got.attempts)


async def test_count_and_get_after_several_batches(store: LedgerStore) -> None:
    await store.write_batch([make_row(n) for n in range(10)])
    await store.write_batch([make_row(n) for n in range(10, 15)])
    assert await store.count() == 15
    assert await store.get("req-000014") == make_row(14)
    assert await store.get("req-999999") is None


async def test_recent_is_newest_first_and_limited(store: LedgerStore) -> None:
    await store.write_batch([make_row(n) for n in (3, 1, 4, 0, 2)])
    assert [r.request_id for r in await store.recent(3)] == ["req-000004", "req-000003", "req-000002"]
    assert len(await store.recent(100)) == 5
    assert await store.recent(0) == []


async def test_recent_breaks_time_ties_by_request_id(store: LedgerStore) -> None:
    await store.write_batch([make_row(n, started_at=5.0) for n in (2, 9, 4)])
    assert [r.request_id for r in await store.recent()] == ["req-000009", "req-000004", "req-000002"]


async def test_recent_refuses_a_negative_limit(store: LedgerStore) -> None:
    with pytest.raises(ValueError, match="negative"):
        await store.recent(-1)


async def test_writing_a_request_id_again_replaces_the_row(store: LedgerStore) -> None:
    await store.write_batch([make_row(1, status=0)])
    await store.write_batch([make_row(1, status=200, outcome="success")])
    assert await store.count() == 1
    got = await store.get("req-000001")
    assert got is not None
    assert (got.status, got.outcome) == (200, "success")


async def test_an_empty_batch_is_a_no_op(store: LedgerStore) -> None:
    await store.write_batch([])
    assert await store.count() == 0


async def test_rows_are_not_shared_with_the_caller(store: LedgerStore) -> None:
    row = full_row(1)
    await store.write_batch([row])
    row.attempts.clear()
    row.status = 500
    got = await store.get(row.request_id)
    assert got == full_row(1)
    assert got is not None
    got.attempts.clear()
    assert await store.get(row.request_id) == full_row(1)


async def test_concurrent_batches_and_reads_all_land(store: LedgerStore) -> None:
    batches = [[make_row(b * 50 + i) for i in range(50)] for b in range(20)]
    results = await asyncio.gather(
        *(store.write_batch(batch) for batch in batches),
        *(store.count() for _ in range(10)),
        *(store.recent(5) for _ in range(10)),
    )
    assert all(isinstance(n, int) and 0 <= n <= 1000 for n in results[20:30])
    assert await store.count() == 1000
    assert await store.get("req-000999") == make_row(999)
    assert [r.request_id for r in await store.recent(2)] == ["req-000999", "req-000998"]


async def test_a_closed_store_refuses_calls_and_closes_twice(store: LedgerStore) -> None:
    await store.aclose()
    await store.aclose()
    with pytest.raises(StoreError):
        await store.count()
    with pytest.raises(StoreError):
        await store.write_batch([make_row(1)])


async def test_every_backend_satisfies_the_protocol() -> None:
    stores: list[LedgerStore] = [MemoryStore(), SQLiteStore(":memory:")]  # checked by mypy
    for store in stores:  # and SQLite also works without a file
        await store.open()
        await store.write_batch([make_row(1)])
        assert await store.get("req-000001") == make_row(1)
        await store.aclose()


@pytest.mark.parametrize(("kind", "cls"), [("memory", MemoryStore), ("sqlite", SQLiteStore)])
async def test_open_store_builds_the_configured_backend(kind: str, cls: type, tmp_path: Path) -> None:
    store = open_store(StoreConfig(kind=kind, path=str(tmp_path / "l.db")))
    assert isinstance(store, cls)
    with pytest.raises(StoreError, match="not open"):
        await store.count()


# --- SQLite only ------------------------------------------------------------------------------


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "a" / "b" / "ledger.db"


async def opened(path: Path) -> SQLiteStore:
    store = SQLiteStore(path)
    await store.open()
    return store


def query(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_sqlite_creates_the_parent_directory_in_wal_mode(db_path: Path) -> None:
    store = await opened(db_path)
    await store.aclose()
    assert await asyncio.to_thread(db_path.is_file)
    assert query(db_path, "PRAGMA journal_mode") == [("wal",)]


async def test_sqlite_schema_has_one_column_per_field_and_the_indexes(db_path: Path) -> None:
    store = await opened(db_path)
    await store.aclose()
    columns = [c[1] for c in query(db_path, "PRAGMA table_info(requests)")]
    assert columns == [f.name for f in dataclasses.fields(LedgerRow)]
    indexes = {
        name: [c[2] for c in query(db_path, f"PRAGMA index_info({name})")]
        for name in ("requests_started_at", "requests_tenant_task")
    }
    assert indexes == {"requests_started_at": ["started_at"], "requests_tenant_task": ["tenant", "task"]}


async def test_sqlite_stores_attempts_as_json_text(db_path: Path) -> None:
    store = await opened(db_path)
    await store.write_batch([full_row(1)])
    await store.aclose()
    [(raw,)] = query(db_path, "SELECT attempts FROM requests")
    assert isinstance(raw, str)
    assert json.loads(raw)[1] == {
        "target": "deepseek-br",
        "replica": "us-east-1",
        "error_class": None,
        "latency_ms": 812.25,
        "offset_ms": 0.0,
    }


async def test_sqlite_migrations_run_once_and_reopen_keeps_rows(db_path: Path) -> None:
    store = await opened(db_path)
    await store.write_batch([make_row(n) for n in range(3)])
    await store.aclose()
    for _ in range(2):
        store = await opened(db_path)
        assert await store.count() == 3
        await store.aclose()
    assert [v for (v,) in query(db_path, "SELECT version FROM schema_migrations")] == [1]


async def test_sqlite_two_stores_opening_one_new_file_migrate_once(db_path: Path) -> None:
    stores = await asyncio.gather(opened(db_path), opened(db_path))
    await stores[0].write_batch([make_row(1)])
    assert await stores[1].get("req-000001") == make_row(1)
    for store in stores:
        await store.aclose()
    assert query(db_path, "SELECT version FROM schema_migrations") == [(1,)]


async def test_sqlite_refuses_a_schema_newer_than_the_code(db_path: Path) -> None:
    await (await opened(db_path)).aclose()
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute("INSERT INTO schema_migrations VALUES (99, 0)")
    conn.close()
    store = SQLiteStore(db_path)
    with pytest.raises(StoreError, match="schema version 99"):
        await store.open()
    with pytest.raises(StoreError, match="not open"):
        await store.count()


async def test_sqlite_a_failing_batch_writes_nothing(db_path: Path) -> None:
    store = await opened(db_path)
    bad = make_row(2, tenant=None)  # violates NOT NULL in the middle of the batch
    with pytest.raises(StoreError, match="NOT NULL"):
        await store.write_batch([make_row(1), bad, make_row(3)])
    assert await store.count() == 0
    await store.write_batch([make_row(4)])  # the connection is still usable
    assert await store.count() == 1
    await store.aclose()


async def test_sqlite_reports_an_unusable_path(tmp_path: Path) -> None:
    (tmp_path / "ledger.db").mkdir()  # a directory where the file should be
    store = SQLiteStore(tmp_path / "ledger.db")
    with pytest.raises(StoreError, match=r"ledger\.db"):
        await store.open()


async def test_sqlite_runs_every_statement_off_the_event_loop(db_path: Path) -> None:
    store = await opened(db_path)
    threads: set[str] = set()

    def trace(_statement: str) -> None:
        threads.add(threading.current_thread().name)

    await store._call(lambda conn: conn.set_trace_callback(trace))
    await store.write_batch([make_row(1)])
    await store.get("req-000001")
    await store.recent()
    await store.count()
    await store.aclose()
    assert threads
    assert threading.current_thread().name not in threads
    assert all(name.startswith("turnout-ledger") for name in threads)
