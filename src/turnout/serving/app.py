"""The ASGI application: lifespan and a flat route table. No framework: every microsecond here
is paid on every request, and the gateway has only a handful of routes."""

from __future__ import annotations

import logging
from typing import Any

from turnout.config import Config
from turnout.errors import MethodNotAllowed, NotFound, TurnoutError
from turnout.providers.base import Provider
from turnout.serving import feedback
from turnout.serving import tasks as task_api
from turnout.serving.admin import Admin
from turnout.serving.asgi import Receive, Send, header, send_json
from turnout.serving.gateway import Gateway

log = logging.getLogger("turnout")


class App:
    def __init__(self, config: Config, providers: dict[str, Provider] | None = None) -> None:
        self.gateway = Gateway(config, providers)
        self.admin = Admin(self.gateway)
        self.ready = False

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    async def http(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        try:
            if path == "/v1/chat/completions":
                _expect(method, "POST")
                await self.gateway.chat(scope, receive, send)
            elif path.startswith("/v1/tasks/"):
                _expect(method, "POST")
                await task_api.handle(self.gateway, path.removeprefix("/v1/tasks/"), scope, receive, send)
            elif path == "/v1/feedback":
                _expect(method, "POST")
                await feedback.handle(self.gateway, scope, receive, send)
            elif path == "/v1/models":
                _expect(method, "GET")
                await send_json(send, 200, await self.gateway.models(header(scope, b"authorization")))
            elif path == "/healthz":
                await send_json(send, 200, {"status": "ok"})
            elif path == "/readyz":
                await self.readyz(send)
            elif path == "/metrics":
                _expect(method, "GET")
                await self.metrics(send)
            elif path.startswith("/admin/") or path == "/admin":
                await self.admin(scope, receive, send)
            else:
                raise NotFound(f"no route for {method} {path}")
        except TurnoutError as err:
            await send_json(send, err.status, err.to_openai(), err.headers())

    async def readyz(self, send: Send) -> None:
        if not self.ready:
            await send_json(send, 503, {"status": "starting"})
            return
        ok, targets = await self.gateway.ready()
        await send_json(send, 200 if ok else 503, {"status": "ready" if ok else "degraded", "targets": targets})

    async def metrics(self, send: Send) -> None:
        metrics = self.gateway.metrics
        if metrics is None:
            raise NotFound("metrics are off (observability.metrics: false)")
        body, content_type = metrics.render()
        head = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": body})

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.gateway.start()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                self.ready = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.ready = False
                await self.gateway.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _expect(method: str, allowed: str) -> None:
    if method != allowed:
        raise MethodNotAllowed(f"use {allowed} for this route")
