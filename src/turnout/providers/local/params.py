"""The caller's OpenAI chat body as llama-cpp-python's ``create_chat_completion`` arguments.

What llama.cpp would mishandle is refused here, on the event loop, as a 400 naming the
parameter (``RequestError``), before a worker is taken: a sampling knob of the wrong type
(llama.cpp's ctypes raise ``TypeError`` in the worker), a content part that is not text, a
``tool_choice`` the model cannot honour, a JSON schema llama.cpp cannot turn into a grammar
(llama-cpp-python would silently fall back to any JSON). What the chat template cannot take is
put in a form it can: SmolLM2's template concatenates ``content``, so an assistant turn that
only called tools gets its calls as text. Keys that ask nothing of the model (``user``,
``metadata``, ``stream_options``, ...) are dropped.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

from turnout.errors import RequestError

_PASSTHROUGH = (
    "temperature",
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "tools",
)
# Sampling knobs OpenAI does not define, checked here (the chat door passes them on unread):
# name → (least, most, least included).
_KNOBS: dict[str, tuple[float, float, bool]] = {
    "min_p": (0.0, 1.0, True),
    "repeat_penalty": (0.0, math.inf, False),
}
_EMPTY_PARAMETERS = {"type": "object", "properties": {}}  # OpenAI: a function without parameters


def request_params(body: dict[str, Any], model: str) -> dict[str, Any]:
    """``body`` as ``create_chat_completion`` arguments, or a RequestError naming what the
    embedded model cannot do as asked. Never mutates ``body``."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty array", param="messages", code="invalid_value")
    _refuse_unsupported(body)
    params: dict[str, Any] = {"messages": [_message(i, m) for i, m in enumerate(messages)], "model": model}
    for key in _PASSTHROUGH:
        if body.get(key) is not None:
            params[key] = body[key]
    params.update(_knobs(body))
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    if "tools" in params:
        params["tools"] = [_tool(t) for t in params["tools"]]
    choice = _tool_choice(body.get("tool_choice"), params.get("tools") or [])
    if choice is not None:
        params["tool_choice"] = choice
    params.update(_response_format(body.get("response_format")))
    return params


def _refuse_unsupported(body: dict[str, Any]) -> None:
    """Refused rather than dropped: a caller that asks for them would get less than it asked."""
    if body.get("n") not in (None, 1):
        raise RequestError("the embedded model returns one choice: 'n' must be 1", param="n", code="unsupported_value")
    for key in ("logprobs", "top_logprobs"):
        if body.get(key):
            raise RequestError(
                "the embedded model does not return log probabilities", param=key, code="unsupported_value"
            )
    if body.get("logit_bias"):
        raise RequestError(
            "the embedded model does not support 'logit_bias'", param="logit_bias", code="unsupported_value"
        )


