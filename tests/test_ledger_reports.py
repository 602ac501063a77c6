"""The two store methods feedback and reports add, on every backend (memory, SQLite,
PostgreSQL in a schema of its own): ``set_outcome_by_episode`` and ``rows_between``, and the
report's episodes over what they return."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.test_ledger_store import (
    BACKENDS,
    full_row,
    make_row,
    opened_ledger,
)
from turnout.ledger.store import LedgerStore, rows_in_pages
from turnout.offline.reports.figures import compute


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LedgerStore]:
    async with opened_ledger(request.param, tmp_path) as opened:
        yield opened


# --- set_outcome_by_episode ---------------------------------------------------------------------


async def test_an_episodes_outcome_reaches_all_its_rows_and_no_others(store: LedgerStore) -> None:
    await store.write_batch(
        [
            make_row(1, episode_id="T-1"),
            make_row(2, episode_id="T-1", human_review=True),
            make_row(3, episode_id="T-2"),
            make_row(4),
        ]
    )
    assert await store.set_outcome_by_episode("T-1", "acme", "success", None, False, 2.5, 50.0) == 2
    one, two, three, four = [await store.get(f"req-{n:06d}") for n in (1, 2, 3, 4)]
    assert one == make_row(1, episode_id="T-1", outcome="success", escalated=False, outcome_value=2.5, outcome_at=50.0)
    assert two is not None and (two.outcome, two.human_review) == ("success", True)  # None kept review
    assert three == make_row(3, episode_id="T-2") and four == make_row(4)


async def test_an_episode_is_scoped_to_the_tenant(store: LedgerStore) -> None:
    await store.write_batch([make_row(1, episode_id="T-1"), make_row(2, episode_id="T-1", tenant="globex")])
    assert await store.set_outcome_by_episode("T-1", "globex", "failure", True, None, None, 5.0) == 1
    assert await store.set_outcome_by_episode("T-9", "globex", "failure", True, None, None, 5.0) == 0
    assert await store.get("req-000001") == make_row(1, episode_id="T-1")
    got = await store.get("req-000002")
    assert got is not None and (got.outcome, got.human_review, got.outcome_at) == ("failure", True, 5.0)


async def test_two_tenants_sharing_an_episode_id_report_as_two_tasks(store: LedgerStore) -> None:
    """Each tenant's feedback reaches its own rows only, and the report, computed from what the
    store returns, counts acme's failed T-1 and globex's completed T-1 apart."""
    await store.write_batch(
        [
            make_row(1, episode_id="T-1", cost_usd=0.10),
            make_row(2, episode_id="T-1", cost_usd=0.10),
            make_row(3, episode_id="T-1", cost_usd=0.10, tenant="globex"),
        ]
    )
    assert await store.set_outcome_by_episode("T-1", "acme", "failure", None, None, None, 5.0) == 2
    assert await store.set_outcome_by_episode("T-1", "globex", "success", None, None, None, 6.0) == 1
    rows = await store.rows_between(0, 2e9)
    [cost] = compute("cost", rows, review_cost=1.0).rows
    assert (cost["completed"], cost["reviewed_or_failed"]) == (1, 1)
    assert cost["cost_per_completed_usd"] == pytest.approx(0.30)
    [quality] = compute("quality", rows).rows
    assert (quality["tasks"], quality["successes"], quality["success_rate"]) == (2, 1, 0.5)


async def test_episode_feedback_is_idempotent(store: LedgerStore) -> None:
    await store.write_batch([make_row(n, episode_id="T-1") for n in range(3)])
    for _ in range(2):
        assert await store.set_outcome_by_episode("T-1", "acme", "success", True, True, 1.0, 9.0) == 3
    rows = [await store.get(f"req-{n:06d}") for n in range(3)]
    assert rows == [
        make_row(
            n, episode_id="T-1", outcome="success", human_review=True, escalated=True, outcome_value=1.0, outcome_at=9.0
        )
        for n in range(3)
    ]


async def test_an_episodes_labels_reach_all_its_rows_idempotently(store: LedgerStore) -> None:
    await store.write_batch([make_row(1, episode_id="T-1", labels=["old"]), make_row(2, episode_id="T-1"), make_row(3)])
    for _ in range(2):
        assert await store.set_outcome_by_episode("T-1", "acme", None, None, None, None, 7.0, labels=["refund"]) == 2
        assert [await store.get(f"req-{n:06d}") for n in (1, 2, 3)] == [
            make_row(1, episode_id="T-1", outcome_at=7.0, labels=["refund"]),
            make_row(2, episode_id="T-1", outcome_at=7.0, labels=["refund"]),
            make_row(3),
        ]
    # labels left out keep what is stored; another tenant's episode is not touched
    assert await store.set_outcome_by_episode("T-1", "acme", "success", None, None, None, 8.0) == 2
    assert await store.set_outcome_by_episode("T-1", "globex", None, None, None, None, 9.0, labels=["x"]) == 0
    got = await store.get("req-000002")
    assert got is not None and (got.outcome, got.labels, got.outcome_at) == ("success", ["refund"], 8.0)


# --- rows_between -------------------------------------------------------------------------------


async def test_rows_between_is_a_half_open_window_oldest_first(store: LedgerStore) -> None:
    await store.write_batch([make_row(n) for n in (5, 1, 3, 2, 4)])
    found = await store.rows_between(1_700_000_002.0, 1_700_000_005.0)
    assert [r.request_id for r in found] == ["req-000002", "req-000003", "req-000004"]
    assert found[0] == make_row(2)


async def test_rows_between_breaks_time_ties_by_request_id(store: LedgerStore) -> None:
    await store.write_batch([make_row(n, started_at=10.0) for n in (3, 1, 2)])
    assert [r.request_id for r in await store.rows_between(0, 100)] == ["req-000001", "req-000002", "req-000003"]


async def test_rows_between_filters_by_tenant_and_task(store: LedgerStore) -> None:
    await store.write_batch(
        [
            make_row(1),
            make_row(2, tenant="globex"),
            make_row(3, task="triage"),
            make_row(4, tenant="globex", task="triage"),
        ]
    )
    window = (0.0, 2e9)
    assert [r.request_id for r in await store.rows_between(*window, tenant="globex")] == ["req-000002", "req-000004"]
    assert [r.request_id for r in await store.rows_between(*window, task="triage")] == ["req-000003", "req-000004"]
    both = await store.rows_between(*window, tenant="globex", task="triage")
    assert [r.request_id for r in both] == ["req-000004"]
    assert len(await store.rows_between(*window)) == 4


async def test_rows_between_returns_whole_rows_and_honours_the_limit(store: LedgerStore) -> None:
    await store.write_batch([full_row(1), *(make_row(n, started_at=1_800_000_000.0 + n) for n in range(2, 6))])
    found = await store.rows_between(0, 2e9, limit=2)
    assert found == [full_row(1), make_row(2, started_at=1_800_000_002.0)]
    assert await store.rows_between(0, 2e9, limit=0) == []
    with pytest.raises(ValueError, match="negative"):
        await store.rows_between(0, 2e9, limit=-1)


async def test_rows_between_goes_on_after_a_row_in_pages(store: LedgerStore) -> None:
    """A window past one answer is read in pages, each after the last one's last row: equal
    times split between two pages lose no row and repeat none."""
    await store.write_batch([make_row(n, started_at=10.0 + n // 3) for n in range(10)])  # three a second
    first = await store.rows_between(0, 100, limit=4)
    assert [r.request_id for r in first] == [f"req-{n:06d}" for n in range(4)]
    after = (first[-1].started_at, first[-1].request_id)
    assert [r.request_id for r in await store.rows_between(0, 100, limit=4, after=after)] == [
        f"req-{n:06d}" for n in range(4, 8)
    ]
    assert await store.rows_between(0, 12.0, after=after) == [make_row(n, started_at=10.0 + n // 3) for n in (4, 5)]
    pages = [[r.request_id for r in page] async for page in rows_in_pages(store, 0, 100, page=4)]
    assert pages == [[f"req-{n:06d}" for n in range(i, min(i + 4, 10))] for i in (0, 4, 8)]
    assert [r.request_id async for page in rows_in_pages(store, 0, 100, page=5) for r in page] == [
        f"req-{n:06d}" for n in range(10)
    ]


async def test_rows_between_does_not_share_rows(store: LedgerStore) -> None:
    await store.write_batch([full_row(1)])
    [row] = await store.rows_between(0, 2e9)
    row.attempts[0].latency_ms = -1.0
    row.outcome = "changed"
    assert await store.rows_between(0, 2e9) == [full_row(1)]


async def test_rows_between_while_batches_land(store: LedgerStore) -> None:
    results = await asyncio.gather(
        *(store.write_batch([make_row(n)]) for n in range(50)), *(store.rows_between(0, 2e9) for _ in range(10))
    )
    assert all(isinstance(r, list) for r in results[50:])
    assert len(await store.rows_between(0, 2e9)) == 50
    assert dataclasses.asdict((await store.rows_between(0, 2e9))[0]) == dataclasses.asdict(make_row(0))
