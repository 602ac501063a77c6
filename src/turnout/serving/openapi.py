"""``GET /openapi.json``: the OpenAPI 3.1 description of every route the gateway serves, built
once from the same constants the handlers check against (roles, ranges, labels, limits), so the
contract and the code cannot drift apart unnoticed. ``tests/test_contract.py`` runs schemathesis
against a real ``turnout serve`` with it: no 5xx, every answer as described.

Every error is OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``; a 400 about
one field names it in ``param`` (``messages[0].role``, ``metadata.user``).
"""

from __future__ import annotations

import functools
from importlib import metadata
from typing import Any

import orjson

from turnout.releases.review import STATUSES
from turnout.routing.constraints import COST, DECIMAL, HEADERS, LATENCY
from turnout.serving.admin import MAX_ROW_ID
from turnout.serving.asgi import JSON, Send
from turnout.serving.openapi_embeddings import embedding_schemas
from turnout.serving.openapi_messages import COUNT_ERROR_STATUSES, messages_errors, messages_schemas
from turnout.serving.openapi_responses import responses_schemas
from turnout.serving.openapi_schemas import (
    DATA_CLASS,
    EPISODE_ID,
    ID,
    STRING,
    Schema,
    json_content,
    or_empty,
    ref,
    responses,
    schemas,
)

# An answer's id names it in feedback.
FEEDBACK_LINK = {
    "GiveFeedback": {
        "operationId": "giveFeedback",
        "requestBody": {"request_id": "$response.body#/id", "outcome": "success"},
    }
}
# A tenant's key, as a bearer token or in x-api-key (Anthropic's SDKs): every route takes either.
TENANT: list[dict[str, list[str]]] = [{"tenantKey": []}, {"anthropicKey": []}]
ADMIN: list[dict[str, list[str]]] = [{"adminKey": []}]


def _errors(*statuses: int) -> dict[str, Schema]:
    return {str(s): {"$ref": f"#/components/responses/E{s}"} for s in statuses}


def _query(name: str, description: str, schema: Schema | None = None) -> Schema:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema or STRING}


def _path(name: str, description: str, schema: Schema | None = None) -> Schema:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema or ID}


def _turnout_headers() -> list[Schema]:
    """The request headers both inference doors read; each wins over the body's value."""
    return [
        {
            "name": "X-Turnout-User",
            "in": "header",
            "required": False,
            "description": "The end user (kept as a keyed pseudonym); also keys the sticky canary share.",
            "schema": STRING,
        },
        {
            "name": "X-Turnout-Data-Class",
            "in": "header",
            "required": False,
            "description": "The request's data class; default internal.",
            "schema": or_empty(DATA_CLASS),
        },
        {
            "name": "X-Turnout-Episode",
            "in": "header",
            "required": False,
            "description": "The caller's episode (a ticket, an agent run) that feedback may name.",
            "schema": or_empty(EPISODE_ID),
        },
        *(
            {
                "name": header,
                "in": "header",
                "required": False,
                "description": f"{what}: targets that cannot fit are skipped before any attempt (422 when "
                "none fits); more than metadata's value.",
                "schema": or_empty({"type": "string", "pattern": DECIMAL}),  # empty: not sent
            }
            for header, what in (
                (HEADERS[LATENCY], "The most milliseconds the caller will wait, over every attempt (504 past it)"),
                (HEADERS[COST], "The most USD the answer may cost in the worst case"),
            )
        ),
    ]


