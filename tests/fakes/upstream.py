"""A fault-injecting fake of an OpenAI-compatible server (vLLM, llama.cpp, ...), on aiohttp.web.

In a test, on 127.0.0.1 with an ephemeral port::

    async with FakeUpstream() as fake:
        fake.fault = Fault("status", status=429, retry_after=2)
        ... point a target at fake.base_url ...
        assert fake.requests[0].body["model"] == "served-model"

As a process for end-to-end tests, switched over HTTP while a gateway talks to it::

    python -m tests.fakes.upstream --port 8001
    POST /_fault {"mode": "hang"}     GET /_requests     DELETE /_requests
    POST /_health {"status": 503}     (what GET /health answers; its calls are not in requests)
    GET /_health                      {"status": 503, "checks": 12}: GET /health calls so far
    POST /_reply {"text": [pieces], "usage": {...}, "echo": true, "alter": "[05]$", ...}

Modes (``Fault.mode``):

    ok           a chat.completion, or a chunk stream that ends with a usage chunk (when
                 stream_options.include_usage) and [DONE]
    status       HTTP ``status`` with an error body, nested or ``flat``, and Retry-After
    hang         never answers (until the client leaves or the server stops)
    reset        drops the connection with a TCP RST instead of answering
    cut          the body stops mid-way and the connection closes
    malformed    200 with a body (or, streaming, a first event) that is not JSON
    error_event  streaming: one chunk, then ``data: {"error": {...}}``
    raw          200 text/event-stream with ``raw`` as the body, sent in small pieces so that
                 lines straddle reads (for SSE parsing edge cases)

Replies: ``reply`` (its pieces are a stream's chunks), or with ``echo`` the last user message's
text, as one piece; with ``alter`` (a regular expression) an echoed text it matches (``re.search``)
comes back with `` (altered)`` appended, so a test knows which answers differ from an echo.
With ``pieces_are_tokens`` each piece counts as a token: a request's ``max_tokens`` cuts the reply
there, with ``finish_reason: "length"``.

Delays work in every mode: ``head_delay`` before the response head, ``first_chunk_delay``
between a stream's head and its first event, ``chunk_delay`` between later events. ``times``
limits a fault to that many requests, after which the fake answers ok again.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import socket
import struct
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.server import FakeServer

MODES = ("ok", "status", "hang", "reset", "cut", "malformed", "error_event", "raw")


@dataclass
class Fault:
    mode: str = "ok"
    status: int = 500
    message: str = "injected fault"
    retry_after: float | None = None
    flat: bool = False  # the {"object": "error", "message": ...} error shape
    raw: str = ""
    head_delay: float = 0.0
    first_chunk_delay: float = 0.0
    chunk_delay: float = 0.0
    times: int | None = None
    rate: float = 1.0  # the share of requests the fault hits (seeded: reproducible)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected one of {', '.join(MODES)}")


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    peer: str  # the client's address:port, which tells connections apart


@dataclass
class FakeUpstream(FakeServer):
    model: str = "fake-model"
    reply: tuple[str, ...] = ("Hello", ",", " world")
    host: str = "127.0.0.1"
    port: int = 0
    fault: Fault = field(default_factory=Fault)
    # Answered instead of ``reply`` when the request offers tools: [{"id", "name", "arguments"}].
    tool_calls: tuple[dict[str, Any], ...] = ()
    usage: dict[str, Any] | None = None  # fixed usage instead of the word count
    # Replies for the next requests, one each, before ``reply``; the last one stays as ``reply``.
    queue: list[tuple[str, ...]] = field(default_factory=list)
    no_usage: bool = False  # report none ("usage": null), as some servers and proxies do
    # A stream's tool calls interleaved by index, as some proxies send them: every call's head
    # and first half of its arguments, then every call's second half.
    interleave: bool = False
    echo: bool = False  # reply with the last user message's text instead of ``reply``
    alter: str | None = None  # a regex: an echoed text it matches comes back altered
    # Each piece of the reply is one token: a request's max_tokens (or max_completion_tokens)
    # cuts the answer after that many, with finish_reason "length", as a server does.
    pieces_are_tokens: bool = False
    # What a reasoning model says before its answer, as vLLM's reasoning parsers send it
    # (``reasoning_content``, streamed piece by piece before the text).
    reasoning: tuple[str, ...] = ()
    refusal: str | None = None  # answered instead of the reply: chat's ``refusal`` (no content)
    _rng: random.Random = field(default_factory=lambda: random.Random(7), repr=False)
    requests: list[Received] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    disconnects: int = 0  # answers stopped because the client went away
    health_status: int = 200  # what GET /health answers (vLLM's and llama.cpp's health check)
    health_checks: int = 0  # GET /health calls, apart from ``requests`` (live traffic)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_post("/_health", self._set_health)
        app.router.add_get("/_health", self._get_health)
        app.router.add_post("/_fault", self._set_fault)
        app.router.add_post("/_reply", self._set_reply)
        app.router.add_get("/_requests", self._get_requests)
        app.router.add_delete("/_requests", self._clear_requests)
        return app

    # -- the OpenAI surface ----------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        self.requests.append(_received(request, body))
        if self.queue:
            self.reply = tuple(self.queue.pop(0))
        fault = self._take()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await _sleep(fault.head_delay)
            early = await self._common(request, fault)
            if early is not None:
                return early
            if isinstance(body, dict) and body.get("stream"):
                return await self._stream(request, body, fault)
            return await self._complete(request, body, fault)
        except asyncio.CancelledError:
            self.disconnects += 1
            raise
        finally:
            self.in_flight -= 1

    async def _models(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(_received(request, None))
        fault = self._take()
        await _sleep(fault.head_delay)
        early = await self._common(request, fault)
        if early is not None:
            return early
        return _json({"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "fake"}]})

    async def _health(self, request: web.Request) -> web.StreamResponse:
        self.health_checks += 1
        return web.Response(status=self.health_status)

    async def _common(self, request: web.Request, fault: Fault) -> web.StreamResponse | None:
        """The faults that look the same on every endpoint."""
        if fault.mode == "hang":
            await self._stopping.wait()
            return web.Response(status=503)
        if fault.mode == "reset":
            _reset(request)
            return web.Response()  # never sent: the transport is gone
        if fault.mode == "raw":
            return await _trickle(request, fault.raw.encode())
        if fault.mode == "status":
            error = {"message": fault.message, "type": "fake_error", "code": fault.status}
            payload = {"object": "error", **error} if fault.flat else {"error": error}
            headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            return _json(payload, status=fault.status, headers=headers)
        return None

    async def _complete(self, request: web.Request, body: Any, fault: Fault) -> web.StreamResponse:
        if fault.mode == "malformed":
            return web.Response(body=b'{"id": "chatcmpl-fake", "choices": [', content_type="application/json")
        payload = orjson.dumps(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": _model(body, self.model),
                "choices": [{"index": 0, **self._message(body)}],
                "usage": self._usage(body),
            }
        )
        if fault.mode != "cut":
            return web.Response(body=payload, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(payload)
        await resp.prepare(request)
        await resp.write(payload[: len(payload) // 2])
        _hang_up(request)
        return resp

    async def _stream(self, request: web.Request, body: dict[str, Any], fault: Fault) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await resp.write(b": keep-alive comment, to be ignored\n\n")
        await _sleep(fault.first_chunk_delay)
        if fault.mode == "malformed":
            await resp.write(b"data: {not json\n\n")
            return resp
        model = _model(body, self.model)
        events = [_chunk(model, {"role": "assistant", "content": ""})]
        if self._calls_tools(body):
            firsts: list[dict[str, Any]] = []
            seconds: list[dict[str, Any]] = []
            for i, call in enumerate(self.tool_calls):
                head = {"index": i, "id": call["id"], "type": "function", "function": {"name": call["name"]}}
                args = call["arguments"]
                first, second = [
                    _chunk(model, {"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
                    for piece in (args[: len(args) // 2], args[len(args) // 2 :])  # split mid-token
                ]
                opened = _chunk(model, {"tool_calls": [{**head, "function": {**head["function"], "arguments": ""}}]})
                firsts += [opened, first]
                (seconds if self.interleave else firsts).append(second)
            events += firsts + seconds
            events.append(_chunk(model, {}, finish_reason="tool_calls"))
        elif self.refusal is not None:
            events += [_chunk(model, {"refusal": self.refusal}), _chunk(model, {}, finish_reason="stop")]
        else:
            pieces, matched, finish = self._said(body)
            events += [_chunk(model, {"reasoning_content": piece}) for piece in self.reasoning]
            events += [_chunk(model, {"content": piece}) for piece in pieces]
            events.append(_chunk(model, {}, finish_reason=finish))
            events[-1]["choices"][0]["stop_reason"] = matched  # vLLM's: the stop string that ended it
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") and not self.no_usage:
            events.append({**_chunk(model, {}), "choices": [], "usage": self._usage(body)})
        for i, event in enumerate(events):
            if i:
                await _sleep(fault.chunk_delay)
            await resp.write(b"data: " + orjson.dumps(event) + b"\n\n")
            if i == 1 and fault.mode == "cut":
                _hang_up(request)
                return resp
            if i == 1 and fault.mode == "error_event":
                error = {"message": fault.message, "type": "fake_error", "code": fault.status}
                await resp.write(b"data: " + orjson.dumps({"error": error}) + b"\n\n")
                return resp
        await resp.write(b"data: [DONE]\n\n")
        return resp

    def _calls_tools(self, body: Any) -> bool:
        return bool(self.tool_calls) and isinstance(body, dict) and bool(body.get("tools"))

    def _message(self, body: Any) -> dict[str, Any]:
        if self._calls_tools(body):
            calls = [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in self.tool_calls
            ]
            return {
                "message": {"role": "assistant", "content": None, "tool_calls": calls},
                "finish_reason": "tool_calls",
            }
        if self.refusal is not None:
            return {"message": {"role": "assistant", "content": None, "refusal": self.refusal}, "finish_reason": "stop"}
        pieces, matched, finish = self._said(body)
        reasoning = {"reasoning_content": "".join(self.reasoning)} if self.reasoning else {}
        return {
            "message": {"role": "assistant", "content": "".join(pieces), **reasoning},
            "finish_reason": finish,
            "stop_reason": matched,  # vLLM's: the stop string that ended the answer, or None
        }

    def _said(self, body: Any) -> tuple[tuple[str, ...], str | None, str]:
        """The reply's pieces as sent, the stop string that cut them, and the finish reason."""
        pieces, matched = _stopped(body, self._reply(body))
        bound = _max_tokens(body) if self.pieces_are_tokens else None
        if bound is not None and len(pieces) > bound:
            return pieces[:bound], None, "length"
        return pieces, matched, "stop"

    def _reply(self, body: Any) -> tuple[str, ...]:
        """The answer's pieces: ``reply``, or the echo of the last user message (altered where
        ``alter`` matches it)."""
        if not self.echo:
            return self.reply
        text = _last_user_text(body)
        if self.alter is not None and re.search(self.alter, text):
            text += " (altered)"
        return (text,)

    def _usage(self, body: Any) -> dict[str, Any] | None:
        if self.no_usage:
            return None
        if self.usage is not None:
            return dict(self.usage)
        messages = body.get("messages") if isinstance(body, dict) else None
        prompt = sum(len(str(m.get("content", "")).split()) for m in messages or [] if isinstance(m, dict))
        completion = len(self._said(body)[0]) if self.pieces_are_tokens else len(self._reply(body))
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _take(self) -> Fault:
        """The fault for this request; a fault with ``times`` expires after that many, and one
        with ``rate`` < 1 hits only that share of requests."""
        fault = self.fault
        if fault.rate < 1.0 and self._rng.random() >= fault.rate:
            return Fault()
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                self.fault = Fault()
        return fault

    # -- control, for tests that drive the fake over HTTP ----------------------------------

    async def _set_fault(self, request: web.Request) -> web.StreamResponse:
        try:
            self.fault = Fault(**orjson.loads(await request.read() or b"{}"))
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            return _json({"error": {"message": str(exc)}}, status=400)
        return _json(asdict(self.fault))

    async def _set_reply(self, request: web.Request) -> web.StreamResponse:
        """``{"text": [pieces], "tool_calls": [{"id", "name", "arguments"}], "usage": {...},
        "queue": [[pieces], ...], "echo": bool, "alter": regex}`` (``queue``: the next requests'
        replies, one each; ``echo`` and ``alter``: see the module's docstring)"""
        spec = orjson.loads(await request.read() or b"{}")
        self.reply = tuple(spec.get("text", self.reply))
        self.queue = [tuple(pieces) for pieces in spec.get("queue", ())]
        self.tool_calls = tuple(spec.get("tool_calls", ()))
        self.usage = spec.get("usage")
        self.echo = bool(spec.get("echo", False))
        self.alter = spec.get("alter")
        try:
            re.compile(self.alter or "")  # a bad pattern fails this call, not every request
        except re.error as exc:
            self.alter = None
            return _json({"error": {"message": f"alter: {exc}"}}, status=400)
        return _json({"ok": True})

    async def _set_health(self, request: web.Request) -> web.StreamResponse:
        """``{"status": 503}``: what ``GET /health`` answers from now on."""
        self.health_status = int(orjson.loads(await request.read() or b"{}").get("status", 200))
        return _json({"status": self.health_status})

    async def _get_health(self, request: web.Request) -> web.StreamResponse:
        return _json({"status": self.health_status, "checks": self.health_checks})

    async def _get_requests(self, request: web.Request) -> web.StreamResponse:
        return _json([asdict(r) for r in self.requests])

    async def _clear_requests(self, request: web.Request) -> web.StreamResponse:
        self.requests.clear()
        return _json({"cleared": True})


