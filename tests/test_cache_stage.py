"""The cache stage and its parts on their own: which requests may be cached, single flight at the
stage (followers get the leader's bytes; a leader without an answer sets them free), the entry
format and the stream recording, the bypass headers, and the config's privacy rules."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import orjson
import pytest

from turnout.cache.entry import REPLICA, Recording, decode, encode
from turnout.cache.memory import MemoryCache
from turnout.cache.stage import BYPASS, HIT, MISS, CacheStage, bypassed
from turnout.config import validate
from turnout.errors import ConfigError
from turnout.providers.base import Completion, Stream, Usage
from turnout.releases.base import Prompt, Release

BODY: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0}


def raw_config(task_cache: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    return {
        "targets": {"t": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}},
        "tasks": {
            "faq": {"route": ["t"], "cache": task_cache or {"ttl_s": 60, "classes": ["public", "internal"]}},
            "plain": {"route": ["t"]},
        },
        **top,
    }


def stage(cache: dict[str, Any] | None = None) -> CacheStage:
    return CacheStage(validate(raw_config(cache)), MemoryCache())


# -- which requests ----------------------------------------------------------------------------


async def test_a_task_without_cache_gets_none() -> None:
    assert await stage().lookup("plain", "acme", "internal", None, BODY, False) is None


@pytest.mark.parametrize(
    ("data_class", "body", "bypass", "state"),
    [
        ("internal", BODY, False, MISS),
        ("internal", BODY, True, BYPASS),
        ("confidential", BODY, False, BYPASS),
        ("restricted", BODY, False, BYPASS),
        ("internal", {**BODY, "temperature": 1}, False, BYPASS),
        ("internal", {"messages": BODY["messages"]}, False, BYPASS),  # no temperature: the server's default samples
        ("internal", {**BODY, "temperature": 1, "seed": 3}, False, MISS),
        ("internal", {**BODY, "temperature": 1, "seed": None}, False, BYPASS),  # null: the default, no seed
        ("internal", {**BODY, "temperature": None}, False, BYPASS),  # null: the server's default samples
        ("internal", {**BODY, "seed": 0}, False, MISS),
    ],
)
async def test_what_is_looked_up(data_class: str, body: dict[str, Any], bypass: bool, state: bytes) -> None:
    found = await stage().lookup("faq", "acme", data_class, None, body, bypass)
    assert found is not None and found.state == state
    assert found.header == (b"x-turnout-cache", state)


async def test_restricted_can_never_be_configured() -> None:
    with pytest.raises(ConfigError) as caught:
        validate(raw_config({"ttl_s": 60, "classes": ["public", "restricted"]}))
    assert any("'restricted' answers are never cached" in p for p in caught.value.problems)


@pytest.mark.parametrize(
    ("cache", "top", "problem"),
    [
        ({"ttl_s": 60, "classes": ["internal"], "scope": "shared"}, {}, "scope: 'shared' is only allowed"),
        ({"ttl_s": 0, "classes": ["internal"]}, {}, "ttl_s"),
        ({"ttl_s": 60, "classes": []}, {}, "classes"),
        ({"ttl_s": 60, "classes": ["internal"]}, {"cache": {"backend": "redis"}}, "encryption_key: required"),
        ({"ttl_s": 60, "classes": ["internal"]}, {"cache": {"encryption_key": "short"}}, "at least 32 bytes"),
    ],
)
def test_bad_cache_config_is_named(cache: dict[str, Any], top: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate(raw_config(cache, **top))
    assert any(problem in p for p in caught.value.problems), caught.value.problems


@pytest.mark.parametrize(
    ("cache_control", "turnout_cache", "expected"),
    [
        (None, None, False),
        (b"no-cache", None, True),
        (b"No-Cache", None, True),
        (b"max-age=0, no-store", None, True),
        (b"max-age=60", None, False),
        (b"no-cache-please", None, False),
        (None, b"bypass", True),
        (None, b" BYPASS ", True),
        (None, b"hit", False),
        (None, b"hit, bypass", True),  # two lines of one header, joined
        (b"max-age=0,no-cache", None, True),
        (b",,=", b"\xff", False),
    ],
)
def test_bypass_headers(cache_control: bytes | None, turnout_cache: bytes | None, expected: bool) -> None:
    assert bypassed(cache_control, turnout_cache) is expected


async def test_a_null_parameter_is_the_same_request_as_an_absent_one() -> None:
    """Seen: ``"seed": null`` and a body without ``seed`` were kept as two answers. A top-level
    null means the default in OpenAI's API, as absence does: one key."""
    s = stage()
    nulls = {**BODY, "seed": None, "max_tokens": None, "stop": None, "tools": None, "response_format": None}
    leader = await s.lookup("faq", "acme", "internal", None, nulls, False)
    assert leader is not None and leader.state == MISS
    await s.fill(leader, encode("t", "mv", 0.5, Usage(3, 4), body=orjson.dumps({"choices": []})))
    for body in (BODY, {**BODY, "seed": None}, nulls):
        found = await s.lookup("faq", "acme", "internal", None, body, False)
        assert found is not None and found.state == HIT, body
    other = await s.lookup("faq", "acme", "internal", None, {**BODY, "seed": 1}, False)
    assert other is not None and other.state == MISS  # a real seed is another request


