"""Bedrock's embedding models through InvokeModel (``POST /model/{id}/invoke``): each family's
request and response bodies. The signer, the session and the error mapping are the Bedrock
provider's own (``provider.py``, ``errors.py``).

Amazon Titan Text Embeddings v2 (``amazon.titan-embed-text-v2:0``): one text per call::

    → {"inputText": "...", "dimensions": 256 | 512 | 1024, "normalize": true}
    ← {"embedding": [...], "inputTextTokenCount": 7, "embeddingsByType": {"float": [...]}}

Cohere Embed v3 (``cohere.embed-english-v3``, ``cohere.embed-multilingual-v3``): up to 96
texts of at most 2,048 characters per call, 1,024 dimensions; ``input_type`` is required
(``search_document`` unless the caller's body or the target's ``additional_fields`` say)::

    → {"texts": ["...", ...], "input_type": "search_document", "truncate": "NONE"}
    ← {"embeddings": [[...], ...], "id": "...", "response_type": "embeddings_floats", "texts": [...]}
      (or {"embeddings": {"float": [[...]]}, "response_type": "embeddings_by_type"})

Cohere's body carries no token count: it comes, as for every InvokeModel answer, in the
``X-Amzn-Bedrock-Input-Token-Count`` header. ``truncate`` is ``NONE``: an input too long is
refused (a ``ValidationException``), never silently cut.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from turnout.errors import UpstreamProtocolError, UpstreamStatusError

TOKEN_HEADER = "X-Amzn-Bedrock-Input-Token-Count"  # noqa: S105 - a header's name, not a secret
COHERE_INPUT_TYPES = ("search_document", "search_query", "classification", "clustering")

Request = Callable[[list[str], Mapping[str, Any], Mapping[str, Any]], dict[str, Any]]
Vectors = Callable[[dict[str, Any], str], tuple[list[Any], int | None]]


@dataclass(frozen=True, slots=True)
class Family:
    """How one family of models is called: texts per call, the bodies, the sizes it answers."""

    name: str
    batch: int
    request: Request  # (texts, the gateway's body, the target's additional_fields) → InvokeModel body
    vectors: Vectors  # (answer, target) → (vectors in input order, input tokens if the body says)


def _dimensions(body: Mapping[str, Any], allowed: tuple[int, ...], model: str) -> int | None:
    asked = body.get("dimensions")
    if asked is not None and asked not in allowed:
        sizes = ", ".join(map(str, allowed))
        raise UpstreamStatusError(400, f"{model} answers {sizes} dimensions; 'dimensions' {asked} cannot be served")
    return asked if isinstance(asked, int) else None


def titan_request(texts: list[str], body: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    request: dict[str, Any] = {"normalize": True, **extra, "inputText": texts[0]}
    dimensions = _dimensions(body, (256, 512, 1024), "Titan Text Embeddings v2")
    if dimensions is not None:
        request["dimensions"] = dimensions
    return request


def titan_vectors(answer: dict[str, Any], target: str) -> tuple[list[Any], int | None]:
    """The vector (checked by the caller) and the body's token count: None when it is not a
    count of 0 or more, so a negative one can neither make the call free nor credit a budget."""
    vector = answer.get("embedding")
    by_type = answer.get("embeddingsByType")
    if vector is None and isinstance(by_type, dict):
        vector = by_type.get("float")
    tokens = answer.get("inputTextTokenCount")
    return [vector], tokens if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0 else None


def cohere_request(texts: list[str], body: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    _dimensions(body, (1024,), "Cohere Embed v3")
    input_type = body.get("input_type", extra.get("input_type", "search_document"))
    if input_type not in COHERE_INPUT_TYPES:
        raise UpstreamStatusError(400, f"'input_type' must be one of {', '.join(COHERE_INPUT_TYPES)} for Cohere Embed")
    return {"truncate": "NONE", **extra, "texts": texts, "input_type": input_type}


def cohere_vectors(answer: dict[str, Any], target: str) -> tuple[list[Any], int | None]:
    vectors = answer.get("embeddings")
    if isinstance(vectors, dict):  # asked by type (embedding_types): the floats
        vectors = vectors.get("float")
    if not isinstance(vectors, list):
        raise UpstreamProtocolError(f"{target}: the Cohere answer has no float embeddings")
    return vectors, None


TITAN = Family("titan-embed-text-v2", 1, titan_request, titan_vectors)
COHERE = Family("cohere-embed-v3", 96, cohere_request, cohere_vectors)
_FAMILIES = (
    (re.compile(r"(^|[./])amazon\.titan-embed-text-v2"), TITAN),
    (re.compile(r"(^|[./])cohere\.embed-(english|multilingual)-v3"), COHERE),
)


def family(model: str) -> Family | None:
    """The family of a model id, inference profile or ARN; None: not an embedding model we call."""
    return next((f for pattern, f in _FAMILIES if pattern.search(model)), None)


def answer_body(vectors: list[Any], count: int, target: str) -> dict[str, Any]:
    """The batch answer ``turnout.providers.embeddings`` reads: one item per input, in order."""
    if len(vectors) != count:
        raise UpstreamProtocolError(f"{target}: {len(vectors)} embeddings for {count} inputs")
    return {"data": [{"index": i, "embedding": v} for i, v in enumerate(vectors)]}


def header_tokens(value: str | None) -> int | None:
    """The input-token header's count, or None when it is missing or not a count."""
    return int(value) if value is not None and value.strip().isdigit() else None
