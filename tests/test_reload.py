"""Config reload in-process (``App.reload``, ``POST /admin/reload``): the file is read again and
validated in full; tasks, tenants, policy and prices change live; other sections wait for a
restart and are named; an invalid file is refused with its problems and the old config kept;
a request already running finishes on the config it started with."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, MutableMapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import yaml
from redis.asyncio import Redis

from tests.asgi import request
from tests.fakes.scripted import ScriptedProvider, Step
from tests.fakes.upstream import FakeUpstream
from tests.serving import free_port_in
from tests.test_quota_contract import REDIS_URL, needs_redis
from turnout.cli.serve import Reloader
from turnout.config import load_config, validate
from turnout.observe import logs
from turnout.providers.base import Call, Provider, Stream
from turnout.serving import server, supervisor
from turnout.serving.app import App
from turnout.serving.reload import LIVE, ReloadRefused

KEY = "sk-acme-reload-0123456789"
NEW_KEY = "sk-newco-reload-0123456789"
ADMIN = "adm-reload-0123456789abcdef"
AUTH = {"authorization": f"Bearer {KEY}"}
ADMIN_AUTH = {"authorization": f"Bearer {ADMIN}"}
MESSAGES = [{"role": "user", "content": "hi"}]


def base(tmp: Path) -> dict[str, Any]:
    return {
        "server": {"admin_key": ADMIN},
        "store": {"kind": "memory", "flush_interval_ms": 10},
        "limits": {"keys_path": str(tmp / "keys.db")},
        "targets": {
            "primary": {"provider": "openai", "base_url": "http://primary.invalid/v1", "model": "m1"},
            "secondary": {"provider": "openai", "base_url": "http://secondary.invalid/v1", "model": "m2"},
        },
        "tenants": {"acme": {"keys": [KEY]}},
        "tasks": {"chat": {"route": ["primary"]}},
    }


class Gated(ScriptedProvider):
    """Streams one word, then waits for ``go`` before the rest: a stream in flight."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.go = asyncio.Event()
        self.streaming = asyncio.Event()

    async def stream(self, call: Call) -> Stream:
        self.calls.append(call)
        return Stream(self._gated(), "fake-v1", "r0")

    async def _gated(self) -> AsyncGenerator[dict[str, Any]]:
        for i, word in enumerate(("old ", "config ", "answer")):
            if i == 1:
                self.streaming.set()
                await self.go.wait()
            yield {"id": "u", "object": "chat.completion.chunk", "created": 1, "model": "m",
                   "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}  # fmt: skip


class Served:
    """An app over a config file that the test rewrites, reloaded as ``turnout serve`` would."""

    def __init__(self, tmp: Path) -> None:
        self.path = tmp / "turnout.yaml"
        self.primary = Gated("primary")
        self.secondary = ScriptedProvider("secondary")
        self.app: App | None = None

    def write(self, raw: dict[str, Any] | str) -> None:
        self.path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))

    async def start(self, raw: dict[str, Any]) -> App:
        self.write(raw)
        providers: dict[str, Provider] = {"primary": self.primary, "secondary": self.secondary}
        loader = Reloader(str(self.path), None, None)  # the CLI's: the file, then preflight
        self.app = App(load_config(self.path), providers, source=str(self.path), loader=loader)
        await self.app.runtime.start()
        self.app.ready = True
        return self.app


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    s = Served(tmp_path)
    yield s
    if s.app is not None:
        await s.app.runtime.aclose()


async def models(app: App, key: str = KEY) -> list[str]:
    resp = await request(app, "GET", "/v1/models", headers={"authorization": f"Bearer {key}"})
    assert resp.status == 200, resp.body
    return [m["id"] for m in resp.json()["data"]]


async def chat(app: App, task: str = "chat", key: str = KEY) -> Any:
    body = {"model": task, "messages": MESSAGES}
    return await request(app, "POST", "/v1/chat/completions", body, {"authorization": f"Bearer {key}"})


async def test_a_new_task_appears_without_a_restart(served: Served, tmp_path: Path) -> None:
    raw = base(tmp_path)
    app = await served.start(raw)
    assert await models(app) == ["chat"]
    raw["tasks"]["summarize"] = {"route": ["secondary"]}
    served.write(raw)
    resp = await request(app, "POST", "/admin/reload", headers=ADMIN_AUTH)
    assert resp.status == 200, resp.body
    assert resp.json() == {"reloaded": True, "changed": ["tasks"], "restart_needed": []}
    assert await models(app) == ["chat", "summarize"]
    answer = await chat(app, "summarize")
    assert answer.status == 200, answer.body
    assert served.secondary.calls  # routed as the new file says


