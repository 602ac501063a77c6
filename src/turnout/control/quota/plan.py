"""What a request asks of its quotas, computed before the call: pure functions.

Tokens: a bound on the prompt (``turnout.control.tokens``: every text the prompt carries as
its UTF-8 bytes, or as the target's tokenizer counts it where ``targets.X.tokenizer`` is set,
plus per-request, per-message and tool-schema overhead, and a fixed count per image; never
characters ÷ 4, which admits Chinese, Japanese or emoji at a fraction of their tokens), plus the
output bound: ``max_completion_tokens`` or ``max_tokens`` (``limits.default_max_tokens`` when
the request sets neither; the gate then sends it upstream as ``max_tokens`` where a budget
applies), times ``n``. It errs high on purpose: TPM is corrected with the real usage afterwards,
and a budget reservation is meant to be an upper bound of what the answer may cost.

What is left of the bound is the upstream's to keep: one that generates past ``max_tokens``
spends past its reservation, by that request's overrun; the settled cost is charged in full, so
the next request is refused once the budget is spent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from turnout.config import Config, Limit
from turnout.control.quota.base import Limits, Scope, scope_key
from turnout.control.tokens import TOKENS_PER_MESSAGE, choices_asked, output_bound, prompt_tokens

__all__ = ["REPAIR_TURN_TOKENS", "max_output_tokens", "prompt_tokens", "scopes", "sets_output_bound"]

# What a repair re-ask adds to the prompt besides the rejected answer: the hint (at most
# ``turnout.safety.output.HINT_BYTES`` UTF-8 bytes, so at most as many tokens), the fixed
# suffix and two messages' overhead. Kept equal to that module's bound by a test.
REPAIR_TURN_TOKENS = 2000 + 64 + 2 * TOKENS_PER_MESSAGE


def scopes(config: Config) -> dict[tuple[str, str], tuple[Scope, ...]]:
    """(tenant, task) → the scopes a request is counted in; only scopes with a limit."""
    out: dict[tuple[str, str], tuple[Scope, ...]] = {}
    for tname, tenant in config.tenants.items():
        whole = _limits(tenant.limits)
        for task in config.tasks:
            found: list[Scope] = []
            if not whole.empty():
                found.append(Scope(tname, whole, scope_key(tname)))
            own = tenant.task_limits.get(task)
            if own is not None and not _limits(own).empty():
                found.append(Scope(f"{tname}/{task}", _limits(own), scope_key(tname, task)))
            out[(tname, task)] = tuple(found)
    return out


def _limits(limit: Limit) -> Limits:
    return Limits(limit.rpm, limit.tpm, limit.concurrency, limit.usd_per_day, limit.usd_per_month)


def max_output_tokens(body: Mapping[str, Any], default: int) -> int:
    """The most tokens the answer may hold (``output_bound``), ``default`` when unset."""
    return output_bound(body) or default * choices_asked(body)


def sets_output_bound(body: Mapping[str, Any]) -> bool:
    return body.get("max_completion_tokens") is not None or body.get("max_tokens") is not None
