"""``turnout cache purge`` on the in-process cache (``cache.backend: memory``): the purge log on
both state backends, the gateway's follower, the CLI, two gateways sharing one log, and a real
``turnout serve`` purged by the real CLI while it serves."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import openai
import pytest
import yaml
from click.testing import CliRunner

from tests.conftest import AppFactory
from tests.fakes.upstream import FakeUpstream, Fault
from tests.pgstate import KINDS, is_postgres, raw_sql, state_place
from tests.serving import Process, sdk_client, turnout_serve
from tests.test_cache_api import ASK, KEY, OTHER, calls, config
from tests.uvicorn_app import gateway
from turnout._support.places import PgPlace, Place
from turnout.cache.key import Address
from turnout.cache.memory import MemoryCache
from turnout.cache.purges import FILE_NAME, LOOKBACK_S, Follower, PurgeLog, PurgeLogError, describe, purge_log_path
from turnout.cli.main import main


@pytest.fixture(params=KINDS)
async def place(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Place]:
    async with state_place(request.param, tmp_path / FILE_NAME) as where:
        yield where


async def changed(log: PurgeLog, before: int, within_s: float = 5.0) -> None:
    """PostgreSQL's notices arrive on a listener thread: wait for the version to move."""
    async with asyncio.timeout(within_s):
        while log.data_version() == before:  # noqa: ASYNC110 - a counter, no event to await
            await asyncio.sleep(0.01)


# --- the log -----------------------------------------------------------------------------------


async def test_purges_come_back_in_order_after_an_id(place: Place) -> None:
    async with PurgeLog(place) as log:
        assert await log.last() == 0 and await log.after(0) == []
        first = await log.request("acme", None, "ops")
        second = await log.request(None, "faq", "ops")
        third = await log.request(None, None, "dpo")
        assert [p.id for p in await log.after(0)] == [first.id, second.id, third.id]
        assert await log.after(first.id) == [second, third]
        assert await log.last() == third.id
        assert (second.tenant, second.task, third.tenant, third.task) == (None, "faq", None, None)
        assert second.at <= third.at <= time.time()


async def test_a_purge_needs_who_asked(place: Place) -> None:
    async with PurgeLog(place) as log:
        with pytest.raises(PurgeLogError, match="who asked"):
            await log.request("acme", None, "  ")
        assert await log.after(0) == []


async def test_another_writer_moves_the_version(place: Place) -> None:
    async with PurgeLog(place) as gateway_side, PurgeLog(place) as cli_side:
        before = gateway_side.data_version()
        await cli_side.request("acme", None, "ops")
        await changed(gateway_side, before)
        assert [p.tenant for p in await gateway_side.after(0)] == ["acme"]


async def test_the_sqlite_log_is_owner_only_and_sits_beside_the_release_store(tmp_path: Path) -> None:
    assert purge_log_path(str(tmp_path / "state" / "releases.db")) == str(tmp_path / "state" / FILE_NAME)
    assert purge_log_path(":memory:") == ":memory:"
    path = tmp_path / FILE_NAME
    async with PurgeLog(path) as log:
        await log.request("acme", None, "ops")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_purge_describes_itself() -> None:
    assert describe("acme", None) == "the cached answers of tenant 'acme'"
    assert describe("acme", "faq") == "the cached answers of tenant 'acme' and task 'faq'"
    assert describe(None, "faq") == "the cached answers of task 'faq'"
    assert describe(None, None) == "every cached answer"


# --- the follower --------------------------------------------------------------------------------


def address(scope: str, task: str) -> Address:
    return Address(scope, task, "v1", f"{scope}-{task}-digest")


async def filled() -> MemoryCache:
    cache = MemoryCache({"faq": 1 << 20, "docs": 1 << 20})
    for scope in ("t.acme", "t.globex", "shared"):
        for task in ("faq", "docs"):
            await cache.put(address(scope, task), b"answer", 60)
    return cache


async def kept(cache: MemoryCache) -> set[tuple[str, str]]:
    out = set()
    for scope in ("t.acme", "t.globex", "shared"):
        for task in ("faq", "docs"):
            if await cache.get(address(scope, task)) is not None:
                out.add((scope, task))
    return out


