"""Reading a ConverseStream response: binary event-stream frames (botocore's decoder) →
Converse events → OpenAI chunks (``turnout.providers.bedrock.stream.StreamTranslator``).

``open_events`` returns only once a chunk that carries something (text, a tool call, a
finish reason) is ready, so anything that fails before that — an ``exception`` frame such as
``throttlingException`` right after ``messageStart`` — raises from the provider's ``stream()``
and the gateway can still fall back. Later failures raise from iteration, after the chunks
decoded ahead of them (in the same network read) have been yielded. Every read is bounded by
the call's total, and the body is finished (``turnout.providers.transport.StreamBody``) as
soon as the stream ends, fails or is closed.
"""

from __future__ import annotations

import struct
import time
from collections import deque
from typing import Any

import orjson
from botocore.eventstream import EventStreamBuffer, EventStreamMessage, ParserError

from turnout.errors import UpstreamConnectError, UpstreamError, UpstreamProtocolError
from turnout.providers.bedrock.errors import translate
from turnout.providers.bedrock.stream import MALFORMED, StreamTranslator
from turnout.providers.bedrock.translate import Translation
from turnout.providers.transport import ABANDONED, StreamBody

# A frame header botocore cannot read (a truncated value, a type the format lacks, bad UTF-8);
# an event of the wrong shape.
_UNREADABLE: tuple[type[Exception], ...] = (struct.error, *MALFORMED)


class EventChunks:
    __slots__ = ("_body", "_buffer", "_ended", "_failure", "_pending", "_translator")

    def __init__(self, body: StreamBody, translator: StreamTranslator) -> None:
        self._body = body
        self._translator = translator
        self._buffer = EventStreamBuffer()
        self._pending: deque[dict[str, Any]] = deque()
        self._ended = False  # the body ended cleanly
        self._failure: UpstreamError | None = None  # raised once the chunks decoded before it are out

    def __aiter__(self) -> EventChunks:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while not self._pending:
            if self._failure is not None:
                raise self._failure
            if self._ended or self._body.finished:
                self._body.finish(None)
                raise StopAsyncIteration
            try:
                await self._read()
            except BaseException as exc:
                self._body.finish(exc)
                raise
        return self._pending.popleft()

    async def aclose(self) -> None:
        """Stop early: dropping the connection tells Bedrock to stop generating."""
        self._pending.clear()
        self._body.finish(ABANDONED)

    async def _read(self) -> None:
        """One network read, decoded. What it raises is for the caller to finish the body
        with (before the start, ``Exchange.stream`` does, once the ttft is told apart)."""
        body = self._body
        data = await body.read(body.content.readany())
        if not data:
            if not self._translator.finished:
                raise UpstreamConnectError(f"{body.label}: the stream ended before messageStop")
            self._ended = True
            return
        self._buffer.add_data(data)
        try:
            try:
                for message in self._buffer:
                    self._handle(message)
            except ParserError as exc:
                name = type(exc).__name__
                raise UpstreamProtocolError(f"{body.label}: malformed event-stream frame ({name})") from exc
            except _UNREADABLE as exc:
                name = type(exc).__name__
                raise UpstreamProtocolError(f"{body.label}: malformed ConverseStream event ({name})") from exc
        except UpstreamError as exc:
            # Events that arrived in the same read ahead of the failure are still delivered.
            self._failure = exc
            body.finish(exc)

    def _handle(self, message: EventStreamMessage) -> None:
        headers = message.headers
        kind = headers.get(":message-type")
        label = self._body.label
        if kind == "event":
            payload = _json(message.payload, label)
            self._pending.extend(self._translator.feed(str(headers.get(":event-type", "")), payload))
        elif kind == "exception":
            payload = _json(message.payload, label)
            text = str(payload.get("message") or payload.get("originalMessage") or "")[:300]
            raise translate(str(headers.get(":exception-type", "")), None, text, label)
        elif kind == "error":
            raise translate(
                str(headers.get(":error-code", "")), None, str(headers.get(":error-message", ""))[:300], label
            )

    async def _start(self) -> None:
        while self._failure is None and not self._ended and not any(_carries_something(c) for c in self._pending):
            await self._read()
        if self._failure is not None:
            raise self._failure  # nothing has reached the caller yet: let the gateway fall back
        if not self._pending:
            empty = UpstreamProtocolError(f"{self._body.label}: the stream ended without any event")
            self._body.finish(empty)
            raise empty


async def open_events(body: StreamBody, translation: Translation, model: str) -> EventChunks:
    """Start reading; return once a chunk with content is ready (see the module docstring)."""
    translator = StreamTranslator(model, int(time.time()), "chatcmpl-bedrock", translation)
    chunks = EventChunks(body, translator)
    await chunks._start()
    return chunks


def _carries_something(chunk: dict[str, Any]) -> bool:
    if chunk.get("usage") is not None:
        return True
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if (
            choice.get("finish_reason")
            or delta.get("content")
            or delta.get("tool_calls")
            or delta.get("reasoning_content")
        ):
            return True
    return False


def _json(payload: bytes, label: str) -> dict[str, Any]:
    if not payload:
        return {}
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise UpstreamProtocolError(f"{label}: an event's payload is not JSON") from exc
    return data if isinstance(data, dict) else {}
