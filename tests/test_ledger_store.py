"""One contract for every ledger store backend (memory, SQLite, PostgreSQL), one more for the
durable ones (reopening, migrations, atomic batches), then what only SQLite has to prove (files,
WAL, its own thread). PostgreSQL-only checks live in ``test_ledger_postgres.py``. A new backend
joins by adding its kind to BACKENDS.

PostgreSQL runs at ``TURNOUT_TEST_POSTGRES_DSN`` (default 127.0.0.1:5432, database ``test``);
each test gets a schema of its own, dropped afterwards. Without a server those cases skip."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import socket
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.config import StoreConfig
from turnout.ledger import sqlite as sqlite_backend
from turnout.ledger.memory import MemoryStore
from turnout.ledger.record import AttemptRecord, LedgerRow
from turnout.ledger.sqlite import SQLiteStore
from turnout.ledger.store import LedgerStore, StoreError, open_store

ALL_VERSIONS = list(range(1, len(sqlite_backend.MIGRATIONS) + 1))

BACKENDS = ["memory", "sqlite", "postgres"]
DURABLE = ["sqlite", "postgres"]
POSTGRES_DSN = os.environ.get("TURNOUT_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_reachable() -> bool:
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return False
    url = urlsplit(POSTGRES_DSN)
    try:
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 5432), timeout=0.5):
            return True
    except OSError:
        return False


needs_postgres = pytest.mark.skipif(not postgres_reachable(), reason=f"no PostgreSQL at {POSTGRES_DSN}")


def unique_schema() -> str:
    return f"turnout_test_{uuid.uuid4().hex[:12]}"


async def postgres_sql(schema: str, statement: str, *args: object) -> list[tuple[Any, ...]]:
    """Run one statement on its own connection, with ``schema`` first on the search path."""
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_DSN, server_settings={"search_path": schema})
    try:
        return [tuple(record.values()) for record in await conn.fetch(statement, *args)]
    finally:
        await conn.close()


async def drop_schema(schema: str) -> None:
    await postgres_sql("public", f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def postgres_store(schema: str) -> LedgerStore:
    from turnout.ledger.postgres import PostgresStore

    return PostgresStore(POSTGRES_DSN, schema=schema)


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
        cache_hit=False,  # False, not None: the two must stay apart
        capture_mode="redacted",
        human_review=True,
        escalated=False,
        outcome_value=-12.5,
        outcome_at=1_700_000_060.654321,
        episode_id="ep-7",
        labels=["refund", "vip"],
        usage_estimated=False,  # False, not None: "the upstream said" apart from "no answer"
    )


@contextlib.asynccontextmanager
async def opened_ledger(kind: str, tmp_path: Path) -> AsyncIterator[LedgerStore]:
    """A new, open ledger store of ``kind`` (PostgreSQL: in a schema of its own, dropped after;
    skipped where there is no PostgreSQL), closed after."""
    if kind == "postgres":
        if not postgres_reachable():
            pytest.skip(f"no PostgreSQL at {POSTGRES_DSN}")
        schema = unique_schema()
        opened = postgres_store(schema)
        await opened.open()
        try:
            yield opened
        finally:
            await opened.aclose()
            await drop_schema(schema)
        return
    opened = open_store(StoreConfig(kind=kind, path=str(tmp_path / "state" / "ledger.db")))
    await opened.open()
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LedgerStore]:
    async with opened_ledger(request.param, tmp_path) as opened:
        yield opened


# --- the contract -----------------------------------------------------------------------------


async def test_a_new_store_is_empty(store: LedgerStore) -> None:
    assert await store.count() == 0
    assert await store.recent() == []
    assert await store.get("req-000001") is None


async def test_every_field_round_trips(store: LedgerStore) -> None:
    row = full_row(1)
    await store.write_batch([row])
    assert await store.get(row.request_id) == row


async def test_text_with_nul_and_unusual_characters_round_trips(store: LedgerStore) -> None:
    """A caller's episode id or an upstream's model name may hold anything: stored whole."""
    odd = make_row(1, episode_id="ep\x00tail", model_version='m\x00v \u2028 "q" \\u0000 é', user="u\x01")
    plain = make_row(2, episode_id="ep-2")
    await store.write_batch([odd, plain])
    expected = odd
    if type(store).__name__ == "PostgresStore":  # its text cannot hold NUL: U+FFFD stands in
        expected = make_row(1, episode_id="ep\ufffdtail", model_version='m\ufffdv \u2028 "q" \\u0000 é', user="u\x01")
    assert await store.get(odd.request_id) == expected
    assert await store.get(plain.request_id) == plain


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
    assert got.labels is None  # never labelled, not an empty list


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


async def test_time_ties_order_request_ids_bytewise(store: LedgerStore) -> None:
    ids = ["ab", "a-c", "B", "a", "b", "A_1", "é"]  # a linguistic collation would order these differently
    await store.write_batch([make_row(0, request_id=i, started_at=5.0) for i in ids])
    assert [r.request_id for r in await store.recent()] == sorted(ids, reverse=True)


async def test_recent_refuses_a_negative_limit(store: LedgerStore) -> None:
    with pytest.raises(ValueError, match="negative"):
        await store.recent(-1)


async def test_writing_a_request_id_again_keeps_the_first_row(store: LedgerStore) -> None:
    await store.write_batch([make_row(1, status=200)])
    await store.write_batch([make_row(1, status=502), make_row(2)])  # a replayed batch, one row new
    assert await store.count() == 2
    got = await store.get("req-000001")
    assert got is not None
    assert got.status == 200


async def test_a_replayed_row_does_not_undo_feedback(store: LedgerStore) -> None:
    row = make_row(1, status=200)
    await store.write_batch([row])
    assert await store.set_outcome(row.request_id, row.tenant, "success", None, None, 1.0, None, at=9.0)
    await store.write_batch([make_row(1, status=200)])  # the same row again, from the journal
    got = await store.get(row.request_id)
    assert got is not None
    assert (got.outcome, got.outcome_value) == ("success", 1.0)


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
    assert got.labels is not None
    got.labels.clear()
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


async def test_concurrent_batches_sharing_ids_end_with_one_row_each(store: LedgerStore) -> None:
    # The same 100 ids in opposite orders from 10 batches at once: no deadlock, no duplicate.
    forward = [make_row(n, status=200) for n in range(100)]
    backward = [make_row(n, status=500) for n in reversed(range(100))]
    await asyncio.gather(*(store.write_batch(forward if i % 2 else backward) for i in range(10)))
    assert await store.count() == 100
    statuses = {row.status for row in await store.recent(100)}
    assert statuses <= {200, 500}


async def test_the_first_of_two_rows_with_one_id_in_a_batch_wins(store: LedgerStore) -> None:
    await store.write_batch([make_row(2, status=1), make_row(1), make_row(2, status=2)])
    got = await store.get("req-000002")
    assert got is not None
    assert got.status == 1
    assert await store.count() == 2


async def test_a_batch_across_several_chunks_lands_whole_in_order_with_the_first_of_each_id(
    store: LedgerStore,
) -> None:
    # SQLite writes full chunks of 64 rows as one statement and the rest in chunks of powers of
    # two: ids repeated inside a chunk, across chunks and in the rest all keep their first row.
    rows = [dataclasses.replace(full_row(n), request_id=f"req-{n:06d}") for n in range(64 * 2 + 7)]
    rows[10] = dataclasses.replace(rows[3], status=499)  # a repeat inside the first chunk
    rows[100] = dataclasses.replace(rows[20], status=498)  # in the second chunk, of one in the first
    rows[130] = dataclasses.replace(rows[129], status=497)  # in the rest
    await store.write_batch(rows)
    assert await store.count() == 64 * 2 + 7 - 3
    assert (await store.get("req-000003")) == rows[3]
    assert (await store.get("req-000020")) == rows[20]
    assert (await store.get("req-000129")) == rows[129]
    assert (await store.get("req-000134")) == rows[134]


def shaped_row(n: int) -> LedgerRow:
    """One of seven shapes (which fields are None, booleans True, False or None) by ``n``."""
    shapes: list[dict[str, Any]] = [
        {},
        {"status": 200, "target": "a", "prompt_tokens": 3, "cost_usd": 0.5, "cache_hit": False},
        {"stream": True, "fallback": True, "cache_hit": True, "usage_estimated": True, "live_pass": False},
        {"evaluation": True, "status": 500, "error_class": "internal"},
        {"error_class": "timeout", "attempts": [AttemptRecord("a", "r", "timeout", 1.0)], "escalated": True},
        {"user": "u", "episode_id": f"ep-{n % 3}", "labels": ["x"], "human_review": False},
        {"status": 499, "usage_estimated": False, "documents": 0, "repairs": 0, "live_pass": True},
        {"stream": False, "fallback": False, "cost_usd": 0.0, "endpoint": "tasks", "constraints": ""},
    ]
    return dataclasses.replace(make_row(n), **shapes[n % len(shapes)])


async def test_rows_of_many_shapes_in_one_batch_round_trip_each_exactly(store: LedgerStore) -> None:
    # SQLite leaves a row's None fields out of its statement and groups rows by which fields
    # they set: every shape, across chunk sizes, reads back as written (False stays False,
    # 0 stays 0, None stays None).
    rows = [shaped_row(n) for n in range(64 * 3 + 29)]
    await store.write_batch(rows)
    assert await store.count() == len(rows)
    for row in rows:
        assert await store.get(row.request_id) == row
    assert await store.rows_between(0, 2e9) == sorted(rows, key=lambda r: (r.started_at, r.request_id))


async def test_the_first_row_of_an_id_wins_whatever_the_shapes_around_it(store: LedgerStore) -> None:
    # Shape A first, then the id's first row in shape B, then its repeat in shape A: grouping
    # by shape must not put the repeat (A) before the first row (B).
    first = make_row(2, status=201, user="first")
    rows = [make_row(1, status=200), make_row(3, status=200, user="b"), first, make_row(2, status=202)]
    await store.write_batch(rows)
    assert await store.get("req-000002") == first
    assert await store.count() == 3


# Shapes with as many None fields as each other, set in different columns: the SQLite store
# checks a row against the last row's shape by its count of Nones and the columns that shape
# sets, so two such shapes in a row must still go to their own statements.
_TWIN_SHAPES: list[dict[str, Any]] = [
    {"user": "u", "release": None},
    {"user": None, "release": "r@1"},
    {"user": "u", "release": "r@1", "cache_hit": None},
    {"user": None, "release": None, "cache_hit": True, "cost_saved_usd": 0.25},
    {"status": 200, "target": "a", "cost_usd": 0.5, "cache_hit": False},
]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(range(len(_TWIN_SHAPES))), st.integers(1, 70)), min_size=1, max_size=6))
def test_runs_of_shapes_that_differ_only_in_which_fields_are_set_round_trip(runs: list[tuple[int, int]]) -> None:
    rows: list[LedgerRow] = []
    for shape, length in runs:
        for _ in range(length):
            rows.append(dataclasses.replace(make_row(len(rows)), **_TWIN_SHAPES[shape]))
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        sqlite_backend._migrate(conn, ":memory:")
        for sql, params in sqlite_backend._statements(rows):
            conn.execute(sql, params)
        found = conn.execute(f"{sqlite_backend._SELECT} ORDER BY started_at").fetchall()
    finally:
        conn.close()
    assert [sqlite_backend._decode(record) for record in found] == rows


async def test_a_closed_store_refuses_calls_and_closes_twice(store: LedgerStore) -> None:
    await store.aclose()
    await store.aclose()
    with pytest.raises(StoreError):
        await store.count()
    with pytest.raises(StoreError):
        await store.write_batch([make_row(1)])
    with pytest.raises(StoreError):
        await store.set_outcome("req-000001", "acme", "success", None, None, None, None, 1.0)


# --- outcomes (set_outcome) ---------------------------------------------------------------------


async def test_set_outcome_fills_the_outcome_fields_only(store: LedgerStore) -> None:
    row = make_row(1, status=200, cache_hit=True, capture_mode="metadata")
    await store.write_batch([row, make_row(2)])
    assert await store.set_outcome("req-000001", "acme", "resolved", True, False, 3.25, "ep-1", 1_700_000_100.5)
    expected = dataclasses.replace(
        row,
        outcome="resolved",
        human_review=True,
        escalated=False,
        outcome_value=3.25,
        episode_id="ep-1",
        outcome_at=1_700_000_100.5,
    )
    assert await store.get("req-000001") == expected
    assert await store.get("req-000002") == make_row(2)  # the other row is untouched


async def test_set_outcome_keeps_what_a_none_leaves_out(store: LedgerStore) -> None:
    await store.write_batch([make_row(1)])
    assert await store.set_outcome("req-000001", "acme", "resolved", None, None, 1.0, "ep-1", 10.0)
    assert await store.set_outcome("req-000001", "acme", None, True, True, None, None, 20.0)
    got = await store.get("req-000001")
    assert got is not None
    fields = (got.outcome, got.human_review, got.escalated, got.outcome_value, got.episode_id, got.outcome_at)
    assert fields == ("resolved", True, True, 1.0, "ep-1", 20.0)


async def test_set_outcome_is_scoped_to_the_tenant(store: LedgerStore) -> None:
    await store.write_batch([make_row(1, tenant="acme"), make_row(2, tenant="globex")])
    # Another tenant's request id looks exactly like one that does not exist.
    assert await store.set_outcome("req-000001", "globex", "stolen", True, True, 9.0, "ep-x", 5.0) is False
    assert await store.set_outcome("req-999999", "globex", "stolen", True, True, 9.0, "ep-x", 5.0) is False
    assert await store.get("req-000001") == make_row(1, tenant="acme")
    assert await store.set_outcome("req-000002", "globex", "ok", None, None, None, None, 5.0) is True
    got = await store.get("req-000002")
    assert got is not None
    assert (got.tenant, got.outcome, got.outcome_at) == ("globex", "ok", 5.0)


async def test_set_outcome_stores_labels_and_none_keeps_them(store: LedgerStore) -> None:
    await store.write_batch([make_row(1), make_row(2)])
    assert await store.set_outcome("req-000001", "acme", "success", None, None, None, None, 1.0, labels=["b", "a"])
    assert await store.set_outcome("req-000001", "acme", None, True, None, None, None, 2.0)  # labels left out
    got = await store.get("req-000001")
    assert got == make_row(1, outcome="success", human_review=True, outcome_at=2.0, labels=["b", "a"])  # in order
    assert await store.get("req-000002") == make_row(2)  # untouched: still never labelled


async def test_labels_are_replaced_whole_and_idempotent(store: LedgerStore) -> None:
    await store.write_batch([make_row(1, labels=["refund", "vip"])])
    for _ in range(2):
        assert await store.set_outcome("req-000001", "acme", None, None, True, None, None, 3.0, labels=["churn"])
        assert await store.get("req-000001") == make_row(1, escalated=True, outcome_at=3.0, labels=["churn"])
    assert await store.set_outcome("req-000001", "acme", None, None, None, None, None, 4.0, labels=[])
    assert await store.get("req-000001") == make_row(1, escalated=True, outcome_at=4.0, labels=[])  # cleared


async def test_labels_are_scoped_to_the_tenant_and_not_shared(store: LedgerStore) -> None:
    await store.write_batch([make_row(1)])
    assert await store.set_outcome("req-000001", "globex", None, None, None, None, None, 1.0, labels=["x"]) is False
    labels = ["mine"]
    assert await store.set_outcome("req-000001", "acme", None, None, None, None, None, 1.0, labels=labels)
    labels.append("later")  # the caller's list is not the stored one
    got = await store.get("req-000001")
    assert got is not None and got.labels == ["mine"]


async def test_concurrent_outcomes_and_batches(store: LedgerStore) -> None:
    await store.write_batch([make_row(n) for n in range(200)])
    results = await asyncio.gather(
        *(store.set_outcome(f"req-{n:06d}", "acme", f"o{n}", None, None, float(n), None, 1.0) for n in range(200)),
        *(store.write_batch([make_row(n)]) for n in range(200, 250)),
    )
    assert results[:200] == [True] * 200
    assert await store.count() == 250
    got = await store.get("req-000123")
    assert got is not None
    assert (got.outcome, got.outcome_value) == ("o123", 123.0)


async def test_attempt_errors_counts_every_failed_attempt_of_the_window_by_target_and_class(
    store: LedgerStore,
) -> None:
    def attempt(target: str, error_class: str | None) -> AttemptRecord:
        return AttemptRecord(target=target, replica="r", error_class=error_class, latency_ms=1.0)

    rows = [make_row(n, attempts=[attempt("a", "timeout_ttft"), attempt("b", None)]) for n in range(30)]
    rows += [make_row(30 + n, attempts=[attempt("a", "upstream_5xx"), attempt("b", "upstream_5xx")]) for n in range(5)]
    rows += [make_row(35, attempts=[]), make_row(36, attempts=[attempt("c", "connect")])]
    await store.write_batch(rows)
    found = await store.attempt_errors(1_700_000_000.0, 1_700_000_036.0)  # row 36 is past the end
    assert found == {("a", "timeout_ttft"): 30, ("a", "upstream_5xx"): 5, ("b", "upstream_5xx"): 5}
    assert await store.attempt_errors(1_700_000_010.0, 1_700_000_011.0) == {("a", "timeout_ttft"): 1}
    assert await store.attempt_errors(0.0, 1.0) == {}


async def test_aged_rows_walks_oldest_first_in_batches_through_equal_times(store: LedgerStore) -> None:
    """The retention purge's walk: each row between the bounds exactly once, oldest first,
    however the batches fall among rows that started at the same time."""
    times = [100.0, 100.0, 100.0, 101.0, 102.0, 102.0, 102.0, 102.0, 103.0, 104.0, 105.0]
    await store.write_batch([make_row(i, started_at=t, tenant=f"t{i % 2}") for i, t in enumerate(times)])
    walked: list[tuple[float, str, str]] = []
    after = None
    while True:
        batch = await store.aged_rows(100.0, 105.0, 3, after)
        walked += [(r.started_at, r.request_id, r.tenant) for r in batch]
        if len(batch) < 3:
            break
        after = (batch[-1].started_at, batch[-1].order)
    assert sorted(walked) == [(t, f"req-{i:06d}", f"t{i % 2}") for i, t in enumerate(times) if t < 105.0]
    assert [w[0] for w in walked] == sorted(w[0] for w in walked)
    assert [r.started_at for r in await store.aged_rows(101.0, 103.0, 100)] == [101.0, 102.0, 102.0, 102.0, 102.0]
    assert await store.aged_rows(-math.inf, 100.0, 10) == []
    assert len(await store.aged_rows(-math.inf, math.inf, 0)) == 0


async def test_delete_rows_says_how_many_of_each_tenant_and_task_went(store: LedgerStore) -> None:
    await store.write_batch(
        [make_row(1), make_row(2), make_row(3, task="faq"), make_row(4, tenant="globex"), make_row(5)]
    )
    gone = await store.delete_rows(["req-000001", "req-000002", "req-000003", "req-000004", "req-000004", "nope"])
    assert gone == {("acme", "support-reply"): 2, ("acme", "faq"): 1, ("globex", "support-reply"): 1}
    assert [r.request_id for r in await store.recent()] == ["req-000005"]
    assert await store.delete_rows([]) == {}
    assert await store.delete_rows(["req-000001"]) == {}


async def test_every_backend_satisfies_the_protocol() -> None:
    stores: list[LedgerStore] = [MemoryStore(), SQLiteStore(":memory:")]  # checked by mypy
    schema = unique_schema()
    if postgres_reachable():
        from turnout.ledger.postgres import PostgresStore

        stores.append(PostgresStore(POSTGRES_DSN, schema=schema))
    try:
        for store in stores:  # and SQLite also works without a file
            await store.open()
            await store.write_batch([make_row(1)])
            assert await store.get("req-000001") == make_row(1)
            await store.aclose()
    finally:
        if len(stores) > 2:
            await drop_schema(schema)


@pytest.mark.parametrize("kind", BACKENDS)
async def test_open_store_builds_the_configured_backend(kind: str, tmp_path: Path) -> None:
    if kind == "postgres":
        pytest.importorskip("asyncpg")
    store = open_store(StoreConfig(kind=kind, path=str(tmp_path / "l.db"), dsn=POSTGRES_DSN))
    assert type(store).__module__ == f"turnout.ledger.{kind}"
    with pytest.raises(StoreError, match="not open"):
        await store.count()


# --- the durable backends: reopening, migrations, atomic batches -------------------------------


@dataclasses.dataclass
class Place:
    """Where a durable store keeps its rows (a SQLite file, a PostgreSQL schema): fresh stores on
    it, raw SQL against it, and the statements the first schema version was created with."""

    kind: str
    new: Callable[[], LedgerStore]
    sql: Callable[[str], Awaitable[list[tuple[Any, ...]]]]
    v1: list[str]

    async def opened(self) -> LedgerStore:
        store = self.new()
        await store.open()
        return store

    async def versions(self) -> list[int]:
        return [v for (v,) in await self.sql("SELECT version FROM schema_migrations ORDER BY version")]


@pytest.fixture(params=DURABLE)
async def place(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Place]:
    if request.param == "sqlite":
        path = tmp_path / "ledger.db"

        def run(statement: str) -> list[tuple[Any, ...]]:
            conn = sqlite3.connect(path)
            try:
                with conn:
                    return conn.execute(statement).fetchall()
            finally:
                conn.close()

        async def sqlite_sql(statement: str) -> list[tuple[Any, ...]]:
            return await asyncio.to_thread(run, statement)

        v1 = [
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)",
            *sqlite_backend.MIGRATIONS[0],
        ]
        yield Place("sqlite", lambda: SQLiteStore(path), sqlite_sql, v1)
        return
    if not postgres_reachable():
        pytest.skip(f"no PostgreSQL at {POSTGRES_DSN}")
    from turnout.ledger import postgres as postgres_backend

    schema = unique_schema()
    v1 = [
        f'CREATE SCHEMA "{schema}"',
        "CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_at double precision NOT NULL)",
        *(statement.format(p="") for statement in postgres_backend.MIGRATIONS[0]),
    ]
    try:
        yield Place("postgres", lambda: postgres_store(schema), lambda sql: postgres_sql(schema, sql), v1)
    finally:
        await drop_schema(schema)


async def test_reopening_keeps_rows_and_migrations_run_once(place: Place) -> None:
    store = await place.opened()
    await store.write_batch([full_row(1), make_row(2), make_row(3)])
    await store.aclose()
    for _ in range(2):
        store = await place.opened()
        assert await store.count() == 3
        assert await store.get("req-000001") == full_row(1)
        await store.aclose()
    assert await place.versions() == ALL_VERSIONS


async def test_two_stores_opening_one_new_place_migrate_once(place: Place) -> None:
    stores = await asyncio.gather(place.opened(), place.opened(), place.opened())
    await stores[0].write_batch([make_row(1)])
    assert await stores[1].get("req-000001") == make_row(1)
    for store in stores:
        await store.aclose()
    assert await place.versions() == ALL_VERSIONS


async def test_a_v1_ledger_migrates_in_place(place: Place) -> None:
    # Written the way turnout wrote ledgers before schema 2: its statements, one old row whose
    # attempts predate offset_ms.
    for statement in [
        *place.v1,
        "INSERT INTO schema_migrations VALUES (1, 0)",
        """INSERT INTO requests (request_id, started_at, tenant, task, data_class, stream, "user", status,
            attempts, fallback, cost_usd, latency_ms, outcome)
           VALUES ('req-old', 1700000000.5, 'acme', 'support-reply', 'internal', TRUE, 'u-1', 200,
            '[{"target": "t", "replica": "r", "error_class": null, "latency_ms": 1.5}]', FALSE, 0.25, 9.5,
            'success')""",
    ]:
        await place.sql(statement)
    old = LedgerRow(
        "req-old",
        1_700_000_000.5,
        "acme",
        "support-reply",
        "internal",
        True,
        user="u-1",
        status=200,
        attempts=[AttemptRecord("t", "r", None, 1.5)],
        cost_usd=0.25,
        latency_ms=9.5,
        outcome="success",
    )
    store = await place.opened()
    assert await place.versions() == ALL_VERSIONS
    assert await store.get("req-old") == old  # the new fields read back as None
    assert await store.set_outcome("req-old", "acme", None, True, None, 2.0, "ep-9", 7.0, labels=["legacy"])
    await store.write_batch([full_row(1)])
    await store.aclose()
    store = await place.opened()
    assert await store.get("req-old") == dataclasses.replace(
        old, human_review=True, outcome_value=2.0, episode_id="ep-9", outcome_at=7.0, labels=["legacy"]
    )
    assert await store.get("req-000001") == full_row(1)
    assert await store.count() == 2
    await store.aclose()
    assert await place.versions() == ALL_VERSIONS


async def test_a_schema_newer_than_the_code_is_refused(place: Place) -> None:
    await (await place.opened()).aclose()
    await place.sql("INSERT INTO schema_migrations VALUES (99, 0)")
    store = place.new()
    with pytest.raises(StoreError, match="schema version 99"):
        await store.open()
    with pytest.raises(StoreError, match="not open"):
        await store.count()


async def test_a_failing_batch_writes_nothing(place: Place) -> None:
    store = await place.opened()
    bad = make_row(2, tenant=None)  # violates NOT NULL in the middle of the batch
    with pytest.raises(StoreError, match=r"(?i)not.?null") as caught:
        await store.write_batch([make_row(1), bad, make_row(3)])
    assert "tenant" in str(caught.value)
    assert "req-000002" not in str(caught.value)  # the failing row is not quoted: safe to log
    assert await store.count() == 0
    await store.write_batch([make_row(4)])  # the store is still usable
    assert await store.count() == 1
    await store.aclose()


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
    names = [r[0] for r in query(db_path, "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")]
    indexes = {name: [c[2] for c in query(db_path, f"PRAGMA index_info({name})")] for name in names}
    assert indexes == {
        "requests_started_at": ["started_at"],
        "requests_task_release_started_at": ["task", "release", "started_at"],
        "requests_tenant_episode": ["tenant", "episode_id"],
    }


async def test_feedback_by_episode_reads_an_index_not_the_table(db_path: Path) -> None:
    store = await opened(db_path)
    await store.aclose()
    conn = sqlite3.connect(db_path)
    try:
        params = (None, None, None, None, None, 1.0, "ep-1", "acme")
        plan = " ".join(
            str(r[-1]) for r in conn.execute("EXPLAIN QUERY PLAN " + sqlite_backend._SET_OUTCOME_BY_EPISODE, params)
        )
    finally:
        conn.close()
    assert "requests_tenant_episode" in plan


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
        "cost_usd": None,
    }


async def test_sqlite_stores_booleans_as_integers_and_none_as_null(db_path: Path) -> None:
    # A reader using SQL sees 1 and 0 (as before the rows left None fields out), and NULL.
    store = await opened(db_path)
    await store.write_batch([full_row(1), make_row(2)])
    await store.aclose()
    found = query(
        db_path,
        "SELECT request_id, stream, typeof(stream), fallback, cache_hit, typeof(cache_hit), "
        "usage_estimated, typeof(usage_estimated), typeof(user), typeof(cost_usd) FROM requests ORDER BY request_id",
    )
    assert found == [
        ("req-000001", 1, "integer", 1, 0, "integer", 0, "integer", "text", "real"),
        ("req-000002", 0, "integer", 0, None, "null", None, "null", "null", "null"),
    ]


async def test_sqlite_stores_labels_as_json_text(db_path: Path) -> None:
    store = await opened(db_path)
    await store.write_batch([full_row(1), make_row(2)])
    assert await store.set_outcome("req-000002", "acme", None, None, None, None, None, 1.0, labels=["a", "é"])
    await store.aclose()
    raw = query(db_path, "SELECT request_id, labels FROM requests ORDER BY request_id")
    assert [(rid, json.loads(text)) for rid, text in raw if isinstance(text, str)] == [
        ("req-000001", ["refund", "vip"]),
        ("req-000002", ["a", "é"]),
    ]
    assert query(db_path, "SELECT typeof(labels) FROM requests") == [("text",), ("text",)]


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


@pytest.mark.parametrize("kind", DURABLE)
async def test_rows_between_decodes_its_rows_off_the_event_loop(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The console's overview reads up to 100,000 rows a load: turned into ``LedgerRow``s on the
    event loop they stalled every request the gateway was serving for a second or more."""
    backend: ModuleType = sqlite_backend
    store: LedgerStore = SQLiteStore(tmp_path / "ledger.db")
    if kind == "postgres":
        if not postgres_reachable():
            pytest.skip(f"no PostgreSQL at {POSTGRES_DSN}")
        from turnout.ledger import postgres as backend

        schema = unique_schema()
        store = postgres_store(schema)
    decode = backend._decode
    threads: set[str] = set()

    def traced(record: Any) -> LedgerRow:
        threads.add(threading.current_thread().name)
        row: LedgerRow = decode(record)
        return row

    await store.open()
    try:
        await store.write_batch([make_row(n) for n in range(3)])
        monkeypatch.setattr(backend, "_decode", traced)
        found = await store.rows_between(0, 2e9)
    finally:
        await store.aclose()
        if kind == "postgres":
            await drop_schema(schema)
    assert [r.request_id for r in found] == [make_row(n).request_id for n in range(3)]
    assert threads and threading.current_thread().name not in threads
