"""The component schemas of ``POST /v1/messages`` (Anthropic's Messages API) in ``GET
/openapi.json`` (``turnout.serving.openapi``), from the fields ``turnout.serving.anthropic``
translates. Its errors have Anthropic's shape (``AnthropicError``), not OpenAI's."""

from __future__ import annotations

from turnout.serving.anthropic import ERROR_TYPES, STOP_REASONS
from turnout.serving.openapi_schemas import DATA_CLASS, EPISODE_ID, STRING, Schema, json_content, nullable, ref

ERROR_STATUSES = (400, 401, 403, 404, 413, 422, 429, 502, 503, 504)


def messages_schemas() -> dict[str, Schema]:
    return {"MessageRequest": _request(), "Message": _answer(), "AnthropicError": _error()}


def messages_errors() -> dict[str, Schema]:
    """The error answers of ``/v1/messages``, in Anthropic's shape."""
    error = ref("AnthropicError")
    return {str(s): json_content(error, f"HTTP {s}, in Anthropic's error shape.") for s in ERROR_STATUSES}


def _request() -> Schema:
    ignored: Schema = {
        "type": "object",
        "description": "Accepted and ignored: the targets' chat body has no prompt cache points.",
    }
    block: Schema = {"type": "object", "required": ["type"], "properties": {"type": STRING, "cache_control": ignored}}
    return {
        "type": "object",
        "required": ["model", "max_tokens", "messages"],
        "description": "Anthropic's Messages request, translated to the task's targets. Fields outside "
        "these are refused with a 400 naming them (never dropped).",
        "properties": {
            "model": {"type": "string", "minLength": 1, "description": "The task.", "examples": ["support"]},
            "max_tokens": {"type": "integer", "minimum": 1},
            "system": {"anyOf": [STRING, {"type": "array", "items": block}]},
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["role", "content"],
                    "properties": {
                        "role": {"enum": ["user", "assistant"]},
                        "content": {"anyOf": [STRING, {"type": "array", "items": block}]},
                    },
                },
            },
            "stream": {"type": "boolean"},
            "tools": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "strict": {"type": "boolean", "description": "The chat tool's `function.strict`."},
                        "cache_control": ignored,
                    },
                },
            },
            "tool_choice": {"type": "object", "required": ["type"]},
            "stop_sequences": {"type": "array", "items": {"type": "string", "minLength": 1}},
            "temperature": {"type": "number", "minimum": 0},
            "top_p": {"type": "number", "minimum": 0},
            "top_k": {"type": "integer", "minimum": 0},
            "metadata": {
                "type": "object",
                "description": "`user_id` as Anthropic defines it; turnout also reads data_class and episode_id.",
                "properties": {
                    "user_id": nullable(STRING),
                    "data_class": nullable(DATA_CLASS),
                    "episode_id": nullable(EPISODE_ID),
                },
            },
        },
    }


def _answer() -> Schema:
    return {
        "type": "object",
        "required": ["id", "type", "role", "model", "content", "stop_reason", "usage"],
        "properties": {
            "id": STRING,
            "type": {"const": "message"},
            "role": {"const": "assistant"},
            "model": {"type": "string", "description": "The task."},
            "content": {"type": "array", "items": {"type": "object", "required": ["type"]}},
            "stop_reason": {"enum": sorted({*STOP_REASONS.values(), "end_turn", "tool_use"})},
            "stop_sequence": {"type": "null"},
            "usage": {
                "type": "object",
                "required": ["input_tokens", "output_tokens"],
                "properties": {
                    "input_tokens": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "The input tokens not read from or written to a prompt cache.",
                    },
                    "cache_read_input_tokens": {"type": "integer", "minimum": 0},
                    "cache_creation_input_tokens": {"type": "integer", "minimum": 0},
                    "output_tokens": {"type": "integer", "minimum": 0},
                },
            },
        },
    }


def _error() -> Schema:
    return {
        "type": "object",
        "required": ["type", "error"],
        "properties": {
            "type": {"const": "error"},
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {"type": {"enum": sorted({*ERROR_TYPES.values(), "api_error"})}, "message": STRING},
            },
        },
    }
