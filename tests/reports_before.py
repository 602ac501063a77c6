"""The reports' and the planner's arithmetic as it was before the ledger was read in pages: every
row of the window in one list, grouped by copying. Kept only as the reference that
``tests/test_reports_paged.py`` holds the paged figures to, value for value."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from turnout.ledger.record import LedgerRow
from turnout.ledger.store import EVAL_TENANT, is_caller_error, percentile
from turnout.offline.reports.figures import HumanCost

Figures = Callable[[list[LedgerRow]], dict[str, Any]]


def compute(
    kind: str,
    rows: Sequence[LedgerRow],
    by: Sequence[str] = (),
    review_cost: float | None = None,
    people: Mapping[str, HumanCost] | None = None,
) -> tuple[list[dict[str, Any]], list[int] | None, list[str]]:
    """(rows, the last one the total "all" when there is one; hours; notes)."""
    figures = {"cost": _cost, "latency": _latency, "quality": _quality, "usage": _usage}[kind](review_cost)
    if kind == "cost" and people:
        figures = _with_people(figures, people)
    groups: dict[tuple[str, ...], list[LedgerRow]] = defaultdict(list)
    for row in rows:
        groups[tuple(dimension(d, row) for d in by)].append(row)
    out = [{**dict(zip(by, key, strict=True)), **figures(group)} for key, group in sorted(groups.items())]
    if by and len(groups) != 1:
        out.append({**dict.fromkeys(by, "all"), **figures(list(rows))})
    notes = []
    unpriced = sum(_unpriced(r) for r in rows)
    if kind == "cost" and unpriced:
        notes.append(f"{unpriced} request(s) used tokens but have no price: their cost is not in the spend")
    estimated = sum(r.usage_estimated is True for r in rows)
    if kind in ("cost", "usage") and estimated:
        notes.append(
            f"{estimated} request(s) have tokens the gateway counted itself (the upstream reported no usage): "
            + ("their cost is an estimate" if kind == "cost" else "their tokens are an estimate")
        )
    if not rows:
        notes.append("no requests in this window")
    return out, by_hour(rows) if kind == "usage" else None, notes


def dimension(name: str, row: LedgerRow) -> str:
    if name == "day":
        return datetime.fromtimestamp(row.started_at, UTC).date().isoformat()
    if name == "hour":
        return f"{datetime.fromtimestamp(row.started_at, UTC).hour:02d}"
    value = getattr(row, name)
    return str(value) if value is not None else "(none)"


def by_hour(rows: Iterable[LedgerRow]) -> list[int]:
    hours = [0] * 24
    for row in rows:
        hours[datetime.fromtimestamp(row.started_at, UTC).hour] += 1
    return hours


def tasks(rows: Iterable[LedgerRow]) -> list[dict[str, bool]]:
    found: dict[tuple[str, ...], dict[str, bool]] = defaultdict(lambda: dict.fromkeys(_VERDICTS, False))
    for row in rows:
        t = found[(row.tenant, row.episode_id) if row.episode_id else (row.request_id,)]
        t["success"] |= row.outcome == "success"
        t["known"] |= row.outcome is not None
        t["feedback"] |= row.outcome is not None or row.human_review is not None or row.escalated is not None
        t["reviewed"] |= bool(row.human_review)
        t["escalated"] |= bool(row.escalated)
    return list(found.values())


_VERDICTS = ("success", "known", "feedback", "reviewed", "escalated")


def _cost(review_cost: float | None) -> Figures:
    def figures(rows: list[LedgerRow]) -> dict[str, Any]:
        n = len(rows)
        escalated = [r for r in rows if r.escalated_to is not None]
        escalated_costs = [c for r in escalated if (c := spent(r)) is not None]
        priced = [c for r in rows if (c := spent(r)) is not None]
        spend = sum(priced) if priced else None
        units = tasks(rows)
        completed = sum(t["success"] for t in units)
        with_feedback = sum(t["feedback"] for t in units)
        out: dict[str, Any] = {
            "requests": n,
            "spend_usd": spend,
            "completed": completed,
            "cost_per_completed_usd": _ratio(spend, completed),
        }
        if review_cost is not None:
            extra = sum((t["known"] and not t["success"]) or t["reviewed"] for t in units)
            out["reviewed_or_failed"] = extra
            total = None if spend is None and extra == 0 else (spend or 0.0) + review_cost * extra
            out["cost_per_completed_with_review_usd"] = _ratio(total, completed)
        out |= {
            "retry_rate": _ratio(sum(len(r.attempts) > 1 for r in rows), n),
            "fallback_rate": _ratio(sum(r.fallback for r in rows), n),
            "timeout_rate": _ratio(sum(_timed_out(r) for r in rows), n),
            "review_rate": _ratio(sum(t["reviewed"] for t in units), with_feedback),
            "escalation_rate": _ratio(sum(t["escalated"] for t in units), with_feedback),
            "repairs": sum(r.repairs or 0 for r in rows),
            "escalated": len(escalated),
            "escalated_spend_usd": sum(escalated_costs) if escalated_costs else None,
            "unpriced": sum(_unpriced(r) for r in rows),
        }
        return out

    return figures


def _latency(review_cost: float | None) -> Figures:
    def figures(rows: list[LedgerRow]) -> dict[str, Any]:
        served = [r for r in rows if not is_caller_error(r.status, r.error_class)]
        out: dict[str, Any] = {"requests": len(served)}
        for name, attr in (("latency", "latency_ms"), ("ttft", "ttft_ms"), ("queue", "queue_ms")):
            values = [v for r in served if (v := getattr(r, attr)) is not None]
            for q in (50, 95, 99):
                out[f"{name}_p{q}_ms"] = percentile(values, q / 100)
        return out

    return figures


def _quality(review_cost: float | None) -> Figures:
    def figures(rows: list[LedgerRow]) -> dict[str, Any]:
        units = tasks(rows)
        scored = [r.live_pass for r in rows if r.live_pass is not None]
        outcomes = sum(t["known"] for t in units)
        with_feedback = sum(t["feedback"] for t in units)
        values = [r.outcome_value for r in rows if r.outcome_value is not None]
        return {
            "requests": len(rows),
            "tasks": len(units),
            "outcomes": outcomes,
            "successes": sum(t["success"] for t in units),
            "success_rate": _ratio(sum(t["success"] for t in units), outcomes),
            "review_rate": _ratio(sum(t["reviewed"] for t in units), with_feedback),
            "escalation_rate": _ratio(sum(t["escalated"] for t in units), with_feedback),
            "mean_value": _ratio(sum(values), len(values)),
            "live_scored": len(scored),
            "live_pass_rate": _ratio(sum(scored), len(scored)),
        }

    return figures


def _usage(review_cost: float | None) -> Figures:
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

    return figures


def people_cost(rows: Iterable[LedgerRow], people: Mapping[str, HumanCost]) -> float:
    by_task: dict[str, list[LedgerRow]] = defaultdict(list)
    for r in rows:
        if r.task in people:
            by_task[r.task].append(r)
    total = 0.0
    for name, group in by_task.items():
        cost, units = people[name], tasks(group)
        total += cost.review_usd * sum(t["reviewed"] for t in units)
        total += cost.escalation_usd * sum(t["escalated"] for t in units)
    return total


def _with_people(figures: Figures, people: Mapping[str, HumanCost]) -> Figures:
    def full(rows: list[LedgerRow]) -> dict[str, Any]:
        out = figures(rows)
        spent_on_people = people_cost(rows, people)
        out["people_usd"] = spent_on_people
        total = (
            None if out["spend_usd"] is None and not spent_on_people else (out["spend_usd"] or 0.0) + spent_on_people
        )
        out["cost_per_completed_full_usd"] = _ratio(total, out["completed"])
        return out

    return full


def _ratio(part: float | None, whole: float) -> float | None:
    return None if part is None or not whole else part / whole


def _timed_out(row: LedgerRow) -> bool:
    return any(a.error_class is not None and a.error_class.startswith("timeout") for a in row.attempts)


def spent(row: LedgerRow) -> float | None:
    if row.cost_usd is None and not row.attempts and 400 <= row.status < 499:
        return 0.0
    return row.cost_usd


def _unpriced(row: LedgerRow) -> bool:
    used = (row.prompt_tokens or 0) + (row.completion_tokens or 0) > 0
    return row.cost_usd is None and used


# --- the planner's traffic -------------------------------------------------------------------------

HOUR = 3600.0


def traffic(rows: Iterable[LedgerRow], task: str, end: float | None) -> dict[str, Any]:
    """What ``traffic_from_rows`` answered: hours (start, requests, tokens in, out, peak) and
    targets (requests, outcomes, successes)."""
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
        return {"hours": [], "targets": {}}
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
    hours = [((first + i) * HOUR, c[0], c[1], c[2], in_flight[i]) for i, c in enumerate(counts)]
    return {"hours": hours, "targets": {name: tuple(s) for name, s in sorted(targets.items())}}


def concurrency_by_hour(spans: Iterable[tuple[float, float]], first_hour: int, hours: int) -> list[int]:
    peaks = [0] * hours
    events = sorted(e for start, stop in spans if stop > start for e in ((start, 1), (stop, -1)))
    current = index = 0
    for at, delta in events:
        bucket = min(max(math.floor(at / HOUR) - first_hour, 0), hours - 1)
        for crossed in range(index + 1, bucket + 1):
            peaks[crossed] = max(peaks[crossed], current)
        index = max(index, bucket)
        current += delta
        peaks[bucket] = max(peaks[bucket], current)
    return peaks
