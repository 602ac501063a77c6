"""A circuit breaker per target or replica.

closed ──(N consecutive failures, or failure rate over the window)──▶ open
open ──(cool-down elapsed; the next call is let through as a probe)──▶ half-open
half-open ──probe succeeds──▶ closed      half-open ──probe fails──▶ open (cool-down again)

While half-open exactly one probe is in flight; other calls are refused as if open.

Each open and close is a WARN line naming the breaker (its target, and its replica for a
replica's own breaker): ``FLAP_BURST`` lines at once, then one per ``FLAP_EVERY_S`` while it
flaps (a dead upstream reopens after every failed probe). The moves held back are counted, and
the next line says them; at the latest the next call after a quiet spell logs where the breaker
stands, so the log's last word on a breaker is its state.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum

from turnout._support.throttle import Throttle
from turnout.config import BreakerConfig

log = logging.getLogger("turnout.breaker")

FLAP_BURST = 6  # open/close lines a breaker may log at once
FLAP_EVERY_S = 60.0  # then one per this while it keeps moving


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    __slots__ = (
        "_consecutive",
        "_lines",
        "_logged",
        "_opened_at",
        "_probing",
        "_window",
        "cfg",
        "clock",
        "replica",
        "state",
        "target",
        "transitions",
    )

    def __init__(
        self,
        cfg: BreakerConfig,
        clock: Callable[[], float] = time.monotonic,
        *,
        target: str | None = None,
        replica: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.target = target  # for the log: the target it guards ...
        self.replica = replica  # ... and the replica, for a replica's own breaker
        self.state = State.CLOSED
        self._consecutive = 0
        self._window: deque[bool] = deque(maxlen=cfg.window)
        self._opened_at = 0.0
        self._probing = False
        self.transitions: list[tuple[State, State]] = []
        self._lines = Throttle(1 / FLAP_EVERY_S, FLAP_BURST, clock)
        self._logged = State.CLOSED  # the state the log last told

    @property
    def name(self) -> str:
        target = self.target or "(unnamed)"
        return target if self.replica is None else f"{target} replica {self.replica}"

    def allow(self) -> bool:
        """May a call go through now? Reserves the half-open probe when it says yes to one."""
        if self._lines.suppressed:
            self._catch_up()
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

    def eject(self, why: str) -> None:
        """An active health check failed: open now, whatever the count, or stay open for
        another cool-down. It comes back as any open breaker does: through half-open."""
        self._probing = False
        was, self._opened_at = self.state, self.clock()
        self._move(State.OPEN)
        if was is not State.OPEN:
            self._say("failed its health check (%s); calls refused for %gs", why, self.cfg.cooldown_s)

    def recheck(self) -> None:
        """An active health check passed. An open breaker past its cool-down closes through
        the half-open probe (the check is that probe, not a live call); a closed one keeps
        its counts: a server that answers its health check may still fail every request."""
        if self.state is not State.CLOSED and self.available() and self.allow():
            self.success()

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
        was = self.state
        self._opened_at = self.clock()
        self._move(State.OPEN)
        if was is State.HALF_OPEN:
            self._say("the probe failed; open for another %gs", self.cfg.cooldown_s)
        else:
            self._say("opened after %s; calls refused for %gs", self._why(), self.cfg.cooldown_s)

    def _why(self) -> str:
        if self._consecutive >= self.cfg.failures:
            return f"{self._consecutive} consecutive failures"
        return f"{self._window.count(False)} failures in the last {len(self._window)} calls"

    def _move(self, to: State) -> None:
        if to is not self.state:
            self.transitions.append((self.state, to))
            was, self.state = self.state, to
            if to is State.CLOSED and was is State.HALF_OPEN:
                self._say("closed: a probe succeeded after %.0fs open", self.clock() - self._opened_at)

    # --- the log ---------------------------------------------------------------------------

    def _say(self, what: str, *args: object) -> None:
        """One WARN line for an open or a close, unless the breaker flaps (then counted)."""
        if not self._lines.allow():
            return
        self._logged = self.state
        held = self._lines.take()
        note = f" ({held} more opens and closes not logged: flapping)" if held else ""
        log.warning("breaker %s %s%s", self.name, what % args, note, extra={"fields": self._fields()})

    def _catch_up(self) -> None:
        """After moves held back: where the breaker stands, once a line may go out again."""
        if not self._lines.ready():
            return
        if self.state is State.HALF_OPEN:
            return  # the probe's outcome will say
        self._lines.allow()
        held = self._lines.take()
        if self._logged is self.state:
            return  # the moves held back cancelled out: the log still tells its state
        self._logged = self.state
        log.warning(
            "breaker %s is %s (%d opens and closes not logged: flapping)",
            self.name,
            self.state.value,
            held,
            extra={"fields": self._fields()},
        )

    def _fields(self) -> dict[str, object]:
        return {"breaker": self.name, "target": self.target, "replica": self.replica, "state": self.state.value}
