"""Active health checks (turnout.providers.healthcheck) of an OpenAI-compatible target's
replicas, against fake upstreams: a replica that fails its check gets no live traffic within
two check intervals (counted at the fakes), and comes back through its breaker's half-open
once it passes again; the breaker's eject and recheck on their own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pydantic
import pytest

from tests.fakes.clock import Clock
from tests.fakes.upstream import FakeUpstream
from tests.serving import free_port
from turnout.config import BreakerConfig, HealthCheckConfig, OpenAITarget
from turnout.providers.balance import Candidate
from turnout.providers.base import Call, Timeouts
from turnout.providers.healthcheck import HealthChecks
from turnout.providers.openai import OpenAIProvider
from turnout.providers.transport import Client
from turnout.routing.breaker import Breaker, State

INTERVAL_S = 0.05
COOLDOWN_S = 0.2
FAST = Timeouts(connect=1.0, ttft=2.0, total=5.0)
BOUND_S = 10.0  # how long a wait for rounds may take before the test fails (a stuck loop)


def provider(*urls: str, **health: Any) -> OpenAIProvider:
    cfg = OpenAITarget.model_validate(
        {
            "provider": "openai",
            "base_urls": [u.removesuffix("/v1") + "/v1" for u in urls],
            "model": "m",
            "breaker": {"failures": 5, "cooldown_s": COOLDOWN_S},
            "health": {"interval_s": INTERVAL_S, "timeout_s": 1.0, **health},
        }
    )
    return OpenAIProvider("t", cfg)


def call() -> Call:
    return Call({"messages": [{"role": "user", "content": "hi"}]}, False, FAST, "req")


def chats(fake: FakeUpstream) -> int:
    return sum(1 for r in fake.requests if r.path == "/v1/chat/completions")


async def rounds(p: OpenAIProvider, n: int) -> None:
    """Until ``n`` more check rounds have completed."""
    assert p.checks is not None
    goal = p.checks.loop.runs + n
    async with asyncio.timeout(BOUND_S):
        while p.checks.loop.runs < goal:  # noqa: ASYNC110 - Periodic counts its runs; no event
            await asyncio.sleep(INTERVAL_S / 5)


async def until_closed(breaker: Breaker) -> None:
    async with asyncio.timeout(BOUND_S):
        while breaker.state is not State.CLOSED:  # noqa: ASYNC110 - a breaker has no event
            await asyncio.sleep(INTERVAL_S / 5)


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeUpstream, FakeUpstream]]:
    async with FakeUpstream() as a, FakeUpstream() as b:
        yield a, b


async def test_a_failing_replica_gets_no_live_traffic_within_two_intervals_and_comes_back(
    fakes: tuple[FakeUpstream, FakeUpstream],
) -> None:
    good, bad = fakes
    p = provider(good.base_url, bad.base_url)
    clock = Clock()  # moves only when the test says: no cool-down elapses on a slow machine
    for replica in p.replicas:
        replica.breaker.clock = clock
    try:
        await rounds(p, 1)
        assert [r.breaker.state for r in p.replicas] == [State.CLOSED, State.CLOSED]
        bad.health_status = 503
        await rounds(p, 2)  # within two intervals of the failure: a whole round has seen it
        assert p.replicas[1].breaker.state is State.OPEN
        assert p.checks is not None and p.checks.failing == {"r1": "HTTP 503"}
        before = chats(bad)
        answers = [await p.complete(call()) for _ in range(8)]
        assert [a.replica for a in answers] == ["r0"] * 8
        assert chats(bad) == before  # ejected before any live call had to fail there
        assert chats(good) == 8

        bad.health_status = 200
        clock.now += COOLDOWN_S * 2
        await until_closed(p.replicas[1].breaker)  # past its cool-down, the check was the probe
        assert (State.OPEN, State.HALF_OPEN) in p.replicas[1].breaker.transitions
        answers = [await p.complete(call()) for _ in range(4)]
        assert sorted(a.replica for a in answers) == ["r0", "r0", "r1", "r1"]  # ties rotate again
        assert chats(bad) == before + 2
    finally:
        await p.aclose()


async def test_checks_are_cheap_gets_never_completions(fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    good, _ = fakes
    p = provider(good.base_url, path="/v1/models")
    try:
        await rounds(p, 3)
        assert good.requests and {(r.method, r.path) for r in good.requests} == {("GET", "/v1/models")}
        assert good.health_checks == 0  # the configured path, not the default
    finally:
        await p.aclose()


async def test_the_default_path_is_health(fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    good, _ = fakes
    p = provider(good.base_url)
    try:
        await rounds(p, 2)
        assert good.health_checks >= 2
        assert good.requests == []  # nothing else reached it
    finally:
        await p.aclose()


async def test_an_unreachable_replica_is_ejected(fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    good, _ = fakes
    p = provider(good.base_url, f"http://127.0.0.1:{free_port()}")
    try:
        await rounds(p, 2)
        assert p.replicas[1].breaker.state is State.OPEN
        assert p.checks is not None and p.checks.failing["r1"].startswith("cannot connect")
        assert "127.0.0.1" not in p.checks.failing["r1"]  # no address in what an admin may read
        assert (await p.complete(call())).replica == "r0"
    finally:
        await p.aclose()


async def test_close_awaits_the_loop_and_stops_the_checks(fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    good, _ = fakes
    p = provider(good.base_url)
    await rounds(p, 1)
    await p.aclose()
    assert p.checks is not None and not p.checks.loop.running
    seen = good.health_checks
    await asyncio.sleep(INTERVAL_S * 3)
    assert good.health_checks == seen


async def test_no_health_config_no_checks(fakes: tuple[FakeUpstream, FakeUpstream]) -> None:
    good, _ = fakes
    cfg = OpenAITarget.model_validate({"provider": "openai", "base_url": good.base_url, "model": "m"})
    p = OpenAIProvider("t", cfg)
    await p.aclose()
    assert p.checks is None


async def test_the_check_url_is_the_replicas_host_and_port_with_the_path() -> None:
    replica = Candidate("r0", "http://gpu-1:8000/v1", Breaker(BreakerConfig()), "/metrics")
    checks = HealthChecks("t", [replica], Client(1, 1.0, {}), HealthCheckConfig())
    await checks.aclose()  # never started: closing is still safe
    assert [str(u) for u in checks.urls] == ["http://gpu-1:8000/health"]


@pytest.mark.parametrize("bad", [{"interval_s": 0}, {"timeout_s": -1}, {"path": "health"}, {"path": "/h?x=1"}])
def test_bad_health_config_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        HealthCheckConfig.model_validate(bad)


# --- the breaker's side --------------------------------------------------------------------


def state(b: Breaker) -> State:
    return b.state  # read afresh: each call may move it


def breaker(clock: Clock, failures: int = 3) -> Breaker:
    return Breaker(BreakerConfig(failures=failures, cooldown_s=10), clock, target="t", replica="r0")


def test_eject_opens_a_closed_breaker_at_once() -> None:
    b = breaker(Clock())
    b.eject("HTTP 503")
    assert state(b) is State.OPEN
    assert not b.allow()


def test_eject_of_an_open_breaker_restarts_its_cooldown() -> None:
    clock = Clock()
    b = breaker(clock)
    b.eject("timeout")
    clock.now = 9.0
    b.eject("timeout")  # still failing: another whole cool-down
    clock.now = 12.0
    assert not b.allow()
    clock.now = 19.5
    assert b.allow()  # the half-open probe


def test_recheck_closes_an_open_breaker_only_past_its_cooldown() -> None:
    clock = Clock()
    b = breaker(clock)
    b.eject("HTTP 500")
    clock.now = 5.0
    b.recheck()
    assert state(b) is State.OPEN
    clock.now = 10.0
    b.recheck()
    assert state(b) is State.CLOSED
    assert b.transitions[-2:] == [(State.OPEN, State.HALF_OPEN), (State.HALF_OPEN, State.CLOSED)]


def test_recheck_leaves_a_live_half_open_probe_alone() -> None:
    clock = Clock()
    b = breaker(clock)
    b.eject("HTTP 500")
    clock.now = 10.0
    assert b.allow()  # a live call is the probe
    b.recheck()
    assert state(b) is State.HALF_OPEN  # its verdict, not the check's
    b.failure()
    assert state(b) is State.OPEN


def test_a_passing_check_keeps_the_count_of_live_failures() -> None:
    b = breaker(Clock(), failures=2)
    b.failure()
    b.recheck()  # healthy by its check, but its completions fail
    b.failure()
    assert state(b) is State.OPEN


def test_eject_during_a_live_probe_keeps_it_open() -> None:
    clock = Clock()
    b = breaker(clock)
    b.eject("HTTP 500")
    clock.now = 10.0
    assert b.allow()
    b.eject("HTTP 500")
    b.success()  # the live probe answered, but the check says down: not closed by it
    assert state(b) is State.OPEN
