"""Load-aware replica choice through the gateway: the official openai SDK against the App behind
a real uvicorn, a target of fake vLLM replicas whose ``/metrics`` the test changes, and what
``GET /admin/targets`` and ``/metrics`` show of each replica's reading (labels, never URLs)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import jsonschema
import openai
import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.asgi import request
from tests.conftest import AppFactory
from tests.fakes.vllm import FakeVLLM
from tests.uvicorn_app import gateway
from turnout.serving.app import App
from turnout.serving.openapi import document

KEY = "sk-acme-balance-0001"
ADMIN = "adm-balance-key-51d0"
SYSTEM = {"role": "system", "content": "Answer in one word."}


def config(fakes: list[FakeVLLM], balance: str, home: Path) -> dict[str, Any]:
    pool = {
        "provider": "openai",
        "base_urls": [f.base_url for f in fakes],
        "model": "m",
        "balance": balance,
        "load": {"interval_s": 0.05, "timeout_s": 0.5},
    }
    return {
        "server": {"admin_key": ADMIN},
        "targets": {"pool": pool},
        "tenants": {"acme": {"keys": [KEY]}},
        "tasks": {"chat": {"route": ["pool"]}},
        "releases": {"path": str(home / "releases"), "store_path": str(home / "releases.db")},
    }


@asynccontextmanager
async def fleet(
    make_app: AppFactory, balance: str, home: Path
) -> AsyncIterator[tuple[list[FakeVLLM], App, openai.AsyncOpenAI]]:
    async with AsyncExitStack() as stack:
        fakes = [await stack.enter_async_context(FakeVLLM()) for _ in range(3)]
        app, client = await stack.enter_async_context(gateway(make_app, config(fakes, balance, home), KEY))
        yield fakes, app, client


async def replicas(app: App) -> list[dict[str, Any]]:
    resp = await request(app, "GET", "/admin/targets", headers={"authorization": f"Bearer {ADMIN}"})
    assert resp.status == 200
    view: list[dict[str, Any]] = orjson.loads(resp.body)["data"][0]["replicas"]
    return view


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 10.0) -> None:
    """Until the scraper has read the new numbers; the bound only keeps a broken build from hanging."""
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, "the gateway never saw the change"
        await asyncio.sleep(0.02)


def chats(fake: FakeVLLM) -> int:
    return sum(1 for r in fake.requests if r.path.endswith("/chat/completions"))


async def ask(client: openai.AsyncOpenAI, *messages: dict[str, str]) -> str:
    answer = await client.chat.completions.create(model="chat", messages=list(messages))  # type: ignore[arg-type]
    return answer.choices[0].message.content or ""


async def test_new_requests_avoid_the_replica_with_a_long_queue(make_app: AppFactory, tmp_path: Path) -> None:
    async with fleet(make_app, "least_loaded", tmp_path) as (fakes, app, client):
        fakes[1].waiting, fakes[1].running, fakes[1].kv_cache = 40, 16, 0.875

        async def r1_seen() -> bool:
            return bool((await replicas(app))[1]["waiting"] == 40.0)

        await eventually(r1_seen)
        for _ in range(10):
            await asyncio.gather(*(ask(client, {"role": "user", "content": "hi"}) for _ in range(8)))
        counts = [chats(f) for f in fakes]
        assert sum(counts) == 80
        assert counts[1] <= 8, counts  # at most a tenth
        view = await replicas(app)
        assert [(r["name"], r["waiting"], r["running"], r["kv_cache"]) for r in view] == [
            ("r0", 0.0, 0.0, 0.0),
            ("r1", 40.0, 16.0, 0.875),
            ("r2", 0.0, 0.0, 0.0),
        ]
        assert not [f for f in fakes if str(f.port) in str(view)]  # labels, never addresses
        described = document()["components"]["schemas"]["TargetList"]["properties"]["data"]["items"]
        for replica in view:
            jsonschema.validate(replica, described["properties"]["replicas"]["items"])


async def test_metrics_show_each_replicas_reading(make_app: AppFactory, tmp_path: Path) -> None:
    async with fleet(make_app, "least_loaded", tmp_path) as (fakes, app, _client):
        fakes[2].waiting, fakes[2].kv_cache = 5, 0.25
        fakes[0].metrics_status = 503  # its reading goes stale: then absent, not zero

        async def scraped() -> bool:
            view = await replicas(app)
            return view[2]["waiting"] == 5.0 and view[1]["waiting"] == 0.0 and view[0]["waiting"] is None

        await eventually(scraped)
        body = (await request(app, "GET", "/metrics")).body.decode()
        samples = [s for f in text_string_to_metric_families(body) for s in f.samples]
        waiting = {s.labels["replica"]: s.value for s in samples if s.name == "turnout_replica_waiting"}
        kv = {s.labels["replica"]: s.value for s in samples if s.name == "turnout_replica_kv_cache_usage"}
        assert waiting == {"r1": 0.0, "r2": 5.0}
        assert kv == {"r1": 0.0, "r2": 0.25}
        assert all(s.labels["target"] == "pool" for s in samples if s.name.startswith("turnout_replica_running"))


async def test_a_conversation_stays_on_its_replica_until_that_one_is_overloaded(
    make_app: AppFactory, tmp_path: Path
) -> None:
    async with fleet(make_app, "prefix_affinity", tmp_path) as (fakes, app, client):
        first = {"role": "user", "content": "Name a colour."}
        await ask(client, SYSTEM, first)
        home = next(i for i, f in enumerate(fakes) if chats(f) == 1)
        for n in range(5):
            later = [{"role": "assistant", "content": "Red."}, {"role": "user", "content": f"Another {n}."}]
            await ask(client, SYSTEM, first, *later)
        assert chats(fakes[home]) == 6 and sum(chats(f) for f in fakes) == 6

        waiting = fakes[home].waiting = 30

        async def overloaded() -> bool:
            return bool((await replicas(app))[home]["waiting"] == waiting)

        await eventually(overloaded)
        again = [SYSTEM, first, {"role": "assistant", "content": "Red."}, {"role": "user", "content": "?"}]
        for _ in range(4):
            await ask(client, *again)
        assert chats(fakes[home]) == 6  # moved while its queue was long
        waiting = fakes[home].waiting = 0
        await eventually(overloaded)
        await ask(client, *again)
        assert chats(fakes[home]) == 7  # back where its prefix is cached
