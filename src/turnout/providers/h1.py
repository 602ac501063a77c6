"""A lean HTTP/1.1 client for the hot path: one non-streaming POST on a pooled keep-alive
connection, parsed by ``httptools`` (llhttp, the parser uvicorn serves with).

Why not aiohttp here: its request machinery costs about 85 µs of CPU per call on this machine
against about 18 µs for this client (``bench/README.md``), and a gateway on one core pays that
on every request. aiohttp stays for what this client does not do: streams, health probes,
Bedrock, URLs with credentials.

It does only what a model server's answer needs: ``POST`` with a body and a fixed set of
headers; a response framed by ``Content-Length``, chunked, or the connection's end; ``gzip`` /
``deflate`` bodies (never asked for: no ``Accept-Encoding`` is sent; inflated to at most
``MAX_BODY``, any other encoding refused); TLS with the default
context. A connection goes back to the pool only after a complete response that allows
keep-alive; anything else (a cancelled call, a parse error, ``Connection: close``) closes it.
A response head past ``MAX_HEAD`` or a body past ``MAX_BODY`` is refused.
Idle connections are dropped after ``keepalive_s`` and when the server closes them; one the
server closes just as a request goes out on it, before a byte of answer, is replaced and the
request sent once more (``H1Pool.post``). At most
``max_connections`` are open; callers beyond that wait for one.

Failures are raised as OSError subclasses (``Disconnected``, the OS's own), ``ConnectTimeout``
or ``BadResponse``; ``turnout.providers.transport`` maps them like aiohttp's.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque
from collections.abc import Mapping

import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

MAX_BODY = 64 << 20  # an answer larger than this is not a chat completion
# A response head (status line and headers, interim 1xx heads included) larger than this is not
# a model server's: one that never ends would otherwise be buffered without bound until ``ttft``.
MAX_HEAD = 256 << 10
_COMPRESSED = frozenset({"gzip", "x-gzip", "deflate"})


class Disconnected(ConnectionError):
    """The server closed the connection before its answer was complete."""


class CannotConnect(ConnectionError):
    """The TCP/TLS handshake failed; ``os_error`` says why."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(os_error.errno, os_error.strerror)
        self.os_error = os_error


class ConnectTimeout(TimeoutError):
    """The TCP/TLS handshake outlasted ``connect``."""


class BadResponse(Exception):
    """Not a valid HTTP/1.1 response."""


class _Conn(asyncio.Protocol):
    """One connection: a response at a time, head and body each a future."""

    def __init__(self, pool: H1Pool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop  # the one it was opened on: asked once here, not on every use (a getpid() each)
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.head: asyncio.Future[None] | None = None
        self.done: asyncio.Future[bytes] | None = None
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.head_size = 0  # bytes read while the head was incomplete
        self.framed = False  # Content-Length or chunked: else the body runs to the connection's end
        self.complete = False
        self.keep_alive = False
        self.closed = False
        self.idle_since = 0.0
        self.lent = False  # handed to a caller, not yet given back
        self.reused = False  # it has answered before: the server may close it as a request goes out
        self.heard = False  # a byte of the current response arrived
        self.counted = True  # one of the pool's open connections

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's TCPTransport does not subclass asyncio.Transport.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.done is None:  # nothing asked: a server talking out of turn
            self.close()
            return
        self.heard = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"invalid HTTP response ({type(exc).__name__})"))
            self.close()
            return
        head = self.head
        if head is not None and not head.done():  # all of ``data`` was head, and it goes on
            self.head_size += len(data)
            if self.head_size > MAX_HEAD:
                self._fail(BadResponse("response head too large"))
                self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.done is not None and not self.done.done():
            head_seen = self.head is not None and self.head.done()
            if head_seen and not self.framed and exc is None:
                self.on_message_complete()  # the body ran to the connection's end, as framed
            else:
                self._fail(Disconnected("connection lost mid-response" if head_seen else "server disconnected"))
        self.pool._lost(self)

    # --- httptools callbacks ---------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self.reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()  # known here; llhttp forgets it at the end
        lowered = {k.lower(): v for k, v in self.headers}
        self.framed = "content-length" in lowered or "chunked" in lowered.get("transfer-encoding", "").lower()
        if self.status < 200:  # 1xx: an interim answer, the real one follows
            self.headers, self.reason = [], ""
            return
        if self.head is not None and not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > MAX_BODY:
            self._fail(BadResponse("response body too large"))
            self.close()
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.status < 200:
            return
        self.complete = True
        if self.head is not None and not self.head.done():
            self.head.set_result(None)
        if self.done is not None and not self.done.done():
            self.done.set_result(b"".join(self.body))

    # --- use -------------------------------------------------------------------------------

    def send(self, request: bytes) -> None:
        loop = self.loop
        self.head, self.done = loop.create_future(), loop.create_future()
        self.status, self.reason, self.headers, self.body, self.size, self.head_size = 0, "", [], [], 0, 0
        self.complete = self.keep_alive = self.heard = False
        assert self.transport is not None
        self.transport.write(request)

    def reusable(self) -> bool:
        return self.complete and not self.closed and self.keep_alive

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def _fail(self, exc: Exception) -> None:
        for fut in (self.head, self.done):
            if fut is not None and not fut.done():
                fut.set_exception(exc)
                fut.exception()  # retrieved here: a body nobody reads must not log a warning


