"""What each console page shows, read from the running gateway (never from its config's
secrets): the same data the admin API answers, plus the release store, the review queue, the
capture audit trail and the ledger. Each function returns plain dicts for a template.

Nothing here is secret-bearing: targets come from the admin view (labels, never URLs, and
probe details scrubbed); keys are ids, names and hints; review text is stored redacted.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from turnout.console.overview import DEFAULT_WINDOW, ROW_LIMIT, WINDOWS, Overview, build
from turnout.ledger.store import ReleaseStats
from turnout.offline.shadow import summarize
from turnout.releases.canary import judge, step_stats
from turnout.releases.review import STATUSES, Status
from turnout.serving.admin import Admin
from turnout.serving.runtime import Runtime

RECENT_S = 900.0  # the targets page's "recent error classes": the last 15 minutes
TRANSITIONS_SHOWN = 40
REVIEW_SHOWN = 100
AUDIT_SHOWN = 100


async def overview(runtime: Runtime, window: str, task: str | None) -> Overview | None:
    """None without a ledger (``store.kind: none``)."""
    store = runtime.store
    if store is None:
        return None
    span = WINDOWS.get(window, WINDOWS[DEFAULT_WINDOW])
    until = time.time()
    since = until - span
    rows = await store.rows_between(since, until, task=task, limit=ROW_LIMIT + 1)
    truncated = len(rows) > ROW_LIMIT
    # Tens of thousands of rows are a few hundred ms of arithmetic: off the event loop.
    return await asyncio.to_thread(
        build, rows[:ROW_LIMIT], window, since, until, truncated, frozenset(runtime.config.tasks)
    )


async def targets(runtime: Runtime, admin: Admin) -> dict[str, Any]:
    found = await admin.targets()  # the admin API's own view: labels, never URLs
    errors: dict[str, Counter[str]] = {t["name"]: Counter() for t in found["data"]}
    if runtime.store is not None:
        now = time.time()
        # counted by the store over the whole window: a busy quarter hour is not cut short
        for (target, error_class), n in (await runtime.store.attempt_errors(now - RECENT_S, now)).items():
            if target in errors:
                errors[target][error_class] += n
    for target in found["data"]:
        target["recent_errors"] = errors[target["name"]].most_common(5)
    return found


async def releases(runtime: Runtime) -> list[dict[str, Any]]:
    store = runtime.release_store
    if store is None:
        return []
    out = []
    for task, spec in runtime.config.tasks.items():
        registered, serving, moves = await asyncio.gather(
            store.releases(task), store.serving_row(task), store.transitions(task, last=TRANSITIONS_SHOWN)
        )
        if not registered:
            continue
        comparison = None
        if serving is not None and serving.canary is not None and serving.active is not None and runtime.store:
            canary, active = await step_stats(runtime.store, serving, spec.canary)
            comparison = judge(task, serving, spec.canary, canary, active, time.time())
        last = runtime.canary.last.get(task) if runtime.canary is not None else None
        shadow = None
        if serving is not None and serving.shadow is not None and runtime.shadows is not None:
            # against the active release only, as the gates before a canary read it
            pairs = await runtime.shadows.store.pairs(task, serving.shadow, baseline=serving.active or "")
            shadow = await asyncio.to_thread(summarize, task, serving.shadow, pairs)  # up to 200k pairs: off the loop
        out.append(
            {
                "task": task,
                "serving": serving,
                "releases": registered,
                "transitions": list(reversed(moves)),
                "comparison": comparison,
                "stats": _sides(comparison.canary_stats, comparison.active_stats) if comparison else None,
                "last_verdict": last,
                "steps": spec.canary.steps,
                "shadow": shadow,
            }
        )
    return out


def _sides(canary: ReleaseStats | None, active: ReleaseStats | None) -> list[dict[str, Any]]:
    return [
        {
            "side": side,
            "served": s.served,
            "errors": s.errors,
            "error_rate": s.error_rate,
            "provider_errors": s.provider_errors,
            "p95_latency_ms": s.p95_latency_ms,
            "cost_per_request": s.cost_per_request,
            "success_rate": s.success_rate,
        }
        for side, s in (("canary", canary), ("active", active))
        if s is not None
    ]


async def review(runtime: Runtime, task: str | None, status: str) -> dict[str, Any] | None:
    """None when review sampling is off (no task has a ``review_rate``)."""
    queue = runtime.reviews
    if queue is None:
        return None
    wanted: Status | None = None
    if status != "all":
        wanted = next((s for s in STATUSES if s == status), "pending")
    items = await queue.list(task, wanted, limit=REVIEW_SHOWN)
    sampled = [name for name, t in runtime.config.tasks.items() if t.review_rate > 0]
    quality = {name: await queue.quality(name) for name in sampled}
    return {"items": items, "quality": quality, "tasks": sampled}


async def tenants(runtime: Runtime, admin: Admin) -> dict[str, Any]:
    # The admin API's views: key ids, names and hints (never secrets or digests), limits, usage.
    keys, usage = await asyncio.gather(admin.keys(None), admin.usage(None))
    grants: list[Any] = []
    audit: list[Any] = []
    capture = runtime.capture
    if capture is not None:
        grants, audit = await asyncio.gather(capture.store.grants(), capture.store.audit(limit=AUDIT_SHOWN))
    return {
        "tenants": admin.tenants(),
        "keys": keys,
        "usage": [{"scope": u["scope"], "meters": meters(u["usage"])} for u in usage],
        "capture_open": capture is not None,
        "grants": grants,
        "audit": list(reversed(audit)),
    }


def meters(usage: dict[str, Any]) -> list[dict[str, Any]]:
    """One scope's ``Limiter.usage`` as gauges: how much of each limit is taken now."""
    out = []
    for kind, v in usage.items():
        if not isinstance(v, dict) or "limit" not in v:
            continue
        limit = float(v["limit"])
        if kind in ("rpm", "tpm"):
            used = max(0.0, limit - float(v["available"]))
            text = f"{used:,.0f} of {limit:,.0f} per minute"
        elif kind == "concurrency":
            used = float(v["in_use"])
            text = f"{used:,.0f} of {limit:,.0f} in flight"
        else:  # a budget: usd_per_day or usd_per_month
            used = float(v["spent"]) + float(v["reserved"])
            text = f"${v['spent']:,.4f} spent + ${v['reserved']:,.4f} reserved of ${limit:,.2f} ({v['period']})"
        out.append({"kind": kind, "limit": limit, "used": used, "share": used / limit if limit else None, "text": text})
    return out
