"""``POST /v1/embeddings`` with the official openai SDK (``client.embeddings.create``) through the
App served by a real uvicorn, to fake OpenAI-compatible embedding servers: order across batch
splits, base64 (the SDK's default) and floats, ``dimensions``, fallback within one embedding
space, the policy by data class, budgets, the ledger row and bad input in OpenAI's shape."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.asgi import request
from tests.conftest import AppFactory
from tests.fakes.embedders import FakeEmbeddings, Fault, tokens, vector
from tests.fakes.upstream import FakeUpstream
from tests.uvicorn_app import gateway, rows
from turnout.serving.app import App
from turnout.serving.embeddings import MAX_INPUT_CHARS, MAX_INPUTS

KEY = "acme-key-0123456789"
ADMIN = "admin-key-0123456789"
TEXTS = [f"document number {i} about {word}" for i, word in enumerate(["cats", "dogs", "rain", "tea", "bread"])]


def target(fake: FakeEmbeddings, space: str = "space-a", **extra: Any) -> dict[str, Any]:
    return {
        "provider": "openai",
        "base_url": fake.url,
        "model": f"model-{fake.space}",
        "embedding_space": space,
        "retry": {"attempts": 1},
        **extra,
    }


def config(targets: dict[str, Any], route: list[str], tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "server": {"admin_key": ADMIN},
        "store": {"kind": "sqlite", "path": str(tmp_path / "ledger.db"), "flush_interval_ms": 10},
        "targets": targets,
        "tenants": {
            "acme": {"keys": [KEY], "data_classes": ["public", "internal", "confidential", "restricted"], **extra}
        },
        "policy": {"restricted": {"targets": [name for name in targets if name.startswith("onprem")]}},
        "tasks": {"embed": {"route": route}},
    }


@asynccontextmanager
async def one_target(
    make_app: AppFactory, tmp_path: Path, **fake: Any
) -> AsyncIterator[tuple[FakeEmbeddings, App, openai.AsyncOpenAI]]:
    """A gateway whose task ``embed`` has one target, on a fake with ``fake``'s settings."""
    async with FakeEmbeddings(**fake) as upstream:
        raw = config({"a": target(upstream)}, ["a"], tmp_path)
        async with gateway(make_app, raw, KEY) as (app, client):
            yield upstream, app, client


def expected(texts: list[str], space: str = "space-a", dims: int = 8) -> list[list[float]]:
    return [vector(space, t, dims) for t in texts]


# -- the SDK, as a retrieval pipeline calls it -------------------------------------------------


async def test_the_sdk_gets_its_inputs_embedded_in_order_as_base64_by_default(
    make_app: AppFactory, tmp_path: Path
) -> None:
    async with FakeEmbeddings(space="space-a") as fake:
        raw = config({"a": target(fake)}, ["a"], tmp_path)
        async with gateway(make_app, raw, KEY) as (_, client):
            resp = await client.embeddings.with_raw_response.create(model="embed", input=TEXTS)
            answer = resp.parse()
    # The SDK asked base64 (its default) and decoded it: the float32 values, exactly.
    assert [d.embedding for d in answer.data] == expected(TEXTS)
    assert [d.index for d in answer.data] == list(range(len(TEXTS)))
    assert answer.model == "embed"
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == sum(tokens(t) for t in TEXTS)
    assert resp.headers["x-turnout-target"] == "a"
    assert resp.headers["x-turnout-task"] == "embed"
    # The upstream was asked for floats under its own model name; the texts as sent.
    [sent] = fake.requests
    assert sent["encoding_format"] == "float"
    assert sent["model"] == "model-space-a"
    assert sent["input"] == TEXTS


async def test_floats_when_asked_and_a_single_string(make_app: AppFactory, tmp_path: Path) -> None:
    async with one_target(make_app, tmp_path) as (_fake, _, client):
        resp = await client.embeddings.with_raw_response.create(
            model="embed", input="just one", encoding_format="float"
        )
    body = resp.http_response.json()
    assert body["object"] == "list"
    assert body["data"] == [{"object": "embedding", "index": 0, "embedding": expected(["just one"])[0]}]


async def test_base64_on_the_wire_is_little_endian_float32(make_app: AppFactory, tmp_path: Path) -> None:
    import base64
    import struct

    async with one_target(make_app, tmp_path) as (_fake, _, client):
        resp = await client.embeddings.with_raw_response.create(model="embed", input=["x"], encoding_format="base64")
    encoded = resp.http_response.json()["data"][0]["embedding"]
    raw = base64.b64decode(encoded)
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == expected(["x"])[0]


