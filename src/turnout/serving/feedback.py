"""``POST /v1/feedback``: what became of a request, or of a whole episode, told by the caller.

    {"request_id": "…" | "episode_id": "…",
     "outcome": "success" | "failure", "human_review": bool, "escalated": bool,
     "value": number, "labels": [str]}

* **Authenticated** by the tenant's key, and **tenant-scoped**: a tenant labels only its own
  rows; another tenant's id is answered exactly like an unknown one (404 ``not_found``).
* **One or many rows.** ``request_id`` names one request (the ``id`` turnout answered with,
  ``chatcmpl-``/``task-`` prefix optional). ``episode_id`` names the caller's task (a ticket,
  an agent run) that requests carried in ``X-Turnout-Episode`` or ``metadata.episode_id``: every
  stored row of the tenant's episode is updated, and ``updated`` says how many. Both together:
  that request is labelled and joins the episode.
* **In pieces, idempotent.** Fields left out keep what is stored (a review verdict may come a
  day after the outcome); sending the same feedback twice leaves the same state and answers
  200 both times (only ``outcome_at``, the time of the last feedback, moves).
* **Labels are replaced, not merged.** ``labels`` given becomes the row's labels whole, in the
  order sent (``[]`` clears them); left out, the stored labels stay. Labels alone are feedback
  enough.
* **Rows still queued.** Ledger rows reach the store through the writer's queue, a flush
  interval after the answer — the writer of the replica that answered, which in a fleet is often
  not the one the feedback reaches. Feedback that finds nothing waits for the row, polling for at
  most ``PENDING_WAIT_S``, while this replica's writer still holds rows or the request id was
  issued in the last ``RECENT_S`` (ids begin with their issue time), then answers 404. (We
  chose a short wait over a 202: a client then gets one final answer, and a 404 is always
  final.) An episode's feedback first lets every replica's writer flush twice, so the rows it
  updates are those answered before it was sent: send it after the episode's last answer.

Errors are in OpenAI's shape: 400 ``invalid_request_error`` naming the ``param``, 401, 404,
503 ``ledger_off`` when the gateway runs without a ledger (``store.kind: none``), and 503
``store_unavailable`` with Retry-After while the ledger's PostgreSQL does not answer (not yet
at start-up, or not any more).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

from turnout.errors import NotFound, RequestError, TurnoutError, refuse_unknown
from turnout.ledger.store import LedgerStore
from turnout.ledger.writer import LedgerWriter
from turnout.serving.asgi import Receive, Send, credential, json_object, read_body, send_json
from turnout.serving.door import check_episode_id
from turnout.serving.runtime import Runtime

OUTCOMES = frozenset({"success", "failure"})
MAX_VALUE = 1e15  # revenue, a score: far past any; sums of a million of them stay exact enough
FIELDS = frozenset({"request_id", "episode_id", "outcome", "human_review", "escalated", "value", "labels"})
PENDING_WAIT_S = 2.0
RECENT_S = 30.0  # a request id issued this recently may still be in another replica's writer
MIN_POLL_S = 0.05  # however short the flush interval: a forged recent id costs 40 lookups at most
MAX_LABELS = 32
MAX_LABEL_CHARS = 64
_ID_PREFIXES = ("chatcmpl-", "task-", "msg_", "resp_")  # chat, the task API, Messages, Responses


class LedgerOff(TurnoutError):
    """Feedback needs the ledger, and this gateway runs without one."""

    status = 503
    code = "ledger_off"


@dataclass(frozen=True, slots=True)
class Feedback:
    request_id: str | None
    episode_id: str | None
    outcome: str | None
    human_review: bool | None
    escalated: bool | None
    value: float | None
    labels: tuple[str, ...] | None


async def handle(runtime: Runtime, scope: dict[str, Any], receive: Receive, send: Send) -> None:
    tenant = await runtime.auth.identify(credential(scope), time.time())
    feedback = parse(await read_body(receive, scope, runtime.config.server.max_body_bytes))
    store = runtime.store
    if store is None:
        raise LedgerOff("feedback needs the ledger, and this gateway has none (store.kind: none)")
    updated = await apply(store, runtime.ledger, feedback, tenant.name, time.time())
    if updated == 0:
        by_request = feedback.request_id is not None
        what = f"request {feedback.request_id!r}" if by_request else f"episode {feedback.episode_id!r}"
        param = "request_id" if by_request else "episode_id"
        raise NotFound(f"no {what} of yours in the ledger", param=param)
    await send_json(send, 200, answer(feedback, updated))


def parse(raw: bytes) -> Feedback:
    body = json_object(raw)
    refuse_unknown(body, sorted(FIELDS), "feedback", code="invalid_value")
    request_id = _request_id(body.get("request_id"))
    episode_id = check_episode_id(body.get("episode_id"), "episode_id")
    if request_id is None and episode_id is None:
        raise _bad("request_id", "'request_id' or 'episode_id' is required")
    outcome = body.get("outcome")
    if outcome is not None and (not isinstance(outcome, str) or outcome not in OUTCOMES):
        raise _bad("outcome", "'outcome' must be 'success' or 'failure'")
    human_review = _flag(body, "human_review")
    escalated = _flag(body, "escalated")
    value = _value(body.get("value"))
    labels = _labels(body.get("labels"))
    if outcome is None and human_review is None and escalated is None and value is None and labels is None:
        raise _bad("outcome", "nothing to record: give 'outcome', 'human_review', 'escalated', 'value' or 'labels'")
    return Feedback(request_id, episode_id, outcome, human_review, escalated, value, labels)


async def apply(store: LedgerStore, writer: LedgerWriter | None, fb: Feedback, tenant: str, now: float) -> int:
    """Rows updated; waits a little for rows a writer has not stored yet (module docstring)."""
    flush_s = writer.flush_interval_s if writer is not None else 0.0
    if fb.request_id is None and flush_s:  # an episode: its last rows may be a flush away
        await asyncio.sleep(2 * flush_s)
    recent = fb.request_id is not None and _recent(fb.request_id, now)
    deadline = time.monotonic() + PENDING_WAIT_S
    while True:
        updated = await _update(store, fb, tenant, now)
        pending = recent or (writer is not None and writer.queued > 0)
        if updated or not pending or time.monotonic() >= deadline:
            return updated
        await asyncio.sleep(max(flush_s, MIN_POLL_S))


def _recent(request_id: str, now: float) -> bool:
    """Whether ``request_id`` is one turnout issued in the last ``RECENT_S`` (its first 12 hex
    digits are its issue time in milliseconds, ``boundary.new_request_id``)."""
    if len(request_id) != 24:
        return False
    try:
        issued = int(request_id[:12], 16) / 1000
    except ValueError:
        return False
    return now - RECENT_S <= issued <= now + 1.0


async def _update(store: LedgerStore, fb: Feedback, tenant: str, now: float) -> int:
    labels = None if fb.labels is None else list(fb.labels)
    given = (fb.outcome, fb.human_review, fb.escalated, fb.value)
    if fb.request_id is not None:
        found = await store.set_outcome(fb.request_id, tenant, *given, fb.episode_id, now, labels=labels)
        return int(found)
    assert fb.episode_id is not None  # parse requires one of the two
    return await store.set_outcome_by_episode(fb.episode_id, tenant, *given, now, labels=labels)


def answer(fb: Feedback, updated: int) -> dict[str, Any]:
    out: dict[str, Any] = {"object": "feedback", "updated": updated}
    for name in ("request_id", "episode_id", "outcome", "human_review", "escalated", "value"):
        if getattr(fb, name) is not None:
            out[name] = getattr(fb, name)
    if fb.labels is not None:
        out["labels"] = list(fb.labels)
    return out


def _bad(param: str, message: str) -> RequestError:
    return RequestError(message, param=param, code="invalid_value")


def _request_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 128:
        raise _bad("request_id", "'request_id' must be a non-empty string (the id turnout answered with)")
    bare: str = value
    for prefix in _ID_PREFIXES:  # the answer's "id" carries one; the ledger keeps the bare id
        bare = bare.removeprefix(prefix)
    if not bare.strip():  # "chatcmpl-" alone names no request (it was a 404 about an episode)
        raise _bad("request_id", f"'request_id' {value!r} is a prefix without an id")
    return bare


def _flag(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise _bad(name, f"'{name}' must be a boolean")
    return value


def _value(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad("value", "'value' must be a finite number")
    if abs(value) > MAX_VALUE:  # reports sum values: two near the float limit overflowed to inf
        raise _bad("value", f"'value' must be between -{MAX_VALUE:g} and {MAX_VALUE:g}")
    return float(value)


def _labels(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) > MAX_LABELS
        or not all(isinstance(v, str) and 0 < len(v) <= MAX_LABEL_CHARS and v.isprintable() for v in value)
    ):
        raise _bad(
            "labels",
            f"'labels' must be an array of at most {MAX_LABELS} printable strings of 1-{MAX_LABEL_CHARS} chars",
        )
    return tuple(value)
