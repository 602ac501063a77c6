"""The reports' figures, counted a row at a time: one ``Group`` per report row, fed every row
of its group once, in the ledger's order, and never holding a row.

What a group keeps is what its figures need and no more: counters; running sums
(``Sum``); five bits per episode (``Tasks``: an episode may span the whole window, so its
verdicts are kept until counted); and, for latency only, the measured values as packed
doubles (8 bytes each: exact percentiles need every value). So a window of any size is read in
pages and its memory does not grow with the rows' width. The definitions are
``turnout.offline.reports.figures``'s.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

from turnout.ledger.record import LedgerRow
from turnout.ledger.store import is_caller_error, percentile

# A task's verdicts (``TaskOutcome``), as bits: a group counts them per combination.
SUCCESS, KNOWN, FEEDBACK, REVIEWED, ESCALATED = 1, 2, 4, 8, 16


class HumanCost(NamedTuple):
    review_usd: float = 0.0
    escalation_usd: float = 0.0


class Sum:
    """A running total and how many values made it (``sum(values)`` without keeping them)."""

    __slots__ = ("count", "value")

    def __init__(self) -> None:
        self.value: float = 0.0
        self.count = 0

    def add(self, x: float) -> None:
        self.value += x
        self.count += 1


def flags(row: LedgerRow) -> int:
    """The row's part of its task's verdicts (``tasks``)."""
    out = SUCCESS if row.outcome == "success" else 0
    if row.outcome is not None:
        out |= KNOWN | FEEDBACK
    if row.human_review is not None or row.escalated is not None:
        out |= FEEDBACK
    if row.human_review:
        out |= REVIEWED
    if row.escalated:
        out |= ESCALATED
    return out


class Tasks:
    """A group's tasks: an episode per ``(tenant, episode_id)``, or a request without one (a
    task of its own: request ids are unique in a ledger)."""

    __slots__ = ("_episodes", "_single")

    def __init__(self) -> None:
        self._single = [0] * 32  # requests without an episode, by their verdicts' bits
        self._episodes: dict[tuple[str, str], int] = {}

    def add(self, row: LedgerRow, bits: int) -> None:
        if row.episode_id:
            key = (row.tenant, row.episode_id)
            self._episodes[key] = self._episodes.get(key, 0) | bits
        else:
            self._single[bits] += 1

    def counts(self) -> TaskCounts:
        by_bits = list(self._single)
        for bits in self._episodes.values():
            by_bits[bits] += 1

        def having(mask: int) -> int:
            return sum(n for bits, n in enumerate(by_bits) if bits & mask)

        failed_or_reviewed = sum(
            n for bits, n in enumerate(by_bits) if (bits & KNOWN and not bits & SUCCESS) or bits & REVIEWED
        )
        return TaskCounts(
            tasks=sum(by_bits),
            completed=having(SUCCESS),
            outcomes=having(KNOWN),
            with_feedback=having(FEEDBACK),
            reviewed=having(REVIEWED),
            escalated=having(ESCALATED),
            failed_or_reviewed=failed_or_reviewed,
        )


class TaskCounts(NamedTuple):
    tasks: int
    completed: int
    outcomes: int
    with_feedback: int
    reviewed: int
    escalated: int
    failed_or_reviewed: int


def ratio(part: float | None, whole: float) -> float | None:
    return None if part is None or not whole else part / whole


def spent(row: LedgerRow) -> float | None:
    """What a request cost: its ``cost_usd``, else $0 for a row that shows it reached no target
    (rows written before refusals were written as $0); None: unknown."""
    if row.cost_usd is None and not row.attempts and 400 <= row.status < 499:
        return 0.0
    return row.cost_usd


def unpriced(row: LedgerRow) -> bool:
    used = (row.prompt_tokens or 0) + (row.completion_tokens or 0) > 0
    return row.cost_usd is None and used


def timed_out(row: LedgerRow) -> bool:
    return any(a.error_class is not None and a.error_class.startswith("timeout") for a in row.attempts)


def hour_of(row: LedgerRow) -> int:
    return datetime.fromtimestamp(row.started_at, UTC).hour


# --- one group per kind ----------------------------------------------------------------------------


class Group(Protocol):
    """One report row's running figures: ``add`` each row of the group (``bits``: its
    ``flags``), then read ``figures``."""

    def add(self, row: LedgerRow, bits: int) -> None: ...

    def figures(self) -> dict[str, Any]: ...


class CostGroup:
    __slots__ = (
        *("n", "spend", "escalated", "escalated_spend", "tasks", "retries", "fallbacks", "timeouts"),
        *("repairs", "unpriced", "review_cost", "people", "by_task"),
    )

    def __init__(self, review_cost: float | None, people: Mapping[str, HumanCost] | None) -> None:
        self.n = self.escalated = self.retries = self.fallbacks = self.timeouts = self.repairs = self.unpriced = 0
        self.spend, self.escalated_spend, self.tasks = Sum(), Sum(), Tasks()
        self.review_cost, self.people = review_cost, people
        self.by_task: dict[str, Tasks] = {}  # tasks with people's costs: their tasks apart

    def add(self, row: LedgerRow, bits: int) -> None:
        self.n += 1
        cost = spent(row)
        if cost is not None:
            self.spend.add(cost)
        if row.escalated_to is not None:
            self.escalated += 1
            if cost is not None:
                self.escalated_spend.add(cost)
        self.tasks.add(row, bits)
        self.retries += len(row.attempts) > 1
        self.fallbacks += bool(row.fallback)
        self.timeouts += timed_out(row)
        self.repairs += row.repairs or 0
        self.unpriced += unpriced(row)
        if self.people and row.task in self.people:
            found = self.by_task.get(row.task)
            if found is None:
                found = self.by_task[row.task] = Tasks()
            found.add(row, bits)

    def figures(self) -> dict[str, Any]:
        n, units = self.n, self.tasks.counts()
        spend = self.spend.value if self.spend.count else None
        out: dict[str, Any] = {
            "requests": n,
            "spend_usd": spend,
            "completed": units.completed,
            "cost_per_completed_usd": ratio(spend, units.completed),
        }
        if self.review_cost is not None:
            extra = units.failed_or_reviewed
            out["reviewed_or_failed"] = extra
            total = None if spend is None and extra == 0 else (spend or 0.0) + self.review_cost * extra
            out["cost_per_completed_with_review_usd"] = ratio(total, units.completed)
        out |= {
            "retry_rate": ratio(self.retries, n),
            "fallback_rate": ratio(self.fallbacks, n),
            "timeout_rate": ratio(self.timeouts, n),
            "review_rate": ratio(units.reviewed, units.with_feedback),
            "escalation_rate": ratio(units.escalated, units.with_feedback),
            "repairs": self.repairs,
            "escalated": self.escalated,
            "escalated_spend_usd": self.escalated_spend.value if self.escalated_spend.count else None,
            "unpriced": self.unpriced,
        }
        if self.people:
            people = self.people_cost()
            out["people_usd"] = people
            full = None if spend is None and not people else (spend or 0.0) + people
            out["cost_per_completed_full_usd"] = ratio(full, units.completed)
        return out

    def people_cost(self) -> float:
        """Each reviewed task of a task config with a review cost costs it, each escalated one
        its escalation: once, however many of its rows carry the verdict."""
        assert self.people is not None
        total = 0.0
        for name, tasks in self.by_task.items():  # in the order the tasks first came
            cost, units = self.people[name], tasks.counts()
            total += cost.review_usd * units.reviewed
            total += cost.escalation_usd * units.escalated
        return total


MEASURES = (("latency", "latency_ms"), ("ttft", "ttft_ms"), ("queue", "queue_ms"))
QUANTILES = (50, 95, 99)


class LatencyGroup:
    __slots__ = ("n", "values")

    def __init__(self) -> None:
        self.n = 0
        self.values = tuple(array("d") for _ in MEASURES)

    def add(self, row: LedgerRow, bits: int) -> None:
        if is_caller_error(row.status, row.error_class):
            return
        self.n += 1
        for (_, attr), values in zip(MEASURES, self.values, strict=True):
            if (v := getattr(row, attr)) is not None:
                values.append(v)

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {"requests": self.n}
        for (name, _), values in zip(MEASURES, self.values, strict=True):
            ranked = sorted(values)  # once for the three percentiles
            for q in QUANTILES:
                out[f"{name}_p{q}_ms"] = percentile(ranked, q / 100, ordered=True)
        return out


class QualityGroup:
    __slots__ = ("n", "passed", "scored", "tasks", "value")

    def __init__(self) -> None:
        self.n = self.scored = self.passed = 0
        self.tasks, self.value = Tasks(), Sum()

    def add(self, row: LedgerRow, bits: int) -> None:
        self.n += 1
        self.tasks.add(row, bits)
        if row.live_pass is not None:
            self.scored += 1
            self.passed += row.live_pass
        if row.outcome_value is not None:
            self.value.add(row.outcome_value)

    def figures(self) -> dict[str, Any]:
        units = self.tasks.counts()
        return {
            "requests": self.n,
            "tasks": units.tasks,
            "outcomes": units.outcomes,
            "successes": units.completed,
            "success_rate": ratio(units.completed, units.outcomes),
            "review_rate": ratio(units.reviewed, units.with_feedback),
            "escalation_rate": ratio(units.escalated, units.with_feedback),
            "mean_value": ratio(self.value.value, self.value.count),
            "live_scored": self.scored,  # tasks.T.scoring: sampled answers scored as they went out
            "live_pass_rate": ratio(self.passed, self.scored),
        }


class UsageGroup:
    __slots__ = ("completion", "counted", "hours", "n", "prompt")

    def __init__(self) -> None:
        self.n = self.counted = self.prompt = self.completion = 0
        self.hours = [0] * 24

    def add(self, row: LedgerRow, bits: int) -> None:
        self.n += 1
        self.hours[hour_of(row)] += 1
        if row.prompt_tokens is not None or row.completion_tokens is not None:
            self.counted += 1
            self.prompt += row.prompt_tokens or 0
            self.completion += row.completion_tokens or 0

    def figures(self) -> dict[str, Any]:
        hours = self.hours
        return {
            "requests": self.n,
            "prompt_tokens_per_request": ratio(self.prompt, self.counted),
            "completion_tokens_per_request": ratio(self.completion, self.counted),
            "total_tokens": self.prompt + self.completion,
            "peak_hour_utc": f"{hours.index(max(hours)):02d}:00" if self.n else None,
        }