async def test_the_follower_applies_each_new_purge_once_by_tenant_task_or_all(place: Place) -> None:
    cache = await filled()
    async with PurgeLog(place) as log, PurgeLog(place) as cli:
        follower = Follower(log, lambda tenant, task: cache.purge(tenant=tenant, task=task))
        await follower.start()
        await follower()  # nothing new
        assert len(await kept(cache)) == 6

        before = log.data_version()
        await cli.request("acme", None, "ops")
        await changed(log, before)
        await follower()
        assert await kept(cache) == {(s, t) for s in ("t.globex", "shared") for t in ("faq", "docs")}

        before = log.data_version()
        await cli.request(None, "docs", "ops")
        await changed(log, before)
        await follower()
        await follower()  # applied once: nothing left to count twice
        assert await kept(cache) == {("t.globex", "faq"), ("shared", "faq")}
        assert (follower.applied, follower.dropped) == (2, 4)

        before = log.data_version()
        await cli.request(None, None, "dpo")
        await changed(log, before)
        await follower()
        assert await kept(cache) == set()
        assert (follower.applied, follower.dropped) == (3, 6)


async def test_a_gateway_starts_after_the_purges_already_in_the_log(place: Place) -> None:
    async with PurgeLog(place) as cli:
        await cli.request(None, None, "ops")  # before this gateway started
        cache = await filled()
        async with PurgeLog(place) as log:
            follower = Follower(log, lambda tenant, task: cache.purge(tenant=tenant, task=task))
            await follower.start()
            before = log.data_version()
            await cli.request("nobody", None, "ops")
            await changed(log, before)
            await follower()
        assert len(await kept(cache)) == 6  # the old purge-all was not replayed on new answers
        assert follower.applied == 1


async def test_a_purge_committed_after_a_later_one_is_still_applied(place: Place) -> None:
    """PostgreSQL numbers a row when it is inserted, not when it commits: of two purges asked at
    once, the smaller id may commit second. A follower that read only ids past the last one it
    applied never saw it, and the tenant's answers stayed cached."""
    cache = await filled()
    async with PurgeLog(place) as log, PurgeLog(place) as cli:
        follower = Follower(log, lambda tenant, task: cache.purge(tenant=tenant, task=task))
        await follower.start()
        late = _open_purge(place, "acme")  # numbered first, not committed yet
        before = log.data_version()
        later = await cli.request("globex", None, "ops")
        await changed(log, before)
        await follower()
        assert ("t.globex", "faq") not in await kept(cache) and ("t.acme", "faq") in await kept(cache)

        before = log.data_version()
        late_id = late()  # commits now, after the follower read past it
        assert late_id < later.id
        await changed(log, before)
        await follower()
        await follower()
        assert {scope for scope, _ in await kept(cache)} == {"shared"}
        assert follower.applied == 2  # each once


def _open_purge(place: Place, tenant: str) -> Callable[[], int]:
    """A purge inserted in a transaction left open, as a slow CLI's would be; the returned
    function commits it and gives its id. On SQLite, whose writers take turns, the same late
    arrival is a row written afterwards with an id below the last one read."""
    if is_postgres(place):
        import psycopg

        assert isinstance(place, PgPlace)
        conn = psycopg.connect(place.dsn)
        conn.execute(f'SET search_path TO "{place.schema}"')
        row = conn.execute(
            "INSERT INTO cache_purges (tenant, task, at, by) VALUES (%s, NULL, %s, 'slow') RETURNING id",
            (tenant, time.time()),
        ).fetchone()
        assert row is not None
        conn.execute("SELECT pg_notify(%s, '')", (f"turnout_{place.schema}_cache-purges",))  # as the CLI's does

        def commit() -> int:
            conn.commit()
            conn.close()
            return int(row[0])

        return commit

    def write() -> int:
        (low,) = raw_sql(place, "SELECT MIN(id) - 1 FROM cache_purges")[0]
        raw_sql(place, f"INSERT INTO cache_purges VALUES ({int(low)}, '{tenant}', NULL, {time.time()}, 'slow')")  # noqa: S608 - the test's own values
        return int(low)

    return write


async def test_purges_older_than_the_lookback_are_forgotten_not_replayed(tmp_path: Path) -> None:
    now = [time.time()]
    cache = await filled()
    async with PurgeLog(tmp_path / FILE_NAME) as log:
        follower = Follower(log, lambda tenant, task: cache.purge(tenant=tenant, task=task), clock=lambda: now[0])
        await follower.start()
        await log.request("acme", None, "ops")
        await follower()
        now[0] += LOOKBACK_S + 1  # its id is still below the last one: not read again
        await log.request("nobody", None, "ops")
        await follower()
        assert follower.applied == 2 and follower._recent.keys() == {2}


