"""The response cache through the gateway (App behind a real uvicorn, the official openai SDK,
an in-process fake upstream): hit, miss, bypass, TTL expiry, tenants and releases kept apart,
restricted and sampled requests never cached, a replayed stream shaped as the live one, single
flight, and the ledger's ``cache_hit`` and ``cost_saved_usd``. Redis-backed runs are in
``tests/test_cache_redis.py``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai
import orjson
import pytest

from tests.asgi import request
from tests.conftest import AppFactory
from tests.fakes.upstream import FakeUpstream, Fault
from tests.uvicorn_app import gateway, rows
from turnout.ledger.record import LedgerRow
from turnout.releases.base import Prompt, Release
from turnout.serving.app import App
from turnout.serving.chat import CHAT

KEY = "acme-key-cache-0123456789"
OTHER = "globex-key-cache-0123456789"
ASK: list[Any] = [{"role": "user", "content": "What is the capital of France?"}]
PRICE = {"input_per_mtok": 1.0, "output_per_mtok": 2.0}


def config(upstream: FakeUpstream, cache: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    task_cache = cache if cache is not None else {"ttl_s": 60, "classes": ["public", "internal"]}
    return {
        "targets": {
            "up": {"provider": "openai", "base_url": upstream.base_url, "model": "m", "retry": {"attempts": 1}},
            "onprem": {"provider": "openai", "base_url": upstream.base_url, "model": "m", "retry": {"attempts": 1}},
        },
        "tenants": {
            "acme": {"keys": [KEY], "data_classes": ["public", "internal", "confidential", "restricted"]},
            "globex": {"keys": [OTHER], "data_classes": ["public", "internal"]},
        },
        "policy": {"restricted": {"targets": ["onprem"]}},
        "tasks": {
            "faq": {"route": ["up", "onprem"], "cache": task_cache},
            "plain": {"route": ["up"]},
        },
        "prices": [{"effective": "2025-01-01", "targets": {"up": PRICE, "onprem": PRICE}}],
        **top,
    }


@asynccontextmanager
async def served(
    make_app: AppFactory, cache: dict[str, Any] | None = None, **top: Any
) -> AsyncIterator[tuple[FakeUpstream, App, openai.AsyncOpenAI]]:
    async with (
        FakeUpstream(reply=("Paris", " is", " the", " capital")) as upstream,
        gateway(make_app, config(upstream, cache, **top), KEY) as (app, client),
    ):
        yield upstream, app, client


def calls(upstream: FakeUpstream) -> int:
    return sum(1 for r in upstream.requests if r.path.endswith("/chat/completions"))


async def ask(client: openai.AsyncOpenAI, **extra: Any) -> tuple[str, str, Any]:
    """The answer's text, its X-Turnout-Cache header and the raw response."""
    params: dict[str, Any] = {"model": "faq", "messages": ASK, "temperature": 0, **extra}
    resp = await client.chat.completions.with_raw_response.create(**params)
    answer = resp.parse()
    return answer.choices[0].message.content or "", resp.headers.get("x-turnout-cache", ""), resp


def by_id(found: list[LedgerRow]) -> dict[str, LedgerRow]:
    return {r.request_id: r for r in found}


async def test_miss_then_hit_costs_nothing_and_the_ledger_says_so(make_app: AppFactory) -> None:
    async with served(make_app) as (upstream, app, client):
        first, state1, r1 = await ask(client)
        second, state2, r2 = await ask(client)
        assert (state1, state2) == ("miss", "hit")
        assert first == second == "Paris is the capital"
        assert calls(upstream) == 1
        assert float(r2.headers["x-turnout-cost-usd"]) == 0.0
        assert float(r1.headers["x-turnout-cost-usd"]) > 0.0
        assert r2.headers["x-turnout-target"] == "up"  # the target that generated it
        found = by_id(await rows(app, 2))
    miss, hit = found[r1.headers["x-turnout-request-id"]], found[r2.headers["x-turnout-request-id"]]
    assert miss.cache_hit is False and miss.cost_saved_usd is None and miss.cost_usd and miss.cost_usd > 0
    assert hit.cache_hit is True and hit.cost_usd == 0.0
    assert hit.cost_saved_usd == pytest.approx(miss.cost_usd)
    assert hit.replica == "cache" and hit.status == 200


