"""The reports' arithmetic: ledger rows in, a ``Report`` (columns and rows of figures) out.

Definitions, the same in every format:

* A **task** is what the caller wanted done: the rows of one tenant's ``episode_id`` (a ticket,
  an agent run; tenants choose their ids, so two tenants' equal ids are two tasks), or one
  request when it has none. It is **completed** when any of its rows carries the
  outcome ``success``; **failed** when it has an outcome and none is ``success``; **reviewed**
  when any row says ``human_review``, **escalated** likewise. An episode whose rows fall in two
  groups (two releases) counts once in each.
* **Spend** is the sum of the rows' ``cost_usd``: every request, failed or retried ones too.
  A request refused before it reached a target (a 400, 403, 404, 422 or 429) cost exactly
  $0: the gateway writes 0, and an older row with no cost, no attempt and a 4xx status (but a
  499: a stream's client may leave after its target was asked) counts as $0 too (``spent``).
  A row that used tokens but has no cost is **unpriced**: it adds nothing to the spend and is
  counted apart; a group with no priced row at all has spend None ("unpriced", never $0).
* **Cost per completed task** = spend ÷ completed tasks (None when none completed). With a
  stated review cost R: (spend + R × tasks that failed or were reviewed) ÷ completed tasks.
* **Retry rate**: requests with more than one attempt (a retry or a fallback); **fallback
  rate**: requests answered or failed after leaving their first target; **timeout rate**:
  requests with an attempt whose error class starts with ``timeout``. All over requests.
* **Review** and **escalation rates** are over tasks with feedback (an answer the output checks
  escalated counts as escalated feedback); **success rate** over tasks with an outcome.
* **Repairs**: answers re-asked after failing their output checks; **escalated**: requests whose
  failed answer the gateway escalated (to a stronger target or a person), and **escalated
  spend** their cost, every rejected answer and the escalation's included.
* **Latency** percentiles interpolate between ranks (as ``percentile_cont``) over requests
  that are not caller errors (4xx), as the canary's figures do. TTFT exists for streams only.
* **Usage**: tokens per request over requests that report tokens; the hour of day is UTC.
* **Estimated**: rows whose upstream reported no usage (``usage_estimated``) carry the
  gateway's own count and the cost priced from it; the cost and usage reports say how many.

With ``by`` the rows are grouped (``task``, ``release``, ``target``, ``tenant``, ``day``,
``hour``) and a last row, ``all``, sums up the whole window.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from turnout.ledger.record import LedgerRow
from turnout.ledger.store import is_caller_error, percentile

KINDS = ("cost", "latency", "quality", "usage")
DIMENSIONS = ("task", "release", "target", "tenant", "day", "hour")
TOTAL = "all"
NONE = "(none)"


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    title: str
    unit: str = "count"  # text | count | usd | ms | pct | num


@dataclass(slots=True)
class Report:
    kind: str
    by: tuple[str, ...]
    since: float
    until: float
    columns: list[Column]
    rows: list[dict[str, Any]]
    hours: list[int] | None = None  # usage: requests per UTC hour of day, 0-23
    notes: list[str] = field(default_factory=list)


def compute(
    kind: str,
    rows: Sequence[LedgerRow],
    *,
    by: Sequence[str] = (),
    since: float = 0.0,
    until: float = 0.0,
    review_cost: float | None = None,
    people: Mapping[str, HumanCost] | None = None,
) -> Report:
    """``people``: per task, what a review and an escalation cost (the tasks'
    ``review_cost_usd`` and ``escalation_cost_usd``); the cost report then adds them."""
    if kind not in KINDS:
        raise ValueError(f"unknown report {kind!r}; one of {', '.join(KINDS)}")
    unknown = [d for d in by if d not in DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown --by {unknown[0]!r}; one of {', '.join(DIMENSIONS)}")
    figures, columns = _FIGURES[kind](review_cost)
    if kind == "cost" and people:
        figures, columns = _with_people(figures, columns, people)
    groups: dict[tuple[str, ...], list[LedgerRow]] = defaultdict(list)
    for row in rows:
        groups[tuple(dimension(d, row) for d in by)].append(row)
    out = [{**dict(zip(by, key, strict=True)), **figures(group)} for key, group in sorted(groups.items())]
    if by and len(groups) != 1:
        out.append({**dict.fromkeys(by, TOTAL), **figures(list(rows))})
    head = [Column(d, d, "text") for d in by]
    report = Report(kind, tuple(by), since, until, head + columns, out)
    if kind == "usage":
        report.hours = by_hour(rows)
    unpriced = sum(_unpriced(r) for r in rows)
    if kind == "cost" and unpriced:
        report.notes.append(f"{unpriced} request(s) used tokens but have no price: their cost is not in the spend")
    estimated = sum(r.usage_estimated is True for r in rows)
    if kind in ("cost", "usage") and estimated:
        report.notes.append(
            f"{estimated} request(s) have tokens the gateway counted itself (the upstream reported no usage): "
            + ("their cost is an estimate" if kind == "cost" else "their tokens are an estimate")
        )
    if not rows:
        report.notes.append("no requests in this window")
    return report


def dimension(name: str, row: LedgerRow) -> str:
    if name == "day":
        return datetime.fromtimestamp(row.started_at, UTC).date().isoformat()
    if name == "hour":
        return f"{datetime.fromtimestamp(row.started_at, UTC).hour:02d}"
    value = getattr(row, name)
    return str(value) if value is not None else NONE


def by_hour(rows: Iterable[LedgerRow]) -> list[int]:
    hours = [0] * 24
    for row in rows:
        hours[datetime.fromtimestamp(row.started_at, UTC).hour] += 1
    return hours


# --- tasks (episodes) ---------------------------------------------------------------------------


@dataclass(slots=True)
class TaskOutcome:
    success: bool = False
    outcome_known: bool = False
    feedback: bool = False
    reviewed: bool = False
    escalated: bool = False

    @property
    def failed(self) -> bool:
        return self.outcome_known and not self.success


def tasks(rows: Iterable[LedgerRow]) -> dict[tuple[str, ...], TaskOutcome]:
    """The rows' tasks by key: ``(tenant, episode_id)`` for an episode, since each caller
    names its own episodes and two tenants may use the same id; ``(request_id,)`` otherwise."""
    found: dict[tuple[str, ...], TaskOutcome] = defaultdict(TaskOutcome)
    for row in rows:
        t = found[(row.tenant, row.episode_id) if row.episode_id else (row.request_id,)]
        t.success |= row.outcome == "success"
        t.outcome_known |= row.outcome is not None
        t.feedback |= row.outcome is not None or row.human_review is not None or row.escalated is not None
        t.reviewed |= bool(row.human_review)
        t.escalated |= bool(row.escalated)
    return found


# --- figures per kind -----------------------------------------------------------------------------

Figures = Callable[[list[LedgerRow]], dict[str, Any]]


def _cost(review_cost: float | None) -> tuple[Figures, list[Column]]:
    columns = [
        Column("requests", "requests"),
        Column("spend_usd", "spend", "usd"),
        Column("completed", "completed"),
        Column("cost_per_completed_usd", "cost/completed", "usd"),
    ]
    if review_cost is not None:
        columns += [
            Column("reviewed_or_failed", "reviewed|failed"),
            Column("cost_per_completed_with_review_usd", "cost/completed+review", "usd"),
        ]
    columns += [
        Column("retry_rate", "retry", "pct"),
        Column("fallback_rate", "fallback", "pct"),
        Column("timeout_rate", "timeout", "pct"),
        Column("review_rate", "review", "pct"),
        Column("escalation_rate", "escalation", "pct"),
        Column("repairs", "repairs"),
        Column("escalated", "escalated"),
        Column("escalated_spend_usd", "escalated spend", "usd"),
        Column("unpriced", "unpriced"),
    ]

    def figures(rows: list[LedgerRow]) -> dict[str, Any]:
        n = len(rows)
        escalated = [r for r in rows if r.escalated_to is not None]
        escalated_costs = [c for r in escalated if (c := spent(r)) is not None]
        priced = [c for r in rows if (c := spent(r)) is not None]
        spend = sum(priced) if priced else None
        units = tasks(rows).values()
        completed = sum(t.success for t in units)
        with_feedback = sum(t.feedback for t in units)
        out: dict[str, Any] = {
            "requests": n,
            "spend_usd": spend,
            "completed": completed,
            "cost_per_completed_usd": _ratio(spend, completed),
        }
        if review_cost is not None:
            extra = sum(t.failed or t.reviewed for t in units)
            out["reviewed_or_failed"] = extra
            total = None if spend is None and extra == 0 else (spend or 0.0) + review_cost * extra
            out["cost_per_completed_with_review_usd"] = _ratio(total, completed)
        out |= {
            "retry_rate": _ratio(sum(len(r.attempts) > 1 for r in rows), n),
            "fallback_rate": _ratio(sum(r.fallback for r in rows), n),
            "timeout_rate": _ratio(sum(_timed_out(r) for r in rows), n),
            "review_rate": _ratio(sum(t.reviewed for t in units), with_feedback),
            "escalation_rate": _ratio(sum(t.escalated for t in units), with_feedback),
            "repairs": sum(r.repairs or 0 for r in rows),
            "escalated": len(escalated),
            "escalated_spend_usd": sum(escalated_costs) if escalated_costs else None,
            "unpriced": sum(_unpriced(r) for r in rows),
        }
        return out

    return figures, columns


def _latency(review_cost: float | None) -> tuple[Figures, list[Column]]:
    measures = (("latency", "latency_ms"), ("ttft", "ttft_ms"), ("queue", "queue_ms"))
    columns = [Column("requests", "requests")] + [
        Column(f"{name}_p{q}_ms", f"{name} p{q}", "ms") for name, _ in measures for q in (50, 95, 99)
    ]

    def figures(rows: list[LedgerRow]) -> dict[str, Any]:
        served = [r for r in rows if not is_caller_error(r.status, r.error_class)]
        out: dict[str, Any] = {"requests": len(served)}
        for name, attr in measures:
            values = [v for r in served if (v := getattr(r, attr)) is not None]
            for q in (50, 95, 99):
                out[f"{name}_p{q}_ms"] = percentile(values, q / 100)
        return out

    return figures, columns


def _quality(review_cost: float | None) -> tuple[Figures, list[Column]]:
    columns = [
        Column("requests", "requests"),
        Column("tasks", "tasks"),
        Column("outcomes", "outcomes"),
        Column("successes", "successes"),
        Column("success_rate", "success", "pct"),
        Column("review_rate", "review", "pct"),
        Column("escalation_rate", "escalation", "pct"),
        Column("mean_value", "mean value", "num"),
        Column("live_scored", "live scored"),
        Column("live_pass_rate", "live pass", "pct"),
    ]

    def figures(rows: list[LedgerRow]) -> dict[str, Any]:
        units = tasks(rows).values()
        scored = [r.live_pass for r in rows if r.live_pass is not None]
        outcomes = sum(t.outcome_known for t in units)
        with_feedback = sum(t.feedback for t in units)
        values = [r.outcome_value for r in rows if r.outcome_value is not None]
        return {
            "requests": len(rows),
            "tasks": len(units),
            "outcomes": outcomes,
            "successes": sum(t.success for t in units),
            "success_rate": _ratio(sum(t.success for t in units), outcomes),
            "review_rate": _ratio(sum(t.reviewed for t in units), with_feedback),
            "escalation_rate": _ratio(sum(t.escalated for t in units), with_feedback),
            "mean_value": _ratio(sum(values), len(values)),
            "live_scored": len(scored),  # tasks.T.scoring: sampled answers scored as they went out
            "live_pass_rate": _ratio(sum(scored), len(scored)),
        }

    return figures, columns


def _usage(review_cost: float | None) -> tuple[Figures, list[Column]]:
    columns = [
        Column("requests", "requests"),
        Column("prompt_tokens_per_request", "prompt tok/req", "num"),
        Column("completion_tokens_per_request", "completion tok/req", "num"),
        Column("total_tokens", "tokens"),
        Column("peak_hour_utc", "peak hour (UTC)", "text"),
    ]

    def figures(rows: list[LedgerRow]) -> dict[str, Any]:
        counted = [r for r in rows if r.prompt_tokens is not None or r.completion_tokens is not None]
        prompt = sum(r.prompt_tokens or 0 for r in counted)
        completion = sum(r.completion_tokens or 0 for r in counted)
        hours = by_hour(rows)
        return {
            "requests": len(rows),
            "prompt_tokens_per_request": _ratio(prompt, len(counted)),
            "completion_tokens_per_request": _ratio(completion, len(counted)),
            "total_tokens": prompt + completion,
            "peak_hour_utc": f"{hours.index(max(hours)):02d}:00" if rows else None,
        }

    return figures, columns


_FIGURES: dict[str, Callable[[float | None], tuple[Figures, list[Column]]]] = {
    "cost": _cost,
    "latency": _latency,
    "quality": _quality,
    "usage": _usage,
}


class HumanCost(NamedTuple):
    review_usd: float = 0.0
    escalation_usd: float = 0.0


def people_cost(rows: Iterable[LedgerRow], people: Mapping[str, HumanCost]) -> float:
    """Each reviewed task (an episode, or a request without one: ``tasks``) costs its task
    config's review, each escalated task its escalation: once, however many of its rows carry
    the verdict (feedback on an episode sets every row of it)."""
    by_task: dict[str, list[LedgerRow]] = defaultdict(list)
    for r in rows:
        if r.task in people:
            by_task[r.task].append(r)
    total = 0.0
    for name, group in by_task.items():
        cost, units = people[name], tasks(group).values()
        total += cost.review_usd * sum(t.reviewed for t in units)
        total += cost.escalation_usd * sum(t.escalated for t in units)
    return total


def _with_people(
    figures: Figures, columns: list[Column], people: Mapping[str, HumanCost]
) -> tuple[Figures, list[Column]]:
    """Cost per completed task with people: (spend + reviews + escalations) ÷ completed."""

    def full(rows: list[LedgerRow]) -> dict[str, Any]:
        out = figures(rows)
        spent = people_cost(rows, people)
        out["people_usd"] = spent
        total = None if out["spend_usd"] is None and not spent else (out["spend_usd"] or 0.0) + spent
        out["cost_per_completed_full_usd"] = _ratio(total, out["completed"])
        return out

    extra = [
        Column("people_usd", "review+escalation", "usd"),
        Column("cost_per_completed_full_usd", "cost/completed full", "usd"),
    ]
    return full, columns[:4] + extra + columns[4:]


def _ratio(part: float | None, whole: float) -> float | None:
    return None if part is None or not whole else part / whole


def _timed_out(row: LedgerRow) -> bool:
    return any(a.error_class is not None and a.error_class.startswith("timeout") for a in row.attempts)


def spent(row: LedgerRow) -> float | None:
    """What a request cost: its ``cost_usd``, else $0 for a row that shows it reached no target
    (rows written before refusals were written as $0); None: unknown."""
    if row.cost_usd is None and not row.attempts and 400 <= row.status < 499:
        return 0.0
    return row.cost_usd


def _unpriced(row: LedgerRow) -> bool:
    used = (row.prompt_tokens or 0) + (row.completion_tokens or 0) > 0
    return row.cost_usd is None and used
