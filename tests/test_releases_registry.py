"""The registry the request path reads: answers from memory, sees another store instance's
changes (the CLI, another replica) through PRAGMA data_version, and the sticky canary split."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from turnout.config import validate
from turnout.errors import ConfigError
from turnout.releases.base import Prompt, Release, Serving, choose, sticky_bucket
from turnout.releases.registry import StoreRegistry, open_registry
from turnout.releases.store import ReleaseStore

TASK = "extract"


def make(name: str, temperature: float = 0.0) -> Release:
    return Release(
        task=TASK,
        name=name,
        route=("qwen",),
        model_version="m1",
        tokenizer=None,
        prompt=Prompt(system=None, user="{{ text }}", variables={"text": "str"}),
        params={"temperature": temperature},
    )


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[ReleaseStore, ReleaseStore]]:
    """Two connections to one file: the gateway's and the CLI's (or another replica's)."""
    path = tmp_path / "releases.db"
    async with ReleaseStore(path) as gateway, ReleaseStore(path) as cli:
        yield gateway, cli


async def test_serving_from_memory_and_refresh_across_instances(stores: tuple[ReleaseStore, ReleaseStore]) -> None:
    gateway, cli = stores
    registry = StoreRegistry(gateway, interval=3600)  # no polling: refresh() by hand
    await registry.start()
    try:
        assert registry.serving(TASK) is None
        await cli.register(make("v1"), "alice")
        assert registry.serving(TASK) is None  # not yet refreshed: memory only
        assert await registry.refresh() is True
        assert registry.serving(TASK) == Serving(active=None)
        assert await registry.refresh() is False  # nothing committed since
        await cli.promote(TASK, "v1", "alice", "first")
        await cli.register(make("v2", 0.3), "alice")
        await cli.mark_evaluated(TASK, "v2", "eval", "ok")
        await cli.start_canary(TASK, "v2", 10, "alice", "go")
        await registry.refresh()
        assert registry.serving(TASK) == Serving(active=make("v1"), canary=make("v2", 0.3), canary_percent=10.0)
        assert registry.get(TASK, "v2") == make("v2", 0.3)
        assert registry.get(TASK, "nope") is None
        assert sorted(registry.registered(TASK)) == ["v1", "v2"]
    finally:
        await registry.aclose()


async def test_the_poller_sees_changes_within_the_interval(stores: tuple[ReleaseStore, ReleaseStore]) -> None:
    gateway, cli = stores
    await cli.register(make("v1"), "alice")
    await cli.promote(TASK, "v1", "alice", "first")
    await cli.register(make("v2", 0.3), "alice")
    await cli.mark_evaluated(TASK, "v2", "eval", "ok")
    registry = StoreRegistry(gateway, interval=0.05)
    await registry.start()
    try:
        served = registry.serving(TASK)
        assert served is not None and served.active == make("v1")
        started = time.monotonic()
        await cli.promote(TASK, "v2", "alice", "ship")
        while (s := registry.serving(TASK)) is None or s.active != make("v2", 0.3):
            assert time.monotonic() - started < 2, "the registry did not see the promotion"
            await asyncio.sleep(0.01)
        await cli.rollback(TASK, "alice", "back")
        while (s := registry.serving(TASK)) is None or s.active != make("v1"):
            assert time.monotonic() - started < 4, "the registry did not see the rollback"
            await asyncio.sleep(0.01)
    finally:
        await registry.aclose()
    assert not registry._poller.running


async def test_files_serve_get_for_unregistered_releases_and_drift_is_reported(
    stores: tuple[ReleaseStore, ReleaseStore],
) -> None:
    gateway, cli = stores
    await cli.register(make("v1"), "alice")
    files = {TASK: {"v1": make("v1", temperature=0.9), "v3": make("v3")}}
    registry = StoreRegistry(gateway, files, interval=3600)
    await registry.start()
    try:
        assert registry.get(TASK, "v1") == make("v1")  # the registered one, not the edited file
        assert registry.get(TASK, "v3") == make("v3")  # only a file so far: an eval candidate
        (problem,) = registry.drift()
        assert (
            "release 'v1' of task 'extract': the file" in problem and "Give the changed release a new name" in problem
        )
    finally:
        await registry.aclose()


async def test_open_registry_from_config(tmp_path: Path) -> None:
    config = validate(
        {
            "targets": {"qwen": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "q"}},
            "tasks": {TASK: {"route": ["qwen"]}},
            "releases": {"path": str(tmp_path / "releases"), "store_path": str(tmp_path / "state" / "r.db")},
        }
    )
    registry = await open_registry(config, interval=0.05)
    try:
        assert registry.serving(TASK) is None
        async with ReleaseStore(config.releases.store_path) as cli:
            await cli.register(make("v1"), "alice")
            await cli.promote(TASK, "v1", "alice", "first")
        for _ in range(200):
            if (s := registry.serving(TASK)) is not None and s.active is not None:
                break
            await asyncio.sleep(0.01)
        assert registry.serving(TASK) == Serving(active=make("v1"))
    finally:
        await registry.aclose()
    assert registry.store._executor is None  # it owned the store and closed it
    (tmp_path / "releases" / "nope").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no task 'nope'"):
        await open_registry(config)


