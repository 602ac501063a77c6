"""One contract for every cache backend (in process, and a real Redis under a unique key
prefix): get after put, TTL expiry, purges by tenant, task and release version, bounds; then
what only Redis does: values sealed with AES-GCM (the plaintext nowhere in Redis), a value that
does not open is a miss, and a Redis that is down is a miss, never an error."""

from __future__ import annotations

import asyncio
import os
import tracemalloc
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from tests.test_quota_contract import REDIS_URL, needs_redis, redis_reachable
from turnout.cache.key import Address, deterministic, digest, quote, scope_of
from turnout.cache.memory import MemoryCache, cost
from turnout.cache.redis import RedisCache
from turnout.cache.seal import Sealer, Unsealable
from turnout.cache.store import CacheStore

SECRET = "k" * 40
PLAIN = b'{"answer": "The launch code is 0000-SECRET-ANSWER"}'
BACKENDS = ["memory", pytest.param("redis", marks=needs_redis)]


def address(tenant: str = "acme", task: str = "faq", version: str = "v1", n: int = 0, shared: bool = False) -> Address:
    return Address(scope_of(tenant, shared), task, version, digest(b"s" * 32, "internal", {"n": n}))


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[CacheStore]:
    if request.param == "memory":  # bounded by what an entry holds: a value of 100 bytes, just
        yield MemoryCache({"small": cost(address(task="small").text(), b"x" * 100)})
        return
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    cache = RedisCache(REDIS_URL, prefix, SECRET, limits={"small": 100})
    try:
        yield cache
    finally:
        await forget(cache)
        await cache.aclose()


async def forget(cache: RedisCache) -> None:
    """Delete every key of the cache's prefix: its answers and its purges' marks."""
    pattern = cache.prefix.removesuffix("cache:").replace("?", "\\?") + "*"
    keys = [k async for k in cache.client.scan_iter(match=pattern)]
    if keys:
        await cache.client.unlink(*keys)


async def test_get_answers_what_put_stored(store: CacheStore) -> None:
    assert await store.get(address()) is None
    assert await store.put(address(), PLAIN, 60)
    assert await store.get(address()) == PLAIN
    assert await store.get(address(n=1)) is None
    assert await store.get(address(version="v2")) is None
    assert await store.get(address(tenant="globex")) is None


async def test_entries_expire(store: CacheStore) -> None:
    await store.put(address(), PLAIN, 0.03)
    await store.put(address(n=1), PLAIN, 60)
    await asyncio.sleep(0.05)
    assert await store.get(address()) is None
    assert await store.get(address(n=1)) == PLAIN


async def test_purge_by_tenant_leaves_other_tenants_and_shared_answers(store: CacheStore) -> None:
    await store.put(address("acme"), PLAIN, 60)
    await store.put(address("acme", task="other"), PLAIN, 60)
    await store.put(address("globex"), PLAIN, 60)
    await store.put(address("x", shared=True), PLAIN, 60)
    assert await store.purge(tenant="acme") == 2
    assert await store.get(address("acme")) is None
    assert await store.get(address("acme", task="other")) is None
    assert await store.get(address("globex")) == PLAIN
    assert await store.get(address("x", shared=True)) == PLAIN


async def test_purge_by_task_and_by_both(store: CacheStore) -> None:
    for tenant in ("acme", "globex"):
        for task in ("faq", "other"):
            await store.put(address(tenant, task), PLAIN, 60)
    assert await store.purge(tenant="acme", task="faq") == 1
    assert await store.purge(task="other") == 2
    assert await store.get(address("globex", "faq")) == PLAIN
    assert await store.purge() == 1
    assert await store.get(address("globex", "faq")) is None


async def test_a_tenant_named_like_a_glob_purges_only_itself(store: CacheStore) -> None:
    await store.put(address("a*"), PLAIN, 60)
    await store.put(address("abc"), PLAIN, 60)
    assert await store.purge(tenant="a*") == 1
    assert await store.get(address("abc")) == PLAIN


async def test_purge_release_keeps_the_serving_versions(store: CacheStore) -> None:
    for version in ("old", "active", "canary"):
        await store.put(address(version=version), PLAIN, 60)
    await store.put(address(task="other", version="old"), PLAIN, 60)
    assert await store.purge_release("faq", frozenset({"active", "canary"})) == 1
    assert await store.get(address(version="old")) is None
    assert await store.get(address(version="canary")) == PLAIN
    assert await store.get(address(task="other", version="old")) == PLAIN


async def test_a_value_over_the_task_bound_is_not_stored(store: CacheStore) -> None:
    assert not await store.put(address(task="small"), b"x" * 101, 60)
    assert await store.get(address(task="small")) is None
    assert await store.put(address(task="small"), b"x" * 100, 60)


