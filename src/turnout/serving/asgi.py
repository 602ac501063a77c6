"""The few ASGI helpers turnout needs; the app speaks raw ASGI (no framework on the hot path)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from turnout._support.depth import brackets, too_deep
from turnout.errors import BodyTooLarge, MethodNotAllowed, RequestError, UnsupportedEncoding

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"
BODY_READ = "turnout.body_read"  # in the scope once ``read_body`` has the whole body
DRAIN_BYTES = 8 * 1024 * 1024
DRAIN_S = 5.0
MAX_DEPTH = 128  # how deep a request body may nest (objects and arrays, the body itself included)


# In the scope once the client's connection closed before its answer was complete (set by the
# server's protocol, ``serving/connections.py``): the row of an answer it never got says 499.
CLIENT_LEFT = "turnout.client_left"
HEADERS = "turnout.headers"  # in the scope from the first ``header`` call: name -> first value
_BYTES = {bytes}


def header(scope: MutableMapping[str, Any], name: bytes) -> bytes | None:
    """A request header by lower-case name (ASGI servers lower-case them); of a repeated one,
    the first."""
    return headers(scope).get(name)


def headers(scope: MutableMapping[str, Any]) -> dict[bytes, bytes]:
    """The request's headers by lower-case name, mapped once a request (the request path asks
    for about eight): the first of a repeated one, each value as ``bytes``."""
    found: dict[bytes, bytes] | None = scope.get(HEADERS)
    if found is None:
        pairs = scope["headers"]
        if not isinstance(pairs, list | tuple):
            pairs = list(pairs)
        found = dict(reversed(pairs))  # reversed: the first one stays
        if set(map(type, found.values())) - _BYTES:  # a server may hand bytearrays
            found = {k: bytes(v) for k, v in found.items()}
        scope[HEADERS] = found
    return found


def credential(scope: MutableMapping[str, Any]) -> bytes | None:
    """The caller's key: ``Authorization: Bearer``, else ``x-api-key`` (Anthropic's SDKs send
    that), on every route a tenant's key opens."""
    sent = headers(scope)
    found = sent.get(b"authorization")
    if found is None and (key := sent.get(b"x-api-key")) is not None:
        return b"Bearer " + key
    return found


async def read_body(receive: Receive, scope: MutableMapping[str, Any], limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed ``limit``, and with 415
    under a ``Content-Encoding`` other than identity (a gzip body was read as if plain)."""
    encoding = header(scope, b"content-encoding")
    if encoding is not None and encoding.strip().lower() not in (b"identity", b""):
        shown = encoding[:32].decode("latin-1")
        raise UnsupportedEncoding(f"the body's Content-Encoding {shown!r} is not accepted: send it uncompressed")
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the request body exceeds the limit of {limit} bytes")
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        scope[BODY_READ] = True
        return body
    parts = [body]
    size = len(body)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestError("the client went away before the body was read", code="client_disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the request body exceeds the limit of {limit} bytes")
        parts.append(chunk)
    scope[BODY_READ] = True
    return b"".join(parts)


def unread_body(scope: MutableMapping[str, Any]) -> bool:
    """Whether the request has a body that was not read (refused before it, or past the limit)
    and that ``drain`` may read. Not when the client waits for ``100 Continue``: it sends
    nothing unless asked."""
    if scope.get(BODY_READ) or header(scope, b"expect") is not None:
        return False
    declared = header(scope, b"content-length")
    if declared is not None:
        return declared.isdigit() and 0 < int(declared) <= DRAIN_BYTES
    return header(scope, b"transfer-encoding") is not None


def continue_unsent(scope: MutableMapping[str, Any]) -> bool:
    """Whether the client holds its body back for a ``100 Continue`` it was never sent (the
    request was refused before its body was read): what it sends next on this connection may
    be that body or its next request, so the answer closes the connection."""
    return not scope.get(BODY_READ) and header(scope, b"expect") is not None


async def drain(receive: Receive) -> None:
    """Read and drop what is left of a refused request's body (at most ``DRAIN_BYTES``, for at
    most ``DRAIN_S``) before answering: a server that closes a connection with unread bytes
    sends a TCP reset, and the client loses the answer (a 413, a 401) it was sent."""
    size = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_S):
            while size <= DRAIN_BYTES:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body"):
                    return
                size += len(message.get("body", b""))


def json_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"the request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", code="invalid_json")
    # A body is forwarded, captured and counted: one nested deeper than the JSON writer goes
    # would fail after admission. Only a body with more brackets than MAX_DEPTH can be too deep.
    if brackets(raw) > MAX_DEPTH and too_deep(body, MAX_DEPTH):
        key = next((k for k, v in body.items() if too_deep(v, MAX_DEPTH - 1)), None)
        raise RequestError(f"'{key}' nests deeper than {MAX_DEPTH} levels", param=key, code="too_deep")
    return body


async def send_json(send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = orjson.dumps(payload)
    head = [(b"content-type", JSON), (b"content-length", str(len(body)).encode())]
    if headers:
        head.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def expect_method(method: str, allowed: str, what: str = "route") -> None:
    """``allowed``, or HEAD where it is GET (the server sends the head alone); else 405, whose
    ``Allow`` names both."""
    if method != allowed and not (method == "HEAD" and allowed == "GET"):
        allow = f"{allowed}, HEAD" if allowed == "GET" else allowed
        raise MethodNotAllowed(f"use {allowed} for this {what}", allow=allow)