async def test_a_purge_that_fails_is_tried_again_on_the_next_tick(tmp_path: Path) -> None:
    cache = await filled()
    tries: list[str | None] = []

    async def drop(tenant: str | None, task: str | None) -> int:
        tries.append(tenant)
        if len(tries) == 1:
            raise OSError("not now")
        return await cache.purge(tenant=tenant, task=task)

    async with PurgeLog(tmp_path / FILE_NAME) as log:
        follower = Follower(log, drop)
        await follower.start()
        await log.request("acme", None, "ops")
        with pytest.raises(OSError, match="not now"):
            await follower()
        await follower()
        assert ("t.acme", "faq") not in await kept(cache) and follower.applied == 1
        assert tries == ["acme", "acme"]


async def test_who_asked_cannot_forge_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``--by`` is free text: a newline in it wrote a second, forged purge line in the log."""
    cache = await filled()
    async with PurgeLog(tmp_path / FILE_NAME) as log:
        follower = Follower(log, lambda tenant, task: cache.purge(tenant=tenant, task=task))
        await follower.start()
        forged = "mallory\n2026-12-05 INFO turnout.cache.purges: cache: purged every cached answer, asked by admin"
        await log.request(None, "faq", forged)
        with caplog.at_level(logging.INFO, logger="turnout.cache"):
            await follower()
    [line] = [r.getMessage() for r in caplog.records if "asked by" in r.getMessage()]
    assert "\n" not in line
    assert line.endswith(
        "asked by mallory?2026-12-05 INFO turnout.cache.purges: cache: purged every cached answer, asked by admin"
    )


# --- the CLI and the gateway ---------------------------------------------------------------------


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({k: v for k, v in raw.items() if k != "store"}))
    return path


async def ask(client: openai.AsyncOpenAI) -> str:
    resp = await client.chat.completions.with_raw_response.create(model="faq", messages=ASK, temperature=0)
    resp.parse()
    return str(resp.headers["x-turnout-cache"])


async def purge_cli(*args: str) -> str:
    result = await asyncio.to_thread(CliRunner().invoke, main, ["cache", "purge", *args])  # its own loop
    assert result.exit_code == 0, result.output
    return result.output


async def until(client: openai.AsyncOpenAI, state: str, within_s: float = 3.0) -> float:
    """Seconds until the answer's cache state is ``state``, asking every 50 ms."""
    start = time.monotonic()
    while (found := await ask(client)) != state:
        assert time.monotonic() - start < within_s, f"still {found!r} after {within_s} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def test_two_gateways_sharing_the_log_both_drop_the_tenants_answers(make_app: AppFactory, tmp_path: Path) -> None:
    async with FakeUpstream(reply=("Paris",)) as upstream:
        raw = {**config(upstream), "releases": {"store_path": str(tmp_path / "releases.db")}}
        async with gateway(make_app, raw, KEY) as (_, one), gateway(make_app, raw, KEY) as (_, two):
            others = [one.with_options(api_key=OTHER), two.with_options(api_key=OTHER)]
            for client in (one, two, *others):
                assert await ask(client) == "miss"  # each process its own cache
                assert await ask(client) == "hit"
            out = await purge_cli(
                "--tenant", "acme", "--by", "dpo", "--config", str(write_config(tmp_path / "t.yaml", raw))
            )
            assert "Asked every gateway sharing" in out and "tenant 'acme'" in out
            for client in (one, two):
                assert await until(client, "miss") < 2.0
            for client in others:
                assert await ask(client) == "hit"  # another tenant's answers stay
            assert calls(upstream) == 6


async def test_an_answer_in_flight_when_the_purge_came_is_not_kept(make_app: AppFactory, tmp_path: Path) -> None:
    """Seen: a request that missed before the purge and was answered after it put its answer
    in the cache the purge had just emptied, so the next request was a hit on an answer the
    operator had asked to be rid of. Its own caller still gets it; the cache does not."""
    async with FakeUpstream(reply=("Paris",)) as upstream:
        raw = {**config(upstream), "releases": {"store_path": str(tmp_path / "releases.db")}}
        async with gateway(make_app, raw, KEY) as (_, client):
            other: list[Any] = [{"role": "user", "content": "and of Spain?"}]
            await client.chat.completions.create(model="faq", messages=other, temperature=0)
            upstream.fault = Fault(head_delay=4.0, times=1)
            leader = asyncio.create_task(ask(client))
            while calls(upstream) < 2:  # noqa: ASYNC110 - the leader has reached the upstream
                await asyncio.sleep(0.01)
            await purge_cli("--task", "faq", "--config", str(write_config(tmp_path / "t.yaml", raw)))
            while True:  # the purge is applied once the other answer is gone
                resp = await client.chat.completions.with_raw_response.create(
                    model="faq", messages=other, temperature=0
                )
                if resp.headers["x-turnout-cache"] == "miss":
                    break
                await asyncio.sleep(0.05)
            assert not leader.done()  # answered after the purge
            assert await leader == "miss"
            assert await ask(client) == "miss"


