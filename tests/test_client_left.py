"""A client that leaves a non-streaming request before its answer, behind the real server (uvicorn
with turnout's protocol, ``serving/connections.py``): the upstream call goes on (it is being
generated, so it is paid for, and its concurrency slot stays taken until it ends, as the upstream's
work does), and the request's row says 499 ``client_disconnected`` with the answer's cost, not 200
for an answer nobody received. A client that stays gets its 200 row as before."""

from __future__ import annotations

import asyncio
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
