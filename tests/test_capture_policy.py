"""CapturePolicy.decide: rule precedence, sampling, `full` only under a live grant, and the
grant cache kept fresh by its background task (expiry on time, audited exactly once;
revocations and grants from another process seen through PRAGMA data_version)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnout.config import CaptureConfig, CaptureRule
from turnout.privacy.capture import METADATA, CapturePolicy, CaptureStore, Decision, rule_for

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def config(*rules: CaptureRule, mode: str = "metadata", sample_rate: float = 1.0) -> CaptureConfig:
    return CaptureConfig.model_validate({"mode": mode, "sample_rate": sample_rate, "rules": rules})


PRECEDENCE = config(
    CaptureRule(mode="redacted", sample_rate=0.1),  # neither: above the section default
    CaptureRule(tenant="acme", mode="redacted", sample_rate=0.2),
    CaptureRule(task="support", mode="full", sample_rate=0.3),
    CaptureRule(tenant="acme", task="support", mode="metadata"),
    CaptureRule(tenant="acme", task="support", mode="full"),  # a second, less specific-by-order duplicate
    mode="full",
    sample_rate=0.9,
)


@pytest.mark.parametrize(
    ("tenant", "task", "expected"),
    [
        ("acme", "support", ("metadata", 1.0)),  # tenant+task; the first of duplicates
        ("bravo", "support", ("full", 0.3)),  # task
        ("acme", "billing", ("redacted", 0.2)),  # tenant
        ("bravo", "billing", ("redacted", 0.1)),  # the rule naming neither
    ],
)
def test_the_most_specific_rule_wins(tenant: str, task: str, expected: tuple[str, float]) -> None:
    assert rule_for(PRECEDENCE, tenant, task) == expected


def test_the_section_default_applies_without_rules() -> None:
    assert rule_for(config(mode="redacted", sample_rate=0.5), "acme", "support") == ("redacted", 0.5)
    assert CapturePolicy(CaptureConfig()).decide("acme", "support", T0) is METADATA


def test_metadata_is_the_default_and_keeps_nothing() -> None:
    decision = CapturePolicy(CaptureConfig()).decide("acme", "support", T0)
    assert decision == Decision("metadata", None, False)
    assert not decision.capture and decision.used == "metadata"


def test_redacted_needs_no_grant() -> None:
    decision = CapturePolicy(config(CaptureRule(tenant="acme", mode="redacted"))).decide("acme", "x", T0)
    assert decision == Decision("redacted", None, True)
    assert decision.capture and decision.used == "redacted"


def test_full_without_a_grant_degrades_to_metadata() -> None:
    policy = CapturePolicy.rules_only(config(mode="full"))
    assert policy.decide("acme", "support", T0) is METADATA


def test_sampling_is_seeded_and_near_the_rate() -> None:
    cfg = config(mode="redacted", sample_rate=0.25)
    policy = CapturePolicy(cfg, rng=random.Random(7))
    first = [policy.decide("acme", "s", T0).sampled for _ in range(4000)]
    again = CapturePolicy(cfg, rng=random.Random(7))
    assert [again.decide("acme", "s", T0).sampled for _ in range(4000)] == first
    assert 0.22 < sum(first) / len(first) < 0.28
    unsampled = next(d for d in (policy.decide("acme", "s", T0) for _ in range(100)) if not d.sampled)
    assert unsampled.mode == "redacted" and not unsampled.capture and unsampled.used == "metadata"


@given(st.sampled_from([0.0, 1.0]), st.integers(0, 2**32))
def test_rates_zero_and_one_are_exact(rate: float, seed: int) -> None:
    policy = CapturePolicy(config(mode="redacted", sample_rate=rate), rng=random.Random(seed))
    assert {policy.decide("acme", "s", T0).sampled for _ in range(50)} == {rate == 1.0}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CaptureStore]:
    s = CaptureStore(tmp_path / "capture.db")
    await s.open()
    yield s
    await s.aclose()


FULL_FOR_SUPPORT = config(CaptureRule(task="support", mode="full"))


async def test_full_only_while_a_grant_is_live(store: CaptureStore) -> None:
    clock = Clock()
    grant = await store.create_grant("acme", "support", T0 + 10, T0 + 70, "ticket", "alice")
    policy = CapturePolicy(FULL_FOR_SUPPORT, store, clock=clock)
    await policy.refresh()
    assert policy.decide("acme", "support", T0 + 9) is METADATA  # not yet
    assert policy.decide("acme", "support", T0 + 10) == Decision("full", grant.id, True)
    assert policy.decide("acme", "support", T0 + 69.999) == Decision("full", grant.id, True)
    assert policy.decide("acme", "support", T0 + 70) is METADATA  # on time, cache or not
    assert policy.decide("bravo", "support", T0 + 30) is METADATA  # another tenant
    assert policy.decide("acme", "billing", T0 + 30) is METADATA  # another task (and no full rule)


async def test_a_grant_does_nothing_where_the_rule_is_not_full(store: CaptureStore) -> None:
    await store.create_grant("acme", "support", T0, T0 + 60, "ticket", "alice")
    policy = CapturePolicy(config(mode="redacted"), store)
    await policy.refresh()
    assert policy.decide("acme", "support", T0 + 1) == Decision("redacted", None, True)


async def test_overlapping_grants_pick_the_one_ending_last(store: CaptureStore) -> None:
    await store.create_grant("acme", "support", T0, T0 + 60, "a", "alice")
    later = await store.create_grant("acme", "support", T0, T0 + 600, "b", "alice")
    policy = CapturePolicy(FULL_FOR_SUPPORT, store)
    await policy.refresh()
    assert policy.decide("acme", "support", T0 + 1).grant_id == later.id


async def test_expiry_is_on_time_and_audited_exactly_once(store: CaptureStore) -> None:
    clock = Clock()
    grant = await store.create_grant("acme", "support", T0, T0 + 60, "ticket", "alice")
    policy = CapturePolicy(FULL_FOR_SUPPORT, store, clock=clock)
    await policy.refresh()
    clock.now = T0 + 59
    await policy.tick()
    assert policy.decide("acme", "support").mode == "full"
    clock.now = T0 + 60
    assert policy.decide("acme", "support") is METADATA  # before any tick: the end is checked per call
    for _ in range(3):
        await policy.tick()
        clock.now += 5
    expired = [e for e in await store.audit() if e.event == "expired"]
    assert [(e.grant_id, e.at) for e in expired] == [(grant.id, T0 + 60)]
    assert policy.live_grant("acme", "support", T0) is None  # dropped from the cache after reload


async def test_background_task_sees_another_process_grant_and_revoke(store: CaptureStore, tmp_path: Path) -> None:
    clock = Clock()
    policy = CapturePolicy(FULL_FOR_SUPPORT, store, clock=clock, refresh_interval_s=0.01)
    await policy.start()
    try:
        assert policy.decide("acme", "support") is METADATA
        cli = CaptureStore(tmp_path / "capture.db")  # as `turnout capture` would, on its own connection
        await cli.open()
        try:
            grant = await cli.create_grant("acme", "support", T0, T0 + 600, "ticket", "alice")
            await eventually(lambda: policy.decide("acme", "support").mode == "full")
            await cli.revoke_grant(grant.id, "bob", T0 + 1)
            await eventually(lambda: policy.decide("acme", "support") is METADATA)
        finally:
            await cli.aclose()
    finally:
        await policy.aclose()


async def test_background_task_records_expiry(store: CaptureStore) -> None:
    clock = Clock()
    grant = await store.create_grant("acme", "support", T0, T0 + 60, "ticket", "alice")
    policy = CapturePolicy(FULL_FOR_SUPPORT, store, clock=clock, refresh_interval_s=0.01)
    await policy.start()
    try:
        clock.now = T0 + 61

        async def recorded() -> bool:
            return any(e.event == "expired" for e in await store.audit())

        for _ in range(500):
            if await recorded():
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # more ticks: still one row
    finally:
        await policy.aclose()
    assert [e.grant_id for e in await store.audit() if e.event == "expired"] == [grant.id]


async def test_decide_never_touches_the_store(store: CaptureStore) -> None:
    await store.create_grant("acme", "support", T0, T0 + 60, "ticket", "alice")
    policy = CapturePolicy(FULL_FOR_SUPPORT, store)
    await policy.refresh()
    await store.aclose()  # any store call would now raise
    assert policy.decide("acme", "support", T0 + 1).mode == "full"


async def test_a_failing_refresh_keeps_the_task_alive(store: CaptureStore, caplog: pytest.LogCaptureFixture) -> None:
    policy = CapturePolicy(FULL_FOR_SUPPORT, store, refresh_interval_s=0.01)
    await policy.start()
    await store.aclose()
    store.version = lambda: (-1, -1)  # type: ignore[method-assign]  # force a reload that fails
    await asyncio.sleep(0.05)
    await policy.aclose()
    errors = [r for r in caplog.records if r.levelname == "ERROR" and "turnout-capture-grants" in r.message]
    assert len(errors) == 1  # a streak of failures is logged once
    assert "CaptureStoreError" in errors[0].message


async def eventually(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    async with asyncio.timeout(within_s):
        while not condition():  # noqa: ASYNC110 - polls counters and caches; no event to await
            await asyncio.sleep(0.005)
