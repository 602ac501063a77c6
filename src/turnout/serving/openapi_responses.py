"""The component schemas of ``POST /v1/responses`` (OpenAI's Responses API, its stateless subset)
in ``GET /openapi.json`` (``turnout.serving.openapi``), from the fields and values
``turnout.serving.response_items`` translates. Every constraint here is one the door checks, so a
body the description calls invalid is refused."""

from __future__ import annotations

from turnout.serving.door import OPENAI_TOOL_NAME
from turnout.serving.openapi_schemas import DATA_CLASS, EPISODE_ID, STRING, Schema, nullable
from turnout.serving.response_items import FIELDS, FORMATS, INCLUDABLE, STATEFUL, TRUNCATION, VERBOSITY

_OBJECT: Schema = {"type": "object"}
EVENTS = (
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.refusal.delta",
    "response.refusal.done",
    "response.reasoning_text.delta",
    "response.reasoning_text.done",
    "response.content_part.done",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
    "response.completed",
    "response.incomplete",
    "error",
)
_ITEM: Schema = {
    "type": "object",
    "description": "A `message` item (`role`, `content`: text or input_text / output_text / refusal / "
    "input_image parts; the default type), a `function_call` (`call_id`, `name`, `arguments`), a "
    "`function_call_output` (`call_id`, `output`) or an earlier answer's `reasoning` (left out). Item references "
    "are refused: no response state is kept.",
}


def responses_schemas() -> dict[str, Schema]:
    return {"ResponseRequest": _request(), "Response": _answer(), "ResponseStreamEvent": _event()}


def _request() -> Schema:
    properties: Schema = {
        "model": {"type": "string", "minLength": 1, "description": "The task.", "examples": ["support"]},
        "input": {"anyOf": [{"type": "string", "minLength": 1}, {"type": "array", "minItems": 1, "items": _ITEM}]},
        "instructions": nullable(STRING),
        "tools": nullable(
            {
                "type": "array",
                "description": "Function tools only (`type: function`, `name`, `parameters`); names are unique "
                "within a request.",
                "items": {
                    "type": "object",
                    "required": ["type"],
                    "properties": {"name": {"type": "string", "pattern": f"^{OPENAI_TOOL_NAME.pattern}$"}},
                },
            }
        ),
        "tool_choice": nullable(
            {
                "anyOf": [
                    {"enum": ["auto", "none", "required"]},
                    {
                        "type": "object",
                        "required": ["type", "name"],
                        "properties": {"type": {"const": "function"}, "name": STRING},
                    },
                ]
            }
        ),
        "parallel_tool_calls": nullable({"type": "boolean"}),
        "text": nullable(
            {
                "type": "object",
                "properties": {
                    "format": nullable(
                        {
                            "type": "object",
                            "required": ["type"],
                            "description": "`json_schema` (with `name` and `schema`) becomes the targets' "
                            "`response_format`.",
                            "properties": {"type": {"enum": sorted(FORMATS)}},
                        }
                    ),
                    "verbosity": nullable(
                        {
                            "enum": list(VERBOSITY),
                            "description": "Passed to the targets as chat's `verbosity` (applied by those "
                            "that know it).",
                        }
                    ),
                },
                "additionalProperties": False,
            }
        ),
        "max_output_tokens": nullable({"type": "integer", "minimum": 1}),
        "temperature": nullable({"type": "number", "minimum": 0, "maximum": 2}),
        "top_p": nullable({"type": "number", "minimum": 0, "maximum": 1}),
        "stream": {"type": "boolean"},
        "store": nullable(
            {
                "type": "boolean",
                "description": "Accepted; turnout keeps no response state, so nothing is stored (the Response "
                "says `store: false`).",
            }
        ),
        "user": nullable(STRING),
        "safety_identifier": nullable({"type": "string", "description": "The end user, read as `user` is."}),
        "include": nullable(
            {
                "type": "array",
                "items": {"enum": sorted(INCLUDABLE)},
                "description": "Accepted: each asks for something there is none of here. "
                "`message.output_text.logprobs` is refused.",
            }
        ),
        "truncation": nullable(
            {
                "enum": list(TRUNCATION),
                "description": "Nothing is ever dropped: an input past the context window is refused either way "
                "(the Response says `disabled`).",
            }
        ),
        "prompt_cache_key": nullable({"type": "string", "description": "Accepted and ignored (a cache hint)."}),
        "metadata": nullable(
            {
                "type": "object",
                "description": "Echoed in the Response; turnout also reads user, data_class and episode_id.",
                "properties": {
                    "user": nullable(STRING),
                    "data_class": nullable(DATA_CLASS),
                    "episode_id": nullable(EPISODE_ID),
                },
            }
        ),
        **{
            name: {"type": "null", "description": "Refused (400): turnout keeps no response state."}
            for name in STATEFUL
            if name in FIELDS
        },
    }
    return {
        "type": "object",
        "required": ["model", "input"],
        "additionalProperties": False,
        "description": "OpenAI's Responses request (stateless), translated to chat completions for the task's "
        "targets. Fields outside these are refused with a 400 naming them (never dropped).",
        "properties": properties,
    }


def _answer() -> Schema:
    usage: Schema = {
        "type": "object",
        "required": ["input_tokens", "output_tokens", "total_tokens"],
        "properties": {
            "input_tokens": {"type": "integer", "minimum": 0},
            "output_tokens": {"type": "integer", "minimum": 0},
            "total_tokens": {"type": "integer", "minimum": 0},
        },
    }
    return {
        "type": "object",
        "required": ["id", "object", "created_at", "status", "model", "output", "usage"],
        "properties": {
            "id": STRING,
            "object": {"const": "response"},
            "created_at": {"type": "integer"},
            "status": {"enum": ["completed", "incomplete"]},
            "model": {"type": "string", "description": "The task."},
            "output": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type", "id"],
                    "properties": {
                        "type": {"enum": ["reasoning", "message", "function_call"]},
                        "status": {
                            "enum": ["completed", "incomplete"],
                            "description": "`incomplete`: the item the model was writing when the answer was cut.",
                        },
                    },
                },
            },
            "usage": usage,
            "metadata": _OBJECT,
        },
    }


def _event() -> Schema:
    return {
        "type": "object",
        "description": "One server-sent event of a stream: its `event` is the type its JSON `data` repeats, "
        "with a `sequence_number` from 0.",
        "required": ["event", "data"],
        "properties": {"event": {"enum": list(EVENTS)}, "data": STRING},
    }