def _knobs(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    top_k = body.get("top_k")
    if top_k is not None:
        if not isinstance(top_k, int) or isinstance(top_k, bool):
            raise RequestError("'top_k' must be an integer (0 or less: no limit)", param="top_k", code="invalid_value")
        out["top_k"] = max(0, min(top_k, 2**31 - 1))  # a C int; llama.cpp reads 0 as no limit
    for name, (least, most, closed) in _KNOBS.items():
        value = body.get(name)
        if value is None:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not (least <= value <= most if closed else least < value <= most):
            what = f"between {least:g} and {most:g}" if math.isfinite(most) else f"above {least:g}"
            raise RequestError(f"'{name}' must be a number {what}", param=name, code="invalid_value")
        out[name] = value
    return out


def _message(i: int, message: Any) -> Any:
    """A message the chat template can render: text content as one string (OpenAI's text and
    refusal parts joined), and an assistant turn's tool calls written out as text."""
    if not isinstance(message, dict):
        return message
    content = message.get("content")
    if isinstance(content, list):
        texts: list[str] = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in ("text", "refusal"):
                where = f"messages[{i}].content[{j}].type"
                raise RequestError(
                    f"the embedded model reads text only: '{where}' {kind!r} is not supported",
                    param=where,
                    code="unsupported_value",
                )
            texts.append(str(part.get(kind) or ""))
        content = "".join(texts)
    calls = _calls_as_text(message)
    if calls:
        content = f"{content}\n{calls}" if content else calls
    if content is message.get("content"):
        return message
    return {**message, "content": content if content is not None else ""}


def _calls_as_text(message: dict[str, Any]) -> str:
    """An assistant turn's tool calls (or legacy ``function_call``), one JSON line each, so the
    model sees what it called before the tool's answer that follows."""
    calls = message.get("tool_calls")
    if not calls and isinstance(message.get("function_call"), dict):
        calls = [{"function": message["function_call"]}]
    if not isinstance(calls, list):
        return ""
    lines = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            call = {"name": fn.get("name"), "arguments": fn.get("arguments")}
        lines.append(orjson.dumps(call).decode())
    return "\n".join(lines)


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A tool whose function takes no ``parameters`` takes none (OpenAI's reading); llama.cpp
    reads the key unguarded. Tool schemas are checked as grammars when one is forced."""
    fn = tool["function"]
    if fn.get("parameters") is not None:
        return tool
    return {**tool, "function": {**fn, "parameters": _EMPTY_PARAMETERS}}


def _tool_choice(choice: Any, tools: list[dict[str, Any]]) -> Any:
    """What llama.cpp can honour. A call is made only when a tool is forced (its arguments
    then follow its parameters' grammar): a named function, or ``required`` with one tool.
    The chat template does not show the model its tools, so ``auto`` answers in text."""
    if choice is None or choice in ("none", "auto"):
        return choice
    if choice == "required":
        if len(tools) != 1:
            raise RequestError(
                "the embedded model calls a tool only when one is forced: with "
                f"{len(tools)} tools, name one ({{'type': 'function', 'function': {{'name': ...}}}})",
                param="tool_choice",
                code="unsupported_value",
            )
        choice = {"type": "function", "function": {"name": tools[0]["function"]["name"]}}
    fn = choice.get("function") if isinstance(choice, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str) or choice.get("type") != "function":
        raise RequestError(
            "'tool_choice' must be none, auto, required or {'type': 'function', 'function': {'name': ...}}",
            param="tool_choice",
            code="invalid_value",
        )
    for i, tool in enumerate(tools):
        if tool["function"]["name"] == name:
            _grammar(tool["function"]["parameters"], f"tools[{i}].function.parameters")
            return {"type": "function", "function": {"name": name}}
    raise RequestError(
        f"'tool_choice' names {name!r}, which is not in 'tools'", param="tool_choice", code="invalid_value"
    )


def _response_format(fmt: Any) -> dict[str, Any]:
    """``json_object`` and OpenAI's ``json_schema`` as a grammar that constrains sampling;
    a schema llama.cpp cannot follow is a 400, not an answer that ignores it."""
    if fmt is None or not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return {}
    if fmt.get("type") == "json_object":
        schema, param = fmt.get("schema"), "response_format.schema"
    elif fmt.get("type") == "json_schema" and isinstance(fmt.get("json_schema"), dict):
        schema, param = fmt["json_schema"].get("schema"), "response_format.json_schema.schema"
    else:
        raise RequestError(f"unsupported response_format: {fmt!r}", param="response_format", code="invalid_value")
    if schema is None:
        return {"response_format": {"type": "json_object"}}
    return {"grammar": LlamaGrammar.from_string(_grammar(schema, param))}


def grammars(params: dict[str, Any]) -> list[tuple[str, str]]:
    """The grammars generating with ``params`` will use, each with the parameter it came from:
    the worker has llama.cpp parse them first (one it cannot parse would end the process)."""
    out = []
    if (grammar := params.get("grammar")) is not None:
        out.append(("response_format", grammar._grammar))
    choice = params.get("tool_choice")
    if isinstance(choice, dict):
        for i, tool in enumerate(params["tools"]):
            if tool["function"]["name"] == choice["function"]["name"]:
                where = f"tools[{i}].function.parameters"
                out.append((where, _grammar(tool["function"]["parameters"], where)))
                break
    return out


def _grammar(schema: Any, param: str) -> str:
    """``schema`` as llama.cpp's GBNF, or a RequestError with the converter's reason."""
    try:
        if not isinstance(schema, dict):
            raise ValueError("a JSON schema is an object")
        gbnf: str = json_schema_to_gbnf(json.dumps(schema))
        return gbnf
    except Exception as exc:  # the converter asserts, and raises whatever a malformed schema trips
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise RequestError(
            f"the embedded model cannot follow this JSON schema: {reason}", param=param, code="invalid_value"
        ) from None
