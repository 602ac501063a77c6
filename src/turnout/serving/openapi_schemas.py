"""The component schemas of ``GET /openapi.json`` (``turnout.serving.openapi``): request and
answer bodies and the error responses, from the same constants the handlers check against."""

from __future__ import annotations

from typing import Any

from turnout.config import DATA_CLASSES
from turnout.control.keys.base import MAX_KEY_TTL_S
from turnout.releases.review import LABELS, MAX_ANSWER, MAX_NOTE, STATUSES
from turnout.serving.admin import MAX_BY, MAX_KEY_NAME
from turnout.serving.asgi import MAX_DEPTH
from turnout.serving.chat import INTEGERS, NUMBERS, RESPONSE_FORMATS, ROLES
from turnout.serving.door import MAX_EPISODE_ID
from turnout.serving.feedback import MAX_LABEL_CHARS, MAX_LABELS, MAX_VALUE, OUTCOMES

Schema = dict[str, Any]

ERROR_TEXT = {
    400: "The request is invalid; `param` names the field at fault (null when the body as a whole is not a "
    f"JSON object). A body may nest at most {MAX_DEPTH} levels (`too_deep`).",
    401: "Missing, malformed, revoked or expired key.",
    403: "The key may not do this (a tenant key on the admin API, a data class the policy refuses).",
    404: "Unknown route, task, key or item (another tenant's is answered the same way).",
    405: "The route exists; the method does not.",
    413: "The body is larger than `server.max_body_bytes`.",
    415: "The body has a `Content-Encoding` other than identity (`unsupported_content_encoding`): send it "
    "uncompressed.",
    429: "A rate, concurrency or budget limit refused the request; `Retry-After` says when to retry.",
    502: "Every target failed, the answer failed the release's output schema or the task's output checks "
    "(`output_invalid`), or a tool call was blocked.",
    503: "The targets are unavailable, the limiter backend is down, or the gateway is shutting down.",
    422: "No allowed target fits the caller's `X-Turnout-Max-Latency-Ms` or `X-Turnout-Max-Cost-Usd` "
    "(`constraint_unsatisfiable`; `param` names the limit).",
    504: "Every target timed out, or the caller's `X-Turnout-Max-Latency-Ms` ran out (`max_latency_exceeded`).",
}


STRING: Schema = {"type": "string"}
# Times in the admin API: ISO 8601 in UTC, as the CLI's JSON writes them (_support/times.py).
TIME: Schema = {"type": "string", "format": "date-time", "examples": ["2026-12-04T03:13:15.243740+00:00"]}
ID: Schema = {"type": "string", "minLength": 1, "pattern": "^[^/]+$"}
NON_BLANK = r"\S"
EPISODE_ID: Schema = {"type": "string", "minLength": 1, "maxLength": MAX_EPISODE_ID, "pattern": NON_BLANK}
_ANY_CASE = "^(" + "|".join("".join(f"[{c.upper()}{c}]" for c in name) for name in DATA_CLASSES) + ")$"
DATA_CLASS: Schema = {
    "type": "string",
    "pattern": _ANY_CASE,
    "description": f"one of {', '.join(DATA_CLASSES)} (any case); the policy decides which targets may see it",
}
# One replica in GET /admin/targets: its label (never its URL); waiting, running and kv_cache are
# what its server's /metrics last said (a target with ``load``), null when unknown.
_READING: Schema = {"type": ["number", "null"]}
_REPLICA: Schema = {
    "type": "object",
    "required": ["name", "breaker", "in_flight"],
    "properties": {
        "name": STRING,
        "health": {"enum": ["up", "down", "unknown"]},
        "detail": STRING,
        "breaker": STRING,
        "in_flight": {"type": "integer"},
        "waiting": _READING,
        "running": _READING,
        "kv_cache": _READING,
    },
}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """``schema`` or null: turnout treats a null optional field as absent."""
    return {"anyOf": [schema, {"type": "null"}]}


def json_content(schema: Schema, description: str, **extra: Any) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}, **extra}


def or_empty(schema: Schema) -> Schema:
    """An empty value is the same as none: the header or field left out."""
    return {"anyOf": [schema, {"const": ""}]}


def turnout_metadata() -> Schema:
    """The metadata keys turnout reads on every door that takes metadata (chat, tasks, embeddings)."""
    return {
        "user": nullable(STRING),
        "data_class": nullable(or_empty(DATA_CLASS)),
        "episode_id": nullable(EPISODE_ID),
        "max_latency_ms": nullable({"type": ["number", "string"]}),  # as the headers; 400 out of range
        "max_cost_usd": nullable({"type": ["number", "string"]}),
    }