async def test_a_large_request_is_split_into_batches_and_reassembled_in_order(
    make_app: AppFactory, tmp_path: Path
) -> None:
    texts = [f"passage {i}: " + "word " * (i % 7) for i in range(75)]
    async with FakeEmbeddings(max_batch=10) as fake:  # answers each batch in shuffled order
        raw = config({"a": target(fake, embedding_batch=10, embedding_parallel=3)}, ["a"], tmp_path)
        async with gateway(make_app, raw, KEY) as (app, client):
            answer = await client.embeddings.create(model="embed", input=texts)
            [row] = await rows(app, 1)
    assert [d.embedding for d in answer.data] == expected(texts)
    assert sorted(len(r["input"]) for r in fake.requests) == [5] + [10] * 7
    assert sorted(t for r in fake.requests for t in r["input"]) == sorted(texts)  # each text sent once
    assert answer.usage.prompt_tokens == sum(tokens(t) for t in texts)
    assert row.prompt_tokens == answer.usage.prompt_tokens and row.completion_tokens == 0


async def test_the_default_batch_is_the_providers_and_a_batch_too_big_for_the_server_fails_clearly(
    make_app: AppFactory, tmp_path: Path
) -> None:
    texts = [f"t{i}" for i in range(70)]
    async with FakeEmbeddings(max_batch=32) as fake:
        # No embedding_batch: the openai provider's 32 (TEI's default limit): 3 calls.
        async with gateway(make_app, config({"a": target(fake)}, ["a"], tmp_path / "ok"), KEY) as (_, client):
            answer = await client.embeddings.create(model="embed", input=texts, encoding_format="float")
        assert sorted(len(r["input"]) for r in fake.requests) == [6, 32, 32]
        assert [d.embedding for d in answer.data] == expected(texts)
        # Told a batch larger than the server takes: its 413 comes back as the request's failure.
        raw = config({"a": target(fake, embedding_batch=64)}, ["a"], tmp_path / "big")
        async with gateway(make_app, raw, KEY) as (_, client):
            with pytest.raises(openai.APIStatusError) as caught:
                await client.embeddings.create(model="embed", input=texts)
    assert caught.value.status_code == 413
    assert "maximum allowed batch size 32" in caught.value.message


async def test_dimensions_reach_a_server_that_has_them_and_a_wrong_size_is_never_returned(
    make_app: AppFactory, tmp_path: Path
) -> None:
    async with FakeEmbeddings(matryoshka=True) as fake, FakeEmbeddings(space="plain") as plain:
        targets = {"a": target(fake), "p": target(plain, space="plain")}
        raw = config(targets, ["a"], tmp_path)
        raw["tasks"]["plain"] = {"route": ["p"]}
        async with gateway(make_app, raw, KEY) as (_, client):
            answer = await client.embeddings.create(model="embed", input=TEXTS[:2], dimensions=4)
            with pytest.raises(openai.BadRequestError) as caught:
                await client.embeddings.create(model="plain", input=TEXTS[:2], dimensions=4)
    assert [d.embedding for d in answer.data] == expected(TEXTS[:2], dims=4)
    assert fake.requests[0]["dimensions"] == 4
    assert caught.value.status_code == 400
    assert "does not support dimensions" in caught.value.message


# -- fallback stays in one space ---------------------------------------------------------------


async def test_a_failed_target_falls_back_to_another_of_the_same_space(make_app: AppFactory, tmp_path: Path) -> None:
    async with FakeEmbeddings(space="space-a") as first, FakeEmbeddings(space="space-a") as second:
        first.fault = Fault(status=503)
        raw = config({"a": target(first), "b": target(second)}, ["a", "b"], tmp_path)
        async with gateway(make_app, raw, KEY) as (app, client):
            resp = await client.embeddings.with_raw_response.create(model="embed", input=TEXTS)
            [row] = await rows(app, 1)
    assert [d.embedding for d in resp.parse().data] == expected(TEXTS)
    assert resp.headers["x-turnout-target"] == "b"
    assert resp.headers["x-turnout-fallback"] == "true"
    assert len(first.requests) == 1 and len(second.requests) == 1
    assert row.fallback and [a.target for a in row.attempts] == ["a", "b"]
    assert row.attempts[0].error_class == "http_503"


