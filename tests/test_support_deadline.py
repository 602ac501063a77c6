"""``deadline_at``: asyncio.timeout_at's semantics on one shared coarse timer per loop."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from turnout._support import deadline as dl
from turnout._support.deadline import TICK, deadline_at


def _wheel() -> dl._Wheel:
    return dl._wheels[asyncio.get_running_loop()]


async def test_a_deadline_that_passes_raises_timeout_error_late_by_at_most_a_tick() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(TimeoutError):
        async with deadline_at(start + 0.1) as d:
            await asyncio.sleep(5)
    waited = loop.time() - start
    assert d.expired()
    assert 0.1 <= waited < 0.1 + TICK + 0.1  # never early; late by one tick plus scheduling


async def test_a_block_that_ends_in_time_is_untouched_and_leaves_no_live_deadline() -> None:
    loop = asyncio.get_running_loop()
    async with deadline_at(loop.time() + 5) as d:
        await asyncio.sleep(0.01)
    assert not d.expired()
    assert _wheel().live == 0
    await asyncio.sleep(2 * TICK)  # the timer stops once nothing is live
    assert _wheel()._timer is None


async def test_a_deadline_given_the_running_loop_shares_its_wheel_and_fires() -> None:
    # The transport passes the loop it already holds (no lookup per call): same wheel, same timing.
    loop = asyncio.get_running_loop()
    d = deadline_at(loop.time() + 0.05, loop)
    assert d._wheel is _wheel()
    with pytest.raises(TimeoutError):
        async with d:
            await asyncio.sleep(5)
    assert d.expired()
    assert _wheel().live == 0


async def test_reschedule_moves_the_deadline_later_and_earlier() -> None:
    loop = asyncio.get_running_loop()
    async with deadline_at(loop.time() + 0.05) as d:
        d.reschedule(loop.time() + 5)
        await asyncio.sleep(0.2)  # past the first deadline: not fired
    assert not d.expired()
    start = loop.time()

    async def moved_earlier() -> None:
        async with deadline_at(start + 5) as d2:
            d2.reschedule(start + 0.1)
            await asyncio.sleep(5)

    with pytest.raises(TimeoutError):
        await moved_earlier()
    assert loop.time() - start < 1


async def test_a_deadline_already_past_fires_on_the_next_tick() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        async with deadline_at(loop.time() - 10):
            await asyncio.sleep(1)


async def test_a_cancel_from_outside_stays_a_cancellation() -> None:
    loop = asyncio.get_running_loop()
    entered = asyncio.Event()

    async def body() -> None:
        async with deadline_at(loop.time() + 5):
            entered.set()
            await asyncio.sleep(5)

    task = asyncio.create_task(body())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _wheel().live == 0


async def test_an_outer_cancel_and_our_deadline_at_once_stay_a_cancellation() -> None:
    loop = asyncio.get_running_loop()

    async def body() -> None:
        async with deadline_at(loop.time() + 0.06):
            try:
                await asyncio.sleep(5)
            finally:
                await asyncio.sleep(0.2)  # shield-like cleanup across our deadline

    task = asyncio.create_task(body())
    await asyncio.sleep(0.02)
    task.cancel()  # the outer cancel first
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_many_deadlines_fire_each_only_its_own_task() -> None:
    loop = asyncio.get_running_loop()
    now = loop.time()

    async def one(after: float, work: float) -> str:
        try:
            async with deadline_at(now + after):
                await asyncio.sleep(work)
            return "done"
        except TimeoutError:
            return "timeout"

    results = await asyncio.gather(*(one(0.1 if i % 2 else 5, 0.3) for i in range(200)))
    assert results.count("timeout") == 100
    assert all(r == ("timeout" if i % 2 else "done") for i, r in enumerate(results))
    assert _wheel().live == 0


async def test_a_stalled_loop_fires_every_due_deadline_without_walking_each_tick() -> None:
    loop = asyncio.get_running_loop()
    wheel_deadline = deadline_at(loop.time() - 1)
    wheel = wheel_deadline._wheel
    fired: list[bool] = []

    class _Task:
        def done(self) -> bool:
            return False

        def cancel(self) -> None:
            fired.append(True)

    wheel_deadline._task = _Task()  # type: ignore[assignment]
    wheel.add(wheel_deadline)
    wheel._done -= 10_000_000  # as if the loop had stalled for days before its timer ran
    await asyncio.sleep(3 * TICK)
    assert fired == [True]
    assert wheel.live == 0


def test_each_event_loop_has_its_own_wheel_and_closed_loops_are_forgotten() -> None:
    async def use() -> dl._Wheel:
        async with deadline_at(asyncio.get_running_loop().time() + 1):
            pass
        return _wheel()

    first = asyncio.run(use())
    second = uvloop.run(use())
    assert first is not second
    assert sum(1 for loop in dl._wheels if loop.is_closed()) <= 1  # the older one dropped on the next