class H1Response:
    """What ``Exchange`` reads from a response: the same names as aiohttp's."""

    __slots__ = ("_conn", "headers", "reason", "status")

    def __init__(self, conn: _Conn) -> None:
        self._conn = conn
        self.status = conn.status
        self.reason = conn.reason
        self.headers = CIMultiDictProxy(CIMultiDict(conn.headers))

    async def read(self) -> bytes:
        done = self._conn.done
        assert done is not None
        body = await done
        encoding = self.headers.get("Content-Encoding", "").strip().lower()
        if encoding in _COMPRESSED:
            # 32 + 15: gzip or zlib, by the header. At most MAX_BODY out: a small body can
            # inflate to gigabytes (64 MiB of zeros gzipped is 64 KiB).
            inflate = zlib.decompressobj(47)
            try:
                out = inflate.decompress(body, MAX_BODY + 1)
            except zlib.error as exc:
                self._conn.keep_alive = False  # what else it sent cannot be trusted either
                raise BadResponse("invalid compressed body") from exc
            if len(out) > MAX_BODY or inflate.unconsumed_tail:
                raise BadResponse("response body too large")
            if not inflate.eof:  # cut short: zlib.decompress said so, a decompressor does not
                self._conn.keep_alive = False
                raise BadResponse("invalid compressed body")
            return out
        if encoding and encoding != "identity":
            raise BadResponse("unsupported content-encoding")  # never asked for: no Accept-Encoding
        return body

    def release(self) -> None:
        """Back to the pool if the answer was read to its end and keep-alive allows, else closed."""
        conn = self._conn
        conn.pool._release(conn, conn.reusable())

    def close(self) -> None:
        self._conn.pool._release(self._conn, False)


class H1Pool:
    """Pooled connections to one origin (scheme, host, port)."""

    def __init__(
        self, origin: URL, max_connections: int, keepalive_s: float, headers: Mapping[str, str] | None = None
    ) -> None:
        if origin.scheme not in ("http", "https") or not origin.host:
            raise ValueError("an http or https URL is needed")
        self.host = origin.host
        self.port = origin.port or (443 if origin.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if origin.scheme == "https" else None
        self.max_connections = max_connections
        self.keepalive_s = keepalive_s
        host = origin.host if origin.is_default_port() else f"{origin.host}:{origin.port}"
        self._fixed = b"".join(_header(k, v) for k, v in {"Host": host, **(headers or {})}.items())
        self._idle: list[_Conn] = []
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def post(self, target: str, body: bytes, connect_s: float) -> H1Response:
        """Send; return once the response head is in. The caller reads or releases it.

        A kept-alive connection the server closes without a byte of answer was closed as the
        request went out (its idle timeout, a restart): the request is sent once more, on a new
        connection. Anything else (an answer begun, a new connection) is the call's failure."""
        request = b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n" % (target.encode(), self._fixed, len(body))
        fresh = False
        while True:
            conn = await self._acquire(connect_s, fresh)
            try:
                conn.send(request + body)
                assert conn.head is not None
                await conn.head
            except Disconnected:
                self._release(conn, False)
                if fresh or not conn.reused or conn.heard:
                    raise
                fresh = True
                continue
            except BaseException:
                self._release(conn, False)
                raise
            return H1Response(conn)

    async def aclose(self) -> None:
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(Disconnected("the client was closed"))

    # --- the pool --------------------------------------------------------------------------

    async def _acquire(self, connect_s: float, fresh: bool = False) -> _Conn:
        """A connection: an idle one, else a new one within the limit, else the next freed.
        ``fresh``: a new one (an idle one is closed to make room for it where need be)."""
        while True:
            if self._closed:
                raise Disconnected("the client was closed")
            while self._idle:
                conn = self._idle.pop()  # the most recently used: the least likely to be stale
                if not fresh and not conn.closed and conn.loop.time() - conn.idle_since < self.keepalive_s:
                    conn.lent = True
                    return conn
                conn.close()
                self._forget(conn)
                if fresh:
                    break  # room for one new connection
            if self._open < self.max_connections:
                self._open += 1
                try:
                    conn = await self._connect(connect_s)
                except BaseException:
                    self._open -= 1
                    self._wake()
                    raise
                conn.lent = True
                return conn
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    async def _connect(self, connect_s: float) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_s):
                hostname = self.host if self.ssl else None
                _, conn = await loop.create_connection(
                    lambda: _Conn(self, loop), self.host, self.port, ssl=self.ssl, server_hostname=hostname
                )
        except TimeoutError as exc:
            raise ConnectTimeout("connect") from exc
        except OSError as exc:  # refused, unreachable, DNS, TLS
            raise CannotConnect(exc) from exc
        return conn

    def _release(self, conn: _Conn, reusable: bool) -> None:
        if not conn.lent:
            return
        conn.lent = False
        if reusable and not self._closed:
            conn.reused = True
            conn.idle_since = conn.loop.time()
            conn.done = conn.head = None
            self._idle.append(conn)
        else:
            conn.close()
            self._forget(conn)
        self._wake()

    def _lost(self, conn: _Conn) -> None:
        """The connection closed (either side): an idle one leaves the pool."""
        if conn in self._idle:
            self._idle.remove(conn)
            self._forget(conn)
            self._wake()

    def _forget(self, conn: _Conn) -> None:
        if conn.counted:
            conn.counted = False
            self._open -= 1

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def _header(name: str, value: str) -> bytes:
    if any(c in name or c in value for c in "\r\n\0"):
        raise ValueError(f"header {name!r} holds a line break")
    return f"{name}: {value}\r\n".encode("latin-1")
