"""What the HTTP providers (``openai``, ``bedrock``) share, so that they agree by construction:

* **one session recipe** (``Client``): a pooled aiohttp session per target, made lazily on the
  running loop, no cookies carried between callers, idle sockets dropped before the server
  drops them, no redirects followed (one could carry credentials elsewhere);
* **one deadline rule**: ``connect`` bounds the TCP/TLS handshake (aiohttp ``sock_connect``);
  ``ttft`` bounds the response head and, for streams, the first event; ``total`` bounds the
  whole call from its start — head, body, every event of a stream — and is enforced by turnout
  with asyncio deadlines (aiohttp's own total is off: it would also run while a slow consumer
  is not reading);
* **one way a call ends**: an ``Exchange`` carries a ``settle`` callback that is called
  exactly once per call: by ``Exchange.complete`` with its outcome, by ``Exchange.stream``
  when the stream fails to start, else by the stream's ``StreamBody.finish`` when the chunks
  end, fail or are closed (``ABANDONED``). The provider frees its slot and informs its
  breaker there, and nowhere else;
* **one clean-up for a response we stop reading** (``discard``): released when its body was
  read to the end (the socket goes back to the pool), else closed (which is also how a server
  learns to stop generating);
* **one error mapping**: ``with upstream_errors(label, timeouts, head):`` turns aiohttp, asyncio
  and OS failures into the most specific ``turnout.errors.UpstreamError`` and raises it
  ``from`` the original (httpx's ``map_httpcore_exceptions`` is the model). Messages name
  the replica or target by label, never by URL::

      aiohttp.ConnectionTimeoutError        UpstreamTimeout("connect")
      TimeoutError (asyncio deadlines)      UpstreamTimeout("ttft") or UpstreamTimeout("total")
      ClientConnectionError, payload, OS    UpstreamConnectError
      any other ClientError, bad HTTP       UpstreamProtocolError
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TypeVar

import aiohttp
import orjson
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError
from multidict import CIMultiDictProxy
from yarl import URL

from turnout._support.deadline import Deadline, deadline_at
from turnout._support.depth import WRITER_DEPTH, brackets, too_deep
from turnout.errors import UpstreamConnectError, UpstreamError, UpstreamProtocolError, UpstreamTimeout
from turnout.providers.base import Timeouts
from turnout.providers.h1 import BadResponse, CannotConnect, ConnectTimeout, Disconnected, H1Pool

# What a failed exchange can raise from aiohttp, h1, asyncio or the OS (CancelledError excluded).
TRANSPORT_ERRORS = (aiohttp.ClientError, HttpProcessingError, BadResponse, OSError, TimeoutError)
# How a stream closed by its consumer before its end is settled: no verdict on the upstream.
ABANDONED = asyncio.CancelledError("the consumer closed the stream")

T = TypeVar("T")
_WORDS = 80  # of an HTTP parser's message, at most
DEEP_AT = 200  # brackets in an upstream body past which its depth is checked (orjson writes 254 levels)


class Response(Protocol):
    """What ``Exchange`` reads of a response: aiohttp's and ``h1``'s both have it."""

    @property
    def status(self) -> int: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def headers(self) -> CIMultiDictProxy[str]: ...
    async def read(self) -> bytes: ...
    def release(self) -> Any: ...
    def close(self) -> Any: ...


Post = Callable[[], Awaitable[Response]]
StatusError = Callable[[Response], Awaitable[UpstreamError]]
Settle = Callable[[BaseException | None], None]  # how the call ended; None: it succeeded


class Client:
    """One target's pooled HTTP connections. The session is made on first use: an aiohttp
    session binds to the loop that is running when it is made. With ``lean``, non-streaming
    calls without extra headers take ``turnout.providers.h1`` instead (a fifth of aiohttp's
    CPU per call), one pool per origin; streams and everything else stay on aiohttp."""

    __slots__ = ("_headers", "_keepalive_s", "_lean", "_max_connections", "_pools", "_session")

    def __init__(
        self,
        max_connections: int,
        keepalive_s: float,
        headers: Mapping[str, str] | None = None,
        *,
        lean: bool = False,
    ) -> None:
        self._max_connections = max_connections
        self._keepalive_s = keepalive_s
        self._headers = headers
        self._lean = lean
        self._session: aiohttp.ClientSession | None = None
        self._pools: dict[URL, H1Pool] = {}

    def session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=self._keepalive_s)
            session = self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self._headers,
                cookie_jar=aiohttp.DummyCookieJar(),  # never carry one caller's cookies to the next
            )
        return session

    async def post(
        self,
        url: URL,
        data: bytes,
        timeouts: Timeouts,
        headers: Mapping[str, str] | None = None,
        *,
        stream: bool = True,
    ) -> Response:
        if self._lean and not stream and headers is None and url.user is None:
            return await self._pool(url).post(url.raw_path_qs, data, timeouts.connect)
        # No redirects: a model server does not send them, and following one could carry the
        # credentials elsewhere.
        return await self.session().post(
            url, data=data, headers=headers, timeout=_client_timeout(timeouts), allow_redirects=False
        )

    def _pool(self, url: URL) -> H1Pool:
        origin = url.origin()
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = H1Pool(origin, self._max_connections, self._keepalive_s, self._headers)
        return pool

    async def aclose(self) -> None:
        """Idempotent; a later call opens a new session."""
        session, self._session = self._session, None
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            await pool.aclose()
        if session is not None:
            await session.close()


_timeouts: dict[float, aiohttp.ClientTimeout] = {}


def _client_timeout(t: Timeouts) -> aiohttp.ClientTimeout:
    """aiohttp's part of the deadline rule: the handshake only (turnout enforces the rest)."""
    found = _timeouts.get(t.connect)
    if found is None:  # calls of one target share their timeouts: one object per value
        found = _timeouts[t.connect] = aiohttp.ClientTimeout(total=None, sock_connect=t.connect)
    return found


