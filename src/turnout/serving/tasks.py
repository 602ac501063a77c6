"""``POST /v1/tasks/{task}``: the native task door. The caller sends variables and untrusted
documents; the task's serving release (active, or canary for a sticky share of end users) owns
the prompt, the parameters, the targets and the output schema.

    parse (variables, documents) → the pipeline's stages, with ``body`` rendering the release's
    prompt → attempt → validate the output against the release's schema → respond
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator
from referencing.exceptions import Unresolvable

from turnout._support.depth import too_deep
from turnout.config import DATA_CLASSES
from turnout.errors import RequestError, TurnoutError, refuse_unknown
from turnout.providers.base import Completion
from turnout.releases.base import Release
from turnout.releases.render import render
from turnout.routing.constraints import COST, LATENCY
from turnout.safety import inputs
from turnout.safety.output import operators_schema, strip_fence
from turnout.safety.policy import Input
from turnout.serving import respond
from turnout.serving.asgi import MAX_DEPTH, Receive, Send, json_object, send_json
from turnout.serving.door import TURNOUT_METADATA, Answered, Reply, check_episode_id, reported

FIELDS = frozenset({"variables", "documents", "user", "metadata"})


class OutputInvalid(TurnoutError):
    """The model's answer does not satisfy the release's output schema: fail closed."""

    status = 502
    type = "upstream_error"
    code = "output_invalid"


@dataclass(frozen=True, slots=True)
class TaskRequest:
    task: str
    variables: dict[str, Any]
    documents: list[str]
    user: str | None
    data_class: str | None
    episode_id: str | None
    constraints: dict[str, Any] | None = None  # metadata.max_latency_ms / max_cost_usd as sent
    stream: bool = False  # the task API answers whole


class TaskDoor:
    endpoint = "tasks"
    task_param = "task"
    prompt_param: str | None = None  # the release's template, filled with variables and documents
    output_param: str | None = None  # the release's parameters bound the answer
    needs_release = True
    release_prompt = True
    fenced_json = True  # ``_output`` strips the fence
    ticket_body = True

    def parse(self, raw: bytes, task: str | None) -> TaskRequest:
        assert task is not None  # the path names it
        body = json_object(raw or b"{}")
        _check(body)
        meta = body.get("metadata") or {}
        user = meta.get("user") or body.get("user")
        return TaskRequest(
            task,
            body.get("variables") or {},
            body.get("documents") or [],
            str(user) if user else None,
            meta.get("data_class"),
            check_episode_id(meta.get("episode_id"), "metadata.episode_id"),
            {k: meta[k] for k in (LATENCY, COST) if k in meta} or None,
        )

    def body(self, request: TaskRequest, release: Release | None) -> dict[str, Any]:
        assert release is not None  # needs_release
        messages = render(release, request.variables, request.documents)
        chat = {"model": request.task, "messages": messages, **release.params}
        if release.output_schema is not None and "response_format" not in chat:
            schema = {"name": f"{request.task}_output", "schema": release.output_schema}
            chat["response_format"] = {"type": "json_schema", "json_schema": schema}
        return chat

    def untrusted(self, request: TaskRequest) -> Iterator[Input]:
        return inputs.task(request.variables, request.documents)

    async def respond(self, reply: Reply[TaskRequest], send: Send, receive: Receive) -> Answered:
        answer = reply.result.answer
        release = reply.admission.release
        assert isinstance(answer, Completion) and release is not None
        usage, estimated = reported(answer) or await reply.usage_of(answer, lambda: self.body(reply.request, release))
        priced = reply.price(usage)
        latency_ms = reply.result.attempts[-1].latency_ms
        try:
            output = _output(release, answer.body)
        except OutputInvalid as exc:  # refused, never handed out, but generated: paid for
            await respond.error(send, exc, reply.request_id)
            return Answered(exc.status, usage, priced, latency_ms, error_class=exc.code, usage_estimated=estimated)
        choice = _choice(answer.body)
        counts = answer.body.get("usage")
        if estimated and not isinstance(counts, dict):  # none from the upstream: what it is charged, as chat
            counts = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}
            counts["total_tokens"] = usage.prompt_tokens + usage.completion_tokens
        payload = {
            "id": f"task-{reply.request_id}",
            "object": "task.result",
            "task": reply.request.task,
            "output": output,
            "release": release.name,
            "release_version": release.version,
            "model_version": reply.model_version,
            "prompt_version": release.prompt_version,
            "finish_reason": choice.get("finish_reason"),
            "usage": counts,
        }
        await send_json(send, 200, payload, reply.headers + respond.cost_header(priced.total))
        text = (output if isinstance(output, str) else orjson.dumps(output).decode()) if reply.collect else None
        return Answered(200, usage, priced, latency_ms, text=text, usage_estimated=estimated)


TASKS = TaskDoor()


def _check(body: dict[str, Any]) -> None:
    # The body and its metadata are turnout's own, and nothing in them reaches a target as sent:
    # a field this door does not read ("document", "metadata.dataclass") would be dropped
    # silently, and the request served without its documents or under the default data class.
    refuse_unknown(body, sorted(FIELDS), "the task API")
    if not isinstance(body.get("variables", {}), dict):
        raise RequestError("'variables' must be an object", param="variables")
    docs = body.get("documents", [])
    if not isinstance(docs, list) or not all(isinstance(d, str) for d in docs):
        raise RequestError("'documents' must be an array of strings", param="documents")
    meta = body.get("metadata", {})
    if not isinstance(meta, dict):
        raise RequestError("'metadata' must be an object", param="metadata")
    refuse_unknown(meta, TURNOUT_METADATA, "metadata", prefix="metadata.")
    # The end user and the data class are strings or absent: a list or a number is refused, not
    # turned into text (the end user keys the sticky release and the ledger's pseudonym).
    for where, name in ((body, "user"), (meta, "user"), (meta, "data_class")):
        if where.get(name) is not None and not isinstance(where[name], str):
            param = name if where is body else f"metadata.{name}"
            raise RequestError(f"'{param}' must be a string", param=param)
    data_class = meta.get("data_class")
    if data_class and data_class.lower() not in DATA_CLASSES:
        raise RequestError(
            f"'metadata.data_class' must be one of {', '.join(DATA_CLASSES)}", param="metadata.data_class"
        )


def _choice(answer: dict[str, Any]) -> dict[str, Any]:
    choices = answer.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    return first if isinstance(first, dict) else {}


def _text(answer: dict[str, Any]) -> str:
    """The answer's text: its content, a string or (as some servers answer) text parts joined.
    Anything else is no text the task's caller could be given: refused, as a schema failure is."""
    message = _choice(answer).get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str) for part in content
    ):
        return "".join(part["text"] for part in content)
    raise OutputInvalid(f"the model's answer is not text (its content is {type(content).__name__})")


