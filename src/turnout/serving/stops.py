"""Two ledger fields read off the request and its answer, never its text: why the answer
stopped (the upstream's ``finish_reason``) and how many documents the task API attached."""

from __future__ import annotations

import re

from turnout.ledger.record import LedgerRow
from turnout.providers.base import Completion
from turnout.routing.attempts import Result
from turnout.serving.tasks import TaskRequest

# finish_reason is an enum upstream ("stop", "length", "tool_calls", "content_filter", ...);
# anything else is kept out of the ledger as "other": an upstream must not write free text there.
_REASON = re.compile(r"[a-z_]{1,32}")
OTHER = "other"
_COMMON = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})


def finish_reason(result: Result | None) -> str | None:
    """The first choice's finish_reason of a whole answer; None for a stream, no answer or none given."""
    if result is None or not isinstance(result.answer, Completion):
        return None
    choices = result.answer.body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    reason = first.get("finish_reason") if isinstance(first, dict) else None
    if reason is None:
        return None
    if type(reason) is str and reason in _COMMON:  # most answers: no pattern match
        return reason
    return reason if isinstance(reason, str) and _REASON.fullmatch(reason) else OTHER


def documents(request: object) -> int | None:
    """The task API request's documents; None for the other APIs."""
    return len(request.documents) if isinstance(request, TaskRequest) else None


def answer_fields(row: LedgerRow, request: object, result: Result | None) -> None:
    row.finish_reason = finish_reason(result)
    row.documents = documents(request)