def _received(request: web.Request, body: Any) -> Received:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    where = f"{peer[0]}:{peer[1]}" if peer else "?"
    headers = {str(k): v for k, v in request.headers.items()}  # istr keys upset orjson
    return Received(request.method, request.path, headers, body, where)


async def _trickle(request: web.Request, raw: bytes) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i in range(0, len(raw), 5):
        await resp.write(raw[i : i + 5])
        await asyncio.sleep(0.001)  # a separate segment, most of the time
    return resp


def _last_user_text(body: Any) -> str:
    """The text of the last user message (its text parts joined); "" where there is none."""
    messages = body.get("messages") if isinstance(body, dict) else None
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def _chunk(model: str, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def _model(body: Any, default: str) -> str:
    # Echo the model asked for, as vLLM does for a served model name, so tests see the rewrite.
    return str(body.get("model") or default) if isinstance(body, dict) else default


def _json(payload: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, headers=headers, content_type="application/json")


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


def _reset(request: web.Request) -> None:
    """Close with RST (linger 0) rather than FIN, like a crashed or firewalled server."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _hang_up(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


def _max_tokens(body: Any) -> int | None:
    if not isinstance(body, dict):
        return None
    bound = body.get("max_completion_tokens") or body.get("max_tokens")
    return bound if isinstance(bound, int) and not isinstance(bound, bool) and bound > 0 else None


def _stopped(body: Any, pieces: tuple[str, ...]) -> tuple[tuple[str, ...], str | None]:
    """The answer cut before the first of the request's ``stop`` strings, as vLLM does, and
    which one cut it (None: none appeared)."""
    stop = body.get("stop") if isinstance(body, dict) else None
    stops = [stop] if isinstance(stop, str) else [s for s in stop or () if isinstance(s, str) and s]
    text = "".join(pieces)
    found = [(text.index(s), s) for s in stops if s in text]
    if not found:
        return pieces, None
    at, matched = min(found)
    kept, used = [], 0
    for piece in pieces:
        if used + len(piece) >= at:
            kept.append(piece[: at - used])
            break
        kept.append(piece)
        used += len(piece)
    return tuple(p for p in kept if p), matched


def main() -> None:
    parser = argparse.ArgumentParser(description="a fault-injecting fake OpenAI-compatible server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--model", default="fake-model")
    args = parser.parse_args()
    fake = FakeUpstream(model=args.model, host=args.host, port=args.port)
    web.run_app(fake.app(), host=args.host, port=args.port, handler_cancellation=True, access_log=None)


if __name__ == "__main__":
    main()