async def test_schemas_that_differ_in_property_order_are_two_answers() -> None:
    """The model writes a structured answer's fields in its schema's order: two schemas that
    list the same properties in another order are two requests (two misses), each a hit after."""

    def asked(*names: str) -> dict[str, Any]:
        schema = {"type": "object", "properties": {n: {"type": "string"} for n in names}, "required": sorted(names)}
        return {**BODY, "response_format": {"type": "json_schema", "json_schema": {"name": "o", "schema": schema}}}

    s = stage()
    for body in (asked("id", "total"), asked("total", "id")):
        found = await s.lookup("faq", "acme", "internal", None, body, False)
        assert found is not None and found.state == MISS
        await s.fill(found, encode("t", "mv", 0.5, Usage(3, 4), body=orjson.dumps({"choices": []})))
    for body in (asked("id", "total"), asked("total", "id")):
        found = await s.lookup("faq", "acme", "internal", None, body, False)
        assert found is not None and found.state == HIT
    assert (s.misses, s.hits) == (2, 2)


# -- who answers ---------------------------------------------------------------------------------

SECRET = "0123456789abcdef" * 4  # the digest key: every stage (a replica, a restart) the same


def serving(route: list[str] | None = None, **models: str) -> dict[str, Any]:
    """A config with targets ``t`` (model ``m``) and ``u`` (``n``), ``models`` changing them."""
    raw = raw_config(cache={"encryption_key": SECRET})
    for name, model in (("t", "m"), ("u", "n")):
        url = "http://127.0.0.1:9/v1"
        raw["targets"][name] = {"provider": "openai", "base_url": url, "model": models.get(name, model)}
    raw["tasks"]["faq"]["route"] = route or ["t", "u"]
    return raw


async def test_who_answers_is_part_of_the_key_of_a_task_without_releases() -> None:
    """Seen: with Redis (shared, kept across restarts), a task without releases kept serving the
    answers of the model its target named before, until their TTL: the key's version was
    ``none`` whatever served the task. Now it names the route and each target's model."""
    store = MemoryCache()

    async def state(raw: dict[str, Any], fill: bool = False) -> bytes:
        s = CacheStage(validate(raw), store)  # a restart (or another replica) over one store
        found = await s.lookup("faq", "acme", "internal", None, BODY, False)
        assert found is not None
        if fill:
            await s.fill(found, encode("t", "m", 0.5, Usage(3, 4), body=orjson.dumps({"choices": []})))
        return found.state

    assert await state(serving(), fill=True) == MISS
    assert await state(serving()) == HIT  # the same config: the same key
    moved = serving()
    moved["targets"]["t"]["base_url"] = "http://127.0.0.1:10/v1"  # the same model elsewhere
    assert await state(moved) == HIT
    assert await state(serving(t="m2")) == MISS  # the first target's model changed
    prefill = serving()
    prefill["targets"]["t"]["continue_final_message"] = True  # a prefill is continued, not a new turn
    assert await state(prefill) == MISS
    assert await state(serving(u="n2")) == MISS  # so did its fallback's
    assert await state(serving(["u", "t"])) == MISS  # another target answers first
    assert await state(serving(["t"])) == MISS  # no fallback


