"""The lean HTTP/1.1 client (turnout.providers.h1) against raw TCP servers that answer exactly
the bytes each test gives: every way a response can be framed, every way it can break, and the
pool's promises (reuse, limits, nothing reused that should not be)."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from yarl import URL

from turnout.providers.h1 import MAX_BODY, MAX_HEAD, BadResponse, CannotConnect, ConnectTimeout, Disconnected, H1Pool

Answer = Callable[[bytes], bytes | None]  # the request's bytes → the raw answer (None: hang up)


class RawServer:
    """Reads one request at a time (head + Content-Length body) and writes ``answer``'s bytes."""

    def __init__(self, answer: Answer, *, close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> URL:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return URL(f"http://127.0.0.1:{port}")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                raw = self.answer(request)
                if raw is None:
                    break
                writer.write(raw)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serving(answer: Answer, **kw: bool) -> AsyncIterator[RawServer]:
    raw = RawServer(answer, **kw)
    raw.server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    try:
        yield raw
    finally:
        raw.server.close()
        for writer in raw.writers:
            writer.close()
        await asyncio.sleep(0.01)  # the handlers see their connections end


def ok(body: bytes = b'{"ok":true}', extra: bytes = b"") -> Answer:
    return lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def post(pool: H1Pool, body: bytes = b"{}") -> tuple[int, bytes]:
    resp = await pool.post("/v1/chat/completions", body, 2.0)
    try:
        return resp.status, await resp.read()
    finally:
        resp.release()


def pool_for(server: RawServer, limit: int = 4, keepalive_s: float = 30.0) -> H1Pool:
    return H1Pool(server.url, limit, keepalive_s, {"Content-Type": "application/json", "Authorization": "Bearer k"})


async def test_a_request_carries_its_headers_and_body() -> None:
    async with serving(ok()) as server:
        pool = pool_for(server)
        assert await post(pool, b'{"a":1}') == (200, b'{"ok":true}')
        [request] = server.requests
        assert request.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
        assert f"Host: 127.0.0.1:{server.url.port}\r\n".encode() in request
        assert b"Authorization: Bearer k\r\n" in request
        assert request.endswith(b'Content-Length: 7\r\n\r\n{"a":1}')
        await pool.aclose()


async def test_keep_alive_connections_are_reused() -> None:
    async with serving(ok()) as server:
        pool = pool_for(server)
        for _ in range(5):
            assert (await post(pool))[0] == 200
        assert server.connections == 1
        await pool.aclose()


async def test_connection_close_is_not_reused() -> None:
    async with serving(ok(extra=b"Connection: close\r\n"), close_after=True) as server:
        pool = pool_for(server)
        for _ in range(3):
            assert (await post(pool))[0] == 200
        assert server.connections == 3
        await pool.aclose()


async def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    async with serving(ok(), close_after=True) as server:  # closes without saying so
        pool = pool_for(server)
        assert (await post(pool))[0] == 200
        await asyncio.sleep(0.05)  # the close reaches the client while the connection is idle
        assert (await post(pool))[0] == 200
        assert server.connections == 2
        await pool.aclose()


async def test_a_kept_alive_connection_closed_as_the_request_went_out_is_retried_once_on_a_new_one() -> None:
    """The server closes a kept-alive connection (its idle timeout) just as a request goes out
    on it, without a byte of answer: that request was a 502 "server disconnected", counted
    against the breaker, for half the calls to such a server under load. It is sent once
    more, on a new connection, and only once."""
    answers = iter([ok()(b""), None, ok()(b"")])  # the second request is hung up on
    async with serving(lambda _: next(answers)) as server:
        pool = pool_for(server)
        assert (await post(pool))[0] == 200
        assert (await post(pool))[0] == 200
        assert (server.connections, len(server.requests)) == (2, 3)
        await pool.aclose()
    answers = iter([ok()(b""), None, None])
    async with serving(lambda _: next(answers)) as server:
        pool = pool_for(server)
        await post(pool)
        with pytest.raises(Disconnected, match="server disconnected"):
            await post(pool)  # the new connection hung up on too: the call's failure
        assert (server.connections, len(server.requests)) == (2, 3)
        await pool.aclose()


async def test_an_answer_begun_on_a_kept_alive_connection_is_not_sent_again() -> None:
    requests = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        for answer in (ok()(b""), b"HTTP/1.1 200 OK\r\nContent-Le"):  # the second: cut in its head
            await reader.readuntil(b"\r\n\r\n{}")
            requests += 1
            writer.write(answer or b"")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    pool = H1Pool(URL(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"), 4, 30.0)
    await post(pool)
    with pytest.raises(Disconnected, match="server disconnected"):
        await post(pool)
    assert requests == 2  # not sent again: the server had begun to answer it
    await pool.aclose()
    server.close()


async def test_idle_connections_expire_after_keepalive() -> None:
    async with serving(ok()) as server:
        pool = pool_for(server, keepalive_s=0.05)
        await post(pool)
        await asyncio.sleep(0.1)
        await post(pool)
        assert server.connections == 2
        await pool.aclose()


async def test_chunked_and_compressed_and_eof_framed_bodies() -> None:
    chunked = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{"a"\r\n3\r\n:1}\r\n0\r\n\r\n'
    async with serving(lambda _: chunked) as server:
        assert await post(pool_for(server)) == (200, b'{"a":1}')
    zipped = gzip.compress(b'{"z":1}')
    async with serving(ok(zipped, b"Content-Encoding: gzip\r\n")) as server:
        assert await post(pool_for(server)) == (200, b'{"z":1}')
    deflated = zlib.compress(b'{"d":1}')
    async with serving(ok(deflated, b"Content-Encoding: deflate\r\n")) as server:
        assert await post(pool_for(server)) == (200, b'{"d":1}')
    async with serving(lambda _: b'HTTP/1.0 200 OK\r\n\r\n{"eof":1}', close_after=True) as server:
        assert await post(pool_for(server)) == (200, b'{"eof":1}')


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (ok(gzip.compress(b"\0" * (MAX_BODY + 1)), b"Content-Encoding: gzip\r\n"), "body too large"),
        (ok(zlib.compress(b"\0" * (MAX_BODY * 2)), b"Content-Encoding: deflate\r\n"), "body too large"),
        (ok(gzip.compress(b'{"z":1}')[:-6], b"Content-Encoding: gzip\r\n"), "invalid compressed body"),
        (ok(b'{"z":1}', b"Content-Encoding: br\r\n"), "unsupported content-encoding"),
    ],
    ids=["gzip-bomb", "deflate-bomb", "gzip-cut", "brotli"],
)
async def test_compressed_bodies_are_bounded_whole_and_asked_for(raw: Answer, words: str) -> None:
    """A gzip bomb (64 MiB of zeros is 64 KiB gzipped) was inflated whole, without bound, on
    the event loop; an encoding the client cannot read reached the JSON parser as bytes."""
    async with serving(raw) as server:
        pool = pool_for(server)
        with pytest.raises(BadResponse, match=words):
            await post(pool)
        await pool.aclose()


async def test_an_interim_100_is_skipped_and_headers_are_case_insensitive() -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 429 Too Many\r\nretry-after: 3\r\nContent-Length: 2\r\n\r\n{}"
    async with serving(lambda _: raw) as server:
        pool = pool_for(server)
        resp = await pool.post("/x", b"{}", 2.0)
        assert (resp.status, resp.reason, resp.headers["Retry-After"]) == (429, "Too Many", "3")
        assert await resp.read() == b"{}"
        resp.release()
        await pool.aclose()


@pytest.mark.parametrize(
    ("raw", "error", "words"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", BadResponse, "invalid HTTP response"),
        (b'HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"cut', Disconnected, "mid-response"),
        (b"", Disconnected, "server disconnected"),
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc", BadResponse, "compressed"),
    ],
)
async def test_broken_answers_raise_what_the_transport_maps(raw: bytes, error: type[Exception], words: str) -> None:
    async with serving(lambda _: raw, close_after=True) as server:
        pool = pool_for(server)
        with pytest.raises(error, match=words):
            await post(pool)
        assert pool._open == 0  # the broken connection is not kept
        await pool.aclose()


async def test_an_oversized_body_is_refused() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 10)
    async with serving(lambda _: head + b"x" * (MAX_BODY + 10)) as server:
        with pytest.raises(BadResponse, match="too large"):
            await post(pool_for(server))


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\n" + b"X-Flood: %s\r\n" % (b"y" * 1000) * 300,
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"y" * (MAX_HEAD * 4),
        b"HTTP/1.1 200 " + b"O" * (MAX_HEAD * 4),
        b"HTTP/1.1 103 Early Hints\r\nLink: %s\r\n\r\n" % (b"y" * 1000) * 1000,
    ],
    ids=["many-headers", "one-long-header", "long-reason", "endless-interim-heads"],
)
async def test_a_response_head_past_its_limit_is_refused(raw: bytes) -> None:
    """A head that never ends was buffered without bound until ``ttft`` (a flooding upstream
    grew the gateway by 650 MB a second, kept after): it is cut at MAX_HEAD. Each head here is
    sent and the connection then held open, so only the limit can end the call early."""
    async with serving(lambda _: raw) as server:
        pool = pool_for(server)
        with pytest.raises(BadResponse, match="response head too large"):
            async with asyncio.timeout(5):  # without the limit: until ttft
                await post(pool)
        assert pool._open == 0
        await pool.aclose()