async def test_memory_evicts_the_least_recently_used_by_bytes() -> None:
    one = cost(address().text(), b"x" * 100)
    cache = MemoryCache({"faq": one * 5 // 2})
    for n in range(3):
        await cache.put(address(n=n), b"x" * 100, 60)
    assert await cache.get(address(n=0)) is None  # three entries > two and a half: the oldest went
    assert await cache.get(address(n=1)) is not None  # used: now the most recent
    await cache.put(address(n=3), b"y" * 100, 60)
    assert await cache.get(address(n=2)) is None
    assert await cache.get(address(n=1)) is not None
    assert cache.size == 2 * one and len(cache) == 2


async def test_memory_counts_what_its_entries_hold_not_only_their_values() -> None:
    """Short answers: ``max_mb`` bounds the memory they hold (within a quarter), keys and
    Python's own objects included; counting the values alone held several times the bound."""
    limit = 1 << 20
    cache = MemoryCache({"faq": limit})
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(40_000):
            address = Address("t.tenant-a", "faq", "none.0123456789abcdef", os.urandom(20).hex())
            await cache.put(address, os.urandom(50).hex().encode(), 60)  # 100 bytes
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(cache) < 40_000  # it had to evict
    assert 0.75 * limit <= held <= 1.25 * limit, held


async def test_memory_sweep_drops_expired_entries() -> None:
    now = [0.0]
    cache = MemoryCache(clock=lambda: now[0])
    await cache.put(address(n=0), PLAIN, 10)
    await cache.put(address(n=1), PLAIN, 100)
    now[0] = 50.0
    assert await cache.sweep() == 1 and len(cache) == 1


async def test_a_task_purge_takes_that_task_only_whatever_the_names(store: CacheStore) -> None:
    """Seen with Redis: ``purge --task none`` matched ``*:none:*``, which also found every task's
    answers of release version ``none`` (a task without releases): all were deleted."""
    await store.put(address(task="none", version="none"), PLAIN, 60)
    await store.put(address(task="faq", version="none"), PLAIN, 60)
    await store.put(address(task="faq", version="none", shared=True), PLAIN, 60)
    await store.put(address(tenant="none", task="faq", version="v1"), PLAIN, 60)
    assert await store.purge(task="none") == 1
    assert await store.get(address(task="faq", version="none")) == PLAIN
    assert await store.get(address(task="faq", version="none", shared=True)) == PLAIN
    assert await store.get(address(tenant="none", task="faq", version="v1")) == PLAIN
    assert await store.purge_release("faq", frozenset({"none"})) == 1  # the v1 answer only
    assert await store.get(address(task="faq", version="none")) == PLAIN
    assert await store.purge(tenant="none") == 0  # the tenant named none has none left


@needs_redis
async def test_a_prefix_with_glob_characters_purges_its_own_keys_only() -> None:
    """``key_prefix: "rv?"`` made a purge's pattern match ``rvA:`` and ``rvB:`` too: another
    deployment's answers on the same Redis."""
    run = uuid.uuid4().hex[:8]
    mine, theirs = RedisCache(REDIS_URL, f"t{run}?", SECRET), RedisCache(REDIS_URL, f"t{run}B", SECRET)
    try:
        await mine.put(address(), PLAIN, 60)
        await theirs.put(address(), PLAIN, 60)
        assert await mine.purge(tenant="acme") == 1
        assert await mine.get(address()) is None
        assert await theirs.get(address()) == PLAIN
        assert await mine.purge() == 0
        assert await theirs.get(address()) == PLAIN
    finally:
        await forget(mine)
        await forget(theirs)
        await mine.aclose()
        await theirs.aclose()


@needs_redis
async def test_redis_values_are_sealed_the_plaintext_is_nowhere_in_redis() -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    cache = RedisCache(REDIS_URL, prefix, SECRET)
    raw = Redis.from_url(REDIS_URL)
    try:
        await cache.put(address(), PLAIN, 60)
        keys = [k async for k in raw.scan_iter(match=f"{prefix}:*")]
        assert len(keys) == 1
        value = await raw.get(keys[0])
        dump = await raw.dump(keys[0])
        assert value is not None and dump is not None
        for needle in (PLAIN, b"SECRET-ANSWER", b"launch code", b"0000"):
            assert needle not in value and needle not in dump and needle not in keys[0]
        assert 0 < await raw.pttl(keys[0]) <= 60_000
        # Copied under another key, it does not open: the key is the associated data.
        other = cache.key(address(n=9))
        await raw.set(other, value)
        assert await cache.get(address(n=9)) is None
        assert await raw.exists(other) == 0  # dropped as unreadable
        # Under another encryption key, it does not open either: a miss.
        rotated = RedisCache(REDIS_URL, prefix, "r" * 40)
        assert await rotated.get(address()) is None
        await rotated.aclose()
    finally:
        await forget(cache)
        await cache.aclose()
        await raw.aclose()


@needs_redis
async def test_redis_keeps_no_answer_read_before_a_purge_that_names_it() -> None:
    """A lookup reads the purge marks with the entry; its answer, stored with that mark, is not
    kept when a purge naming it (by every answer, tenant, task or both) came in between, from
    any process; purges naming other tenants or tasks change nothing for it."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    cache, cli = RedisCache(REDIS_URL, prefix, SECRET), RedisCache(REDIS_URL, prefix, SECRET)
    try:
        for tenant, task in ((None, None), ("acme", None), (None, "faq"), ("acme", "faq")):
            found, mark = await cache.read(address())
            assert found is None and mark is not None
            await cli.purge(tenant=tenant, task=task)
            assert not await cache.put(address(), PLAIN, 60, mark)
            assert await cache.get(address()) is None
        mark, shared_mark = (await cache.read(address()))[1], (await cache.read(address(n=1, shared=True)))[1]
        for tenant, task in (("globex", None), (None, "other"), ("globex", "faq"), ("acme", "other")):
            await cli.purge(tenant=tenant, task=task)
        assert await cache.put(address(), PLAIN, 60, mark)
        assert await cache.get(address()) == PLAIN
        for tenant, task in (("acme", None), ("acme", "faq")):  # shared answers belong to no tenant
            await cli.purge(tenant=tenant, task=task)
        assert await cache.put(address(n=1, shared=True), PLAIN, 60, shared_mark)
        assert await cache.get(address(n=1, shared=True)) == PLAIN
    finally:
        await forget(cache)
        await cache.aclose()
        await cli.aclose()


@needs_redis
async def test_redis_down_is_a_miss_not_an_error() -> None:
    cache = RedisCache("redis://127.0.0.1:1/0", "down", SECRET, socket_timeout=0.2)
    try:
        assert await cache.get(address()) is None
        assert not await cache.put(address(), PLAIN, 60)
    finally:
        await cache.aclose()


def test_sealer_round_trip_and_tamper() -> None:
    sealer = Sealer(SECRET)
    sealed = sealer.seal(PLAIN, b"where")
    assert sealer.open(sealed, b"where") == PLAIN
    assert sealed != sealer.seal(PLAIN, b"where")  # a fresh nonce each time
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    for bad, where in ((tampered, b"where"), (sealed, b"elsewhere"), (b"\x02" + sealed[1:], b"where"), (b"", b"")):
        with pytest.raises(Unsealable):
            sealer.open(bad, where)


def test_key_parts_and_canonical_form() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0, "tools": [{"b": 1, "a": 2}]}
    reordered = {"tools": [{"b": 1, "a": 2}], "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}
    assert digest(b"s", "internal", body) == digest(b"s", "internal", reordered)  # the top level: in order
    assert digest(b"s", "internal", body) == digest(b"s", "internal", {**body, "user": "x", "metadata": {"a": 1}})
    assert digest(b"s", "internal", body) != digest(b"s", "public", body)
    assert digest(b"s", "internal", body) != digest(b"t", "internal", body)
    assert digest(b"s", "internal", body) != digest(b"s", "internal", {**body, "stream": True})
    # one JSON number: temperature 0.0 and 0, max_tokens 64.0 and 64 are the same request
    assert digest(b"s", "internal", body) == digest(b"s", "internal", {**body, "temperature": 0.0})
    assert digest(b"s", "internal", {**body, "max_tokens": 64}) == digest(
        b"s", "internal", {**body, "max_tokens": 64.0}
    )
    assert digest(b"s", "internal", {**body, "top_p": 0.5}) != digest(b"s", "internal", {**body, "top_p": 1})
    assert digest(b"s", "internal", {**body, "seed": 1e300}) != digest(b"s", "internal", {**body, "seed": 1e299})
    assert quote("a:b*c") == "a%3Ab%2Ac" and quote("plain-name_1.x") == "plain-name_1.x"
    assert Address("t.a:b", "t", "v", "d").text() != Address("t.a", "b:t", "v", "d").text()
    assert deterministic({"messages": [], "temperature": 0}) and deterministic({"messages": [], "seed": 1})
    assert not deterministic({"messages": []}) and not deterministic({"messages": [], "temperature": 0.2})
    assert not deterministic({"messages": [], "seed": None})  # null: the default, no seed
    assert not deterministic({"messages": [], "temperature": None})
    assert deterministic({"messages": [], "seed": 0})


def schema_format(*names: str) -> dict[str, object]:
    properties = {name: {"type": "string"} for name in names}
    schema = {"type": "object", "properties": properties, "required": sorted(names)}
    return {"type": "json_schema", "json_schema": {"name": "order", "strict": True, "schema": schema}}


def test_key_order_below_the_top_level_is_kept() -> None:
    """Seen: a structured-output request whose schema listed ``properties`` in another order was
    served the answer of the first (keys were sorted at every depth), but the model writes the
    fields in the schema's order. Below the top level the body's order is the request's."""
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    one = {**body, "response_format": schema_format("id", "total")}
    two = {**body, "response_format": schema_format("total", "id")}
    assert digest(b"s", "internal", one) != digest(b"s", "internal", two)
    assert digest(b"s", "internal", one) == digest(
        b"s", "internal", {**body, "response_format": schema_format("id", "total")}
    )

    def tool(*names: str) -> dict[str, object]:
        parameters = {"type": "object", "properties": {n: {"type": "integer"} for n in names}}
        return {"type": "function", "function": {"name": "add", "parameters": parameters}}

    assert digest(b"s", "internal", {**body, "tools": [tool("a", "b")]}) != digest(
        b"s", "internal", {**body, "tools": [tool("b", "a")]}
    )
    # A message's keys are kept in the order sent too (a client sends one order every time).
    swapped = {**body, "messages": [{"content": "hi", "role": "user"}]}
    assert digest(b"s", "internal", swapped) != digest(b"s", "internal", body)


def test_a_null_top_level_parameter_is_left_out_of_the_key() -> None:
    """``"seed": null`` is OpenAI's default, as no ``seed`` is: one key, not two entries."""
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    for name in ("seed", "max_tokens", "stop", "tools", "tool_choice", "response_format", "n", "logit_bias"):
        assert digest(b"s", "internal", {**body, name: None}) == digest(b"s", "internal", body), name
    assert digest(b"s", "internal", {**body, "seed": 0}) != digest(b"s", "internal", body)
    # only the top level: a null inside a message is the caller's content
    said = {"messages": [{"role": "user", "content": "hi", "name": None}], "temperature": 0}
    assert digest(b"s", "internal", said) != digest(b"s", "internal", body)


def test_redis_is_reachable_for_these_tests() -> None:
    """The contract's Redis half is skipped without a Redis; this says so loudly in CI logs."""
    if not redis_reachable():
        pytest.skip("no Redis at 127.0.0.1:6379: the Redis half of the contract did not run")


async def test_the_sweep_drops_answers_of_releases_that_stopped_serving() -> None:
    from turnout.cache.factory import Sweeper
    from turnout.cache.stage import CacheStage
    from turnout.config import validate
    from turnout.releases.base import Prompt, Release, Serving

    def release(name: str, model_version: str) -> Release:
        return Release("faq", name, ("t",), model_version, None, Prompt(None, "{{ q }}", {"q": "string"}))

    old, active, canary = release("r1", "v1"), release("r2", "v2"), release("r3", "v3")
    serving = {"faq": Serving(old)}

    class Registry:
        def serving(self, task: str) -> Serving | None:
            return serving.get(task)

        def get(self, task: str, name: str) -> Release | None:
            return None

    raw = {
        "targets": {"t": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}},
        "tasks": {"faq": {"route": ["t"], "cache": {"ttl_s": 60, "classes": ["internal"]}}},
    }
    store = MemoryCache()
    stage = CacheStage(validate(raw), store)
    sweep = Sweeper(stage, Registry())

    def version(r: Release | None) -> str:
        found = stage.version("faq", r)
        assert found is not None
        return found

    for r in (old, active, canary):
        await store.put(address(version=version(r)), PLAIN, 60)
    await sweep()
    assert len(store) == 1 and await store.get(address(version=version(old))) == PLAIN
    serving["faq"] = Serving(active, canary, 10.0)  # promoted, with a canary
    await store.put(address(version=version(active)), PLAIN, 60)
    await store.put(address(version=version(canary)), PLAIN, 60)
    await sweep()
    assert await store.get(address(version=version(old))) is None
    assert len(store) == 2 and sweep.purged == 3
    await store.put(address(version=version(old)), PLAIN, 60)
    await sweep()  # nothing changed since the last run: no scan
    assert len(store) == 3
    assert version(None).startswith("none.") and version(old) != version(active)
    assert version(old).startswith(old.version + ".")  # the release, and who answers it
    assert stage.version("gone", None) is None
