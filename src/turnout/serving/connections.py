"""Slow and idle clients: header, body and keep-alive timeouts and a cap on open connections,
added to uvicorn's httptools protocol.

uvicorn bounds neither how long a client may take to send its request nor how many
connections are open, so a few thousand clients trickling their headers or bodies hold every
file descriptor and new clients get empty replies. Here each connection waits on its client
for at most:

    not a byte yet         header_timeout_s from the connection's start       closed
    headers in progress    header_timeout_s from the request's first byte     408, closed
    body in progress       body_timeout_s for the whole body                  408, closed
    idle keep-alive        keepalive_timeout_s after the last answer          closed
    answer not taken       send_timeout_s with none of its answer taken       closed

(a connection whose request is being answered waits on the gateway, not the client, and is
not closed for that: upstream deadlines govern it; but one whose client takes none of its
answer — the send buffer full and not shrinking, so a stream's relay waits on the client,
holding its upstream call, its concurrency slot and its row — is dropped once that lasted
``send_timeout_s``: the request ends as a client that left, 499; a slow client that takes
some of it in each such interval is not). At ``max_connections`` a new connection first
closes those that have waited longest on their client (idle, not started, or still sending:
a 503 to those that sent part of a request), so a crowd of slow clients cannot keep new ones
out; only when every open connection is being answered is the new one refused.

No timer per request: three parser events (a request's first byte, its headers complete, its
answer complete) stamp the connection's phase and the loop's time, and one sweep a tick (a
quarter of the shortest timeout, at most 1 s) compares the stamps with the timeouts, looking
closer at uvicorn's own state (the request's scope and cycle) only where one ran out. A
deadline therefore runs out within one tick after the timeout. uvicorn's keep-alive timer, a
TimerHandle per answer, is left out: the sweep closes idle connections. Measured in
bench/connections.py: per request no slower than plain uvicorn, a few µs per connection, and
well under a millisecond per sweep over 10,000 open connections.

Each answer writes through ``OneWrite``: uvicorn sends a response head by itself, then the body;
on loopback and in most virtual machines a send costs more than the bytes it carries (it wakes the
reader), so a head whose body follows in the same turn of the loop goes out with it in one send.
A head whose body does not follow at once (a stream waiting on its upstream) goes out by itself at
the end of that turn.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import sys
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from turnout.errors import RequestError
from turnout.serving.anthropic import error_body, status_of
from turnout.serving.asgi import CLIENT_LEFT
from turnout.serving.boundary import messages_path

log = logging.getLogger("turnout")

# A connection's phases.
FRESH = 0  # no request yet
HEADERS = 1  # a request's first byte came, its headers are not complete
BODY = 2  # headers done, body still coming
BUSY = 3  # the whole request came; the gateway is answering
IDLE = 4  # answered; waiting for the next request on a keep-alive connection
STALLED = 5  # answering (or answered) with the send buffer full: the answer waits on the client

_REASONS = {FRESH: "sent nothing", HEADERS: "slow headers", BODY: "slow body", IDLE: "idle", STALLED: "not reading"}
SUMMARY_EVERY_S = 60.0


@dataclass(frozen=True)
class Limits:
    header_timeout_s: float
    body_timeout_s: float
    keepalive_timeout_s: float
    max_connections: int
    send_timeout_s: float = 30.0

    @property
    def tick_s(self) -> float:
        shortest = min(self.header_timeout_s, self.body_timeout_s, self.keepalive_timeout_s, self.send_timeout_s)
        return min(1.0, max(0.05, shortest / 4))


@dataclass(frozen=True)
class Answer:
    """A refusal written before the app sees the request, whole, in both error shapes: OpenAI's,
    and Anthropic's for /v1/messages and the paths under it (its SDKs read only their own)."""

    openai: bytes
    anthropic: bytes

    def to(self, url: bytes) -> bytes:
        """The answer for a request to ``url`` (as far as it came)."""
        return self.anthropic if messages_path(_path(url)) else self.openai


def _answer(status: int, message: str, code: str) -> Answer:
    err = RequestError(message, code=code)  # in the shapes every other refusal has
    err.status = status
    reasons = {400: b"Bad Request", 408: b"Request Timeout", 503: b"Service Unavailable", 529: b"Overloaded"}
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    openai_body, anthropic_body = orjson.dumps(err.to_openai()), orjson.dumps(error_body(err))
    theirs = status_of(err)  # Anthropic's: 529 for too many connections
    return Answer(
        head % (status, reasons[status], len(openai_body)) + openai_body,
        head % (theirs, reasons[theirs], len(anthropic_body)) + anthropic_body,
    )


def _path(url: bytes) -> str:
    """A request target's path as uvicorn puts it in the scope; "" where it cannot be read."""
    try:
        raw = httptools.parse_url(url).path
    except httptools.HttpParserInvalidURLError:
        return ""
    path = (raw or b"").decode("latin-1")
    return urllib.parse.unquote(path) if "%" in path else path


TIMED_OUT = _answer(408, "the request was not received in time", "request_timeout")
SHED = _answer(503, "the server has too many open connections; retry", "too_many_connections")


