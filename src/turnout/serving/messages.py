"""``POST /v1/messages``: Anthropic's Messages API as a door over the shared pipeline.

``model`` names a task; the request is translated to the chat body the targets take
(``turnout.serving.anthropic``), so every target a task routes to (self-hosted, Bedrock, the
embedded model) serves it, with the same policy, quotas, fallback and ledger as chat
completions. The key comes as ``x-api-key`` (Anthropic's SDKs) or ``Authorization: Bearer``;
errors are written in Anthropic's shape. Streams are relayed as Anthropic's events.

``POST /v1/messages/count_tokens`` (``count_tokens``) answers ``{"input_tokens": N}`` for a
Messages request's prompt without calling any target: N is the bound the quota reserves for it
(``turnout.control.tokens``: UTF-8 bytes, or a target's tokenizer where configured), the largest
among the task's targets, so never below what a target will count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from turnout._support.printable import printable
from turnout.config import DATA_CLASSES, embedding_tasks
from turnout.errors import RequestError, TurnoutError, UnknownTask, refuse_unknown
from turnout.providers.base import Usage
from turnout.routing.constraints import COST, LATENCY
from turnout.serving import anthropic, anthropic_events
from turnout.serving.asgi import Receive, Send, credential, json_object, read_body, send_json
from turnout.serving.door import Reply, check_episode_id
from turnout.serving.runtime import Runtime
from turnout.serving.translated import Encoder, TranslatedDoor

ENDPOINT = "messages"
# ``metadata``: Anthropic's ``user_id`` and what turnout reads there (none of it reaches a target).
# Anthropic's API refuses any other key, and so does this door: a misspelt ``data_class``
# dropped silently served the request under the default class, past the policy it asked for.
METADATA = ("user_id", "data_class", "episode_id", LATENCY, COST)


@dataclass(frozen=True, slots=True)
class MessagesRequest:
    task: str
    body: dict[str, Any]  # the chat body the targets receive
    stream: bool
    data_class: str | None
    user: str | None
    episode_id: str | None = None
    constraints: dict[str, Any] | None = None  # metadata.max_latency_ms / max_cost_usd as sent
    thinking: bool = False  # the answer shows the model's reasoning (anthropic.shows_thinking)


class MessagesDoor(TranslatedDoor[MessagesRequest]):
    endpoint = ENDPOINT

    def parse(self, raw: bytes, task: str | None) -> MessagesRequest:
        return validate(json_object(raw))

    def message(self, reply: Reply[MessagesRequest], answer: dict[str, Any], usage: Usage) -> dict[str, Any]:
        stops = reply.request.body.get("stop", ())
        req = reply.request
        return anthropic.message(answer, f"msg_{reply.request_id}", req.task, usage, stops, req.thinking)

    def encoder(self, reply: Reply[MessagesRequest], prompt_tokens: int) -> Encoder:
        stops = reply.request.body.get("stop", ())
        return _Events(f"msg_{reply.request_id}", reply.request.task, prompt_tokens, stops, reply.request.thinking)


MESSAGES_DOOR = MessagesDoor()


class _Events(anthropic_events.Events):
    """Anthropic's events as the relay's encoder."""

    def error(self, err: TurnoutError) -> bytes:
        return anthropic_events.event("error", anthropic.error_body(err))


async def count_tokens(rt: Runtime, scope: dict[str, Any], receive: Receive, send: Send, request_id: str) -> None:
    """``POST /v1/messages/count_tokens``: authenticated and checked as ``POST /v1/messages``
    is (its errors in Anthropic's shape, by the error boundary); no target is called, no quota
    is charged and no row is written: nothing is generated."""
    tenant = await rt.auth.identify(credential(scope), time.time())
    body = json_object(await read_body(receive, scope, rt.config.server.max_body_bytes))
    task = _task(body)
    chat = anthropic.to_counted(body)
    if task not in rt.config.tasks or not tenant.may_use(task):
        raise UnknownTask(f"the task {printable(task)!r} does not exist or is not open to you", param="model")
    if task in embedding_tasks(rt.config):
        raise RequestError(f"the task {task!r} embeds: call POST /v1/embeddings", param="model", code="wrong_endpoint")
    counts = await rt.tokens.prompts(chat, rt.config.tasks[task].route)
    headers = [(b"x-turnout-request-id", request_id.encode())]
    await send_json(send, 200, {"input_tokens": max(counts.values())}, headers)


def _task(body: dict[str, Any]) -> str:
    task = body.get("model")
    if not isinstance(task, str) or not task:
        raise anthropic.bad("model", "'model' is required and must name a task (a string)")
    return task


def validate(body: dict[str, Any]) -> MessagesRequest:
    task = _task(body)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise anthropic.bad("stream", "'stream' must be a boolean")
    chat = anthropic.to_chat(body)
    metadata = body.get("metadata")
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise anthropic.bad("metadata", "'metadata' must be an object")
    refuse_unknown(metadata, METADATA, "metadata", prefix="metadata.", code="invalid_value")
    user = metadata.get("user_id")
    if user is not None and not isinstance(user, str):
        raise anthropic.bad("metadata.user_id", "'metadata.user_id' must be a string")
    data_class = metadata.get("data_class")
    data_class = data_class.lower() if isinstance(data_class, str) else data_class  # as the other doors read it
    if data_class is not None and data_class not in DATA_CLASSES:
        raise anthropic.bad("metadata.data_class", f"'metadata.data_class' must be one of {', '.join(DATA_CLASSES)}")
    if user:
        chat["user"] = user
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    episode = check_episode_id(metadata.get("episode_id"), "metadata.episode_id")
    constraints = {k: metadata[k] for k in (LATENCY, COST) if k in metadata} or None
    thinking = anthropic.shows_thinking(body.get("thinking"), chat["max_tokens"])
    return MessagesRequest(task, chat, stream, data_class, user, episode, constraints, thinking)