async def test_a_head_just_under_its_limit_is_read() -> None:
    body = b'{"ok":true}'
    head = b"HTTP/1.1 200 OK\r\nX-Big: %s\r\nContent-Length: %d\r\n\r\n" % (b"y" * (MAX_HEAD - 100), len(body))
    async with serving(lambda _: head + body) as server:
        pool = pool_for(server)
        resp = await pool.post("/x", b"{}", 2.0)
        assert await resp.read() == body
        resp.release()
        await pool.aclose()


async def test_refused_and_unresolvable_say_why() -> None:
    async with serving(ok()) as server:
        url = server.url
    with pytest.raises(CannotConnect) as refused:
        await post(H1Pool(url, 1, 30.0))
    assert refused.value.os_error.errno is not None
    with pytest.raises(CannotConnect):
        await post(H1Pool(URL("http://no-such-host.invalid"), 1, 30.0))


async def test_a_connect_that_never_completes_is_a_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    async def unanswered(*args: object, **kw: object) -> None:
        await asyncio.Event().wait()  # a SYN nobody answers

    monkeypatch.setattr(asyncio.get_running_loop(), "create_connection", unanswered)
    pool = H1Pool(URL("http://127.0.0.1:81"), 1, 30.0)
    with pytest.raises(ConnectTimeout):
        await pool.post("/", b"", 0.05)
    assert pool._open == 0


