"""Reading a ConverseStream response: binary event-stream frames (botocore's decoder) →
Converse events → OpenAI chunks (``bedrock_stream.StreamTranslator``).

``open_events`` returns only once a chunk that carries something (text, a tool call, a
finish reason) is ready, so anything that fails before that — an ``exception`` frame such as
``throttlingException`` right after ``messageStart`` — raises from the provider's ``stream()``
and the gateway can still fall back. Later failures raise from iteration, after the chunks
decoded ahead of them (in the same network read) have been yielded.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import aiohttp
import orjson
from botocore.eventstream import EventStreamBuffer, EventStreamMessage, ParserError

from turnout.errors import UpstreamConnectError, UpstreamError, UpstreamProtocolError
from turnout.providers.base import Timeouts
from turnout.providers.bedrock.errors import translate
from turnout.providers.bedrock.stream import StreamTranslator
from turnout.providers.bedrock.translate import Translation
from turnout.providers.transport import read_until


class EventChunks:
    __slots__ = (
        "_buffer",
        "_closed",
        "_deadline",
        "_ended",
        "_failure",
        "_label",
        "_pending",
        "_resp",
        "_timeouts",
        "_translator",
    )

    def __init__(
        self,
        resp: aiohttp.ClientResponse,
        label: str,
        translator: StreamTranslator,
        timeouts: Timeouts,
        deadline: float,
    ) -> None:
        self._resp = resp
        self._label = label
        self._translator = translator
        self._buffer = EventStreamBuffer()
        self._pending: deque[dict[str, Any]] = deque()
        self._timeouts = timeouts
        self._deadline = deadline  # loop time: the call's total runs out then
        self._ended = False  # the body ended cleanly
        self._closed = False
        self._failure: UpstreamError | None = None  # raised once the chunks decoded before it are out

    def __aiter__(self) -> EventChunks:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while not self._pending:
            if self._failure is not None:
                raise self._failure
            if self._ended:
                await self.aclose()
                raise StopAsyncIteration
            await self._read()
        return self._pending.popleft()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            # A finished body returns the connection to the pool; an abandoned one is dropped,
            # which tells Bedrock to stop generating.
            if self._ended:
                self._resp.release()
            else:
                self._resp.close()

    async def _read(self) -> None:
        try:
            data = await read_until(self._deadline, self._resp.content.readany(), self._label, self._timeouts)
        except UpstreamError:
            await self._fail()
            raise
        if not data:
            if not self._translator.finished:
                await self._fail()
                raise UpstreamConnectError(f"{self._label}: the stream ended before messageStop")
            self._ended = True
            return
        self._buffer.add_data(data)
        try:
            try:
                for message in self._buffer:
                    self._handle(message)
            except ParserError as exc:
                name = type(exc).__name__
                raise UpstreamProtocolError(f"{self._label}: malformed event-stream frame ({name})") from exc
        except UpstreamError as exc:
            # Events that arrived in the same read ahead of the failure are still delivered.
            self._failure = exc
            await self._fail()

    def _handle(self, message: EventStreamMessage) -> None:
        headers = message.headers
        kind = headers.get(":message-type")
        if kind == "event":
            payload = _json(message.payload, self._label)
            self._pending.extend(self._translator.feed(str(headers.get(":event-type", "")), payload))
        elif kind == "exception":
            payload = _json(message.payload, self._label)
            text = str(payload.get("message") or payload.get("originalMessage") or "")[:300]
            raise translate(str(headers.get(":exception-type", "")), None, text, self._label)
        elif kind == "error":
            raise translate(
                str(headers.get(":error-code", "")), None, str(headers.get(":error-message", ""))[:300], self._label
            )

    async def _fail(self) -> None:
        self._ended = False
        await self.aclose()

    async def _start(self) -> None:
        while self._failure is None and not self._ended and not any(_carries_something(c) for c in self._pending):
            await self._read()
        if self._failure is not None:
            raise self._failure  # nothing has reached the caller yet: let the gateway fall back
        if not self._pending:
            await self.aclose()
            raise UpstreamProtocolError(f"{self._label}: the stream ended without any event")


async def open_events(
    resp: aiohttp.ClientResponse, label: str, translation: Translation, model: str, timeouts: Timeouts, deadline: float
) -> EventChunks:
    """Start reading; return once a chunk with content is ready (see the module docstring).
    Every read ends by ``deadline`` (loop time), when the call's total runs out."""
    translator = StreamTranslator(model, int(time.time()), "chatcmpl-bedrock", translation)
    chunks = EventChunks(resp, label, translator, timeouts, deadline)
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
