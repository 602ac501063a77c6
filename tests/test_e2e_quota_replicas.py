"""Two `turnout serve` replicas share a tenant's concurrency slots through a real Redis; one of
them goes away with three long streams open. Stopped (SIGTERM, streams cut past the grace
period), it gives its slots back before it exits; killed (SIGKILL), its slots are reclaimed by
the other replica once its heartbeat key expires — seconds, not ``max_request_s``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from tests.serving import Process, Served, turnout_serve

pytestmark = pytest.mark.slow
REDIS = "redis://127.0.0.1:6379/0"
KEY = "sk-acme-e2e-replicas-0001"
ADMIN = "adm-e2e-replicas-0123456789"
HEADERS = {"authorization": f"Bearer {KEY}"}
# Input is free and output costs $1,000 per 1M tokens: a request's worst case is exactly $0.01.
PRICE = {"input_per_mtok": 0.0, "output_per_mtok": 1000.0}
STREAM = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "stream": True}
SLOW = {"mode": "ok", "chunk_delay": 0.5, "times": 3}  # the next three answers stream for 30 s


@pytest.fixture
def upstream() -> Iterator[Process]:
    fake = Process("tests.fakes.upstream", ready_path="/v1/models")
    fake.post("/_reply", {"text": ["word "] * 60, "usage": {"prompt_tokens": 1, "completion_tokens": 10}})
    yield fake
    fake.stop()


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"turnout-test-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(REDIS)
    try:
        for key in client.scan_iter(f"{name}:*"):
            client.delete(key)
    finally:
        client.close()


def replicas(
    tmp: Path, upstream: Process, prefix: str, limits: dict[str, Any], **lim: Any
) -> tuple[ExitStack, Served, Served]:
    """Replicas A and B of one config, each in its own folder, sharing one Redis prefix."""
    config = {
        "server": {"admin_key": ADMIN, "shutdown_grace_s": 1},
        "limits": {"backend": "redis", "redis_url": REDIS, "key_prefix": prefix, "max_request_s": 600, **lim},
        "targets": {"up": {"provider": "openai", "base_url": upstream.url + "/v1", "model": "m", "price": PRICE}},
        "tenants": {"acme": {"keys": [KEY], "limits": limits}},
        "tasks": {"chat": {"route": ["up"]}},
    }
    stack = ExitStack()
    served = []
    for name in ("a", "b"):
        cwd = tmp / name
        cwd.mkdir()
        (cwd / "turnout.yaml").write_text(json.dumps(config))
        served.append(stack.enter_context(turnout_serve(cwd, cwd / "turnout.yaml")))
    return stack, served[0], served[1]


async def open_streams(http: aiohttp.ClientSession, served: Served, n: int, stack: AsyncExitStack) -> None:
    """``n`` streams on ``served``, each admitted and past its first word; left open on ``stack``."""
    for _ in range(n):
        resp = await stack.enter_async_context(
            http.post(served.base_url + "/chat/completions", json=STREAM, headers=HEADERS)
        )
        assert resp.status == 200, await resp.text()
        while b'"content":"word' not in await resp.content.readline():
            pass


async def refused_for_concurrency(http: aiohttp.ClientSession, served: Served) -> bool:
    async with http.post(served.base_url + "/chat/completions", json=STREAM, headers=HEADERS) as resp:
        if resp.status != 429:
            return False
        body = await resp.json()
        return bool(resp.headers["x-turnout-limit"] == "acme:concurrency" and body["error"]["param"] == "concurrency")


async def slots_in_use(http: aiohttp.ClientSession, served: Served) -> int:
    url = f"http://127.0.0.1:{served.port}/admin/usage?tenant=acme"
    async with http.get(url, headers={"authorization": f"Bearer {ADMIN}"}) as resp:
        data = (await resp.json())["data"]
    return int(next(d for d in data if d["scope"] == "acme")["usage"]["concurrency"]["in_use"])


async def b_takes_three(http: aiohttp.ClientSession, upstream: Process, b: Served) -> None:
    """B admits three concurrent streams of its own, and refuses a fourth: the limit still holds."""
    upstream.post("/_fault", SLOW)
    async with AsyncExitStack() as streams:
        await open_streams(http, b, 3, streams)
        assert await slots_in_use(http, b) == 3
        assert await refused_for_concurrency(http, b)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_sigterm_past_the_grace_period_gives_the_slots_back(
    tmp_path: Path, upstream: Process, prefix: str, http: aiohttp.ClientSession
) -> None:
    stack, a, b = replicas(tmp_path, upstream, prefix, {"concurrency": 3})
    with stack:
        upstream.post("/_fault", SLOW)
        async with AsyncExitStack() as streams:
            await open_streams(http, a, 3, streams)
            assert await refused_for_concurrency(http, b)  # A's three count on B
            a.proc.send_signal(signal.SIGTERM)  # the streams outlast the 1 s grace: A cuts them
            await asyncio.to_thread(a.proc.wait, 30)
        exited = time.monotonic()
        # The bound, 2 s after A exits; the heartbeat TTL (5 s) has not run out by then,
        # so only A's own releases (or its closing) can have freed them.
        while (in_use := await slots_in_use(http, b)) != 0 and time.monotonic() - exited < 2.0:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        assert in_use == 0, f"B still sees {in_use} slots in use 2 s after A exited"
        await b_takes_three(http, upstream, b)
    assert "Application shutdown complete" in a.log.read_text()  # a graceful exit, not a kill


async def test_sigkill_slots_are_reclaimed_after_the_heartbeat_expires(
    tmp_path: Path, upstream: Process, prefix: str, http: aiohttp.ClientSession
) -> None:
    limits = {"concurrency": 3, "usd_per_day": 0.03}  # room for three $0.01 worst cases
    stack, a, b = replicas(tmp_path, upstream, prefix, limits, heartbeat_ttl_s=1)
    with stack:
        upstream.post("/_fault", SLOW)
        async with AsyncExitStack() as streams:
            await open_streams(http, a, 3, streams)
            await asyncio.sleep(3)  # three TTLs: a live A keeps its slots
            assert await refused_for_concurrency(http, b)
            os.kill(a.proc.pid, signal.SIGKILL)
            await asyncio.to_thread(a.proc.wait, 30)
            killed = time.monotonic()
            # Far below max_request_s (600 s): the key expires within 1 s, B sweeps every 0.2 s.
            while await slots_in_use(http, b) != 0:
                assert time.monotonic() - killed < 30, "A's slots were never reclaimed"
                await asyncio.sleep(0.05)
        # The reservations went with the slots: the $0.03 budget admits three more.
        await b_takes_three(http, upstream, b)