async def test_the_limit_holds_and_waiters_get_connections_in_turn() -> None:
    gate = asyncio.Event()
    answered = 0

    def held(_: bytes) -> bytes:
        nonlocal answered
        answered += 1
        return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    async with serving(held) as server:
        pool = pool_for(server, limit=2)

        async def call() -> tuple[int, bytes]:
            await gate.wait()
            return await post(pool)

        calls = [asyncio.ensure_future(call()) for _ in range(6)]
        gate.set()
        assert [status for status, _ in await asyncio.gather(*calls)] == [200] * 6
        assert server.connections == 2  # six calls, never more than two connections
        assert answered == 6
        await pool.aclose()


async def test_a_cancelled_call_closes_its_connection() -> None:
    hang = asyncio.Event()

    def never(_: bytes) -> bytes | None:
        return b'HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{"par'  # the rest never comes

    async with serving(never) as server:
        pool = pool_for(server)
        resp = await pool.post("/", b"{}", 2.0)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await resp.read()
        resp.release()  # not read to its end: closed, not pooled
        assert pool._open == 0 and not pool._idle
        hang.set()
        await pool.aclose()


async def test_header_values_with_line_breaks_are_refused() -> None:
    with pytest.raises(ValueError, match="line break"):
        H1Pool(URL("http://127.0.0.1:1"), 1, 30.0, {"X-Evil": "a\r\nInjected: 1"})
    with pytest.raises(ValueError, match="http"):
        H1Pool(URL("ftp://127.0.0.1/"), 1, 30.0)


async def test_a_closed_pool_refuses_new_calls() -> None:
    async with serving(ok()) as server:
        pool = pool_for(server)
        await post(pool)
        await pool.aclose()
        with pytest.raises(Disconnected, match="closed"):
            await post(pool)


def test_it_works_on_uvloop_as_turnout_serve_runs_it() -> None:
    # uvloop's transports are not asyncio.Transport subclasses: nothing may assume they are.
    import uvloop

    async def main() -> tuple[int, bytes]:
        async with serving(ok()) as server:
            pool = pool_for(server)
            try:
                await post(pool)
                return await post(pool)
            finally:
                await pool.aclose()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main()) == (200, b'{"ok":true}')