async def test_a_failed_refresh_keeps_the_last_state(stores: tuple[ReleaseStore, ReleaseStore]) -> None:
    gateway, cli = stores
    await cli.register(make("v1"), "alice")
    await cli.promote(TASK, "v1", "alice", "first")
    registry = StoreRegistry(gateway, interval=0.01)
    await registry.start()
    try:
        calls = 0

        async def broken() -> None:
            nonlocal calls
            calls += 1
            raise RuntimeError("disk on fire")

        registry.store.snapshot = broken  # type: ignore[assignment,method-assign]
        await cli.register(make("v2"), "alice")
        for _ in range(100):
            if calls >= 2:
                break
            await asyncio.sleep(0.01)
        assert calls >= 2  # the poller kept going after the first failure
        served = registry.serving(TASK)
        assert served is not None and served.active == make("v1")
    finally:
        await registry.aclose()


def test_data_version_is_cheap_enough_to_poll(tmp_path: Path) -> None:
    """The poller's check: a few µs; documented as the reason polling twice a second is free."""

    async def measure() -> float:
        async with ReleaseStore(tmp_path / "r.db") as s:
            n = 2000
            start = time.perf_counter()
            for _ in range(n):
                s.data_version()
            return (time.perf_counter() - start) / n

    per_call = asyncio.run(measure())
    assert per_call < 200e-6, f"PRAGMA data_version took {per_call * 1e6:.1f} µs"


# --- the sticky split ----------------------------------------------------------------------


@pytest.mark.parametrize("percent", [1.0, 5.0, 25.0, 50.0, 90.0])
def test_the_canary_share_is_close_to_its_percent(percent: float) -> None:
    serving = Serving(active=make("v1"), canary=make("v2", 0.3), canary_percent=percent)
    n = 20_000
    hits = sum(choose(serving, TASK, f"user-{i}") is serving.canary for i in range(n))
    expected = n * percent / 100
    sd = (n * percent / 100 * (1 - percent / 100)) ** 0.5
    assert abs(hits - expected) < 5 * sd, (hits, expected)


def test_a_user_stays_on_one_side_and_moves_only_forward_as_the_share_grows() -> None:
    active, canary = make("v1"), make("v2", 0.3)
    users = [f"user-{i}" for i in range(2000)]
    previous: set[str] = set()
    for percent in (5.0, 25.0, 50.0, 100.0):
        serving = Serving(active=active, canary=canary, canary_percent=percent)
        on_canary = {u for u in users if choose(serving, TASK, u) is canary}
        assert on_canary == {u for u in users if choose(serving, TASK, u) is canary}  # same key, same side
        assert previous <= on_canary  # nobody flips back to the active release as the canary grows
        previous = on_canary
    assert previous == set(users)


def test_tasks_split_independently_and_no_canary_means_active() -> None:
    users = [f"user-{i}" for i in range(2000)]
    a = {u for u in users if sticky_bucket("extract", u) < 10}
    b = {u for u in users if sticky_bucket("summarise", u) < 10}
    assert a != b
    buckets = [sticky_bucket(TASK, u) for u in users]
    assert min(buckets) >= 0 and max(buckets) < 100
    assert choose(Serving(active=make("v1")), TASK, "anyone") == make("v1")
    assert choose(Serving(active=None), TASK, "anyone") is None