class upstream_errors:
    """``with upstream_errors(label, timeouts, head):`` — a transport failure inside becomes
    turnout's error; anything else passes through unchanged. ``head`` is the ttft deadline
    in force, if any, so that its expiry is told apart from the total's."""

    __slots__ = ("head", "label", "timeouts")

    def __init__(self, label: str, timeouts: Timeouts, head: Deadline | None = None) -> None:
        self.label = label
        self.timeouts = timeouts
        self.head = head

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is not None and isinstance(exc, TRANSPORT_ERRORS):
            raise translate(exc, self.label, self.timeouts, self.head) from exc


@dataclass(frozen=True, slots=True)
class Exchange:
    """One call to an HTTP upstream: how to send it (``post``), what an error status means
    (``status_error``), the label its errors carry, its deadlines, and whom to tell how it
    ended (``settle``, called exactly once)."""

    post: Post
    status_error: StatusError
    label: str
    timeouts: Timeouts
    settle: Settle

    async def complete(self, parse: Callable[[bytes], T]) -> T:
        """A non-streaming call: the head within ``ttft``, all of it within ``total``; the
        body as ``parse`` reads it. Settled with the outcome, a body ``parse`` rejects
        included."""
        try:
            result = parse(await self._read())
        except BaseException as exc:
            self.settle(exc)
            raise
        self.settle(None)
        return result

    async def stream(self, first: Callable[[StreamBody], Awaitable[T]]) -> T:
        """Start a streaming call: its head and ``first`` (reading the first event from the
        body) within ``ttft`` (and ``total``); returns what ``first`` returned, which owns
        the body from then on. A failure on the way ends the call here: the response
        discarded, the call settled."""
        t = self.timeouts
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + t.total
        head = deadline_at(min(deadline, now + t.ttft), loop)
        body: StreamBody | None = None
        try:
            with upstream_errors(self.label, t, head if t.ttft <= t.total else None):
                async with head:
                    resp = await self.post()
                    assert isinstance(resp, aiohttp.ClientResponse)  # streams never take h1
                    body = StreamBody(resp, self.label, t, deadline, self.settle)
                    if resp.status >= 300:
                        raise await self.status_error(resp)
                    return await first(body)
        except BaseException as exc:
            if body is None:
                self.settle(exc)
            else:
                body.finish(exc)  # a no-op when ``first`` already finished it
            raise

    async def _read(self) -> bytes:
        # One deadline for both (``turnout._support.deadline``: no loop timer per call): it runs
        # to the head's deadline, then is moved to the total's once the head is in.
        t = self.timeouts
        loop = asyncio.get_running_loop()
        now = loop.time()
        total_at = now + t.total
        deadline = deadline_at(min(total_at, now + t.ttft), loop)
        guard = upstream_errors(self.label, t, deadline if t.ttft < t.total else None)
        with guard:
            async with deadline:
                resp = await self.post()
                guard.head = None  # the head is in: from here only the total can run out
                deadline.reschedule(total_at)
                try:
                    if resp.status >= 300:
                        raise await self.status_error(resp)
                    return await resp.read()
                finally:
                    resp.release()


