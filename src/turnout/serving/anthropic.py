"""Anthropic's Messages API ↔ the OpenAI chat body the targets take: pure functions.

Request: ``system`` becomes a system message; text blocks stay text parts; ``image`` blocks
(base64 or URL) become ``image_url`` parts; an assistant's ``tool_use`` blocks become its
``tool_calls``; a user's ``tool_result`` blocks become ``tool`` messages (placed before the
rest of that user turn, as OpenAI wants them right after the call); ``tools``, ``tool_choice``,
``stop_sequences``, ``temperature``, ``top_p``, ``top_k``, ``metadata.user_id``, a tool's
``strict`` (→ ``function.strict``) and ``output_config.format`` (structured outputs → a
``json_schema`` ``response_format``) map to their chat names. A request field this door does not
translate is refused (400 naming it), never dropped (unless it is null, which asks for nothing: the
SDKs' parameters are ``Optional``); so is a content block of a type it does not
translate (``document``, server tools' blocks, ...) or one Anthropic's API does not know, and a field
Anthropic's API does not define on a message, a block, an image source or a tool (a typo). Fields
Anthropic's API defines on them that no target here could act on are accepted and ignored (the
README lists them, ``IGNORED``): ``cache_control`` above all, which the SDKs send, and which an
OpenAI-compatible chat body (or this gateway's Bedrock translation) has no cache points to put in.

``thinking`` is checked and decides whether the answer shows the model's reasoning
(``shows_thinking``); an earlier answer's ``thinking`` blocks sent back are checked and left out.

Answer: a chat completion becomes a ``message`` with ``thinking`` (where asked: vLLM's
``reasoning_content``), ``text`` (a refusal's too: ``stop_reason`` ``refusal``) and ``tool_use``
content blocks;
``finish_reason`` maps to ``stop_reason``, ``stop_sequence`` where the upstream names the stop
string that ended it (vLLM's and SGLang's ``stop_reason``). Streams: ``anthropic_events.Events``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from turnout.errors import RequestError, TurnoutError
from turnout.providers.base import Usage
from turnout.serving.call_order import arguments_text, calls_of, function_of, pieces_of
from turnout.serving.door import ANTHROPIC_TOOL_NAME, check_tool_names

# Fields read here; ``model``, ``stream``, ``max_tokens`` and ``metadata`` by the door itself.
# ``cache_control`` (Anthropic's automatic cache point) is accepted and ignored, as on a block.
FIELDS = frozenset(
    {
        "cache_control",
        "model",
        "messages",
        "system",
        "max_tokens",
        "stream",
        "metadata",
        "tools",
        "tool_choice",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "output_config",
        "thinking",
    }
)
OUTPUT_FORMAT_NAME = "output"  # the chat json_schema's name: Anthropic's format has none
# Each content block type this door translates, with every field Anthropic's API defines on it;
# another field is a 400 naming it. Read: ``type`` and the fields the translation reads; the rest
# (``IGNORED``) are accepted and ignored.
BLOCK_FIELDS = {
    "text": frozenset({"type", "text", "cache_control", "citations"}),
    "image": frozenset({"type", "source", "cache_control", "transformations"}),
    "tool_use": frozenset({"type", "id", "name", "input", "cache_control", "caller", "toolset_name"}),
    "tool_result": frozenset({"type", "tool_use_id", "content", "is_error", "cache_control", "toolset_name"}),
    # An earlier answer's reasoning, sent back as Anthropic asks: checked, and left out (below).
    "thinking": frozenset({"type", "thinking", "signature", "cache_control"}),
    "redacted_thinking": frozenset({"type", "data", "cache_control"}),
}
THINKING_BLOCKS = ("thinking", "redacted_thinking")
# ``thinking``: Anthropic's config, and the least budget it takes.
THINKING_FIELDS = {"enabled": frozenset({"type", "budget_tokens", "display"}), "disabled": frozenset({"type"}),
                   "adaptive": frozenset({"type", "display"})}  # fmt: skip
MIN_THINKING_BUDGET = 1024
# The content block types of Anthropic's API this door does not translate (a 400 saying so).
UNSUPPORTED_BLOCKS = frozenset(
    {
        "document", "search_result", "server_tool_use",
        "web_search_tool_result", "web_fetch_tool_result", "code_execution_tool_result",
        "bash_code_execution_tool_result", "text_editor_code_execution_tool_result",
        "tool_search_tool_result", "container_upload", "mcp_tool_use", "mcp_tool_result",
        "tool_reference", "browser_state",
    }
)  # fmt: skip
MESSAGE_FIELDS = frozenset({"role", "content"})
SOURCE_FIELDS = {"base64": frozenset({"type", "media_type", "data"}), "url": frozenset({"type", "url"})}
# A custom tool's fields in Anthropic's API.
TOOL_FIELDS = frozenset(
    {
        "type", "name", "description", "input_schema", "strict", "cache_control", "allowed_callers",
        "defer_loading", "eager_input_streaming", "input_examples",
    }
)  # fmt: skip
# Defined by Anthropic's API, accepted here and ignored: a prompt cache point, an earlier answer's
# citations and who called a tool, an image's server-side transformations, a tool's loading and
# streaming hints, its examples and the server tools that may call it (none here).
IGNORED = frozenset(
    {
        "cache_control", "citations", "caller", "toolset_name", "transformations", "allowed_callers",
        "defer_loading", "eager_input_streaming", "input_examples",
    }
)  # fmt: skip
# What ``POST /v1/messages/count_tokens`` takes: the prompt, no output or sampling parameters.
# ``output_config`` (the SDKs' ``count_tokens(output_format=...)``) is part of the prompt: the
# format's schema goes to the target as the chat ``response_format``, which the quota counts.
COUNT_FIELDS = frozenset(
    {"model", "messages", "system", "tools", "tool_choice", "output_config", "cache_control", "thinking"}
)
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",  # the request itself came too slowly (server.header_timeout_s, body_timeout_s)
    409: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",  # no target fits the caller's limits
    429: "rate_limit_error",
    503: "api_error",  # the gateway not ready, shutting down, a store it needs not answering
    504: "timeout_error",
    529: "overloaded_error",
}
# Anthropic's status for "overloaded" (its SDKs raise ``OverloadedError`` and retry it, as they
# do a 503): the gateway's own 503s that say so, every target busy or unavailable
# (``AllTargetsFailed``) or too many open connections.
OVERLOADED = 529
BUSY = frozenset({"all_targets_failed", "too_many_connections"})


def bad(param: str, message: str) -> RequestError:
    return RequestError(message, param=param, code="invalid_value")


def status_of(err: TurnoutError) -> int:
    """The status Anthropic's API answers ``err`` with: 529 for the gateway's busy 503s (the
    ledger keeps 503, the status every other door answers)."""
    return OVERLOADED if err.status == 503 and err.code in BUSY else err.status


def error_body(err: TurnoutError) -> dict[str, Any]:
    """An error in Anthropic's shape (its SDK raises the matching exception by status)."""
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status_of(err), "api_error"), "message": err.message}}


