"""The quota step of the request path: admit a request into its tenant's limits and budgets
before any attempt, then settle it with the real usage (or release it) afterwards.

Budgets reserve the worst case over the targets the request may reach (policy has already cut
them down), so a fallback to a dearer target can never spend past the budget. A task with
``on_budget_exceeded: cheaper`` keeps, when refused, only the targets whose worst case fits
what is left, and tries once more.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from turnout.catalog import price
from turnout.config import Config, Price
from turnout.providers.base import Usage
from turnout.quota.base import Ask, Grant, Limiter, QuotaExceeded, Scope
from turnout.quota.plan import cost_usd, max_output_tokens, prompt_tokens, scopes

log = logging.getLogger("turnout.quota")


class QuotaGate:
    def __init__(self, config: Config, limiter: Limiter | None) -> None:
        self.limiter = limiter
        self.default_max_tokens = config.limits.default_max_tokens
        self.scopes = scopes(config)
        self.prices: dict[str, Price | None] = {name: price(t) for name, t in config.targets.items()}
        self.cheaper = {name: t.on_budget_exceeded == "cheaper" for name, t in config.tasks.items()}

    def needed(self) -> bool:
        return any(self.scopes.values())

    async def admit(
        self, tenant: str, task: str, body: dict[str, Any], allowed: list[str], request_id: str
    ) -> tuple[list[str], Grant | None]:
        """The targets the request may still use, and its grant (None: no limits apply)."""
        scopes: tuple[Scope, ...] = self.scopes.get((tenant, task), ())
        if not scopes or self.limiter is None:
            return allowed, None
        prompt = prompt_tokens(body)
        output = max_output_tokens(body, self.default_max_tokens)
        worst = {name: cost_usd(self.prices.get(name), prompt, output) for name in allowed}
        ask = Ask(request_id, scopes, prompt + output, max(worst.values()), time.time())
        try:
            return allowed, await self.limiter.acquire(ask)
        except QuotaExceeded as refusal:
            if not (refusal.limit.startswith("usd_") and self.cheaper.get(task) and refusal.remaining_usd is not None):
                raise
            fits = [name for name in allowed if worst[name] <= refusal.remaining_usd]
            if not fits:
                raise
            ask.cost_usd = max(worst[name] for name in fits)
            return fits, await self.limiter.acquire(ask)

    def cost(self, target: str, usage: Usage | None) -> float | None:
        """The real cost of an answer, when the target's price and the usage are known."""
        known = self.prices.get(target)
        if known is None or usage is None:
            return None
        return cost_usd(known, usage.prompt_tokens, usage.completion_tokens)

    async def settle(self, grant: Grant | None, usage: Usage | None, cost: float | None) -> None:
        if grant is None or self.limiter is None:
            return
        if usage is None:
            await self.release(grant)  # nothing known was used: give the reservation back
            return
        tokens = usage.prompt_tokens + usage.completion_tokens
        try:
            await self.limiter.settle(grant, tokens, cost or 0.0)
        except Exception as exc:  # after the answer: never turn a served request into an error
            log.warning("quota settle failed for %s: %s", grant.ask.request_id, type(exc).__name__)

    async def release(self, grant: Grant | None) -> None:
        if grant is None or self.limiter is None:
            return
        try:
            await self.limiter.release(grant)
        except Exception as exc:
            log.warning("quota release failed for %s: %s", grant.ask.request_id, type(exc).__name__)
