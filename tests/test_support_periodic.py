"""The one background loop: runs on its interval (at once or after one interval), honours the
wait a run asks for, outlives failing runs and logs a streak of failures once by type and
place only, lets the run in progress finish on close, and leaves no task behind.

Timing runs on a virtual clock (``tests.virtual_time``): the times asserted are the event
loop's, exact and repeatable, never the wall clock's."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Literal

import pytest

from tests import virtual_time
from turnout._support.periodic import Periodic


class Ticks:
    """A tick that records when it ran and lets the test wait for the n-th run."""

    def __init__(self, body: Callable[[int], Awaitable[float | None]] | None = None) -> None:
        self.at: list[float] = []
        self._body = body
        self._ran = asyncio.Condition()

    async def __call__(self) -> float | None:
        self.at.append(asyncio.get_running_loop().time())
        async with self._ran:
            self._ran.notify_all()
        return None if self._body is None else await self._body(len(self.at))

    async def wait_for(self, runs: int) -> None:
        async with self._ran:
            await self._ran.wait_for(lambda: len(self.at) >= runs)


def other_tasks() -> set[asyncio.Task[object]]:
    return asyncio.all_tasks() - {asyncio.current_task()}


@pytest.mark.parametrize(("first", "expected"), [("now", [0.0, 10.0, 20.0]), ("later", [10.0, 20.0, 30.0])])
def test_runs_every_interval_from_now_or_from_one_interval_on(
    first: Literal["now", "later"], expected: list[float]
) -> None:
    async def scenario() -> list[float]:
        tick = Ticks()
        async with Periodic("p", tick, 10.0, first=first):
            await tick.wait_for(3)
        return tick.at

    assert virtual_time.run(scenario()) == expected


def test_a_run_may_ask_for_its_own_wait() -> None:
    async def next_wait(run: int) -> float | None:
        return {1: 2.5, 2: 0.0}.get(run)  # then None: the interval

    async def scenario() -> list[float]:
        tick = Ticks(next_wait)
        async with Periodic("p", tick, 10.0, first="now"):
            await tick.wait_for(4)
        return tick.at

    assert virtual_time.run(scenario()) == [0.0, 2.5, 2.5, 12.5]


def test_a_zero_wait_still_lets_other_tasks_run() -> None:
    async def again(run: int) -> float:
        return 0.0

    async def scenario() -> tuple[int, bool]:
        tick = Ticks(again)
        other = asyncio.Event()
        async with Periodic("busy", tick, 10.0, first="now"):
            asyncio.get_running_loop().call_soon(other.set)
            await other.wait()  # reached although every run asks to run again at once
        return len(tick.at), asyncio.get_running_loop().time() == 0.0

    runs, no_time_passed = virtual_time.run(scenario())
    assert runs >= 1 and no_time_passed


def test_a_failing_run_is_logged_once_per_streak_by_type_and_place(caplog: pytest.LogCaptureFixture) -> None:
    outcomes: list[Exception | None] = [ValueError("secret prompt text"), ValueError("again"), None, KeyError("x")]

    async def body(run: int) -> None:
        outcome = outcomes[run - 1] if run <= len(outcomes) else None
        if outcome is not None:
            raise outcome

    async def scenario() -> tuple[list[float], int, int]:
        tick = Ticks(body)
        loop = Periodic("flaky", tick, 10.0, first="now")
        async with loop:
            await tick.wait_for(6)
        return tick.at, loop.runs, loop.failures

    caplog.set_level(logging.DEBUG, logger="turnout")
    at, runs, failures = virtual_time.run(scenario())
    assert at == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]  # a failed run waits the interval too
    assert (runs, failures) == (6, 3)  # close let the sixth run finish
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2  # one per streak; the repeat is at debug level
    assert "ValueError at test_support_periodic.py" in errors[0] and "KeyError" in errors[1]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == ["flaky: runs succeed again"] * 2
    assert not any("secret prompt text" in r.getMessage() for r in caplog.records)


def test_close_lets_the_run_in_progress_finish_then_nothing_is_left() -> None:
    async def scenario() -> None:
        started, release = asyncio.Event(), asyncio.Event()
        finished: list[float] = []

        async def slow(run: int) -> None:
            started.set()
            await release.wait()
            finished.append(asyncio.get_running_loop().time())

        loop = Periodic("slow", Ticks(slow), 10.0, first="now")
        loop.start()
        await started.wait()
        closing = asyncio.create_task(loop.aclose())
        await asyncio.sleep(5.0)
        assert not closing.done()  # it waits for the run
        release.set()
        await closing
        assert finished == [5.0] and loop.runs == 1 and not loop.running
        assert other_tasks() == set()
        await loop.aclose()  # twice is fine

    virtual_time.run(scenario())


def test_close_stops_a_waiting_loop_at_once() -> None:
    async def scenario() -> None:
        tick = Ticks()
        loop = Periodic("idle", tick, 3600.0, first="later")
        loop.start()
        await asyncio.sleep(60.0)
        await loop.aclose()
        assert asyncio.get_running_loop().time() == 60.0  # no wait for the hour to end
        assert tick.at == [] and other_tasks() == set()

    virtual_time.run(scenario())


def test_start_close_and_restart() -> None:
    async def scenario() -> None:
        tick = Ticks()
        loop = Periodic("p", tick, 10.0, first="now")
        await loop.aclose()  # before start: nothing to do
        loop.start()
        with pytest.raises(RuntimeError, match="already started"):
            loop.start()
        await tick.wait_for(1)
        await loop.aclose()
        loop.start()  # a closed loop may start again
        await tick.wait_for(2)
        await loop.aclose()
        assert tick.at == [0.0, 0.0]

    virtual_time.run(scenario())
    with pytest.raises(ValueError, match="positive"):
        Periodic("r", Ticks(), 0.0, first="now")
