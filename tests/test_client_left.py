"""A client that leaves a non-streaming request before its answer, behind the real server (uvicorn
with turnout's protocol, ``serving/connections.py``): the upstream call goes on (it is being
generated, so it is paid for, and its concurrency slot stays taken until it ends, as the upstream's
work does), and the request's row says 499 ``client_disconnected`` with the answer's cost, not 200
for an answer nobody received. A client that stays gets its 200 row as before. A stream's client
that stops reading without leaving is dropped once none of its answer was taken for the send
timeout: the same 499, its slot freed and the upstream closed."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import orjson
import uvicorn

from tests.conftest import AppFactory
from tests.fakes.upstream import FakeUpstream, Fault
from tests.serving import free_port
from tests.uvicorn_app import rows
from turnout.serving.connections import Limits, protocol_class

KEY = "sk-acme-left-0123456789"
PRICE = {"input_per_mtok": 1000.0, "output_per_mtok": 1000.0}


def config(upstream: FakeUpstream) -> dict[str, Any]:
    return {
        "targets": {"up": {"provider": "openai", "base_url": upstream.base_url, "model": "m", "price": PRICE}},
        "tenants": {"acme": {"keys": [KEY], "limits": {"concurrency": 1}}},
        "tasks": {"chat": {"route": ["up"]}},
    }


def raw_request() -> bytes:
    body = orjson.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {KEY}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def test_a_client_that_leaves_before_the_answer_gets_a_499_row_with_the_cost(make_app: AppFactory) -> None:
    async with FakeUpstream(reply=("Hello", " there")) as upstream:
        app = await make_app(config(upstream))
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=port, http=protocol_class(Limits(30, 30, 30, 100)), lifespan="off",
                log_level="warning",
            )
        )  # fmt: skip
        serving = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn has a flag, no event
            await asyncio.sleep(0.01)
        try:
            upstream.fault = Fault(head_delay=0.6, times=1)
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw_request())
            await writer.drain()
            await asyncio.sleep(0.2)  # the upstream is answering
            writer.close()  # the client leaves
            await asyncio.sleep(0.8)  # the answer came, for no one
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # a client that stays
            writer.write(raw_request())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            writer.close()
            found = sorted(await rows(app, 2), key=lambda r: r.started_at)
        finally:
            server.should_exit = True
            await serving
    left, stayed = found
    assert (left.status, left.error_class) == (499, "client_disconnected")
    assert left.cost_usd is not None and left.cost_usd > 0  # generated: paid for
    assert left.completion_tokens is not None
    assert (stayed.status, stayed.error_class) == (200, None)
    assert len([r for r in upstream.requests if r.path.endswith("/chat/completions")]) == 2


def raw_stream_request() -> bytes:
    body = orjson.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {KEY}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def test_a_stream_whose_client_stops_reading_is_a_499_its_slot_freed_and_the_upstream_closed(
    make_app: AppFactory,
) -> None:
    """Seen: a client that stopped reading a stream (its TCP window full) but kept the connection
    held the relay in its send for as long as it liked, past the upstream's total deadline:
    the upstream call open, the tenant's only concurrency slot taken (429 for its next request)
    and no row."""
    async with FakeUpstream(reply=("x" * 500,) * 2000) as upstream:  # about a megabyte
        app = await make_app(config(upstream))
        upstream.fault = Fault(chunk_delay=0.002, times=1)  # still streaming when the client is dropped
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # the kernel holds little of it
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        limits = Limits(30, 30, 30, 100, send_timeout_s=0.3)
        server = uvicorn.Server(uvicorn.Config(app, http=protocol_class(limits), lifespan="off", log_level="warning"))
        serving = asyncio.create_task(server.serve(sockets=[listener]))
        while not server.started:  # noqa: ASYNC110 - uvicorn has a flag, no event
            await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.setblocking(False)
        try:
            await loop.sock_connect(stalled, ("127.0.0.1", port))
            await loop.sock_sendall(stalled, raw_stream_request())  # and never reads
            (row,) = await rows(app, 1)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # the tenant's next request
            writer.write(raw_stream_request())
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head  # not 429: the slot (concurrency 1) is free
            writer.close()
        finally:
            stalled.close()
            server.should_exit = True
            await serving
    assert (row.status, row.error_class) == (499, "client_disconnected")
    assert row.completion_tokens and row.usage_estimated  # what was generated, paid for
    assert upstream.disconnects == 1  # the first stream's upstream call was closed
