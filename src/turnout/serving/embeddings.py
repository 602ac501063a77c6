"""``POST /v1/embeddings``: the OpenAI embeddings door, where ``model`` names a task whose route
holds embedding targets (``targets.X.embedding_space``; one space per route, checked at load).

The request is checked by hand, as chat completions are: ``input`` a string or an array of at
most ``MAX_INPUTS`` non-empty strings of at most ``MAX_INPUT_CHARS`` characters each (token-id
arrays are refused: their ids mean something only to one tokenizer, and a fallback may reach
another), ``encoding_format`` ``float`` or ``base64``, ``dimensions`` a positive integer. What
the targets receive is ``input`` as an array, ``dimensions``, ``user`` and any field turnout
does not know (``input_type`` for Cohere, vLLM's extras); never ``encoding_format``: targets
answer floats and the door encodes base64 itself (little-endian float32, as OpenAI does), so
the answer has one meaning whichever target gave it. ``metadata`` is turnout's and reaches no
target: ``TURNOUT_METADATA`` (the end user, data class, episode and the caller's limits), any
other key a 400 (dropped, a misspelt ``data_class`` served the request under the default).
Batching, order and the vectors' checks are the provider edge's (``turnout.providers.embeddings``).

Nothing is screened for injection (the texts are embedded, not followed) and no answer text is
kept: a vector is not text, and the inputs are the caller's data like any prompt.
"""

from __future__ import annotations

import base64
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from turnout.config import DATA_CLASSES
from turnout.errors import RequestError, refuse_unknown
from turnout.providers.base import Completion, Usage
from turnout.releases.base import Release
from turnout.routing.constraints import COST, LATENCY
from turnout.safety.policy import Input
from turnout.serving import respond
from turnout.serving.asgi import Receive, Send, json_object, send_json
from turnout.serving.door import EMBEDDINGS, TURNOUT_METADATA, Answered, Reply, check_episode_id

MAX_INPUTS = 2048  # OpenAI's limit per request
MAX_INPUT_CHARS = 131_072  # past any embedding model's window (32k tokens of 4 characters)
MAX_DIMENSIONS = 65_536
ENCODINGS = ("float", "base64")
OWN = frozenset({"model", "input", "encoding_format", "metadata"})  # not passed on as they came


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    task: str
    body: dict[str, Any]  # what the targets receive: ``input`` as an array, no encoding_format
    encoding: str  # float | base64: how the door writes the vectors
    data_class: str | None
    user: str | None
    episode_id: str | None = None
    constraints: dict[str, Any] | None = None  # metadata.max_latency_ms / max_cost_usd as sent
    stream: bool = False  # embeddings are answered whole

    @property
    def inputs(self) -> list[str]:
        inputs: list[str] = self.body["input"]
        return inputs


class EmbeddingsDoor:
    endpoint = EMBEDDINGS
    task_param = "model"
    prompt_param: str | None = "input"
    output_param: str | None = None  # nothing generated
    needs_release = False
    release_prompt = False
    fenced_json = False
    ticket_body = False  # never checked: nothing to escalate

    def parse(self, raw: bytes, task: str | None) -> EmbeddingsRequest:
        return validate(json_object(raw))

    def body(self, request: EmbeddingsRequest, release: Release | None) -> dict[str, Any]:
        # A release's parameters tune generation; an embedding takes its targets only.
        return request.body

    def untrusted(self, request: EmbeddingsRequest) -> Iterator[Input]:
        return iter(())  # embedded, never followed: nothing to screen

    async def respond(self, reply: Reply[EmbeddingsRequest], send: Send, receive: Receive) -> Answered:
        answer = reply.result.answer
        assert isinstance(answer, Completion)  # never streamed
        usage, estimated = answer.usage, answer.usage is None
        if usage is None:  # an upstream that reports none: the prompt bound, flagged in the row
            target = reply.result.target.name
            usage = Usage((await reply.tokens.prompts(reply.request.body, [target]))[target], 0)
        priced = reply.price(usage)
        headers = reply.headers + respond.cost_header(priced.total)
        request = reply.request
        body = answer_body(answer.body["data"], request.task, request.encoding, usage.prompt_tokens)
        await send_json(send, 200, body, headers)
        latency_ms = reply.result.attempts[-1].latency_ms
        return Answered(200, usage, priced, latency_ms, usage_estimated=estimated)


