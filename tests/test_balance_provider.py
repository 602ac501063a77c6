"""Load-aware replica choice, end to end inside one process: ``OpenAIProvider`` with a ``load``
scraper against fake model servers (``tests.fakes.vllm``) whose ``/metrics`` numbers each test
changes while the provider runs. Waits are for the scraper's next reading, never timed claims."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest

from tests.fakes.upstream import Fault
from tests.fakes.vllm import FakeVLLM
from turnout.config import OpenAITarget
from turnout.providers import balance, promtext
from turnout.providers.base import Call, Timeouts
from turnout.providers.openai import OpenAIProvider
from turnout.providers.promtext import Gauges

FAST = Timeouts(connect=1.0, ttft=2.0, total=4.0)
LOAD = {"interval_s": 0.05, "timeout_s": 0.5}


def target(*urls: str, **overrides: Any) -> OpenAITarget:
    raw: dict[str, Any] = {"provider": "openai", "base_urls": list(urls), "model": "m", "load": LOAD, **overrides}
    return OpenAITarget.model_validate(raw)


def chat(*messages: tuple[str, str]) -> Call:
    body = {"model": "m", "messages": [{"role": role, "content": text} for role, text in messages]}
    return Call(body=body, stream=False, timeouts=FAST, request_id="req")


def turn(conversation: int, n: int) -> Call:
    """The n-th turn of one conversation: the same system prompt and first question, more after."""
    messages = [("system", "You are terse."), ("user", f"question {conversation}")]
    for i in range(n):
        messages += [("assistant", f"answer {i}"), ("user", f"follow-up {i}")]
    return chat(*messages)


@asynccontextmanager
async def servers(n: int, **fields: Any) -> AsyncIterator[list[FakeVLLM]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(FakeVLLM(**fields)) for _ in range(n)]


@asynccontextmanager
async def provider_for(fakes: list[FakeVLLM], **overrides: Any) -> AsyncIterator[OpenAIProvider]:
    provider = OpenAIProvider("pool", target(*(f.base_url for f in fakes), **overrides))
    try:
        yield provider
        assert [r.in_flight for r in provider.replicas] == [0] * len(fakes), "a slot leaked"
    finally:
        await provider.aclose()


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait for the scraper to catch up; the bound only stops a broken test from hanging."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the scraper never saw the change"
        await asyncio.sleep(0.01)


def seen(provider: OpenAIProvider, index: int, waiting: float) -> Callable[[], bool]:
    return lambda: provider.load().replicas[index].waiting == waiting


async def spread(provider: OpenAIProvider, calls: int, concurrency: int = 6) -> Counter[str]:
    """Send ``calls`` calls, ``concurrency`` at a time; how many each replica answered."""
    got: Counter[str] = Counter()
    for _ in range(calls // concurrency):
        done = await asyncio.gather(*(provider.complete(chat(("user", "hi"))) for _ in range(concurrency)))
        got.update(c.replica for c in done)
    return got


# -- least_loaded ---------------------------------------------------------------------------


async def test_a_replica_with_a_long_queue_gets_under_a_tenth_of_new_calls() -> None:
    async with servers(3) as fakes, provider_for(fakes) as p:
        fakes[0].waiting = 40
        await until(seen(p, 0, 40.0))
        got = await spread(p, 120)
        assert sum(got.values()) == 120
        assert got["r0"] <= 12, got
        assert got["r1"] > 0 and got["r2"] > 0
        # The queue moves to r1: the next calls follow the numbers.
        fakes[0].waiting, fakes[1].waiting = 0, 40
        await until(seen(p, 1, 40.0))
        await until(seen(p, 0, 0.0))
        got = await spread(p, 120)
        assert got["r1"] <= 12, got
        assert got["r0"] > 0


async def test_a_full_kv_cache_weighs_less_than_a_queue_but_still_counts() -> None:
    async with servers(2) as fakes, provider_for(fakes) as p:
        fakes[0].kv_cache = 0.95
        await until(lambda: p.load().replicas[0].kv_cache == 0.95)
        assert p.replicas[0].pressure > p.replicas[1].pressure
        got = await spread(p, 30, concurrency=1)
        assert got == {"r1": 30}  # one call at a time: r1's score stays below r0's
        # Under concurrency the KV pressure is worth a few calls in flight, not all of them.
        got = await spread(p, 30, concurrency=10)
        assert got["r0"] > 0


async def test_without_a_load_section_the_choice_is_fewest_in_flight() -> None:
    async with servers(2, waiting=40) as fakes, provider_for(fakes, load=None) as p:
        got = await spread(p, 12, concurrency=2)
        assert got == {"r0": 6, "r1": 6}
        assert all(f.scrapes == 0 for f in fakes)
        assert p.load().replicas[0].waiting is None


@pytest.mark.parametrize("flavour", ["vllm", "vllm_old", "sglang", "llamacpp"])
async def test_every_server_flavour_is_read(flavour: str) -> None:
    async with servers(2, flavour=flavour, engines=2) as fakes, provider_for(fakes) as p:
        fakes[1].waiting, fakes[1].running, fakes[1].kv_cache = 30, 8, 0.5
        await until(seen(p, 1, 30.0))
        load = p.load().replicas[1]
        assert load.running == 8.0  # summed over both engines
        assert load.kv_cache == (None if flavour == "llamacpp" else 0.5)
        assert (await spread(p, 6, concurrency=1)) == {"r0": 6}


# -- prefix_affinity ------------------------------------------------------------------------


async def test_a_conversation_stays_on_one_replica_and_moves_when_it_is_overloaded() -> None:
    async with servers(3) as fakes, provider_for(fakes, balance="prefix_affinity") as p:
        home = (await p.complete(turn(7, 0))).replica
        for n in range(1, 6):
            assert (await p.complete(turn(7, n))).replica == home
        h = int(home[1:])
        fakes[h].waiting = 20  # 40 of pressure: past the slack of 8
        await until(seen(p, h, 20.0))
        moved = {(await p.complete(turn(7, n))).replica for n in range(6, 10)}
        assert home not in moved
        fakes[h].waiting = 0
        await until(seen(p, h, 0.0))
        assert (await p.complete(turn(7, 10))).replica == home  # back home: its prefix cache


async def test_a_small_load_difference_does_not_move_a_conversation() -> None:
    async with servers(2) as fakes, provider_for(fakes, balance="prefix_affinity", affinity_slack=8) as p:
        home = (await p.complete(turn(1, 0))).replica
        h = int(home[1:])
        fakes[h].waiting = 3  # 6 of pressure: within the slack
        await until(seen(p, h, 3.0))
        assert {(await p.complete(turn(1, n))).replica for n in range(1, 5)} == {home}


async def test_conversations_spread_over_the_replicas() -> None:
    async with servers(3) as fakes, provider_for(fakes, balance="prefix_affinity") as p:
        homes = Counter([(await p.complete(turn(c, 0))).replica for c in range(60)])
        assert set(homes) == {"r0", "r1", "r2"}
        assert min(homes.values()) >= 5, homes  # rendezvous hashing: about 20 each


async def test_every_gateway_process_and_any_url_order_agree_on_the_home() -> None:
    async with servers(3) as fakes:
        async with provider_for(fakes, balance="prefix_affinity", load=None) as p:
            first = [p.replicas[int((await p.complete(turn(c, 0))).replica[1:])].chat_url for c in range(12)]
        reordered = [fakes[2], fakes[0], fakes[1]]
        async with provider_for(reordered, balance="prefix_affinity", load=None) as q:
            again = [q.replicas[int((await q.complete(turn(c, 0))).replica[1:])].chat_url for c in range(12)]
        assert again == first


async def test_without_scraping_affinity_yields_to_calls_in_flight() -> None:
    async with servers(2) as fakes, provider_for(fakes, balance="prefix_affinity", affinity_slack=2, load=None) as p:
        home = (await p.complete(turn(3, 0))).replica
        h = int(home[1:])
        fakes[h].fault.head_delay = 0.3  # the home's calls pile up in flight
        first = [asyncio.create_task(p.complete(turn(3, n))) for n in range(3)]
        await until(lambda: p.replicas[h].in_flight == 3)
        assert (await p.complete(turn(3, 9))).replica != home  # 3 in flight > 0 + slack 2
        assert {c.replica for c in await asyncio.gather(*first)} == {home}


# -- the scraper: failures, staleness, closing ----------------------------------------------


async def test_a_reading_that_cannot_be_refreshed_expires() -> None:
    async with servers(2) as fakes, provider_for(fakes, load={**LOAD, "stale_s": 0.3}) as p:
        fakes[0].waiting = 40
        await until(seen(p, 0, 40.0))
        fakes[0].metrics_status = 500
        await until(lambda: p.replicas[0].detail == "HTTP 500")
        assert p.load().replicas[0].waiting == 40.0  # kept until stale_s
        await until(lambda: p.load().replicas[0].waiting is None)
        assert p.replicas[0].pressure == 0.0
        assert (await spread(p, 4, concurrency=2)) == {"r0": 2, "r1": 2}  # back to fewest in flight


@pytest.mark.parametrize(
    ("fault", "detail"),
    [
        ({"metrics_raw": b"\x00\xff garbage {{{ 1e999\n"}, "no load metrics"),
        ({"metrics_raw": b'vllm:num_requests_waiting{x="}"} NaN\n'}, "no load metrics"),
        ({"metrics_status": 404}, "HTTP 404"),
        ({"metrics_hang": True}, "timeout"),
    ],
)
async def test_a_hostile_metrics_page_is_ignored(fault: dict[str, Any], detail: str) -> None:
    async with servers(2) as fakes, provider_for(fakes, load={"interval_s": 0.05, "timeout_s": 0.1}) as p:
        for key, value in fault.items():
            setattr(fakes[0], key, value)
        await until(lambda: p.replicas[0].detail == detail)
        assert p.load().replicas[0].waiting is None
        assert p.replicas[0].pressure == 0.0
        assert (await p.complete(chat(("user", "hi")))).replica in {"r0", "r1"}


async def test_an_unreachable_replica_is_described_without_its_address() -> None:
    async with servers(1) as fakes:
        url = fakes[0].base_url
    async with servers(1) as live, provider_for([*fakes, *live]) as p:
        await until(lambda: p.replicas[0].detail != "")
        assert "127.0.0.1" not in p.replicas[0].detail
        assert p.replicas[1].detail == ""
        assert url not in repr(p.replicas)


async def test_close_stops_the_scraper_and_nothing_is_read_after(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="turnout")
    async with servers(1) as fakes:
        async with provider_for(fakes) as p:
            await until(lambda: fakes[0].scrapes >= 2)
            scraper = p._scraper
            assert scraper is not None and scraper.loop.running
        assert not scraper.loop.running
        count = fakes[0].scrapes
        await asyncio.sleep(0.2)  # four intervals: a live loop would have scraped again
        assert fakes[0].scrapes == count
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_the_metrics_path_is_on_the_base_urls_host() -> None:
    async with servers(1) as fakes, provider_for(fakes, load={**LOAD, "path": "/elsewhere"}) as p:
        await until(lambda: p.replicas[0].detail == "HTTP 404")
        assert p.replicas[0].metrics_url.path == "/elsewhere"
        assert fakes[0].scrapes == 0


async def test_a_bug_in_one_read_is_logged_once_and_the_others_are_still_read(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def parse(data: bytes) -> Gauges | None:
        if data == b"boom":
            raise ValueError("a parser bug")
        return promtext.parse(data)

    monkeypatch.setattr(balance, "parse", parse)
    caplog.set_level(logging.DEBUG, logger="turnout")
    async with servers(2) as fakes, provider_for(fakes) as p:
        fakes[0].metrics_raw, fakes[1].waiting = b"boom", 5
        await until(seen(p, 1, 5.0))
        scraper = p._scraper
        assert scraper is not None
        await until(lambda: scraper.loop.failures >= 3)
        assert scraper.loop.running  # the loop outlives the bug
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "turnout-load-pool" in errors[0] and "ValueError" in errors[0]
    assert "a parser bug" not in errors[0]  # by type and place only


async def test_calls_that_fill_the_connection_pool_do_not_starve_the_scraper() -> None:
    async with servers(2) as fakes, provider_for(fakes, max_connections=1) as p:
        fakes[0].fault = Fault("hang")
        slow = Timeouts(connect=1.0, ttft=30.0, total=60.0)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        hung = asyncio.create_task(p.stream(Call(body=body, stream=True, timeouts=slow, request_id="hung")))
        await until(lambda: fakes[0].in_flight == 1)  # the target's one connection is taken
        fakes[1].waiting = 7
        await until(seen(p, 1, 7.0))
        hung.cancel()
        await asyncio.wait([hung])
