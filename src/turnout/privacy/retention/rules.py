"""The effective retention of one tenant and task, field by field.

Each field comes from the most specific rule that sets it: tenant+task, then task, then tenant,
then the default (the rule naming neither); unset everywhere, its fallback applies:
``capture_days`` is ``capture.ttl_days`` (so the old setting keeps working), the ledger and the
review queue are kept, and the cache keeps an answer for its task's ``ttl_s``.

    rules = Rules(config)
    rules.get("acme", "summarize").ledger_days   # resolved once per pair, then a dict lookup
"""

from __future__ import annotations

from dataclasses import dataclass

from turnout.config import Config, RetentionRule

DAY_S = 86_400.0
FIELDS = ("ledger_days", "capture_days", "review_days", "cache_ttl_s")


@dataclass(frozen=True, slots=True)
class Effective:
    """None: kept until deleted by hand (``cache_ttl_s``: the task's own ``ttl_s`` alone)."""

    ledger_days: float | None
    capture_days: float
    review_days: float | None
    cache_ttl_s: float | None

    def cache_ttl(self, task_ttl_s: float) -> float:
        """A cached answer's time to live: the task's, capped by retention."""
        return task_ttl_s if self.cache_ttl_s is None else min(task_ttl_s, self.cache_ttl_s)


class Rules:
    def __init__(self, config: Config) -> None:
        self._capture_days = config.capture.ttl_days
        self._table: dict[tuple[str | None, str | None], RetentionRule] = {
            (r.tenant, r.task): r for r in config.retention.rules
        }
        self._resolved: dict[tuple[str, str], Effective] = {}
        # Every ledger_days a pair can have: each pair's is one rule's (the retention purge
        # walks the rows past each of these cutoffs).
        self.ledger_days = sorted({r.ledger_days for r in config.retention.rules if r.ledger_days is not None})
        self.purges = any(
            r.ledger_days is not None or r.capture_days is not None or r.review_days is not None
            for r in config.retention.rules
        )

    def get(self, tenant: str, task: str) -> Effective:
        found = self._resolved.get((tenant, task))
        if found is None:
            found = self._resolved[(tenant, task)] = self._resolve(tenant, task)
        return found

    def source(self, tenant: str, task: str, field: str) -> str:
        """Which rule set ``field`` for the pair: ``tenant+task``, ``task``, ``tenant``,
        ``default`` or ``fallback`` (no rule sets it)."""
        for key, name in self._order(tenant, task):
            rule = self._table.get(key)
            if rule is not None and getattr(rule, field) is not None:
                return name
        return "fallback"

    def _resolve(self, tenant: str, task: str) -> Effective:
        values: dict[str, float | None] = dict.fromkeys(FIELDS)
        for key, _ in reversed(self._order(tenant, task)):  # least specific first: later ones win
            rule = self._table.get(key)
            if rule is None:
                continue
            for field in FIELDS:
                value = getattr(rule, field)
                if value is not None:
                    values[field] = value
        capture = values["capture_days"]
        return Effective(
            values["ledger_days"],
            self._capture_days if capture is None else capture,
            values["review_days"],
            values["cache_ttl_s"],
        )

    @staticmethod
    def _order(tenant: str, task: str) -> tuple[tuple[tuple[str | None, str | None], str], ...]:
        """Most specific first."""
        return (
            ((tenant, task), "tenant+task"),
            ((None, task), "task"),
            ((tenant, None), "tenant"),
            ((None, None), "default"),
        )