async def test_an_answer_of_the_wrong_size_is_not_returned_but_re_embedded_elsewhere(
    make_app: AppFactory, tmp_path: Path
) -> None:
    async with FakeEmbeddings() as first, FakeEmbeddings() as second:
        first.fault = Fault(wrong_dims=True)
        raw = config({"a": target(first), "b": target(second)}, ["a", "b"], tmp_path)
        async with gateway(make_app, raw, KEY) as (app, client):
            answer = await client.embeddings.create(model="embed", input=TEXTS)
            [row] = await rows(app, 1)
    assert [d.embedding for d in answer.data] == expected(TEXTS)
    assert row.target == "b" and row.attempts[0].error_class == "protocol"


async def test_a_route_across_embedding_spaces_is_refused_at_load(make_app: AppFactory, tmp_path: Path) -> None:
    from turnout.config import validate
    from turnout.errors import ConfigError

    async with FakeEmbeddings() as a, FakeEmbeddings(space="space-b") as b:
        raw = config({"a": target(a), "b": target(b, space="space-b")}, ["a", "b"], tmp_path)
        with pytest.raises(ConfigError) as caught:
            validate(raw)
    assert caught.value.problems == [
        "tasks.embed.route[1]: 'b' is in embedding space 'space-b', 'a' in 'space-a': "
        "a fallback across spaces would corrupt an index"
    ]


# -- policy, budgets, ledger -------------------------------------------------------------------


async def test_a_restricted_request_never_leaves_its_allowed_set(make_app: AppFactory, tmp_path: Path) -> None:
    async with FakeEmbeddings() as cloud, FakeEmbeddings() as onprem:
        raw = config({"cloud": target(cloud), "onprem": target(onprem)}, ["cloud", "onprem"], tmp_path)
        restricted = {"X-Turnout-Data-Class": "restricted"}
        async with gateway(make_app, raw, KEY) as (app, client):
            resp = await client.embeddings.with_raw_response.create(
                model="embed", input=TEXTS, extra_headers=restricted
            )
            assert resp.headers["x-turnout-target"] == "onprem"
            onprem.fault = Fault(status=503)  # the one allowed target down: refused, never the cloud
            with pytest.raises(openai.APIStatusError) as caught:
                await client.embeddings.create(model="embed", input=TEXTS, extra_headers=restricted)
            # By the body's metadata too.
            with pytest.raises(openai.APIStatusError):
                await client.embeddings.create(
                    model="embed", input=TEXTS, extra_body={"metadata": {"data_class": "restricted"}}
                )
            found = await rows(app, 3)
    assert cloud.requests == []
    assert caught.value.status_code == 503
    assert {r.data_class for r in found} == {"restricted"}
    assert all(a.target == "onprem" for r in found for a in r.attempts)


async def test_personal_data_in_an_input_raises_the_class_before_policy(make_app: AppFactory, tmp_path: Path) -> None:
    async with FakeEmbeddings() as cloud, FakeEmbeddings() as onprem:
        raw = config({"cloud": target(cloud), "onprem": target(onprem)}, ["cloud", "onprem"], tmp_path)
        raw["tasks"]["embed"]["classify"] = {"detect": ["pii"], "raise_to": "restricted"}
        async with gateway(make_app, raw, KEY) as (app, client):
            await client.embeddings.create(model="embed", input=["weather in Paris"])
            await client.embeddings.create(model="embed", input=["weather", "write to jane.doe@example.com"])
            found = await rows(app, 2)
    assert len(cloud.requests) == 1 and cloud.requests[0]["input"] == ["weather in Paris"]
    assert onprem.requests[0]["input"] == ["weather", "write to jane.doe@example.com"]
    by_class = {r.data_class: r for r in found}
    assert by_class["restricted"].declared_class == "internal" and by_class["restricted"].target == "onprem"


async def test_budgets_are_charged_what_the_ledger_says_and_nothing_is_reserved_for_output(
    make_app: AppFactory, tmp_path: Path
) -> None:
    price = {"input_per_mtok": 2000.0}  # $0.002 a token: visible in a few requests
    async with FakeEmbeddings() as fake:
        raw = config({"a": target(fake, price=price)}, ["a"], tmp_path, limits={"usd_per_day": 10.0})
        async with gateway(make_app, raw, KEY) as (app, client):
            resp = await client.embeddings.with_raw_response.create(model="embed", input=TEXTS)
            [row] = await rows(app, 1)
            usage = await request(app, "GET", "/admin/usage?tenant=acme", headers={"authorization": f"Bearer {ADMIN}"})
    prompt = sum(tokens(t) for t in TEXTS)
    assert row.cost_usd == pytest.approx(prompt * 2000.0 / 1e6)
    assert float(resp.headers["x-turnout-cost-usd"]) == pytest.approx(row.cost_usd)
    [scope] = usage.json()["data"]
    budget = scope["usage"]["usd_per_day"]
    assert budget["spent"] == pytest.approx(row.cost_usd) and budget["reserved"] == 0
    assert "max_tokens" not in fake.requests[0]  # an embedding generates nothing: no output bound sent


