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
    """``task``'s traffic in ``rows`` (other tasks' rows are skipped). ``end``: where the
    window stops (the CLI passes now, so quiet hours at the end count); rows at or after it
    are skipped."""
    kept = [
        r
        for r in rows
        if r.task == task
        and not is_caller_error(r.status, r.error_class)
        and (end is None or r.started_at < end)
        and not r.evaluation
        and r.tenant != EVAL_TENANT
    ]
    if not kept:
        return Traffic(task=task, hours=(), targets={})
    first = math.floor(min(r.started_at for r in kept) / HOUR)
    last = math.ceil(end / HOUR) if end is not None else math.floor(max(r.started_at for r in kept) / HOUR) + 1
    counts = [[0, 0, 0] for _ in range(first, last)]
    targets: dict[str, list[int]] = {}
    for row in kept:
        bucket = counts[math.floor(row.started_at / HOUR) - first]
        bucket[0] += 1
        if not row.cache_hit:
            bucket[1] += row.prompt_tokens or 0
            bucket[2] += row.completion_tokens or 0
        stats = targets.setdefault(row.target or "(none)", [0, 0, 0])
        stats[0] += 1
        if row.outcome is not None:
            stats[1] += 1
            stats[2] += row.outcome == "success"
    spans = [(r.started_at, r.started_at + r.latency_ms / 1000) for r in kept if not r.cache_hit]
    in_flight = concurrency_by_hour(spans, first, len(counts))
    hours = tuple(HourBucket((first + i) * HOUR, c[0], c[1], c[2], in_flight[i]) for i, c in enumerate(counts))
    return Traffic(task=task, hours=hours, targets={name: TargetStats(*s) for name, s in sorted(targets.items())})


def concurrency_by_hour(spans: Iterable[tuple[float, float]], first_hour: int, hours: int) -> list[int]:
    """Per hour from ``first_hour`` (hours since the epoch), the most half-open
    ``[start, end)`` spans in flight at one instant: a sweep over start (+1) and end (-1)
    events, ends first at equal times; a span crossing into an hour counts in it. Events
    outside the window count in its first or last hour."""
    peaks = [0] * hours
    events = sorted(e for start, stop in spans if stop > start for e in ((start, 1), (stop, -1)))
    current = index = 0
    for at, delta in events:
        bucket = min(max(math.floor(at / HOUR) - first_hour, 0), hours - 1)
        for crossed in range(index + 1, bucket + 1):  # still in flight when these hours began
            peaks[crossed] = max(peaks[crossed], current)
        index = max(index, bucket)
        current += delta
        peaks[bucket] = max(peaks[bucket], current)
    return peaks
