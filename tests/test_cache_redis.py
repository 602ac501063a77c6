"""The shared cache end to end: two gateways (replicas) on one real Redis under a unique key
prefix, the official openai SDK as the client. One replica's answer is the other's hit; what
Redis holds is sealed (the answer's text appears in no key and no value); ``turnout cache
purge --tenant`` empties one tenant's answers only; a Redis that hangs (a server of the test's
own, stopped) holds up one request a second, not every one."""

from __future__ import annotations

import asyncio
import copy
import logging
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from tests.conftest import AppFactory
from tests.fakes.upstream import FakeUpstream, Fault
from tests.test_cache_api import ASK, KEY, OTHER, calls, config
from tests.test_quota_contract import REDIS_URL, needs_redis
from tests.uvicorn_app import gateway
from turnout.cache.purges import PurgeLog
from turnout.cache.redis import REST_S
from turnout.cli.main import main

pytestmark = needs_redis

ANSWER = ("Zanzibar-", "unique-", "answer-", "7731")
SECRET = "0123456789abcdef" * 4


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    name = f"test-cache-{uuid.uuid4().hex[:12]}"
    yield name
    raw = Redis.from_url(REDIS_URL)
    keys = [k async for k in raw.scan_iter(match=f"{name}:*")]
    if keys:
        await raw.unlink(*keys)
    await raw.aclose()


def shared(upstream: FakeUpstream, prefix: str) -> dict[str, Any]:
    cache = {"backend": "redis", "redis_url": REDIS_URL, "key_prefix": prefix, "encryption_key": SECRET}
    return {**config(upstream), "cache": cache}


async def ask(client: Any, messages: list[Any] = ASK) -> str:
    resp = await client.chat.completions.with_raw_response.create(model="faq", messages=messages, temperature=0)
    resp.parse()
    return str(resp.headers["x-turnout-cache"])


async def redis_dump(prefix: str) -> list[tuple[bytes, bytes]]:
    raw = Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in raw.scan_iter(match=f"{prefix}:*")]
        return [(k, await raw.get(k) or b"") for k in keys]  # type: ignore[misc]
    finally:
        await raw.aclose()


async def test_replicas_share_sealed_answers_and_purge_by_tenant(
    make_app: AppFactory, prefix: str, tmp_path: Path
) -> None:
    async with FakeUpstream(reply=ANSWER) as upstream:
        raw = shared(upstream, prefix)
        async with gateway(make_app, raw, KEY) as (_, one), gateway(make_app, raw, KEY) as (_, two):
            assert await ask(one) == "miss"
            assert await ask(two) == "hit"  # another replica's answer
            other = two.with_options(api_key=OTHER)
            assert await ask(other) == "miss"
            assert calls(upstream) == 2
            dump = await redis_dump(prefix)
            assert len(dump) == 2
            for key, value in dump:
                assert key.startswith(f"{prefix}:cache:".encode())
                for needle in (b"Zanzibar", b"unique-answer", b"7731", b"capital of France", b"France"):
                    assert needle not in key and needle not in value
            path = tmp_path / "turnout.yaml"
            path.write_text(yaml.safe_dump({k: v for k, v in raw.items() if k != "store"}))
            args = ["cache", "purge", "--tenant", "acme", "--config", str(path)]
            result = await asyncio.to_thread(CliRunner().invoke, main, args)  # the CLI runs its own loop
            assert result.exit_code == 0, result.output
            assert "Purged 1 cached answers of tenant 'acme'." in result.output
            assert await ask(one) == "miss"  # acme's answer is gone
            assert await ask(other) == "hit"  # globex's stays
            assert calls(upstream) == 3


async def test_an_answer_in_flight_when_the_purge_came_is_not_kept(
    make_app: AppFactory, prefix: str, tmp_path: Path
) -> None:
    """Seen: `turnout cache purge` deleted the keys in Redis, and a request that had missed
    before it and was answered after it stored its answer in the cache just emptied, so the
    next request was a hit on an answer the operator had asked to be rid of. Its own caller
    still gets it; the cache does not, while a tenant the purge did not name keeps caching."""
    async with FakeUpstream(reply=ANSWER) as upstream:
        raw = shared(upstream, prefix)
        path = tmp_path / "turnout.yaml"
        path.write_text(yaml.safe_dump(raw))
        async with gateway(make_app, raw, KEY) as (_, client):
            other = client.with_options(api_key=OTHER)
            upstream.fault = Fault(head_delay=2.0, times=2)
            leader = asyncio.create_task(ask(client))
            bystander = asyncio.create_task(ask(other))
            while calls(upstream) < 2:  # noqa: ASYNC110 - both have reached the upstream
                await asyncio.sleep(0.01)
            args = ["cache", "purge", "--tenant", "acme", "--config", str(path)]
            result = await asyncio.to_thread(CliRunner().invoke, main, args)  # the CLI runs its own loop
            assert result.exit_code == 0, result.output
            assert not leader.done()  # answered after the purge
            assert await leader == "miss" and await bystander == "miss"
            assert await ask(client) == "miss"  # acme's answer was not kept
            assert await ask(client) == "hit"  # this one, asked after the purge, was
            assert await ask(other) == "hit"  # the purge did not name globex
            assert calls(upstream) == 3