async def test_metrics_count_hits_misses_and_what_the_hits_saved(make_app: AppFactory) -> None:
    async with served(make_app) as (_, app, client):
        for _ in range(3):
            await ask(client)
        await rows(app, 3)  # every row observed
        text = (await request(app, "GET", "/metrics")).body.decode()
    assert 'turnout_cache_lookups_total{result="miss",task="faq"} 1.0' in text
    assert 'turnout_cache_lookups_total{result="hit",task="faq"} 2.0' in text
    saved = [line for line in text.splitlines() if line.startswith('turnout_cache_saved_usd_total{task="faq"}')]
    assert saved and float(saved[0].split()[-1]) > 0


async def test_hits_are_no_attempts_and_no_tokens_at_the_target(make_app: AppFactory) -> None:
    """Seen: after one miss and two hits /metrics said the target had 3 attempts and three
    answers' tokens: hits read as upstream load that never reached it."""
    async with served(make_app) as (_, app, client):
        for _ in range(3):
            await ask(client)
        (miss, *_hits) = await rows(app, 3)
        text = (await request(app, "GET", "/metrics")).body.decode()
    attempts = [line for line in text.splitlines() if line.startswith("turnout_attempts_total{")]
    assert attempts == ['turnout_attempts_total{outcome="ok",target="up",task="faq"} 1.0']
    prompt = [line for line in text.splitlines() if line.startswith("turnout_tokens_total{") and "prompt" in line]
    assert len(prompt) == 1 and float(prompt[0].split()[-1]) == miss.prompt_tokens


async def test_the_hit_body_is_the_miss_body_with_its_own_id(make_app: AppFactory) -> None:
    async with served(make_app) as (_, _app, client):
        _, _, r1 = await ask(client)
        _, _, r2 = await ask(client)
    one, two = r1.http_response.json(), r2.http_response.json()
    assert one["id"] != two["id"] and two["id"] == f"chatcmpl-{r2.headers['x-turnout-request-id']}"
    assert {**one, "id": None} == {**two, "id": None}
    assert two["model"] == "faq"


@pytest.mark.parametrize(
    "headers",
    [{"Cache-Control": "no-cache"}, {"X-Turnout-Cache": "bypass"}, {"cache-control": "max-age=0, no-store"}],
)
async def test_callers_bypass_the_cache(make_app: AppFactory, headers: dict[str, str]) -> None:
    async with served(make_app) as (upstream, app, client):
        await ask(client)
        _, state, resp = await ask(client, extra_headers=headers)
        assert state == "bypass" and calls(upstream) == 2
        found = by_id(await rows(app, 2))
    assert found[resp.headers["x-turnout-request-id"]].cache_hit is None  # not consulted


@pytest.mark.parametrize(
    "lines",
    [
        [(b"cache-control", b"max-age=0"), (b"cache-control", b"no-cache")],
        [(b"x-turnout-cache", b"miss"), (b"X-Turnout-Cache", b"bypass")],
        [(b"x-turnout-cache", b"hit, bypass")],
    ],
)
async def test_a_bypass_on_any_line_of_a_repeated_header_counts(
    make_app: AppFactory, lines: list[tuple[bytes, bytes]]
) -> None:
    """Seen: ``Cache-Control: max-age=0`` then ``Cache-Control: no-cache`` (one header on two
    lines, which HTTP reads as one list) was answered from the cache: only the first line was read."""
    async with served(make_app) as (upstream, app, client):
        await ask(client)
        data = orjson.dumps({"model": "faq", "messages": ASK, "temperature": 0})
        head = [(b"authorization", f"Bearer {KEY}".encode()), (b"content-length", str(len(data)).encode())]
        scope: dict[str, Any] = {
            "type": "http",
            "method": "POST",
            "path": "/v1/chat/completions",
            "headers": head + lines,
        }
        scope |= {"raw_path": b"/v1/chat/completions", "query_string": b""}
        sent: list[Any] = []
        parts = [data]

        async def receive() -> dict[str, Any]:
            if parts:
                return {"type": "http.request", "body": parts.pop(), "more_body": False}
            await asyncio.Event().wait()
            return {}

        async def send(message: Any) -> None:
            sent.append(message)

        await app(scope, receive, send)
        assert sent[0]["status"] == 200
        assert dict(sent[0]["headers"])[b"x-turnout-cache"] == b"bypass" and calls(upstream) == 2


async def test_a_bypassed_answer_is_not_stored(make_app: AppFactory) -> None:
    async with served(make_app) as (upstream, _, client):
        await ask(client, extra_headers={"X-Turnout-Cache": "bypass"})
        _, state, _ = await ask(client)
        assert state == "miss" and calls(upstream) == 2


