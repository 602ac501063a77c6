"""The canary controller: watches each running canary on live traffic and moves it along its
steps (5% → 25% → 50% → 100% → promoted) or rolls it back, without a human.

One ``check(task)``, every ``canary.interval_s``::

    serving row (canary, active, percent, step start = serving.updated_at)
    → ledger: release_stats(canary), release_stats(active) since the step started
      (live answers the release generated: no eval rows, no cache hits)
    → too few requests on either side ................ wait (the step extends)
    → upstream failures on the active side > budget ... wait: inconclusive
    → any metric check fails ......................... rollback at once
    → all pass ........................................ next step, or promote after the last

A canary put at 100% by hand leaves the active release no traffic to compare with, so it is
judged against the active release's own rows of the ``baseline_s`` before its step began
(``step_stats``): the same metric checks, rollback or promotion. With fewer than
``min_requests`` rows there, it has no baseline and is held to an error-free one: its error
rate must stay within ``max_error_rate_delta`` (latency and cost are not compared). Nothing at
100% tells the provider's trouble from the canary's, so its upstream failures count as its
errors: an outage rolls it back to the release that served before, the safe side.

The metric checks (``CanaryConfig``): error rate (canary − active, in points), p95 latency
(canary ÷ active), cost per request (canary ÷ active) and, once both sides have at least
``min_requests`` outcomes from feedback, outcome success (active − canary). A ratio whose
active side is zero is not checked (and says so).

Provider errors (``ReleaseStats.provider_errors``: every target failed, a stream broke
upstream) are counted apart, as Argo Rollouts counts a metric provider's errors apart from
metric failures: when the *active* release loses more than ``provider_error_budget`` of its
requests upstream, the providers are in trouble and the window says nothing about the
canary, so the step waits and the verdict reports it. While the active side is healthy, the
canary's upstream failures are its own (its route, its parameters) and count in its error
rate: a canary whose target fails 30% of the time is rolled back.

Every move is a transition in the release store, by ``turnout-canary``, whose why carries the
checks with their numbers. Waits are logged, not recorded: they change nothing.

Across replicas: before it acts, a controller claims the step in ``canary_claims`` (a table
of its own beside the release store's tables, in SQLite or PostgreSQL) keyed by task, canary and the step's start. The
claim is one ``INSERT … ON CONFLICT DO UPDATE … WHERE`` statement, so of two replicas that
reach the same verdict on the same step exactly one moves it; the other reports
``acted=False``. A claim whose holder died before acting goes stale after ``claim_ttl_s`` and
may be taken over. The winner re-reads the serving row before it acts, so a step that a
person moved meanwhile is left alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from turnout._support.failures import describe
from turnout._support.periodic import Periodic
from turnout._support.places import PgPlace, Place, lock_key
from turnout.config import CanaryConfig, Config
from turnout.errors import TurnoutError
from turnout.ledger.store import LedgerStore, ReleaseStats
from turnout.releases.store import ServingRow

log = logging.getLogger(__name__)

BY = "turnout-canary"
Action = Literal["none", "wait", "step", "promote", "rollback"]


class CanaryReleases(Protocol):
    """What the controller needs of ``turnout.releases.store.ReleaseStore``."""

    async def serving_row(self, task: str) -> ServingRow | None: ...

    async def set_canary_percent(self, task: str, percent: float, by: str, why: str) -> ServingRow: ...

    async def promote(self, task: str, name: str, by: str, why: str, *, force: bool = False) -> ServingRow: ...

    async def rollback(self, task: str, by: str, why: str, *, to_previous: bool = False) -> ServingRow: ...


@dataclass(frozen=True, slots=True)
class Check:
    """One metric compared: ``value`` (a delta in rate points or a ratio) against ``limit``.
    ``ok`` is None when it could not be checked (``detail`` says why)."""

    name: Literal["error_rate", "p95_latency", "cost_per_request", "success_rate", "live_pass_rate"]
    ok: bool | None
    value: float | None
    limit: float
    detail: str


@dataclass(frozen=True, slots=True)
class Verdict:
    task: str
    action: Action
    at: float
    canary: str | None = None
    active: str | None = None
    percent: float = 0.0  # the share the checked step ran at
    next_percent: float | None = None  # after a step (100 on promotion, 0 on rollback)
    since: float | None = None  # the step's start: the window's lower bound
    canary_stats: ReleaseStats | None = None
    active_stats: ReleaseStats | None = None
    checks: tuple[Check, ...] = ()
    inconclusive: bool = False  # a wait for upstream trouble, not for sample size
    why: str = ""
    acted: bool = False  # this controller made the transition (False: nothing to do, or another replica did)
    failed: tuple[str, ...] = field(default=())  # names of the failing checks

    @property
    def passed(self) -> bool:
        return self.action in ("step", "promote")


class CanaryController:
    def __init__(
        self,
        config: Config,
        release_store: CanaryReleases,
        ledger_store: LedgerStore,
        clock: Callable[[], float] = time.time,
        *,
        claims: StepClaims | None = None,
        replica: str | None = None,
    ) -> None:
        self.config = config
        self.releases = release_store
        self.ledger = ledger_store
        self.clock = clock
        self.claims = claims or StepClaims(config.state_at(config.releases.store_path), clock=clock)
        self.replica = replica or f"{os.uname().nodename}:{os.getpid()}:{id(self):x}"
        self.last: dict[str, Verdict] = {}  # the latest verdict per task, for the admin API
        self._loop = Periodic("turnout-canary", self.check_due, 1.0, first="now", logger=log)
        self._due_at: dict[str, float] = {}  # the next check of each task

    # --- one check -------------------------------------------------------------------------

    async def check(self, task: str) -> Verdict:
        """Judge the task's canary over its current step and act on the verdict."""
        now = self.clock()
        serving = await self.releases.serving_row(task)
        if serving is None or serving.canary is None or serving.active is None:
            return Verdict(task, "none", now, why="no canary running")
        cfg = self._canary_config(task)
        canary, active = await step_stats(self.ledger, serving, cfg)
        verdict = judge(task, serving, cfg, canary, active, now)
        if verdict.action in ("step", "promote", "rollback"):
            verdict = await self._act(serving, verdict)
        else:
            log.info("canary %s/%s at %g%%: %s", task, serving.canary, serving.canary_percent, verdict.why)
        self.last[task] = verdict
        return verdict

    async def _act(self, seen: ServingRow, verdict: Verdict) -> Verdict:
        task, canary = seen.task, verdict.canary
        assert canary is not None
        if not await self.claims.claim(task, canary, seen.updated_at, verdict.action, self.replica):
            return _not_acted(verdict, "another replica moved this step")
        now_row = await self.releases.serving_row(task)
        if now_row != seen:  # a person (or the CLI) moved it since we read it
            return _not_acted(verdict, "the serving row changed during the check")
        try:
            if verdict.action == "rollback":
                await self.releases.rollback(task, BY, verdict.why)
            elif verdict.action == "promote":
                await self.releases.promote(task, canary, BY, verdict.why)
            else:
                assert verdict.next_percent is not None
                await self.releases.set_canary_percent(task, verdict.next_percent, BY, verdict.why)
        except TurnoutError as exc:  # refused by the store: the state moved under us
            log.warning("canary %s/%s: %s refused: %s", task, canary, verdict.action, exc.message)
            return _not_acted(verdict, f"the release store refused: {exc.message}")
        log.warning("canary %s/%s: %s: %s", task, canary, verdict.action, verdict.why)
        return _replace(verdict, acted=True)

    def follow(self, config: Config) -> None:
        """Judge by a reloaded config (``Runtime.successor``): its tasks and their canary
        settings from the next check on; a removed task is no longer checked. The claims stay
        where they are (``releases.store_path`` changes only with a restart)."""
        self.config = config
        for task in [t for t in self._due_at if t not in config.tasks]:
            del self._due_at[task]

    def _canary_config(self, task: str) -> CanaryConfig:
        found = self.config.tasks.get(task)
        return found.canary if found is not None else CanaryConfig()

    # --- the loop --------------------------------------------------------------------------

    def start(self) -> None:
        if not self._loop.running:
            self._loop.start()

    async def aclose(self) -> None:
        """Stop the loop; a check in flight finishes first (its transition is one statement)."""
        await self._loop.aclose()

    async def check_due(self) -> float:
        """Check every configured task whose interval is due; the seconds until the next one."""
        now = self.clock()
        for task in self.config.tasks:
            if self._due_at.get(task, now) > now:
                continue
            self._due_at[task] = now + self._canary_config(task).interval_s
            try:
                await self.check(task)
            except Exception as exc:  # one bad task must not hold up the others; its next interval retries
                log.error("canary check of task %s failed: %s", task, describe(exc))
        return max(0.0, min(self._due_at.values(), default=now + 1.0) - self.clock())


