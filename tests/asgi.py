"""Drive the ASGI app in-process, without sockets: the request is one call, the response is
the list of ASGI messages it sent (so streams can be read chunk by chunk too)."""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from turnout.ledger.record import LedgerRow
from turnout.serving.app import App


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    chunks: list[bytes] = field(default_factory=list)
    starts: int = 1  # response heads sent: more than one is a broken response

    def json(self) -> Any:
        return orjson.loads(self.body)

    def events(self) -> list[Any]:
        """SSE ``data:`` payloads, decoded; ``[DONE]`` stays a string."""
        out: list[Any] = []
        for block in self.body.split(b"\n\n"):
            if block.startswith(b"data: "):
                data = block[6:]
                out.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
        return out


async def request(
    app: App,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    chunk_size: int | None = None,
    disconnect_after: int | None = None,
    leave: asyncio.Event | None = None,
) -> Response:
    """``disconnect_after``: the client leaves once that many body messages were sent to it;
    ``leave``: when the test sets it (a request with no answer yet has status 0)."""
    data = raw if raw is not None else (b"" if body is None else orjson.dumps(body))
    head = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if data and not any(k == b"content-length" for k, _ in head):
        head.append((b"content-length", str(len(data)).encode()))
    path, _, query = path.partition("?")
    # As uvicorn gives it: ``path`` percent-decoded, ``raw_path`` as sent.
    scope = {
        "type": "http",
        "method": method,
        "path": urllib.parse.unquote(path),
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "headers": head,
        "query_string": query.encode(),
    }
    parts = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)] if chunk_size else [data]
    sent: list[MutableMapping[str, Any]] = []
    gone = leave or asyncio.Event()

    async def receive() -> dict[str, Any]:
        if parts:
            part = parts.pop(0)
            return {"type": "http.request", "body": part, "more_body": bool(parts)}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)
        bodies = sum(1 for m in sent if m["type"] == "http.response.body")
        if disconnect_after is not None and bodies >= disconnect_after:
            gone.set()
            await asyncio.sleep(0)

    await app.http(scope, receive, send)
    gone.set()
    if not sent:  # the client left before any answer
        return Response(0, {}, b"", [], 0)
    start = sent[0]
    chunks = [m.get("body", b"") for m in sent[1:]]
    hdrs = {k.decode(): v.decode() for k, v in start["headers"]}
    starts = sum(1 for m in sent if m["type"] == "http.response.start")
    return Response(start["status"], hdrs, b"".join(chunks), chunks, starts)


async def settled(app: App) -> None:
    """Wait (up to 2.5 s) until the app's ledger writer has written what it was given: in tests
    it flushes every 10 ms."""
    ledger = app.runtime.ledger
    assert ledger is not None
    for _ in range(500):
        if ledger.queued == 0:
            return
        await asyncio.sleep(0.005)


async def ledger_rows(app: App, limit: int = 1000) -> list[LedgerRow]:
    """The app's ledger rows, newest first, once the writer has written them."""
    await settled(app)
    assert app.runtime.store is not None
    return await app.runtime.store.recent(limit)