async def test_entries_expire_with_their_ttl(make_app: AppFactory) -> None:
    async with served(make_app, {"ttl_s": 0.05, "classes": ["internal"]}) as (upstream, _, client):
        await ask(client)
        await asyncio.sleep(0.06)
        _, state, _ = await ask(client)
        assert state == "miss" and calls(upstream) == 2


async def test_retention_caps_the_task_ttl(make_app: AppFactory) -> None:
    retention = {"rules": [{"tenant": "acme", "task": "faq", "cache_ttl_s": 0.05}]}
    async with served(make_app, retention=retention) as (upstream, _, client):
        await ask(client)
        await asyncio.sleep(0.06)
        _, state, _ = await ask(client)
        assert state == "miss" and calls(upstream) == 2


async def test_no_hit_across_tenants(make_app: AppFactory) -> None:
    async with served(make_app) as (upstream, _, client):
        await ask(client)
        other = client.with_options(api_key=OTHER)
        _, state, _ = await ask(other)
        assert state == "miss" and calls(upstream) == 2
        _, again, _ = await ask(other)
        assert again == "hit"


async def test_shared_scope_serves_every_tenant_public_data(make_app: AppFactory) -> None:
    cache = {"ttl_s": 60, "classes": ["public"], "scope": "shared"}
    async with served(make_app, cache) as (upstream, _, client):
        await ask(client, extra_headers={"X-Turnout-Data-Class": "public"})
        other = client.with_options(api_key=OTHER)
        _, state, _ = await ask(other, extra_headers={"X-Turnout-Data-Class": "public"})
        assert state == "hit" and calls(upstream) == 1
        _, internal, _ = await ask(other)  # internal: not a class this task caches
        assert internal == "bypass"


async def test_the_data_class_is_part_of_the_key(make_app: AppFactory) -> None:
    async with served(make_app) as (upstream, _, client):
        await ask(client, extra_headers={"X-Turnout-Data-Class": "public"})
        _, state, _ = await ask(client, extra_headers={"X-Turnout-Data-Class": "internal"})
        assert state == "miss" and calls(upstream) == 2


async def test_restricted_and_confidential_requests_are_never_cached(make_app: AppFactory) -> None:
    async with served(make_app) as (upstream, app, client):
        for _ in range(2):
            _, state, _ = await ask(client, extra_headers={"X-Turnout-Data-Class": "restricted"})
            assert state == "bypass"
        _, state, _ = await ask(client, extra_headers={"X-Turnout-Data-Class": "confidential"})
        assert state == "bypass" and calls(upstream) == 3
        assert app.runtime.cache is not None and len(app.runtime.cache.store) == 0  # type: ignore[arg-type]


async def test_sampled_requests_bypass_unless_allowed(make_app: AppFactory) -> None:
    async with served(make_app) as (upstream, _, client):
        _, state, _ = await ask(client, temperature=0.7)
        assert state == "bypass"
        await ask(client, temperature=0.7, seed=7)
        _, seeded, _ = await ask(client, temperature=0.7, seed=7)
        assert seeded == "hit" and calls(upstream) == 2
    async with served(make_app, {"ttl_s": 60, "classes": ["internal"], "allow_sampled": True}) as (up2, _, client):
        await ask(client, temperature=0.7)
        _, state, _ = await ask(client, temperature=0.7)
        assert state == "hit" and calls(up2) == 1


async def test_a_different_request_misses(make_app: AppFactory) -> None:
    async with served(make_app) as (upstream, _, client):
        await ask(client)
        _, state, _ = await ask(client, max_tokens=5)
        assert state == "miss"
        _, state, _ = await ask(client, messages=[{"role": "user", "content": "and of Spain?"}])
        assert state == "miss" and calls(upstream) == 3
        # Fields that do not shape the answer are not part of the key.
        _, state, _ = await ask(client, user="someone-else")
        assert state == "hit"


async def test_a_task_without_cache_has_no_header(make_app: AppFactory) -> None:
    async with served(make_app) as (upstream, _, client):
        for _ in range(2):
            resp = await client.chat.completions.with_raw_response.create(model="plain", messages=ASK, temperature=0)
            assert "x-turnout-cache" not in resp.headers
        assert calls(upstream) == 2


