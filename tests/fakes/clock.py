"""A clock that moves only when a test says: a breaker's cool-down, a throttle's interval or a
TTL cannot elapse while a slow machine runs the code in between."""

from __future__ import annotations


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
