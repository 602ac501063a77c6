"""``async with deadline_at(when):`` — ``asyncio.timeout_at`` on a shared, coarse clock.

``asyncio.timeout_at`` arms a loop timer on entry and moves or cancels it on every
``reschedule`` and exit: two timer starts and two stops per upstream call, each a native timer
in uvloop. On a gateway core that is about a tenth of a request's CPU. Here a deadline only joins
a set (its slot: the ``TICK`` it falls in) and leaves it on exit; one timer per event loop runs
every ``TICK`` while any deadline is live, and cancels the tasks whose slot has passed.

The semantics are ``asyncio.Timeout``'s: the task is cancelled, and the cancellation leaves the
block as ``TimeoutError`` (a cancellation from elsewhere stays a cancellation). A deadline fires
at most ``TICK`` late and never early. Meant for deadlines of a second or more (an upstream's
time to first token, its total); short precise sleeps keep ``asyncio``'s own timers.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

TICK = 0.05  # seconds: how late a deadline may fire


class Deadline:
    """One task's deadline, in the loop's clock (``loop.time()``)."""

    __slots__ = ("_cancelling", "_expired", "_slot", "_task", "_wheel", "when")

    def __init__(self, wheel: _Wheel, when: float) -> None:
        self._wheel = wheel
        self.when = when
        self._task: asyncio.Task[object] | None = None
        self._slot: int | None = None
        self._expired = False
        self._cancelling = 0

    def expired(self) -> bool:
        """True once this deadline has cancelled its task."""
        return self._expired

    def reschedule(self, when: float) -> None:
        """Move the deadline (e.g. from the head's to the whole answer's)."""
        self.when = when
        if self._slot is not None:
            self._wheel.remove(self)
            self._wheel.add(self)

    async def __aenter__(self) -> Deadline:
        task = asyncio.current_task(self._wheel.loop)  # its loop given: no lookup (a getpid() each)
        if task is None:
            raise RuntimeError("a deadline needs a running task")
        self._task = task
        self._cancelling = task.cancelling()
        self._wheel.add(self)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._slot is not None:
            self._wheel.remove(self)
        if not self._expired or self._task is None:
            return
        # Ours: undo our cancel; the block ends in TimeoutError unless someone else cancelled too.
        if self._task.uncancel() <= self._cancelling and kind is not None and issubclass(kind, asyncio.CancelledError):
            raise TimeoutError from exc

    def _fire(self) -> None:
        self._slot = None
        if self._task is not None and not self._task.done():
            self._expired = True
            self._task.cancel()


class _Wheel:
    """The live deadlines of one event loop, by slot; one timer, only while any is live."""

    __slots__ = ("_done", "_slots", "_timer", "live", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._slots: dict[int, set[Deadline]] = {}
        self._done = int(loop.time() / TICK)  # every slot up to this one has fired
        self._timer: asyncio.TimerHandle | None = None
        self.live = 0

    def add(self, d: Deadline) -> None:
        if self._timer is None and not self.live:  # idle until now: nothing between to fire
            self._done = int(self.loop.time() / TICK)
        slot = max(int(d.when / TICK) + 1, self._done + 1)  # the first tick at or after ``when``
        members = self._slots.get(slot)
        if members is None:
            members = self._slots[slot] = set()
        members.add(d)
        d._slot = slot
        self.live += 1
        if self._timer is None:
            self._timer = self.loop.call_at((self._done + 1) * TICK, self._tick)

    def remove(self, d: Deadline) -> None:
        slot, d._slot = d._slot, None
        members = self._slots.get(slot) if slot is not None else None
        if members is not None and d in members:
            members.discard(d)
            self.live -= 1
            if not members:
                del self._slots[slot]  # type: ignore[arg-type]

    def _tick(self) -> None:
        self._timer = None
        now = int(self.loop.time() / TICK)
        if now - self._done > len(self._slots):  # a stalled loop: visit the live slots only
            due = sorted(s for s in self._slots if s <= now)
        else:
            due = list(range(self._done + 1, now + 1))
        self._done = max(self._done, now)
        for slot in due:
            members = self._slots.pop(slot, None)
            if members:
                self.live -= len(members)
                for d in members:
                    d._fire()
        if self.live > 0:
            self._timer = self.loop.call_at((self._done + 1) * TICK, self._tick)


_wheels: dict[asyncio.AbstractEventLoop, _Wheel] = {}


def deadline_at(when: float, loop: asyncio.AbstractEventLoop | None = None) -> Deadline:
    """A deadline at ``when`` on the running loop's clock (``loop``: the running loop, where
    the caller has it already)."""
    if loop is None:
        loop = asyncio.get_running_loop()
    wheel = _wheels.get(loop)
    if wheel is None:
        for old in [k for k in _wheels if k.is_closed()]:  # loops of tests come and go
            del _wheels[old]
        wheel = _wheels[loop] = _Wheel(loop)
    return Deadline(wheel, when)