def test_a_release_version_names_the_models_of_its_targets() -> None:
    """A release names its targets, not their models: the config may give a target another
    model under the same release, which must not serve the answers of the model before."""
    release = Release("faq", "r1", ("t",), None, None, Prompt(None, "{{ q }}", {"q": "string"}))

    def version(raw: dict[str, Any]) -> str | None:
        return CacheStage(validate(raw), MemoryCache()).version("faq", release)

    first = version(serving())
    assert first is not None and first.startswith(release.version + ".")
    assert version(serving()) == first  # the same in every process
    assert version(serving(u="n2")) == first  # not a target of the release
    assert version(serving(["t"])) == first  # the route as the release cuts it is the same
    assert version(serving(t="m2")) != first


async def test_a_reload_swaps_who_answers_with_the_tasks() -> None:
    """A reload swaps the stage's ``tasks`` (``Runtime.successor``): the version of a task and
    of each release follows the new config, not the one the stage was made with."""
    release = Release("faq", "r1", ("u", "t"), None, None, Prompt(None, "{{ q }}", {"q": "string"}))
    s = CacheStage(validate(serving()), MemoryCache())
    before = (s.version("faq", None), s.version("faq", release))
    s.tasks = CacheStage(validate(serving(["t"])), s.store).tasks
    after = (s.version("faq", None), s.version("faq", release))
    assert before[0] != after[0]  # another route
    assert before[1] != after[1]  # the release's targets as the new route cuts them: t alone
    s.tasks = CacheStage(validate(serving(["u", "t"])), s.store).tasks
    assert s.version("faq", release) == before[1]  # cut in the release's own order: u, t still
    s.tasks = CacheStage(validate(serving()), s.store).tasks
    assert (s.version("faq", None), s.version("faq", release)) == before


# -- single flight -----------------------------------------------------------------------------


async def test_followers_get_the_leaders_answer_without_the_store() -> None:
    s = stage()
    leader = await s.lookup("faq", "acme", "internal", None, BODY, False)
    assert leader is not None and leader.state == MISS and leader.leading is not None
    followers = [asyncio.create_task(s.lookup("faq", "acme", "internal", None, BODY, False)) for _ in range(5)]
    await asyncio.sleep(0)
    assert not any(f.done() for f in followers)  # waiting on the leader
    value = encode("t", "mv", 0.5, Usage(3, 4), body=orjson.dumps({"choices": []}))
    await s.fill(leader, value)
    found = await asyncio.gather(*followers)
    assert all(f is not None and f.state == HIT and f.entry is not None for f in found)
    assert (s.hits, s.misses) == (5, 1)
    again = await s.lookup("faq", "acme", "internal", None, BODY, False)  # from the store now
    assert again is not None and again.state == HIT
    s.done(leader)  # after fill: nothing left to do, and no error


async def test_followers_of_a_leader_without_an_answer_ask_for_themselves() -> None:
    """All of them ask at once (none waits out a second failure); the first to wake leads
    anew, so its answer is kept and a later request follows it."""
    s = stage()
    leader = await s.lookup("faq", "acme", "internal", None, BODY, False)
    followers = [asyncio.create_task(s.lookup("faq", "acme", "internal", None, BODY, False)) for _ in range(3)]
    await asyncio.sleep(0)
    s.done(leader)
    first, *others = await asyncio.gather(*followers)
    assert first is not None and first.state == MISS and first.leading is not None  # the new leader
    assert all(f is not None and f.state == MISS and f.leading is None for f in others)
    later = asyncio.create_task(s.lookup("faq", "acme", "internal", None, BODY, False))
    await asyncio.sleep(0)
    await s.fill(first, encode("t", "mv", 0.5, Usage(3, 4), body=orjson.dumps({"choices": []})))
    found = await later
    assert found is not None and found.state == HIT
    s.done(first)
    nxt = await s.lookup("faq", "acme", "internal", None, {**BODY, "seed": 9}, False)
    assert nxt is not None and nxt.leading is not None


