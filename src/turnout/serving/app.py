"""The ASGI application: lifespan, the error boundary and a flat route table. No framework:
every microsecond here is paid on every request, and the gateway has only a handful of routes.

    ErrorBoundary → route → a door over the pipeline (chat completions, tasks)
                          → feedback, models, health, metrics, admin
"""

from __future__ import annotations

import logging
import time
from typing import Any

from turnout.config import Config
from turnout.errors import MethodNotAllowed, NotFound
from turnout.providers.base import Provider
from turnout.serving import feedback
from turnout.serving.admin import Admin
from turnout.serving.asgi import Receive, Send, header, send_json
from turnout.serving.boundary import ErrorBoundary
from turnout.serving.chat import CHAT
from turnout.serving.pipeline import Pipeline
from turnout.serving.runtime import Runtime
from turnout.serving.tasks import TASKS

log = logging.getLogger("turnout")

TASKS_PREFIX = "/v1/tasks/"


class App:
    def __init__(self, config: Config, providers: dict[str, Provider] | None = None) -> None:
        self.runtime = Runtime(config, providers)
        self.pipeline = Pipeline(self.runtime)
        self.admin = Admin(self.runtime)
        self.http = ErrorBoundary(self.route)
        self.ready = False

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    async def route(self, scope: dict[str, Any], receive: Receive, send: Send, request_id: str) -> None:
        path, method = scope["path"], scope["method"]
        if path == "/v1/chat/completions":
            _expect(method, "POST")
            await self.pipeline.run(CHAT, scope, receive, send, request_id)
        elif path.startswith(TASKS_PREFIX):
            _expect(method, "POST")
            await self.pipeline.run(TASKS, scope, receive, send, request_id, task=path[len(TASKS_PREFIX) :])
        elif path == "/v1/feedback":
            _expect(method, "POST")
            await feedback.handle(self.runtime, scope, receive, send)
        elif path == "/v1/models":
            _expect(method, "GET")
            await send_json(send, 200, await self.models(header(scope, b"authorization")))
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

    async def models(self, authorization: bytes | None) -> dict[str, Any]:
        tenant = await self.runtime.auth.identify(authorization, time.time())
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "turnout"}
                for name in self.runtime.config.tasks
                if tenant.may_use(name)
            ],
        }

    async def readyz(self, send: Send) -> None:
        if not self.ready:
            await send_json(send, 503, {"status": "starting"})
            return
        ok, targets = await self.runtime.ready()
        await send_json(send, 200 if ok else 503, {"status": "ready" if ok else "degraded", "targets": targets})

    async def metrics(self, send: Send) -> None:
        metrics = self.runtime.metrics
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
                    await self.runtime.start()  # closes what it opened when it fails
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                self.ready = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.ready = False
                await self.runtime.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _expect(method: str, allowed: str) -> None:
    if method != allowed:
        raise MethodNotAllowed(f"use {allowed} for this route")
