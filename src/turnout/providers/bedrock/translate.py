"""OpenAI chat completions ⇄ Bedrock Converse, as pure functions over JSON-shaped dicts (no I/O).

``to_converse`` (here) turns a validated OpenAI chat body into a Converse request (without
``modelId``). The reply side lives in ``turnout.providers.bedrock.stream`` and is re-exported
here: ``from_converse`` turns a Converse response into a ``chat.completion`` and
``StreamTranslator`` turns ConverseStream events into ``chat.completion.chunk`` dicts.

Choices, where the two APIs do not line up, for the request:

  * ``system``/``developer`` messages, wherever they stand, become ``system`` blocks in order.
  * Converse wants user/assistant turns alternating, starting with a user turn: consecutive
    messages of one role are merged into one turn (``tool`` messages count as user turns, so a
    run of tool results becomes one user turn), and a conversation that opens with an assistant
    message gets a placeholder user turn ``"."`` in front of it (what LiteLLM does too).
  * Blank text (empty or whitespace only) is dropped: Bedrock rejects blank text blocks. A
    message left with no blocks is dropped before merging.
  * Images must be ``data:image/{png,jpeg,gif,webp};base64,...`` URLs; Converse cannot fetch
    http(s) URLs, so those are a ``RequestError``.
  * A tool result whose content parses to a JSON object is sent as ``{"json": ...}``, anything
    else as ``{"text": ...}``; status is always ``success`` (OpenAI has no error flag).
  * Tool call ids go to Converse as they are when Converse takes them (1-64 of
    ``[a-zA-Z0-9_-]``); another (``functions.get_weather:0``, made by a server the conversation
    met before a fallback) becomes those characters plus a digest of the id, the same for the
    call and its result, so the pair still matches and two ids stay two.
  * ``tool_choice``: auto → ``auto``, required → ``any``, a named function → ``tool``. Converse has
    no "none": the tools are left out entirely, unless the history holds tool calls (Converse
    then requires a ``toolConfig``), in which case they are kept with no ``toolChoice``.
  * History with tool calls but no ``tools`` gets minimal tool specs synthesized from the names
    it uses (LiteLLM's "toolConfig field must be defined" bug class).
  * ``response_format`` json_schema → ``outputConfig`` when the model supports structured output;
    otherwise one extra tool whose input schema is the schema, with ``toolChoice: any`` (with no
    other tools that forces it; "any" also works on models without named tool choice). The
    result's ``json_via_tool`` names it so the reply side turns its input into the content.
    json_object → a system instruction to answer with a JSON object only.
  * Sampling fields Converse lacks (top_k, seed, penalties, reasoning_effort, any field turnout
    does not know) go into ``additionalModelRequestFields``, over the target's
    ``additional_fields`` (a shallow merge: the request wins).
  * ``user`` and string values of ``metadata`` go to ``requestMetadata`` (at most 16 entries,
    keys and values within Converse's character set; the rest are dropped, as metadata is
    only a label). ``parallel_tool_calls``, ``store``, ``service_tier`` and other hints with no
    Converse meaning are dropped.
  * What cannot be honoured is a ``RequestError`` naming the parameter: n > 1, logprobs,
    top_logprobs, a non-empty logit_bias, audio output, legacy ``functions``/``function_call``.
  * ``guardrail`` takes the config's keys (id, version, trace, stream_mode) or Converse's own;
    ``streamProcessingMode`` is sent only on ConverseStream.
  * Reasoning from earlier assistant turns is not sent back (Converse would need its signature).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from typing import Any

import orjson

from turnout.errors import RequestError
from turnout.providers.bedrock.stream import (
    MALFORMED,
    StreamTranslator,
    Translation,
    assistant_message,
    finish_reason,
    from_converse,
    reply_finish_reason,
    usage_of,
)

__all__ = [
    "MALFORMED",
    "StreamTranslator",
    "Translation",
    "assistant_message",
    "empty_schema",
    "finish_reason",
    "from_converse",
    "reply_finish_reason",
    "to_converse",
    "tool_use_id",
    "usage_of",
]

JSON_TOOL = "json_response"  # the fallback tool carrying a json_schema answer
JSON_OBJECT_INSTRUCTION = "Respond only with a single valid JSON object, with no text before or after it."
LEADING_USER_TEXT = "."  # Converse's first turn must be a user turn

_IMAGE_FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "gif": "gif", "webp": "webp"}
_DATA_URL = re.compile(r"data:image/([a-zA-Z]+);base64,(.*)", re.DOTALL)
_METADATA_TEXT = re.compile(r"[a-zA-Z0-9\s:_@$#=/+,\-.]*", re.ASCII)  # Converse's pattern
_METADATA_MAX = 16
_TOOL_USE_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}", re.ASCII)  # Converse's ToolUseBlock.toolUseId
_NOT_IN_ID = re.compile(r"[^a-zA-Z0-9_-]", re.ASCII)
# OpenAI fields handled explicitly below, or with no Converse meaning (dropped).
_KNOWN = frozenset(
    {
        "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
        "temperature", "top_p", "stop", "tools", "tool_choice", "response_format", "user",
        "metadata", "n", "logprobs", "top_logprobs", "logit_bias", "audio", "modalities",
        "functions", "function_call", "parallel_tool_calls", "store", "service_tier",
        "prediction", "prompt_cache_key", "safety_identifier",
    }
)  # fmt: skip


def empty_schema() -> dict[str, Any]:
    """The input schema of a tool that takes no parameters (a fresh dict each time)."""
    return {"type": "object", "properties": {}}


def to_converse(
    body: Mapping[str, Any],
    *,
    additional_fields: Mapping[str, Any] | None = None,
    structured_output: bool = True,
    guardrail: Mapping[str, Any] | None = None,
    stream: bool = False,
) -> Translation:
    """Translate an OpenAI chat body (as ``turnout.serving.chat.validate`` passed it) into Converse."""
    _refuse_unsupported(body)
    system, messages = _messages(body.get("messages"))
    out: dict[str, Any] = {"messages": messages}
    fmt = body.get("response_format")
    fmt_type = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt_type == "json_object":
        system.append({"text": JSON_OBJECT_INSTRUCTION})
    if system:
        out["system"] = system
    if inference := _inference(body):
        out["inferenceConfig"] = inference
    json_tool: dict[str, Any] | None = None
    if fmt_type == "json_schema":
        spec = fmt["json_schema"] if isinstance(fmt, dict) else {}
        if structured_output:
            out["outputConfig"] = _output_config(spec)
        else:
            json_tool = _json_tool(spec, body.get("tools"))
    if tool_config := _tool_config(body, messages, json_tool):
        out["toolConfig"] = tool_config
    if fields := _additional_fields(body, additional_fields):
        out["additionalModelRequestFields"] = fields
    if guardrail:
        out["guardrailConfig"] = _guardrail(guardrail, stream)
    if metadata := _request_metadata(body):
        out["requestMetadata"] = metadata
    return Translation(out, json_tool["toolSpec"]["name"] if json_tool else None)


def _bad(param: str, message: str) -> RequestError:
    return RequestError(message, param=param, code="unsupported_value")


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    if (body.get("n") or 1) > 1:
        raise _bad("n", "Bedrock Converse returns one choice: 'n' must be 1")
    if body.get("logprobs"):
        raise _bad("logprobs", "Bedrock Converse does not return log probabilities")
    if body.get("top_logprobs"):
        raise _bad("top_logprobs", "Bedrock Converse does not return log probabilities")
    if body.get("logit_bias"):
        raise _bad("logit_bias", "Bedrock Converse does not support 'logit_bias'")
    if body.get("audio") is not None or "audio" in (body.get("modalities") or ()):
        raise _bad("audio" if body.get("audio") is not None else "modalities", "audio output is not supported")
    for legacy in ("functions", "function_call"):
        if body.get(legacy) is not None:
            raise _bad(legacy, f"'{legacy}' is deprecated and not supported here: use 'tools' and 'tool_choice'")


# -- messages ---------------------------------------------------------------------------------


def _messages(raw: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return (system blocks, alternating Converse messages)."""
    if not isinstance(raw, list) or not raw:
        raise _bad("messages", "'messages' must be a non-empty array")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend({"text": t} for t in _texts(msg.get("content"), where))
            continue
        if role == "user":
            blocks = _user_blocks(msg.get("content"), where)
        elif role == "assistant":
            blocks = _assistant_blocks(msg, where)
        elif role == "tool":
            blocks, role = [_tool_result(msg, where)], "user"
        else:
            raise _bad(f"{where}.role", f"'{where}.role' {role!r} is not supported (legacy function messages)")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise _bad("messages", "'messages' holds no user or assistant content")
    if turns[0]["role"] == "assistant":
        turns.insert(0, {"role": "user", "content": [{"text": LEADING_USER_TEXT}]})
    return system, turns


