"""The outermost error boundary: a bug on any route answers an OpenAI-shaped 500 that names the
request id (never a second head once the response started), logs the exception's type and
place without its message, and never leaks the tenant's concurrency slot or budget
reservation: the work after the answer runs in ``finally``."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, NoReturn

import pytest

from tests.asgi import Response, request
from tests.conftest import AppFactory
from tests.fakes.scripted import ScriptedProvider, Step
from turnout.serving.app import App

KEY = "sk-acme-0123456789"
ADMIN = "adm-0123456789abcdef"
SENTINEL = "SENTINEL-jane.doe@example.com"  # in every raised message: must never reach a log
PRICE = {"input_per_mtok": 1_000.0, "output_per_mtok": 2_000.0}  # $0.013 per scripted answer


def config() -> dict[str, Any]:
    return {
        "server": {"admin_key": ADMIN},
        "targets": {"dear": {"provider": "openai", "base_url": "http://dear.invalid/v1", "model": "m", "price": PRICE}},
        "tenants": {"acme": {"keys": [KEY], "limits": {"concurrency": 1, "usd_per_day": 1.0}}},
        "tasks": {"chat": {"route": ["dear"]}},
    }


async def start(make_app: AppFactory) -> App:
    return await make_app(config(), {"dear": ScriptedProvider("dear")})


async def chat(app: App, **body: Any) -> Response:
    payload = {"model": "chat", "messages": [{"role": "user", "content": SENTINEL}], "max_tokens": 10, **body}
    return await request(app, "POST", "/v1/chat/completions", payload, {"authorization": f"Bearer {KEY}"})


def boom(*args: Any, **kwargs: Any) -> NoReturn:
    raise RuntimeError(f"a bug that quotes the request: {SENTINEL}")


async def boom_async(*args: Any, **kwargs: Any) -> NoReturn:
    boom()


async def held(app: App) -> dict[str, Any]:
    """The tenant's concurrency slots in use and the day's budget reserved and spent."""
    limiter = app.runtime.quota.limiter
    assert limiter is not None
    [scope] = [s for s in app.runtime.quota.scopes[("acme", "chat")] if s.name == "acme"]
    usage = await limiter.usage(scope, time.time())
    day = usage["usd_per_day"]
    return {"in_use": usage["concurrency"]["in_use"], "reserved": day["reserved"], "spent": day["spent"]}


def assert_internal_500(resp: Response, caplog: pytest.LogCaptureFixture) -> None:
    assert resp.status == 500 and resp.starts == 1
    request_id = resp.headers["x-turnout-request-id"]
    error = resp.json()["error"]
    assert error == {
        "message": f"internal error (request {request_id})",
        "type": "api_error",
        "param": None,
        "code": None,
    }
    assert f"internal error in request {request_id}: RuntimeError at test_boundary.py:" in caplog.text
    assert SENTINEL not in caplog.text


def assert_logged_after_the_answer(resp: Response, caplog: pytest.LogCaptureFixture) -> None:
    """The answer was out: it stands, alone (no second head), and the bug is logged."""
    assert resp.status == 200 and resp.starts == 1
    request_id = resp.headers["x-turnout-request-id"]
    assert f"internal error in request {request_id}: RuntimeError at test_boundary.py:" in caplog.text
    assert SENTINEL not in caplog.text


async def test_a_bug_while_pricing_the_answer_is_a_500_and_frees_slot_and_reservation(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = await start(make_app)
    with monkeypatch.context() as patch:
        patch.setattr(app.runtime.prices, "price_attempts", boom)
        assert_internal_500(await chat(app), caplog)
    assert await held(app) == {"in_use": 0, "reserved": 0, "spent": 0}
    assert (await chat(app)).status == 200  # concurrency 1: the slot is free


@pytest.mark.parametrize("stream", [False, True])
async def test_a_bug_in_the_ledger_after_the_answer_frees_slot_and_settles(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    app = await start(make_app)
    assert app.runtime.ledger is not None
    with monkeypatch.context() as patch:
        patch.setattr(app.runtime.ledger, "submit", boom)
        resp = await chat(app, stream=stream)
    assert_logged_after_the_answer(resp, caplog)
    if stream:
        assert resp.events()[-1] == "[DONE]"
    else:
        assert resp.json()["choices"][0]["message"]["content"]
    state = await held(app)
    assert state["in_use"] == 0 and state["reserved"] == 0
    assert (await chat(app)).status == 200


async def test_a_bug_in_metrics_on_a_refused_request_leaves_the_refusal_standing(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = await start(make_app)
    assert app.runtime.metrics is not None
    with monkeypatch.context() as patch:
        patch.setattr(app.runtime.metrics, "observe", boom)
        resp = await chat(app, model="nope")
    assert resp.status == 404 and resp.starts == 1
    assert f"internal error in request {resp.headers['x-turnout-request-id']}" in caplog.text
    assert await held(app) == {"in_use": 0, "reserved": 0, "spent": 0}


async def test_a_bug_in_feedback_is_a_500_with_the_request_id(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = await start(make_app)
    answered = await chat(app)
    assert app.runtime.store is not None
    monkeypatch.setattr(app.runtime.store, "set_outcome", boom_async)
    body = {"request_id": answered.headers["x-turnout-request-id"], "outcome": "success"}
    resp = await request(app, "POST", "/v1/feedback", body, {"authorization": f"Bearer {KEY}"})
    assert_internal_500(resp, caplog)
    assert await held(app) == {"in_use": 0, "reserved": 0, "spent": pytest.approx(0.013)}
    assert (await chat(app)).status == 200


async def test_a_bug_in_an_admin_handler_is_a_500_with_the_request_id(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = await start(make_app)
    limiter = app.runtime.quota.limiter
    with monkeypatch.context() as patch:
        patch.setattr(limiter, "usage", boom_async)
        resp = await request(app, "GET", "/admin/usage?tenant=acme", headers={"authorization": f"Bearer {ADMIN}"})
    assert_internal_500(resp, caplog)
    assert (await chat(app)).status == 200
    assert await held(app) == {"in_use": 0, "reserved": 0, "spent": pytest.approx(0.013)}


async def test_refusals_outside_the_pipeline_carry_the_request_id_too(make_app: AppFactory) -> None:
    app = await start(make_app)
    resp = await request(app, "GET", "/nowhere")
    assert resp.status == 404 and resp.json()["error"]["code"] == "not_found"
    assert len(resp.headers["x-turnout-request-id"]) == 24


async def test_a_client_gone_mid_request_releases_the_slot(make_app: AppFactory) -> None:
    """Cancelled (the server gave up on it, as uvicorn does past the shutdown grace): the
    request ends with a 503 instead of an exception for the server to log, and holds nothing."""
    app = await make_app(config(), {"dear": ScriptedProvider("dear", Step(delay=30.0))})
    task = asyncio.create_task(chat(app))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if (await held(app))["in_use"] == 1:
            break
    task.cancel()
    resp = await task
    assert (resp.status, resp.json()["error"]["code"]) == (503, "shutting_down")
    assert await held(app) == {"in_use": 0, "reserved": 0, "spent": 0}


def test_request_ids_are_unique_time_ordered_hex_and_differ_after_fork() -> None:
    from turnout.serving.boundary import new_request_id

    before = int(time.time() * 1000)
    drawn = [new_request_id() for _ in range(10_000)]
    after = int(time.time() * 1000)
    ids = set(drawn)
    assert len(ids) == 10_000
    assert all(len(i) == 24 and int(i, 16) >= 0 for i in ids)
    stamps = [int(i[:12], 16) for i in drawn]
    assert stamps == sorted(stamps) and before <= stamps[0] and stamps[-1] <= after  # time-ordered
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child draws from its own, reseeded sequence
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child not in ids and child != new_request_id()
