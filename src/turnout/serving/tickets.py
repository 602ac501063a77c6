"""``GET /v1/tasks/{task}/tickets/{id}``: what became of a request escalated to a person.

An answer that failed its task's output checks with ``escalate: {to: human}`` was answered 202
with a ticket (``turnout.serving.output``); its id is the request id. The reviewer answers it
through ``POST /admin/review/{item}`` or the console's review page; the caller polls here::

    {"id", "object": "turnout.ticket", "task", "status": "pending" | "answered" | "rejected",
     "answer": the reviewer's corrected answer (answered only), "created_at", "answered_at"}

A ticket is its tenant's only: another tenant's, an unknown one, a sampled review item and a
task the caller may not use are all the same 404, so ids tell nothing across tenants.
"""

from __future__ import annotations

import time
from typing import Any

from turnout._support.printable import printable
from turnout.errors import NotFound, UnknownTask
from turnout.releases.review import ReviewItem
from turnout.serving.asgi import Receive, Send, header, send_json
from turnout.serving.runtime import Runtime

MAX_TICKET_ID = 128
STATUS = {"accept": "answered", "reject": "rejected"}  # any other label: still pending


async def handle(runtime: Runtime, scope: dict[str, Any], receive: Receive, send: Send, task: str, ticket: str) -> None:
    tenant = await runtime.auth.identify(header(scope, b"authorization"), time.time())
    if task not in runtime.config.tasks or not tenant.may_use(task):
        raise UnknownTask(f"the task {printable(task)!r} does not exist or is not open to you", param="task")
    item = await _find(runtime, ticket)
    if item is None or item.tenant != tenant.name or item.task != task:
        raise NotFound(f"no ticket {ticket[:MAX_TICKET_ID]!r} for the task {task!r}")
    await send_json(send, 200, view(item))


async def _find(runtime: Runtime, ticket: str) -> ReviewItem | None:
    reviews = runtime.reviews
    if reviews is None or not ticket or len(ticket) > MAX_TICKET_ID or "/" in ticket:
        return None
    return await reviews.ticket(ticket)


def view(item: ReviewItem) -> dict[str, Any]:
    """The caller's view of a ticket: never the reviewer's name or note, nor the queued text."""
    status = STATUS.get(item.status, "pending")
    return {
        "id": item.request_id,
        "object": "turnout.ticket",
        "task": item.task,
        "status": status,
        "answer": item.answer if status == "answered" else None,
        "created_at": item.created_at,
        "answered_at": item.labeled_at if status != "pending" else None,
    }