async def step_stats(ledger: LedgerStore, serving: ServingRow, cfg: CanaryConfig) -> tuple[ReleaseStats, ReleaseStats]:
    """The two sides of a step: the canary since the step began, and the active release over
    the same window or, at 100% (it serves nobody), over the ``baseline_s`` before it."""
    assert serving.canary is not None and serving.active is not None
    task, since = serving.task, serving.updated_at
    if serving.canary_percent >= 100:
        active = ledger.release_stats(task, serving.active, since - cfg.baseline_s, until=since)
    else:
        active = ledger.release_stats(task, serving.active, since)
    canary, baseline = await asyncio.gather(ledger.release_stats(task, serving.canary, since), active)
    return canary, baseline


def judge(
    task: str, serving: ServingRow, cfg: CanaryConfig, canary: ReleaseStats, active: ReleaseStats, now: float
) -> Verdict:
    """The verdict on one step, from the two sides' stats (``step_stats``): pure, no I/O."""
    assert serving.canary is not None
    base = Verdict(
        task,
        "wait",
        now,
        canary=serving.canary,
        active=serving.active,
        percent=serving.canary_percent,
        since=serving.updated_at,
        canary_stats=canary,
        active_stats=active,
    )
    if serving.canary_percent >= 100:
        return _at_full_share(base, cfg, canary, active)
    sample = f"canary {canary.served}, active {active.served} requests"
    if canary.served < cfg.min_requests or active.served < cfg.min_requests:
        return _replace(base, why=f"too few requests to judge ({sample}; {cfg.min_requests} needed on each side)")
    upstream = (
        f"upstream failures: canary {_pct(canary.provider_error_rate)} ({canary.provider_errors}), "
        f"active {_pct(active.provider_error_rate)} ({active.provider_errors})"
    )
    if active.provider_error_rate > cfg.provider_error_budget:
        why = f"inconclusive: {upstream}; the active side is past the budget of {_pct(cfg.provider_error_budget)}"
        return _replace(base, inconclusive=True, why=why)
    checks = metric_checks(cfg, canary, active)
    failed = tuple(c.name for c in checks if c.ok is False)
    numbers = "; ".join(c.detail for c in checks if c.ok is not None or c.name != "success_rate")
    at = f"{serving.canary_percent:g}%"
    if failed:
        why = f"canary analysis failed at {at} ({sample}): " + "; ".join(c.detail for c in checks if c.ok is False)
        return _replace(base, action="rollback", next_percent=0.0, checks=checks, failed=failed, why=why)
    # A step of 100% would leave the active side without traffic to compare against, so the
    # last comparable step passing is the promotion.
    later = [p for p in cfg.steps if serving.canary_percent < p < 100]
    if not later:
        why = f"canary analysis passed at {at} ({sample}): {numbers}; last step: promoted"
        return _replace(base, action="promote", next_percent=100.0, checks=checks, why=why)
    nxt = min(later)
    why = f"canary analysis passed at {at} ({sample}): {numbers}; next step {nxt:g}%"
    return _replace(base, action="step", next_percent=nxt, checks=checks, why=why)


