"""``POST /v1/embeddings`` end to end: the official openai SDK against ``turnout serve`` (a real
process, its config from a file), embedding through OpenAI-compatible servers and Bedrock's
InvokeModel (fakes run as processes, switched over HTTP; the Bedrock one verifies SigV4), and
``turnout check`` refusing a route that crosses embedding spaces."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.bedrock_pair import serve
from tests.fakes.embedders import tokens, vector
from tests.serving import Process, Served, sdk_client

pytestmark = pytest.mark.slow

TEXTS = [f"chunk {i} of the handbook" for i in range(40)]


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, Process]]:
    procs = {
        "a": Process("tests.fakes.embedders", "--space", "bge", "--max-batch", "16"),
        "b": Process("tests.fakes.embedders", "--space", "bge", "--max-batch", "16"),
        "bedrock": Process("tests.fakes.embedders", "--bedrock"),
    }
    yield procs
    for p in procs.values():
        p.stop()


def config(fakes: dict[str, Process]) -> dict[str, object]:
    def vllm(name: str) -> dict[str, object]:
        url = fakes[name].url + "/v1"
        return {"provider": "openai", "base_url": url, "model": "bge", "embedding_space": "bge", "embedding_batch": 16}

    titan = {
        "provider": "bedrock",
        "region": "us-east-1",
        "model": "amazon.titan-embed-text-v2:0",
        "endpoint_url": fakes["bedrock"].url,
        "embedding_space": "titan-v2",
        "price": {"input_per_mtok": 0.02},
    }
    return {
        "targets": {"vllm-a": {**vllm("a"), "retry": {"attempts": 1}}, "vllm-b": vllm("b"), "titan": titan},
        "tasks": {"embed": {"route": ["vllm-a", "vllm-b"]}, "embed-titan": {"route": ["titan"]}},
    }


@pytest.fixture(scope="module")
def served(fakes: dict[str, Process], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    cwd = tmp_path_factory.mktemp("serve")
    with serve(cwd, config(fakes)) as s:
        yield s


def client(served: Served) -> openai.OpenAI:
    return sdk_client(served.base_url, "unused")


def test_the_sdk_embeds_through_turnout_serve_across_batches(served: Served, fakes: dict[str, Process]) -> None:
    fakes["a"].post("/_fault", {})
    answer = client(served).embeddings.create(model="embed", input=TEXTS)
    assert [d.embedding for d in answer.data] == [vector("bge", t, 8) for t in TEXTS]
    assert answer.model == "embed"
    assert answer.usage.prompt_tokens == sum(tokens(t) for t in TEXTS)


def test_a_failing_server_falls_back_within_the_space(served: Served, fakes: dict[str, Process]) -> None:
    fakes["a"].post("/_fault", {"status": 503, "times": 1})
    resp = client(served).embeddings.with_raw_response.create(model="embed", input=TEXTS[:3])
    assert resp.headers["x-turnout-target"] == "vllm-b"
    assert [d.embedding for d in resp.parse().data] == [vector("bge", t, 8) for t in TEXTS[:3]]


def test_titan_through_turnout_serve_signed_and_priced(served: Served, fakes: dict[str, Process]) -> None:
    resp = client(served).embeddings.with_raw_response.create(model="embed-titan", input=TEXTS[:2], dimensions=512)
    answer = resp.parse()
    assert [d.embedding for d in answer.data] == [vector("titan-v2", t, 512) for t in TEXTS[:2]]
    received = [r for r in fakes["bedrock"].requests() if r["body"].get("inputText") in TEXTS[:2]]
    assert len(received) == 2 and all(r["signature_ok"] for r in received)
    cost = float(resp.headers["x-turnout-cost-usd"])
    assert cost == pytest.approx(answer.usage.prompt_tokens * 0.02 / 1e6)


def test_the_openapi_description_lists_the_route(served: Served) -> None:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/openapi.json", timeout=5) as resp:
        doc = json.loads(resp.read())
    assert doc["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EmbeddingRequest"
    }


def test_turnout_check_refuses_a_route_across_spaces(fakes: dict[str, Process], tmp_path: Path) -> None:
    raw = config(fakes)
    raw["tasks"] = {"embed": {"route": ["vllm-a", "titan"]}}
    path = tmp_path / "turnout.yaml"
    path.write_text(json.dumps(raw))
    done = subprocess.run(
        [sys.executable, "-m", "turnout", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert (
        "tasks.embed.route[1]: 'titan' is in embedding space 'titan-v2', 'vllm-a' in 'bge': "
        "a fallback across spaces would corrupt an index"
    ) in done.stderr
