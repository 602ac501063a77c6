"""Golden-set cases from production: reviewed items of the review queue (``releases.review``)
turned into lines of ``evals/<task>.jsonl``, so that a golden set grows from real traffic
(``turnout eval import-reviews TASK``).

What an item becomes (its text is stored redacted, so the case is redacted too: the model sees
the same placeholders the reviewer saw)::

    messages   the request's messages, as the gateway sent them (the JSON before the item's
               "--- answer ---" or "--- rejected answer … ---" marker)
    expected   the reviewer's corrected ``answer`` when given; else, for an accepted sample,
               the answer that was served (after the marker); a rejection without a corrected
               answer says what is wrong but not what is right: skipped
    expect     ``required_fields`` with every top-level value when the expected answer is a JSON
               object, else ``equals`` (whitespace ignored)
    id         ``review-<item id>``: importing twice adds nothing

Items still pending or labelled ``escalate`` (awaiting a decision) are not imported.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from turnout.releases.review import ReviewItem

ANSWER_MARK = "\n\n--- answer ---\n"
REJECTED_MARK = "\n\n--- rejected answer"
DECIDED = ("accept", "reject")


@dataclass
class Imported:
    """The cases made, and each item left out with why."""

    cases: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)


def case_id(item: ReviewItem) -> str:
    return f"review-{item.id}"


def import_items(items: Iterable[ReviewItem], known_ids: set[str]) -> Imported:
    """Cases for the decided items whose ids ``known_ids`` (the golden set's) does not hold yet."""
    out = Imported()
    for item in items:
        if item.status not in DECIDED:
            continue
        if case_id(item) in known_ids:
            out.skipped.append((item.id, "already in the golden set"))
            continue
        made = to_case(item)
        if isinstance(made, str):
            out.skipped.append((item.id, made))
        else:
            out.cases.append(made)
    return out


def to_case(item: ReviewItem) -> dict[str, Any] | str:
    """The case line for one decided item, or why it makes none."""
    messages, served = _split(item.text)
    if messages is None:
        return "its text holds no request messages"
    expected = item.answer
    if expected is None:
        if item.status != "accept" or served is None:
            return "rejected without a corrected answer: nothing to expect"
        expected = served
    if not expected.strip():
        return "the expected answer is empty"
    metadata = {
        "request_id": item.request_id,
        "release": item.release,
        "labeled_by": item.labeled_by,
        "label": item.status,
        "source": "escalation" if item.reason else "review sample",
    }
    return {
        "id": case_id(item),
        "messages": messages,
        "expect": [_expectation(expected)],
        "tags": ["from-review", item.status],
        "metadata": {k: v for k, v in metadata.items() if v is not None},
    }


def _split(text: str) -> tuple[list[dict[str, Any]] | None, str | None]:
    """(the request's messages, the served answer if the item holds one)."""
    head, mark, tail = text.partition(ANSWER_MARK)
    served: str | None = tail if mark else None
    if not mark:
        head = text.partition(REJECTED_MARK)[0]
    try:
        messages = orjson.loads(head)
    except orjson.JSONDecodeError:
        return None, served
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return None, served
    return messages, served


def _expectation(expected: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(expected)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and doc and not any("." in key or "[" in key for key in doc):
        return {"scorer": "required_fields", "values": doc}
    return {"scorer": "equals", "value": expected, "ignore_whitespace": True}