async def test_a_cancelled_follower_leaves_the_flight_alone() -> None:
    s = stage()
    leader = await s.lookup("faq", "acme", "internal", None, BODY, False)
    assert leader is not None
    follower = asyncio.create_task(s.lookup("faq", "acme", "internal", None, BODY, False))
    await asyncio.sleep(0)
    follower.cancel()
    with pytest.raises(asyncio.CancelledError):
        await follower
    other = asyncio.create_task(s.lookup("faq", "acme", "internal", None, BODY, False))
    await asyncio.sleep(0)
    await s.fill(leader, encode("t", "mv", None, None, body=b"{}"))
    found = await other
    assert found is not None and found.state == HIT


# -- entries and recordings --------------------------------------------------------------------


def test_entry_round_trip_completion() -> None:
    body = {"id": "x", "choices": [{"message": {"content": "ünïcode ✓"}}]}
    raw = encode("tgt", "mv-1", 0.25, Usage(10, 5), body=orjson.dumps(body))
    entry = decode(raw)
    assert entry is not None
    assert (entry.target, entry.model_version, entry.cost_usd) == ("tgt", "mv-1", 0.25)
    answer = entry.answer()
    assert isinstance(answer, Completion) and answer.body == body and answer.replica == REPLICA
    assert answer.usage is not None and (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (10, 5)
    answer.body["id"] = "changed"  # the door rewrites ids in place: each lookup decodes its own
    again = decode(raw)
    assert again is not None and again.body is not None and again.body["id"] == "x"


def test_entry_keeps_the_usage_details_and_reads_entries_without_them() -> None:
    detailed = Usage(10, 5, cached_tokens=6, cache_write_tokens=2, reasoning_tokens=3)
    for usage in (detailed, Usage(10, 5)):
        entry = decode(encode("tgt", "mv", None, usage, body=b"{}"))
        assert entry is not None and entry.usage == usage
    old = orjson.loads(encode("tgt", "mv", None, Usage(10, 5), body=b"{}"))
    assert old["usage"] == [10, 5]  # as entries were written before the details were kept


async def test_entry_round_trip_stream() -> None:
    chunks = [{"choices": [{"delta": {"content": c}}]} for c in ("a", "b")]
    entry = decode(encode("tgt", "mv", None, None, chunks=[orjson.dumps(c) for c in chunks]))
    assert entry is not None and entry.usage is None and entry.cost_usd is None
    answer = entry.answer()
    assert isinstance(answer, Stream)
    assert [c async for c in answer.chunks] == chunks


def test_an_entry_is_fresh_for_the_ttl_as_it_is_now() -> None:
    entry = decode(encode("tgt", "mv", None, None, body=b"{}", stored_at=1000.0))
    assert entry is not None and entry.stored_at == 1000.0
    assert entry.fresh(60, 1059.0) and not entry.fresh(60, 1060.0) and not entry.fresh(10, 1011.0)
    older = orjson.loads(encode("tgt", "mv", None, None, body=b"{}"))
    del older["stored_at"]  # as entries were written before it was kept: their store's TTL ends them
    entry = decode(orjson.dumps(older))
    assert entry is not None and entry.stored_at is None and entry.fresh(1, 1e12)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'{"format": 99}',
        b'{"format": 0, "target": "t"}',
        # This code's format, damaged (a value written over in Redis with the key, a bug):
        # seen as a KeyError, a 500, where a miss was due.
        b'{"format": 1, "target": "t"}',
        b'{"format": 1, "model_version": "m", "body": {}}',
        b'{"format": 1, "target": "t", "model_version": "m"}',
        b'{"format": 1, "target": "t", "model_version": "m", "body": "text"}',
        b'{"format": 1, "target": "t", "model_version": "m", "chunks": [1, 2]}',
        b'{"format": 1, "target": "t", "model_version": "m", "chunks": {}}',
        b'{"format": 1, "target": 7, "model_version": "m", "body": {}}',
        b'{"format": 1, "target": "t", "model_version": "m", "body": {}, "usage": ["a", 2]}',
        b'{"format": 1, "target": "t", "model_version": "m", "body": {}, "usage": {"p": 1}}',
    ],
)
def test_foreign_values_are_misses(raw: bytes) -> None:
    assert decode(raw) is None