def _answer_headers() -> dict[str, Schema]:
    text = {"schema": STRING}
    return {
        "X-Turnout-Request-Id": {"required": True, "description": "turnout's request id.", **text},
        "X-Turnout-Task": {"description": "The task that answered.", **text},
        "X-Turnout-Target": {"description": "The target that answered.", **text},
        "X-Turnout-Release": {"description": "The serving release, or `none`.", **text},
        "X-Turnout-Prompt-Version": {"description": "The release's prompt version, or `none`.", **text},
        "X-Turnout-Model-Version": {"description": "The release's or the answer's model version.", **text},
        "X-Turnout-Attempts": {"description": "Attempts made.", "schema": {"type": "string", "pattern": "^[0-9]+$"}},
        "X-Turnout-Fallback": {
            "description": "Whether a fallback target answered.",
            "schema": {"enum": ["true", "false"]},
        },
        "X-Turnout-Cost-Usd": {"description": "The request's cost, where priced.", **text},
        "X-Turnout-Safety": {
            "description": "`flagged`: injection screening found an injection on a channel that flags (a "
            "channel that blocks refuses the request: 400 `prompt_injection`, with this header `blocked`).",
            "schema": {"enum": ["flagged"]},
        },
        "X-Turnout-Cache": {
            "description": "For a task with a response cache: `hit` (no upstream call, cost 0), `miss`, or "
            "`bypass` (`Cache-Control: no-cache` or `X-Turnout-Cache: bypass`, a data class the task does not "
            "cache, a sampled request).",
            "schema": {"enum": ["hit", "miss", "bypass"]},
        },
    }


def _op(op_id: str, summary: str, responses: dict[str, Any], **extra: Any) -> Schema:
    return {"operationId": op_id, "summary": summary, "responses": responses, **extra}


def _body(name: str, required: bool = True) -> Schema:
    return {"required": required, "content": {"application/json": {"schema": ref(name)}}}


