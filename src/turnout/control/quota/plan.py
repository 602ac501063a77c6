"""What a request asks of its quotas, computed before the call: pure functions.

Token estimate: about four characters per token over every text the prompt carries (messages,
tool definitions), plus a few tokens per message for the chat template, plus ``max_tokens`` (or
``limits.default_max_tokens`` when the request sets none). It errs high on purpose: TPM is
corrected with the real usage afterwards, and a budget reservation is meant to be a worst case.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from turnout.config import Config, Limit, Price
from turnout.control.quota.base import Limits, Scope

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4


def scopes(config: Config) -> dict[tuple[str, str], tuple[Scope, ...]]:
    """(tenant, task) → the scopes a request is counted in; only scopes with a limit."""
    out: dict[tuple[str, str], tuple[Scope, ...]] = {}
    for tname, tenant in config.tenants.items():
        whole = _limits(tenant.limits)
        for task in config.tasks:
            found: list[Scope] = []
            if not whole.empty():
                found.append(Scope(tname, whole))
            own = tenant.task_limits.get(task)
            if own is not None and not _limits(own).empty():
                found.append(Scope(f"{tname}/{task}", _limits(own)))
            out[(tname, task)] = tuple(found)
    return out


def _limits(limit: Limit) -> Limits:
    return Limits(limit.rpm, limit.tpm, limit.concurrency, limit.usd_per_day, limit.usd_per_month)


def prompt_tokens(body: Mapping[str, Any]) -> int:
    chars = 0
    messages = body.get("messages") or ()
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(p.get("text") or "") for p in content if isinstance(p, dict))
        if message.get("tool_calls"):
            chars += len(orjson.dumps(message["tool_calls"]))
    if body.get("tools"):
        chars += len(orjson.dumps(body["tools"]))
    return chars // CHARS_PER_TOKEN + TOKENS_PER_MESSAGE * len(messages) + 1


def max_output_tokens(body: Mapping[str, Any], default: int) -> int:
    value = body.get("max_completion_tokens") or body.get("max_tokens")
    return value if isinstance(value, int) and value > 0 else default


def cost_usd(price: Price | None, prompt: int, completion: int) -> float:
    if price is None:
        return 0.0
    return (prompt * price.input_per_mtok + completion * price.output_per_mtok) / 1_000_000
