"""Fault-injecting fakes of the embedding servers turnout calls, on aiohttp.web:

* ``FakeEmbeddings``: an OpenAI-compatible ``POST /v1/embeddings`` (vLLM, TEI, llama.cpp's
  server), with TEI's batch limit (``max_batch``: a larger batch is a 413, as TEI's
  ``max_client_batch_size``), matryoshka ``dimensions`` or none, answers in shuffled order (each
  item carries its ``index``, as the API allows) and faults by status.
* ``FakeBedrockEmbed``: Bedrock Runtime's ``POST /model/{id}/invoke`` for Amazon Titan Text
  Embeddings v2 and Cohere Embed v3, their request bodies checked as strictly as Bedrock does
  (a key the model does not take, a missing ``input_type``, 97 texts: ``ValidationException``),
  the input tokens in ``X-Amzn-Bedrock-Input-Token-Count``, and the SigV4 signature recomputed
  with botocore's own signer (``tests.fakes.bedrock.sigv4_signature_ok``).

Vectors are functions of (space, text): ``vector(space, text, dims)``, a unit vector of float32
values, so a test can tell which server embedded which input, in which order, and compare base64
answers exactly. As processes, switched over HTTP::

    python -m tests.fakes.embedders --port 8003 --space bge [--max-batch 32] [--matryoshka]
    python -m tests.fakes.embedders --port 8004 --bedrock
    POST /_fault {"status": 503, "times": 2}     GET /_requests     DELETE /_requests
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import re
import uuid
from array import array
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
from aiohttp import web

from tests.fakes.bedrock import ACCESS_KEY, ERROR_NAMESPACE, SECRET_KEY, sigv4_signature_ok
from tests.fakes.server import FakeServer

TITAN_DIMS = (256, 512, 1024)
COHERE_DIMS = 1024
COHERE_MAX_TEXTS = 96
COHERE_MAX_CHARS = 2048
TITAN_MAX_CHARS = 50_000
COHERE_INPUT_TYPES = ("search_document", "search_query", "classification", "clustering", "image")
_INVOKE = re.compile(r"/model/(?P<model>[^/]+)/invoke")


def vector(space: str, text: str, dims: int) -> list[float]:
    """The unit vector a fake of ``space`` gives ``text``: float32 values, deterministic."""
    rng = random.Random(hashlib.sha256(f"{space}\0{text}".encode()).digest())
    raw = [rng.uniform(-1.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(x * x for x in raw))
    return array("f", (x / norm for x in raw)).tolist()


def tokens(text: str) -> int:
    """The fakes' token count: words, plus the two special tokens an encoder adds."""
    return len(text.split()) + 2


@dataclass
class Fault:
    status: int = 0  # 0: answer; else this HTTP status (Bedrock: the error named below)
    error: str = "ThrottlingException"  # Bedrock's x-amzn-ErrorType
    times: int | None = None  # then answer again
    wrong_dims: bool = False  # OpenAI-compatible: one vector a dimension short


