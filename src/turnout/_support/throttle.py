"""A token bucket for log lines: a burst of lines at once, then a steady rate. What it holds
back is counted, so that the next line that goes out can say how many it stands for."""

from __future__ import annotations

import time
from collections.abc import Callable


class Throttle:
    __slots__ = ("_clock", "_last", "_tokens", "burst", "per_s", "suppressed")

    def __init__(self, per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_s <= 0 or burst < 1:
            raise ValueError("per_s must be positive and burst at least 1")
        self.per_s = per_s
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self.suppressed = 0  # lines held back since the last one that went out

    def ready(self) -> bool:
        """Could a line go out now? Takes nothing and counts nothing."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.per_s)
        self._last = now
        return self._tokens >= 1.0

    def allow(self) -> bool:
        """May a line go out now? A line held back is counted in ``suppressed``."""
        if self.ready():
            self._tokens -= 1.0
            return True
        self.suppressed += 1
        return False

    def take(self) -> int:
        """Lines held back since the last call (for the line going out now to mention)."""
        n, self.suppressed = self.suppressed, 0
        return n

    def note(self) -> str:
        """``take``, as a suffix for the line going out: empty when nothing was held back."""
        n = self.take()
        return f" ({n} similar lines not logged)" if n else ""


class Throttles:
    """One ``Throttle`` per key (e.g. task × target), made on first use. At most ``max_keys``
    are kept: past that they start over, so keys a client chose cannot grow it without end."""

    __slots__ = ("_by_key", "burst", "clock", "max_keys", "per_s")

    def __init__(
        self, per_s: float, burst: int, max_keys: int = 1024, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_s = per_s
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self._by_key: dict[object, Throttle] = {}

    def __getitem__(self, key: object) -> Throttle:
        throttle = self._by_key.get(key)
        if throttle is None:
            if len(self._by_key) >= self.max_keys:
                self._by_key.clear()
            throttle = self._by_key[key] = Throttle(self.per_s, self.burst, self.clock)
        return throttle
