"""The canary controller on synthetic ledger rows (memory ledger) and a real release store: it
steps a healthy canary to promotion, rolls a degraded one back at once, waits for traffic,
calls upstream trouble inconclusive, checks outcomes only once feedback exists, and moves a
step once however many replicas check it."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from turnout.config import Config, validate
from turnout.ledger.memory import MemoryStore
from turnout.ledger.record import LedgerRow
from turnout.ledger.store import ReleaseStats
from turnout.releases.base import Prompt, Release
from turnout.releases.canary import BY, CanaryController, StepClaims, Verdict, judge
from turnout.releases.store import ReleaseStore, ServingRow

TASK = "extract"


def config(path: Path, **canary: Any) -> Config:
    return validate(
        {
            "targets": {"primary": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}},
            "tasks": {TASK: {"route": ["primary"], "canary": {"min_requests": 20, **canary}}},
            "releases": {"store_path": str(path)},
            "store": {"kind": "memory"},
        }
    )


def release(name: str) -> Release:
    prompt = Prompt("Answer with JSON.", "Extract: {{ text }} " + name, {"text": "str"})
    return Release(TASK, name, ("primary",), f"w-{name}", "tok", prompt)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class World:
    """A task with r1 active and r2 in canary at 5%, a memory ledger and a fake clock."""

    def __init__(self, path: Path, store: ReleaseStore, ledger: MemoryStore, **canary: Any) -> None:
        self.path, self.store, self.ledger = path, store, ledger
        self.config = config(path, **canary)
        self.clock = Clock()
        self.ids = itertools.count()

    def controller(self, replica: str = "a") -> CanaryController:
        return CanaryController(self.config, self.store, self.ledger, self.clock, replica=replica)

    async def serving(self) -> ServingRow:
        row = await self.store.serving_row(TASK)
        assert row is not None
        return row

    async def traffic(
        self,
        release: str,
        n: int,
        *,
        errors: int = 0,
        provider: int = 0,
        rejected: int = 0,
        ago: float = -0.001,
        **fields: Any,
    ) -> None:
        """``n`` requests of ``release`` inside the current step (or ``ago`` seconds before it
        began): ``errors`` internal failures, ``provider`` upstream ones and ``rejected`` ones
        the upstream refused (4xx ``upstream_rejected``) among them."""
        since = (await self.serving()).updated_at - ago
        rows = []
        for i in range(n):
            status, error = 200, None
            if i < errors:
                status, error = 500, "internal"
            elif i < errors + provider:
                status, error = 502, "all_targets_failed"
            elif i < errors + provider + rejected:
                status, error = 400, "upstream_rejected"
            values: dict[str, Any] = {"latency_ms": 100.0, "cost_usd": 0.001, **fields}
            rows.append(
                LedgerRow(
                    f"req-{next(self.ids)}",
                    since,
                    "acme",
                    TASK,
                    "internal",
                    False,
                    release=release,
                    status=status,
                    error_class=error,
                    **values,
                )
            )
        await self.ledger.write_batch(rows)

    async def both(self, n: int = 40, **fields: Any) -> None:
        await self.traffic("r1", n, **fields)
        await self.traffic("r2", n, **fields)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    path = tmp_path / "releases.db"
    ledger = MemoryStore()
    await ledger.open()
    async with ReleaseStore(path) as store:
        for name in ("r1", "r2"):
            await store.register(release(name), "alice")
        await store.promote(TASK, "r1", "alice", "first release")
        await store.mark_evaluated(TASK, "r2", "eval", "gates passed")
        await store.start_canary(TASK, "r2", 5.0, "alice", "try r2")
        yield World(path, store, ledger)
    await ledger.aclose()


async def test_a_healthy_canary_steps_to_promotion(world: World) -> None:
    ctl = world.controller()
    seen = []
    for _ in range(3):
        await world.both()
        verdict = await ctl.check(TASK)
        assert verdict.acted, verdict.why
        seen.append((verdict.action, verdict.next_percent))
    # 100% would leave nothing to compare with: passing the last step below it promotes
    assert seen == [("step", 25.0), ("step", 50.0), ("promote", 100.0)]
    final = await world.serving()
    assert (final.active, final.canary, final.previous_active) == ("r2", None, "r1")
    moves = [t for t in await world.store.transitions(TASK, "r2") if t.by == BY]
    assert [t.percent for t in moves] == [25.0, 50.0, 100.0]
    assert all("canary analysis passed" in t.why and "error rate 0.0% vs 0.0%" in t.why for t in moves)
    assert (await ctl.check(TASK)).action == "none"


async def test_a_canary_with_30_points_more_errors_is_rolled_back_at_once(world: World) -> None:
    await world.traffic("r1", 100, errors=2)
    await world.traffic("r2", 100, errors=32)
    verdict = await world.controller().check(TASK)
    assert (verdict.action, verdict.acted, verdict.failed) == ("rollback", True, ("error_rate",))
    serving = await world.serving()
    assert (serving.active, serving.canary, serving.canary_percent) == ("r1", None, 0.0)
    [last] = (await world.store.transitions(TASK, "r2"))[-1:]
    assert (last.to_state, last.by) == ("retired", BY)
    assert "error rate 32.0% vs 2.0% (+30.0 points, limit +2.0)" in last.why
    assert "failed at 5%" in last.why


async def test_an_upstream_failing_canary_target_counts_as_its_errors(world: World) -> None:
    # The active side is healthy, so the canary's upstream failures are its own route's.
    await world.traffic("r1", 100)
    await world.traffic("r2", 100, provider=30)
    verdict = await world.controller().check(TASK)
    assert verdict.action == "rollback"
    assert verdict.canary_stats is not None and verdict.canary_stats.provider_errors == 30


async def test_a_canary_the_upstream_rejects_is_rolled_back(world: World) -> None:
    # Its template or model name makes the upstream refuse every body: a 4xx, but the release's.
    await world.traffic("r1", 50)
    await world.traffic("r2", 50, rejected=50)
    verdict = await world.controller().check(TASK)
    assert (verdict.action, verdict.acted, verdict.failed) == ("rollback", True, ("error_rate",))
    assert "error rate 100.0% vs 0.0%" in verdict.why


async def test_a_canary_at_100_percent_is_judged_against_the_active_release_before_it(world: World) -> None:
    await world.store.set_canary_percent(TASK, 100.0, "alice", "all in")
    await world.traffic("r1", 100, errors=2, ago=60.0)  # the active release's history, before the step
    await world.traffic("r1", 100, errors=2, ago=3_600 + 1)  # older than the baseline window
    await world.traffic("r2", 100, errors=32)
    verdict = await world.controller().check(TASK)
    assert (verdict.action, verdict.acted, verdict.failed) == ("rollback", True, ("error_rate",))
    assert "error rate 32.0% vs 2.0% (+30.0 points, limit +2.0)" in verdict.why
    assert "at 100%" in verdict.why and "r1 in the 3600 s before this step" in verdict.why
    assert verdict.active_stats is not None and verdict.active_stats.requests == 100
    serving = await world.serving()
    assert (serving.active, serving.canary) == ("r1", None)


async def test_a_canary_at_100_percent_is_held_to_its_baseline_latency_and_cost(world: World) -> None:
    await world.store.set_canary_percent(TASK, 100.0, "alice", "all in")
    await world.traffic("r1", 50, ago=60.0)  # stamped a minute before the step: never inside it
    await world.traffic("r2", 50, latency_ms=400.0)
    verdict = await world.controller().check(TASK)
    assert (verdict.action, verdict.failed) == ("rollback", ("p95_latency",))


async def test_a_canary_at_100_percent_without_history_must_be_nearly_error_free(world: World) -> None:
    # No active traffic to compare with, before or since: the canary's own error rate against
    # max_error_rate_delta, as if the active release had made no error.
    await world.store.set_canary_percent(TASK, 100.0, "alice", "all in")
    await world.traffic("r2", 100, errors=10)
    verdict = await world.controller().check(TASK)
    assert (verdict.action, verdict.failed) == ("rollback", ("error_rate",))
    assert "no baseline" in verdict.why


async def test_a_healthy_canary_at_100_percent_is_promoted(world: World) -> None:
    await world.store.set_canary_percent(TASK, 100.0, "alice", "all in")
    await world.traffic("r1", 50, errors=1, ago=60.0)
    ctl = world.controller()
    await world.traffic("r2", 10)
    assert (await ctl.check(TASK)).action == "wait"  # too few requests yet
    await world.traffic("r2", 40, errors=1)
    verdict = await ctl.check(TASK)
    assert (verdict.action, verdict.acted) == ("promote", True), verdict.why
    assert (await world.serving()).active == "r2"


async def test_latency_and_cost_regressions_roll_back(world: World) -> None:
    await world.traffic("r1", 30)
    await world.traffic("r2", 30, latency_ms=400.0, cost_usd=0.01)
    verdict = await world.controller().check(TASK)
    assert verdict.failed == ("p95_latency", "cost_per_request")
    assert "p95 latency 400 ms vs 100 ms (×4.00, limit ×1.5)" in verdict.why
    assert "cost per request $0.010000 vs $0.001000 (×10.00, limit ×1.5)" in verdict.why


async def test_too_few_requests_waits_and_the_window_grows(world: World) -> None:
    ctl = world.controller()
    await world.traffic("r1", 100)
    await world.traffic("r2", 5)
    verdict = await ctl.check(TASK)
    assert (verdict.action, verdict.acted, verdict.inconclusive) == ("wait", False, False)
    assert "too few requests" in verdict.why and "canary 5, active 100" in verdict.why
    assert (await world.serving()).canary_percent == 5.0
    await world.traffic("r2", 15)  # the same step: the window is since the step began
    assert (await ctl.check(TASK)).action == "step"


async def test_provider_errors_past_the_budget_are_inconclusive_not_a_failure(world: World) -> None:
    # An upstream outage hits both sides alike; the canary's own errors would fail it otherwise.
    await world.traffic("r1", 100, provider=30)
    await world.traffic("r2", 100, provider=60)
    verdict = await world.controller().check(TASK)
    assert (verdict.action, verdict.inconclusive, verdict.acted) == ("wait", True, False)
    assert "upstream failures: canary 60.0% (60), active 30.0% (30)" in verdict.why
    assert "past the budget of 20.0%" in verdict.why
    serving = await world.serving()
    assert (serving.canary, serving.canary_percent) == ("r2", 5.0)


async def test_success_rate_is_checked_only_with_enough_feedback(world: World) -> None:
    await world.traffic("r1", 40, outcome="success")
    await world.traffic("r2", 10, outcome="failure")  # 10 outcomes: fewer than min_requests
    await world.traffic("r2", 30)
    verdict = await world.controller().check(TASK)
    [success] = [c for c in verdict.checks if c.name == "success_rate"]
    assert success.ok is None and "canary 10, active 40" in success.detail
    assert verdict.action == "step"
    await world.traffic("r1", 40, outcome="success")
    await world.traffic("r2", 40, outcome="failure")
    verdict = await world.controller().check(TASK)
    assert (verdict.action, verdict.failed) == ("rollback", ("success_rate",))
    assert "success rate 0.0% vs 100.0% (-100.0 points, limit -5.0)" in verdict.why


async def test_two_replicas_checking_at_once_move_the_step_once(world: World) -> None:
    await world.both()
    async with ReleaseStore(world.path) as other_store:  # a second process's store on the same file
        a = world.controller("replica-a")
        b = CanaryController(world.config, other_store, world.ledger, world.clock, replica="replica-b")
        verdicts = await asyncio.gather(a.check(TASK), b.check(TASK), a.check(TASK))
    assert sorted(v.acted for v in verdicts) == [False, False, True]
    assert all(v.action == "step" and v.next_percent == 25.0 for v in verdicts)
    moves = [t for t in await world.store.transitions(TASK, "r2") if t.by == BY]
    assert [t.percent for t in moves] == [25.0]
    assert (await world.serving()).canary_percent == 25.0


async def test_two_replicas_rolling_back_at_once_leave_the_active_release_alone(world: World) -> None:
    await world.traffic("r1", 50)
    await world.traffic("r2", 50, errors=25)
    a, b = world.controller("a"), world.controller("b")
    verdicts = await asyncio.gather(a.check(TASK), b.check(TASK))
    assert sorted(v.acted for v in verdicts) == [False, True]
    serving = await world.serving()
    assert (serving.active, serving.canary, serving.previous_active) == ("r1", None, None)


async def test_a_stale_claim_is_taken_over(tmp_path: Path) -> None:
    clock = Clock()
    claims = StepClaims(tmp_path / "releases.db", clock=clock, ttl_s=60)
    assert await claims.claim(TASK, "r2", 5.0, "step", "dead-replica")
    assert not await claims.claim(TASK, "r2", 5.0, "step", "b")
    clock.now += 61
    assert await claims.claim(TASK, "r2", 5.0, "step", "b")
    assert await claims.claim(TASK, "r2", 6.0, "step", "b")  # the next step is a new claim


async def test_the_loop_checks_on_its_interval_and_stops(world: World) -> None:
    world.config = config(world.path, interval_s=0.01)
    await world.both()
    ctl = world.controller()
    ctl.clock = time.time
    ctl.start()
    for _ in range(200):
        await asyncio.sleep(0.01)
        if (await world.serving()).canary_percent == 25.0:
            break
    await ctl.aclose()
    # The step was taken once; checks after it (if any) wait for the new step's sample.
    assert ctl.last[TASK].action in ("step", "wait")
    assert (await world.serving()).canary_percent == 25.0
    seen = ctl.last[TASK]
    await asyncio.sleep(0.05)
    assert ctl.last[TASK] is seen  # stopped: no check after aclose


async def test_the_controller_follows_a_reloaded_config(world: World, tmp_path: Path) -> None:
    """A reload (``Runtime.successor``) hands the controller the new config: a task it adds is
    checked, with its own canary settings; a task it removes is not."""
    other = release("o1")
    other = Release("summarize", "o1", other.route, other.model_version, other.tokenizer, other.prompt)
    await world.store.register(other, "alice")
    await world.store.promote("summarize", "o1", "alice", "first release")
    ctl = world.controller()
    await world.both()
    await ctl.check_due()
    assert set(ctl.last) == {TASK}
    raw = world.config.model_dump()
    raw["tasks"]["summarize"] = {"route": ["primary"], "canary": {"interval_s": 5}}
    del raw["tasks"][TASK]
    ctl.follow(validate(raw))
    world.clock.now += 61
    checked: list[str] = []
    check = ctl.check

    async def spy(task: str) -> Verdict:
        checked.append(task)
        return await check(task)

    ctl.check = spy  # type: ignore[method-assign]
    assert await ctl.check_due() == 5.0  # the new task's interval, not the removed one's
    assert checked == ["summarize"]


def test_judge_after_a_manual_share_steps_to_the_next_configured_one() -> None:
    cfg = config(Path("/nonexistent")).tasks[TASK].canary
    row = ServingRow(TASK, "r1", "r2", 10.0, None, 1.0)
    healthy = ReleaseStats(requests=50, p95_latency_ms=10.0, cost_usd=0.5)
    verdict: Verdict = judge(TASK, row, cfg, healthy, healthy, 2.0)
    assert (verdict.action, verdict.next_percent) == ("step", 25.0)
    last = judge(
        TASK,
        ServingRow(TASK, "r1", "r2", 60.0, None, 1.0),
        config(Path("/x"), steps=[5, 60]).tasks[TASK].canary,
        healthy,
        healthy,
        2.0,
    )
    assert last.action == "promote"
    free = judge(TASK, row, cfg, healthy, ReleaseStats(requests=50, p95_latency_ms=10.0), 2.0)
    [cost] = [c for c in free.checks if c.name == "cost_per_request"]
    assert cost.ok is None and free.action == "step"