def _paths() -> dict[str, Schema]:
    answered = {"headers": _answer_headers()}
    inference_errors = _errors(400, 401, 403, 404, 405, 413, 415, 422, 429, 502, 503, 504)
    admin_get = _errors(401, 403, 405)
    escalated = json_content(
        ref("TicketCreated"),
        "The answer failed the task's output checks and was escalated to a person: fetch the answer at `url` "
        "(also the `Location` header). A stream is answered the same way, not as events.",
        headers={"Location": {"description": "The ticket's URL.", "schema": STRING}},
    )
    return {
        "/v1/chat/completions": {
            "post": _op(
                "createChatCompletion",
                "Chat completions (OpenAI's API), routed by task",
                {
                    "200": {
                        "description": "The completion; with `stream: true`, server-sent events of "
                        "`chat.completion.chunk` objects ending in `data: [DONE]` (an error after the "
                        'first event arrives as a `data: {"error": ...}` event).',
                        "content": {
                            "application/json": {"schema": ref("ChatCompletion")},
                            "text/event-stream": {"schema": ref("ChatCompletionEvent")},
                        },
                        **answered,
                        "links": FEEDBACK_LINK,
                    },
                    "202": escalated,
                    **inference_errors,
                },
                security=TENANT,
                parameters=_turnout_headers(),
                requestBody=_body("ChatCompletionRequest"),
            )
        },
        "/v1/embeddings": {
            "post": _op(
                "createEmbedding",
                "Embeddings (OpenAI's API), routed by task to one embedding space",
                {
                    "200": json_content(ref("EmbeddingList"), "One embedding per input, in order.", **answered),
                    **inference_errors,
                },
                security=TENANT,
                parameters=_turnout_headers(),
                requestBody=_body("EmbeddingRequest"),
            )
        },
        "/v1/messages": {
            "post": _op(
                "createMessage",
                "Anthropic's Messages API, routed by task (`model`); errors in Anthropic's shape",
                {
                    "200": {
                        "description": "The message, or with `stream: true` Anthropic's server-sent events.",
                        "content": {
                            "application/json": {"schema": ref("Message")},
                            "text/event-stream": {"schema": STRING},
                        },
                        **answered,
                    },
                    **messages_errors(),
                },
                security=TENANT,
                parameters=_turnout_headers(),
                requestBody=_body("MessageRequest"),
            )
        },
        "/v1/messages/count_tokens": {
            "post": _op(
                "countMessageTokens",
                "Anthropic's token counting for a Messages request's prompt; no target is called",
                {
                    "200": json_content(ref("MessageTokensCount"), "The prompt's token count."),
                    **messages_errors(COUNT_ERROR_STATUSES),
                },
                security=TENANT,
                requestBody=_body("CountTokensRequest"),
            )
        },
        "/v1/responses": {
            "post": _op(
                "createResponse",
                "OpenAI's Responses API (stateless: no response is kept), routed by task (`model`)",
                {
                    "200": {
                        "description": "The response, or with `stream: true` its typed server-sent events.",
                        "content": {
                            "application/json": {"schema": ref("Response")},
                            "text/event-stream": {"schema": ref("ResponseStreamEvent")},
                        },
                        **answered,
                    },
                    **inference_errors,
                },
                security=TENANT,
                parameters=_turnout_headers(),
                requestBody=_body("ResponseRequest"),
            )
        },
        "/v1/tasks/{task}": {
            "post": _op(
                "runTask",
                "Run a task: the serving release owns the prompt, the targets and the output schema",
                {
                    "200": json_content(ref("TaskResult"), "The task's output.", **answered, links=FEEDBACK_LINK),
                    "202": escalated,
                    **inference_errors,
                },
                security=TENANT,
                parameters=[
                    _path(
                        "task", "A task with an active release.", {"type": "string", "minLength": 1, "examples": ["t"]}
                    ),
                    *_turnout_headers(),
                ],
                requestBody=_body("TaskRequest", required=False),
            )
        },
        "/v1/tasks/{task}/tickets/{id}": {
            "get": _op(
                "getTicket",
                "What became of a request escalated to a person: pending, answered (with the answer) or rejected",
                {"200": json_content(ref("Ticket"), "The ticket."), **_errors(401, 404, 405)},
                security=TENANT,
                parameters=[
                    _path("task", "The task the request was for.", {"type": "string", "minLength": 1}),
                    _path("id", "The ticket id: the escalated request's id."),
                ],
            )
        },
        "/v1/feedback": {
            "post": _op(
                "giveFeedback",
                "Record what became of a request or an episode",
                {
                    "200": json_content(ref("FeedbackResult"), "Rows updated."),
                    **_errors(400, 401, 404, 405, 413, 415, 503),
                },
                security=TENANT,
                requestBody=_body("Feedback"),
            )
        },
        "/v1/models": {
            "get": _op(
                "listModels",
                "The tasks open to the caller, as models",
                {"200": json_content(ref("ModelList"), "Tasks."), **_errors(401, 405)},
                security=TENANT,
            )
        },
        "/v1/models/{model}": {
            "get": _op(
                "retrieveModel",
                "One task open to the caller, as a model",
                {"200": json_content(ref("Model"), "The task."), **_errors(401, 404, 405)},
                security=TENANT,
                parameters=[_path("model", "The task's name.", STRING)],
            )
        },
        "/healthz": {
            "get": _op(
                "health",
                "The process answers",
                {"200": json_content(ref("Status"), "Alive."), **_errors(405)},
                security=[],
            )
        },
        "/readyz": {
            "get": _op(
                "ready",
                "Whether this process can serve",
                {
                    "200": json_content(ref("Readiness"), "Ready."),
                    "503": json_content(ref("Readiness"), "Starting or not ready."),
                    **_errors(405),
                },
                security=[],
            )
        },
        "/metrics": {
            "get": _op(
                "metrics",
                "Prometheus metrics",
                {
                    "200": {"description": "Text exposition.", "content": {"text/plain": {"schema": STRING}}},
                    **_errors(404, 405),
                },
                security=[],
            )
        },
        "/openapi.json": {
            "get": _op(
                "openapi",
                "This description",
                {"200": json_content({"type": "object"}, "OpenAPI 3.1."), **_errors(405)},
                security=[],
            )
        },
        "/admin/tenants": {
            "get": _op(
                "listTenants",
                "Tenants and their limits",
                {"200": json_content(ref("TenantList"), "Tenants."), **admin_get},
                security=ADMIN,
            )
        },
        "/admin/keys": {
            "get": _op(
                "listKeys",
                "Issued keys (never secrets)",
                {"200": json_content(ref("KeyList"), "Keys."), **_errors(400, 401, 403, 404, 405)},
                security=ADMIN,
                parameters=[_query("tenant", "Only this tenant's keys (404 for an unknown or blank tenant).")],
            ),
            "post": _op(
                "createKey",
                "Issue a key for a tenant; the secret is shown once",
                {
                    "201": json_content(
                        ref("CreatedKey"),
                        "The key and its secret.",
                        links={"RevokeKey": {"operationId": "revokeKey", "parameters": {"id": "$response.body#/id"}}},
                    ),
                    **_errors(400, 401, 403, 405, 413, 415),
                },
                security=ADMIN,
                requestBody=_body("NewKey"),
            ),
        },
        "/admin/keys/{id}": {
            "delete": _op(
                "revokeKey",
                "Revoke an issued key",
                {"200": json_content(ref("IssuedKey"), "The revoked key."), **_errors(401, 403, 404, 405)},
                security=ADMIN,
                parameters=[_path("id", "The key's id.")],
            )
        },
        "/admin/usage": {
            "get": _op(
                "usage",
                "Per scope: bucket levels, slots, spent and reserved",
                {"200": json_content(ref("UsageList"), "Scopes."), **_errors(400, 401, 403, 404, 405)},
                security=ADMIN,
                parameters=[_query("tenant", "Only this tenant's scopes (404 for an unknown or blank tenant).")],
            )
        },
        "/admin/targets": {
            "get": _op(
                "listTargets",
                "Each target's health and breaker state",
                {"200": json_content(ref("TargetList"), "Targets."), **admin_get},
                security=ADMIN,
            )
        },
        "/admin/review": {
            "get": _op(
                "listReviews",
                "Sampled answers, newest first, and the task's label counts",
                {"200": json_content(ref("ReviewList"), "Items."), **_errors(400, 401, 403, 404, 405)},
                security=ADMIN,
                parameters=[
                    _query("task", "Only this task's items; adds its label counts."),
                    _query("release", "With `task`: count this release's labels."),
                    _query("status", "Default pending (also when empty).", or_empty({"enum": [*STATUSES, "all"]})),
                ],
            )
        },
        "/admin/review/{id}": {
            "post": _op(
                "labelReview",
                "Label a sampled answer",
                {
                    "200": json_content(ref("ReviewItem"), "The labelled item."),
                    **_errors(400, 401, 403, 404, 405, 413, 415),
                },
                security=ADMIN,
                parameters=[_path("id", "The item's id.", {"type": "integer", "minimum": 1, "maximum": MAX_ROW_ID})],
                requestBody=_body("ReviewLabel"),
            )
        },
        "/admin/reload": {
            "post": _op(
                "reloadConfig",
                "Read the config file again; swap in its live sections (tasks, tenants, policy, prices)",
                {
                    "200": json_content(RELOADED, "Reloaded: sections changed, sections awaiting a restart."),
                    "422": json_content(RELOAD_REFUSED, "Refused, the running config kept: every problem."),
                    **_errors(401, 403, 405),
                },
                security=ADMIN,
            )
        },
    }


