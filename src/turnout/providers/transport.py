"""What the HTTP providers share: aiohttp failures translated into turnout's errors."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

from turnout.errors import UpstreamConnectError, UpstreamError, UpstreamProtocolError, UpstreamTimeout
from turnout.providers.base import Timeouts

TRANSPORT_ERRORS = (aiohttp.ClientError, HttpProcessingError, OSError, TimeoutError)


def translate(exc: BaseException, label: str, t: Timeouts, head: asyncio.Timeout | None) -> UpstreamError:
    """The most specific turnout error for an aiohttp, asyncio or OS failure."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):  # before TimeoutError: it is one
        return UpstreamTimeout("connect", t.connect)
    if isinstance(exc, TimeoutError):
        # Ours is the ttft deadline; aiohttp's own is the total one.
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