class StreamBody:
    """A streaming response: read within the call's ``total`` (``read``), ended exactly once
    (``finish``: the response discarded, the call settled), whoever ends it first."""

    __slots__ = ("_deadline", "_resp", "_settle", "_timeouts", "finished", "label")

    def __init__(
        self, resp: aiohttp.ClientResponse, label: str, timeouts: Timeouts, deadline: float, settle: Settle
    ) -> None:
        self._resp = resp
        self.label = label
        self._timeouts = timeouts
        self._deadline = deadline  # loop time: the call's total runs out then
        self._settle = settle
        self.finished = False

    @property
    def content(self) -> aiohttp.StreamReader:
        return self._resp.content

    async def read(self, read: Awaitable[T]) -> T:
        """One read of the body, which must end by the call's deadline."""
        with upstream_errors(self.label, self._timeouts):
            async with deadline_at(self._deadline):
                return await read

    def finish(self, exc: BaseException | None) -> None:
        """How the call ended: None at the body's end, the error, or ``ABANDONED``."""
        if not self.finished:
            self.finished = True
            discard(self._resp)
            self._settle(exc)


def discard(resp: aiohttp.ClientResponse) -> None:
    """A response we stop reading: its socket back to the pool when the body was read to the
    end, else closed (a server learns that way to stop generating)."""
    if resp.content.is_eof():
        resp.release()
    else:
        resp.close()


async def error_body(resp: Response) -> bytes:
    """The body of an error answer, or nothing when it cannot be read: the status alone is
    still the answer."""
    try:
        return await resp.read()
    except (aiohttp.ClientError, BadResponse, OSError):
        return b""


def json_object(raw: bytes | bytearray, label: str, what: str) -> dict[str, Any]:
    """``raw`` as a JSON object, else an ``UpstreamProtocolError`` naming ``what`` it was."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamProtocolError(f"{label}: {what} is not valid JSON") from exc
    if not isinstance(parsed, dict):
        raise UpstreamProtocolError(f"{label}: {what} is not a JSON object")
    # The gateway writes the answer out again (nested one or two levels deeper): one nested past
    # what the JSON writer takes would fail after the upstream was paid. Only a body with this
    # many brackets can be; it is asked of the writer itself, at C speed.
    if brackets(raw) > DEEP_AT and too_deep(parsed, WRITER_DEPTH - 2):
        raise UpstreamProtocolError(f"{label}: {what} nests too deep")
    return parsed


def translate(exc: BaseException, label: str, t: Timeouts, head: Deadline | None) -> UpstreamError:
    """The most specific turnout error for an aiohttp, asyncio or OS failure."""
    if isinstance(exc, (aiohttp.ConnectionTimeoutError, ConnectTimeout)):  # before TimeoutError: they are ones
        return UpstreamTimeout("connect", t.connect)
    if isinstance(exc, TimeoutError):
        if head is not None and head.expired():
            return UpstreamTimeout("ttft", t.ttft)
        return UpstreamTimeout("total", t.total)
    if isinstance(exc, aiohttp.ClientPayloadError) and isinstance(exc.__cause__, ContentEncodingError):
        return UpstreamProtocolError(f"{label}: {describe(exc)}")  # it arrived whole, but unreadable
    if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError)):
        return UpstreamConnectError(f"{label}: {describe(exc)}")
    return UpstreamProtocolError(f"{label}: {describe(exc)}")


def describe(exc: BaseException) -> str:
    # Built from the exception's kind, never str(exc): aiohttp's messages can quote the URL.
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "DNS lookup failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({_os_reason(exc.os_error)})"
    if isinstance(exc, CannotConnect):
        return (
            "DNS lookup failed"
            if isinstance(exc.os_error, socket.gaierror)
            else f"cannot connect ({_os_reason(exc.os_error)})"
        )
    if isinstance(exc, (Disconnected, BadResponse)):
        return str(exc)  # h1's own words, never a URL
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return (
            "invalid compressed body"
            if isinstance(exc.__cause__, ContentEncodingError)
            else "connection lost mid-response"
        )
    if isinstance(exc, aiohttp.ClientResponseError) and isinstance(exc.__cause__, HttpProcessingError):
        # A response aiohttp could not parse: its parser's words up to the bytes they quote
        # ("Bad status line", "Too many headers received"), never str(exc), which names the URL.
        words = exc.message.split("\n", 1)[0].split(":", 1)[0].strip()[:_WORDS]
        return f"invalid HTTP response ({words or type(exc.__cause__).__name__})"
    if isinstance(exc, (ConnectionResetError, aiohttp.ClientConnectionResetError)):
        return "connection reset"
    if isinstance(exc, HttpProcessingError):
        return f"invalid HTTP response ({type(exc).__name__})"
    if isinstance(exc, OSError) and exc.errno:
        return _os_reason(exc).lower()  # "connection reset by peer"
    return type(exc).__name__


def _os_reason(exc: OSError) -> str:
    # The OS's words for the errno ("Connection refused"), never the exception's own message:
    # asyncio's carries the address ("Connect call failed ('10.0.0.7', 8000)"). A TLS failure's
    # own words name the failure ("certificate verify failed"), not the address.
    if isinstance(exc, ssl.SSLError):
        return exc.strerror or type(exc).__name__
    return os.strerror(exc.errno) if exc.errno else type(exc).__name__
