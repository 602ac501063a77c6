"""Each target's recent latency, live, in process: the last ``SIZE`` answered attempts.

Fed by finished requests (``serving.pipeline``: every attempt that answered) and read by the
caller's ``max_latency_ms`` (``routing.constraints``). Bounded: a deque per target, so memory is
``SIZE`` floats per target whatever the traffic. Per process, as the breaker is: each replica of
the gateway judges the targets by what it has seen itself.
"""

from __future__ import annotations

from collections import deque

SIZE = 200  # attempts: enough for a p95 that moves within a minute at modest traffic
MIN_SAMPLES = 5  # fewer: no p95 yet (a target is not judged on one slow answer)


class LatencyWindow:
    __slots__ = ("_p95", "_seen", "size")

    def __init__(self, size: int = SIZE) -> None:
        self.size = size
        self._seen: dict[str, deque[float]] = {}
        self._p95: dict[str, float | None] = {}  # cached until the next sample of that target

    def observe(self, target: str, latency_ms: float) -> None:
        seen = self._seen.get(target)
        if seen is None:
            seen = self._seen[target] = deque(maxlen=self.size)
        seen.append(latency_ms)
        self._p95.pop(target, None)

    def p95(self, target: str) -> float | None:
        """The nearest-rank 95th percentile of the window; None with too few samples."""
        if target in self._p95:
            return self._p95[target]
        seen = self._seen.get(target)
        p95 = None
        if seen is not None and len(seen) >= MIN_SAMPLES:
            ordered = sorted(seen)
            p95 = ordered[max(0, -(-95 * len(ordered) // 100) - 1)]
        self._p95[target] = p95
        return p95