async def test_an_in_flight_stream_finishes_on_the_old_config(served: Served, tmp_path: Path) -> None:
    raw = base(tmp_path)
    app = await served.start(raw)
    body = orjson.dumps({"model": "chat", "messages": MESSAGES, "stream": True})
    head = [(b"authorization", AUTH["authorization"].encode()), (b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": head, "query_string": b""}
    sent: list[MutableMapping[str, Any]] = []
    given = [False]

    async def receive() -> dict[str, Any]:
        if not given[0]:
            given[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    stream = asyncio.create_task(app(scope, receive, send))
    await served.primary.streaming.wait()
    raw["tasks"] = {"renamed": {"route": ["secondary"]}}  # the stream's task is gone from the file
    served.write(raw)
    assert (await app.reload())["changed"] == ["tasks"]
    assert (await chat(app, "chat")).status == 404  # new requests see the new config at once
    served.primary.go.set()
    await stream
    text = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert sent[0]["status"] == 200
    assert b"old " in text and b"config " in text and b"answer" in text and text.endswith(b"data: [DONE]\n\n")
    assert app.in_flight == 0


async def test_an_invalid_file_is_refused_and_the_old_config_kept(
    served: Served, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw = base(tmp_path)
    app = await served.start(raw)
    raw["tasks"]["broken"] = {"route": ["nowhere"]}
    served.write(raw)
    resp = await request(app, "POST", "/admin/reload", headers=ADMIN_AUTH)
    assert resp.status == 422
    error = resp.json()["error"]
    assert error["code"] == "invalid_config" and error["type"] == "invalid_request_error"
    assert any("tasks.broken" in p and "nowhere" in p for p in error["problems"])
    assert "config reload refused" in caplog.text and "nowhere" in caplog.text
    assert await models(app) == ["chat"]
    assert (await chat(app)).status == 200


async def test_a_file_that_is_not_yaml_is_refused(served: Served, tmp_path: Path) -> None:
    app = await served.start(base(tmp_path))
    served.write("tasks: [unclosed\n")
    with pytest.raises(ReloadRefused) as refused:
        await app.reload()
    assert "not valid YAML" in refused.value.problems[0]
    assert await models(app) == ["chat"]


async def test_restart_only_sections_are_named_and_left_as_they_run(served: Served, tmp_path: Path) -> None:
    raw = base(tmp_path)
    app = await served.start(raw)
    raw["server"]["port"] = 9191
    raw["store"]["flush_interval_ms"] = 50
    raw["tenants"]["acme"]["limits"] = {"rpm": 2}
    served.write(raw)
    result = await app.reload()
    assert result == {"reloaded": True, "changed": ["tenants"], "restart_needed": ["server", "store"]}
    assert app.runtime.config.server.port == 8080  # still listening where it was
    assert app.runtime.config.store.flush_interval_ms == 10
    statuses = [(await chat(app)).status for _ in range(3)]
    assert statuses == [200, 200, 429]  # the new limit holds at once (a limiter opened for it)


async def two_workers(tmp_path: Path) -> tuple[dict[str, Any], Path, App]:
    """A started gateway reloading as one of ``serve --workers 2``'s: its config, file and app."""
    raw = {**base(tmp_path), "store": {"kind": "sqlite", "path": str(tmp_path / "ledger.db")}}
    path = write(tmp_path / "turnout.yaml", raw)
    app = App(load_config(path), {"primary": ScriptedProvider("primary")}, source=str(path),
              loader=Reloader(str(path), None, None, workers=2))  # fmt: skip
    await app.runtime.start()
    return raw, path, app


async def test_with_workers_limits_a_reload_would_keep_in_memory_are_refused(tmp_path: Path) -> None:
    """``serve --workers 2`` refuses memory limits; a reload that gives a tenant limits while the
    (restart-only) backend stays memory would give it twice its RPM, so it is refused too."""
    raw, path, app = await two_workers(tmp_path)
    try:
        raw["tenants"]["acme"]["limits"] = {"rpm": 2}
        raw["limits"]["backend"] = "redis"  # restart-only: the running memory backend stays
        write(path, raw)
        with pytest.raises(ReloadRefused) as refused:
            await app.reload()
        assert any("limits.backend: memory" in p and "--workers 2" in p for p in refused.value.problems)
        assert app.runtime.config.tenants["acme"].limits.rpm is None
    finally:
        await app.runtime.aclose()


async def test_with_workers_a_first_cached_task_is_refused_while_the_cache_stays_in_memory(tmp_path: Path) -> None:
    """With ``--workers 2``, a reload giving a task its first ``cache`` opens an in-process cache
    in each worker (``cache`` is restart-only: the file's Redis waits): refused, and the refusal
    says the file's new cache section is not applied until a restart (its advice, "use redis",
    is what the file already says)."""
    raw, path, app = await two_workers(tmp_path)
    try:
        raw["tasks"]["chat"]["cache"] = {"ttl_s": 60, "classes": ["internal"]}
        raw["cache"] = {"backend": "redis", "redis_url": REDIS_URL, "encryption_key": "k" * 32}
        write(path, raw)
        with pytest.raises(ReloadRefused) as refused:
            await app.reload()
        problems = refused.value.problems
        assert any("cache.backend: memory" in p and "--workers 2" in p for p in problems)
        assert "(not applied until a restart: cache)" in problems
        assert app.runtime.cache is None and app.runtime.config.tasks["chat"].cache is None
    finally:
        await app.runtime.aclose()


async def test_a_task_on_a_target_only_a_restart_opens_is_refused(served: Served, tmp_path: Path) -> None:
    raw = base(tmp_path)
    app = await served.start(raw)
    raw["targets"]["third"] = {"provider": "openai", "base_url": "http://third.invalid/v1", "model": "m3"}
    raw["tasks"]["chat"]["route"] = ["third"]
    served.write(raw)
    with pytest.raises(ReloadRefused) as refused:
        await app.reload()
    assert any("third" in p for p in refused.value.problems)
    assert refused.value.problems[-1] == "(not applied until a restart: targets)"
    assert app.runtime.config.tasks["chat"].route == ["primary"]


async def test_a_new_tenant_key_works_and_a_removed_one_stops(served: Served, tmp_path: Path) -> None:
    raw = base(tmp_path)
    app = await served.start(raw)
    raw["tenants"] = {"newco": {"keys": [NEW_KEY]}}
    served.write(raw)
    await app.reload()
    assert (await chat(app, key=NEW_KEY)).status == 200
    assert (await chat(app, key=KEY)).status == 401


async def test_reload_needs_the_admin_key(served: Served, tmp_path: Path) -> None:
    raw = base(tmp_path)
    app = await served.start(raw)
    raw["tasks"]["summarize"] = {"route": ["secondary"]}
    served.write(raw)
    assert (await request(app, "POST", "/admin/reload")).status == 401
    assert (await request(app, "POST", "/admin/reload", headers={"authorization": "Bearer wrong"})).status == 401
    assert (await request(app, "POST", "/admin/reload", headers=AUTH)).status == 403  # a tenant's key
    assert (await request(app, "GET", "/admin/reload", headers=ADMIN_AUTH)).status == 405
    assert await models(app) == ["chat"]  # none of them reloaded


async def test_an_app_without_a_file_refuses_to_reload(tmp_path: Path) -> None:
    raw = base(tmp_path)
    app = App(load_config(write(tmp_path / "c.yaml", raw)), {"primary": ScriptedProvider("primary")})
    await app.runtime.start()
    try:
        resp = await request(app, "POST", "/admin/reload", headers=ADMIN_AUTH)
        assert resp.status == 422
        assert "without a config file" in resp.json()["error"]["message"]
    finally:
        await app.runtime.aclose()


async def test_metrics_carry_on_and_label_the_new_task(served: Served, tmp_path: Path) -> None:
    raw = base(tmp_path)
    raw["observability"] = {"metrics": True}
    app = await served.start(raw)
    assert (await chat(app)).status == 200
    raw["tasks"]["summarize"] = {"route": ["secondary"]}
    served.write(raw)
    await app.reload()
    assert (await chat(app, "summarize")).status == 200
    text = (await request(app, "GET", "/metrics")).body.decode()
    assert 'task="chat",tenant="acme"} 1.0' in text  # counted before the reload, still there
    assert 'task="summarize",tenant="acme"} 1.0' in text  # not "other"


async def test_closing_after_a_reload_closes_what_start_up_opened(served: Served, tmp_path: Path) -> None:
    raw = base(tmp_path)
    app = await served.start(raw)
    first = app.runtime
    closed: list[str] = []
    served.secondary.aclose = lambda: _note(closed, "secondary")  # type: ignore[method-assign]
    raw["tasks"]["summarize"] = {"route": ["secondary"]}
    served.write(raw)
    await app.reload()
    assert app.runtime is not first and app.runtime.targets is first.targets  # shared, not reopened
    await first.aclose()  # no longer the owner: closes nothing
    assert closed == []
    assert (await chat(app, "summarize")).status == 200
    await app.runtime.aclose()
    assert closed == ["secondary"]
    served.app = None


async def _note(closed: list[str], name: str) -> None:
    closed.append(name)


def test_live_sections_are_config_sections() -> None:
    from turnout.config import Config

    assert set(LIVE) <= set(Config.model_fields)


def write(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


async def test_a_task_cache_setting_is_live_where_the_cache_is_open(served: Served, tmp_path: Path) -> None:
    raw = base(tmp_path)
    raw["tasks"]["chat"]["cache"] = {"ttl_s": 60, "classes": ["internal"]}
    raw["tasks"]["summarize"] = {"route": ["secondary"]}
    app = await served.start(raw)
    body = {"model": "summarize", "messages": MESSAGES, "temperature": 0}

    async def state() -> str:
        resp = await request(app, "POST", "/v1/chat/completions", body, AUTH)
        assert resp.status == 200, resp.body
        return resp.headers.get("x-turnout-cache", "")

    assert [await state(), await state()] == ["", ""]  # not cached
    raw["tasks"]["summarize"]["cache"] = {"ttl_s": 60, "classes": ["internal"]}
    served.write(raw)
    await app.reload()
    assert [await state(), await state()] == ["miss", "hit"]
    assert len(served.secondary.calls) == 3


@pytest.fixture(params=["memory", pytest.param("redis", marks=needs_redis)])
async def cache_section(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    """The config's ``cache`` section for each backend; Redis under a prefix of its own, its keys
    deleted afterwards."""
    if request.param == "memory":
        yield {"backend": "memory"}
        return
    prefix = f"test-reload-{uuid.uuid4().hex[:12]}"
    yield {"backend": "redis", "redis_url": REDIS_URL, "key_prefix": prefix, "encryption_key": "k" * 32}
    client = Redis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.unlink(*keys)
    await client.aclose()


async def cache_state(app: App, task: str) -> str:
    body = {"model": task, "messages": MESSAGES, "temperature": 0}
    resp = await request(app, "POST", "/v1/chat/completions", body, AUTH)
    assert resp.status == 200, resp.body
    return resp.headers.get("x-turnout-cache", "")


async def test_a_reload_bounds_a_task_by_its_new_max_mb(
    served: Served, tmp_path: Path, cache_section: dict[str, Any]
) -> None:
    """A task's ``max_mb`` is live with the rest of its cache settings: a task newly cached by a
    reload keeps no answer over its own bound (with Redis, none was kept at any size), and one
    whose bound shrank drops what no longer fits."""
    raw = base(tmp_path)
    raw["cache"] = cache_section
    raw["tasks"]["chat"]["cache"] = {"ttl_s": 60, "classes": ["internal"]}
    raw["tasks"]["summarize"] = {"route": ["secondary"]}
    app = await served.start(raw)
    assert [await cache_state(app, "chat"), await cache_state(app, "chat")] == ["miss", "hit"]
    tiny = {"ttl_s": 60, "classes": ["internal"], "max_mb": 0.0001}  # 104 bytes: no answer fits
    raw["tasks"]["chat"]["cache"] = raw["tasks"]["summarize"]["cache"] = tiny
    served.write(raw)
    await app.reload()
    assert [await cache_state(app, "summarize"), await cache_state(app, "summarize")] == ["miss", "miss"]
    if cache_section["backend"] == "memory":  # Redis keeps a stored answer until its TTL
        assert [await cache_state(app, "chat"), await cache_state(app, "chat")] == ["miss", "miss"]


async def test_a_reload_that_shortens_a_ttl_ends_the_answers_kept_under_the_longer_one(
    served: Served, tmp_path: Path, cache_section: dict[str, Any]
) -> None:
    """An answer kept for an hour is not served once a reload gives its task a 1 s TTL and a
    second has passed (it is not left to live its hour); the next answer is kept anew."""
    raw = base(tmp_path)
    raw["cache"] = cache_section
    raw["tasks"]["chat"]["cache"] = {"ttl_s": 3600, "classes": ["internal"]}
    app = await served.start(raw)
    assert [await cache_state(app, "chat"), await cache_state(app, "chat")] == ["miss", "hit"]
    raw["tasks"]["chat"]["cache"] = {"ttl_s": 1, "classes": ["internal"]}
    served.write(raw)
    await app.reload()
    await asyncio.sleep(1.1)
    assert [await cache_state(app, "chat"), await cache_state(app, "chat")] == ["miss", "hit"]


async def test_a_reload_that_routes_a_task_to_another_model_serves_none_of_the_old_answers(
    served: Served, tmp_path: Path, cache_section: dict[str, Any]
) -> None:
    """Seen: the key of a task without releases named no model (its version was ``none``), so a
    reload that routed the task to another model kept serving the old model's answers until
    their TTL. A target's own model waits for a restart (``targets`` is not live): until then
    the running model still answers, and its answers stand."""
    raw = base(tmp_path)
    raw["cache"] = cache_section
    raw["tasks"]["chat"]["cache"] = {"ttl_s": 600, "classes": ["internal"]}
    app = await served.start(raw)
    assert [await cache_state(app, "chat"), await cache_state(app, "chat")] == ["miss", "hit"]
    raw["targets"]["primary"]["model"] = "m1-next"
    served.write(raw)
    assert (await app.reload())["restart_needed"] == ["targets"]
    assert await cache_state(app, "chat") == "hit"  # m1 still answers
    raw["tasks"]["chat"]["route"] = ["secondary", "primary"]  # m2 answers now
    served.write(raw)
    assert (await app.reload())["changed"] == ["tasks"]
    assert [await cache_state(app, "chat"), await cache_state(app, "chat")] == ["miss", "hit"]
    assert len(served.secondary.calls) == 1


async def test_openapi_describes_both_answers(served: Served, tmp_path: Path) -> None:
    from jsonschema import validate as conforms

    raw = base(tmp_path)
    app = await served.start(raw)
    doc = (await request(app, "GET", "/openapi.json")).json()
    answers = doc["paths"]["/admin/reload"]["post"]["responses"]
    raw["tasks"]["summarize"] = {"route": ["secondary"]}
    served.write(raw)
    done = await request(app, "POST", "/admin/reload", headers=ADMIN_AUTH)
    conforms(done.json(), answers["200"]["content"]["application/json"]["schema"])
    served.write("tasks: [unclosed\n")
    refused = await request(app, "POST", "/admin/reload", headers=ADMIN_AUTH)
    assert refused.status == 422
    conforms(refused.json(), answers["422"]["content"]["application/json"]["schema"])
    assert {"401", "403", "405"} <= set(answers)


async def test_a_price_book_reloads_and_its_new_price_applies(served: Served, tmp_path: Path) -> None:
    """Both price forms in the book: a merge that dumped every default back in would read each
    price as managed and self-hosted at once and refuse the reload."""
    raw = base(tmp_path)
    raw["prices"] = [
        {
            "effective": "2025-01-01",
            "targets": {
                "primary": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
                "secondary": {"gpu_hour_usd": 3.0, "gpus": 2, "schedule": {"8-19": 3}},
            },
        }
    ]
    app = await served.start(raw)
    first = await chat(app)
    assert first.status == 200, first.body
    raw["prices"][0]["targets"]["primary"] = {"input_per_mtok": 1000.0, "output_per_mtok": 2000.0}
    served.write(raw)
    resp = await request(app, "POST", "/admin/reload", headers=ADMIN_AUTH)
    assert resp.status == 200, resp.body
    assert resp.json() == {"reloaded": True, "changed": ["prices"], "restart_needed": []}
    again = await chat(app)
    assert again.status == 200, again.body
    cost = float(again.headers["x-turnout-cost-usd"])
    assert cost == pytest.approx(1000 * float(first.headers["x-turnout-cost-usd"]))


async def test_output_checks_added_by_a_reload_are_not_skipped_by_cached_answers(
    served: Served, tmp_path: Path
) -> None:
    """Seen: an answer cached before ``output: {must_not_contain: [pii]}`` was added kept being
    served as a hit afterwards, email and all, while a fresh answer got 502. A task's checks are
    part of its cache key: the answer cached before them is not found after."""
    raw = base(tmp_path)
    raw["tasks"]["faq"] = {"route": ["secondary"], "cache": {"ttl_s": 600, "classes": ["public", "internal"]}}
    served.secondary.steps = [Step(text="write to bob.smith@example.com today")]
    app = await served.start(raw)
    body = {"model": "faq", "messages": MESSAGES, "temperature": 0}
    first = await request(app, "POST", "/v1/chat/completions", body, AUTH)
    again = await request(app, "POST", "/v1/chat/completions", body, AUTH)
    assert (first.status, first.headers.get("x-turnout-cache")) == (200, "miss")
    assert (again.status, again.headers.get("x-turnout-cache")) == (200, "hit")
    raw["tasks"]["faq"]["output"] = {"must_not_contain": ["pii"]}
    served.write(raw)
    assert (await app.reload())["changed"] == ["tasks"]
    after = await request(app, "POST", "/v1/chat/completions", body, AUTH)
    assert after.status == 502, after.body  # checked: the cached answer is not served
    assert "bob.smith" not in after.body.decode()
    assert len(served.secondary.calls) == 2
    del raw["tasks"]["faq"]["output"]  # the checks gone again: the first answer's key comes back
    served.write(raw)
    await app.reload()
    back = await request(app, "POST", "/v1/chat/completions", body, AUTH)
    assert (back.status, back.headers.get("x-turnout-cache")) == (200, "hit")


async def test_a_tenant_tool_allowlist_added_by_a_reload_is_not_skipped_by_cached_answers(tmp_path: Path) -> None:
    """Seen: after a reload gave tenant acme a tool allowlist (``tenants.acme.tools``, which
    overrides the task's), an answer cached before it, calling a tool not on the list, was
    served as a hit while a fresh one got 502 ``tool_call_blocked``. A tenant's own allowlists
    are part of its cache key, as the task's checks are."""
    rm = {"id": "call_1", "name": "rm_rf", "arguments": "{}"}
    async with FakeUpstream(tool_calls=(rm,)) as upstream:
        raw = base(tmp_path)
        raw["targets"]["primary"]["base_url"] = upstream.base_url
        raw["tasks"]["chat"]["cache"] = {"ttl_s": 600, "classes": ["internal"]}
        path = write(tmp_path / "turnout.yaml", raw)
        app = App(load_config(path), {}, source=str(path), loader=Reloader(str(path), None, None))
        await app.runtime.start()
        app.ready = True
        tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
        body = {"model": "chat", "messages": MESSAGES, "temperature": 0, "tools": [tool]}

        async def ask() -> Any:
            return await request(app, "POST", "/v1/chat/completions", body, AUTH)

        try:
            first, again = await ask(), await ask()
            assert [first.headers.get("x-turnout-cache"), again.headers.get("x-turnout-cache")] == ["miss", "hit"]
            assert again.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "rm_rf"
            raw["tenants"]["acme"]["tools"] = {"allow": ["lookup"]}
            write(path, raw)
            assert (await app.reload())["changed"] == ["tenants"]
            after = await ask()
            assert after.status == 502, after.body  # checked: the cached call is not served
            assert after.json()["error"]["code"] == "tool_call_blocked"
            assert sum(r.path.endswith("/chat/completions") for r in upstream.requests) == 2
        finally:
            await app.runtime.aclose()


async def test_an_answer_from_a_target_no_longer_allowed_is_replaced(served: Served, tmp_path: Path) -> None:
    """Seen: after a reload took the cached answer's target out of the policy, every identical
    request was a miss to the other target and its answer was never kept (only a flight's
    leader fills), until the old entry's TTL ran out."""
    raw = base(tmp_path)
    raw["tasks"]["faq"] = {"route": ["secondary", "primary"], "cache": {"ttl_s": 600, "classes": ["internal"]}}
    raw["policy"] = {"internal": {"targets": ["secondary", "primary"]}}
    served.primary.steps = [Step(text="from primary")]
    app = await served.start(raw)
    body = {"model": "faq", "messages": MESSAGES, "temperature": 0}
    first = await request(app, "POST", "/v1/chat/completions", body, AUTH)
    assert (first.headers.get("x-turnout-cache"), first.headers.get("x-turnout-target")) == ("miss", "secondary")
    raw["policy"] = {"internal": {"targets": ["primary"]}}
    served.write(raw)
    await app.reload()
    answers = [await request(app, "POST", "/v1/chat/completions", body, AUTH) for _ in range(3)]
    assert [(a.headers.get("x-turnout-cache"), a.headers.get("x-turnout-target")) for a in answers] == [
        ("miss", "primary"),
        ("hit", "primary"),
        ("hit", "primary"),
    ]
    assert len(served.primary.calls) == 1


async def test_a_releases_folder_made_after_start_up_is_served_after_a_reload(served: Served, tmp_path: Path) -> None:
    """Without a releases folder at start the registry never opened: releases registered and
    promoted later were not served, and a reload said nothing changed."""
    from click.testing import CliRunner

    from turnout.cli.main import main

    raw = base(tmp_path)
    raw["releases"] = {"path": str(tmp_path / "releases"), "store_path": str(tmp_path / "releases.db")}
    app = await served.start(raw)
    assert app.runtime.releases is None
    task = {"variables": {"text": "hi"}}
    before = await request(app, "POST", "/v1/tasks/chat", task, AUTH)
    assert before.status == 404, before.body  # no serving release
    release = tmp_path / "releases" / "chat" / "v1.yaml"
    release.parent.mkdir(parents=True)
    release.write_text('target: primary\nprompt: {user: "{{ text }}", variables: {text: str}}\n')
    for args in (("register", "chat", "v1"), ("promote", "chat", "v1", "--why", "first")):
        cli = ["release", *args, "--by", "ops", "--config", str(served.path)]
        done = await asyncio.to_thread(CliRunner().invoke, main, cli)  # the CLI runs its own loop
        assert done.exit_code == 0, done.output
    resp = await request(app, "POST", "/admin/reload", headers=ADMIN_AUTH)
    assert resp.status == 200 and resp.json()["changed"] == ["releases"], resp.body
    answer = await request(app, "POST", "/v1/tasks/chat", task, AUTH)
    assert answer.status == 200, answer.body
    assert answer.headers["x-turnout-release"] == "v1" and served.primary.calls
    again = await request(app, "POST", "/admin/reload", headers=ADMIN_AUTH)
    assert again.json()["changed"] == []  # opened once


async def test_the_cache_sweep_follows_a_registry_a_reload_opened(served: Served, tmp_path: Path) -> None:
    """Seen: with the cache open and no releases folder at start, a reload opened the registry
    but the cache's sweep kept the registry it started with (none), so the answers of a release
    that stopped serving were kept until their TTL, not deleted within 30 s."""
    from click.testing import CliRunner

    from turnout.cli.main import main

    raw = base(tmp_path)
    raw["releases"] = {"path": str(tmp_path / "releases"), "store_path": str(tmp_path / "releases.db")}
    raw["tasks"]["chat"]["cache"] = {"ttl_s": 600, "classes": ["internal"]}
    app = await served.start(raw)

    async def release(name: str, *steps: tuple[str, ...]) -> None:
        path = tmp_path / "releases" / "chat" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        prompt = {"user": name + " {{ text }}", "variables": {"text": "str"}}
        path.write_text(yaml.safe_dump({"target": "primary", "prompt": prompt, "params": {"temperature": 0}}))
        for args in steps:
            cli = ["release", *args, "--by", "ops", "--config", str(served.path)]
            done = await asyncio.to_thread(CliRunner().invoke, main, cli)  # the CLI runs its own loop
            assert done.exit_code == 0, done.output

    async def ask() -> str:
        resp = await request(app, "POST", "/v1/tasks/chat", {"variables": {"text": "hi"}}, AUTH)
        assert resp.status == 200, resp.body
        return resp.headers.get("x-turnout-cache", "")

    await release("v1", ("register", "chat", "v1"), ("promote", "chat", "v1", "--why", "first"))
    assert (await app.reload())["changed"] == ["releases"]
    assert [await ask(), await ask()] == ["miss", "hit"]
    store, sweep = app.runtime.cache, app.runtime.cache_sweep
    assert store is not None and sweep is not None
    await sweep()
    assert len(store.store) == 1  # type: ignore[arg-type]  # the memory backend
    await release("v2", ("register", "chat", "v2"), ("promote", "chat", "v2", "--why", "next", "--force"))
    for _ in range(100):  # the registry polls its store every 0.5 s
        serving = app.runtime.releases.serving("chat") if app.runtime.releases is not None else None
        if serving is not None and serving.active is not None and serving.active.name == "v2":
            break
        await asyncio.sleep(0.05)
    await sweep()
    assert len(store.store) == 0  # type: ignore[arg-type]  # v1's answer: deleted, not left to its TTL


async def test_a_reload_opens_the_cache_and_review_queue_the_first_task_asks_for(
    served: Served, tmp_path: Path
) -> None:
    """Both open at start-up only where some task needs them; a reload that added the first
    such task said it was applied, then served no cache hit and refused every escalation (502)."""
    raw = base(tmp_path)
    raw["releases"] = {"path": str(tmp_path / "releases"), "store_path": str(tmp_path / "releases.db")}
    app = await served.start(raw)
    assert app.runtime.cache is None and app.runtime.reviews is None
    raw["tasks"]["summarize"] = {"route": ["secondary"], "cache": {"ttl_s": 60, "classes": ["internal"]}}
    raw["tasks"]["short"] = {"route": ["secondary"], "output": {"max_chars": 3, "escalate": {"to": "human"}}}
    served.write(raw)
    assert (await app.reload())["changed"] == ["tasks"]
    body = {"model": "summarize", "messages": MESSAGES, "temperature": 0}
    states = [(await request(app, "POST", "/v1/chat/completions", body, AUTH)).headers["x-turnout-cache"] for _ in "ab"]
    assert states == ["miss", "hit"]
    ticket = await chat(app, "short")
    assert ticket.status == 202, ticket.body  # queued for a person, not refused
    listed = await request(app, "GET", "/admin/review?task=short", headers=ADMIN_AUTH)
    assert [i["request_id"] for i in listed.json()["data"]] == [ticket.json()["id"]]
    await app.reload()  # opened once: a second reload keeps them
    assert (await chat(app, "short")).status == 202


async def test_the_canary_controller_follows_a_reload(served: Served, tmp_path: Path) -> None:
    """It kept the config it started with: a task a reload added was never checked."""
    raw = base(tmp_path)
    raw["releases"] = {"path": str(tmp_path / "releases"), "store_path": str(tmp_path / "releases.db")}
    (tmp_path / "releases").mkdir()
    app = await served.start(raw)
    controller = app.runtime.canary
    assert controller is not None
    raw["tasks"]["summarize"] = {"route": ["secondary"], "canary": {"interval_s": 7}}
    served.write(raw)
    assert (await app.reload())["changed"] == ["tasks"]
    assert app.runtime.canary is controller  # the same loop, now over the new config
    assert controller.config is app.runtime.config
    assert controller._canary_config("summarize").interval_s == 7


def running_tasks(*names: str) -> list[str]:
    return sorted(t.get_name() for t in asyncio.all_tasks() if t.get_name() in names and not t.done())


async def test_a_reload_that_fails_part_way_leaves_the_old_runtime_alone(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload that opened the release registry (its folder appeared since start-up) and its
    canary controller, then failed opening the cache a new task asked for, left both running
    from the half-built runtime, the controller judging canaries by a config that never served;
    and the shared canary and cache already followed the new file."""
    from turnout.cache.purges import PurgeLog

    raw = base(tmp_path)
    raw["releases"] = {"path": str(tmp_path / "releases"), "store_path": str(tmp_path / "releases.db")}
    app = await served.start(raw)
    old = app.runtime
    background = ("turnout-canary", "turnout-releases-poll", "turnout-cache-sweep")
    assert old.releases is None and old.canary is None and running_tasks(*background) == []
    (tmp_path / "releases").mkdir()
    raw["tasks"]["summarize"] = {"route": ["secondary"], "cache": {"ttl_s": 60, "classes": ["internal"]}}
    served.write(raw)

    async def broken(self: PurgeLog) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PurgeLog, "open", broken)
    with pytest.raises(OSError, match="No space"):
        await app.reload()
    assert app.runtime is old and app.pipeline.rt is old
    assert old.releases is None and old.canary is None and old.cache is None
    assert running_tasks(*background) == []  # nothing of the successor runs on
    assert await models(app) == ["chat"]
    monkeypatch.undo()
    assert (await app.reload())["changed"] == ["tasks", "releases"]  # the same file, now whole
    assert running_tasks(*background) == sorted(background)


async def test_a_failed_reload_leaves_the_shared_canary_on_the_running_config(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The controller followed the new file before the reload could fail: it judged by tasks
    and canary settings the gateway did not serve."""
    raw = base(tmp_path)
    raw["releases"] = {"path": str(tmp_path / "releases"), "store_path": str(tmp_path / "releases.db")}
    (tmp_path / "releases").mkdir()
    app = await served.start(raw)
    controller = app.runtime.canary
    assert controller is not None and app.runtime.reviews is None
    raw["tasks"]["short"] = {"route": ["secondary"], "output": {"max_chars": 3, "escalate": {"to": "human"}}}
    raw["tasks"]["chat"]["canary"] = {"interval_s": 7}
    served.write(raw)

    async def broken(self: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("turnout.releases.review.ReviewQueue.open", broken)
    with pytest.raises(OSError, match="No space"):
        await app.reload()
    assert controller.config is app.runtime.config and "short" not in controller.config.tasks
    assert controller._canary_config("chat").interval_s != 7


async def test_an_offline_runtime_runs_no_canary_controller_nor_retention_purge(tmp_path: Path) -> None:
    """`turnout eval` started a whole gateway runtime: it claimed live canaries and purged the
    ledger by the rules of whatever config its caller had."""
    raw = base(tmp_path)
    raw["store"] = {"kind": "sqlite", "path": str(tmp_path / "ledger.db")}
    raw["releases"] = {"path": str(tmp_path / "releases"), "store_path": str(tmp_path / "releases.db")}
    raw["retention"] = {"rules": [{"ledger_days": 1}]}
    (tmp_path / "releases").mkdir()
    for offline, expected in ((True, None), (False, "running")):
        app = App(validate(raw), {"primary": ScriptedProvider("primary")}, offline=offline)
        await app.runtime.start()
        try:
            assert (app.runtime.canary is None) == (expected is None)
            assert app.runtime.store is not None and app.runtime.release_store is not None
        finally:
            await app.runtime.aclose()


def test_a_sighup_while_one_process_starts_is_kept_for_a_reload(monkeypatch: pytest.MonkeyPatch) -> None:
    """By default a SIGHUP ends a process: one that came while ``turnout serve`` started (a
    deploy tool's reload right after a restart) ended it without a word. It is kept, and the
    reload runs once started, as a worker of ``--workers`` already did."""
    caught: list[int] = []
    before = signal.signal(signal.SIGHUP, lambda signum, frame: caught.append(signum))  # in case it is not kept
    pending: list[bool] = []

    def starting(self: Any, sockets: Any = None) -> None:
        os.kill(os.getpid(), signal.SIGHUP)
        pending.append(supervisor.hup_pending())

    monkeypatch.setattr(supervisor, "_early_hup", threading.Event())
    monkeypatch.setattr(server._Server, "run", starting)
    monkeypatch.setattr(logs, "configure", lambda *args, **kwargs: SimpleNamespace(stop=lambda: None))
    monkeypatch.setattr(server, "redact_logs", lambda config: None)
    try:
        guard = signal.getsignal(signal.SIGHUP)
        server.run(
            validate(
                {
                    "server": {"port": free_port_in(31900, 31999)},
                    "store": {"kind": "memory"},
                    "targets": {"up": {"provider": "openai", "base_url": "http://up.invalid/v1", "model": "m"}},
                    "tasks": {"chat": {"route": ["up"]}},
                }
            )
        )
        assert pending == [True] and caught == []
        assert signal.getsignal(signal.SIGHUP) is guard  # what was there before, restored
    finally:
        signal.signal(signal.SIGHUP, before)
