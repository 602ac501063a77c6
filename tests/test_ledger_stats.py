"""``release_stats``: one contract for every ledger backend (memory, SQLite, PostgreSQL), the
figures the canary controller compares. PostgreSQL computes them in SQL, the others in Python
(``summarize``), so each case checks that the two agree on the definitions in ``ReleaseStats``.

PostgreSQL runs as in ``test_ledger_store.py`` (``TURNOUT_TEST_POSTGRES_DSN``, one schema per
test, dropped afterwards); without a server those cases skip."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.test_ledger_store import (
    BACKENDS,
    drop_schema,
    make_row,
    opened_ledger,
    postgres_reachable,
    postgres_sql,
    postgres_store,
    unique_schema,
)
from turnout.ledger import sqlite as sqlite_backend
from turnout.ledger.record import LedgerRow
from turnout.ledger.store import EVAL_TENANT, LedgerStore, ReleaseStats, percentile, summarize

ALL_VERSIONS = list(range(1, len(sqlite_backend.MIGRATIONS) + 1))

T0 = 1_700_000_000.0


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LedgerStore]:
    async with opened_ledger(request.param, tmp_path) as opened:
        yield opened


def row(n: int, release: str | None = "r2", **fields: object) -> LedgerRow:
    defaults: dict[str, object] = {"release": release, "status": 200, "latency_ms": 100.0, "cost_usd": 0.01}
    return make_row(n, **(defaults | fields))


async def test_an_unknown_release_has_empty_stats(store: LedgerStore) -> None:
    await store.write_batch([row(1)])
    assert await store.release_stats("support-reply", "nope", 0.0) == ReleaseStats()
    assert await store.release_stats("other-task", "r2", 0.0) == ReleaseStats()
    empty = await store.release_stats("support-reply", "nope", 0.0)
    assert (empty.served, empty.error_rate, empty.cost_per_request, empty.success_rate) == (0, 0.0, 0.0, None)


async def test_the_window_is_one_release_of_one_task_since_a_time(store: LedgerStore) -> None:
    await store.write_batch(
        [
            row(1),  # before the window
            row(10),  # at its start: counted
            row(11),
            row(12, release="r1"),  # the other side
            row(13, task="other-task"),
            row(14, release=None),  # a chat request without releases
        ]
    )
    stats = await store.release_stats("support-reply", "r2", T0 + 10)
    assert (stats.requests, stats.served) == (2, 2)
    assert stats.cost_usd == pytest.approx(0.02)


async def test_the_window_may_end_before_now(store: LedgerStore) -> None:
    # At 100% the canary is compared with the active release's rows before its step began.
    await store.write_batch([row(1), row(10), row(11), row(12)])
    stats = await store.release_stats("support-reply", "r2", T0 + 10, until=T0 + 12)
    assert stats.requests == 2  # rows 10 and 11; the end is excluded


async def test_eval_rows_are_not_live_traffic(store: LedgerStore) -> None:
    # `turnout eval` forces a release on golden cases: those rows say nothing of live traffic.
    evals = [row(n, tenant=EVAL_TENANT, status=500, error_class="internal") for n in (2, 3, 4)]
    await store.write_batch([row(1), *evals, row(5, tenant=EVAL_TENANT, outcome="failure")])
    stats = await store.release_stats("support-reply", "r2", 0.0)
    assert (stats.requests, stats.errors, stats.outcomes) == (1, 0, 0)


async def test_eval_rows_of_a_named_tenant_are_not_live_traffic_either(store: LedgerStore) -> None:
    """Seen: `turnout eval --tenant acme` wrote acme's rows, which the canary judged as live
    traffic (its golden cases' failures as the release's error rate). Eval rows are marked."""
    evals = [row(n, tenant="acme", status=500, error_class="internal", evaluation=True) for n in (2, 3, 4)]
    slow = row(5, tenant="acme", latency_ms=90_000.0, outcome="failure", evaluation=True)
    await store.write_batch([row(1, tenant="acme"), row(6, tenant="acme", evaluation=False), *evals, slow])
    stats = await store.release_stats("support-reply", "r2", 0.0)
    assert (stats.requests, stats.errors, stats.outcomes, stats.p95_latency_ms) == (2, 0, 0, 100.0)


async def test_cache_hits_are_not_the_releases_answers(store: LedgerStore) -> None:
    """Seen: a canary on a cached task, its model as fast as the active one's, rolled back at
    its first step (p95 53 ms vs 2 ms, ×30): the active side's warm cache answered in a
    millisecond and for nothing. A hit replays an answer counted when it was generated."""
    hits = [row(n, latency_ms=1.0, cost_usd=0.0, cache_hit=True) for n in (2, 3, 4, 5)]
    await store.write_batch([row(1, cache_hit=False), *hits, row(6)])
    stats = await store.release_stats("support-reply", "r2", 0.0)
    assert (stats.requests, stats.p95_latency_ms) == (2, 100.0)
    assert stats.cost_per_request == pytest.approx(0.01)


async def test_an_upstream_rejection_is_the_releases_error_not_the_callers(store: LedgerStore) -> None:
    rows = [
        row(1),
        # the upstream refused the body the release built (its template, its model name)
        row(2, status=400, error_class="upstream_rejected"),
        row(3, status=404, error_class="upstream_rejected"),
        row(4, status=400, error_class="context_length_exceeded"),  # the release's target or prompt
        # the caller's own: a bad body, a key, an unknown task, its quota
        row(5, status=400, error_class="invalid_request_error", latency_ms=1.0),
        row(6, status=401, error_class="invalid_api_key", latency_ms=1.0),
        row(7, status=404, error_class="model_not_found", latency_ms=1.0),
        row(8, status=429, error_class="rate_limit_exceeded", latency_ms=1.0),
    ]
    await store.write_batch(rows)
    stats = await store.release_stats("support-reply", "r2", 0.0)
    assert (stats.requests, stats.caller_errors, stats.served) == (8, 4, 4)
    assert (stats.errors, stats.provider_errors) == (3, 0)
    assert stats.error_rate == pytest.approx(3 / 4)


async def test_errors_caller_errors_and_provider_errors_are_told_apart(store: LedgerStore) -> None:
    rows = [
        row(1),
        row(2, status=400, error_class="invalid_request_error", latency_ms=1.0),  # the caller's
        row(3, status=429, error_class="rate_limited", latency_ms=1.0),
        row(4, status=499, error_class="client_disconnected", latency_ms=1.0),
        row(5, status=500, error_class="internal"),  # the gateway's or the release's
        row(6, status=502, error_class="output_invalid"),  # the release's: answered off-schema
        row(7, status=502, error_class="all_targets_failed"),  # upstream
        row(8, status=503, error_class="all_targets_failed"),
        row(9, status=504, error_class="all_targets_failed"),
        row(10, status=502, error_class="timeout_total"),  # a stream broken upstream
        row(11, status=200, error_class="odd"),  # an error class on a non-4xx row is an error
        row(12, status=200, cost_usd=None),  # no cost: counts as 0
    ]
    await store.write_batch(rows)
    stats = await store.release_stats("support-reply", "r2", 0.0)
    assert stats.requests == 12
    assert stats.caller_errors == 3
    assert stats.served == 9
    assert stats.errors == 7  # rows 5-11
    assert stats.provider_errors == 4  # rows 7-10
    assert stats.error_rate == pytest.approx(7 / 9)
    assert stats.provider_error_rate == pytest.approx(4 / 9)
    assert stats.cost_usd == pytest.approx(0.08)  # caller errors cost nothing here, nor does row 12
    assert stats.p95_latency_ms == pytest.approx(100.0)  # the 1 ms caller errors are left out


async def test_p95_interpolates_between_ranks_like_percentile_cont(store: LedgerStore) -> None:
    # Written out of order, so a backend that forgot to sort would show.
    await store.write_batch([row(n, latency_ms=float((n * 37) % 100 + 1)) for n in range(100)])
    stats = await store.release_stats("support-reply", "r2", 0.0)
    assert stats.p95_latency_ms == pytest.approx(95.05)
    await store.write_batch([row(1000, release="r3", latency_ms=42.0)])
    assert (await store.release_stats("support-reply", "r3", 0.0)).p95_latency_ms == 42.0


async def test_outcomes_come_from_feedback(store: LedgerStore) -> None:
    await store.write_batch([row(1), row(2), row(3), row(4), row(5, status=400, error_class="invalid_request_error")])
    assert (await store.release_stats("support-reply", "r2", 0.0)).outcomes == 0
    for n, outcome in [(1, "success"), (2, "success"), (3, "failure"), (5, "success")]:
        assert await store.set_outcome(f"req-{n:06d}", "acme", outcome, None, None, None, None, T0 + 99)
    stats = await store.release_stats("support-reply", "r2", 0.0)
    assert (stats.outcomes, stats.successes) == (3, 2)  # row 5 is a caller error: not counted
    assert stats.success_rate == pytest.approx(2 / 3)


async def test_one_feedback_on_an_episode_counts_once(store: LedgerStore) -> None:
    rows = [row(n, episode_id="ep-1") for n in (1, 2, 3)]
    rows += [row(4, episode_id="ep-2"), row(5), row(6), row(7, tenant="other", episode_id="ep-1")]
    await store.write_batch(rows)
    assert await store.set_outcome_by_episode("ep-1", "acme", "failure", None, None, None, T0 + 99) == 3
    assert await store.set_outcome_by_episode("ep-2", "acme", "success", None, None, None, T0 + 99) == 1
    assert await store.set_outcome_by_episode("ep-1", "other", "success", None, None, None, T0 + 99) == 1
    assert await store.set_outcome("req-000005", "acme", "success", None, None, None, None, T0 + 99)
    stats = await store.release_stats("support-reply", "r2", 0.0)
    assert (stats.outcomes, stats.successes) == (4, 3)  # one per feedback, not 6 rows
    # Feedback on one request of the episode, later: a feedback of its own.
    assert await store.set_outcome("req-000002", "acme", "success", None, None, None, "ep-1", T0 + 100)
    stats = await store.release_stats("support-reply", "r2", 0.0)
    assert (stats.outcomes, stats.successes) == (5, 4)


def test_summarize_and_percentile_by_hand() -> None:
    assert percentile([], 0.95) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([0.0, 10.0], 0.95) == pytest.approx(9.5)
    assert summarize([]) == ReleaseStats()
    stats = summarize(
        [
            (200, None, 5.0, 0.5, "success", True, "r1", "acme", None, 1.0),
            (504, "all_targets_failed", 9.0, None, None, None, "r2", "acme", None, None),
        ]
    )
    assert stats == ReleaseStats(2, 0, 1, 1, pytest.approx(8.8), 0.5, 1, 1, 1, 1)  # type: ignore[arg-type]


async def test_live_scores_are_counted_for_served_answers_only(store: LedgerStore) -> None:
    rows = [row(1, live_pass=True), row(2, live_pass=False), row(3, live_pass=True), row(4)]
    rows.append(row(5, status=400, error_class="invalid_request_error", live_pass=False))  # a caller error
    await store.write_batch(rows)
    stats = await store.release_stats("support-reply", "r2", 0.0)
    assert (stats.live_scored, stats.live_passed) == (3, 2)
    assert stats.live_pass_rate == pytest.approx(2 / 3)
    assert (await store.release_stats("support-reply", "none", 0.0)).live_pass_rate is None


# --- the index that keeps the query to the window ---------------------------------------------


def test_sqlite_reads_the_window_through_its_index(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    try:
        sqlite_backend._migrate(conn, "test")
        plan = " ".join(
            str(r[-1]) for r in conn.execute("EXPLAIN QUERY PLAN " + sqlite_backend._STATS, ("t", "r", 0.0, 1.0, "e"))
        )
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    finally:
        conn.close()
    assert "requests_task_release_started_at" in plan
    assert versions == ALL_VERSIONS


async def test_postgres_has_the_window_index(tmp_path: Path) -> None:
    if not postgres_reachable():
        pytest.skip("no PostgreSQL")
    from turnout.ledger import postgres as postgres_backend

    schema = unique_schema()
    opened = postgres_store(schema)
    await opened.open()
    try:
        indexes = await postgres_sql(
            schema,
            "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND indexname = $2",
            schema,
            "requests_task_release_started_at",
        )
        versions = await postgres_sql(schema, "SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await opened.aclose()
        await drop_schema(schema)
    assert [d.split(" USING btree ")[1] for (d,) in indexes] == ["(task, release, started_at)"]
    assert [v for (v,) in versions] == list(range(1, len(postgres_backend.MIGRATIONS) + 1)) == ALL_VERSIONS