async def test_gateways_whose_target_names_another_model_share_no_answer(make_app: AppFactory, prefix: str) -> None:
    """Seen: a task without releases kept the same key whatever model its target named, so a
    gateway restarted with a new model served the old model's answers from Redis until their
    TTL. Two gateways over one Redis, the second with another model: no hit across them."""
    async with FakeUpstream(reply=ANSWER) as upstream:
        raw = shared(upstream, prefix)
        changed = copy.deepcopy(raw)
        changed["targets"]["up"]["model"] = "m-next"
        async with gateway(make_app, raw, KEY) as (_, old), gateway(make_app, changed, KEY) as (_, new):
            assert await ask(old) == "miss"
            assert await ask(new) == "miss"  # not the old model's answer
            assert await ask(new) == "hit"
            assert calls(upstream) == 2
            asked = [r.body["model"] for r in upstream.requests if r.path.endswith("/chat/completions")]
            assert asked == ["m", "m-next"]


def test_purge_with_the_memory_backend_asks_the_gateways_instead(tmp_path: Path) -> None:
    path = tmp_path / "turnout.yaml"
    raw = {"targets": {"t": {"provider": "local"}}, "tasks": {"x": {"route": ["t"]}}}
    path.write_text(yaml.safe_dump({**raw, "releases": {"store_path": str(tmp_path / "releases.db")}}))
    asyncio.run(opened_as_a_gateway_does(str(tmp_path / "cache-purges.db")))
    result = CliRunner().invoke(main, ["cache", "purge", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "Asked every gateway sharing" in result.output and "every cached answer" in result.output
    assert not any(name.startswith("Purged") for name in result.output.split())  # no count: each gateway logs its own


async def opened_as_a_gateway_does(path: str) -> None:
    purges = PurgeLog(path)
    await purges.open()
    await purges.aclose()


def test_a_memory_purge_where_no_gateway_follows_the_log_fails_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen: run from another directory than the gateway's, the default (relative) store path
    named a new file there: "Asked every gateway" and exit 0, while the gateway kept serving the
    answers. An erasure request must not be a silent no-op."""
    gateway_dir, elsewhere = tmp_path / "gateway", tmp_path / "elsewhere"
    gateway_dir.mkdir()
    elsewhere.mkdir()
    path = gateway_dir / "turnout.yaml"
    path.write_text(yaml.safe_dump({"targets": {"t": {"provider": "local"}}, "tasks": {"x": {"route": ["t"]}}}))
    monkeypatch.chdir(gateway_dir)
    (gateway_dir / ".turnout").mkdir()
    asyncio.run(opened_as_a_gateway_does(".turnout/cache-purges.db"))  # the gateway's, relative to its directory
    monkeypatch.chdir(elsewhere)
    result = CliRunner().invoke(main, ["cache", "purge", "--tenant", "acme", "--config", str(path)])
    assert result.exit_code == 1
    assert f"no gateway follows the purge log {elsewhere}/.turnout/cache-purges.db" in result.output
    assert not (elsewhere / ".turnout").exists()  # nothing written where no one reads
    monkeypatch.chdir(gateway_dir)
    result = CliRunner().invoke(main, ["cache", "purge", "--tenant", "acme", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{gateway_dir}/.turnout/cache-purges.db" in result.output  # the absolute path


def test_purge_against_a_redis_that_is_down_says_so(tmp_path: Path) -> None:
    path = tmp_path / "turnout.yaml"
    cache = {"backend": "redis", "redis_url": "redis://127.0.0.1:1/0", "encryption_key": SECRET}
    path.write_text(
        yaml.safe_dump({"targets": {"t": {"provider": "local"}}, "tasks": {"x": {"route": ["t"]}}, "cache": cache})
    )
    result = CliRunner().invoke(main, ["cache", "purge", "--task", "x", "--config", str(path)])
    assert result.exit_code == 1 and "cannot purge the cache: Redis failed" in result.output


async def test_a_redis_that_hangs_costs_one_request_a_second_its_timeout(
    make_app: AppFactory, own_redis: tuple[subprocess.Popen[bytes], int]
) -> None:
    """Seen: with the cache's Redis hung (SIGSTOP), every request of a cached task waited out the
    0.5 s socket timeout (p50 from 3 ms to 505 ms). After one timeout the cache leaves Redis
    alone for a second: the requests in it are misses at once, and hits come back once Redis
    answers again."""
    redis, port = own_redis
    cache = {"backend": "redis", "redis_url": f"redis://127.0.0.1:{port}/0", "encryption_key": SECRET}
    async with FakeUpstream(reply=ANSWER) as upstream:
        raw = {**config(upstream), "cache": cache}
        async with gateway(make_app, raw, KEY) as (_, client):
            assert [await ask(client), await ask(client)] == ["miss", "hit"]
            redis.send_signal(signal.SIGSTOP)
            started = time.monotonic()
            assert await ask(client) == "miss"  # this one waited out the timeout
            assert time.monotonic() - started >= 0.5
            for _ in range(5):
                started = time.monotonic()
                assert await ask(client) == "miss"
                # Redis is not asked: asking it takes the whole timeout, as the request above did
                assert time.monotonic() - started < 0.5
            redis.send_signal(signal.SIGCONT)
            await asyncio.sleep(REST_S)
            assert await ask(client) == "hit"


async def test_once_its_rest_is_over_one_request_asks_a_hung_redis_not_every_one(
    make_app: AppFactory, own_redis: tuple[subprocess.Popen[bytes], int]
) -> None:
    """Seen: when the second of rest ended, every request that came before the first of them
    timed out asked the hung Redis, each on a connection of its own and each waiting 0.5 s: under
    load, all of them, not one a second. Now one asks and the others stay misses meanwhile;
    Redis, let go, accepts the connections dialled while it was stopped: that one."""
    redis, port = own_redis
    watcher = SyncRedis(port=port)  # its connection opened before the stop
    cache = {"backend": "redis", "redis_url": f"redis://127.0.0.1:{port}/0", "encryption_key": SECRET}
    async with FakeUpstream(reply=ANSWER) as upstream:
        raw = {**config(upstream), "cache": cache}
        async with gateway(make_app, raw, KEY) as (_, client):
            assert [await ask(client), await ask(client)] == ["miss", "hit"]
            before = watcher.info("stats")["total_connections_received"]
            redis.send_signal(signal.SIGSTOP)
            assert await ask(client) == "miss"  # on the connection it had: it times out, the rest begins
            await asyncio.sleep(REST_S)
            await asyncio.gather(*(ask(client) for _ in range(8)))  # misses (one leads, the others follow it)
            redis.send_signal(signal.SIGCONT)
            await asyncio.sleep(0.5)  # it accepts what waited
            assert watcher.info("stats")["total_connections_received"] - before <= 2
    watcher.close()


async def test_a_redis_out_of_memory_serves_what_it_holds_and_says_once_that_it_keeps_nothing(
    make_app: AppFactory, own_redis: tuple[subprocess.Popen[bytes], int], caplog: pytest.LogCaptureFixture
) -> None:
    """Seen: Redis at maxmemory under noeviction refused every answer's write, and each miss logged
    two warnings ("Redis write failed", then "Redis answers again" at the next read): a warning
    flood at the request rate. Now it is said once, and once more when answers are kept again."""
    _, port = own_redis
    watcher = SyncRedis(port=port)
    cache = {"backend": "redis", "redis_url": f"redis://127.0.0.1:{port}/0", "encryption_key": SECRET}
    async with FakeUpstream(reply=ANSWER) as upstream:
        raw = {**config(upstream), "cache": cache}
        async with gateway(make_app, raw, KEY) as (_, client):
            assert [await ask(client), await ask(client)] == ["miss", "hit"]
            watcher.config_set("maxmemory-policy", "noeviction")
            watcher.config_set("maxmemory", "1")
            with caplog.at_level(logging.DEBUG, logger="turnout.cache"):
                for n in range(5):
                    assert await ask(client, [{"role": "user", "content": f"question {n}"}]) == "miss"
                assert await ask(client) == "hit"  # what it holds is still served
                watcher.config_set("maxmemory", "0")
                again = [{"role": "user", "content": "question 0"}]
                assert await ask(client, again) == "miss"
                for _ in range(100):  # kept after its answer went out
                    if await ask(client, again) == "hit":
                        break
                    await asyncio.sleep(0.05)
            said = [r.getMessage() for r in caplog.records if r.name == "turnout.cache"]
            assert said == [
                "cache: Redis refuses to keep answers (OutOfMemoryError); they are not kept meanwhile",
                "cache: Redis keeps answers again",
            ]
    watcher.close()
