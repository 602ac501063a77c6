"""``GET /v1/tasks/{task}/tickets/{id}``: what became of a request escalated to a person.

An answer that failed its task's output checks with ``escalate: {to: human}`` was answered 202
with a ticket (``turnout.serving.output``); its id is the request id. The reviewer answers it
through ``POST /admin/review/{item}`` or the console's review page; the caller polls here::

    {"id", "object": "turnout.ticket", "task", "status": "pending" | "answered" | "rejected",
     "answer": the reviewer's corrected answer (answered only), "output": that answer parsed,
     where the task's output has a schema, "created_at", "answered_at"}

The reviewer's answer is what the model's should have been: accepting a ticket with one that
fails the task's output checks (its schema, ``max_chars``, ``must_not_contain``) is a 400
(``check_answer``), and an answered or rejected ticket stays so (``ReviewQueue.label``).

A ticket is its tenant's only: another tenant's, an unknown one, a sampled review item and a
task the caller may not use are all the same 404, so ids tell nothing across tenants.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from turnout._support.printable import printable
from turnout.errors import NotFound, NotReady, RequestError, UnknownTask
from turnout.releases.review import ESCALATED, ReviewItem
from turnout.safety.output import resolve, strip_fence
from turnout.serving.asgi import Receive, Send, credential, send_json
from turnout.serving.runtime import Runtime

MAX_TICKET_ID = 128
STATUS = {"accept": "answered", "reject": "rejected"}  # any other label: still pending


async def handle(runtime: Runtime, scope: dict[str, Any], receive: Receive, send: Send, task: str, ticket: str) -> None:
    tenant = await runtime.auth.identify(credential(scope), time.time())
    if task not in runtime.config.tasks or not tenant.may_use(task):
        raise UnknownTask(f"the task {printable(task)!r} does not exist or is not open to you", param="task")
    item = await _find(runtime, ticket)
    if item is None or item.tenant != tenant.name or item.task != task:
        raise NotFound(f"no ticket {ticket[:MAX_TICKET_ID]!r} for the task {task!r}")
    await send_json(send, 200, view(item, _schema(runtime, item)))


async def _find(runtime: Runtime, ticket: str) -> ReviewItem | None:
    reviews = runtime.reviews
    if reviews is None and runtime.state_missing:  # the queue opens once PostgreSQL answers
        raise NotReady("tickets cannot be read yet: the gateway's PostgreSQL does not answer")
    if reviews is None or not ticket or len(ticket) > MAX_TICKET_ID or "/" in ticket:
        return None
    return await reviews.ticket(ticket)


def view(item: ReviewItem, schema: bool = False) -> dict[str, Any]:
    """The caller's view of a ticket: never the reviewer's name or note, nor the queued text.
    ``schema``: the task's answers are JSON; ``output`` is the answer parsed, as the task API's."""
    status = STATUS.get(item.status, "pending")
    answer = item.answer if status == "answered" else None
    out = {
        "id": item.request_id,
        "object": "turnout.ticket",
        "task": item.task,
        "status": status,
        "answer": answer,
        "created_at": item.created_at,
        "answered_at": item.labeled_at if status != "pending" else None,
    }
    if schema:
        out["output"] = _parsed(answer) if answer is not None else None
    return out


async def check_answer(runtime: Runtime, item_id: int, label: str, answer: str | None) -> None:
    """Before an escalated item is accepted: its answer must pass the task's output checks, as
    a model's would have, with its release's output schema where it has one (a chat request's
    own ``response_format`` is not kept, so not checked)."""
    queue = runtime.reviews
    if label != "accept" or not answer or queue is None:
        return
    item = await queue.get(item_id)
    task = runtime.config.tasks.get(item.task) if item is not None else None
    if item is None or item.reason != ESCALATED or task is None or task.output is None:
        return
    schema = _release_schema(runtime, item)  # the task API's: its release's output schema
    asked = {"response_format": {"type": "json_schema", "json_schema": {"schema": schema}}} if schema else {}
    checks = resolve(item.task, task.output).checks(asked, fenced=True)
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}
    problem = checks.verify(body) if checks is not None else None
    if problem is not None:
        raise RequestError(
            f"the answer fails the task's output checks: {problem.detail}", param="answer", code="answer_invalid"
        )


def _schema(runtime: Runtime, item: ReviewItem) -> bool:
    output = runtime.config.tasks[item.task].output
    return (output is not None and output.json_schema is not None) or _release_schema(runtime, item) is not None


def _release_schema(runtime: Runtime, item: ReviewItem) -> dict[str, Any] | None:
    release = runtime.releases.get(item.task, item.release) if runtime.releases and item.release else None
    return release.output_schema if release is not None else None


def _parsed(answer: str) -> Any:
    try:
        return orjson.loads(strip_fence(answer))
    except orjson.JSONDecodeError:  # accepted before the task had a schema
        return None