async def test_a_damaged_entry_in_the_store_is_a_miss_that_leads() -> None:
    s = stage()
    first = await s.lookup("faq", "acme", "internal", None, BODY, False)
    assert first is not None and first.address is not None
    s.done(first)
    await s.store.put(first.address, b'{"format": 1, "target": "t"}', 60)
    found = await s.lookup("faq", "acme", "internal", None, BODY, False)
    assert found is not None and found.state == MISS and found.leading is not None


async def _chunks(items: list[dict[str, Any]], fail: bool = False) -> AsyncGenerator[dict[str, Any]]:
    for item in items:
        yield item
    if fail:
        raise RuntimeError("the upstream broke")


async def test_recording_passes_chunks_on_and_keeps_them_when_whole() -> None:
    items = [{"n": i} for i in range(3)]
    recording = Recording(_chunks(items), 1000)
    assert [c async for c in recording] == items
    assert recording.whole and recording.raw == [orjson.dumps(i) for i in items]


async def test_recording_over_its_limit_relays_all_and_keeps_nothing() -> None:
    items = [{"text": "x" * 40} for _ in range(5)]
    recording = Recording(_chunks(items), 100)
    assert [c async for c in recording] == items
    assert not recording.whole and recording.raw is None


async def test_a_broken_or_unfinished_stream_is_not_whole() -> None:
    broken = Recording(_chunks([{"n": 1}], fail=True), 1000)
    with pytest.raises(RuntimeError):
        _ = [c async for c in broken]
    assert not broken.whole
    cut = Recording(_chunks([{"n": 1}, {"n": 2}]), 1000)
    assert await cut.__anext__() == {"n": 1}
    await cut.aclose()
    assert not cut.whole


async def test_a_purge_keeps_the_answers_of_the_flights_it_names_out_of_the_store() -> None:
    """A leader that missed before a purge of its tenant or task shares its answer with its
    followers but does not keep it; one the purge does not name (another tenant) keeps it."""
    value = encode("t", "mv", 0.5, Usage(3, 4), body=orjson.dumps({"choices": []}))

    async def kept(*purge: str | None) -> bytes:
        s = stage()
        leader = await s.lookup("faq", "acme", "internal", None, BODY, False)
        follower = asyncio.create_task(s.lookup("faq", "acme", "internal", None, BODY, False))
        await asyncio.sleep(0)
        await s.store.purge(*purge)
        assert leader is not None
        await s.fill(leader, value)
        shared = await follower
        assert shared is not None and shared.state == HIT
        found = await s.lookup("faq", "acme", "internal", None, BODY, False)
        assert found is not None
        return found.state

    assert await kept("acme") == MISS
    assert await kept(None, "faq") == MISS
    assert await kept() == MISS
    assert await kept("globex") == HIT
    assert await kept(None, "plain") == HIT
    s = stage()  # however many purges came that do not name it, it is kept
    leader = await s.lookup("faq", "acme", "internal", None, BODY, False)
    for _ in range(100):
        await s.store.purge("globex")
    assert leader is not None
    await s.fill(leader, value)
    found = await s.lookup("faq", "acme", "internal", None, BODY, False)
    assert found is not None and found.state == HIT
