"""The one background loop: runs on its interval, outlives failing runs, logs a streak of
failures once by type only, stops and is awaited on close, leaves no task behind."""

from __future__ import annotations

import asyncio
import logging

import pytest

from turnout._support.periodic import Periodic


async def eventually(condition: object, within_s: float = 5.0) -> None:
    assert callable(condition)
    async with asyncio.timeout(within_s):
        while not condition():  # noqa: ASYNC110 - polls a counter; there is no event to await
            await asyncio.sleep(0.005)


async def test_runs_at_once_or_after_one_interval() -> None:
    calls: list[str] = []

    async def tick() -> None:
        calls.append("run")

    now = Periodic("now", tick, 3600.0, first="now")
    later = Periodic("later", tick, 3600.0)
    now.start()
    later.start()
    await eventually(lambda: calls == ["run"])
    await asyncio.sleep(0.02)
    await now.aclose()
    await later.aclose()
    assert calls == ["run"] and now.runs == 1 and later.runs == 0


async def test_repeats_on_its_interval_and_honours_the_wait_a_run_returns() -> None:
    waits = iter([0.0, 0.0, 3600.0])

    async def tick() -> float:
        return next(waits)

    loop = Periodic("p", tick, 0.001, first="now")
    async with loop:
        await eventually(lambda: loop.runs == 3)
        await asyncio.sleep(0.02)
    assert loop.runs == 3  # the third run asked for an hour


async def test_a_failing_run_is_logged_once_per_streak_without_its_message(caplog: pytest.LogCaptureFixture) -> None:
    outcomes = iter([ValueError("secret prompt text"), ValueError("again"), None, KeyError("x"), None])

    async def tick() -> None:
        outcome = next(outcomes, None)
        if outcome is not None:
            raise outcome

    caplog.set_level(logging.DEBUG, logger="turnout")
    loop = Periodic("flaky", tick, 0.001, first="now")
    async with loop:
        await eventually(lambda: loop.runs >= 6)
    assert loop.failures == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2  # two streaks
    assert "ValueError at test_support_periodic.py" in errors[0] and "KeyError" in errors[1]
    recovered = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(recovered) == 2
    assert not any("secret prompt text" in r.getMessage() for r in caplog.records)


async def test_close_lets_the_run_in_progress_finish_and_stops_the_loop() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    finished: list[bool] = []

    async def tick() -> None:
        started.set()
        await release.wait()
        finished.append(True)

    loop = Periodic("slow", tick, 0.001, first="now")
    loop.start()
    await started.wait()
    closing = asyncio.ensure_future(loop.aclose())
    await asyncio.sleep(0.01)
    assert not closing.done()  # waits for the run
    release.set()
    await closing
    assert finished == [True] and loop.runs == 1 and not loop.running
    await loop.aclose()  # twice is fine
    tasks = [t for t in asyncio.all_tasks() if t.get_name() == "slow"]
    assert tasks == []


async def test_close_before_start_and_double_start() -> None:
    async def tick() -> None:
        return None

    loop = Periodic("p", tick, 1.0)
    await loop.aclose()
    loop2 = Periodic("q", tick, 1.0)
    loop2.start()
    with pytest.raises(RuntimeError, match="already started"):
        loop2.start()
    await loop2.aclose()
    with pytest.raises(ValueError, match="positive"):
        Periodic("r", tick, 0.0)
