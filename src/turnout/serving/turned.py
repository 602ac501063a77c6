"""The answers the attempt loop turned down (``routing.attempts.Turned``: a tool call the
allowlist blocked) were generated upstream, so they are paid for: each one's attempt gets its
cost from the answer's usage or, where none came (a stream cut at the blocked call), from the
count of what it generated; their tokens go to the quota with the request's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from turnout.control.tokens import generated_by_answer
from turnout.providers.base import Completion, Usage
from turnout.routing.attempts import Turned
from turnout.safety.held import Held
from turnout.serving.runtime import Runtime


async def price(
    rt: Runtime, turned: Sequence[Turned], body: Mapping[str, Any], started_at: float
) -> tuple[Usage | None, bool]:
    """Set each turned-down attempt's ``cost_usd``; their usage summed (None: there were none),
    and whether any of it was counted by the gateway rather than reported."""
    total: Usage | None = None
    estimated = False
    for one in turned:
        answer, attempt = one.answer, one.attempt
        usage = answer.usage if isinstance(answer, Completion) else None
        if usage is None:
            estimated = True
            usage = await rt.tokens.usage(body, _texts(answer), attempt.target)
        attempt.cost_usd = rt.prices.request_cost(attempt.target, usage, attempt.latency_ms / 1000, started_at)
        total = usage if total is None else add(total, usage)
    return total, estimated


def add(one: Usage, other: Usage) -> Usage:
    return Usage(one.prompt_tokens + other.prompt_tokens, one.completion_tokens + other.completion_tokens)


def _texts(answer: Any) -> list[str]:
    if isinstance(answer, Completion):
        return generated_by_answer(answer.body)[0]
    chunks = answer.chunks
    return list(chunks.taken) if isinstance(chunks, Held) else []
