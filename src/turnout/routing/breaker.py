"""A circuit breaker per target or replica.

closed ──(N consecutive failures, or failure rate over the window)──▶ open
open ──(cool-down elapsed; the next call is let through as a probe)──▶ half-open
half-open ──probe succeeds──▶ closed      half-open ──probe fails──▶ open (cool-down again)

While half-open exactly one probe is in flight; other calls are refused as if open.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum

from turnout.config import BreakerConfig


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    __slots__ = ("_consecutive", "_opened_at", "_probing", "_window", "cfg", "clock", "state", "transitions")

    def __init__(self, cfg: BreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.clock = clock
        self.state = State.CLOSED
        self._consecutive = 0
        self._window: deque[bool] = deque(maxlen=cfg.window)
        self._opened_at = 0.0
        self._probing = False
        self.transitions: list[tuple[State, State]] = []

    def allow(self) -> bool:
        """May a call go through now? Reserves the half-open probe when it says yes to one."""
        if self.state is State.CLOSED:
            return True
        if self.state is State.OPEN:
            if self.clock() - self._opened_at < self.cfg.cooldown_s:
                return False
            self._move(State.HALF_OPEN)
        if self._probing:
            return False
        self._probing = True
        return True

    def available(self) -> bool:
        """Like ``allow`` but reserves nothing: for choosing among replicas."""
        if self.state is State.CLOSED:
            return True
        if self.state is State.OPEN:
            return self.clock() - self._opened_at >= self.cfg.cooldown_s
        return not self._probing

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a probe through."""
        if self.state is not State.OPEN:
            return 0.0
        return max(0.0, self.cfg.cooldown_s - (self.clock() - self._opened_at))

    def success(self) -> None:
        self._consecutive = 0
        self._window.append(True)
        if self.state is State.HALF_OPEN:
            self._probing = False
            self._window.clear()
            self._move(State.CLOSED)

    def failure(self) -> None:
        self._consecutive += 1
        self._window.append(False)
        if self.state is State.HALF_OPEN:
            self._probing = False
            self._trip()
        elif self.state is State.CLOSED and self._should_open():
            self._trip()

    def release(self) -> None:
        """A call that was allowed ended without a verdict (the caller went away)."""
        if self.state is State.HALF_OPEN:
            self._probing = False

    def _should_open(self) -> bool:
        if self._consecutive >= self.cfg.failures:
            return True
        n = len(self._window)
        if n < self.cfg.min_calls:
            return False
        return self._window.count(False) / n >= self.cfg.failure_rate

    def _trip(self) -> None:
        self._opened_at = self.clock()
        self._move(State.OPEN)

    def _move(self, to: State) -> None:
        if to is not self.state:
            self.transitions.append((self.state, to))
            self.state = to