def _message() -> Schema:
    content = {
        "type": ["string", "array", "null"],
        "items": {"type": "object", "required": ["type"], "properties": {"type": STRING}},
        "description": "Text or an array of parts; null only for an assistant message with tool calls.",
    }
    return {
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": {"enum": sorted(ROLES)},
            "content": content,
            "name": STRING,
            "tool_call_id": STRING,
            "tool_calls": {"type": ["array", "null"]},
            "function_call": {"type": ["object", "null"]},
        },
        "allOf": [
            {"if": {"properties": {"role": {"const": "tool"}}}, "then": {"required": ["tool_call_id"]}},
        ],
    }


def _chat_request() -> Schema:
    props: Schema = {
        "model": {
            "type": "string",
            "minLength": 1,
            "description": "The task (turnout routes by task).",
            "examples": ["chat"],
        },
        "messages": {"type": "array", "minItems": 1, "items": ref("ChatMessage")},
        "stream": nullable({"type": "boolean"}),
        "stream_options": nullable(
            {
                "type": "object",
                "description": "Only with `stream: true`.",
                "properties": {"include_usage": nullable({"type": "boolean"})},
            }
        ),
        "seed": nullable({"type": "integer"}),
        "stop": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "maxItems": 4, "items": STRING},
                {"type": "null"},
            ]
        },
        "tools": nullable(
            {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type", "function"],
                    "properties": {
                        "type": {"const": "function"},
                        "function": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {"name": {"type": "string", "minLength": 1}},
                        },
                    },
                },
            }
        ),
        "response_format": nullable(
            {
                "type": "object",
                "required": ["type"],
                "properties": {"type": {"enum": sorted(RESPONSE_FORMATS)}},
                "if": {"properties": {"type": {"const": "json_schema"}}},
                "then": {"required": ["json_schema"], "properties": {"json_schema": {"type": "object"}}},
            }
        ),
        "user": nullable(STRING),
        "metadata": nullable(
            {
                "type": "object",
                "description": "turnout reads and removes user, data_class, episode_id, max_latency_ms and "
                "max_cost_usd; other keys reach the target.",
                "properties": turnout_metadata(),
            }
        ),
    }
    for name, least in INTEGERS:
        props[name] = nullable({"type": "integer", "minimum": least})
    for name, lo, hi in NUMBERS:
        props[name] = nullable({"type": "number", "minimum": lo, "maximum": hi})
    return {
        "type": "object",
        "required": ["model", "messages"],
        "description": "OpenAI's chat completion request; fields turnout does not check reach the target as sent.",
        "properties": props,
        "examples": [{"model": "chat", "messages": [{"role": "user", "content": "Hello"}]}],
    }