async def test_a_budget_too_small_for_the_inputs_refuses_before_any_call(make_app: AppFactory, tmp_path: Path) -> None:
    async with FakeEmbeddings() as fake:
        raw = config({"a": target(fake, price={"input_per_mtok": 1e6})}, ["a"], tmp_path, limits={"usd_per_day": 1.0})
        async with gateway(make_app, raw, KEY) as (_, client):
            with pytest.raises(openai.RateLimitError) as caught:
                await client.embeddings.create(model="embed", input=["x " * 2000])
    assert caught.value.status_code == 429
    assert fake.requests == []


async def test_the_ledger_row_carries_the_endpoint(make_app: AppFactory, tmp_path: Path) -> None:
    async with FakeEmbeddings() as fake, FakeUpstream() as chat_upstream:
        raw = config({"a": target(fake)}, ["a"], tmp_path)
        raw["targets"]["llm"] = {"provider": "openai", "base_url": chat_upstream.base_url, "model": "m"}
        raw["tasks"]["chat"] = {"route": ["llm"]}
        async with gateway(make_app, raw, KEY) as (app, client):
            await client.embeddings.create(model="embed", input=TEXTS[:1], user="u-7")
            await client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
            found = await rows(app, 2)
    by_task = {r.task: r for r in found}
    assert by_task["embed"].endpoint == "embeddings"
    assert by_task["chat"].endpoint == "chat.completions"
    row = by_task["embed"]
    assert (row.status, row.stream, row.target, row.tenant) == (200, False, "a", "acme")
    assert row.user is not None and row.user.startswith("u_")  # a pseudonym, never the caller's value
    assert row.usage_estimated is False


async def test_an_upstream_without_usage_is_charged_the_prompt_bound(make_app: AppFactory, tmp_path: Path) -> None:
    async with one_target(make_app, tmp_path, usage=False) as (_fake, app, client):
        answer = await client.embeddings.create(model="embed", input=TEXTS)
        [row] = await rows(app, 1)
    assert row.usage_estimated is True
    assert row.prompt_tokens is not None
    assert answer.usage.prompt_tokens == row.prompt_tokens >= sum(len(t.encode()) for t in TEXTS)


# -- refusals in OpenAI's shape ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "param"),
    [
        ([], "input"),
        (["fine", ""], "input[1]"),
        (["fine", 3.5], "input[1]"),
        ([[101, 2023]], "input"),
        (["x"] * (MAX_INPUTS + 1), "input"),
        (["x" * (MAX_INPUT_CHARS + 1)], "input[0]"),
    ],
)
async def test_bad_input_is_a_400_in_openai_s_shape(
    make_app: AppFactory, tmp_path: Path, inputs: list[Any], param: str
) -> None:
    async with one_target(make_app, tmp_path) as (fake, app, client):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.embeddings.create(model="embed", input=inputs)
        found = await rows(app, 1)
    error = caught.value.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, "invalid_value")
    assert fake.requests == []
    assert found[0].status == 400 and found[0].endpoint == "embeddings"


async def test_metadata_takes_turnouts_keys_only_and_its_limits_hold(make_app: AppFactory, tmp_path: Path) -> None:
    """The metadata reaches no target: a key the door did not read was dropped silently, so a
    misspelt data_class was served under the default class and metadata.max_cost_usd (a limit
    chat completions honours) bounded nothing."""
    async with FakeEmbeddings() as fake:
        raw = config({"a": target(fake, price={"input_per_mtok": 1e6})}, ["a"], tmp_path)
        async with gateway(make_app, raw, KEY) as (_, client):
            with pytest.raises(openai.BadRequestError) as typo:
                await client.embeddings.create(model="embed", input=TEXTS, extra_body={"metadata": {"dataclass": "x"}})
            with pytest.raises(openai.UnprocessableEntityError) as limited:
                await client.embeddings.create(
                    model="embed", input=TEXTS, extra_body={"metadata": {"max_cost_usd": "0.0001"}}
                )
            allowed = {"max_cost_usd": 1000, "max_latency_ms": 60_000, "data_class": "internal"}
            await client.embeddings.create(model="embed", input=TEXTS[:1], extra_body={"metadata": allowed})
    error = typo.value.response.json()["error"]
    assert (error["param"], error["code"]) == ("metadata.dataclass", "invalid_value")
    assert limited.value.response.json()["error"]["code"] == "constraint_unsatisfiable"
    assert len(fake.requests) == 1 and "metadata" not in fake.requests[0]