def _at_full_share(base: Verdict, cfg: CanaryConfig, canary: ReleaseStats, baseline: ReleaseStats) -> Verdict:
    """At 100%: the canary against the active release's rows before its step (``baseline``),
    or, with too few of them, against an error-free release (see the module's docstring)."""
    window = f"{base.active} in the {cfg.baseline_s:g} s before this step"
    if canary.served < cfg.min_requests:
        why = f"too few requests to judge at 100% (canary {canary.served}; {cfg.min_requests} needed)"
        return _replace(base, why=why)
    if baseline.served >= cfg.min_requests:
        against, compared = baseline, f"against {window} ({baseline.served} requests)"
    else:
        against = ReleaseStats()
        compared = (
            f"against no baseline ({window}: {baseline.served} requests, {cfg.min_requests} needed), "
            "so an error-free one"
        )
    checks = metric_checks(cfg, canary, against)
    failed = tuple(c.name for c in checks if c.ok is False)
    sample = f"canary {canary.served} requests"
    if failed:
        details = "; ".join(c.detail for c in checks if c.ok is False)
        why = f"canary analysis failed at 100% {compared} ({sample}): {details}"
        return _replace(base, action="rollback", next_percent=0.0, checks=checks, failed=failed, why=why)
    numbers = "; ".join(c.detail for c in checks if c.ok is not None or c.name != "success_rate")
    why = f"canary analysis passed at 100% {compared} ({sample}): {numbers}; promoted"
    return _replace(base, action="promote", next_percent=100.0, checks=checks, why=why)


