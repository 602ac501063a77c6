"""Two `turnout serve` processes share limits, budgets and keys through a real Redis: the caps
hold across replicas, and a key revoked on one is refused on the other at once."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from tests.serving import Process, Served, turnout_serve

pytestmark = pytest.mark.slow
REDIS = "redis://127.0.0.1:6379/0"
KEY = "sk-acme-e2e-quota-0001"
ADMIN = "adm-e2e-quota-0123456789"
MAX_TOKENS = 10
# Input is free and output costs $1,000 per 1M tokens, so a request's worst case and its real
# cost (the fake always answers 10 completion tokens) are both exactly $0.01.
PRICE = {"input_per_mtok": 0.0, "output_per_mtok": 1000.0}
BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": MAX_TOKENS}


@pytest.fixture(scope="module")
def upstream() -> Iterator[Process]:
    fake = Process("tests.fakes.upstream", ready_path="/v1/models")
    fake.post("/_reply", {"usage": {"prompt_tokens": 5, "completion_tokens": 10, "total_tokens": 15}})
    yield fake
    fake.stop()


def cluster(tmp: Path, upstream: Process, limits: dict[str, Any]) -> tuple[ExitStack, list[Served], str]:
    """Two replicas of one config, each in its own folder (own ledger), sharing one Redis prefix."""
    prefix = f"turnout-test-{uuid.uuid4().hex[:8]}"
    config = {
        "server": {"admin_key": ADMIN},
        "limits": {"backend": "redis", "redis_url": REDIS, "key_prefix": prefix},
        "targets": {"up": {"provider": "openai", "base_url": upstream.url + "/v1", "model": "m", "price": PRICE}},
        "tenants": {"acme": {"keys": [KEY], "limits": limits}},
        "tasks": {"chat": {"route": ["up"]}},
    }
    stack = ExitStack()
    replicas = []
    for name in ("a", "b"):
        cwd = tmp / name
        cwd.mkdir()
        (cwd / "turnout.yaml").write_text(json.dumps(config))
        replicas.append(stack.enter_context(turnout_serve(cwd, cwd / "turnout.yaml")))
    return stack, replicas, prefix


def drop_prefix(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS)
    try:
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
    finally:
        client.close()


async def burst(replicas: list[Served], n: int) -> list[int]:
    """``n`` concurrent requests, alternating between the replicas; their statuses."""
    headers = {"authorization": f"Bearer {KEY}"}
    connector = aiohttp.TCPConnector(limit=n)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(i: int) -> int:
            url = replicas[i % len(replicas)].base_url + "/chat/completions"
            async with http.post(url, json=BODY, headers=headers) as resp:
                await resp.read()
                return resp.status

        return list(await asyncio.gather(*(one(i) for i in range(n))))


async def admin_get(served: Served, path: str) -> Any:
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{served.port}{path}"
        async with http.get(url, headers={"authorization": f"Bearer {ADMIN}"}) as resp:
            return await resp.json()


def ledger_spend(served: Served) -> float:
    import sqlite3

    db = served.log.parent / ".turnout" / "turnout.db"
    with sqlite3.connect(db) as conn:
        return float(conn.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM requests").fetchone()[0])


def test_a_budget_holds_across_two_replicas(tmp_path: Path, upstream: Process) -> None:
    stack, replicas, prefix = cluster(tmp_path, upstream, {"usd_per_day": 0.5})  # 50 × $0.01
    try:
        statuses = asyncio.run(burst(replicas, 200))
        assert statuses.count(200) == 50  # reservations are exact: no overshoot at all
        assert set(statuses) == {200, 429}
        usage = asyncio.run(admin_get(replicas[0], "/admin/usage?tenant=acme"))
        assert "acme" in json.dumps(usage)
        for r in replicas:
            r.stop()  # drains each ledger
        spent = sum(ledger_spend(r) for r in replicas)
        assert spent == pytest.approx(0.5)
        assert spent <= 0.5 + 1e-9
    finally:
        stack.close()
        drop_prefix(prefix)


def test_an_rpm_limit_holds_across_two_replicas(tmp_path: Path, upstream: Process) -> None:
    rpm = 50
    stack, replicas, prefix = cluster(tmp_path, upstream, {"rpm": rpm})
    try:
        t0 = time.monotonic()
        statuses = asyncio.run(burst(replicas, 200))
        elapsed = time.monotonic() - t0
        # The bucket starts full (50) and refills at rpm/60 per second while the burst runs.
        assert 50 <= statuses.count(200) <= rpm + int(elapsed * rpm / 60) + 1
        assert statuses.count(429) >= 200 - rpm - int(elapsed * rpm / 60) - 1
    finally:
        stack.close()
        drop_prefix(prefix)


def test_a_key_revoked_on_one_replica_is_refused_on_the_other(tmp_path: Path, upstream: Process) -> None:
    stack, (a, b), prefix = cluster(tmp_path, upstream, {})

    async def scenario() -> tuple[int, int, int]:
        admin = {"authorization": f"Bearer {ADMIN}"}
        async with aiohttp.ClientSession() as http:
            url_a = f"http://127.0.0.1:{a.port}"
            async with http.post(f"{url_a}/admin/keys", json={"tenant": "acme"}, headers=admin) as resp:
                created = await resp.json()
            user = {"authorization": f"Bearer {created['secret']}"}
            async with http.post(b.base_url + "/chat/completions", json=BODY, headers=user) as resp:
                before = resp.status
            async with http.delete(f"{url_a}/admin/keys/{created['id']}", headers=admin) as resp:
                revoked = resp.status
            async with http.post(b.base_url + "/chat/completions", json=BODY, headers=user) as resp:
                after = resp.status
            return before, revoked, after

    try:
        assert asyncio.run(scenario()) == (200, 200, 401)
    finally:
        stack.close()
        drop_prefix(prefix)
    for replica in (a, b):
        for path in replica.log.parent.rglob("*"):
            if path.is_file() and path.suffix != ".yaml":
                assert KEY.encode() not in path.read_bytes(), f"the tenant key leaked into {path}"


def test_redis_holds_no_key_in_clear(tmp_path: Path, upstream: Process) -> None:
    stack, (a, _), prefix = cluster(tmp_path, upstream, {"rpm": 1000})
    try:
        assert asyncio.run(burst([a], 3)) == [200, 200, 200]
        client = redis.Redis.from_url(REDIS)
        try:
            for key in client.scan_iter(f"{prefix}*"):
                dump = client.dump(key) or b""
                assert KEY.encode() not in key and KEY.encode() not in dump
        finally:
            client.close()
    finally:
        stack.close()
        drop_prefix(prefix)
