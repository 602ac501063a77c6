"""The component schemas of ``POST /v1/embeddings`` in ``GET /openapi.json``
(``turnout.serving.openapi``), from the constants ``turnout.serving.embeddings`` checks against."""

from __future__ import annotations

from turnout.serving.embeddings import ENCODINGS, MAX_DIMENSIONS, MAX_INPUT_CHARS, MAX_INPUTS
from turnout.serving.openapi_schemas import STRING, Schema, nullable, turnout_metadata

_TEXT: Schema = {"type": "string", "minLength": 1, "maxLength": MAX_INPUT_CHARS}


def embedding_schemas() -> dict[str, Schema]:
    return {"EmbeddingRequest": _request(), "EmbeddingList": _answer()}


def _request() -> Schema:
    return {
        "type": "object",
        "required": ["model", "input"],
        "description": "OpenAI's embeddings request. Fields turnout does not know reach the targets "
        "(`input_type` for Cohere Embed, a server's own extras).",
        "properties": {
            "model": {
                "type": "string",
                "minLength": 1,
                "description": "The task: one whose targets embed (`embedding_space`).",
                "examples": ["embed"],
            },
            "input": {
                "description": "Text, or texts embedded in order. Token-id arrays are refused.",
                "anyOf": [_TEXT, {"type": "array", "minItems": 1, "maxItems": MAX_INPUTS, "items": _TEXT}],
            },
            "encoding_format": nullable({"enum": list(ENCODINGS)}),
            "dimensions": nullable({"type": "integer", "minimum": 1, "maximum": MAX_DIMENSIONS}),
            "user": nullable(STRING),
            "metadata": nullable(
                {
                    "type": "object",
                    "description": "turnout's own: none of it reaches the target; a key it does not read is a 400.",
                    "additionalProperties": False,
                    "properties": turnout_metadata(),
                }
            ),
        },
    }


def _answer() -> Schema:
    vector: Schema = {
        "description": "Floats, or (`encoding_format: base64`) little-endian float32 in base64.",
        "anyOf": [{"type": "array", "minItems": 1, "items": {"type": "number"}}, STRING],
    }
    return {
        "type": "object",
        "required": ["object", "data", "model", "usage"],
        "properties": {
            "object": {"const": "list"},
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["object", "index", "embedding"],
                    "properties": {
                        "object": {"const": "embedding"},
                        "index": {"type": "integer", "minimum": 0},
                        "embedding": vector,
                    },
                },
            },
            "model": {"type": "string", "description": "The task."},
            "usage": {
                "type": "object",
                "required": ["prompt_tokens", "total_tokens"],
                "properties": {
                    "prompt_tokens": {"type": "integer", "minimum": 0},
                    "total_tokens": {"type": "integer", "minimum": 0},
                },
            },
        },
    }