# --- the request -----------------------------------------------------------------------------


def to_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    """The chat body for a Messages request (checked: every problem is a 400 naming its field)."""
    unknown = sorted(k for k in body if k not in FIELDS and body[k] is not None)  # a null asks for nothing
    if unknown:
        raise bad(unknown[0], f"'{unknown[0]}' is not supported by this gateway's Messages API")
    chat: dict[str, Any] = {"messages": _prompt_messages(body)}
    chat["max_tokens"] = _max_tokens(body.get("max_tokens"))
    shows_thinking(body.get("thinking"), chat["max_tokens"])
    for name in ("temperature", "top_p"):  # Anthropic's range for both: 0 to 1
        if body.get(name) is not None:
            value = body[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise bad(name, f"'{name}' must be a number from 0 to 1")
            chat[name] = value
    if body.get("top_k") is not None:
        top_k = body["top_k"]
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise bad("top_k", "'top_k' must be a non-negative integer")
        chat["top_k"] = top_k
    if body.get("stop_sequences") is not None:
        chat["stop"] = _strings(body["stop_sequences"], "stop_sequences")
    chat.update(_tools(body))
    if (fmt := _output_format(body.get("output_config"))) is not None:
        chat["response_format"] = fmt
    return chat


def shows_thinking(config: Any, max_tokens: int | None) -> bool:
    """Whether the answer shows the model's reasoning as ``thinking`` blocks: where ``thinking``
    enables it (``enabled`` or ``adaptive``, its ``display`` not ``omitted``), as on Anthropic's
    API. Checked as Anthropic checks it (``budget_tokens`` at least 1024 and below
    ``max_tokens``); nothing of it goes to the targets, which reason or not as their model does."""
    if config is None:
        return False
    kind = config.get("type") if isinstance(config, dict) else None
    if not isinstance(kind, str) or kind not in THINKING_FIELDS:
        raise bad("thinking.type", "'thinking.type' must be enabled, adaptive or disabled")
    _known_fields(config, THINKING_FIELDS[kind], "thinking", f"{_a(kind)} thinking config")
    if kind == "enabled":
        budget = config.get("budget_tokens")
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < MIN_THINKING_BUDGET:
            least = f"an integer of at least {MIN_THINKING_BUDGET}"
            raise bad("thinking.budget_tokens", f"'thinking.budget_tokens' must be {least}")
        if max_tokens is not None and budget >= max_tokens:
            raise bad("thinking.budget_tokens", "'thinking.budget_tokens' must be less than 'max_tokens'")
    display = config.get("display")
    if display not in (None, "summarized", "omitted"):
        raise bad("thinking.display", "'thinking.display' must be summarized or omitted")
    return kind != "disabled" and display != "omitted"


def _output_format(config: Any) -> dict[str, Any] | None:
    """``output_config.format`` (structured outputs, what the SDK's ``messages.parse`` sends) as
    the chat body's ``response_format``; ``effort`` is not translated (a 400 naming it)."""
    if config is None:
        return None
    if not isinstance(config, dict):
        raise bad("output_config", "'output_config' must be an object")
    for key, value in config.items():
        if key != "format" and value is not None:
            raise bad(f"output_config.{key}", f"'output_config.{key}' is not supported by this gateway's Messages API")
    fmt = config.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise bad("output_config.format", "'output_config.format' must be {type: json_schema, schema}")
    unknown = sorted(k for k in fmt if k not in ("type", "schema"))
    if unknown:
        raise bad(f"output_config.format.{unknown[0]}", f"'output_config.format.{unknown[0]}' is not a format field")
    if not isinstance(fmt.get("schema"), dict):
        raise bad("output_config.format.schema", "'output_config.format.schema' must be an object")
    return {"type": "json_schema", "json_schema": {"name": OUTPUT_FORMAT_NAME, "schema": fmt["schema"]}}


def to_counted(body: Mapping[str, Any]) -> dict[str, Any]:
    """The chat body whose prompt a ``count_tokens`` request counts: its messages, system, tools
    and output format, checked as ``to_chat`` checks them; a field ``count_tokens`` does not take
    (``max_tokens``, ``stream``, sampling) is a 400 naming it, as Anthropic's API answers."""
    unknown = sorted(k for k in body if k not in COUNT_FIELDS and body[k] is not None)
    if unknown:
        raise bad(unknown[0], f"'{unknown[0]}' is not a count_tokens field")
    counted = {"messages": _prompt_messages(body), **_tools(body)}
    shows_thinking(body.get("thinking"), None)
    if (fmt := _output_format(body.get("output_config"))) is not None:
        counted["response_format"] = fmt
    return counted


def _prompt_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    return _system(body.get("system")) + _messages(body.get("messages"))


def _tools(body: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if body.get("tools") is not None:
        out["tools"] = [_tool(t, i) for i, t in enumerate(_list(body["tools"], "tools"))]
        check_tool_names([t["function"]["name"] for t in out["tools"]], _name_param, ANTHROPIC_TOOL_NAME)
    if body.get("tool_choice") is not None:
        named = [t["function"]["name"] for t in out.get("tools", ())]
        out.update(_tool_choice(body["tool_choice"], named))
    return out


def _max_tokens(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad("max_tokens", "'max_tokens' is required and must be a positive integer")
    return value


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    blocks = _list(system, "system")
    texts = [_text_block(b, f"system[{i}]", "the system prompt") for i, b in enumerate(blocks)]
    return [{"role": "system", "content": "\n\n".join(texts)}]


def _messages(messages: Any) -> list[dict[str, Any]]:
    items = _list(messages, "messages")
    if not items:
        raise bad("messages", "'messages' must hold at least one message")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(items):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad(where, f"'{where}' must be an object")
        _known_fields(message, MESSAGE_FIELDS, where, "a message")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise bad(f"{where}.role", f"'{where}.role' must be 'user' or 'assistant'")
        if i == 0 and role != "user":
            raise bad(f"{where}.role", "the first message must use the 'user' role")
        content = message.get("content")
        if not content and not (role == "assistant" and i == len(items) - 1):  # a prefill may be empty
            raise bad(f"{where}.content", f"'{where}.content' must not be empty (only a final assistant message may)")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        blocks = _list(content, f"{where}.content")
        out.extend(_assistant(blocks, where) if role == "assistant" else _user(blocks, where))
    return out


def _user(blocks: list[Any], where: str) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content[{j}]"
        kind = _block(block, at, ("text", "image", "tool_result"), "a user message")
        if kind == "tool_result":
            results.append(_tool_result(block, at))
        elif kind == "image":
            parts.append(_image(block, at))
        else:
            parts.append({"type": "text", "text": _text_block(block, at)})
    if parts:
        results.append({"role": "user", "content": parts})
    return results


def _assistant(blocks: list[Any], where: str) -> list[dict[str, Any]]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content[{j}]"
        kind = _block(block, at, ("text", "tool_use", *THINKING_BLOCKS), "an assistant message")
        if kind == "tool_use":
            calls.append(_tool_use(block, at))
        elif kind in THINKING_BLOCKS:  # left out: chat templates drop earlier reasoning, Bedrock would need it signed
            _thinking_block(block, at)
        else:
            texts.append(_text_block(block, at))
    if not texts and not calls and blocks:  # nothing but reasoning: nothing for the targets
        return []
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _block(block: Any, at: str, allowed: tuple[str, ...], place: str) -> str:
    """The type of the content block at ``at``, checked: one of ``allowed`` (those ``place``
    takes here), holding only the fields Anthropic's API defines on it."""
    if not isinstance(block, dict):
        raise bad(at, f"'{at}' must be a content block (an object with a 'type')")
    kind = block.get("type")
    if not isinstance(kind, str) or kind not in allowed:
        where = f"{at}.type"
        names = f"{', '.join(allowed[:-1])} or {allowed[-1]}" if len(allowed) > 1 else allowed[0]
        takes = f"{place} takes {names} blocks here"
        if not isinstance(kind, str):
            raise bad(where, f"'{where}' is required: {takes}")
        if kind in BLOCK_FIELDS:
            refused = f"{_a(kind)} block is not accepted in {place}"
        elif kind in UNSUPPORTED_BLOCKS:
            refused = f"{kind} blocks are not supported by this gateway"
        else:
            refused = f"{kind!r} is not a content block type"
        raise bad(where, f"'{where}': {refused}; {takes}")
    _known_fields(block, BLOCK_FIELDS[kind], at, f"{_a(kind)} block")
    return kind


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _known_fields(value: Mapping[str, Any], fields: frozenset[str], at: str, what: str) -> None:
    """A field Anthropic's API does not define on ``what`` is a 400 naming it (as there)."""
    unknown = sorted(k for k in value if k not in fields)
    if unknown:
        where = f"{at}.{unknown[0]}"
        raise bad(where, f"'{where}' is not a field of {what}")


def _text_block(block: Any, at: str, place: str = "a message") -> str:
    _block(block, at, ("text",), place)
    text = block.get("text")
    if not isinstance(text, str) or not text:
        raise bad(f"{at}.text", f"'{at}.text' must be a non-empty string")
    return text


def _thinking_block(block: Mapping[str, Any], at: str) -> None:
    for name in ("thinking", "signature") if block["type"] == "thinking" else ("data",):
        if not isinstance(block.get(name), str):
            raise bad(f"{at}.{name}", f"'{at}.{name}' must be a string")


def _image(block: Mapping[str, Any], at: str) -> dict[str, Any]:
    source = block.get("source")
    source = source if isinstance(source, dict) else {}  # not an object: refused below
    kind = source.get("type")
    if isinstance(kind, str) and kind in SOURCE_FIELDS:  # a list or an object as the type: refused below
        _known_fields(source, SOURCE_FIELDS[kind], f"{at}.source", f"a {kind} image source")
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")
        if isinstance(media, str) and isinstance(data, str) and media.startswith("image/"):
            return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if kind == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise bad(f"{at}.source", f"'{at}.source' must be a base64 image (media_type, data) or a url")


def _tool_use(block: Mapping[str, Any], at: str) -> dict[str, Any]:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
        raise bad(at, f"'{at}' needs an 'id' and a 'name'")
    if not isinstance(arguments, dict):
        raise bad(f"{at}.input", f"'{at}.input' must be an object")
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": orjson.dumps(arguments).decode()},
    }


def _tool_result(block: Mapping[str, Any], at: str) -> dict[str, Any]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise bad(f"{at}.tool_use_id", f"'{at}.tool_use_id' is required")
    content = block.get("content", "")
    if isinstance(content, list):
        # A chat tool message carries text only: an image or a document would be lost.
        content = "\n".join(_text_block(b, f"{at}.content[{k}]", "a tool_result") for k, b in enumerate(content))
    elif not isinstance(content, str):
        raise bad(f"{at}.content", f"'{at}.content' must be a string or text blocks")
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise bad(f"{at}.is_error", f"'{at}.is_error' must be a boolean")
    if is_error:
        content = f"Error: {content}"
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def _tool(tool: Any, i: int) -> dict[str, Any]:
    at = f"tools[{i}]"
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
        raise bad(at, f"'{at}' must be an object with a 'name'")
    if tool.get("type") not in (None, "custom"):
        raise bad(f"{at}.type", f"'{at}.type' {tool['type']!r}: server tools are not supported by this gateway")
    _known_fields(tool, TOOL_FIELDS, at, "a custom tool")
    schema = tool.get("input_schema", {"type": "object"})
    if not isinstance(schema, dict):
        raise bad(f"{at}.input_schema", f"'{at}.input_schema' must be an object")
    function: dict[str, Any] = {"name": tool["name"], "parameters": schema}
    if tool.get("description") is not None:
        if not isinstance(tool["description"], str):
            raise bad(f"{at}.description", f"'{at}.description' must be a string")
        function["description"] = tool["description"]
    if tool.get("strict") is not None:
        if not isinstance(tool["strict"], bool):
            raise bad(f"{at}.strict", f"'{at}.strict' must be a boolean")
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _name_param(i: int) -> str:
    return f"tools[{i}].name"


def _tool_choice(choice: Any, tools: list[str]) -> dict[str, Any]:
    """``tools``: the names the request declares; a choice that needs a tool needs them."""
    kind = choice.get("type") if isinstance(choice, dict) else None
    mapped: Any
    if kind == "auto":
        mapped = "auto"
    elif kind == "any":
        mapped = "required"
    elif kind == "none":
        mapped = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        mapped = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise bad("tool_choice", "'tool_choice' must be {type: auto | any | none} or {type: tool, name}")
    unknown = sorted(set(choice) - {"type", "name", "disable_parallel_tool_use"})
    if unknown:
        raise bad(f"tool_choice.{unknown[0]}", f"'tool_choice.{unknown[0]}' is not a tool_choice field")
    if kind in ("any", "tool") and not tools:
        raise bad("tool_choice", f"'tool_choice' {kind!r} needs 'tools' to choose from")
    if kind == "tool" and choice["name"] not in tools:
        raise bad("tool_choice.name", f"'tool_choice.name' {choice['name']!r} is not one of the request's tools")
    parallel = choice.get("disable_parallel_tool_use")
    if parallel is not None and not isinstance(parallel, bool):
        raise bad("tool_choice.disable_parallel_tool_use", "'tool_choice.disable_parallel_tool_use' must be a boolean")
    out: dict[str, Any] = {"tool_choice": mapped}
    if parallel is True:
        out["parallel_tool_calls"] = False
    return out


def _list(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise bad(param, f"'{param}' must be a list")
    return value


def _strings(value: Any, param: str) -> list[str]:
    items = _list(value, param)
    if not all(isinstance(s, str) and s for s in items):
        raise bad(param, f"'{param}' must be a list of non-empty strings")
    return items


# --- the answer ------------------------------------------------------------------------------


def message(
    chat: Mapping[str, Any],
    message_id: str,
    task: str,
    usage: Usage,
    stops: Sequence[str] = (),
    thinking: bool = False,
) -> dict[str, Any]:
    """A chat completion as an Anthropic ``message``. ``stops``: the request's stop sequences;
    ``thinking``: whether the request asked to see the model's reasoning (``shows_thinking``).
    A refusal (chat's ``refusal``) is the answer's text, and its ``stop_reason`` ``refusal``."""
    choices = chat.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    said = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    refused = False
    for kind, text in pieces_of(said):
        if kind == "reasoning":
            if thinking:
                content.append(thinking_block(text))
        elif content and content[-1]["type"] == "text":
            content[-1]["text"] += text
        else:
            content.append({"type": "text", "text": text})
        refused = refused or kind == "refusal"
    for call in calls_of(said):
        function = function_of(call)
        content.append(
            {"type": "tool_use", "id": str(call.get("id") or ""), "name": str(function.get("name") or ""),
             "input": _arguments(arguments_text(function.get("arguments")))}
        )  # fmt: skip
    matched = stop_matched(choice, stops)
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": task,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason"), content, matched, refused),
        "stop_sequence": matched,
        "usage": usage_of(usage),
    }


