"""What a task's recorded traffic looks like, as plain data the planner can price.

``Traffic`` is built from ledger rows by ``traffic_from_rows`` (or by hand, in tests and for
what-if questions); nothing in it refers to a store, a config or a price.

Definitions:

* The observed window is whole hours in UTC: from the hour of the first request to ``end``
  (default: the end of the hour of the last request). ``days`` is its length in days.
* ``hours``: one ``HourBucket`` per hour of the window, quiet hours included, with the
  requests that *started* in it and their prompt and completion tokens.
* ``peak_concurrency`` (per hour and overall): the most requests in flight at one instant,
  each in flight over ``[started_at, started_at + latency_ms)``; a request that ends as
  another starts does not overlap it. The exact maximum, not a percentile: the fleet must
  carry the worst instant or queue it.
* Caller errors (status 4xx) are left out throughout: they are not tasks and used no model.
  So are ``turnout eval``'s rows (``evaluation``, or its own tenant ``EVAL_TENANT``): golden
  cases, not traffic; a golden set run in one hour sized the fleet for that burst.
* Response-cache hits (``cache_hit``) are requests, each a task done, but no model generated
  them under any option (the cache answers in front of every one): they add no tokens and are
  never in flight. Counted as load, 100 followers of one single-flight miss sized a fleet for
  100 calls at once that the model never saw.
* ``targets``: per target that served, its requests and its feedback; ``success_rate`` is
  successes ÷ requests with feedback (``outcome`` set), None when none has feedback.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from turnout.ledger.record import LedgerRow
from turnout.ledger.store import EVAL_TENANT, is_caller_error

HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class HourBucket:
    start: float  # unix seconds, on the hour (UTC)
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    peak_concurrency: int = 0  # the most requests in flight at one instant of the hour

    @property
    def hour_of_day(self) -> int:
        return int(self.start // HOUR) % 24


@dataclass(frozen=True, slots=True)
class TargetStats:
    requests: int = 0
    outcomes: int = 0  # requests with feedback
    successes: int = 0

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.outcomes if self.outcomes else None


@dataclass(frozen=True, slots=True)
class Traffic:
    task: str
    hours: tuple[HourBucket, ...]
    targets: dict[str, TargetStats] = field(default_factory=dict)

    @property
    def days(self) -> float:
        return len(self.hours) / 24

    @property
    def peak_concurrency(self) -> int:
        return max((h.peak_concurrency for h in self.hours), default=0)

    @property
    def requests(self) -> int:
        return sum(h.requests for h in self.hours)

    @property
    def input_tokens(self) -> int:
        return sum(h.input_tokens for h in self.hours)

    @property
    def output_tokens(self) -> int:
        return sum(h.output_tokens for h in self.hours)

    @property
    def success_rate(self) -> float | None:
        """Over every target: successes ÷ requests with feedback."""
        stats = self.targets.values()
        outcomes = sum(s.outcomes for s in stats)
        return sum(s.successes for s in stats) / outcomes if outcomes else None

    def busiest_target(self) -> str | None:
        targets = self.targets
        return max(targets, key=lambda name: (targets[name].requests, name)) if targets else None


def traffic_from_rows(rows: Iterable[LedgerRow], task: str, end: float | None = None) -> Traffic:
    """``task``'s traffic in ``rows`` (other tasks' rows are skipped), in any order. ``end``:
    where the window stops (the CLI passes now, so quiet hours at the end count); rows at or
    after it are skipped."""
    tally = TrafficTally(task, end)
    for row in sorted(rows, key=lambda r: r.started_at):
        tally.add(row)
    return tally.traffic()


class TrafficTally:
    """``traffic_from_rows`` a row at a time, oldest first (the ledger's order), keeping per
    hour and per target counts and the requests still in flight, never the rows: ``plan`` reads
    a window of any size a page at a time."""

    def __init__(self, task: str, end: float | None = None) -> None:
        self.task, self.end = task, end
        self.counts: list[list[int]] = []  # per hour from the first request's: requests, tokens in, out
        self.targets: dict[str, list[int]] = {}  # requests, outcomes, successes
        self.first: int | None = None  # the first request's hour, since the epoch
        self.latest = -math.inf
        self.sweep: Sweep | None = None

    def add(self, row: LedgerRow) -> None:
        if (
            row.task != self.task
            or is_caller_error(row.status, row.error_class)
            or (self.end is not None and row.started_at >= self.end)
            or row.evaluation
            or row.tenant == EVAL_TENANT
        ):
            return
        if row.started_at < self.latest:
            raise ValueError("traffic rows must come oldest first")
        self.latest = row.started_at
        if self.first is None:
            self.first = math.floor(row.started_at / HOUR)
            self.sweep = Sweep(self.first)
        index = math.floor(row.started_at / HOUR) - self.first
        while len(self.counts) <= index:
            self.counts.append([0, 0, 0])
        bucket = self.counts[index]
        bucket[0] += 1
        if not row.cache_hit:
            bucket[1] += row.prompt_tokens or 0
            bucket[2] += row.completion_tokens or 0
            assert self.sweep is not None
            self.sweep.add(row.started_at, row.started_at + row.latency_ms / 1000)
        stats = self.targets.setdefault(row.target or "(none)", [0, 0, 0])
        stats[0] += 1
        if row.outcome is not None:
            stats[1] += 1
            stats[2] += row.outcome == "success"

    def traffic(self) -> Traffic:
        first, task = self.first, self.task
        if first is None or self.sweep is None:
            return Traffic(task=task, hours=(), targets={})
        last = math.ceil(self.end / HOUR) if self.end is not None else math.floor(self.latest / HOUR) + 1
        counts = self.counts + [[0, 0, 0] for _ in range(last - first - len(self.counts))]
        in_flight = self.sweep.peaks(len(counts))
        hours = tuple(HourBucket((first + i) * HOUR, c[0], c[1], c[2], in_flight[i]) for i, c in enumerate(counts))
        return Traffic(
            task=task, hours=hours, targets={name: TargetStats(*s) for name, s in sorted(self.targets.items())}
        )


def concurrency_by_hour(spans: Iterable[tuple[float, float]], first_hour: int, hours: int) -> list[int]:
    """Per hour from ``first_hour`` (hours since the epoch), the most half-open
    ``[start, end)`` spans in flight at one instant: a sweep over start (+1) and end (-1)
    events, ends first at equal times; a span crossing into an hour counts in it. Events
    outside the window count in its first or last hour."""
    sweep = Sweep(first_hour)
    for start, stop in sorted(spans, key=lambda span: span[0]):
        sweep.add(start, stop)
    return sweep.peaks(hours)


class Sweep:
    """``concurrency_by_hour`` over spans that come in order of their start: the ends still to
    come wait in a heap (as many as are in flight), each taken out before the first start at or
    after it, so ends go first at equal times."""

    def __init__(self, first_hour: int) -> None:
        self.first = first_hour
        self.found: list[int] = []  # peaks so far, by hour from first_hour (past the window too)
        self.ends: list[float] = []
        self.current = self.index = 0

    def add(self, start: float, stop: float) -> None:
        if not stop > start:  # nothing in flight (NaN too)
            return
        while self.ends and self.ends[0] <= start:
            self._event(heapq.heappop(self.ends), -1)
        self._event(start, 1)
        heapq.heappush(self.ends, stop)

    def peaks(self, hours: int) -> list[int]:
        """The peaks of ``hours`` hours; what came after the last counts in it."""
        while self.ends:
            self._event(heapq.heappop(self.ends), -1)
        found = self.found + [0] * (hours - len(self.found))
        return [*found[: hours - 1], max(found[hours - 1 :])] if hours else []

    def _event(self, at: float, delta: int) -> None:
        bucket = max(math.floor(at / HOUR) - self.first, 0)
        peaks = self.found
        while len(peaks) <= bucket:
            peaks.append(0)
        for crossed in range(self.index + 1, bucket + 1):  # still in flight when these hours began
            peaks[crossed] = max(peaks[crossed], self.current)
        self.index = max(self.index, bucket)
        self.current += delta
        peaks[bucket] = max(peaks[bucket], self.current)