def metric_checks(cfg: CanaryConfig, canary: ReleaseStats, active: ReleaseStats) -> tuple[Check, ...]:
    delta = canary.error_rate - active.error_rate
    errors = Check(
        "error_rate",
        delta <= cfg.max_error_rate_delta,
        delta,
        cfg.max_error_rate_delta,
        f"error rate {_pct(canary.error_rate)} vs {_pct(active.error_rate)} "
        f"({delta * 100:+.1f} points, limit +{cfg.max_error_rate_delta * 100:.1f})",
    )
    p95 = _ratio("p95_latency", "p95 latency", canary.p95_latency_ms, active.p95_latency_ms, cfg.max_p95_ratio, "ms")
    cost = _ratio(
        "cost_per_request",
        "cost per request",
        canary.cost_per_request,
        active.cost_per_request,
        cfg.max_cost_ratio,
        "$",
    )
    checks = errors, p95, cost, _success(cfg, canary, active)
    return checks if cfg.min_live_pass_rate is None else (*checks, _live(cfg.min_live_pass_rate, cfg, canary))


def _live(floor: float, cfg: CanaryConfig, canary: ReleaseStats) -> Check:
    """The canary's own live-scoring pass rate against a floor (``min_live_pass_rate``)."""
    rate = canary.live_pass_rate
    if rate is None or canary.live_scored < cfg.min_requests:
        detail = f"live pass rate not checked ({canary.live_scored} scored answers; {cfg.min_requests} needed)"
        return Check("live_pass_rate", None, None, floor, detail)
    return Check("live_pass_rate", rate >= floor, rate, floor, f"live pass rate {_pct(rate)} (at least {_pct(floor)})")


