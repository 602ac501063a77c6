"""Bedrock's embedding models through InvokeModel, with the official openai SDK through the App
on a real uvicorn, to a server that speaks Bedrock's wire protocol and checks every request's
SigV4 signature with botocore's own signer (``tests.fakes.embedders.FakeBedrockEmbed``): Titan
Text Embeddings v2 one text a call, Cohere Embed v3 96 a call, each body as the model takes it,
tokens from the body or the header, Bedrock's errors mapped as for Converse."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import AppFactory
from tests.fakes.bedrock import use_fake_credentials
from tests.fakes.embedders import COHERE_DIMS, FakeBedrockEmbed, Fault, tokens, vector
from tests.uvicorn_app import gateway, rows
from turnout.serving.app import App

pytest.importorskip("botocore")

KEY = "acme-key-0123456789"
TITAN = "amazon.titan-embed-text-v2:0"
COHERE = "cohere.embed-english-v3"
TEXTS = ["the first passage", "a second one, longer than the first", "third"]


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake_credentials(monkeypatch)


def bedrock(fake: FakeBedrockEmbed, model: str, space: str, **extra: Any) -> dict[str, Any]:
    return {
        "provider": "bedrock",
        "region": "us-east-1",
        "model": model,
        "endpoint_url": fake.url,
        "embedding_space": space,
        "retry": {"attempts": 2, "backoff_ms": 1},
        **extra,
    }


@asynccontextmanager
async def served(
    make_app: AppFactory, tmp_path: Path, targets: dict[str, Any], routes: dict[str, list[str]]
) -> AsyncIterator[tuple[App, openai.AsyncOpenAI]]:
    raw = {
        "store": {"kind": "sqlite", "path": str(tmp_path / "ledger.db"), "flush_interval_ms": 10},
        "targets": targets,
        "tenants": {"acme": {"keys": [KEY]}},
        "tasks": {task: {"route": route} for task, route in routes.items()},
    }
    async with gateway(make_app, raw, KEY) as (app, client):
        yield app, client


async def test_titan_embeds_one_text_a_call_signed_and_in_order(make_app: AppFactory, tmp_path: Path) -> None:
    async with FakeBedrockEmbed() as fake:
        targets = {"titan": bedrock(fake, TITAN, "titan")}
        async with served(make_app, tmp_path, targets, {"embed": ["titan"]}) as (app, client):
            resp = await client.embeddings.with_raw_response.create(model="embed", input=TEXTS)
            [row] = await rows(app, 1)
    answer = resp.parse()
    assert [d.embedding for d in answer.data] == [vector("titan-v2", t, 1024) for t in TEXTS]
    assert len(fake.requests) == len(TEXTS)
    assert all(r["signature_ok"] and r["model"] == TITAN for r in fake.requests)
    assert sorted(r["body"]["inputText"] for r in fake.requests) == sorted(TEXTS)
    assert all(set(r["body"]) == {"inputText", "normalize"} and r["body"]["normalize"] is True for r in fake.requests)
    assert answer.usage.prompt_tokens == sum(tokens(t) for t in TEXTS)  # each body's inputTextTokenCount
    assert resp.headers["x-turnout-model-version"] == TITAN
    assert row.endpoint == "embeddings" and row.usage_estimated is False


async def test_titan_dimensions_and_a_size_it_does_not_have(make_app: AppFactory, tmp_path: Path) -> None:
    async with FakeBedrockEmbed() as fake:
        targets = {"titan": bedrock(fake, TITAN, "titan")}
        async with served(make_app, tmp_path, targets, {"embed": ["titan"]}) as (_, client):
            answer = await client.embeddings.create(model="embed", input=TEXTS[:1], dimensions=256)
            with pytest.raises(openai.BadRequestError) as caught:
                await client.embeddings.create(model="embed", input=TEXTS[:1], dimensions=300)
    assert answer.data[0].embedding == vector("titan-v2", TEXTS[0], 256)
    assert fake.requests[0]["body"]["dimensions"] == 256
    assert len(fake.requests) == 1  # the refused size never left the gateway
    assert "256, 512, 1024" in caught.value.message


async def test_cohere_embeds_96_texts_a_call_with_its_input_type(make_app: AppFactory, tmp_path: Path) -> None:
    texts = [f"passage {i}" for i in range(200)]
    async with FakeBedrockEmbed() as fake:
        targets = {
            "docs": bedrock(fake, COHERE, "cohere-docs"),
            "queries": bedrock(fake, COHERE, "cohere-queries", additional_fields={"input_type": "search_query"}),
        }
        routes = {"index": ["docs"], "search": ["queries"]}
        async with served(make_app, tmp_path, targets, routes) as (app, client):
            indexed = await client.embeddings.create(model="index", input=texts)
            searched = await client.embeddings.create(model="search", input=texts[:2])
            asked = await client.embeddings.create(
                model="index", input=texts[:2], extra_body={"input_type": "clustering"}
            )
            found = await rows(app, 3)
    docs = [r["body"] for r in fake.requests[:3]]
    assert sorted(len(b["texts"]) for b in docs) == [8, 96, 96]
    assert all(set(b) == {"texts", "input_type", "truncate"} and b["truncate"] == "NONE" for b in docs)
    assert [d.embedding for d in indexed.data] == [vector("cohere-v3/search_document", t, COHERE_DIMS) for t in texts]
    assert searched.data[1].embedding == vector("cohere-v3/search_query", texts[1], COHERE_DIMS)
    assert asked.data[0].embedding == vector("cohere-v3/clustering", texts[0], COHERE_DIMS)
    # Cohere's body has no token count: the X-Amzn-Bedrock-Input-Token-Count header has it.
    assert indexed.usage.prompt_tokens == sum(tokens(t) for t in texts)
    assert all(r.usage_estimated is False for r in found)


async def test_a_throttled_call_is_retried_and_a_rejected_request_is_the_callers_400(
    make_app: AppFactory, tmp_path: Path
) -> None:
    async with FakeBedrockEmbed() as fake:
        targets = {"titan": bedrock(fake, TITAN, "titan")}
        async with served(make_app, tmp_path, targets, {"embed": ["titan"]}) as (app, client):
            fake.fault = Fault(status=429, error="ThrottlingException", times=1)
            answer = await client.embeddings.create(model="embed", input=TEXTS[:1])
            with pytest.raises(openai.BadRequestError) as caught:  # past Titan's 50,000 characters
                await client.embeddings.create(model="embed", input=["word " * 12_000])
            found = await rows(app, 2)
    assert answer.data[0].embedding == vector("titan-v2", TEXTS[0], 1024)
    ok = next(r for r in found if r.status == 200)
    assert [a.error_class for a in ok.attempts] == ["bedrock_throttling", None]
    assert caught.value.code == "upstream_rejected"
    assert "Bedrock ValidationException" in caught.value.message


async def test_fallback_between_two_regions_of_one_model(make_app: AppFactory, tmp_path: Path) -> None:
    async with FakeBedrockEmbed() as east, FakeBedrockEmbed() as west:
        east.fault = Fault(status=403, error="AccessDeniedException")
        targets = {"east": bedrock(east, TITAN, "titan"), "west": bedrock(west, TITAN, "titan")}
        async with served(make_app, tmp_path, targets, {"embed": ["east", "west"]}) as (app, client):
            resp = await client.embeddings.with_raw_response.create(model="embed", input=TEXTS[:2])
            [row] = await rows(app, 1)
    assert resp.headers["x-turnout-target"] == "west"
    assert [d.embedding for d in resp.parse().data] == [vector("titan-v2", t, 1024) for t in TEXTS[:2]]
    assert [a.error_class for a in row.attempts] == ["bedrock_access_denied", None]


async def test_a_bad_signature_is_refused_by_the_server(
    make_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    async with FakeBedrockEmbed() as fake:
        targets = {"titan": bedrock(fake, TITAN, "titan")}
        async with served(make_app, tmp_path, targets, {"embed": ["titan"]}) as (_, client):
            with pytest.raises(openai.APIStatusError) as caught:
                await client.embeddings.create(model="embed", input=TEXTS[:1])
    assert fake.requests and not any(r["signature_ok"] for r in fake.requests)
    assert "InvalidSignatureException" in caught.value.message


def test_a_bedrock_model_that_does_not_embed_is_refused_at_load(tmp_path: Path) -> None:
    from turnout.config import validate
    from turnout.errors import ConfigError

    raw = {
        "targets": {
            "llm": {"provider": "bedrock", "region": "us-east-1", "model": "deepseek.v3-v1:0", "embedding_space": "x"}
        },
        "tasks": {"embed": {"route": ["llm"]}},
    }
    with pytest.raises(ConfigError) as caught:
        validate(raw)
    assert caught.value.problems[0].startswith("targets.llm.model: 'deepseek.v3-v1:0' is not a Bedrock embedding model")
