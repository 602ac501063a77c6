"""``POST /v1/responses``: OpenAI's Responses API (its stateless subset) as a door over the
shared pipeline.

``model`` names a task; the request is translated to the chat body the targets take
(``turnout.serving.response_items``), so every target a task routes to (self-hosted, Bedrock,
the embedded model) serves it with the same policy, quotas, fallback and ledger as chat
completions. Turnout keeps no response state: ``store`` is accepted and nothing is stored (the
Response says ``store: false``), ``previous_response_id`` is a 400. ``text.verbosity`` is passed
to the targets as chat's ``verbosity`` (and echoed as sent); a function call's output carries text
only. Streams are relayed as the Responses API's typed events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from turnout.config import DATA_CLASSES
from turnout.errors import TurnoutError
from turnout.providers.base import Usage
from turnout.serving import response_events, response_items
from turnout.serving.asgi import json_object
from turnout.serving.door import Reply, check_episode_id
from turnout.serving.response_events import Events
from turnout.serving.response_items import bad
from turnout.serving.translated import Encoder, TranslatedDoor

ENDPOINT = "responses"


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    task: str
    body: dict[str, Any]  # the chat body the targets receive
    stream: bool
    data_class: str | None
    user: str | None
    echo: dict[str, Any]  # the settings the Response object repeats
    episode_id: str | None = None


class ResponsesDoor(TranslatedDoor[ResponsesRequest]):
    endpoint = ENDPOINT
    prompt_param: str | None = "input"
    output_param: str | None = "max_output_tokens"

    def parse(self, raw: bytes, task: str | None) -> ResponsesRequest:
        return validate(json_object(raw))

    def message(self, reply: Reply[ResponsesRequest], answer: dict[str, Any], usage: Usage) -> dict[str, Any]:
        items, finish = response_items.output(answer, reply.request_id)
        req, started = reply.request, int(reply.started_at)
        return response_items.response(reply.request_id, started, req.task, items, usage, finish, req.echo)

    def encoder(self, reply: Reply[ResponsesRequest], prompt_tokens: int) -> Encoder:
        req = reply.request
        return _Events(reply.request_id, int(reply.started_at), req.task, req.echo)


RESPONSES_DOOR = ResponsesDoor()


class _Events(Events):
    """The Responses API's events as the relay's encoder."""

    def error(self, err: TurnoutError) -> bytes:
        return response_events.error_event(self, err.code or err.type, err.message)


def validate(body: dict[str, Any]) -> ResponsesRequest:
    task = body.get("model")
    if not isinstance(task, str) or not task:
        raise bad("model", "'model' is required and must name a task (a string)")
    stream = body.get("stream")
    stream = False if stream is None else stream  # null: the default, as OpenAI reads it
    if not isinstance(stream, bool):
        raise bad("stream", "'stream' must be a boolean")
    if body.get("store") is not None and not isinstance(body["store"], bool):
        raise bad("store", "'store' must be a boolean")
    chat = response_items.to_chat(body)
    metadata = body.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise bad("metadata", "'metadata' must be an object")
    user = _string(body, "user", "user")
    user = _string(body, "safety_identifier", "safety_identifier") or user  # OpenAI's successor to user
    user = _string(metadata, "user", "metadata.user") or user
    data_class = _string(metadata, "data_class", "metadata.data_class")
    if data_class is not None:
        data_class = data_class.lower()
        if data_class not in DATA_CLASSES:
            raise bad("metadata.data_class", f"'metadata.data_class' must be one of {', '.join(DATA_CLASSES)}")
    if user:
        chat["user"] = user
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    episode = check_episode_id(metadata.get("episode_id"), "metadata.episode_id")
    echo = response_items.echo(body)
    return ResponsesRequest(task, chat, stream, data_class, user, echo, episode)


def _string(obj: dict[str, Any], name: str, param: str) -> str | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, str):
        raise bad(param, f"'{param}' must be a string")
    return value