@dataclass
class FakeEmbeddings(FakeServer):
    host: str = "127.0.0.1"
    port: int = 0
    space: str = "space-a"
    dims: int = 8
    max_batch: int = 32
    matryoshka: bool = False  # honour ``dimensions`` (else a 400, as for a model without it)
    shuffle: bool = True
    usage: bool = True
    fault: Fault = field(default_factory=Fault)
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The ``base_url`` for a target."""
        return f"http://{self.host}:{self.port}/v1"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        _control(app, self)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        return _json({"object": "list", "data": [{"id": self.space, "object": "model"}]})

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.requests.append(body)
        fault = _take(self)
        if fault.status:
            return _json(
                {"error": {"message": "injected fault", "type": "server_error", "code": fault.status}}, 0, fault.status
            )
        inputs = body.get("input")
        if not isinstance(inputs, list) or not all(isinstance(t, str) and t for t in inputs):
            return _json({"error": {"message": "input must be non-empty strings", "type": "BadRequestError"}}, 0, 400)
        if len(inputs) > self.max_batch:
            message = f"batch size {len(inputs)} > maximum allowed batch size {self.max_batch}"
            return _json({"error": message, "error_type": "Validation"}, 0, 413)
        dims = body.get("dimensions") or self.dims
        if body.get("dimensions") is not None and not self.matryoshka:
            return _json(
                {"error": {"message": "this model does not support dimensions", "type": "BadRequestError"}}, 0, 400
            )
        data: list[dict[str, Any]] = [
            {"object": "embedding", "index": i, "embedding": vector(self.space, t, dims)} for i, t in enumerate(inputs)
        ]
        if fault.wrong_dims:
            data[-1]["embedding"] = data[-1]["embedding"][:-1]
        if self.shuffle:
            random.Random(len(self.requests)).shuffle(data)
        answer: dict[str, Any] = {"object": "list", "data": data, "model": self.space}
        if self.usage:
            n = sum(tokens(t) for t in inputs)
            answer["usage"] = {"prompt_tokens": n, "total_tokens": n}
        return _json(answer)


@dataclass
class FakeBedrockEmbed(FakeServer):
    host: str = "127.0.0.1"
    port: int = 0
    region: str = "us-east-1"
    verify_signature: bool = True
    fault: Fault = field(default_factory=Fault)
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The ``endpoint_url`` for a target."""
        return f"http://{self.host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        _control(app, self)
        app.router.add_route("*", "/{tail:.*}", self._invoke)
        return app

    async def _invoke(self, request: web.Request) -> web.Response:
        raw = await request.read()
        route = _INVOKE.fullmatch(urlsplit(request.raw_path).path) if request.method == "POST" else None
        if route is None:
            return _bedrock_error("UnknownOperationException", 404, "Unknown operation")
        model = unquote(route["model"])
        signed = sigv4_signature_ok(request.method, request.raw_path, request.headers, raw, ACCESS_KEY, SECRET_KEY)
        self.requests.append({"model": model, "body": orjson.loads(raw), "signature_ok": signed})
        if self.verify_signature and not signed:
            return _bedrock_error(
                "InvalidSignatureException", 403, "The request signature we calculated does not match"
            )
        fault = _take(self)
        if fault.status:
            return _bedrock_error(fault.error, fault.status, "injected fault")
        body = orjson.loads(raw)
        if "titan-embed-text-v2" in model:
            return _titan(body)
        if re.search(r"cohere\.embed-(english|multilingual)-v3", model):
            return _cohere(body)
        return _bedrock_error("ResourceNotFoundException", 404, "Could not resolve the foundation model")


def _titan(body: Any) -> web.Response:
    problem = _titan_problem(body)
    if problem:
        return _bedrock_error(
            "ValidationException", 400, f"Malformed input request: {problem}, please reformat your input and try again."
        )
    dims = body.get("dimensions", 1024)
    text = body["inputText"]
    v = vector("titan-v2", text, dims)
    count = tokens(text)
    return _json({"embedding": v, "inputTextTokenCount": count, "embeddingsByType": {"float": v}}, count)