EMBEDDINGS_DOOR = EmbeddingsDoor()


def answer_body(data: list[dict[str, Any]], task: str, encoding: str, tokens: int) -> dict[str, Any]:
    """OpenAI's ``list`` of ``embedding`` objects, ``model`` naming the task."""
    if encoding == "base64":
        data = [{**item, "embedding": encode(item["embedding"])} for item in data]
    return {"object": "list", "data": data, "model": task, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def encode(vector: list[float]) -> str:
    """OpenAI's base64 form: the vector as little-endian float32, base64-encoded."""
    packed = array("f", vector)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def decode(text: str) -> list[float]:
    """``encode``'s inverse (float32 precision): what a client of the base64 form reads."""
    packed = array("f")
    packed.frombytes(base64.b64decode(text))
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tolist()


def validate(body: dict[str, Any]) -> EmbeddingsRequest:
    task = body.get("model")
    if not isinstance(task, str) or not task:
        raise _bad("model", "'model' is required and must name a task (a string)")
    inputs = _inputs(body.get("input"))
    encoding = body.get("encoding_format")
    if encoding is None:
        encoding = "float"
    elif not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise _bad("encoding_format", "'encoding_format' must be float or base64")
    out = {k: v for k, v in body.items() if k not in OWN}
    out["input"] = inputs
    dimensions = body.get("dimensions")
    if dimensions is None:
        out.pop("dimensions", None)
    elif isinstance(dimensions, bool) or not isinstance(dimensions, int) or not 1 <= dimensions <= MAX_DIMENSIONS:
        raise _bad("dimensions", f"'dimensions' must be an integer from 1 to {MAX_DIMENSIONS}")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("user", "'user' must be a string")
    data_class, episode_id, constraints = None, None, None
    meta = body.get("metadata")
    if meta is not None:
        if not isinstance(meta, dict):
            raise _bad("metadata", "'metadata' must be an object")
        # dropped silently, a misspelt data_class served the request under the default
        refuse_unknown(meta, TURNOUT_METADATA, "metadata", prefix="metadata.", code="invalid_value")
        data_class = _meta_str(meta, "data_class")
        if data_class and data_class.lower() not in DATA_CLASSES:
            raise _bad("metadata.data_class", f"'metadata.data_class' must be one of {', '.join(DATA_CLASSES)}")
        user = _meta_str(meta, "user") or user
        episode_id = check_episode_id(meta.get("episode_id"), "metadata.episode_id")
        constraints = {k: meta[k] for k in (LATENCY, COST) if k in meta} or None
    return EmbeddingsRequest(task, out, encoding, data_class, user, episode_id, constraints)


def _inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    elif not isinstance(value, list) or not value:
        raise _bad("input", "'input' is required: a string or a non-empty array of strings")
    if len(value) > MAX_INPUTS:
        raise _bad("input", f"'input' holds {len(value)} items; at most {MAX_INPUTS} per request")
    for i, text in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(text, str):
            if isinstance(text, int) or (isinstance(text, list) and all(isinstance(t, int) for t in text)):
                raise _bad("input", "'input' holds token ids; send text (ids mean something to one tokenizer only)")
            raise _bad(where, f"'{where}' must be a string")
        if not text:
            raise _bad(where, f"'{where}' is empty; every input needs text")
        if len(text) > MAX_INPUT_CHARS:
            raise _bad(where, f"'{where}' has {len(text)} characters; at most {MAX_INPUT_CHARS}")
    texts: list[str] = value
    return texts


def _meta_str(meta: dict[str, Any], name: str) -> str | None:
    value = meta.get(name)
    if value is not None and not isinstance(value, str):
        raise _bad(f"metadata.{name}", f"'metadata.{name}' must be a string")
    return value


def _bad(param: str, message: str) -> RequestError:
    return RequestError(message, param=param, code="invalid_value")