async def test_stream_replay_has_the_live_stream_shape(make_app: AppFactory) -> None:
    async with served(make_app) as (upstream, _, client):
        live = await _stream(client)
        replayed = await _stream(client)
        assert calls(upstream) == 1
    assert (live[0], replayed[0]) == ("miss", "hit")
    live_chunks, replayed_chunks = live[1], replayed[1]
    assert len(live_chunks) == len(replayed_chunks) > 2
    strip = ("id", "created")
    assert [_without(c, strip) for c in live_chunks] == [_without(c, strip) for c in replayed_chunks]
    assert "".join(c.choices[0].delta.content or "" for c in replayed_chunks if c.choices) == "Paris is the capital"
    assert {c.id for c in replayed_chunks} == {replayed[2]}  # the hit's own id on every chunk
    assert replayed_chunks[-1].usage is not None  # include_usage honoured on the replay too


async def test_a_stream_and_a_completion_do_not_share_an_entry(make_app: AppFactory) -> None:
    async with served(make_app) as (upstream, _, client):
        await _stream(client)
        _, state, _ = await ask(client)
        assert state == "miss" and calls(upstream) == 2


async def test_single_flight_one_upstream_call_for_100_identical_misses(make_app: AppFactory) -> None:
    async with served(make_app) as (upstream, app, client):
        upstream.fault = Fault(head_delay=0.3, times=1)  # the leader's call is slow
        results = await asyncio.gather(*(ask(client) for _ in range(100)))
        assert calls(upstream) == 1
        assert {text for text, _, _ in results} == {"Paris is the capital"}
        states = [state for _, state, _ in results]
        assert states.count("miss") == 1 and states.count("hit") == 99
        found = await rows(app, 100)
    assert sum(1 for r in found if r.cache_hit) == 99


async def test_followers_of_a_failed_leader_ask_for_themselves(make_app: AppFactory) -> None:
    async with served(make_app) as (upstream, _, client):
        upstream.fault = Fault(mode="status", status=400, head_delay=0.2, times=1)
        results = await asyncio.gather(*(ask(client) for _ in range(3)), return_exceptions=True)
        failed = [r for r in results if isinstance(r, openai.BadRequestError)]
        assert len(failed) == 1 and calls(upstream) >= 2
        assert {r[0] for r in results if not isinstance(r, BaseException)} == {"Paris is the capital"}
        # Seen: none of the followers kept its answer, so the next identical request missed
        # again; the first follower to wake leads anew and keeps it.
        asked = calls(upstream)
        _, state, _ = await ask(client)
        assert state == "hit" and calls(upstream) == asked


async def test_hits_take_no_quota(make_app: AppFactory) -> None:
    limits = {"faq": {"rpm": 2}}
    async with FakeUpstream(reply=("ok",)) as upstream:
        raw = config(upstream)
        raw["tenants"]["acme"]["task_limits"] = limits
        async with gateway(make_app, raw, KEY) as (_, client):
            for _ in range(6):
                await ask(client)  # a miss and five hits: only the miss was charged
            await ask(client, max_tokens=10)  # a second miss: the second request charged
            with pytest.raises(openai.RateLimitError):
                await ask(client, max_tokens=11)  # a third miss: over the limit of 2 a minute


async def test_no_hit_across_releases(make_app: AppFactory) -> None:
    async with served(make_app) as (upstream, app, _):
        first, second = _release("r1", "v1"), _release("r2", "v2")
        assert (await _as(app, first), await _as(app, first), await _as(app, second)) == ("miss", "hit", "miss")
        assert calls(upstream) == 2


def _release(name: str, model_version: str) -> Release:
    return Release("faq", name, ("up",), model_version, None, Prompt(None, "{{ q }}", {"q": "string"}))


async def _as(app: App, release: Release) -> str:
    """Through the chat door as ``release``, as ``turnout eval`` runs in process."""
    data = orjson.dumps({"model": "faq", "messages": ASK, "temperature": 0})
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"authorization", f"Bearer {KEY}".encode()), (b"content-length", str(len(data)).encode())],
    }
    sent: list[Any] = []
    parts = [data]

    async def receive() -> dict[str, Any]:
        if parts:
            return {"type": "http.request", "body": parts.pop(), "more_body": False}
        await asyncio.Event().wait()
        return {}

    async def send(message: Any) -> None:
        sent.append(message)

    await app.pipeline.run(CHAT, scope, receive, send, f"req-{release.name}-{id(sent)}", release=release)
    assert sent[0]["status"] == 200, sent
    return str(dict(sent[0]["headers"])[b"x-turnout-cache"].decode())


async def test_bad_cache_header_values_are_ignored_not_errors(make_app: AppFactory) -> None:
    async with served(make_app) as (_, app, _client):
        body = {"model": "faq", "messages": ASK, "temperature": 0}
        head = {"authorization": f"Bearer {KEY}", "x-turnout-cache": "\u00ff weird", "cache-control": ",,="}
        resp = await request(app, "POST", "/v1/chat/completions", body, head)
        assert resp.status == 200 and resp.headers["x-turnout-cache"] == "miss"