class Guard:
    """What every connection of one server shares: the limits, the open connections, the sweep
    (a timer that runs while any connection is open) and counts of what was closed, logged at
    most once a minute."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.open: set[GuardedProtocol] = set()
        self.closed: Counter[str] = Counter()  # since the last summary
        # by phase: FRESH, HEADERS, BODY, BUSY (not a timeout: how often to look again whether
        # the answer is done), IDLE, STALLED
        self._timeouts = (
            limits.header_timeout_s,
            limits.header_timeout_s,
            limits.body_timeout_s,
            limits.keepalive_timeout_s,
            limits.keepalive_timeout_s,
            limits.send_timeout_s,
        )
        self._timer: asyncio.TimerHandle | None = None  # while connections are open
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_summary = -math.inf

    def admit(self, conn: GuardedProtocol, now: float) -> bool:
        """Register a new connection, making room at the cap; False: refuse it."""
        if len(self.open) >= self.limits.max_connections and not self._shed(now):
            self.closed["refused at the cap"] += 1
            return False
        self.open.add(conn)
        if self._timer is None:
            self._loop = conn.loop
            self._timer = conn.loop.call_later(self.limits.tick_s, self._sweep)
        return True

    def release(self, conn: GuardedProtocol) -> None:
        self.open.discard(conn)  # the sweep stops by itself once none is open

    def _shed(self, now: float) -> bool:
        """Close a few of the connections that have waited longest on their client (one
        scan per batch, not per new connection); False when every one is being answered."""
        waiting = [c for c in self.open if c.observe(now) not in (BUSY, STALLED)]
        batch = max(1, self.limits.max_connections // 32)
        for conn in heapq.nsmallest(batch, waiting, key=lambda c: c.since):
            self.closed["evicted at the cap"] += 1
            conn.shut(SHED)
        return bool(waiting)

    def _sweep(self) -> None:
        self._timer = None
        loop = self._loop
        if not self.open or loop is None:
            return
        now = loop.time()
        timeouts = self._timeouts
        due = [c for c in self.open if now - c.since > timeouts[c.phase]]
        # Each judged by the phase it is in now, from when that began (``observe`` first: it
        # restamps one whose phase moved on, such as a request being answered).
        expired = [c for c in due if (phase := c.observe(now)) != BUSY and now - c.since > timeouts[phase]]
        for conn in expired:
            self.closed[_REASONS[conn.phase]] += 1
            conn.shut(TIMED_OUT)
        self._summarize(now)
        if self.open:
            self._timer = loop.call_later(self.limits.tick_s, self._sweep)

    def _summarize(self, now: float) -> None:
        """One line a minute at most: what slow clients cost (idle keep-alives are routine)."""
        notable = {k: n for k, n in self.closed.items() if k != "idle"}
        if not notable or now - self._last_summary < SUMMARY_EVERY_S:
            return
        self._last_summary = now
        parts = ", ".join(f"{n} {k}" for k, n in sorted(notable.items()))
        log.warning(
            "closed client connections: %s (%d open, cap %d)", parts, len(self.open), self.limits.max_connections
        )
        self.closed.clear()


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol under a ``Guard``; made per server by ``protocol_class``.

    Three parser events stamp the phase and the time (slots: two stores and a clock read);
    the sweep reads only the stamps, and looks closer at uvicorn's state only where one ran out.
    """

    __slots__ = ("phase", "since", "unsent")
    guard: ClassVar[Guard]

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.phase, self.since = FRESH, self.loop.time()
        self.unsent = 0  # bytes of an answer waiting on its client, when last looked at
        if not self.guard.admit(self, self.since):
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.release(self)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:  # the answer, if any comes, reaches no one
            cycle.scope[CLIENT_LEFT] = True  # type: ignore[literal-required]
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """What the HTTP parser refuses (a bad method, a NUL in a header…), in OpenAI's error
        shape like every other refusal, instead of uvicorn's plain text. The message is the
        parser's own ("Invalid HTTP request received."), never the request's bytes; in
        Anthropic's shape where the request line named /v1/messages or a path under it."""
        self.transport.write(_answer(400, msg, "invalid_http").to(getattr(self, "url", b"")))
        self.transport.close()

    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        self.phase = HEADERS
        self.since = self.loop.time()

    def on_headers_complete(self) -> None:
        HttpToolsProtocol.on_headers_complete(self)
        self.phase = BODY
        self.since = self.loop.time()
        cycle = self.cycle
        if cycle is not None:  # the transport as its answer sees it: head and body in one write
            cycle.transport = cast(asyncio.Transport, OneWrite(self.transport, self.loop))
            if cycle.scope["http_version"] == "1.0":
                cycle.send = Http10Answer(cycle)  # type: ignore[method-assign]

    def pause_writing(self) -> None:
        """The send buffer is full: the answer waits on its client from now (STALLED)."""
        HttpToolsProtocol.pause_writing(self)
        self.observe(self.loop.time())

    def resume_writing(self) -> None:
        HttpToolsProtocol.resume_writing(self)
        self.observe(self.loop.time())  # taking it again: a later stall counts afresh

    def on_response_complete(self) -> None:
        if self.pipeline or self.transport.is_closing():
            HttpToolsProtocol.on_response_complete(self)  # starts the next pipelined request
            return
        # uvicorn's own, less its keep-alive timer (a TimerHandle per answer): the sweep closes
        # idle connections instead
        self.server_state.total_requests += 1
        self.flow.resume_reading()
        if self.phase != HEADERS:  # not when the next request has begun already
            self.phase = STALLED if self.flow.write_paused else IDLE
            self.since = self.loop.time()

    def observe(self, now: float) -> int:
        """The phase read off uvicorn's state. ``since`` restarts where the stamp was behind (the
        body came and the gateway is answering), and while the server itself holds reading
        back (a queued pipelined request, a body the app has not taken yet)."""
        scope = self.scope
        cycle = self.cycle
        if scope is None:
            phase = FRESH
        elif cycle is None or cycle.scope is not scope:
            phase = HEADERS
        elif self.flow.write_paused and not cycle.more_body:
            phase = STALLED  # answering, or answered, and the send buffer full
        elif cycle.response_complete:
            phase = IDLE  # also an early answer (413) while the body still comes
        elif cycle.more_body:
            phase = BODY
        else:
            phase = BUSY
        moved = phase != self.phase or phase == BUSY or (phase < BUSY and (self.flow.read_paused or self.pipeline))
        if phase == STALLED:  # the wait starts again whenever the client took some of it
            unsent = self.transport.get_write_buffer_size()
            moved = moved or unsent < self.unsent
            self.unsent = unsent
        if moved:
            self.phase, self.since = phase, now
        return phase

    def shut(self, answer: Answer) -> None:
        """Close, answering first when a request is partly read and nothing was answered yet."""
        self.guard.release(self)
        transport = self.transport
        if self.flow.write_paused:
            # The client takes nothing: what waits for it would hold the socket open (a close
            # first sends what is buffered), so it is dropped.
            transport.abort()
            return
        if transport.is_closing():
            return
        cycle = self.cycle
        if self.phase == HEADERS:
            unanswered = cycle is None or cycle.response_complete  # no earlier answer under way
        else:
            unanswered = self.phase == BODY and cycle is not None and not cycle.response_started
        if unanswered:  # ``url``: the request being read (uvicorn starts it afresh per request)
            transport.write(answer.to(getattr(self, "url", b"")))
        transport.close()