def _output(release: Release, answer: dict[str, Any]) -> Any:
    """The answer's text; parsed and validated when the release has an output schema."""
    content = _text(answer)
    if release.output_schema is None:
        return content
    try:
        parsed = orjson.loads(strip_fence(content))
    except orjson.JSONDecodeError as exc:
        raise OutputInvalid("the model's answer is not JSON, as the release's output schema requires") from exc
    if too_deep(parsed, MAX_DEPTH):  # neither the schema check nor the answer could take it
        raise OutputInvalid(f"the model's answer nests deeper than {MAX_DEPTH} levels")
    try:
        error = best_match(release_validator(release).iter_errors(parsed))
    except (Unresolvable, RecursionError) as exc:  # a $ref to nowhere, or one that recurses past the stack
        raise OutputInvalid("the model's answer cannot be checked against the release's output schema") from exc
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise OutputInvalid(f"the model's answer fails the output schema at {where}: {error.validator}")
    return parsed


MAX_VALIDATORS = 256
_VALIDATORS: dict[int, tuple[Release, Validator]] = {}


def release_validator(release: Release) -> Validator:
    """The release's output schema compiled once, held by the release's identity (as
    ``respond`` holds its headers): the entry keeps the release, so its id is not reused."""
    found = _VALIDATORS.get(id(release))
    if found is None or found[0] is not release:
        assert release.output_schema is not None
        if len(_VALIDATORS) >= MAX_VALIDATORS:
            _VALIDATORS.clear()
        found = _VALIDATORS[id(release)] = (release, operators_schema(release.output_schema))
    return found[1]
