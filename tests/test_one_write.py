"""A response head goes out with its body in one write when the body follows in the same turn of
the loop (turnout.serving.connections.OneWrite), and by itself at the end of the turn otherwise:
a stream's head never waits for its first chunk. Unit tests on a recording transport, then a real
uvicorn server with the guarded protocol and raw sockets as clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn

from tests.serving import free_port
from turnout.serving.connections import JOIN_MAX, Limits, OneWrite, protocol_class

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Recorder:
    """A transport that keeps what was written, one entry per write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> str:
        return f"extra:{name}"


def one_write(recorder: Recorder) -> OneWrite:
    return OneWrite(recorder, asyncio.get_running_loop())  # type: ignore[arg-type]


async def test_a_head_and_a_body_in_the_same_turn_are_one_write() -> None:
    rec = Recorder()
    out = one_write(rec)
    out.write(b"HEAD")
    out.write(b"BODY")
    await asyncio.sleep(0)  # the end of the turn finds nothing left to send
    assert rec.writes == [b"HEADBODY"]


async def test_a_head_without_a_body_goes_out_at_the_end_of_the_turn() -> None:
    rec = Recorder()
    out = one_write(rec)
    out.write(b"HEAD")
    assert rec.writes == []
    await asyncio.sleep(0)
    assert rec.writes == [b"HEAD"]
    out.write(b"chunk 1")
    out.write(b"chunk 2")
    assert rec.writes == [b"HEAD", b"chunk 1", b"chunk 2"]


async def test_a_large_body_is_not_copied_into_the_head() -> None:
    rec = Recorder()
    out = one_write(rec)
    body = b"x" * (JOIN_MAX + 1)
    out.write(b"HEAD")
    out.write(body)
    assert rec.writes == [b"HEAD", body]
    assert rec.writes[1] is body


async def test_close_sends_a_waiting_head_first() -> None:
    rec = Recorder()
    out = one_write(rec)
    out.write(b"HEAD")
    out.close()
    assert rec.writes == [b"HEAD"] and rec.closed and out.is_closing()
    await asyncio.sleep(0)
    assert rec.writes == [b"HEAD"]  # not twice


async def test_a_head_whose_client_left_before_the_end_of_the_turn_is_dropped() -> None:
    rec = Recorder()
    out = one_write(rec)
    out.write(b"HEAD")
    rec.close()  # the connection was lost (the server closes the transport, not the answer)
    await asyncio.sleep(0)  # no write on a closed transport, no error in the loop
    assert rec.writes == []


async def test_other_transport_calls_reach_the_transport() -> None:
    out = one_write(Recorder())
    assert out.get_extra_info("peername") == "extra:peername"


class App:
    """/whole: a JSON answer; /stream: a head, then a chunk after ``delay_s``; /big: a body past
    JOIN_MAX; /echo: the body read back (for ``Expect: 100-continue``)."""

    delay_s = 0.5

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        path = scope["path"]
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await asyncio.sleep(self.delay_s)
            await send({"type": "http.response.body", "body": b"late", "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        answer = {"/whole": b'{"ok":true}', "/big": b"b" * (JOIN_MAX * 3), "/echo": body}[path]
        head = [(b"content-type", b"application/octet-stream"), (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": answer})


@asynccontextmanager
async def serving() -> AsyncIterator[int]:
    port = free_port()
    config = uvicorn.Config(
        App(),
        host="127.0.0.1",
        port=port,
        http=protocol_class(Limits(30.0, 30.0, 30.0, 100)),
        lifespan="off",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn has a flag, no event
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await task


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    return head, await reader.readexactly(length)


async def test_whole_answers_on_one_keep_alive_connection() -> None:
    async with serving() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for path in ("/whole", "/big", "/whole"):
            writer.write(f"GET {path} HTTP/1.1\r\nhost: t\r\n\r\n".encode())
            head, body = await read_response(reader)
            assert head.startswith(b"HTTP/1.1 200")
            assert body == (b'{"ok":true}' if path == "/whole" else b"b" * (JOIN_MAX * 3))
        writer.close()


async def test_a_stream_head_arrives_before_its_first_chunk() -> None:
    async with serving() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        start = time.monotonic()
        writer.write(b"GET /stream HTTP/1.1\r\nhost: t\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        head_s = time.monotonic() - start
        assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head
        assert head_s < App.delay_s * 0.8, f"the head waited {head_s:.3f} s for the first chunk"
        rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        assert b"late" in rest
        writer.close()


@pytest.mark.parametrize("pipelined", [False, True])
async def test_expect_100_continue_comes_before_the_answer(pipelined: bool) -> None:
    async with serving() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b"sent after the go-ahead"
        writer.write(
            b"POST /echo HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: %d\r\n\r\n" % len(body)
        )
        if not pipelined:
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        if pipelined:
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        head, echoed = await asyncio.wait_for(read_response(reader), 5)
        assert head.startswith(b"HTTP/1.1 200") and echoed == body
        writer.close()
