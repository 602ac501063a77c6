"""A fault-injecting TCP proxy, for putting a network between turnout and a real server
(PostgreSQL, Redis) and then breaking it. It runs on its own thread and event loop, so a test can
start it before a gateway process and switch it from synchronous code::

    with FaultProxy(5432) as proxy:          # listens on 127.0.0.1:proxy.port
        ... point the gateway at proxy.port ...
        proxy.cut()                          # every connection dropped, new ones refused
        proxy.restore()                      # listening again, on the same port
        proxy.slow(0.2, 0.5)                 # every chunk, both ways, delayed 200-500 ms
        proxy.slow(0, 0)                     # no delay again
        proxy.hang()                         # the connections open now go silent, still open

Delays are latency, not reordering: a chunk never overtakes the one read before it.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Coroutine
from typing import Any, Self, TypeVar

from tests.serving import free_port

T = TypeVar("T")
CHUNK = 65536


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.connections = 0  # accepted since the start: a restored proxy is being used again
        self._delay = (0.0, 0.0)
        self._hung_below = 0  # connections numbered below this pass nothing on (``hang``)
        self._rng = random.Random(11)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def __enter__(self) -> Self:
        self._thread.start()
        self._call(self._listen())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._call(self._shut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    # --- control, from the test's thread ---------------------------------------------------

    def cut(self) -> None:
        """Drop every connection (both ends) and refuse new ones until ``restore``."""
        self._call(self._shut())

    def restore(self) -> None:
        self._call(self._listen())

    def hang(self) -> None:
        """Every connection open now goes silent, both ways, without closing: what each end
        sends is dropped, as by a NAT or proxy that forgot it. New connections work."""
        self._hung_below = self.connections

    def slow(self, low_s: float, high_s: float) -> None:
        """Delay each chunk from now on by a random time in [low_s, high_s]."""
        self._delay = (low_s, high_s)

    # --- the proxy, on its loop ------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def _shut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        for pair in list(self._pairs):
            for writer in pair:
                writer.transport.abort()
        self._pairs.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        pair = (client_w, server_w)
        self._pairs.add(pair)
        pumps = [
            asyncio.create_task(self._pump(client_r, server_w, number)),
            asyncio.create_task(self._pump(server_r, client_w, number)),
        ]
        self._tasks.update(pumps)
        try:
            # One side closed: close the other too, as a real connection would end.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._tasks.difference_update(pumps)
            self._pairs.discard(pair)
            for writer in pair:
                writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        """Read chunks as they come; each is written once its delay (drawn when it was read,
        never earlier than the previous chunk's) has passed, unless connection ``number`` hangs."""
        pending: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        send = asyncio.create_task(self._send(pending, writer))
        try:
            last = 0.0
            while data := await reader.read(CHUNK):
                if number < self._hung_below:
                    continue
                low, high = self._delay
                due = self._loop.time() + (self._rng.uniform(low, high) if high > 0 else 0.0)
                last = max(last, due)
                pending.put_nowait((last, data))
            pending.put_nowait((last, b""))  # end of stream, after what came before it
            await send
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            send.cancel()
            await asyncio.gather(send, return_exceptions=True)

    async def _send(self, pending: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter) -> None:
        while True:
            due, data = await pending.get()
            wait = due - self._loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                return
            writer.write(data)
            await writer.drain()