def _ratio(
    name: Literal["p95_latency", "cost_per_request"],
    label: str,
    canary: float | None,
    active: float | None,
    limit: float,
    unit: str,
) -> Check:

    def shown(v: float) -> str:
        return f"{v:.0f} ms" if unit == "ms" else f"${v:.6f}"

    if canary is None or active is None or active <= 0:
        return Check(name, None, None, limit, f"{label} not compared (the active side has none)")
    ratio = canary / active
    return Check(
        name,
        ratio <= limit,
        ratio,
        limit,
        f"{label} {shown(canary)} vs {shown(active)} (×{ratio:.2f}, limit ×{limit:g})",
    )


def _success(cfg: CanaryConfig, canary: ReleaseStats, active: ReleaseStats) -> Check:
    limit = cfg.max_success_drop
    if (
        canary.success_rate is None
        or active.success_rate is None
        or min(canary.outcomes, active.outcomes) < cfg.min_requests
    ):
        detail = (
            f"success rate not compared (outcomes: canary {canary.outcomes}, active {active.outcomes}; "
            f"{cfg.min_requests} needed on each side)"
        )
        return Check("success_rate", None, None, limit, detail)
    drop = active.success_rate - canary.success_rate
    return Check(
        "success_rate",
        drop <= limit,
        drop,
        limit,
        f"success rate {_pct(canary.success_rate)} vs {_pct(active.success_rate)} "
        f"({-drop * 100:+.1f} points, limit -{limit * 100:.1f})",
    )


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def _replace(verdict: Verdict, **changes: object) -> Verdict:
    return dataclasses.replace(verdict, **changes)  # type: ignore[arg-type]


def _not_acted(verdict: Verdict, reason: str) -> Verdict:
    log.info("canary %s/%s: %s not made here: %s", verdict.task, verdict.canary, verdict.action, reason)
    return _replace(verdict, acted=False, why=f"{verdict.why} [not acted: {reason}]")


class StepClaims:
    """Who moves which step, shared by the replicas through the release store (its SQLite file,
    or the fleet's PostgreSQL).

    ``canary_claims`` is this module's own table (created if missing; the release store's
    migrations never touch it). Claims are rare (one per step and replica), so each opens its
    own short-lived connection on a worker thread."""

    _CREATE = """CREATE TABLE IF NOT EXISTS canary_claims (
        task       TEXT NOT NULL,
        canary     TEXT NOT NULL,
        step_since DOUBLE PRECISION NOT NULL,
        action     TEXT NOT NULL,
        holder     TEXT NOT NULL,
        at         DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (task, canary, step_since)
    )"""
    # Insert, or take over a stale claim: either way one statement, so one winner.
    _CLAIM = """INSERT INTO canary_claims VALUES (?, ?, ?, ?, ?, ?)
        ON CONFLICT (task, canary, step_since) DO UPDATE
        SET action = excluded.action, holder = excluded.holder, at = excluded.at
        WHERE canary_claims.at < ?"""

    def __init__(self, place: Place | Path, *, clock: Callable[[], float] = time.time, ttl_s: float = 120.0) -> None:
        self.place = place if isinstance(place, PgPlace) else str(place)
        self.clock = clock
        self.ttl_s = ttl_s

    async def claim(self, task: str, canary: str, step_since: float, action: str, holder: str) -> bool:
        now = self.clock()
        params = (task, canary, step_since, action, holder, now, now - self.ttl_s)
        return await asyncio.to_thread(self._claim, params)

    def _claim(self, params: tuple[object, ...]) -> bool:
        if isinstance(self.place, PgPlace):
            from turnout._support import pgworker

            pg = pgworker.connect(self.place, name="turnout-canary")
            try:
                with pg.raw.transaction():  # replicas creating the table at once: one at a time
                    pg.raw.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(self.place.schema or "", "claims"),))
                    pg.execute(self._CREATE)
                return pg.execute(self._CLAIM, params).rowcount > 0
            finally:
                pg.raw.close()
        conn = sqlite3.connect(self.place, timeout=10.0, isolation_level=None)
        try:
            conn.execute(self._CREATE)
            return conn.execute(self._CLAIM, params).rowcount > 0
        finally:
            conn.close()