def schemas() -> dict[str, Schema]:
    labels = {
        "type": "array",
        "maxItems": MAX_LABELS,
        "items": {"type": "string", "minLength": 1, "maxLength": MAX_LABEL_CHARS},
    }
    issued_key: Schema = {
        "type": "object",
        "required": ["id", "tenant", "name", "hint", "created_at", "expires_at", "revoked_at", "status"],
        "properties": {
            "id": STRING,
            "tenant": STRING,
            "name": STRING,
            "hint": STRING,
            "created_at": TIME,
            "expires_at": {**TIME, "type": ["string", "null"]},
            "revoked_at": {**TIME, "type": ["string", "null"]},
            "status": {"enum": ["live", "expired", "revoked"]},
        },
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type", "param", "code"],
                    "additionalProperties": False,
                    "properties": {
                        "message": {"type": "string", "minLength": 1},
                        "type": {"type": "string", "minLength": 1},
                        "param": {"type": ["string", "null"]},
                        "code": {"type": ["string", "null"]},
                    },
                }
            },
        },
        "ChatMessage": _message(),
        "ChatCompletionRequest": _chat_request(),
        "ChatCompletion": {
            "type": "object",
            "required": ["id", "object", "model", "choices"],
            "properties": {
                "id": {"type": "string", "pattern": "^chatcmpl-"},
                "object": {"const": "chat.completion"},
                "created": {"type": "integer"},
                "model": {"type": "string", "description": "The task."},
                "choices": {"type": "array", "items": {"type": "object"}},
                "usage": {"type": ["object", "null"]},
            },
        },
        "ChatCompletionEvent": {
            "type": "object",
            "description": "One server-sent event of a stream (its schema is each event's, as OpenAPI 3.1 "
            "reads an event stream).",
            "required": ["data"],
            "properties": {
                "data": {
                    "type": "string",
                    "description": 'A `chat.completion.chunk` object as JSON, an `{"error": ...}` object after a '
                    "failure mid-stream, or `[DONE]`.",
                },
                "event": STRING,
                "id": STRING,
            },
        },
        "TaskRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "variables": {"type": "object", "description": "The release's declared prompt variables."},
                "documents": {"type": "array", "items": STRING, "description": "Untrusted text, spotlighted."},
                "user": nullable(STRING),
                "metadata": {"type": "object", "additionalProperties": False, "properties": turnout_metadata()},
            },
            "examples": [{"variables": {"text": "hello"}}],
        },
        "TaskResult": {
            "type": "object",
            "required": ["id", "object", "task", "output", "release", "release_version", "prompt_version"],
            "properties": {
                "id": {"type": "string", "pattern": "^task-"},
                "object": {"const": "task.result"},
                "task": STRING,
                "output": {"description": "The answer's text, or its JSON where the release has an output schema."},
                "release": STRING,
                "release_version": STRING,
                "model_version": STRING,
                "prompt_version": STRING,
                "finish_reason": {"type": ["string", "null"]},
                "usage": {"type": ["object", "null"]},
            },
        },
        "TicketCreated": {
            "type": "object",
            "required": ["id", "object", "task", "status", "reason", "url"],
            "properties": {
                "id": {"type": "string", "description": "The ticket id: the request's id."},
                "object": {"const": "turnout.ticket"},
                "task": STRING,
                "status": {"const": "pending"},
                "reason": {"const": "escalated"},
                "detail": {"type": "string", "description": "Which output check the answer failed."},
                "url": {"type": "string", "description": "Where the caller fetches the reviewer's answer."},
            },
        },
        "Ticket": {
            "type": "object",
            "required": ["id", "object", "task", "status", "answer", "created_at"],
            "properties": {
                "id": STRING,
                "object": {"const": "turnout.ticket"},
                "task": STRING,
                "status": {"enum": ["pending", "answered", "rejected"]},
                "answer": {"type": ["string", "null"], "description": "The reviewer's answer, once answered."},
                "created_at": {"type": "number"},
                "answered_at": {"type": ["number", "null"]},
            },
        },
        "Feedback": {
            "type": "object",
            "additionalProperties": False,
            "description": "Name a request or an episode (or both) and give at least one of outcome, "
            "human_review, escalated, value, labels. Null is the same as left out.",
            "properties": {
                "request_id": nullable({"type": "string", "maxLength": 128, "pattern": NON_BLANK}),
                "episode_id": nullable(EPISODE_ID),
                "outcome": nullable({"enum": sorted(OUTCOMES)}),
                "human_review": nullable({"type": "boolean"}),
                "escalated": nullable({"type": "boolean"}),
                "value": nullable({"type": "number", "minimum": -MAX_VALUE, "maximum": MAX_VALUE}),
                "labels": nullable(labels),
            },
            "examples": [{"request_id": "chatcmpl-0123456789abcdef01234567", "outcome": "success"}],
        },
        "FeedbackResult": {
            "type": "object",
            "required": ["object", "updated"],
            "properties": {
                "object": {"const": "feedback"},
                "updated": {"type": "integer", "minimum": 1},
                "request_id": STRING,
                "episode_id": STRING,
                "outcome": {"enum": sorted(OUTCOMES)},
                "human_review": {"type": "boolean"},
                "escalated": {"type": "boolean"},
                "value": {"type": "number"},
                "labels": labels,
            },
        },
        "ModelList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "items": ref("Model")},
            },
        },
        "Model": {
            "type": "object",
            "required": ["id", "object", "created", "owned_by"],
            "properties": {
                "id": {"type": "string", "description": "A task open to the caller."},
                "object": {"const": "model"},
                "created": {"type": "integer"},
                "owned_by": STRING,
            },
        },
        "Status": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
        "Readiness": {
            "type": "object",
            "required": ["status"],
            "description": "Whether this process can serve (never its upstreams: see /admin/targets). With "
            "the admin key, the ledger's figures too.",
            "properties": {
                "status": STRING,
                "checks": {"type": "object", "additionalProperties": STRING, "description": '"ok" or what is wrong.'},
                "ledger": {"type": "object"},
            },
        },
        "IssuedKey": issued_key,
        "KeyList": {
            "type": "object",
            "required": ["data"],
            "properties": {
                "data": {
                    "type": "array",
                    "items": issued_key,
                }
            },
        },
        "NewKey": {
            "type": "object",
            "required": ["tenant"],
            "additionalProperties": False,
            "properties": {
                "tenant": {"type": "string", "description": "A configured tenant.", "examples": ["acme"]},
                "name": nullable(
                    {"type": "string", "maxLength": MAX_KEY_NAME, "description": "Printable: no control characters."}
                ),
                "expires_in_s": nullable({"type": "number", "exclusiveMinimum": 0, "maximum": MAX_KEY_TTL_S}),
            },
            "examples": [{"tenant": "acme", "name": "ci"}],
        },
        "CreatedKey": {
            "allOf": [issued_key],
            "required": ["secret"],
            "properties": {"secret": {"type": "string", "description": "Shown once."}, "note": STRING},
        },
        "TenantList": {
            "type": "object",
            "required": ["data"],
            "properties": {
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "data_classes", "limits", "task_limits", "config_keys"],
                        "properties": {
                            "name": STRING,
                            "data_classes": {"type": "array", "items": {"enum": list(DATA_CLASSES)}},
                            "tasks": {"type": ["array", "null"], "items": STRING},
                            "limits": {"type": "object"},
                            "task_limits": {"type": "object"},
                            "config_keys": {"type": "integer", "minimum": 0},
                        },
                    },
                }
            },
        },
        "UsageList": {
            "type": "object",
            "required": ["data"],
            "properties": {
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["scope", "limits", "usage"],
                        "properties": {"scope": STRING, "limits": {"type": "object"}, "usage": {"type": "object"}},
                    },
                }
            },
        },
        "TargetList": {
            "type": "object",
            "required": ["data", "tasks"],
            "description": "Each target's health (a fresh probe) and breaker, for operators: never on /readyz.",
            "properties": {
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "provider", "health", "breaker"],
                        "properties": {
                            "name": STRING,
                            "provider": STRING,
                            "health": {"enum": ["up", "down"]},
                            "detail": STRING,
                            "breaker": STRING,
                            "in_flight": {"type": ["integer", "null"]},
                            "queued": {"type": ["integer", "null"]},
                            "replicas": {"type": "array", "items": _REPLICA},
                        },
                    },
                },
                "tasks": {
                    "type": "object",
                    "description": "Per task: its route and whether some target of it is up.",
                    "additionalProperties": {
                        "type": "object",
                        "properties": {"route": {"type": "array"}, "up": {"type": "boolean"}},
                    },
                },
            },
        },
        "ReviewItem": {
            "type": "object",
            "required": ["id", "task", "request_id", "text", "mode", "created_at", "status"],
            "properties": {
                "id": {"type": "integer"},
                "task": STRING,
                "release": {"type": ["string", "null"]},
                "request_id": STRING,
                "text": STRING,
                "mode": STRING,
                "created_at": TIME,
                "status": {"enum": list(STATUSES)},
                "note": {"type": ["string", "null"]},
                "labeled_by": {"type": ["string", "null"]},
                "labeled_at": {**TIME, "type": ["string", "null"]},
                "tenant": {"type": ["string", "null"], "description": "An escalation's tenant."},
                "reason": {"type": ["string", "null"], "description": "`escalated`, or null: sampled."},
                "answer": {"type": ["string", "null"], "description": "The reviewer's corrected answer."},
            },
        },
        "ReviewList": {
            "type": "object",
            "required": ["data"],
            "properties": {
                "data": {"type": "array", "items": ref("ReviewItem")},
                "quality": {
                    "type": "object",
                    "description": "With `task`: the task's (or release's) label counts.",
                    "properties": {
                        "sampled": {"type": "integer"},
                        "pending": {"type": "integer"},
                        "accept": {"type": "integer"},
                        "reject": {"type": "integer"},
                        "escalate": {"type": "integer"},
                        "accept_rate": {"type": ["number", "null"]},
                    },
                },
            },
        },
        "ReviewLabel": {
            "type": "object",
            "required": ["label", "by"],
            "additionalProperties": False,
            "properties": {
                "label": {"enum": list(LABELS)},
                "by": {
                    "type": "string",
                    "maxLength": MAX_BY,
                    "pattern": NON_BLANK,
                    "description": "Who labels: printable (no control or format characters).",
                },
                "note": nullable({"type": "string", "maxLength": MAX_NOTE}),
                "answer": nullable(
                    {
                        "type": "string",
                        "maxLength": MAX_ANSWER,
                        "description": "An escalated item's corrected answer, which its caller receives; "
                        "required to accept one.",
                    }
                ),
            },
            "examples": [{"label": "accept", "by": "reviewer@example.com"}],
        },
    }


def responses() -> dict[str, Schema]:
    out = {f"E{status}": json_content(ref("Error"), text) for status, text in ERROR_TEXT.items()}
    retry = {"description": "Seconds to wait.", "schema": {"type": "string", "pattern": "^[0-9]+$"}}
    out["E429"]["headers"] = {
        "Retry-After": retry,
        "X-Turnout-Limit": {"description": "The limit that refused: its scope and kind.", "schema": STRING},
    }
    out["E503"]["headers"] = {"Retry-After": retry}
    return out
