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
``hour``); ``Report.total`` holds the whole window's figures, which the table and CSV print as
a last row labelled ``(all)`` (JSON: ``"total"``, apart from the groups' ``"rows"``, so a
tenant or release named ``all`` is never taken for it).

The rows are counted as they come (``ReportTally``, one ``turnout.offline.reports.tally``
group per row of the report), never held: a window of any size is read in pages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from turnout.ledger.record import LedgerRow
from turnout.offline.reports.tally import (
    CostGroup,
    Group,
    HumanCost,
    LatencyGroup,
    QualityGroup,
    UsageGroup,
    flags,
    spent,
    unpriced,
)

__all__ = ["DIMENSIONS", "KINDS", "TOTAL", "Column", "HumanCost", "Report", "ReportTally", "compute", "spent"]

KINDS = ("cost", "latency", "quality", "usage")
DIMENSIONS = ("task", "release", "target", "tenant", "day", "hour")
TOTAL = "(all)"  # the total's label in a table or CSV, in parentheses as NONE: not a name's
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
    rows: list[dict[str, Any]]  # one per group (with ``by``), else the window's one row
    hours: list[int] | None = None  # usage: requests per UTC hour of day, 0-23
    notes: list[str] = field(default_factory=list)
    total: dict[str, Any] = field(default_factory=dict)  # the whole window's figures, without labels

    @property
    def total_row(self) -> dict[str, Any] | None:
        """The total as a last row of a table (labelled ``TOTAL``): with ``by``, unless the
        window has exactly one group (then that row is the total)."""
        if not self.by or len(self.rows) == 1:
            return None
        return {**dict.fromkeys(self.by, TOTAL), **self.total}


def compute(
    kind: str,
    rows: Iterable[LedgerRow],
    *,
    by: Sequence[str] = (),
    since: float = 0.0,
    until: float = 0.0,
    review_cost: float | None = None,
    people: Mapping[str, HumanCost] | None = None,
) -> Report:
    """``people``: per task, what a review and an escalation cost (the tasks'
    ``review_cost_usd`` and ``escalation_cost_usd``); the cost report then adds them."""
    tally = ReportTally(kind, by, review_cost=review_cost, people=people)
    for row in rows:
        tally.add(row)
    return tally.report(since, until)


class ReportTally:
    """A report counted a row at a time: ``add`` every row of the window, in the ledger's
    order, then ``report``."""

    def __init__(
        self,
        kind: str,
        by: Sequence[str] = (),
        *,
        review_cost: float | None = None,
        people: Mapping[str, HumanCost] | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown report {kind!r}; one of {', '.join(KINDS)}")
        unknown = [d for d in by if d not in DIMENSIONS]
        if unknown:
            raise ValueError(f"unknown --by {unknown[0]!r}; one of {', '.join(DIMENSIONS)}")
        self.kind, self.by, self.review_cost = kind, tuple(by), review_cost
        self.people = people if kind == "cost" and people else None
        self.groups: dict[tuple[str, ...], Group] = {}
        self.whole = self._group()
        self.requests = self.unpriced = self.estimated = 0
        self._key = _key_of(self.by)

    def _group(self) -> Group:
        if self.kind == "cost":
            return CostGroup(self.review_cost, self.people)
        return _GROUPS[self.kind]()

    def add(self, row: LedgerRow) -> None:
        bits = flags(row)
        key = self._key(row)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = self._group()
        group.add(row, bits)
        self.whole.add(row, bits)
        self.requests += 1
        self.unpriced += unpriced(row)
        self.estimated += row.usage_estimated is True

    def report(self, since: float, until: float) -> Report:
        by = self.by
        out = [{**dict(zip(by, key, strict=True)), **g.figures()} for key, g in sorted(self.groups.items())]
        head = [Column(d, d, "text") for d in by]
        report = Report(self.kind, by, since, until, head + _columns(self.kind, self.review_cost, self.people), out)
        report.total = self.whole.figures()
        if isinstance(self.whole, UsageGroup):
            report.hours = self.whole.hours
        if self.kind == "cost" and self.unpriced:
            report.notes.append(
                f"{self.unpriced} request(s) used tokens but have no price: their cost is not in the spend"
            )
        if self.kind in ("cost", "usage") and self.estimated:
            report.notes.append(
                f"{self.estimated} request(s) have tokens the gateway counted itself (the upstream reported no "
                "usage): " + ("their cost is an estimate" if self.kind == "cost" else "their tokens are an estimate")
            )
        if not self.requests:
            report.notes.append("no requests in this window")
        return report


_GROUPS: dict[str, Callable[[], Group]] = {"latency": LatencyGroup, "quality": QualityGroup, "usage": UsageGroup}


def dimension(name: str, row: LedgerRow) -> str:
    return _key_of((name,))(row)[0]


def _key_of(by: tuple[str, ...]) -> Callable[[LedgerRow], tuple[str, ...]]:
    """The group key of a row: its values of the dimensions ``by`` (the time read once)."""
    timed = "day" in by or "hour" in by

    def key(row: LedgerRow) -> tuple[str, ...]:
        at = datetime.fromtimestamp(row.started_at, UTC) if timed else None
        out = []
        for name in by:
            if at is not None and name == "day":
                out.append(at.date().isoformat())
            elif at is not None and name == "hour":
                out.append(f"{at.hour:02d}")
            else:
                value = getattr(row, name)
                out.append(str(value) if value is not None else NONE)
        return tuple(out)

    return key


def people_cost(rows: Iterable[LedgerRow], people: Mapping[str, HumanCost]) -> float:
    """Each reviewed task (an episode, or a request without one: ``tasks``) costs its task
    config's review, each escalated task its escalation: once, however many of its rows carry
    the verdict (feedback on an episode sets every row of it)."""
    group = CostGroup(None, people)
    for row in rows:
        group.add(row, flags(row))
    return group.people_cost()


# --- columns per kind -----------------------------------------------------------------------------


def _columns(kind: str, review_cost: float | None, people: Mapping[str, HumanCost] | None) -> list[Column]:
    if kind == "latency":
        return [Column("requests", "requests")] + [
            Column(f"{name}_p{q}_ms", f"{name} p{q}", "ms")
            for name in ("latency", "ttft", "queue")
            for q in (50, 95, 99)
        ]
    if kind == "quality":
        return [
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
    if kind == "usage":
        return [
            Column("requests", "requests"),
            Column("prompt_tokens_per_request", "prompt tok/req", "num"),
            Column("completion_tokens_per_request", "completion tok/req", "num"),
            Column("total_tokens", "tokens"),
            Column("peak_hour_utc", "peak hour (UTC)", "text"),
        ]
    columns = [
        Column("requests", "requests"),
        Column("spend_usd", "spend", "usd"),
        Column("completed", "completed"),
        Column("cost_per_completed_usd", "cost/completed", "usd"),
    ]
    if people:  # cost per completed task with people: (spend + reviews + escalations) ÷ completed
        columns += [
            Column("people_usd", "review+escalation", "usd"),
            Column("cost_per_completed_full_usd", "cost/completed full", "usd"),
        ]
    if review_cost is not None:
        columns += [
            Column("reviewed_or_failed", "reviewed|failed"),
            Column("cost_per_completed_with_review_usd", "cost/completed+review", "usd"),
        ]
    return [
        *columns,
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