def usage_of(usage: Usage) -> dict[str, int]:
    """Anthropic's usage: ``input_tokens`` are the uncached ones only, beside the tokens read from
    (``cache_read_input_tokens``) and written to (``cache_creation_input_tokens``) a prompt cache,
    where OpenAI's ``prompt_tokens`` counts them all."""
    return {
        "input_tokens": usage.uncached_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "output_tokens": usage.completion_tokens,
    }


def stop_reason(
    finish: Any, content: list[dict[str, Any]] | None = None, matched: str | None = None, refused: bool = False
) -> str:
    """``refused``: the model refused (chat's ``refusal``), which Anthropic says ``refusal``."""
    if finish is None and content and content[-1]["type"] == "tool_use":
        return "tool_use"
    if finish == "stop" and matched is not None:
        return "stop_sequence"
    reason = STOP_REASONS.get(str(finish), "end_turn")
    return "refusal" if refused and reason == "end_turn" else reason


def thinking_block(text: str) -> dict[str, Any]:
    """The model's reasoning as a ``thinking`` block; unsigned (no target here signs it)."""
    return {"type": "thinking", "thinking": text, "signature": ""}


def stop_matched(choice: Mapping[str, Any], stops: Sequence[str]) -> str | None:
    """Which of the request's stop sequences ended the answer: vLLM (and SGLang) name it in the
    choice's ``stop_reason``; None where the upstream does not say (then ``end_turn``)."""
    said = choice.get("stop_reason")
    return said if isinstance(said, str) and said in stops else None


def input_json(raw: str) -> str:
    """A call's arguments as the JSON object a ``tool_use`` block's ``input`` is: as they came
    where they are one, else what ``message`` makes of them (``{"_raw": ...}``)."""
    try:
        if isinstance(orjson.loads(raw), dict):
            return raw
    except orjson.JSONDecodeError:
        pass
    return orjson.dumps(_arguments(raw)).decode()


def _arguments(raw: str) -> Any:
    try:
        parsed = orjson.loads(raw or "{}")
    except orjson.JSONDecodeError:
        return {"_raw": raw}  # the model wrote arguments that are not JSON: passed on as they came
    return parsed if isinstance(parsed, dict) else {"_value": parsed}
