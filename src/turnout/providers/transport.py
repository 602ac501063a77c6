"""What the HTTP providers (``openai``, ``bedrock``) share, so that they agree by construction:

* **one session recipe**: a pooled aiohttp session per target, no cookies carried between
  callers, idle sockets dropped before the server drops them;
* **one deadline rule**: ``connect`` bounds the TCP/TLS handshake (aiohttp ``sock_connect``);
  ``ttft`` bounds the response head and, for streams, the first event; ``total`` bounds the
  whole call from its start — head, body, every event of a stream — and is enforced by turnout
  with asyncio deadlines (aiohttp's own total is off: it would also run while a slow consumer
  is not reading);
* **one clean-up for a response we stop reading**: released when its body was read to the end
  (the socket goes back to the pool), else closed (which is also how a server learns to stop
  generating);
* **one error mapping**: ``with upstream_errors(label, timeouts, head):`` turns aiohttp, asyncio
  and OS failures into the most specific ``turnout.errors.UpstreamError`` and raises it
  ``from`` the original (httpx's ``map_httpcore_exceptions`` is the model). Messages name
  the replica or target by label, never by URL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import TypeVar

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

from turnout.errors import UpstreamConnectError, UpstreamError, UpstreamProtocolError, UpstreamTimeout
from turnout.providers.base import Timeouts

# What a failed exchange can raise from aiohttp, asyncio or the OS (CancelledError excluded).
TRANSPORT_ERRORS = (aiohttp.ClientError, HttpProcessingError, OSError, TimeoutError)

T = TypeVar("T")
Post = Callable[[], Awaitable[aiohttp.ClientResponse]]
StatusError = Callable[[aiohttp.ClientResponse], Awaitable[UpstreamError]]


def new_session(
    max_connections: int, keepalive_s: float, headers: Mapping[str, str] | None = None
) -> aiohttp.ClientSession:
    """Call from the running loop: a session binds to the loop that is running when it is made."""
    connector = aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=keepalive_s)
    return aiohttp.ClientSession(
        connector=connector,
        headers=headers,
        cookie_jar=aiohttp.DummyCookieJar(),  # never carry one caller's cookies to the next
    )


_timeouts: dict[float, aiohttp.ClientTimeout] = {}


def client_timeout(t: Timeouts) -> aiohttp.ClientTimeout:
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

    def __init__(self, label: str, timeouts: Timeouts, head: asyncio.Timeout | None = None) -> None:
        self.label = label
        self.timeouts = timeouts
        self.head = head

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is not None and isinstance(exc, TRANSPORT_ERRORS):
            raise translate(exc, self.label, self.timeouts, self.head) from exc


async def exchange(post: Post, status_error: StatusError, label: str, t: Timeouts) -> bytes:
    """One non-streaming call: the head within ``ttft``, all of it within ``total``; the body."""
    head = asyncio.timeout(t.ttft)
    with upstream_errors(label, t, head):
        async with asyncio.timeout(t.total):
            async with head:
                resp = await post()
            try:
                if resp.status >= 300:
                    raise await status_error(resp)
                return await resp.read()
            finally:
                resp.release()


async def open_stream(
    post: Post,
    status_error: StatusError,
    first: Callable[[aiohttp.ClientResponse, float], Awaitable[T]],
    label: str,
    t: Timeouts,
) -> tuple[aiohttp.ClientResponse, T, float]:
    """Start a streaming call: its head and ``first`` (reading the first event) within
    ``ttft`` (and ``total``). ``first`` gets the response and the loop time at which the
    call's ``total`` runs out, the deadline of every later read; returns the response, what
    ``first`` returned and that deadline. A failure discards the response."""
    deadline = asyncio.get_running_loop().time() + t.total
    head = asyncio.timeout_at(min(deadline, asyncio.get_running_loop().time() + t.ttft))
    resp: aiohttp.ClientResponse | None = None
    try:
        with upstream_errors(label, t, head if t.ttft <= t.total else None):
            async with head:
                resp = await post()
                if resp.status >= 300:
                    raise await status_error(resp)
                return resp, await first(resp, deadline), deadline
    except BaseException:
        if resp is not None:
            discard(resp)
        raise


async def read_until(deadline: float, read: Awaitable[T], label: str, t: Timeouts) -> T:
    """One read of a stream that must end by ``deadline`` (loop time): the call's total."""
    with upstream_errors(label, t):
        async with asyncio.timeout_at(deadline):
            return await read


def discard(resp: aiohttp.ClientResponse) -> None:
    """A response we stop reading: its socket back to the pool when the body was read to the
    end, else closed (a server learns that way to stop generating)."""
    if resp.content.is_eof():
        resp.release()
    else:
        resp.close()


def translate(exc: BaseException, label: str, t: Timeouts, head: asyncio.Timeout | None) -> UpstreamError:
    """The most specific turnout error for an aiohttp, asyncio or OS failure."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):  # before TimeoutError: it is one
        return UpstreamTimeout("connect", t.connect)
    if isinstance(exc, TimeoutError):
        if head is not None and head.expired():
            return UpstreamTimeout("ttft", t.ttft)
        return UpstreamTimeout("total", t.total)
    if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError)):
        return UpstreamConnectError(f"{label}: {describe(exc)}")
    return UpstreamProtocolError(f"{label}: {describe(exc)}")


def describe(exc: BaseException) -> str:
    # Built from the exception's kind, never str(exc): aiohttp's messages can quote the URL.
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "DNS lookup failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or type(exc.os_error).__name__})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "connection lost mid-response"
    if isinstance(exc, (ConnectionResetError, aiohttp.ClientConnectionResetError)):
        return "connection reset"
    if isinstance(exc, HttpProcessingError):
        return f"invalid HTTP response ({type(exc).__name__})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()  # "connection reset by peer", from the OS, no address
    return type(exc).__name__
