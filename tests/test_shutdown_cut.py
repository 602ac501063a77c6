"""Requests cut by a shutdown past its grace period (uvicorn cancels their tasks): each still
ends cleanly for the client (a 503, or an error event closing its stream), writes its ledger row
and gives back its quota slot; and the lifespan shutdown waits for that before closing the
ledger and the limiter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, MutableMapping
from typing import Any

import orjson

from tests.asgi import ledger_rows as rows
from tests.conftest import AppFactory
from tests.fakes.scripted import ScriptedProvider
from tests.test_app import AUTH, MESSAGES, config
from turnout.providers.base import Call, Completion, Stream
from turnout.serving.app import App


class Hanging(ScriptedProvider):
    """Answers two words of a stream, or nothing at all, then waits for ever."""

    async def complete(self, call: Call) -> Completion:
        self.calls.append(call)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def stream(self, call: Call) -> Stream:
        self.calls.append(call)
        return Stream(self._words(), "fake-v1", "r0")

    async def _words(self) -> AsyncGenerator[dict[str, Any]]:
        try:
            for word in ("half ", "an "):
                yield {"id": "u", "object": "chat.completion.chunk", "created": 1, "model": "m",
                       "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}  # fmt: skip
            await asyncio.Event().wait()
        finally:
            self.closed_streams += 1


async def started(app: App, body: dict[str, Any], chunks: int) -> tuple[asyncio.Task[None], list[Any]]:
    """A request running in a task, as uvicorn runs it, once ``chunks`` body messages went out
    (0: once the upstream was called)."""
    raw = orjson.dumps({"model": "chat", "messages": MESSAGES, **body})
    head = [(b"authorization", AUTH["authorization"].encode()), (b"content-length", str(len(raw)).encode())]
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": head, "query_string": b""}
    sent: list[MutableMapping[str, Any]] = []
    delivered = [False]

    async def receive() -> dict[str, Any]:
        if not delivered[0]:
            delivered[0] = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.Event().wait()  # the client stays
        raise AssertionError("unreachable")

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    task = asyncio.get_running_loop().create_task(app(scope, receive, send))
    for _ in range(1000):
        await asyncio.sleep(0.001)
        bodies = sum(m["type"] == "http.response.body" for m in sent)
        called = app.runtime.targets["primary"].provider.calls  # type: ignore[attr-defined]
        if bodies >= chunks and (chunks or called):
            break
    return task, sent


async def make(make_app: AppFactory, **extra: Any) -> App:
    return await make_app(config(**extra), {"primary": Hanging("primary"), "secondary": Hanging("secondary")})


async def test_a_stream_cut_by_shutdown_ends_with_an_error_event_and_a_503_row(make_app: AppFactory) -> None:
    app = await make(make_app)
    task, sent = await started(app, {"stream": True}, chunks=2)
    task.cancel()
    await task  # the request ends; the cancellation does not escape to the server
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert sent[0]["status"] == 200
    assert b'"shutting_down"' in body and b"[DONE]" not in body
    assert sent[-1].get("more_body", False) is False  # the response is complete
    assert app.runtime.targets["primary"].provider.closed_streams == 1  # type: ignore[attr-defined]
    [row] = await rows(app)
    assert (row.status, row.error_class, row.stream) == (503, "shutting_down", True)


async def test_a_request_waiting_on_its_upstream_gets_a_503_and_a_row(make_app: AppFactory) -> None:
    app = await make(make_app)
    task, sent = await started(app, {}, chunks=0)
    task.cancel()
    await task
    assert sent[0]["status"] == 503
    error = orjson.loads(sent[1]["body"])["error"]
    assert error["code"] == "shutting_down"
    assert (b"retry-after", b"1") in sent[0]["headers"]
    [row] = await rows(app)
    assert (row.status, row.error_class) == (503, "shutting_down")


async def test_a_cut_request_gives_back_its_concurrency_slot(make_app: AppFactory) -> None:
    app = await make(make_app, tenants={"acme": {"keys": [AUTH["authorization"][7:]], "limits": {"concurrency": 1}}})
    task, _ = await started(app, {"stream": True}, chunks=2)
    limiter = app.runtime.quota.limiter
    assert limiter is not None
    task.cancel()
    await task
    # The slot is free again: one more request is admitted (and cut in turn).
    again, sent = await started(app, {"stream": True}, chunks=2)
    assert sent[0]["status"] == 200
    again.cancel()
    await again


async def test_shutdown_waits_for_cut_requests_before_closing_the_ledger(make_app: AppFactory) -> None:
    app = await make(make_app)
    tasks = [(await started(app, {"stream": True}, chunks=2))[0] for _ in range(5)]
    assert app.in_flight == 5
    for task in tasks:
        task.cancel()  # what uvicorn does past the grace period, right before lifespan shutdown
    await app.finish_in_flight(timeout_s=5)
    assert app.in_flight == 0
    assert app.runtime.ledger is not None
    assert app.runtime.ledger.queue.dropped == 0
    assert len(await rows(app)) == 5