async def test_a_task_answers_through_its_own_door_only(make_app: AppFactory, tmp_path: Path) -> None:
    async with FakeEmbeddings() as fake, FakeUpstream() as chat_upstream:
        raw = config({"a": target(fake)}, ["a"], tmp_path)
        raw["targets"]["llm"] = {"provider": "openai", "base_url": chat_upstream.base_url, "model": "m"}
        raw["tasks"]["chat"] = {"route": ["llm"]}
        async with gateway(make_app, raw, KEY) as (_, client):
            with pytest.raises(openai.BadRequestError) as to_chat:
                await client.chat.completions.create(model="embed", messages=[{"role": "user", "content": "hi"}])
            with pytest.raises(openai.BadRequestError) as to_embed:
                await client.embeddings.create(model="chat", input=["hi"])
            with pytest.raises(openai.NotFoundError):
                await client.embeddings.create(model="nope", input=["hi"])
    assert to_chat.value.code == "wrong_endpoint" and "POST /v1/embeddings" in to_chat.value.message
    assert to_embed.value.code == "wrong_endpoint" and "does not embed" in to_embed.value.message
    assert fake.requests == []
    assert [r for r in chat_upstream.requests if r.method == "POST"] == []  # its health probe only


async def test_capture_keeps_no_text_of_an_embedding_request(make_app: AppFactory, tmp_path: Path) -> None:
    async with FakeEmbeddings() as fake, FakeUpstream() as chat_upstream:
        raw = {**config({"a": target(fake)}, ["a"], tmp_path), "capture": {"mode": "redacted"}}
        raw["targets"]["llm"] = {"provider": "openai", "base_url": chat_upstream.base_url, "model": "m"}
        raw["tasks"]["chat"] = {"route": ["llm"]}
        async with gateway(make_app, raw, KEY) as (app, client):
            await client.embeddings.create(model="embed", input=["call me at +1 415 555 0100"])
            await client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
            found = {r.task: r for r in await rows(app, 2)}
            capture = app.runtime.capture
            assert capture is not None
            for _ in range(2000):  # the chat answer's capture, written off the request path
                kept = await capture.store.captures()
                if kept:
                    break
                await asyncio.sleep(0.005)
    assert found["embed"].capture_mode == "metadata"
    assert found["chat"].capture_mode == "redacted"
    assert [c.request_id for c in kept] == [found["chat"].request_id]


async def test_batches_embedded_before_a_failure_are_paid_for(make_app: AppFactory, tmp_path: Path) -> None:
    """The first target embeds every batch and one answer is unusable (a vector of the wrong
    size): the request goes elsewhere, and the tokens the first target embedded are charged on
    its attempt, not dropped."""
    price = {"input_per_mtok": 2000.0}
    async with FakeEmbeddings() as first, FakeEmbeddings() as second:
        first.fault = Fault(wrong_dims=True)
        raw = config(
            {
                "a": target(first, price=price, embedding_batch=2, embedding_parallel=1),
                "b": target(second, price=price),
            },
            ["a", "b"],
            tmp_path,
            limits={"usd_per_day": 10.0},
        )
        async with gateway(make_app, raw, KEY) as (app, client):
            answer = await client.embeddings.create(model="embed", input=TEXTS)
            [row] = await rows(app, 1)
            usage = await request(app, "GET", "/admin/usage?tenant=acme", headers={"authorization": f"Bearer {ADMIN}"})
    prompt = sum(tokens(t) for t in TEXTS)
    assert [d.embedding for d in answer.data] == expected(TEXTS)
    failed, served = row.attempts
    assert failed.error_class == "protocol" and failed.cost_usd == pytest.approx(prompt * 2000.0 / 1e6)
    assert served.cost_usd == pytest.approx(prompt * 2000.0 / 1e6)
    assert row.cost_usd == pytest.approx(2 * prompt * 2000.0 / 1e6)
    assert row.prompt_tokens == 2 * prompt
    [scope] = usage.json()["data"]
    assert scope["usage"]["usd_per_day"]["spent"] == pytest.approx(row.cost_usd)
