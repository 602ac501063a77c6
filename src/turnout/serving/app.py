"""The ASGI application: lifespan, the error boundary and a flat route table. No framework:
every microsecond here is paid on every request, and the gateway has only a handful of routes.

    ErrorBoundary → route → a door over the pipeline (chat completions, tasks, embeddings,
    Messages, Responses)
                          → feedback, tickets, models, health, metrics, openapi.json, admin
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from turnout._support.printable import printable
from turnout.config import Config
from turnout.console.app import Console
from turnout.control.auth import bearer
from turnout.errors import AuthError, NotFound, TurnoutError
from turnout.providers.base import Provider
from turnout.serving import feedback, openapi, reload, summary, tickets
from turnout.serving.admin import Admin
from turnout.serving.asgi import Receive, Send, credential, expect_method, header, send_json
from turnout.serving.boundary import ErrorBoundary
from turnout.serving.channel import Channel
from turnout.serving.chat import CHAT
from turnout.serving.embeddings import EMBEDDINGS_DOOR
from turnout.serving.messages import MESSAGES_DOOR, count_tokens
from turnout.serving.pipeline import Pipeline
from turnout.serving.readiness import Readiness
from turnout.serving.reload import Plan
from turnout.serving.responses import RESPONSES_DOOR
from turnout.serving.runtime import Runtime
from turnout.serving.tasks import TASKS
from turnout.serving.waiting import start_up_problem

log = logging.getLogger("turnout")

TASKS_PREFIX = "/v1/tasks/"
TICKETS = "/tickets/"
# How long shutdown waits for cancelled requests to settle and write their rows.
FINISH_S = 5.0


@dataclass(frozen=True)
class Prepared:
    """A reload built and not yet swapped in (``App.prepare``)."""

    plan: Plan
    old: Runtime
    new: Runtime
    pipeline: Pipeline


class App:
    def __init__(
        self,
        config: Config,
        providers: dict[str, Provider] | None = None,
        *,
        source: str | None = None,
        loader: reload.Loader | None = None,
        offline: bool = False,
        fleet: Channel | None = None,
    ) -> None:
        """``source``: the config file's path, for the start-up summary (None: built in);
        ``loader``: reads it again for a reload (None: no reload); ``offline``: a command's
        app (``turnout eval``): no canary controller, no retention purge; ``fleet``: a
        worker's pipe to its supervisor, through which every reload goes."""
        self.runtime = Runtime(config, providers, offline=offline)
        self.source = source
        self.loader = loader
        self.fleet = fleet
        self._reloading = asyncio.Lock()  # one reload at a time
        self.pipeline = Pipeline(self.runtime)
        self.admin = Admin(self.runtime, self.reload)
        self.console = Console(self.runtime, self.admin)  # /ui: the operator's pages
        self.readiness = Readiness(self.runtime)
        self.http = ErrorBoundary(self.route)
        self.ready = False
        self.in_flight = 0  # HTTP requests not yet finished, their rows and settlements included
        self._idle: asyncio.Event | None = None  # set when in_flight reaches 0 during shutdown

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            self.in_flight += 1
            try:
                await self.http(scope, receive, send)
            finally:
                self.in_flight -= 1
                if self.in_flight == 0 and self._idle is not None:
                    self._idle.set()
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    async def route(self, scope: dict[str, Any], receive: Receive, send: Send, request_id: str) -> None:
        path, method = scope["path"], scope["method"]
        if path == "/v1/chat/completions":
            expect_method(method, "POST")
            await self.pipeline.run(CHAT, scope, receive, send, request_id)
        elif path == "/v1/embeddings":
            expect_method(method, "POST")
            await self.pipeline.run(EMBEDDINGS_DOOR, scope, receive, send, request_id)
        elif path == "/v1/messages":
            expect_method(method, "POST")
            await self.pipeline.run(MESSAGES_DOOR, scope, receive, send, request_id)
        elif path == "/v1/messages/count_tokens":
            expect_method(method, "POST")
            await count_tokens(self.runtime, scope, receive, send, request_id)
        elif path == "/v1/responses":
            expect_method(method, "POST")
            await self.pipeline.run(RESPONSES_DOOR, scope, receive, send, request_id)
        elif path.startswith(TASKS_PREFIX):
            task, ticketed, ticket = path[len(TASKS_PREFIX) :].partition(TICKETS)
            if ticketed:  # /v1/tasks/{task}/tickets/{id}: an escalation's answer
                expect_method(method, "GET")
                await tickets.handle(self.runtime, scope, receive, send, task, ticket)
            else:
                expect_method(method, "POST")
                await self.pipeline.run(TASKS, scope, receive, send, request_id, task=task)
        elif path == "/ui" or path.startswith("/ui/"):
            await self.console(scope, receive, send)
        elif path == "/v1/feedback":
            expect_method(method, "POST")
            await feedback.handle(self.runtime, scope, receive, send)
        elif path == "/v1/models":
            expect_method(method, "GET")
            await send_json(send, 200, await self.models(credential(scope)))
        elif path.startswith("/v1/models/"):  # the SDKs' models.retrieve
            expect_method(method, "GET")
            await send_json(send, 200, await self.model(credential(scope), path[len("/v1/models/") :]))
        elif path == "/healthz":  # which worker answered: a process id, for operators and tests
            expect_method(method, "GET")
            await send_json(send, 200, {"status": "ok"}, [(b"x-turnout-worker", str(os.getpid()).encode())])
        elif path == "/readyz":
            expect_method(method, "GET")
            await self.readyz(header(scope, b"authorization"), send)
        elif path == "/metrics":
            expect_method(method, "GET")
            self._scraper(header(scope, b"authorization"))
            await self.metrics(send)
        elif path == "/openapi.json":
            expect_method(method, "GET")
            await openapi.serve(send)
        elif path.startswith("/admin/") or path == "/admin":
            await self.admin(scope, receive, send)
        else:
            raise NotFound(f"no route for {method} {path}")

    async def model(self, authorization: bytes | None, name: str) -> dict[str, Any]:
        """One task as OpenAI describes a model; 404 where it does not exist or is not the caller's."""
        listed: list[dict[str, Any]] = (await self.models(authorization))["data"]
        found = [m for m in listed if m["id"] == name]  # the server decoded the path once: no more
        if not found:
            raise NotFound(f"the model {printable(name)!r} does not exist or is not open to you")
        return found[0]

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

    async def reload(self) -> dict[str, Any]:
        """Read the config file again and swap the live sections in (``serving/reload.py``);
        requests already running keep the pipeline, and so the config, they started on.
        ReloadRefused (the old config kept) when the file is invalid. A worker of
        ``--workers`` asks its supervisor, which reloads every worker or none."""
        if self.loader is None:
            raise reload.ReloadRefused(["this server was started without a config file: nothing to reload"])
        if self.fleet is not None:
            return await self.fleet.ask()
        async with self._reloading:
            try:
                plan = reload.plan(self.runtime.config, self.loader)
            except reload.ReloadRefused as exc:
                log.error("config reload refused, the running config is kept: %s", "; ".join(exc.problems))
                raise
            prepared = await self.prepare(plan)
            try:
                return self.commit(prepared)
            except BaseException:
                await self.abandon(prepared)  # the old runtime runs on, alone
                raise

    async def prepare(self, plan: Plan) -> Prepared:
        """The runtime and pipeline of ``plan``'s config, built beside the running ones (a
        failure has closed what it opened): ``commit`` swaps them in, ``abandon`` closes them."""
        old = self.runtime
        if old.state_missing:  # what a reload would rebuild is not open yet
            problem = "start-up has not opened the shared state yet (PostgreSQL does not answer); reload once ready"
            log.error("config reload refused, the running config is kept: %s", problem)
            raise reload.ReloadRefused([problem])
        new = await old.successor(plan.config)
        try:
            pipeline = Pipeline(new)
        except BaseException:
            await new.abandon()  # the old runtime runs on, alone
            raise
        return Prepared(plan, old, new, pipeline)

    def commit(self, prepared: Prepared) -> dict[str, Any]:
        """The swap: new requests take the prepared pipeline. Nothing here awaits."""
        old, new, plan = prepared.old, prepared.new, prepared.plan
        if self.runtime is not old:
            raise RuntimeError("the runtime was replaced since this reload was prepared")
        new.adopt(old)
        changed = list(plan.changed)
        if old.releases is None and new.releases is not None:
            changed.append("releases")  # the folder appeared since start-up: now served
        self.runtime = self.admin.runtime = self.console.runtime = self.readiness.runtime = new
        self.pipeline = prepared.pipeline
        log.info(
            "config reloaded from %s: changed %s; needing a restart: %s",
            self.source,
            ", ".join(changed) or "nothing",
            ", ".join(plan.restart) or "nothing",
        )
        return {"reloaded": True, "changed": changed, "restart_needed": plan.restart}

    async def abandon(self, prepared: Prepared) -> None:
        """A prepared reload that will not be swapped in: close what it opened."""
        await prepared.new.abandon()

    async def readyz(self, authorization: bytes | None, send: Send) -> None:
        """This process's readiness (``serving/readiness.py``): status and named checks for
        anyone; the ledger's figures too for the admin key. Upstreams: ``GET /admin/targets``."""
        ok, body = await self.readiness.check(self.ready)
        if self.ready and self.admin.is_admin(authorization):
            ledger = self.runtime.ledger_detail()
            if ledger is not None:
                body["ledger"] = ledger
        await send_json(send, 200 if ok else 503, body)

    def _scraper(self, authorization: bytes | None) -> None:
        """With ``observability.metrics_key``: that key or the admin key, else 401."""
        key = self.runtime.config.observability.metrics_key
        if key is None or self.admin.is_admin(authorization):
            return
        presented = bearer(authorization)  # AuthError (401) without one
        if not hmac.compare_digest(presented.encode(), key.encode()):
            raise AuthError("/metrics needs the metrics key (observability.metrics_key) or the admin key")

    async def metrics(self, send: Send) -> None:
        metrics = self.runtime.metrics
        if metrics is None:
            raise NotFound("metrics are off (observability.metrics: false)")
        self.runtime.probes.refresh()  # a stale probe starts in the background, for a later scrape
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
                except (TurnoutError, OSError) as exc:  # a store that does not answer, a file in the way
                    log.error("start-up failed: %s", start_up_problem(exc))  # the reason is the news, not the stack
                    await send({"type": "lifespan.startup.failed", "message": ""})  # said once, above
                    return
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                self.ready = True
                summary.log_summary(self.runtime, self.source)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.ready = False
                await self.finish_in_flight()
                if self.fleet is not None:
                    await self.fleet.aclose(self)
                await self.runtime.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def finish_in_flight(self, timeout_s: float = FINISH_S) -> None:
        """Wait for requests still running: uvicorn has cancelled those that outlasted the
        grace period, and each is now settling its quota and writing its row, which need the
        limiter and the ledger this shutdown is about to close."""
        if self.in_flight == 0:
            return
        self._idle = asyncio.Event()
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            log.warning("shutdown: %d requests still running after %.0f s; closing anyway", self.in_flight, timeout_s)
