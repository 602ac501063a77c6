"""Reports and plans read the ledger a page at a time (``rows_in_pages``) and count as they go
(``ReportTally``, ``TrafficTally``): on SQLite and PostgreSQL, a ledger of mixed rows (failures,
retries, fallbacks, refusals, cache hits, escalations, estimated usage, episodes across pages,
runs of equal start times split by page boundaries; tenants and releases named ``all``) gives
every figure exactly as the whole window in one list did (``tests/reports_before.py``)."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests import reports_before as before
from tests.test_ledger_store import opened_ledger
from turnout.ledger.record import AttemptRecord, LedgerRow
from turnout.ledger.store import LedgerStore, rows_in_pages
from turnout.offline.plan.traffic import TrafficTally, concurrency_by_hour
from turnout.offline.reports.figures import KINDS, HumanCost, ReportTally

T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC
PEOPLE = {"support": HumanCost(4.5, 20.0), "extract": HumanCost(0.25, 0.0)}
GROUPINGS: list[tuple[str, ...]] = [(), ("tenant",), ("release", "task"), ("day",), ("hour", "tenant"), ("target",)]


def mixed(n: int, seed: int = 3) -> list[LedgerRow]:
    rng = random.Random(seed)
    rows = []
    at = T0
    for i in range(n):
        at += rng.choice((0.0, 0.0, 0.5, 7.3, 600.0, 3 * 3600.0))  # runs of equal times, quiet hours
        kind = rng.random()
        ok = AttemptRecord("gpt", "r1", None, rng.uniform(100, 2000), 0.0, 0.0004)
        attempts, status, error_class, fallback = [ok], 200, None, False
        cost: float | None = rng.choice((0.0004, 0.0011, 1e-7, None, 0.3))
        if kind < 0.1:
            attempts = [AttemptRecord("gpt", "r1", "timeout_ttft", 2000.0), ok]
        elif kind < 0.2:
            attempts, fallback = (
                [AttemptRecord("gpt", "r1", "http_503", 40.0), dataclasses.replace(ok, target="b")],
                True,
            )
        elif kind < 0.27:
            attempts, status, error_class, cost = [AttemptRecord("gpt", "r1", "http_503", 30.0)], 502, "upstream", None
        elif kind < 0.35:
            attempts, status, error_class, cost = [], rng.choice((400, 404, 429, 499)), "refused", None
        elif kind < 0.38:
            status, error_class = 400, "context_length_exceeded"  # the release's, not the caller's
        cache_hit = True if 0.38 <= kind < 0.48 else rng.choice((None, False))
        outcome = rng.choice((None, None, "success", "success", "failure"))
        rows.append(
            LedgerRow(
                request_id=f"r{rng.randrange(10**6):06d}-{i}",  # ids not in time order: ties sort by them
                started_at=at,
                tenant=rng.choice(("acme", "globex", "all", "turnout-eval")),
                task=rng.choice(("support", "extract", "triage")),
                data_class="internal",
                stream=rng.random() < 0.4,
                release=rng.choice(("v1", "v2", "all", None)),
                target=None if not attempts else ("b" if fallback else "gpt"),
                status=status,
                error_class=error_class,
                attempts=attempts,
                fallback=fallback,
                prompt_tokens=rng.choice((None, rng.randint(1, 5000))),
                completion_tokens=rng.choice((None, rng.randint(0, 900))),
                cost_usd=0.0 if cache_hit else cost,
                latency_ms=rng.choice((0.0, rng.uniform(1, 9000), rng.uniform(1, 3 * 3600_000))),
                queue_ms=rng.choice((None, rng.uniform(0, 50))),
                ttft_ms=rng.choice((None, rng.uniform(10, 900))),
                outcome=outcome,
                cache_hit=cache_hit,
                human_review=rng.choice((None, None, True, False)),
                escalated=rng.choice((None, None, True, False)),
                outcome_value=rng.choice((None, rng.uniform(-5, 100))),
                outcome_at=at + 60 if outcome else None,
                episode_id=rng.choice((None, "", f"ep-{rng.randrange(40)}")),  # episodes span many pages
                usage_estimated=rng.choice((None, False, True)),
                repairs=rng.choice((None, 1, 2)),
                escalated_to=rng.choice((None, None, "human", "b")),
                live_pass=rng.choice((None, True, False)),
                evaluation=rng.choice((None, None, None, True)),
            )
        )
    return rows


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LedgerStore]:
    async with opened_ledger(request.param, tmp_path) as opened:
        yield opened


async def paged(store: LedgerStore, page: int, **where: Any) -> list[LedgerRow]:
    return [row async for found in rows_in_pages(store, T0, 2e9, page=page, **where) for row in found]


async def test_pages_give_the_window_whole_in_order(store: LedgerStore) -> None:
    rows = mixed(700)
    await store.write_batch(rows)
    whole = await store.rows_between(T0, 2e9)
    assert len(whole) == 700
    for page in (1, 7, 699, 700, 5000):
        assert [r.request_id for r in await paged(store, page)] == [r.request_id for r in whole]
    acme = await store.rows_between(T0, 2e9, tenant="acme", task="support")
    assert await paged(store, 13, tenant="acme", task="support") == acme
    assert await paged(store, 0) == []


async def test_paged_figures_equal_the_whole_windows(store: LedgerStore) -> None:
    await store.write_batch(mixed(1500))
    whole = await store.rows_between(T0, 2e9)  # the order the reports always read
    pages = [found async for found in rows_in_pages(store, T0, 2e9, page=97)]
    assert sum(map(len, pages)) == 1500
    for kind in KINDS:
        for by in GROUPINGS:
            for review_cost, people in ((None, None), (2.5, None), (None, PEOPLE), (0.0, PEOPLE)):
                tally = ReportTally(kind, by, review_cost=review_cost, people=people)
                for found in pages:
                    for row in found:
                        tally.add(row)
                report = tally.report(T0, 2e9)
                rows, hours, notes = before.compute(kind, whole, by, review_cost, people)
                where = (kind, by, review_cost, people is not None)
                assert report.rows == (rows[:-1] if report.total_row else rows), where
                total = {**rows[-1], **dict.fromkeys(by, "(all)")} if report.total_row else None  # was "all"
                assert report.total_row == total, where
                assert (report.hours, report.notes) == (hours, notes), where
                assert report.total == before.compute(kind, whole, (), review_cost, people)[0][0], where


async def test_paged_traffic_equals_the_whole_windows(store: LedgerStore) -> None:
    await store.write_batch(mixed(1500, seed=11))
    for task in ("support", "extract", "nothing"):
        whole = await store.rows_between(T0, 2e9, task=task)
        for end in (None, T0 + 40 * 86400, whole[len(whole) // 2].started_at if whole else None):
            tally = TrafficTally(task, end)
            async for found in rows_in_pages(store, T0, 2e9, task=task, page=61):
                for row in found:
                    tally.add(row)
            traffic = tally.traffic()
            hours = [(h.start, h.requests, h.input_tokens, h.output_tokens, h.peak_concurrency) for h in traffic.hours]
            targets = {name: (s.requests, s.outcomes, s.successes) for name, s in traffic.targets.items()}
            assert {"hours": hours, "targets": targets} == before.traffic(whole, task, end), (task, end)


def test_the_concurrency_sweep_equals_sorting_every_event() -> None:
    rng = random.Random(5)
    for _ in range(300):
        starts = sorted(rng.choice((rng.uniform(0, 5 * 3600), 3600.0, 7200.0)) for _ in range(rng.randrange(40)))
        spans = [(s, s + rng.choice((0.0, -1.0, 3600.0, rng.uniform(0, 4 * 3600), math.nan))) for s in starts]
        hours = rng.randrange(1, 8)
        assert concurrency_by_hour(spans, 0, hours) == before.concurrency_by_hour(spans, 0, hours)


def test_traffic_rows_must_come_oldest_first() -> None:
    tally = TrafficTally("support")
    row = dataclasses.replace(mixed(1)[0], task="support", status=200, error_class=None, evaluation=None, tenant="a")
    tally.add(row)
    with pytest.raises(ValueError, match="oldest first"):
        tally.add(dataclasses.replace(row, request_id="earlier", started_at=row.started_at - 1))
