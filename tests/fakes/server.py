"""What every fake server shares: start on 127.0.0.1 (an ephemeral port unless one is given),
stop, and release handlers that hang on purpose when it stops."""

from __future__ import annotations

import asyncio
from typing import Self

from aiohttp import web


class FakeServer:
    host: str
    port: int

    def __post_init__(self) -> None:
        self._stopping = asyncio.Event()  # releases hung handlers at shutdown
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        app = self.app()
        app.on_shutdown.append(self._on_shutdown)
        # handler_cancellation: a client that hangs up cancels its handler, as in real servers.
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            self._stopping.set()
            await self._runner.cleanup()
            self._runner = None

    async def _on_shutdown(self, app: web.Application) -> None:
        self._stopping.set()
