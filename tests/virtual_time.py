"""A fake clock for asyncio: an event loop whose time jumps to the next timer whenever nothing
is ready to run, so an hour-long interval passes at once and ``loop.time()`` reads exact,
repeatable values. Tests of timing assert on those values, never on the wall clock.

    def test_x() -> None:
        virtual_time.run(scenario())  # loop.time() starts at 0.0

Only for code that waits on timers and on other tasks: when nothing is scheduled at all the
loop blocks on real I/O as usual, but while a timer is pending it does not wait for sockets or
worker threads before jumping to it.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpingSelector(selectors.DefaultSelector):
    """Polls without waiting; a wait for a timer becomes a jump of the clock instead."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer at all: only I/O (the loop's own wake-up) can come
            return super().select(None)
        self.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._clock = _JumpingSelector()
        super().__init__(self._clock)

    def time(self) -> float:
        return self._clock.now


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a fresh ``VirtualTimeLoop``, then close it."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main)
