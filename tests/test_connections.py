"""Header, body and idle timeouts and the connection cap (turnout.serving.connections), on a real
uvicorn server in this process with the guarded httptools protocol and raw sockets as clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn

from tests.serving import free_port
from turnout.config import validate
from turnout.errors import ConfigError
from turnout.serving.connections import Guard, Limits, protocol_class
from turnout.serving.server import RESERVED_FDS, connection_cap

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

GET = b"GET /ok HTTP/1.1\r\nhost: t\r\n\r\n"
BIG = 4 << 20


class App:
    """/ok reads the body and answers 200 with its size; /early answers 413 without reading it;
    /block waits for ``release``; /flood streams until its client is gone (``flooded``);
    /big answers ``BIG`` bytes whole."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.blocked = 0
        self.two_blocked = asyncio.Event()
        self.flooded = asyncio.Event()
        self.guard: Guard | None = None  # the server's

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        status, size = 200, 0
        if scope["path"] == "/stream":  # an answer of unknown length, as an SSE relay sends
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            for part in (b"data: one\n\n", b"data: two\n\n", b""):
                await send({"type": "http.response.body", "body": part, "more_body": bool(part)})
            return
        if scope["path"] == "/flood":
            await self.flood(receive, send)
            return
        if scope["path"] == "/big":
            assert self.guard is not None
            for conn in self.guard.open:  # the kernel takes little of it: the rest waits in the server
                conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            head = [(b"content-type", b"text/plain"), (b"content-length", str(BIG).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": head})
            await send({"type": "http.response.body", "body": b"x" * BIG})
            return
        if scope["path"] == "/early":
            status = 413
        else:
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                size += len(message.get("body", b""))
                more = message.get("more_body", False)
            if scope["path"] == "/block":
                self.blocked += 1
                if self.blocked == 2:
                    self.two_blocked.set()
                await self.release.wait()
        body = json.dumps({"size": size}).encode()
        head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": body})

    async def flood(self, receive: Receive, send: Send) -> None:
        """As an SSE relay: parts as fast as the client takes them, until it is gone."""
        await receive()  # the request
        gone = asyncio.ensure_future(receive())
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        while not gone.done():
            await send({"type": "http.response.body", "body": b"x" * 16384, "more_body": True})
            await asyncio.sleep(0)  # a send to a client that left returns at once
        self.flooded.set()


@asynccontextmanager
async def serving(
    header: float = 30.0, body: float = 30.0, keepalive: float = 30.0, cap: int = 1000, send: float = 30.0
) -> AsyncIterator[tuple[int, App]]:
    app = App()
    port = free_port()
    protocol = protocol_class(Limits(header, body, keepalive, cap, send))
    app.guard = getattr(protocol, "guard", None)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=protocol,
        lifespan="off",
        log_level="warning",
        timeout_keep_alive=3600,  # leave idle connections to the guard
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn has a flag, no event
        await asyncio.sleep(0.01)
    try:
        yield port, app
    finally:
        app.release.set()
        server.should_exit = True
        await task


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def response(reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
    """One response: its status and JSON body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode().split("\r\n")
    length = next(int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length"))
    body = await reader.readexactly(length)
    return int(lines[0].split()[1]), json.loads(body)


async def closed_after(reader: asyncio.StreamReader, start: float, limit_s: float = 10.0) -> tuple[bytes, float]:
    """Everything the server sent until it closed, and when it closed (seconds after
    ``start``); fails if it is still open after ``limit_s``."""
    data = await asyncio.wait_for(reader.read(), limit_s)
    return data, asyncio.get_running_loop().time() - start


async def trickle(writer: asyncio.StreamWriter, data: bytes, every_s: float) -> None:
    """Send ``data`` a byte at a time until it is all sent or the server closes."""
    try:
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(every_s)
    except (ConnectionError, OSError):
        pass


def now() -> float:
    return asyncio.get_running_loop().time()


async def test_headers_sent_a_byte_at_a_time_get_408_after_the_header_timeout() -> None:
    async with serving(header=0.5) as (port, _):
        reader, writer = await connect(port)
        start = now()
        sender = asyncio.create_task(trickle(writer, b"GET /ok HTTP/1.1\r\nx-pad: " + b"a" * 1000, 0.05))
        data, at = await closed_after(reader, start)
        sender.cancel()
        writer.close()
    assert data.startswith(b"HTTP/1.1 408 "), data
    error = json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]
    assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error"
    assert at >= 0.5  # never before the timeout, though bytes kept coming


@pytest.mark.parametrize(
    ("request_head", "anthropic"),
    [
        (b"POST /v1/messages HTTP/1.1\r\nx-pad: ", True),
        (b"POST /v1/messages/count_tokens?beta=true HTTP/1.1\r\nx-pad: ", True),
        (b"POST /v1/%6Dessages HTTP/1.1\r\nx-pad: ", True),  # uvicorn's scope path decodes it
        (b"POST /v1/messagesx HTTP/1.1\r\nx-pad: ", False),
        (b"POST /v1/chat/completions HTTP/1.1\r\nx-pad: ", False),
    ],
)
async def test_a_late_request_to_the_messages_api_gets_its_408_in_anthropics_shape(
    request_head: bytes, anthropic: bool
) -> None:
    """The Anthropic SDKs read errors in their own shape on /v1/messages and every path under it,
    a refusal made before the app sees the request included."""
    async with serving(header=0.3) as (port, _):
        reader, writer = await connect(port)
        writer.write(request_head + b"a" * 100)
        data, _ = await closed_after(reader, now())
        writer.close()
    assert data.startswith(b"HTTP/1.1 408 "), data
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    if anthropic:
        assert body == {
            "type": "error",
            "error": {"type": "timeout_error", "message": "the request was not received in time"},
        }
    else:
        assert body["error"]["code"] == "request_timeout" and body["error"]["type"] == "invalid_request_error"


async def test_a_late_body_to_the_messages_api_gets_its_408_in_anthropics_shape() -> None:
    async with serving(body=0.3) as (port, _):
        reader, writer = await connect(port)
        writer.write(b"POST /v1/messages HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\n{")
        data, _ = await closed_after(reader, now())
        writer.close()
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["type"] == "timeout_error"


@pytest.mark.parametrize(
    ("raw", "anthropic"),
    [
        (b"POST /v1/messages HTTP/1.1\r\nhost: t\r\nx-user: a\x00b\r\n\r\n", True),
        (b"POST /v1/messages HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", True),
        (b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nx-user: a\x00b\r\n\r\n", False),
        (b"BREW /v1/messages HTTP/1.1\r\n\r\n", False),  # refused before the path was read
    ],
)
async def test_what_the_http_parser_refuses_on_the_messages_api_is_in_anthropics_shape(
    raw: bytes, anthropic: bool
) -> None:
    async with serving() as (port, _):
        reader, writer = await connect(port)
        writer.write(raw)
        data, _ = await closed_after(reader, now())
        writer.close()
    assert data.startswith(b"HTTP/1.1 400 "), data
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    if anthropic:
        assert body == {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "Invalid HTTP request received."},
        }
    else:
        assert body["error"]["code"] == "invalid_http"


async def test_a_connection_that_sends_nothing_is_closed_without_an_answer() -> None:
    async with serving(header=0.4) as (port, _):
        reader, writer = await connect(port)
        data, at = await closed_after(reader, now())
        writer.close()
    assert data == b""
    assert at >= 0.4


async def test_a_body_trickled_faster_than_the_timeout_still_gets_408_when_the_whole_body_is_late() -> None:
    async with serving(body=0.6) as (port, _):
        reader, writer = await connect(port)
        writer.write(b"POST /ok HTTP/1.1\r\nhost: t\r\ncontent-length: 1000\r\n\r\n")
        start = now()
        sender = asyncio.create_task(trickle(writer, b"x" * 1000, 0.05))  # each gap well under 0.6 s
        data, at = await closed_after(reader, start)
        sender.cancel()
        writer.close()
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert at >= 0.6


async def test_a_body_in_pieces_within_the_timeout_is_answered() -> None:
    async with serving(header=1.0, body=1.0) as (port, _):
        reader, writer = await connect(port)
        writer.write(b"POST /ok HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n\r\n12345")
        await asyncio.sleep(0.3)
        writer.write(b"67890")
        status, body = await response(reader)
        writer.close()
    assert (status, body) == (200, {"size": 10})


async def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout() -> None:
    async with serving(keepalive=0.5) as (port, _):
        reader, writer = await connect(port)
        writer.write(GET)
        assert (await response(reader))[0] == 200
        start = now()
        data, at = await closed_after(reader, start)
        writer.close()
    assert data == b""
    assert at >= 0.5


async def test_empty_lines_on_an_idle_connection_do_not_keep_it_open() -> None:
    # Blank lines between requests are skipped by the parser: no request begins, and every
    # byte would cancel uvicorn's own keep-alive timer.
    async with serving(keepalive=0.5) as (port, _):
        reader, writer = await connect(port)
        writer.write(GET)
        assert (await response(reader))[0] == 200
        start = now()
        sender = asyncio.create_task(trickle(writer, b"\r\n" * 500, 0.05))
        data, at = await closed_after(reader, start)
        sender.cancel()
        writer.close()
    assert data == b""
    assert at >= 0.5


async def test_a_keep_alive_connection_in_use_stays_open_past_the_timeouts() -> None:
    async with serving(header=0.4, body=0.4, keepalive=0.4) as (port, _):
        reader, writer = await connect(port)
        for _ in range(8):  # 1.6 s of requests 0.2 s apart on one connection
            writer.write(GET)
            assert (await response(reader))[0] == 200
            await asyncio.sleep(0.2)
        writer.close()


async def test_a_request_answered_past_the_body_timeout_neither_is_cut_nor_stops_the_sweep() -> None:
    """Seen: an answer taking longer than body_timeout_s (a long completion, any stream) was
    judged against the timeout of the phase it had left (its old stamp), the sweep raised
    KeyError on it and stopped: no connection was closed for time until a new one came."""
    async with serving(body=0.3, keepalive=0.2) as (port, app):
        busy_reader, busy_writer = await connect(port)
        busy_writer.write(b"GET /block HTTP/1.1\r\nhost: t\r\n\r\n")
        idle_reader, idle_writer = await connect(port)  # no new connection after this one
        await asyncio.sleep(0.6)  # the long answer is past the body timeout
        idle_writer.write(GET)
        assert (await response(idle_reader))[0] == 200
        start = now()
        data, _ = await closed_after(idle_reader, start)  # closed when idle past keepalive
        assert data == b""
        app.release.set()
        assert (await response(busy_reader))[0] == 200  # the long answer was not cut
        busy_writer.close()
        idle_writer.close()


async def test_an_early_answer_while_the_body_trickles_does_not_keep_the_connection_forever() -> None:
    # /early answers 413 without reading the body; the client keeps sending it slowly, which
    # cancels uvicorn's own keep-alive timer every time a byte arrives.
    async with serving(keepalive=0.5) as (port, _):
        reader, writer = await connect(port)
        writer.write(b"POST /early HTTP/1.1\r\nhost: t\r\ncontent-length: 1000\r\n\r\n")
        status, _ = await response(reader)
        start = now()
        sender = asyncio.create_task(trickle(writer, b"x" * 1000, 0.05))
        data, _ = await closed_after(reader, start)
        sender.cancel()
        writer.close()
    assert status == 413
    assert data == b""


async def test_at_the_cap_the_oldest_idle_connection_makes_room() -> None:
    async with serving(cap=4) as (port, _):
        idle = []
        for _ in range(4):
            reader, writer = await connect(port)
            writer.write(GET)
            assert (await response(reader))[0] == 200
            idle.append((reader, writer))
            await asyncio.sleep(0.05)  # a clear order of age
        reader, writer = await connect(port)
        writer.write(GET)
        assert (await response(reader))[0] == 200
        oldest, _ = await closed_after(idle[0][0], now())
        assert oldest == b""
        for r, w in idle[1:]:  # the others still serve
            w.write(GET)
            assert (await response(r))[0] == 200
        for _, w in [*idle, (reader, writer)]:
            w.close()


async def test_at_the_cap_slow_senders_make_room_for_a_new_client() -> None:
    async with serving(cap=3) as (port, _):
        slow = []
        for _ in range(3):
            r, w = await connect(port)
            w.write(b"GET /ok HTTP/1.1\r\nx-pad: a")  # headers never finish
            slow.append((r, w))
            await asyncio.sleep(0.05)
        reader, writer = await connect(port)
        writer.write(GET)
        assert (await response(reader))[0] == 200
        data, _ = await closed_after(slow[0][0], now())
        assert data.startswith(b"HTTP/1.1 503 "), data
        assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "too_many_connections"
        for _, w in [*slow, (reader, writer)]:
            w.close()


async def test_a_slow_sender_to_the_messages_api_made_to_make_room_gets_anthropics_529() -> None:
    """Anthropic's "overloaded" is 529 ``overloaded_error`` (its SDKs' ``OverloadedError``)."""
    async with serving(cap=1) as (port, _):
        slow_reader, slow_writer = await connect(port)
        slow_writer.write(b"POST /v1/messages HTTP/1.1\r\nx-pad: a")  # headers never finish
        await asyncio.sleep(0.05)
        reader, writer = await connect(port)
        writer.write(GET)
        assert (await response(reader))[0] == 200
        data, _ = await closed_after(slow_reader, now())
        assert data.startswith(b"HTTP/1.1 529 Overloaded\r\n"), data
        assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["type"] == "overloaded_error"
        for w in (slow_writer, writer):
            w.close()


async def test_at_the_cap_with_every_connection_being_answered_a_new_one_is_refused() -> None:
    async with serving(cap=2) as (port, app):
        busy = []
        for _ in range(2):
            r, w = await connect(port)
            w.write(b"GET /block HTTP/1.1\r\nhost: t\r\n\r\n")
            busy.append((r, w))
        await asyncio.wait_for(app.two_blocked.wait(), 10)
        reader, writer = await connect(port)
        writer.write(GET)
        refused, _ = await closed_after(reader, now())
        writer.close()
        app.release.set()
        answers = [await response(r) for r, _ in busy]  # never cut for the newcomer
        for _, w in busy:
            w.close()
    assert refused == b""
    assert [status for status, _ in answers] == [200, 200]


async def test_pipelined_requests_are_all_answered() -> None:
    async with serving(header=0.5, body=0.5, keepalive=0.5) as (port, _):
        reader, writer = await connect(port)
        writer.write(GET + b"POST /ok HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\n\r\nabc" + GET)
        statuses = [await response(reader) for _ in range(3)]
        writer.close()
    assert statuses == [(200, {"size": 0}), (200, {"size": 3}), (200, {"size": 0})]


async def not_reading(port: int, request: bytes) -> socket.socket:
    """A client that sends ``request`` and then takes none of the answer (a small receive
    window, never read)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, request)
    return sock


async def test_a_client_that_stops_taking_a_stream_is_dropped_and_the_stream_ends() -> None:
    """Seen: a stream's client that stopped reading (its TCP window full) held the relay in its
    send for as long as it kept the connection open, with the upstream call, the concurrency
    slot and the row: the app never learnt that the client was gone."""
    async with serving(send=0.3, keepalive=0.3) as (port, app):
        sock = await not_reading(port, b"GET /flood HTTP/1.1\r\nhost: t\r\n\r\n")
        try:
            await asyncio.wait_for(app.flooded.wait(), 20)  # the app was told the client left
        finally:
            sock.close()


async def test_a_whole_answer_its_client_does_not_take_is_dropped_not_kept_to_be_sent() -> None:
    """An answer sent whole to a client that reads none of it: closing the connection gracefully
    would keep the socket and the unsent megabytes until the client reads them, which it never
    does. What the client finds when it reads at last is the answer cut short."""
    async with serving(send=0.3, keepalive=0.3) as (port, app):
        sock = await not_reading(port, b"GET /big HTTP/1.1\r\nhost: t\r\n\r\n")
        guard = app.guard
        assert guard is not None
        try:
            for held in (False, True):  # until the server has it, then until it let go of it
                for _ in range(400):
                    if bool(guard.open) != held:
                        break
                    await asyncio.sleep(0.05)
                assert bool(guard.open) != held
            reader, writer = await asyncio.open_connection(sock=sock)
            received = 0
            with contextlib.suppress(ConnectionError):
                while chunk := await asyncio.wait_for(reader.read(1 << 20), 10):
                    received += len(chunk)
            writer.close()
        finally:
            sock.close()
    assert received < BIG


async def test_a_client_that_reads_a_stream_slowly_gets_all_of_it() -> None:
    async with serving(send=1.0, keepalive=0.3) as (port, _):
        reader, writer = await connect(port)
        writer.write(b"GET /big HTTP/1.1\r\nhost: t\r\n\r\n")
        received = 0
        while received < BIG:
            chunk = await asyncio.wait_for(reader.read(1 << 16), 10)
            assert chunk, f"closed after {received} bytes"
            received += len(chunk)
            await asyncio.sleep(0.02)  # the whole answer takes seconds, past the send timeout
        writer.close()


# -- the cap and the open-file limit ---------------------------------------------------------


def test_the_default_cap_is_half_the_descriptors_left_after_the_reserve() -> None:
    assert connection_cap(None, 1024) == (1024 - RESERVED_FDS) // 2
    assert connection_cap(100, 1024) == 100
    assert connection_cap(5000, 1024) == (1024 - RESERVED_FDS) // 2  # lowered: there are not so many
    assert connection_cap(None, 10) == 1
    assert connection_cap(None, None) > 1000  # unlimited


def test_serve_raises_the_soft_open_file_limit_to_the_hard_one_and_says_so() -> None:
    code = (
        "import logging, resource\n"
        "logging.basicConfig(level='INFO', format='%(message)s')\n"
        "from turnout.serving.server import raise_open_file_limit\n"
        "print(raise_open_file_limit(), resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    done = subprocess.run(
        ["prlimit", "--nofile=256:2048", sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2048 (2048, 2048)"
    assert "open-file limit raised from 256 to 2048" in done.stderr


@pytest.mark.parametrize(
    "key", ["header_timeout_s", "body_timeout_s", "keepalive_timeout_s", "send_timeout_s", "max_connections"]
)
def test_timeouts_and_the_cap_must_be_positive(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate({"server": {key: 0}})
    assert any(p.startswith(f"server.{key}") for p in info.value.problems)


@pytest.mark.parametrize("version", [b"HTTP/1.0", b"HTTP/1.1"])
async def test_a_stream_to_an_http_1_0_client_is_not_chunked(version: bytes) -> None:
    """HTTP/1.0 has no chunked encoding: its client read the chunk sizes as part of the stream.
    It gets the bytes as they are, ended by the close; an HTTP/1.1 client still gets chunks."""
    async with serving() as (port, _):
        reader, writer = await connect(port)
        writer.write(b"GET /stream %b\r\nhost: t\r\nconnection: close\r\n\r\n" % version)
        data, _ = await closed_after(reader, now())
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if version == b"HTTP/1.0":
        assert b"transfer-encoding" not in head.lower() and b"content-length" not in head.lower()
        assert body == b"data: one\n\ndata: two\n\n"
    else:
        assert b"transfer-encoding: chunked" in head.lower()
        assert body == b"b\r\ndata: one\n\n\r\nb\r\ndata: two\n\n\r\n0\r\n\r\n"
