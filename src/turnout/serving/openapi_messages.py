"""The component schemas of ``POST /v1/messages`` (Anthropic's Messages API) and ``POST
/v1/messages/count_tokens`` in ``GET /openapi.json`` (``turnout.serving.openapi``), from the
fields ``turnout.serving.anthropic`` translates. Their errors have Anthropic's shape
(``AnthropicError``), not OpenAI's."""

from __future__ import annotations

from turnout.serving.anthropic import (
    BLOCK_FIELDS,
    COUNT_FIELDS,
    ERROR_TYPES,
    MIN_THINKING_BUDGET,
    STOP_REASONS,
    THINKING_FIELDS,
)
from turnout.serving.door import ANTHROPIC_TOOL_NAME
from turnout.serving.openapi_schemas import DATA_CLASS, EPISODE_ID, STRING, Schema, json_content, nullable, ref

ERROR_STATUSES = (400, 401, 403, 404, 405, 413, 415, 422, 429, 502, 503, 504, 529)
COUNT_ERROR_STATUSES = (400, 401, 404, 405, 413, 415)  # no target is called: no policy, quota or upstream


def messages_schemas() -> dict[str, Schema]:
    return {
        "MessageRequest": _request(),
        "Message": _answer(),
        "CountTokensRequest": _count_request(),
        "MessageTokensCount": _count(),
        "AnthropicError": _error(),
    }


def messages_errors(statuses: tuple[int, ...] = ERROR_STATUSES) -> dict[str, Schema]:
    """The error answers of ``/v1/messages`` and the paths under it, in Anthropic's shape."""
    error = ref("AnthropicError")
    return {str(s): json_content(error, f"HTTP {s}, in Anthropic's error shape.") for s in statuses}


def _count_request() -> Schema:
    request = _request()
    return {
        "type": "object",
        "required": ["model", "messages"],
        "description": "A Messages request's prompt: its model (the task), system, messages, tools and "
        "output_config.format, checked "
        "as `POST /v1/messages` checks them. Any other field (`max_tokens`, `stream`, sampling) is refused "
        "with a 400 naming it.",
        "properties": {k: v for k, v in request["properties"].items() if k in COUNT_FIELDS},
    }


def _count() -> Schema:
    return {
        "type": "object",
        "required": ["input_tokens"],
        "properties": {
            "input_tokens": {
                "type": "integer",
                "minimum": 0,
                "description": "A bound on the prompt's tokens, never below what a target counts: the one the "
                "quota reserves (UTF-8 bytes, or a target's tokenizer where configured; the largest among the "
                "task's targets), with the chat template's overhead.",
            }
        },
    }


def _request() -> Schema:
    ignored: Schema = {
        "type": "object",
        "description": "Accepted and ignored: the targets' chat body has no prompt cache points.",
    }
    block: Schema = {
        "type": "object",
        "required": ["type"],
        "description": "A content block: text, image, tool_use (assistant), an earlier answer's thinking or "
        "redacted_thinking (assistant; left out of what the targets get) or tool_result (user). Another type, or a "
        "field Anthropic's API does not define on the block, is refused with a 400 naming it.",
        "properties": {"type": {"enum": sorted(BLOCK_FIELDS)}, "cache_control": ignored},
    }
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
            "cache_control": ignored,
            "tools": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "description": "Names are unique within a request.",
                    "properties": {
                        "name": {"type": "string", "pattern": f"^{ANTHROPIC_TOOL_NAME.pattern}$"},
                        "strict": {"type": "boolean", "description": "The chat tool's `function.strict`."},
                        "cache_control": ignored,
                    },
                },
            },
            "tool_choice": {"type": "object", "required": ["type"]},
            "output_config": nullable(
                {
                    "type": "object",
                    "description": "`format` (structured outputs) becomes the chat body's json_schema "
                    "`response_format`; another field (`effort`) is refused with a 400 naming it.",
                    "properties": {
                        "format": nullable(
                            {
                                "type": "object",
                                "required": ["type", "schema"],
                                "properties": {"type": {"enum": ["json_schema"]}, "schema": {"type": "object"}},
                            }
                        )
                    },
                }
            ),
            "thinking": nullable(
                {
                    "type": "object",
                    "required": ["type"],
                    "description": "`enabled` (`budget_tokens` at least 1024, below `max_tokens`) or `adaptive`: the "
                    "model's reasoning, where the target gives it, comes as thinking blocks (none with `display: "
                    "omitted`). Nothing of it reaches the targets.",
                    "properties": {
                        "type": {"enum": sorted(THINKING_FIELDS)},
                        "budget_tokens": {"type": "integer", "minimum": MIN_THINKING_BUDGET},
                        "display": {"enum": ["summarized", "omitted"]},
                    },
                    "additionalProperties": False,
                }
            ),
            "stop_sequences": {"type": "array", "items": {"type": "string", "minLength": 1}},
            "temperature": {"type": "number", "minimum": 0},
            "top_p": {"type": "number", "minimum": 0},
            "top_k": {"type": "integer", "minimum": 0},
            "metadata": {
                "type": "object",
                "description": "`user_id` as Anthropic defines it; turnout also reads data_class, episode_id, "
                "max_latency_ms and max_cost_usd. Any other key is a 400, as on Anthropic's API.",
                "additionalProperties": False,
                "properties": {
                    "user_id": nullable(STRING),
                    "data_class": nullable(DATA_CLASS),
                    "episode_id": nullable(EPISODE_ID),
                    "max_latency_ms": nullable({"type": ["number", "string"]}),  # as the headers; 400 out of range
                    "max_cost_usd": nullable({"type": ["number", "string"]}),
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
            "stop_reason": {
                "enum": sorted({*STOP_REASONS.values(), "end_turn", "tool_use", "stop_sequence", "refusal"})
            },
            "stop_sequence": {"type": ["string", "null"]},  # the stop string that ended it, where named
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
