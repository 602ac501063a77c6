"""Turning results into responses: OpenAI bodies, turnout's headers, SSE streams, errors.

The caller asked for a task, so ``model`` in every body names the task and ``id`` carries
turnout's request id: application code never learns which target answered (the headers say it,
for the platform team).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from turnout._support.printable import printable
from turnout.control.tokens import generated_by_chunk
from turnout.errors import AnswerRefused, ShuttingDown, StreamInterrupted, TurnoutError, UpstreamError
from turnout.privacy.redact import masked
from turnout.providers.base import Stream, Usage
from turnout.releases.base import Release
from turnout.routing.attempts import Result
from turnout.serving import anthropic
from turnout.serving.asgi import Message, Receive, Send, send_json

log = logging.getLogger("turnout")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
DONE = b"data: [DONE]\n\n"


def turnout_headers(
    request_id: str, task: str, result: Result, release: Release | None, model_version: str, *, prompt: bool
) -> list[tuple[bytes, bytes]]:
    """``prompt``: whether the release's prompt shaped this answer (the task API) or only its
    targets and parameters did (chat completions, whose caller sends the messages)."""
    target = result.target.name
    # By the release's identity: the entry holds the release, so its id is not reused meanwhile.
    key = (task, target, id(release), model_version, prompt)
    found = _FIXED.get(key)
    if found is None or found[0] is not release:
        if len(_FIXED) >= MAX_FIXED:  # model versions come from upstream answers: keep it bounded
            _FIXED.clear()
        found = _FIXED[key] = (release, _fixed_headers(task, target, release, model_version, prompt))
    return [
        (b"x-turnout-request-id", request_id.encode()),
        *found[1],
        (b"x-turnout-attempts", str(len(result.attempts)).encode()),
        (b"x-turnout-fallback", b"true" if result.fallback else b"false"),
    ]


MAX_FIXED = 4096
MAX_HEADER_CHARS = 1024  # far past any model id, ARN or inference profile
_FIXED: dict[tuple[str, str, int, str, bool], tuple[Release | None, tuple[tuple[bytes, bytes], ...]]] = {}


def _fixed_headers(
    task: str, target: str, release: Release | None, model_version: str, prompt: bool
) -> tuple[tuple[bytes, bytes], ...]:
    """The headers that are the same for every answer of one task, target and release."""
    return (
        (b"x-turnout-task", task.encode()),
        (b"x-turnout-target", target.encode()),
        # An upstream names it (its answer's "model"): a line break there would end the head
        # early, which the server refuses to send (an empty reply instead of the answer).
        (b"x-turnout-model-version", printable(model_version, MAX_HEADER_CHARS).encode("latin-1", "replace")),
        (b"x-turnout-release", release.name.encode() if release else b"none"),
        (b"x-turnout-prompt-version", release.prompt_version.encode() if release and prompt else b"none"),
    )


def cost_header(cost_usd: float | None) -> list[tuple[bytes, bytes]]:
    return [] if cost_usd is None else [(b"x-turnout-cost-usd", f"{cost_usd:.8f}".encode())]


async def error(send: Send, err: TurnoutError, request_id: str, endpoint: str = "") -> None:
    """In OpenAI's shape; in Anthropic's for the ``messages`` door (``endpoint``)."""
    headers = [(b"x-turnout-request-id", request_id.encode()), *err.headers()]
    if endpoint == "messages":
        await send_json(send, anthropic.status_of(err), anthropic.error_body(err), headers)
    else:
        await send_json(send, err.status, err.to_openai(), headers)


def completion(
    send: Send, body: dict[str, Any], request_id: str, task: str, headers: list[tuple[bytes, bytes]]
) -> Awaitable[None]:
    """The answer, to await (``send_json``'s own coroutine: no extra one per request)."""
    body["id"] = f"chatcmpl-{request_id}"
    body["model"] = task
    return send_json(send, 200, body, headers)


def answer_text(body: dict[str, Any]) -> str:
    """A completion's text and tool calls, for capture."""
    parts = []
    for choice in body.get("choices") or ():
        message = choice.get("message") or {}
        if message.get("content"):
            parts.append(str(message["content"]))
        if message.get("tool_calls"):
            parts.append(orjson.dumps(message["tool_calls"]).decode())
    return "\n".join(parts)


@dataclass(slots=True)
class StreamOutcome:
    status: int = 200
    error_class: str | None = None
    usage: Usage | None = None  # the upstream's
    estimated: Usage | None = None  # the gateway's count, sent as the usage chunk the upstream did not send
    # Every text the target generated, relayed or not: the answer's cost when no usage came.
    generated: list[str] = field(default_factory=list)


async def stream(
    send: Send,
    receive: Receive,
    answer: Stream,
    task: str,
    include_usage: bool,
    request_id: str,
    headers: list[tuple[bytes, bytes]],
    collect: list[str] | None = None,
    estimate: Callable[[list[str]], Awaitable[Usage]] | None = None,
) -> StreamOutcome:
    """Relay the stream as SSE. A failure after the first byte ends it with an error event;
    a client that goes away stops the upstream work (the chunks iterator is closed).
    ``collect`` gathers the answer's text, for capture only. ``estimate``: the usage of what
    was generated (``Reply.estimate``, the ledger's count), sent as the usage chunk the caller
    asked for (``include_usage``) where the upstream sent none."""
    out = StreamOutcome()
    chat_id = f"chatcmpl-{request_id}"
    created: Any = None
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + headers})
    watch = ClientWatch(receive)
    chunks = answer.chunks
    try:
        async for chunk in chunks:
            generated_by_chunk(chunk, out.generated)  # generated, so paid for, even if never relayed
            if watch.gone():
                out.status, out.error_class = 499, "client_disconnected"
                break
            usage = chunk.get("usage")
            if usage is not None:
                out.usage = Usage.from_openai(usage)
                # One the gateway cannot read (nulls, negative counts) is not relayed either: the
                # caller who asked gets the gateway's own count at the end instead, not both.
                if not include_usage or out.usage is None:
                    if not chunk.get("choices"):
                        continue  # the usage-only chunk the caller did not ask for
                    del chunk["usage"]
            chunk["id"] = chat_id
            chunk["model"] = task
            created = chunk.get("created", created)
            if collect is not None:
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta") or {}
                    if delta.get("content"):
                        collect.append(delta["content"])
                    if delta.get("tool_calls"):
                        collect.append(orjson.dumps(delta["tool_calls"]).decode())
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + orjson.dumps(chunk) + b"\n\n",
                    "more_body": True,
                }
            )
    except asyncio.CancelledError:
        if watch.left():  # the client went away while the next chunk was awaited
            out.status, out.error_class = 499, "client_disconnected"
        else:
            # A shutdown past its grace period cancels the request: the stream ends with an error
            # event and the request carries on to its row and quota settlement (the runtime waits
            # for them before it closes the ledger and the limiter). Not re-raised on purpose.
            out.status, out.error_class = 503, "shutting_down"
            log.warning("stream %s cut by shutdown", request_id)
            await _send_quietly(send, _event(ShuttingDown("the gateway is shutting down; the stream was cut")))
    except Exception as exc:  # after the first byte: the stream ends with an error event
        err, out.status, out.error_class = interrupted(exc, request_id)
        await send(_event(err))
    finally:
        watch.close()
        await chunks.aclose()
    if out.status == 503:
        await _send_quietly(send, {"type": "http.response.body", "body": b""})
        return out
    if out.status == 200 and include_usage and out.usage is None and estimate is not None:
        out.estimated = await estimate(out.generated)
        await send(_usage_chunk(out.estimated, chat_id, created, task))
    else:
        await send({"type": "http.response.body", "body": b"" if out.status == 499 else DONE})
    return out


