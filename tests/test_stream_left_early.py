"""A streaming client that leaves before its first chunk (the model is slow to start, or every
target is failing and being retried): the attempts stop at once, the tenant's concurrency slot
and budget reservation are freed for its next request, and the row says 499
``client_disconnected`` — not 502 after the time-to-first-token deadline with the slot held
all that while. On every door that streams."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import orjson
import pytest

from tests.asgi import ledger_rows, request
from tests.conftest import AppFactory
from tests.fakes.upstream import FakeUpstream, Fault
from turnout.serving.app import App

KEY = "sk-acme-early-0123456789"
PRICE = {"input_per_mtok": 1.0, "output_per_mtok": 1.0}
DOORS: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/messages": {"model": "chat", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
    "/v1/responses": {"model": "chat", "input": "hi"},
}


def config(upstream: FakeUpstream) -> dict[str, Any]:
    return {
        "targets": {"up": {"provider": "openai", "base_url": upstream.base_url, "model": "m", "price": PRICE}},
        "tenants": {"acme": {"keys": [KEY], "limits": {"concurrency": 1}}},
        "tasks": {"chat": {"route": ["up"]}},
    }


async def leave_early(app: App, path: str, body: dict[str, Any], after_s: float) -> list[MutableMapping[str, Any]]:
    """A stream request whose client hangs up ``after_s`` after sending it; what was sent to it."""
    data = orjson.dumps(body | {"stream": True})
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "query_string": b"",
        "headers": [
            (b"authorization", f"Bearer {KEY}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
        ],
    }
    sent: list[MutableMapping[str, Any]] = []
    read = False

    async def receive() -> dict[str, Any]:
        nonlocal read
        if not read:
            read = True
            return {"type": "http.request", "body": data, "more_body": False}
        await asyncio.sleep(after_s)
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app.http(scope, receive, send)
    return sent


@pytest.mark.parametrize("path", list(DOORS))
async def test_a_stream_left_before_its_first_chunk_frees_its_slot_and_is_a_499(
    make_app: AppFactory, path: str
) -> None:
    async with FakeUpstream(reply=("Hello",)) as upstream:
        app = await make_app(config(upstream))
        upstream.fault = Fault(head_delay=30.0, times=1)  # far past anything the test waits for
        sent = await leave_early(app, path, DOORS[path], after_s=0.2)
        assert not [m for m in sent if m.get("status", 0) >= 500]  # nothing was answered to no one
        # The slot (concurrency 1) is free: the tenant's next request is served, not 429.
        second = await request(app, "POST", path, DOORS[path], {"authorization": f"Bearer {KEY}"})
        assert second.status == 200, second.body
        rows = sorted(await ledger_rows(app), key=lambda r: r.started_at)
        assert [(r.status, r.error_class) for r in rows] == [(499, "client_disconnected"), (200, None)]
        for _ in range(200):  # the upstream saw the gateway hang up on the abandoned call
            if upstream.disconnects:
                break
            await asyncio.sleep(0.01)
        assert upstream.disconnects == 1


async def test_a_shutdown_still_cuts_a_waiting_stream_with_503(make_app: AppFactory) -> None:
    """The watch tells a client leaving from a shutdown's cancellation."""
    async with FakeUpstream(reply=("Hello",)) as upstream:
        app = await make_app(config(upstream))
        upstream.fault = Fault(head_delay=30.0, times=1)
        task = asyncio.ensure_future(
            request(app, "POST", "/v1/chat/completions", DOORS["/v1/chat/completions"] | {"stream": True},
                    {"authorization": f"Bearer {KEY}"})
        )  # fmt: skip
        await asyncio.sleep(0.2)
        task.cancel()
        cut = await task
        assert cut.status == 503
        [row] = await ledger_rows(app)
        assert (row.status, row.error_class) == (503, "shutting_down")
