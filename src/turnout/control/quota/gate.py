"""The quota step of the request path: admit a request into its tenant's limits and budgets
before any attempt, then settle it with the real usage (or release it) afterwards.

Budgets reserve the worst case over the targets the request may reach (policy has already cut
them down), so a fallback to a dearer target can never spend past the budget. A task with
``on_budget_exceeded: cheaper`` keeps, when refused, only the targets whose worst case fits
what is left, and tries once more.

Worst cases come from the price book (``turnout.control.pricing``, owned by the runtime and
handed in) at the request's start time; what a request really cost is priced by the caller and
passed to ``settle``. The worst
case of one answer is its token bound (``prompt + max_tokens``) for managed targets and for
self-hosted ones allocated by tokens, and the target's total timeout held on a replica for those
allocated by busy seconds. Failed self-hosted attempts cost their busy time too, so with retries
a settled total may pass the reservation by up to that.

The token bound is the prompt's (``turnout.control.tokens``: UTF-8 bytes, or the target's
tokenizer) plus the output bound. Where a budget applies and the request sets no output bound,
``limits.default_max_tokens`` is sent upstream as ``max_tokens``: the bound the reservation
assumed is the one the target is told. An answer is settled with its cost even when its upstream
reported no usage (the door then counts what was generated), and released only when there was
no answer.

A task that checks its answers (``output:``) may pay for more than one answer: its reservation
covers the first answer and ``repair_attempts`` re-asks of the same target (each re-ask is the
request with the last rejected answer, at most the output bound, and the repair turn, at most
``REPAIR_TURN_TOKENS``, appended), plus the worst case of ``escalate.to`` where that is a target; so
repairs and an escalation never spend past the budget either.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from turnout.config import Config, embedding_tasks
from turnout.control.pricing import PriceBook
from turnout.control.quota.base import Ask, Grant, Limiter, QuotaExceeded, Scope
from turnout.control.quota.memory import MemoryLimiter
from turnout.control.quota.plan import REPAIR_TURN_TOKENS, max_output_tokens, scopes, sets_output_bound
from turnout.control.tokens import BYTES, Tokens
from turnout.errors import RequestError
from turnout.providers.base import Usage

log = logging.getLogger("turnout.quota")


class QuotaGate:
    def __init__(self, config: Config, limiter: Limiter | None, book: PriceBook, tokens: Tokens = BYTES) -> None:
        self.limiter = limiter
        # The in-process limiter never waits: called directly, without a coroutine per step (a
        # subclass, which may wait, goes through the protocol).
        self.inline = limiter if type(limiter) is MemoryLimiter else None
        self.default_max_tokens = config.limits.default_max_tokens
        self.scopes = scopes(config)
        self.budgeted = {pair: any(_budgeted(s) for s in found) for pair, found in self.scopes.items()}
        self.book = book  # for worst cases only
        self.tokens = tokens
        self.cheaper = {name: t.on_budget_exceeded == "cheaper" for name, t in config.tasks.items()}
        self.embedding_tasks = embedding_tasks(config)  # they generate nothing: no output to bound
        self.answers = _answers(config)  # checked tasks: (repair_attempts, escalation target or None)

    def needed(self) -> bool:
        return any(self.scopes.values())

    async def admit(
        self,
        tenant: str,
        task: str,
        body: dict[str, Any],
        allowed: list[str],
        request_id: str,
        *,
        checked: bool = False,
        output_param: str | None = "max_tokens",
    ) -> tuple[list[str], Grant | None]:
        """The targets the request may still use, and its grant (None: no limits apply).
        ``checked``: its answers pass the task's output checks (repairs and escalation).
        ``output_param``: the caller's field that bounds the output (None: it sets none), named
        when the request can never fit."""
        scopes: tuple[Scope, ...] = self.scopes.get((tenant, task), ())
        if not scopes or self.limiter is None:
            return allowed, None
        embeds = task in self.embedding_tasks
        if not embeds and self.budgeted[(tenant, task)] and not sets_output_bound(body):
            body["max_tokens"] = self.default_max_tokens  # the bound the reservation assumes, told upstream
        repairs, escalation = self.answers.get(task, (0, None)) if checked else (0, None)
        output = 0 if embeds else max_output_tokens(body, self.default_max_tokens)
        now = time.time()
        if len(allowed) == 1 and escalation is None:  # most requests: one target, no walk over several
            name = allowed[0]
            prompt = self.tokens.prompt_now(body, name)
            if prompt is None:  # the target's tokenizer counts it, maybe on a thread
                prompt = await self.tokens.prompt(body, name)
            worst = {name: self._worst(name, prompt, output, repairs, now)}
            extra = 0.0
            ask = Ask(request_id, scopes, prompt + output, worst[name], now)
        else:
            counted = allowed if escalation is None or escalation in allowed else [*allowed, escalation]
            prompts = await self.tokens.prompts(body, counted)
            worst = {name: self._worst(name, prompts[name], output, repairs, now) for name in allowed}
            extra = 0.0 if escalation is None else self.book.worst_case(escalation, prompts[escalation], output, now)
            ask = Ask(request_id, scopes, max(prompts[n] for n in allowed) + output, max(worst.values()) + extra, now)
        _fits_tpm(ask, output, output_param)
        try:
            return allowed, self.inline.take(ask) if self.inline is not None else await self.limiter.acquire(ask)
        except QuotaExceeded as refusal:
            if not (refusal.limit.startswith("usd_") and self.cheaper.get(task) and refusal.remaining_usd is not None):
                raise
            fits = [name for name in allowed if worst[name] + extra <= refusal.remaining_usd]
            if not fits:
                raise
            ask.cost_usd = max(worst[name] for name in fits) + extra
            return fits, await self.limiter.acquire(ask)

    def _worst(self, target: str, prompt: int, output: int, repairs: int, now: float) -> float:
        """The most ``target`` may cost: one answer, and ``repairs`` re-asks, each the request
        with one rejected answer and one repair turn appended (``serving.output.repair_body``)."""
        first = self.book.worst_case(target, prompt, output, now)
        if not repairs:
            return first
        return first + repairs * self.book.worst_case(target, prompt + output + REPAIR_TURN_TOKENS, output, now)

    async def settle(self, grant: Grant | None, usage: Usage | None, cost: float | None) -> None:
        if grant is None or self.limiter is None:
            return
        if usage is None:
            await self.release(grant)  # no answer: give the reservation back
            return
        tokens = usage.prompt_tokens + usage.completion_tokens
        try:
            if self.inline is not None:
                self.inline.settle_now(grant, tokens, cost or 0.0)
            else:
                await self.limiter.settle(grant, tokens, cost or 0.0)
        except Exception as exc:  # after the answer: never turn a served request into an error
            log.warning("quota settle failed for %s: %s", grant.ask.request_id, type(exc).__name__)

    async def release(self, grant: Grant | None) -> None:
        if grant is None or self.limiter is None:
            return
        try:
            if self.inline is not None:
                self.inline.release_now(grant)
            else:
                await self.limiter.release(grant)
        except Exception as exc:
            log.warning("quota release failed for %s: %s", grant.ask.request_id, type(exc).__name__)


def _answers(config: Config) -> dict[str, tuple[int, str | None]]:
    """Each task with output checks: its repair attempts and the target it escalates to (None:
    none, or a person, who costs no tokens)."""
    out: dict[str, tuple[int, str | None]] = {}
    for name, task in config.tasks.items():
        if task.output is not None:
            to = task.output.escalate.to if task.output.escalate is not None else None
            out[name] = (task.output.repair_attempts, to if to in config.targets else None)
    return out


def _fits_tpm(ask: Ask, output: int, param: str | None) -> None:
    """A request whose tokens pass a whole minute's ``tpm`` would be told to retry forever (a full
    bucket never holds it): refused at once, as too large, not rate limited. ``param``: the
    caller's field that bounds the output, named as the door spells it (None: it sets none)."""
    for scope in ask.scopes:
        tpm = scope.limits.tpm
        if tpm is not None and ask.tokens > tpm:
            said = f": {param}, or the default when unset" if param else ""
            fix = f"lower {param} or shorten the prompt" if param else "shorten the prompt"
            raise RequestError(
                f"{scope.name}: the request counts up to {ask.tokens:,} tokens ({ask.tokens - output:,} of prompt and "
                f"{output:,} of output{said}), more than the tpm limit of {tpm:,} can ever admit; {fix}",
                param=param,
                code="request_too_large",
            )


def _budgeted(scope: Scope) -> bool:
    return scope.limits.usd_per_day is not None or scope.limits.usd_per_month is not None