def interrupted(exc: Exception, request_id: str) -> tuple[TurnoutError, int, str]:
    """A stream that failed after its first byte (every door's relay): the error its event
    tells, and the row's status and error class. An upstream's own words are masked: some
    echo the prompt back."""
    err: TurnoutError
    if isinstance(exc, UpstreamError):
        err = StreamInterrupted(f"the stream from the target failed: {masked(exc.message)}")
        status, error_class = 502, exc.error_class
    elif isinstance(exc, AnswerRefused):  # the gateway refused what came (a blocked tool call)
        err, status, error_class = exc, exc.status, exc.error_class
    else:
        err = StreamInterrupted("the stream failed inside the gateway")
        status, error_class = 500, "internal"
    log.warning("stream %s interrupted: %s", request_id, error_class)
    return err, status, error_class


def _usage_chunk(usage: Usage, chat_id: str, created: Any, task: str) -> Message:
    """The last chunk before ``[DONE]``, as the upstream would have sent it: no choices, the usage."""
    counts = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }
    chunk: dict[str, Any] = {
        "id": chat_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()) if created is None else created,
        "model": task,
        "choices": [],
        "usage": counts,
    }
    return {"type": "http.response.body", "body": b"data: " + orjson.dumps(chunk) + b"\n\n" + DONE}


class ClientWatch:
    """Watches for the client leaving while a stream is relayed. When it does, the relaying
    task is cancelled at once instead of waiting for the upstream's next chunk (a slow model
    may take seconds): the upstream call is closed, and the quota settled, without delay.
    ``left`` tells that cancellation from a shutdown's."""

    __slots__ = ("_gone", "_left", "_relaying", "_task")

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._relaying = True
        self._left = False
        self._gone = asyncio.ensure_future(_disconnected(receive))
        self._gone.add_done_callback(self._on_gone)

    def _on_gone(self, gone: asyncio.Future[None]) -> None:
        if self._relaying and not gone.cancelled() and gone.exception() is None:
            self._left = True
            self._task.cancel()

    def gone(self) -> bool:
        return self._gone.done()

    def left(self) -> bool:
        """In ``except CancelledError``: whether the client leaving (and nothing else) cancelled it."""
        return self._left and self._task.uncancel() == 0

    def close(self) -> None:
        """Stop watching: from here on the client leaving cancels nothing."""
        self._relaying = False
        self._gone.cancel()


def _event(err: TurnoutError) -> Message:
    body = b"data: " + orjson.dumps(err.to_openai()) + b"\n\n"
    return {"type": "http.response.body", "body": body, "more_body": True}


async def _send_quietly(send: Send, message: Message) -> None:
    """At shutdown the connection may already be gone: nothing left to tell the client."""
    with contextlib.suppress(Exception):  # the client is gone or the server is closing it
        await send(message)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