def _titan_problem(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "#: expected type: JSONObject"
    extra = set(body) - {"inputText", "dimensions", "normalize", "embeddingTypes"}
    if extra:
        return f"#: extraneous key [{sorted(extra)[0]}] is not permitted"
    text = body.get("inputText")
    if not isinstance(text, str) or not text:
        return "#/inputText: expected minLength: 1"
    if len(text) > TITAN_MAX_CHARS:
        return f"#/inputText: expected maxLength: {TITAN_MAX_CHARS}"
    if "dimensions" in body and body["dimensions"] not in TITAN_DIMS:
        return f"#/dimensions: {body['dimensions']} is not a valid enum value"
    if "normalize" in body and not isinstance(body["normalize"], bool):
        return "#/normalize: expected type: Boolean"
    return None


def _cohere(body: Any) -> web.Response:
    problem = _cohere_problem(body)
    if problem:
        return _bedrock_error(
            "ValidationException", 400, f"Malformed input request: {problem}, please reformat your input and try again."
        )
    texts = body["texts"]
    space = f"cohere-v3/{body['input_type']}"  # input_type changes the vector, as it does for Cohere
    answer = {
        "embeddings": [vector(space, t, COHERE_DIMS) for t in texts],
        "id": str(uuid.uuid4()),
        "response_type": "embeddings_floats",
        "texts": texts,
    }
    return _json(answer, sum(tokens(t) for t in texts))


def _cohere_problem(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "#: expected type: JSONObject"
    extra = set(body) - {"texts", "images", "input_type", "truncate", "embedding_types"}
    if extra:
        return f"#: extraneous key [{sorted(extra)[0]}] is not permitted"
    if body.get("input_type") not in COHERE_INPUT_TYPES:
        return "#: required key [input_type] not found" if "input_type" not in body else "#/input_type: invalid"
    texts = body.get("texts")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return "#/texts: expected type: JSONArray"
    if len(texts) > COHERE_MAX_TEXTS:
        return f"#/texts: expected maximum item count: {COHERE_MAX_TEXTS}, found: {len(texts)}"
    if any(len(t) > COHERE_MAX_CHARS for t in texts):
        return f"#/texts: expected maxLength: {COHERE_MAX_CHARS}"
    if body.get("truncate", "NONE") not in ("NONE", "START", "END"):
        return "#/truncate: invalid"
    return None


# -- shared plumbing ---------------------------------------------------------------------------


def _take(fake: FakeEmbeddings | FakeBedrockEmbed) -> Fault:
    fault = fake.fault
    if fault.times is not None:
        fault.times -= 1
        if fault.times <= 0:
            fake.fault = Fault()
    return fault


def _control(app: web.Application, fake: FakeEmbeddings | FakeBedrockEmbed) -> None:
    async def set_fault(request: web.Request) -> web.Response:
        fake.fault = Fault(**orjson.loads(await request.read() or b"{}"))
        return _json({"ok": True})

    async def get_requests(request: web.Request) -> web.Response:
        return _json(fake.requests)

    async def clear_requests(request: web.Request) -> web.Response:
        fake.requests.clear()
        return _json({"cleared": True})

    app.router.add_post("/_fault", set_fault)
    app.router.add_get("/_requests", get_requests)
    app.router.add_delete("/_requests", clear_requests)


def _json(payload: Any, input_tokens: int = 0, status: int = 200) -> web.Response:
    headers = {"X-Amzn-Bedrock-Input-Token-Count": str(input_tokens)} if input_tokens else None
    return web.Response(body=orjson.dumps(payload), status=status, headers=headers, content_type="application/json")


def _bedrock_error(name: str, status: int, message: str) -> web.Response:
    headers = {"x-amzn-ErrorType": f"{name}:{ERROR_NAMESPACE}", "x-amzn-RequestId": str(uuid.uuid4())}
    return web.Response(
        body=orjson.dumps({"message": message}), status=status, headers=headers, content_type="application/json"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="fakes of OpenAI-compatible and Bedrock embedding servers")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8003)
    parser.add_argument("--bedrock", action="store_true", help="Bedrock InvokeModel (Titan v2, Cohere v3)")
    parser.add_argument("--space", default="space-a")
    parser.add_argument("--dims", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--matryoshka", action="store_true")
    args = parser.parse_args()
    fake: FakeEmbeddings | FakeBedrockEmbed
    if args.bedrock:
        fake = FakeBedrockEmbed(host=args.host, port=args.port)
    else:
        fake = FakeEmbeddings(
            host=args.host,
            port=args.port,
            space=args.space,
            dims=args.dims,
            max_batch=args.max_batch,
            matryoshka=args.matryoshka,
        )
    web.run_app(fake.app(), host=args.host, port=args.port, handler_cancellation=True, access_log=None)


if __name__ == "__main__":
    main()
