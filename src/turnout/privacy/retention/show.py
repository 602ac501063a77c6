"""The page a privacy reviewer signs: for each tenant × task × data class, what turnout keeps
(metadata rows, redacted or full text, review items, cached answers), where, and for how long,
each figure with the rule it came from (``turnout retention show``).
"""

from __future__ import annotations

from dataclasses import dataclass

from turnout.config import HUMAN, Config
from turnout.privacy.capture.policy import rule_for
from turnout.privacy.capture.store import capture_path
from turnout.privacy.retention.rules import Rules

FOREVER = "until deleted"


@dataclass(frozen=True, slots=True)
class Kept:
    """One kind of record for one tenant, task and data class; ``days`` None: not kept at all
    (``kept`` False) or kept until deleted by hand."""

    what: str  # metadata | redacted text | full text under grant | review items | cached answers
    where: str
    kept: bool
    days: float | None
    source: str  # the rule that set the duration: tenant+task, task, tenant, default, fallback


@dataclass(frozen=True, slots=True)
class Line:
    tenant: str
    task: str
    data_class: str
    ledger: Kept
    text: Kept
    review: Kept
    cache: Kept

    def as_json(self) -> dict[str, object]:
        return {
            "tenant": self.tenant,
            "task": self.task,
            "data_class": self.data_class,
            **{name: _kept_json(getattr(self, name)) for name in ("ledger", "text", "review", "cache")},
        }


def lines(config: Config, tenant: str | None = None, task: str | None = None) -> list[Line]:
    """Every pair the config allows (a tenant's tasks, or every task), filtered by ``tenant``
    and ``task``; with no tenants configured, the anonymous caller's."""
    rules = Rules(config)
    tenants = {name: (t.tasks, t.data_classes) for name, t in config.tenants.items()} or {
        "anonymous": (None, ["public", "internal", "confidential", "restricted"])
    }
    out: list[Line] = []
    for name, (allowed, classes) in sorted(tenants.items()):
        if tenant is not None and name != tenant:
            continue
        for task_name in sorted(config.tasks if allowed is None else allowed):
            if task is not None and task_name != task:
                continue
            for data_class in classes:
                out.append(_line(config, rules, name, task_name, data_class))
    return out


def _line(config: Config, rules: Rules, tenant: str, task: str, data_class: str) -> Line:
    effective = rules.get(tenant, task)
    ledger_where = {
        "sqlite": config.store.path,
        "postgres": "PostgreSQL, table requests",
        "memory": "gateway memory, until it exits",
    }.get(config.store.kind, "-")
    keeps_ledger = config.store.kind not in ("none", "memory")
    ledger = Kept(
        "metadata", ledger_where, keeps_ledger, effective.ledger_days, rules.source(tenant, task, "ledger_days")
    )
    mode, _ = rule_for(config.capture, tenant, task)
    text_what = {"metadata": "no text", "redacted": "redacted text", "full": "full text under grant"}[mode]
    capture_source = rules.source(tenant, task, "capture_days")
    text = Kept(
        text_what,
        _shared(config, capture_path(config.store), "captures"),
        mode != "metadata",
        effective.capture_days,
        _or(capture_source, "capture.ttl_days"),
    )
    task_cfg = config.tasks[task]
    escalate = task_cfg.output.escalate if task_cfg.output is not None else None
    to_person = escalate is not None and escalate.to == HUMAN  # escalations are queued redacted
    reviewed = (mode != "metadata" and task_cfg.review_rate > 0) or to_person
    review = Kept(
        "review items",
        _shared(config, config.releases.store_path, "review_items"),
        reviewed,
        effective.review_days,
        rules.source(tenant, task, "review_days"),
    )
    return Line(tenant, task, data_class, ledger, text, review, _cache(config, rules, tenant, task, data_class))


def _shared(config: Config, path: str, table: str) -> str:
    """Where a store of shared state keeps its records: its SQLite file, or with
    ``state.kind: postgres`` the fleet's table (not a file on this machine)."""
    return path if config.state.kind == "sqlite" else f"PostgreSQL, table {table}"


def _cache(config: Config, rules: Rules, tenant: str, task: str, data_class: str) -> Kept:
    cache = config.tasks[task].cache
    if cache is None or data_class not in cache.classes:
        return Kept("cached answers", "-", False, None, "-")
    where = "Redis (AES-GCM)" if config.cache.backend == "redis" else "gateway memory"
    if cache.scope == "shared":
        where += ", shared by tenants"
    cap = rules.get(tenant, task).cache_ttl_s
    # The rule's cap names the figure only where it shortens the task's own ttl_s.
    source = rules.source(tenant, task, "cache_ttl_s") if cap is not None and cap < cache.ttl_s else "fallback"
    ttl_s = rules.get(tenant, task).cache_ttl(cache.ttl_s)
    return Kept("cached answers", where, True, ttl_s / 86_400, _or(source, f"tasks.{task}.cache.ttl_s"))


def _or(source: str, fallback: str) -> str:
    return fallback if source == "fallback" else source


def duration(kept: Kept) -> str:
    if not kept.kept:
        return "not kept"
    if kept.days is None:
        return FOREVER
    seconds = kept.days * 86_400
    if seconds < 86_400:
        return f"{seconds:g} s"
    return f"{kept.days:g} d"


def _kept_json(kept: Kept) -> dict[str, object]:
    return {
        "what": kept.what,
        "where": kept.where,
        "kept": kept.kept,
        "days": kept.days if kept.kept else None,
        "seconds": None if not kept.kept or kept.days is None else round(kept.days * 86_400, 3),
        "rule": kept.source if kept.kept else None,
    }
