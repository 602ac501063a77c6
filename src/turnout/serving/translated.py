"""What the doors that translate another API to the chat body share (``messages.py``,
``responses.py``): the answer's accounting, and the relay of a chat stream as that API's own
events. A door says only how its answer and its events are written (``message``, ``encoder``).

The relay: a client that leaves stops the upstream (499); a shutdown past its grace period cuts
the stream (503); a failure after the first byte ends the stream with the API's error event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import orjson

from turnout.control.tokens import generated_by_chunk
from turnout.errors import ShuttingDown, TurnoutError
from turnout.providers.base import Stream, Usage
from turnout.releases.base import Release
from turnout.safety import inputs
from turnout.safety.policy import Input
from turnout.serving import respond
from turnout.serving.asgi import Receive, Send, send_json
from turnout.serving.call_order import text_of
from turnout.serving.door import Answered, Inbound, Reply, reported


class Translated(Inbound, Protocol):
    @property
    def body(self) -> dict[str, Any]: ...  # the chat body the targets receive


R = TypeVar("R", bound=Translated)


class Encoder(Protocol):
    """A chat stream written as another API's events."""

    def start(self) -> bytes: ...
    def chunk(self, chunk: Mapping[str, Any]) -> bytes: ...
    def end(self, usage: Usage) -> bytes: ...  # the upstream's usage, else the gateway's count
    def error(self, err: TurnoutError) -> bytes: ...


class TranslatedDoor(Generic[R]):
    task_param = "model"
    prompt_param: str | None = "messages"
    output_param: str | None = "max_tokens"
    needs_release = False
    release_prompt = False
    fenced_json = False
    ticket_body = False  # the SDKs read their own shapes: a ticket is an error naming it

    def body(self, request: R, release: Release | None) -> dict[str, Any]:
        return request.body if release is None else {**release.params, **request.body}

    def untrusted(self, request: R) -> Iterator[Input]:
        return inputs.chat(request.body["messages"])

    def message(self, reply: Reply[R], answer: dict[str, Any], usage: Usage) -> dict[str, Any]:
        """The whole answer in the door's shape."""
        raise NotImplementedError

    def encoder(self, reply: Reply[R], prompt_tokens: int) -> Encoder:
        """The stream's events; ``prompt_tokens``: what the prompt counts where the upstream says none."""
        raise NotImplementedError

    async def respond(self, reply: Reply[R], send: Send, receive: Receive) -> Answered:
        answer = reply.result.answer
        if isinstance(answer, Stream):
            return await self._relay(reply, answer, send, receive)
        usage, estimated = reported(answer) or await reply.usage_of(
            answer, lambda: self.body(reply.request, reply.admission.release)
        )
        priced = reply.price(usage)
        await send_json(
            send, 200, self.message(reply, answer.body, usage), reply.headers + respond.cost_header(priced.total)
        )
        text = respond.answer_text(answer.body) if reply.collect else None
        return Answered(200, usage, priced, reply.result.attempts[-1].latency_ms, text=text, usage_estimated=estimated)

    async def _relay(self, reply: Reply[R], answer: Stream, send: Send, receive: Receive) -> Answered:
        ttft_ms = (time.perf_counter() - reply.t0) * 1000
        body = self.body(reply.request, reply.admission.release)
        target = reply.result.target.name
        prompt = (await reply.tokens.prompts(body, [target]))[target]
        encoder = self.encoder(reply, prompt)

        def estimate(generated: list[str]) -> Awaitable[Usage]:
            return reply.estimate(body, generated)

        relayed = await relay(send, receive, answer, encoder, reply.request_id, reply.headers, reply.collect, estimate)
        total_s = time.perf_counter() - reply.t0
        usage, estimated = relayed.usage or relayed.estimated, relayed.usage is None
        if usage is None:  # the stream did not end well: no usage told, but paid for
            usage = await reply.estimate(body, relayed.generated)
        priced = reply.price(usage, total_s - reply.result.attempts[-1].offset_ms / 1000)
        text = None if relayed.collected is None else "".join(relayed.collected)
        return Answered(
            relayed.status, usage, priced, total_s * 1000 - ttft_ms, ttft_ms, relayed.error_class, text, estimated
        )


@dataclass(slots=True)
class Relayed:
    status: int = 200
    error_class: str | None = None
    usage: Usage | None = None  # the upstream's
    estimated: Usage | None = None  # the gateway's count, told at the end where the upstream told none
    generated: list[str] = field(default_factory=list)  # every text generated: paid for, relayed or not
    collected: list[str] | None = None  # the answer's text, for capture


async def relay(
    send: Send,
    receive: Receive,
    answer: Stream,
    encoder: Encoder,
    request_id: str,
    headers: list[tuple[bytes, bytes]],
    collect: bool,
    estimate: Callable[[list[str]], Awaitable[Usage]],
) -> Relayed:
    """The chat stream through ``encoder``, as the door's events. ``estimate``: the usage of what
    was generated where the upstream reported none (``Reply.estimate``: the ledger's count)."""
    out = Relayed(collected=[] if collect else None)
    await send({"type": "http.response.start", "status": 200, "headers": respond.SSE_HEADERS + headers})
    await send({"type": "http.response.body", "body": encoder.start(), "more_body": True})
    watch = respond.ClientWatch(receive)
    chunks = answer.chunks
    try:
        async for chunk in chunks:
            generated_by_chunk(chunk, out.generated)
            if watch.gone():
                out.status, out.error_class = 499, "client_disconnected"
                break
            if chunk.get("usage") is not None:
                out.usage = Usage.from_openai(chunk["usage"])
            if out.collected is not None:
                out.collected.extend(_texts(chunk))
            data = encoder.chunk(chunk)
            if data:
                await send({"type": "http.response.body", "body": data, "more_body": True})
    except asyncio.CancelledError:  # the client left, or a shutdown past its grace period: as in chat
        if watch.left():
            out.status, out.error_class = 499, "client_disconnected"
        else:
            out.status, out.error_class = 503, "shutting_down"
            cut = ShuttingDown("the gateway is shutting down; the stream was cut")
            await _quietly(send, _body(encoder.error(cut)))
    except Exception as exc:
        err, out.status, out.error_class = respond.interrupted(exc, request_id)
        await send(_body(encoder.error(err)))
    finally:
        watch.close()
        await chunks.aclose()
    end = b""
    if out.status == 200:
        usage = out.usage
        if usage is None:
            usage = out.estimated = await estimate(out.generated)
        end = encoder.end(usage)
    await _quietly(send, {"type": "http.response.body", "body": end})
    return out


def _body(data: bytes) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": True}


def _texts(chunk: Mapping[str, Any]) -> list[str]:
    """A chunk's text and tool-call pieces, for capture."""
    out: list[str] = []
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if text := text_of(delta):
            out.append(text)
        if delta.get("tool_calls"):
            out.append(orjson.dumps(delta["tool_calls"]).decode())
    return out


async def _quietly(send: Send, message: dict[str, Any]) -> None:
    try:
        await send(message)
    except Exception:
        return