def _texts(content: Any, where: str) -> list[str]:
    """The non-blank texts of a content string or an array of text parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content] if content.strip() else []
    out = []
    for j, part in enumerate(content):
        text = _part_text(part, f"{where}.content[{j}]")
        if text.strip():
            out.append(text)
    return out


def _part_text(part: Mapping[str, Any], where: str) -> str:
    kind = part.get("type")
    text = part.get("text") if kind == "text" else part.get("refusal") if kind == "refusal" else None
    if not isinstance(text, str):
        raise _bad(where, f"'{where}' must be a text part here (got type {kind!r})")
    return text


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return [{"text": t} for t in _texts(content, where)]
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        if part.get("type") == "image_url":
            blocks.append(_image(part.get("image_url"), f"{where}.content[{j}].image_url"))
        elif (text := _part_text(part, f"{where}.content[{j}]")).strip():
            blocks.append({"text": text})
    return blocks


def _image(spec: Any, where: str) -> dict[str, Any]:
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str):
        raise _bad(where, f"'{where}.url' must be a string")
    if url.startswith(("http://", "https://")):
        raise _bad(where, "Bedrock Converse cannot fetch image URLs: send the image as a data:image/...;base64 URL")
    match = _DATA_URL.fullmatch(url)
    fmt = _IMAGE_FORMATS.get(match.group(1).lower()) if match else None
    if match is None or fmt is None:
        raise _bad(where, f"'{where}' must be a base64 data URL of a png, jpeg, gif or webp image")
    data = match.group(2).strip()
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(where, f"'{where}' is not valid base64") from exc
    if not data:
        raise _bad(where, f"'{where}' holds no image data")
    return {"image": {"format": fmt, "source": {"bytes": data}}}


def _assistant_blocks(msg: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    # Reasoning from earlier turns is not sent back: Converse would need its signature.
    blocks: list[dict[str, Any]] = [{"text": t} for t in _texts(msg.get("content"), where)]
    calls = msg.get("tool_calls") or ()
    if not isinstance(calls, (list, tuple)):
        raise _bad(f"{where}.tool_calls", f"'{where}.tool_calls' must be a list")
    for k, call in enumerate(calls):
        param = f"{where}.tool_calls[{k}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(call.get("id"), str):
            raise _bad(param, f"'{param}' must have an 'id' and a 'function' with a 'name'")
        args = fn.get("arguments") or "{}"
        try:
            parsed = orjson.loads(args) if isinstance(args, str) else args
        except orjson.JSONDecodeError as exc:
            raise _bad(f"{param}.function.arguments", f"'{param}.function.arguments' is not valid JSON") from exc
        if not isinstance(parsed, dict):
            raise _bad(f"{param}.function.arguments", f"'{param}.function.arguments' must be a JSON object")
        blocks.append({"toolUse": {"toolUseId": tool_use_id(call["id"]), "name": fn["name"], "input": parsed}})
    return blocks


def _tool_result(msg: Mapping[str, Any], where: str) -> dict[str, Any]:
    content = msg.get("content")
    text = content if isinstance(content, str) else "".join(_texts(content, where))
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        parsed = None
    block = {"json": parsed} if isinstance(parsed, dict) else {"text": text}
    return {"toolResult": {"toolUseId": tool_use_id(msg["tool_call_id"]), "content": [block], "status": "success"}}


def tool_use_id(call_id: str) -> str:
    """``call_id`` as a Converse ``toolUseId`` (see the module docstring)."""
    if _TOOL_USE_ID.fullmatch(call_id):
        return call_id
    digest = hashlib.sha256(call_id.encode()).hexdigest()[:16]
    return f"{_NOT_IN_ID.sub('_', call_id)[:47]}_{digest}"


# -- inference, tools, output ----------------------------------------------------------------


def _inference(body: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None:
        out["maxTokens"] = max_tokens
    if body.get("temperature") is not None:
        out["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        out["topP"] = body["top_p"]
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else list(stop or ())
    if stops := [s for s in stops if s]:  # Converse's stop sequences must be non-empty
        out["stopSequences"] = stops
    return out


def _tool_spec(fn: Mapping[str, Any]) -> dict[str, Any]:
    """A toolSpec that Converse accepts even when the description or parameters are missing."""
    params = fn.get("parameters")
    schema = dict(params) if isinstance(params, dict) and params else empty_schema()
    schema.setdefault("type", "object")
    spec: dict[str, Any] = {"name": fn["name"], "inputSchema": {"json": schema}}
    if isinstance(desc := fn.get("description"), str) and desc.strip():
        spec["description"] = desc
    if isinstance(fn.get("strict"), bool):
        spec["strict"] = fn["strict"]
    return {"toolSpec": spec}


def _json_tool(spec: Mapping[str, Any], tools: Any) -> dict[str, Any]:
    taken = {t["function"]["name"] for t in tools or ()}
    name = JSON_TOOL
    while name in taken:
        name += "_"
    fn = {
        "name": name,
        "description": spec.get("description") or "Give the final answer as this tool's input.",
        "parameters": spec.get("schema") or empty_schema(),
        "strict": spec.get("strict"),
    }
    return _tool_spec(fn)


def _output_config(spec: Mapping[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = {"schema": orjson.dumps(spec.get("schema") or empty_schema()).decode()}
    for key in ("name", "description"):
        if isinstance(spec.get(key), str) and spec[key]:
            schema[key] = spec[key]
    return {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": schema}}}


def _tool_config(
    body: Mapping[str, Any], messages: list[dict[str, Any]], json_tool: dict[str, Any] | None
) -> dict[str, Any] | None:
    choice = body.get("tool_choice")
    tools = [_tool_spec(t["function"]) for t in body.get("tools") or ()]
    history = _history_tool_names(messages)
    if choice == "none":
        # Converse cannot forbid tool use; leaving the tools out can, unless history needs them.
        choice = None
        if not history:
            tools = []
    if not tools and history:
        tools = [{"toolSpec": {"name": n, "inputSchema": {"json": empty_schema()}}} for n in history]
    if json_tool is not None:
        tools.append(json_tool)
        if not isinstance(choice, dict):
            choice = "required"  # the answer must come through a tool: the json one or a real one
    if not tools:
        return None
    config: dict[str, Any] = {"tools": tools}
    if choice is not None:
        config["toolChoice"] = _tool_choice(choice, tools)
    return config


def _tool_choice(choice: Any, tools: list[dict[str, Any]]) -> dict[str, Any]:
    if choice == "auto":
        return {"auto": {}}
    if choice == "required":
        return {"any": {}}
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise _bad("tool_choice", "'tool_choice' must be none, auto, required or a named function")
    if name not in {t["toolSpec"]["name"] for t in tools}:
        raise _bad("tool_choice", f"'tool_choice' names {name!r}, which is not in 'tools'")
    return {"tool": {"name": name}}


def _history_tool_names(messages: list[dict[str, Any]]) -> list[str]:
    """Tool names used in the history, in first-use order; a placeholder if only results."""
    names: dict[str, None] = {}
    results = False
    for msg in messages:
        for block in msg["content"]:
            if "toolUse" in block:
                names[block["toolUse"]["name"]] = None
            results = results or "toolResult" in block
    return list(names) or (["tool"] if results else [])


def _additional_fields(body: Mapping[str, Any], configured: Mapping[str, Any] | None) -> dict[str, Any]:
    fields = dict(configured or {})
    fields.update({k: v for k, v in body.items() if k not in _KNOWN and v is not None})
    return fields


def _guardrail(guardrail: Mapping[str, Any], stream: bool) -> dict[str, Any]:
    """Accept the config's keys (id, version, trace, stream_mode) or Converse's own."""
    out = {
        "guardrailIdentifier": guardrail.get("guardrailIdentifier") or guardrail.get("id"),
        "guardrailVersion": guardrail.get("guardrailVersion") or guardrail.get("version"),
        "trace": guardrail.get("trace"),
    }
    if stream:
        out["streamProcessingMode"] = guardrail.get("streamProcessingMode") or guardrail.get("stream_mode")
    return {k: v for k, v in out.items() if v is not None}


def _request_metadata(body: Mapping[str, Any]) -> dict[str, str]:
    pairs = [("user", body.get("user"))]
    if isinstance(meta := body.get("metadata"), dict):
        pairs.extend(meta.items())
    out: dict[str, str] = {}
    for key, value in pairs:
        if len(out) == _METADATA_MAX:
            break
        if isinstance(key, str) and isinstance(value, str) and _metadata_ok(key, 1) and _metadata_ok(value, 0):
            out.setdefault(key, value)
    return out


def _metadata_ok(text: str, min_len: int) -> bool:
    return min_len <= len(text) <= 256 and _METADATA_TEXT.fullmatch(text) is not None