async def _stream(client: openai.AsyncOpenAI) -> tuple[str, list[Any], str]:
    resp = await client.chat.completions.with_raw_response.create(
        model="faq", messages=ASK, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in resp.parse()]
    return resp.headers["x-turnout-cache"], chunks, f"chatcmpl-{resp.headers['x-turnout-request-id']}"


def _without(chunk: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    data: dict[str, Any] = chunk.model_dump()
    return {k: v for k, v in data.items() if k not in fields}


async def test_every_door_gets_the_stage_anthropic_messages(make_app: AppFactory) -> None:
    async with served(make_app) as (upstream, app, _):
        body = {"model": "faq", "max_tokens": 50, "temperature": 0, "messages": ASK}
        head = {"x-api-key": KEY}
        first = await request(app, "POST", "/v1/messages", body, head)
        second = await request(app, "POST", "/v1/messages", body, head)
        assert (first.status, second.status) == (200, 200), second.body
        assert (first.headers["x-turnout-cache"], second.headers["x-turnout-cache"]) == ("miss", "hit")
        assert second.json()["type"] == "message" and second.json()["content"] == first.json()["content"]
        assert calls(upstream) == 1


async def test_a_stream_cut_by_the_client_is_not_kept(make_app: AppFactory) -> None:
    async with served(make_app) as (upstream, app, _):
        upstream.fault = Fault(chunk_delay=0.02, times=1)
        body = {"model": "faq", "messages": ASK, "temperature": 0, "stream": True}
        head = {"authorization": f"Bearer {KEY}"}
        cut = await request(app, "POST", "/v1/chat/completions", body, head, disconnect_after=2)
        assert cut.headers["x-turnout-cache"] == "miss"
        again = await request(app, "POST", "/v1/chat/completions", body, head)
        assert again.headers["x-turnout-cache"] == "miss" and calls(upstream) == 2


async def test_followers_of_a_stream_too_large_to_keep_do_not_wait_for_its_slow_client(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen: a leader's client that did not read an 8 MB stream held an identical request (another
    tenant, shared scope) for 65 s with nothing sent, though the answer, past the size kept, would
    never be shared. Past the limit the followers go ask for themselves; and however slow the
    leader, a follower waits at most ``FOLLOW_S``."""
    pieces = tuple(f"piece-{i:04d} " for i in range(400))  # about 60 KB of chunks
    async with FakeUpstream(reply=pieces) as upstream:
        app = await make_app({**config(upstream), "server": {"max_body_bytes": 8192}})
        body = orjson.dumps({"model": "faq", "messages": ASK, "temperature": 0, "stream": True})
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/chat/completions",
            "headers": [(b"authorization", f"Bearer {KEY}".encode()), (b"content-length", str(len(body)).encode())],
            "query_string": b"",
        }
        read, release = asyncio.Event(), asyncio.Event()
        sent: list[Any] = []
        given = False

        async def receive() -> dict[str, Any]:  # as ASGI servers do: the body once, then wait
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            await release.wait()
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:  # a client that stops reading a third of the way in
            sent.append(message)
            if len(sent) > 150:
                read.set()
                await release.wait()

        leader = asyncio.create_task(app(scope, receive, send))
        await asyncio.wait_for(read.wait(), 10)
        follower = await asyncio.wait_for(
            request(app, "POST", "/v1/chat/completions", orjson.loads(body), {"authorization": f"Bearer {KEY}"}), 10
        )
        assert follower.status == 200 and follower.headers["x-turnout-cache"] == "miss"
        assert "piece-0399" in follower.body.decode()
        release.set()
        await leader
        assert calls(upstream) == 2
        # A leader under the limit but slow: a follower waits FOLLOW_S at most, then asks itself.
        monkeypatch.setattr("turnout.cache.stage.FOLLOW_S", 0.2)
        upstream.fault = Fault(head_delay=2.0, times=1)
        other = {"model": "faq", "messages": [{"role": "user", "content": "slow one"}], "temperature": 0}
        auth = {"authorization": f"Bearer {KEY}"}
        slow = asyncio.create_task(request(app, "POST", "/v1/chat/completions", other, auth))
        await asyncio.sleep(0.1)
        quick = await asyncio.wait_for(request(app, "POST", "/v1/chat/completions", other, auth), 1.5)
        assert quick.status == 200 and quick.headers["x-turnout-cache"] == "miss"
        assert (await slow).status == 200
