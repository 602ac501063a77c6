"""``POST /v1/responses``: OpenAI's Responses API (its stateless subset) as a door over the
shared pipeline.

``model`` names a task; the request is translated to the chat body the targets take
(``turnout.serving.response_items``), so every target a task routes to (self-hosted, Bedrock,
the embedded model) serves it with the same policy, quotas, fallback and ledger as chat
completions. Turnout keeps no response state: ``store`` is accepted and nothing is stored,
``previous_response_id`` is a 400. Streams are relayed as the Responses API's typed events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from turnout.config import DATA_CLASSES
from turnout.control.tokens import generated_by_answer, generated_by_chunk, utf8_count
from turnout.errors import AnswerRefused, ShuttingDown, StreamInterrupted, TurnoutError, UpstreamError
from turnout.providers.base import Stream, Usage
from turnout.releases.base import Release
from turnout.safety import inputs
from turnout.safety.policy import Input
from turnout.serving import respond, response_items
from turnout.serving.asgi import Receive, Send, json_object, send_json
from turnout.serving.door import Answered, Reply, check_episode_id
from turnout.serving.response_items import Events, bad

log = logging.getLogger("turnout")

ENDPOINT = "responses"


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    task: str
    body: dict[str, Any]  # the chat body the targets receive
    stream: bool
    data_class: str | None
    user: str | None
    echo: dict[str, Any]  # the settings the Response object repeats
    episode_id: str | None = None


class ResponsesDoor:
    endpoint = ENDPOINT
    task_param = "model"
    needs_release = False
    release_prompt = False
    fenced_json = False

    def parse(self, raw: bytes, task: str | None) -> ResponsesRequest:
        return validate(json_object(raw))

    def body(self, request: ResponsesRequest, release: Release | None) -> dict[str, Any]:
        return request.body if release is None else {**release.params, **request.body}

    def untrusted(self, request: ResponsesRequest) -> Iterator[Input]:
        return inputs.chat(request.body["messages"])

    async def respond(self, reply: Reply[ResponsesRequest], send: Send, receive: Receive) -> Answered:
        answer = reply.result.answer
        if isinstance(answer, Stream):
            return await self._relay(reply, answer, send, receive)
        usage, estimated = answer.usage, answer.usage is None
        if usage is None:  # an upstream that reports none: counted from what it generated
            texts, _ = generated_by_answer(answer.body)
            usage = await reply.estimate(self.body(reply.request, reply.admission.release), texts)
        priced = reply.price(usage)
        items, finish = response_items.output(answer.body, reply.request_id)
        tokens = (usage.prompt_tokens, usage.completion_tokens)
        req = reply.request
        body = response_items.response(
            reply.request_id, int(reply.started_at), req.task, items, tokens, finish, req.echo
        )
        await send_json(send, 200, body, reply.headers + respond.cost_header(priced.total))
        text = respond.answer_text(answer.body) if reply.collect else None
        return Answered(200, usage, priced, reply.result.attempts[-1].latency_ms, text=text, usage_estimated=estimated)

    async def _relay(self, reply: Reply[ResponsesRequest], answer: Stream, send: Send, receive: Receive) -> Answered:
        ttft_ms = (time.perf_counter() - reply.t0) * 1000
        req = reply.request
        body = self.body(req, reply.admission.release)
        prompt = (await reply.tokens.prompts(body, [reply.result.target.name]))[reply.result.target.name]
        events = Events(reply.request_id, int(reply.started_at), req.task, req.echo)
        relayed = await relay(send, receive, answer, events, prompt, reply.request_id, reply.headers, reply.collect)
        total_s = time.perf_counter() - reply.t0
        usage, estimated = relayed.usage, relayed.usage is None
        if usage is None:
            usage = await reply.estimate(body, relayed.generated)
        priced = reply.price(usage, total_s - reply.result.attempts[-1].offset_ms / 1000)
        text = None if relayed.collected is None else "".join(relayed.collected)
        return Answered(
            relayed.status, usage, priced, total_s * 1000 - ttft_ms, ttft_ms, relayed.error_class, text, estimated
        )


RESPONSES_DOOR = ResponsesDoor()


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
    events: Events,
    prompt: int,
    request_id: str,
    headers: list[tuple[bytes, bytes]],
    collect: bool,
) -> Relayed:
    """The chat stream as Responses events. A client that leaves stops the upstream; a failure
    after the first byte ends the stream with an ``error`` event. ``prompt``: the input tokens
    to report where the upstream counts none."""
    out = Relayed(collected=[] if collect else None)
    await send({"type": "http.response.start", "status": 200, "headers": respond.SSE_HEADERS + headers})
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
            data = events.chunk(chunk)
            if data:
                await send({"type": "http.response.body", "body": data, "more_body": True})
    except asyncio.CancelledError:  # a shutdown past its grace period: not re-raised, as in chat
        out.status, out.error_class = 503, "shutting_down"
        await _quietly(send, _error(events, ShuttingDown("the gateway is shutting down; the stream was cut")))
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
        await send(_error(events, err))
    finally:
        gone.cancel()
        await chunks.aclose()
    end = b""
    if out.status == 200:
        if out.usage is not None:
            end = events.end(out.usage.prompt_tokens, out.usage.completion_tokens)
        else:
            end = events.end(prompt, utf8_count(out.generated))
    if out.collected is not None:
        out.collected.extend(_texts(events.items))
    await _quietly(send, {"type": "http.response.body", "body": end})
    return out


def _error(events: Events, err: TurnoutError) -> dict[str, Any]:
    body = response_items.error_event(events, err.code or err.type, err.message)
    return {"type": "http.response.body", "body": body, "more_body": True}


def _texts(items: list[dict[str, Any]]) -> list[str]:
    """The answer's text and tool calls, for capture."""
    out: list[str] = []
    for item in items:
        if item["type"] == "message":
            out.extend(part["text"] for part in item["content"])
        else:
            out.append(f"{item['name']}({item['arguments']})")
    return out


async def _quietly(send: Send, message: dict[str, Any]) -> None:
    try:
        await send(message)
    except Exception:
        return


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def validate(body: dict[str, Any]) -> ResponsesRequest:
    task = body.get("model")
    if not isinstance(task, str) or not task:
        raise bad("model", "'model' is required and must name a task (a string)")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("stream", "'stream' must be a boolean")
    if body.get("store") is not None and not isinstance(body["store"], bool):
        raise bad("store", "'store' must be a boolean")
    chat = response_items.to_chat(body)
    metadata = body.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise bad("metadata", "'metadata' must be an object")
    user = _string(body, "user", "user")
    user = _string(metadata, "user", "metadata.user") or user
    data_class = _string(metadata, "data_class", "metadata.data_class")
    if data_class is not None:
        data_class = data_class.lower()
        if data_class not in DATA_CLASSES:
            raise bad("metadata.data_class", f"'metadata.data_class' must be one of {', '.join(DATA_CLASSES)}")
    if user:
        chat["user"] = user
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    episode = check_episode_id(metadata.get("episode_id"), "metadata.episode_id")
    echo = response_items.echo(body)
    return ResponsesRequest(task, chat, stream, data_class, user, echo, episode)


def _string(obj: dict[str, Any], name: str, param: str) -> str | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, str):
        raise bad(param, f"'{param}' must be a string")
    return value
