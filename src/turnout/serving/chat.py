"""``POST /v1/chat/completions``: the OpenAI door. The request is parsed once at the edge,
checked by hand (it is the hot path: a plain function over a dict costs microseconds where a
schema library costs tens), with OpenAI-style messages that name the offending parameter.

Fields turnout does not know are passed through to the target untouched; turnout's own fields
in ``metadata`` are taken out before the body leaves the gateway. The caller sends the
messages; a serving release contributes its targets and parameters (not its prompt).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Iterator
from typing import Any, NamedTuple

from turnout.config import DATA_CLASSES
from turnout.errors import RequestError
from turnout.providers.base import Stream, Usage
from turnout.releases.base import Release
from turnout.routing.constraints import COST, LATENCY
from turnout.safety import inputs
from turnout.safety.policy import Input
from turnout.serving import respond
from turnout.serving.asgi import Receive, Send, json_object
from turnout.serving.door import TURNOUT_METADATA, Answered, Reply, check_episode_id, check_tool_names, reported

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_PLAIN = ROLES - {"tool"}  # roles whose message needs only a role and a content
RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema"})
INTEGERS = (("max_tokens", 1), ("max_completion_tokens", 1), ("n", 1), ("top_logprobs", 0))  # and their least
NUMBERS = (
    ("temperature", 0.0, 2.0),
    ("top_p", 0.0, 1.0),
    ("presence_penalty", -2.0, 2.0),
    ("frequency_penalty", -2.0, 2.0),
)
_INTEGER_NAMES = frozenset(name for name, _ in INTEGERS)  # one C call skips a loop none is in
_NUMBER_NAMES = frozenset(name for name, _, _ in NUMBERS)


class ChatRequest(NamedTuple):  # a tuple: made on every request, in C
    task: str
    body: dict[str, Any]  # what the target receives (turnout metadata removed)
    stream: bool
    include_usage: bool
    data_class: str | None  # from the body's metadata; the header wins over it
    user: str | None
    episode_id: str | None = None  # the caller's task (a ticket, a run): feedback may name it
    # metadata.max_latency_ms / max_cost_usd as sent; checked by turnout.routing.constraints
    constraints: dict[str, Any] | None = None


class ChatDoor:
    endpoint = "chat.completions"
    task_param = "model"
    prompt_param: str | None = "messages"
    output_param: str | None = "max_tokens"
    needs_release = False
    release_prompt = False
    ticket_body = True
    fenced_json = False  # the caller parses the content as it comes: a fenced JSON answer is not JSON

    def parse(self, raw: bytes, task: str | None) -> ChatRequest:
        return parse(raw)

    def body(self, request: ChatRequest, release: Release | None) -> dict[str, Any]:
        # The caller's fields win over the release's parameters; its messages stay.
        return request.body if release is None else {**release.params, **request.body}

    def untrusted(self, request: ChatRequest) -> Iterator[Input]:
        return inputs.chat(request.body["messages"])

    async def respond(self, reply: Reply[ChatRequest], send: Send, receive: Receive) -> Answered:
        answer = reply.result.answer
        if isinstance(answer, Stream):
            return await self._relay(reply, answer, send, receive)
        usage, estimated = reported(answer) or await reply.usage_of(
            answer, lambda: self.body(reply.request, reply.admission.release)
        )
        priced = reply.price(usage)
        headers = reply.headers + respond.cost_header(priced.total)
        body = answer.body
        if estimated and usage is not None and not isinstance(body.get("usage"), dict):
            # No usage from the upstream: the client is told the count it is charged, as a stream is.
            total = usage.prompt_tokens + usage.completion_tokens
            counts = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}
            body = {**body, "usage": {**counts, "total_tokens": total}}
        await respond.completion(send, body, reply.request_id, reply.request.task, headers)
        text = respond.answer_text(answer.body) if reply.collect else None
        latency_ms = reply.result.attempts[-1].latency_ms
        return Answered(200, usage, priced, latency_ms, text=text, usage_estimated=estimated)

    async def _relay(self, reply: Reply[ChatRequest], answer: Stream, send: Send, receive: Receive) -> Answered:
        req = reply.request
        ttft_ms = (time.perf_counter() - reply.t0) * 1000
        collected: list[str] | None = [] if reply.collect else None
        body = self.body(req, reply.admission.release)

        def estimate(generated: list[str]) -> Awaitable[Usage]:
            return reply.estimate(body, generated)

        outcome = await respond.stream(
            send, receive, answer, req.task, req.include_usage, reply.request_id, reply.headers, collected, estimate
        )
        total_s = time.perf_counter() - reply.t0
        usage, estimated = outcome.usage or outcome.estimated, outcome.usage is None
        if usage is None:  # the client left before the usage chunk, or the upstream sends none
            usage = await reply.estimate(body, outcome.generated)
        # The answering replica is busy from its attempt's start to the stream's end.
        priced = reply.price(usage, total_s - reply.result.attempts[-1].offset_ms / 1000)
        return Answered(
            outcome.status,
            usage,
            priced,
            total_s * 1000 - ttft_ms,
            ttft_ms,
            outcome.error_class,
            None if collected is None else "".join(collected),
            estimated,
        )


CHAT = ChatDoor()


def parse(raw: bytes) -> ChatRequest:
    body = json_object(raw)
    return validate(body)


def validate(body: dict[str, Any]) -> ChatRequest:
    task = body.get("model")
    if not isinstance(task, str) or not task:
        raise _bad("model", "'model' is required and must name a task (a string)")
    _messages(body.get("messages"))
    # Each optional field is checked only when present (one dict lookup otherwise: the hot
    # path's body has few), in a fixed order: the first problem found is the one reported.
    stream = ("stream" in body and _opt(body, "stream", bool, "a boolean")) or False
    include_usage = False
    if "stream_options" in body:
        options = _opt(body, "stream_options", dict, "an object")
        if options is not None:
            if not stream:
                raise _bad("stream_options", "'stream_options' is only allowed when 'stream' is true")
            include_usage = _opt(options, "include_usage", bool, "a boolean", "stream_options.include_usage") or False
    if not _INTEGER_NAMES.isdisjoint(body):
        for name, least in INTEGERS:
            if name in body:
                value = _opt(body, name, int, "an integer")
                if value is not None and value < least:
                    raise _bad(name, f"'{name}' must be at least {least}")
    if "seed" in body:
        _opt(body, "seed", int, "an integer")
    if not _NUMBER_NAMES.isdisjoint(body):
        for name, lo, hi in NUMBERS:
            if name in body:
                _number(body, name, lo, hi)
    if "stop" in body:
        _stop(body["stop"])
    if "tools" in body:
        _tools(body["tools"])
    if "response_format" in body:
        _response_format(body["response_format"])
    data_class, user, episode_id = None, _opt(body, "user", str, "a string") if "user" in body else None, None
    constraints: dict[str, Any] | None = None
    meta = body.get("metadata")
    if meta is not None:
        if not isinstance(meta, dict):
            raise _bad("metadata", "'metadata' must be an object")
        if any(k in meta for k in TURNOUT_METADATA):
            data_class = _opt(meta, "data_class", str, "a string", "metadata.data_class")
            if data_class and data_class.lower() not in DATA_CLASSES:
                raise _bad("metadata.data_class", f"'metadata.data_class' must be one of {', '.join(DATA_CLASSES)}")
            user = _opt(meta, "user", str, "a string", "metadata.user") or user
            meta = dict(meta)
            episode_id = check_episode_id(meta.pop("episode_id", None), "metadata.episode_id")
            constraints = {k: meta[k] for k in (LATENCY, COST) if k in meta} or None
            for k in TURNOUT_METADATA:
                meta.pop(k, None)
            body = dict(body)
            if meta:
                body["metadata"] = meta
            else:
                del body["metadata"]
    return ChatRequest(task, body, stream, include_usage, data_class, user, episode_id, constraints)


def _bad(param: str, message: str) -> RequestError:
    return RequestError(message, param=param, code="invalid_value")


def _opt(obj: dict[str, Any], name: str, kind: type, what: str, param: str | None = None) -> Any:
    value = obj.get(name)
    if value is None:
        return None
    # bool is an int in Python; an integer field must not accept true/false.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _bad(param or name, f"'{param or name}' must be {what}")
    return value


def _number(body: dict[str, Any], name: str, lo: float, hi: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(name, f"'{name}' must be a number")
    if not lo <= value <= hi:
        raise _bad(name, f"'{name}' must be between {lo:g} and {hi:g}")


def _messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "'messages' is required and must be a non-empty array")
    for i, m in enumerate(messages):
        # The common message (a role and a string) costs two lookups; the rest is checked, and
        # its parameter named, only where it is not that.
        if type(m) is dict and type(m.get("content")) is str and type(role := m.get("role")) is str and role in _PLAIN:
            continue
        _message(i, m)


def _message(i: int, m: Any) -> None:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise _bad(where, f"'{where}' must be an object")
    role = m.get("role")
    if not isinstance(role, str) or role not in ROLES:  # a list or an object is unhashable
        raise _bad(f"{where}.role", f"'{where}.role' must be one of {', '.join(sorted(ROLES))}")
    content = m.get("content")
    if content is None:
        if role != "assistant" or not (m.get("tool_calls") or m.get("function_call")):
            raise _bad(f"{where}.content", f"'{where}.content' is required")
    elif not isinstance(content, (str, list)):
        raise _bad(f"{where}.content", f"'{where}.content' must be a string or an array of parts")
    elif isinstance(content, list):
        if not all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in content):
            raise _bad(f"{where}.content", f"'{where}.content' parts must be objects with a 'type' (a string)")
        for j, part in enumerate(content):  # a text part without its text is the caller's mistake, not the upstream's
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise _bad(f"{where}.content[{j}].text", f"'{where}.content[{j}].text' must be a string")
    if role == "tool" and not isinstance(m.get("tool_call_id"), str):
        raise _bad(f"{where}.tool_call_id", f"'{where}.tool_call_id' is required for a tool message")


def _stop(stop: Any) -> None:
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise _bad("stop", "'stop' must be a string or an array of at most 4 strings")


def _tools(tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _bad("tools", "'tools' must be an array")
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type") != "function" or not isinstance(fn.get("name"), str):
            raise _bad(f"tools[{i}]", f"'tools[{i}]' must be {{'type': 'function', 'function': {{'name': ...}}}}")
    check_tool_names([tool["function"]["name"] for tool in tools], _name_param, None)


def _name_param(i: int) -> str:
    return f"tools[{i}].function.name"


def _response_format(fmt: Any) -> None:
    if fmt is None:
        return
    # The type is checked to be a string first: a list or an object is unhashable.
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str) or fmt["type"] not in RESPONSE_FORMATS:
        raise _bad("response_format", "'response_format.type' must be text, json_object or json_schema")
    if fmt["type"] == "json_schema" and not isinstance(fmt.get("json_schema"), dict):
        raise _bad("response_format.json_schema", "'response_format.json_schema' must be an object")
