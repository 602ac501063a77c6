"""``POST /v1/tasks/{task}``: the native task API. The caller sends variables and untrusted
documents; the task's serving release (active, or canary for a sticky share of end users) owns
the prompt, the parameters, the targets and the output schema.

    authenticate → body → task → release (sticky) → render → classify → policy (release route)
    → quota → attempt → validate output → respond → account
"""

from __future__ import annotations

import os
import time
from typing import Any

import jsonschema
import orjson

from turnout.control.auth import Tenant
from turnout.errors import RequestError, TurnoutError, UnknownTask
from turnout.ledger.record import LedgerRow
from turnout.providers.base import Completion
from turnout.releases.base import Release, choose
from turnout.releases.render import render
from turnout.routing import policy
from turnout.routing.attempts import Result, execute
from turnout.serving import respond
from turnout.serving.asgi import Receive, Send, header, read_body, send_json
from turnout.serving.chat import check_episode_id

FORCED_RELEASE = "turnout.release"


class OutputInvalid(TurnoutError):
    """The model's answer does not satisfy the release's output schema: fail closed."""

    status = 502
    type = "upstream_error"
    code = "output_invalid"


async def handle(gateway: Any, task: str, scope: dict[str, Any], receive: Receive, send: Send) -> None:
    request_id = os.urandom(12).hex()
    t0 = time.perf_counter()
    row = LedgerRow(request_id, time.time(), "", task, "", False)
    grant = None
    try:
        body, release, tenant = await _admit(gateway, task, scope, receive, row)
        messages = render(release, body.get("variables") or {}, body.get("documents") or [])
        chat = {"model": task, "messages": messages, **release.params}
        if release.output_schema is not None and "response_format" not in chat:
            schema = {"name": f"{task}_output", "schema": release.output_schema}
            chat["response_format"] = {"type": "json_schema", "json_schema": schema}
        allowed = policy.decide(
            task=task,
            route=[t for t in release.route if t in gateway.config.tasks[task].route],
            data_class=row.data_class,
            tenant_classes=tenant.data_classes,
            policy=gateway.policy,
        )
        allowed, grant = await gateway.quota.admit(row.tenant, task, chat, allowed, request_id)
        result = await execute([gateway.targets[n] for n in allowed], chat, stream=False, request_id=request_id)
        assert isinstance(result.answer, Completion)
        output = _output(release, result.answer.body)
    except Exception as exc:
        await gateway.quota.release(grant)
        await gateway.fail(row, exc, send, t0)
        return
    usage = result.answer.usage
    _fill(row, result, release)
    if usage is not None:
        row.prompt_tokens, row.completion_tokens = usage.prompt_tokens, usage.completion_tokens
    row.cost_usd = gateway.quota.attempts_cost(row.attempts, usage, row.started_at)  # after _fill
    row.status = 200
    headers = respond.turnout_headers(request_id, task, result, release)
    if row.cost_usd is not None:
        headers.append((b"x-turnout-cost-usd", f"{row.cost_usd:.8f}".encode()))
    choice = (result.answer.body.get("choices") or [{}])[0]
    await send_json(
        send,
        200,
        {
            "id": f"task-{request_id}",
            "object": "task.result",
            "task": task,
            "output": output,
            "release": release.name,
            "release_version": release.version,
            "model_version": row.model_version,
            "prompt_version": release.prompt_version,
            "finish_reason": choice.get("finish_reason"),
            "usage": result.answer.body.get("usage"),
        },
        headers,
    )
    decision = gateway.capture.decide(row.tenant, task) if gateway.capture is not None else None
    row.capture_mode = decision.used if decision is not None else "metadata"
    gateway._account(row, t0)
    await gateway.quota.settle(grant, usage, row.cost_usd)
    if decision is None:
        return
    # After the answer is out: text capture and review sampling, where the capture mode allows.
    answer = output if isinstance(output, str) else orjson.dumps(output).decode()
    if decision.capture:
        gateway.capture.submit(request_id, row.tenant, task, decision, orjson.dumps(messages).decode(), answer)
    rate = gateway._review_rate(task, decision)
    if rate > 0:
        await gateway._review(row, decision.mode, messages, answer, rate)


async def _admit(
    gateway: Any, task: str, scope: dict[str, Any], receive: Receive, row: LedgerRow
) -> tuple[dict[str, Any], Release, Tenant]:
    tenant = await gateway.auth.identify(header(scope, b"authorization"), row.started_at)
    row.tenant = tenant.name
    raw = await read_body(receive, scope, gateway.config.server.max_body_bytes)
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"the request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", code="invalid_json")
    _check(body)
    if task not in gateway.config.tasks or not tenant.may_use(task):
        raise UnknownTask(f"the task {task!r} does not exist or is not open to you", param="task")
    serving = gateway.releases.serving(task) if gateway.releases is not None else None
    meta = body.get("metadata") or {}
    user = _text(header(scope, b"x-turnout-user")) or meta.get("user") or body.get("user")
    release = choose(serving, task, str(user or row.request_id)) if serving is not None else None
    # `turnout eval` runs a named release through this same path; the key is set in-process only
    # (an ASGI server never puts a client's input into the scope's own keys).
    forced = scope.get(FORCED_RELEASE)
    if isinstance(forced, Release):
        release = forced
    if release is None:
        raise UnknownTask(f"the task {task!r} has no active release", param="task", code="no_release")
    row.user = gateway.user_pseudonym(str(user)) if user else None
    row.episode_id = check_episode_id(_text(header(scope, b"x-turnout-episode")), "X-Turnout-Episode") or (
        check_episode_id(meta.get("episode_id"), "metadata.episode_id")
    )
    row.data_class = policy.parse_data_class(_text(header(scope, b"x-turnout-data-class")) or meta.get("data_class"))
    row.release, row.prompt_version = release.name, release.prompt_version
    return body, release, tenant


def _check(body: dict[str, Any]) -> None:
    if not isinstance(body.get("variables", {}), dict):
        raise RequestError("'variables' must be an object", param="variables")
    docs = body.get("documents", [])
    if not isinstance(docs, list) or not all(isinstance(d, str) for d in docs):
        raise RequestError("'documents' must be an array of strings", param="documents")
    if not isinstance(body.get("metadata", {}), dict):
        raise RequestError("'metadata' must be an object", param="metadata")


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value else None


def _output(release: Release, answer: dict[str, Any]) -> Any:
    """The answer's content; parsed and validated when the release has an output schema."""
    message = ((answer.get("choices") or [{}])[0]).get("message") or {}
    content = message.get("content") or ""
    if release.output_schema is None:
        return content
    try:
        parsed = orjson.loads(_strip_fence(content))
    except orjson.JSONDecodeError as exc:
        raise OutputInvalid("the model's answer is not JSON, as the release's output schema requires") from exc
    try:
        jsonschema.validate(parsed, release.output_schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise OutputInvalid(f"the model's answer fails the output schema at {where}: {exc.validator}") from exc
    return parsed


def _strip_fence(text: str) -> str:
    text = text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    return text


def _fill(row: LedgerRow, result: Result, release: Release) -> None:
    row.attempts, row.fallback = result.attempts, result.fallback
    row.target, row.replica = result.target.name, result.answer.replica
    row.model_version = release.model_version or result.answer.model_version
    row.queue_ms = result.answer.queue_ms
    row.fallback_ms = result.fallback_ms if row.fallback else None
    row.generation_ms = result.attempts[-1].latency_ms