class Http10Answer:
    """``send`` for an HTTP/1.0 request's cycle. uvicorn frames an answer of unknown length (a
    stream) with ``transfer-encoding: chunked``, which HTTP/1.0 does not have (RFC 9112 6.1: not
    to a client that did not send HTTP/1.1 or later): such a client read the chunk sizes as part
    of the stream. Here that answer's body goes out as it is, and the closing connection (always,
    for HTTP/1.0 in uvicorn) ends it."""

    __slots__ = ("_cycle", "_send", "_unframed")

    def __init__(self, cycle: Any) -> None:
        self._cycle = cycle
        self._send = cycle.send
        self._unframed = False

    async def __call__(self, message: Any) -> None:
        cycle = self._cycle
        if message["type"] == "http.response.start":
            framed = any(
                name.lower() in (b"content-length", b"transfer-encoding") for name, _ in message.get("headers", ())
            )
            if not framed and cycle.scope["method"] != "HEAD" and message["status"] not in (204, 304):
                self._unframed = True
                cycle.chunked_encoding = False  # no transfer-encoding header, no chunk sizes
                cycle.expected_content_length = sys.maxsize  # what uvicorn checks a body against
        elif self._unframed and not message.get("more_body", False):
            cycle.expected_content_length = len(message.get("body", b""))  # the last part: it ends here
        await self._send(message)


JOIN_MAX = 64 * 1024  # a body up to this size goes out in one write with its head


class OneWrite:
    """The transport as one request's answer sees it: the response head waits for the body's
    first write when that comes in the same turn of the loop (a whole JSON answer, written at
    once: one send instead of two), and goes out by itself at the end of the turn otherwise (a
    stream waiting on its upstream): a head is never held back past the turn that wrote it."""

    __slots__ = ("_head", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop: asyncio.AbstractEventLoop | None = loop  # None once the head was written
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            if len(data) <= JOIN_MAX:
                self._transport.write(head + data)
                return
            self._transport.write(head)  # a large body is not copied to save a send
            self._transport.write(data)
        elif (loop := self._loop) is not None:  # the first write of the answer: its head
            self._loop = None
            self._head = data
            loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        head = self._head
        if head is not None:
            self._head = None
            if not self._transport.is_closing():  # the client left meanwhile: nothing to send
                self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return bool(self._transport.is_closing())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def protocol_class(limits: Limits) -> type[HttpToolsProtocol]:
    """A ``GuardedProtocol`` class bound to one new ``Guard``: pass it as uvicorn's ``http``."""

    class Bound(GuardedProtocol):
        guard = Guard(limits)

    return Bound