def followed_config(tmp_path: Path) -> Path:
    """A config whose purge log (under tmp_path/state) a gateway has opened: one follows it."""
    raw = {
        "targets": {"t": {"provider": "local"}},
        "tasks": {"x": {"route": ["t"]}},
        "releases": {"store_path": str(tmp_path / "state" / "releases.db")},
    }
    path = write_config(tmp_path / "turnout.yaml", raw)
    assert logged(tmp_path) == []
    return path


def logged(tmp_path: Path) -> list[Any]:
    async def read() -> list[Any]:
        async with PurgeLog(tmp_path / "state" / FILE_NAME) as log:
            return await log.after(0)

    return asyncio.run(read())


def test_the_cli_writes_the_purge_with_who_asked(tmp_path: Path) -> None:
    path = followed_config(tmp_path)
    result = CliRunner().invoke(main, ["cache", "purge", "--task", "x", "--by", "dpo", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "to purge the cached answers of task 'x'" in result.output

    (purge,) = logged(tmp_path)
    assert (purge.tenant, purge.task, purge.by) == (None, "x", "dpo")


def ask_sync(client: openai.OpenAI) -> str:
    resp = client.chat.completions.with_raw_response.create(model="faq", messages=ASK, temperature=0)
    resp.parse()
    return str(resp.headers["x-turnout-cache"])


def test_a_real_gateway_drops_the_answers_when_the_real_cli_asks(tmp_path: Path) -> None:
    """``turnout serve`` and ``turnout cache purge`` as a new user runs them: their own
    processes, the default state directory (./.turnout) under the same working directory."""
    upstream = Process("tests.fakes.upstream", ready_path="/v1/models")
    try:
        raw = config(cast(FakeUpstream, SimpleNamespace(base_url=upstream.url + "/v1")))  # its own process
        write_config(tmp_path / "turnout.yaml", raw)
        with turnout_serve(tmp_path, tmp_path / "turnout.yaml") as served:
            one = sdk_client(served.base_url, KEY)
            other = sdk_client(served.base_url, OTHER)
            for client in (one, other):
                assert [ask_sync(client), ask_sync(client)] == ["miss", "hit"]
            done = subprocess.run(
                [sys.executable, "-m", "turnout", "cache", "purge", "--tenant", "acme", "--config", "turnout.yaml"],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            start = time.monotonic()
            while ask_sync(one) != "miss":
                assert time.monotonic() - start < 2.0, "the running gateway never dropped acme's answer"
                time.sleep(0.05)
            assert ask_sync(other) == "hit"
        assert (tmp_path / ".turnout" / FILE_NAME).exists()
        assert "purged the cached answers of tenant 'acme' (1 dropped here)" in served.log.read_text()
    finally:
        upstream.stop()


def test_a_name_not_in_the_config_is_purged_with_a_note(tmp_path: Path) -> None:
    """A typo must not read as a clean success; a removed tenant's answers stay purgeable."""
    path = followed_config(tmp_path)
    args = ["cache", "purge", "--tenant", "nosuch", "--task", "x", "--config", str(path)]
    result = CliRunner().invoke(main, args)  # click 8.2+: stdout and stderr kept apart too
    assert result.exit_code == 0, result.output
    assert "no tenant 'nosuch' in the config" in result.stderr
    assert "no task" not in result.stderr  # x is configured
    assert "to purge" in result.stdout
    (purge,) = logged(tmp_path)
    assert (purge.tenant, purge.task) == ("nosuch", "x")


@pytest.mark.parametrize("flag", ["--tenant", "--task", "--by"])
def test_an_empty_name_is_refused_not_read_as_every_answer(tmp_path: Path, flag: str) -> None:
    """A script's empty variable (``--tenant "$TENANT"``) must not turn into a purge of all."""
    raw = {
        "targets": {"t": {"provider": "local"}},
        "tasks": {"x": {"route": ["t"]}},
        "releases": {"store_path": str(tmp_path / "releases.db")},
    }
    path = write_config(tmp_path / "turnout.yaml", raw)
    result = CliRunner().invoke(main, ["cache", "purge", flag, " ", "--config", str(path)])
    assert result.exit_code == 2 and f"{flag} must not be empty" in result.output
    assert not (tmp_path / FILE_NAME).exists()  # nothing asked of any gateway