_SECTIONS: Schema = {"type": "array", "items": STRING}
RELOADED: Schema = {
    "type": "object",
    "required": ["reloaded", "changed", "restart_needed"],
    "additionalProperties": False,
    "properties": {"reloaded": {"const": True}, "changed": _SECTIONS, "restart_needed": _SECTIONS},
}
RELOAD_REFUSED: Schema = {  # OpenAI's error shape, with the problems listed
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code", "problems"],
            "properties": {"code": {"const": "invalid_config"}, "problems": _SECTIONS},
        }
    },
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "turnout",
            "version": _version(),
            "description": "A control plane for LLM inference: OpenAI's chat completions and a task API over "
            "self-hosted, managed and embedded models. Errors are OpenAI's shape.",
        },
        "paths": _paths(),
        "components": {
            "schemas": {**schemas(), **embedding_schemas(), **messages_schemas(), **responses_schemas()},
            "responses": responses(),
            "securitySchemes": {
                "tenantKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A tenant's key (config or issued). Without tenants configured, none "
                    "is needed on loopback.",
                },
                "adminKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "server.admin_key or TURNOUT_ADMIN_KEY.",
                },
                "anthropicKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-api-key",
                    "description": "A tenant's key as Anthropic's SDKs send it; every tenant route takes it.",
                },
            },
        },
    }


def _version() -> str:
    try:
        return metadata.version("turnout")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0.0.0"


@functools.cache
def body() -> bytes:
    """The document as served, encoded once."""
    return orjson.dumps(document())


async def serve(send: Send) -> None:
    payload = body()
    head = [(b"content-type", JSON), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": head})
    await send({"type": "http.response.body", "body": payload})
