"""``POST /v1/messages``: Anthropic's Messages API as a door over the shared pipeline.

``model`` names a task; the request is translated to the chat body the targets take
(``turnout.serving.anthropic``), so every target a task routes to (self-hosted, Bedrock, the
embedded model) serves it, with the same policy, quotas, fallback and ledger as chat
completions. The key comes as ``x-api-key`` (Anthropic's SDKs) or ``Authorization: Bearer``;
errors are written in Anthropic's shape. Streams are relayed as Anthropic's events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from turnout.config import DATA_CLASSES
from turnout.control.tokens import generated_by_answer, generated_by_chunk, utf8_count
from turnout.errors import AnswerRefused, ShuttingDown, StreamInterrupted, TurnoutError, UpstreamError
from turnout.providers.base import Stream, Usage
from turnout.releases.base import Release
from turnout.safety import inputs
from turnout.safety.policy import Input
from turnout.serving import anthropic, respond
from turnout.serving.asgi import Receive, Send, json_object, send_json
from turnout.serving.door import Answered, Reply, check_episode_id

log = logging.getLogger("turnout")

ENDPOINT = "messages"
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


@dataclass(frozen=True, slots=True)
class MessagesRequest:
    task: str
    body: dict[str, Any]  # the chat body the targets receive
    stream: bool
    data_class: str | None
    user: str | None
    episode_id: str | None = None


class MessagesDoor:
    endpoint = ENDPOINT
    task_param = "model"
    needs_release = False
    release_prompt = False
    fenced_json = False

    def parse(self, raw: bytes, task: str | None) -> MessagesRequest:
        return validate(json_object(raw))

    def body(self, request: MessagesRequest, release: Release | None) -> dict[str, Any]:
        return request.body if release is None else {**release.params, **request.body}

    def untrusted(self, request: MessagesRequest) -> Iterator[Input]:
        return inputs.chat(request.body["messages"])

    async def respond(self, reply: Reply[MessagesRequest], send: Send, receive: Receive) -> Answered:
        answer = reply.result.answer
        if isinstance(answer, Stream):
            return await self._relay(reply, answer, send, receive)
        usage, estimated = answer.usage, answer.usage is None
        if usage is None:  # an upstream that reports none: counted from what it generated
            texts, _ = generated_by_answer(answer.body)
            usage = await reply.estimate(self.body(reply.request, reply.admission.release), texts)
        priced = reply.price(usage)
        body = anthropic.message(
            answer.body, f"msg_{reply.request_id}", reply.request.task, (usage.prompt_tokens, usage.completion_tokens)
        )
        await send_json(send, 200, body, reply.headers + respond.cost_header(priced.total))
        text = respond.answer_text(answer.body) if reply.collect else None
        return Answered(200, usage, priced, reply.result.attempts[-1].latency_ms, text=text, usage_estimated=estimated)

    async def _relay(self, reply: Reply[MessagesRequest], answer: Stream, send: Send, receive: Receive) -> Answered:
        ttft_ms = (time.perf_counter() - reply.t0) * 1000
        body = self.body(reply.request, reply.admission.release)
        prompt = (await reply.tokens.prompts(body, [reply.result.target.name]))[reply.result.target.name]
        events = anthropic.Events(f"msg_{reply.request_id}", reply.request.task, prompt)
        relayed = await relay(send, receive, answer, events, reply.request_id, reply.headers, reply.collect)
        total_s = time.perf_counter() - reply.t0
        usage, estimated = relayed.usage, relayed.usage is None
        if usage is None:
            usage = await reply.estimate(body, relayed.generated)
        priced = reply.price(usage, total_s - reply.result.attempts[-1].offset_ms / 1000)
        text = None if relayed.collected is None else "".join(relayed.collected)
        return Answered(
            relayed.status, usage, priced, total_s * 1000 - ttft_ms, ttft_ms, relayed.error_class, text, estimated
        )


MESSAGES_DOOR = MessagesDoor()


@dataclass(slots=True)
class Relayed:
    status: int = 200
    error_class: str | None = None
    usage: Usage | None = None
    generated: list[str] = field(default_factory=list)  # every text generated: paid for, relayed or not
    collected: list[str] | None = None  # the answer's text, for capture


async def relay(
    send: Send,
    receive: Receive,
    answer: Stream,
    events: anthropic.Events,
    request_id: str,
    headers: list[tuple[bytes, bytes]],
    collect: bool,
) -> Relayed:
    """The chat stream as Anthropic events. A client that leaves stops the upstream; a failure
    after the first byte ends the stream with an ``error`` event."""
    out = Relayed(collected=[] if collect else None)
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + headers})
    await send({"type": "http.response.body", "body": events.start(), "more_body": True})
    gone = asyncio.ensure_future(_disconnected(receive))
    chunks = answer.chunks
    try:
        async for chunk in chunks:
            generated_by_chunk(chunk, out.generated)
            if gone.done():
                out.status, out.error_class = 499, "client_disconnected"
                break
            if chunk.get("usage") is not None:
                out.usage = Usage.from_openai(chunk["usage"])
            if out.collected is not None:
                out.collected.extend(_texts(chunk))
            data = events.chunk(chunk)
            if data:
                await send({"type": "http.response.body", "body": data, "more_body": True})
    except asyncio.CancelledError:  # a shutdown past its grace period: not re-raised, as in chat
        out.status, out.error_class = 503, "shutting_down"
        await _quietly(send, _error(ShuttingDown("the gateway is shutting down; the stream was cut")))
    except Exception as exc:
        err: TurnoutError
        if isinstance(exc, UpstreamError):
            err = StreamInterrupted(f"the stream from the target failed: {exc.message}")
            out.status, out.error_class = 502, exc.error_class
        elif isinstance(exc, AnswerRefused):
            err, out.status, out.error_class = exc, exc.status, exc.error_class
        else:
            err = StreamInterrupted("the stream failed inside the gateway")
            out.status, out.error_class = 500, "internal"
        log.warning("stream %s interrupted: %s", request_id, out.error_class)
        await send(_error(err))
    finally:
        gone.cancel()
        await chunks.aclose()
    end = b""
    if out.status == 200:
        if out.usage is not None:
            end = events.end(out.usage.completion_tokens, out.usage.prompt_tokens)
        else:
            end = events.end(utf8_count(out.generated))
    await _quietly(send, {"type": "http.response.body", "body": end})
    return out


def _error(err: TurnoutError) -> dict[str, Any]:
    return {
        "type": "http.response.body",
        "body": anthropic.event("error", anthropic.error_body(err)),
        "more_body": True,
    }


def _texts(chunk: dict[str, Any]) -> list[str]:
    """A chunk's text and tool-call pieces, for capture."""
    out: list[str] = []
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content"):
            out.append(str(delta["content"]))
        if delta.get("tool_calls"):
            out.append(orjson.dumps(delta["tool_calls"]).decode())
    return out


async def _quietly(send: Send, message: dict[str, Any]) -> None:
    try:
        await send(message)
    except Exception:
        return


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def validate(body: dict[str, Any]) -> MessagesRequest:
    task = body.get("model")
    if not isinstance(task, str) or not task:
        raise anthropic.bad("model", "'model' is required and must name a task (a string)")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise anthropic.bad("stream", "'stream' must be a boolean")
    chat = anthropic.to_chat(body)
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise anthropic.bad("metadata", "'metadata' must be an object")
    user = metadata.get("user_id")
    if user is not None and not isinstance(user, str):
        raise anthropic.bad("metadata.user_id", "'metadata.user_id' must be a string")
    data_class = metadata.get("data_class")
    if data_class is not None and data_class not in DATA_CLASSES:
        raise anthropic.bad("metadata.data_class", f"'metadata.data_class' must be one of {', '.join(DATA_CLASSES)}")
    if user:
        chat["user"] = user
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    episode = check_episode_id(metadata.get("episode_id"), "metadata.episode_id")
    return MessagesRequest(task, chat, stream, data_class, user, episode)
