"""The outermost error boundary (starlette's ``ServerErrorMiddleware`` is the model).

Every HTTP request gets its request id here. A ``TurnoutError`` that reaches the boundary
(a refusal on a route outside the pipeline: an unknown route, a bad admin key) is answered
with its own status. A store that does not answer (not open yet, its connection lost) is a
503 ``store_unavailable`` with Retry-After, one warning logged. Any other exception is a bug:
an OpenAI-shaped 500 that names the request id (header and message), logged with the
exception's type and place only, never its message, which may quote request content. A
response already started gets no second head: the bug is logged and the response ends there.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from turnout._support.failures import describe
from turnout._support.places import unreachable
from turnout.errors import StoreUnavailable, TurnoutError
from turnout.serving import respond
from turnout.serving.asgi import Message, Receive, Send, continue_unsent, drain, unread_body

log = logging.getLogger("turnout")

# Anthropic's SDKs read errors in their own shape: on /v1/messages and every path under it
# (count_tokens, and a path this gateway does not serve there).
MESSAGES_PATH, MESSAGES = "/v1/messages", "messages"

Handler = Callable[[dict[str, Any], Receive, Send, str], Awaitable[None]]


class ErrorBoundary:
    def __init__(self, app: Handler) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        request_id = new_request_id()
        watched = _Watched(send, scope, receive)
        try:
            await self.app(scope, receive, watched, request_id)
        except Exception as exc:
            shape = MESSAGES if messages_path(scope.get("path")) else ""
            if _store_down(exc):
                log.warning("request %s: a store does not answer: %s", request_id, _said(exc))
                exc = StoreUnavailable("a store this request needs does not answer right now; try again shortly")
            if isinstance(exc, TurnoutError) and not watched.started:
                await respond.error(watched, exc, request_id, shape)
                return
            log.error("internal error in request %s: %s", request_id, describe(exc))
            if not watched.started:
                await respond.error(watched, internal_error(request_id), request_id, shape)


def _store_down(exc: Exception) -> bool:
    """A store that is not open yet or cannot be reached (a route that reads or writes one
    directly: feedback, tickets, the review queue, keys, the console's actions): 503, not a
    bug. An error that is already a 4xx or an upstream's stays what it is."""
    if isinstance(exc, StoreUnavailable):
        return True
    return (not isinstance(exc, TurnoutError) or exc.status == TurnoutError.status) and unreachable(exc)


def _said(exc: Exception) -> str:
    """The store's failure on one line (its class and place where it is not one of ours)."""
    return " ".join(exc.message.split()) if isinstance(exc, TurnoutError) else describe(exc)


def messages_path(path: Any) -> bool:
    """Whether ``path`` is /v1/messages or under it: answered in Anthropic's error shape."""
    return isinstance(path, str) and (path == MESSAGES_PATH or path.startswith(MESSAGES_PATH + "/"))


class _Watched:
    """``send``, noting whether the response has started. It hands back the server's own
    awaitable rather than awaiting it: no extra coroutine per message. An error answer to a
    request whose body was not read (a 401 or 413 before it) first drains that body: closing
    on unread bytes would reset the connection, and the client would never see the answer.
    One whose client waits for ``100 Continue`` (never sent) closes the connection instead."""

    __slots__ = ("receive", "scope", "send", "started")

    def __init__(self, send: Send, scope: dict[str, Any], receive: Receive) -> None:
        self.send = send
        self.scope = scope
        self.receive = receive
        self.started = False

    def __call__(self, message: Message) -> Awaitable[None]:
        if not self.started and message["type"] == "http.response.start":
            self.started = True
            if message["status"] >= 400:
                if unread_body(self.scope):
                    return self._after_draining(message)
                if continue_unsent(self.scope):
                    message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
        return self.send(message)

    async def _after_draining(self, message: Message) -> None:
        await drain(self.receive)
        await self.send(message)


# Request ids: 24 hex digits, the millisecond (48 bits) then 48 random bits, like a ULID or a
# UUIDv7: time-ordered, so the ledger's primary-key index grows at its end (random ids halve
# the SQLite insert rate at 200,000 rows), and unique across processes and replicas. Not
# secrets: every lookup by id is tenant-scoped. The random part comes from a generator seeded
# by the OS, not from os.urandom per request (a system call costs ~15 µs in some virtual
# machines), reseeded in a forked child so that workers never share a sequence.
_ids = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))


def new_request_id() -> str:
    return f"{int(time.time() * 1000):012x}{_ids.getrandbits(48):012x}"


def internal_error(request_id: str) -> TurnoutError:
    return TurnoutError(f"internal error (request {request_id})")
