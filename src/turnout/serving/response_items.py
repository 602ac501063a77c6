"""OpenAI's Responses API ↔ the chat body the targets take: pure functions.

Request: ``instructions`` becomes the first system message; ``input`` as a string is one user
message; as items, a ``message`` item keeps its role (``developer`` becomes ``system``, which
every target's chat template knows) with ``input_text`` / ``output_text`` / ``input_image``
parts (an earlier answer's ``refusal`` part: its text), consecutive ``function_call`` items become
one assistant message's ``tool_calls`` and a ``function_call_output`` a ``tool`` message; a
``reasoning`` item (an earlier answer's, sent back) is left out. Function ``tools``, ``tool_choice``,
``text.format`` (→ ``response_format``), ``text.verbosity`` (→ ``verbosity``, applied by the
targets that know it), ``max_output_tokens`` (→ ``max_tokens``), ``temperature``, ``top_p`` and
``parallel_tool_calls`` map to their chat names. A ``function_call_output`` carries text only (a
chat ``tool`` message does): an image in it is refused. Turnout keeps no response state:
``previous_response_id``, ``conversation`` and item references are refused (400), ``store`` is
accepted (OpenAI's SDKs default it to true) and nothing is stored, so the Response says
``store: false``. What real clients send that changes nothing here is checked and accepted
(``settings``): ``include`` (``INCLUDABLE``: outputs of tools this door refuses, input images,
reasoning's encrypted content, none of which there is to include; ``logprobs`` is refused),
``truncation`` (nothing is ever dropped: an input past the context window is refused with
``disabled`` or ``auto`` alike, and the Response says ``disabled``), ``prompt_cache_key`` (a
cache-routing hint; not sent on, since the Bedrock translation would pass it to the model) and
``safety_identifier`` (the end user, read as ``user`` is). Any other field is refused (400
naming it), never dropped, unless it is null, which asks for nothing (the SDKs' parameters are
``Optional``).

Answer: a chat completion becomes a ``response`` with a ``reasoning`` item where the upstream
reasoned (``reasoning_content``: a ``reasoning_text`` part), a ``message`` item (``output_text``,
and a ``refusal`` part for chat's ``refusal``) and one ``function_call`` item per tool call; an
answer cut at ``max_output_tokens`` (``finish_reason`` ``length``) or by a content filter is
``incomplete``, with ``incomplete_details`` saying why and its last item ``incomplete`` too.
``response_events.Events`` turns a chat stream into the Responses stream events, whose last
(``response.completed``, or ``response.incomplete``) carries the same object.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from turnout.errors import RequestError
from turnout.providers.base import Usage
from turnout.serving.call_order import Kind, arguments_text, calls_of, function_of, pieces_of
from turnout.serving.door import OPENAI_TOOL_NAME, check_tool_names

# Fields read here; ``model``, ``stream``, ``store``, ``metadata`` and ``user`` by the door itself.
FIELDS = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "max_output_tokens",
        "temperature",
        "top_p",
        "stream",
        "store",
        "metadata",
        "user",
        "previous_response_id",
        "include",
        "truncation",
        "prompt_cache_key",
        "safety_identifier",
    }
)
STATEFUL = ("previous_response_id", "conversation")  # refused: turnout keeps no response state
ROLES = frozenset({"user", "assistant", "system", "developer"})
PARTS = frozenset({"input_text", "output_text", "input_image", "refusal"})
FORMATS = frozenset({"text", "json_object", "json_schema"})
VERBOSITY = ("low", "medium", "high")
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
# ``include`` values accepted: each asks for something there is none of here (outputs of the
# built-in tools, which are refused; the input's images, returned only with stored input items;
# reasoning's encrypted content, which no target here writes). Logprobs would need translating.
INCLUDABLE = frozenset(
    {
        "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
        "computer_call_output.output.image_url", "code_interpreter_call.outputs",
        "message.input_image.image_url", "reasoning.encrypted_content",
    }
)  # fmt: skip
NOT_INCLUDED = {"message.output_text.logprobs": "logprobs are not translated by this gateway's Responses API"}
TRUNCATION = ("disabled", "auto")


def bad(param: str, message: str, code: str = "invalid_value") -> RequestError:
    return RequestError(message, param=param, code=code)


# --- the request -----------------------------------------------------------------------------


def to_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    """The chat body for a Responses request (checked: every problem is a 400 naming its field)."""
    for name in STATEFUL:
        if body.get(name) is not None:
            raise bad(name, f"'{name}': this gateway keeps no response state; send the whole input", "not_kept")
    unknown = sorted(k for k in body if k not in FIELDS and body[k] is not None)  # a null asks for nothing
    if unknown:
        raise bad(unknown[0], f"'{unknown[0]}' is not supported by this gateway's Responses API")
    chat: dict[str, Any] = {"messages": _instructions(body.get("instructions")) + _input(body.get("input"))}
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = _positive(body["max_output_tokens"], "max_output_tokens")
    for name, hi in (("temperature", 2.0), ("top_p", 1.0)):
        if body.get(name) is not None:
            chat[name] = _number(body[name], name, hi)
    if body.get("tools") is not None:
        chat["tools"] = [_tool(t, i) for i, t in enumerate(_list(body["tools"], "tools"))]
        check_tool_names([t["function"]["name"] for t in chat["tools"]], _name_param, OPENAI_TOOL_NAME)
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"], [t["function"]["name"] for t in chat.get("tools", ())])
    if body.get("parallel_tool_calls") is not None:
        if not isinstance(body["parallel_tool_calls"], bool):
            raise bad("parallel_tool_calls", "'parallel_tool_calls' must be a boolean")
        chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    if body.get("text") is not None:
        chat.update(_text(body["text"]))
    settings(body)
    return chat


def settings(body: Mapping[str, Any]) -> None:
    """Check what is accepted and changes nothing here: ``include``, ``truncation``,
    ``prompt_cache_key`` (``safety_identifier`` is read by the door, with ``user``)."""
    for i, value in enumerate(_list(body["include"], "include") if body.get("include") is not None else ()):
        at = f"include[{i}]"
        if isinstance(value, str) and value in NOT_INCLUDED:  # a list or an object is unhashable
            raise bad(at, f"'{at}' {value!r}: {NOT_INCLUDED[value]}")
        if not isinstance(value, str) or value not in INCLUDABLE:
            raise bad(at, f"'{at}' must be one of {', '.join(sorted(INCLUDABLE))}")
    truncation = body.get("truncation")
    if truncation is not None and (not isinstance(truncation, str) or truncation not in TRUNCATION):
        raise bad("truncation", "'truncation' must be disabled or auto")
    if body.get("prompt_cache_key") is not None and not isinstance(body["prompt_cache_key"], str):
        raise bad("prompt_cache_key", "'prompt_cache_key' must be a string")


def _instructions(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, str):
        raise bad("instructions", "'instructions' must be a string")
    return [{"role": "system", "content": value}]


def _input(value: Any) -> list[dict[str, Any]]:
    """``input`` as OpenAI takes it: a string (one user message) or a list of items. Required
    here: with no response state kept, there is nothing else to answer, so an empty string or
    an empty list is refused too (OpenAI's codes ``empty_string`` and ``empty_array``) rather
    than sent as an empty user turn."""
    if value is None:
        raise bad("input", "'input' is required: a string or a list of items (this gateway keeps no response state)")
    if value == "":
        raise bad("input", "Invalid 'input': empty string. Expected a string with minimum length 1.", "empty_string")
    if value == []:
        raise bad("input", "Invalid 'input': empty array. Expected an array with minimum length 1.", "empty_array")
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise bad("input", "'input' must be a string or a non-empty list of items")
    items = value
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        at = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad(at, f"'{at}' must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            out.append(_message(item, at))
        elif kind == "function_call":
            call = _function_call(item, at)
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":  # one turn: its text and its calls
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            out.append(_function_output(item, at))
        elif kind == "reasoning":  # an earlier answer's, sent back as OpenAI asks: not for the targets
            _reasoning(item, at)
        elif kind == "item_reference":
            raise bad(f"{at}.type", f"'{at}': this gateway keeps no response state to refer to", "not_kept")
        else:
            raise bad(f"{at}.type", f"'{at}.type' {kind!r} is not supported by this gateway's Responses API")
    return out


def _message(item: Mapping[str, Any], at: str) -> dict[str, Any]:
    role = item.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise bad(f"{at}.role", f"'{at}.role' must be one of {', '.join(sorted(ROLES))}")
    role = "system" if role == "developer" else role
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    parts = [_part(p, f"{at}.content[{j}]") for j, p in enumerate(_list(content, f"{at}.content"))]
    if role != "user" and all(p["type"] == "text" for p in parts):
        return {"role": role, "content": "".join(p["text"] for p in parts)}  # only users send images
    return {"role": role, "content": parts}


def _part(part: Any, at: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if not isinstance(kind, str) or kind not in PARTS:
        raise bad(at, f"'{at}' must be an input_text, output_text, refusal or input_image part")
    if kind == "refusal":  # an earlier answer's refusal: what the assistant said
        if not isinstance(part.get("refusal"), str):
            raise bad(f"{at}.refusal", f"'{at}.refusal' must be a string")
        return {"type": "text", "text": part["refusal"]}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise bad(f"{at}.image_url", f"'{at}.image_url' must be a URL or a data URL (file ids are not kept)")
        return {"type": "image_url", "image_url": {"url": url}}
    if not isinstance(part.get("text"), str):
        raise bad(f"{at}.text", f"'{at}.text' must be a string")
    return {"type": "text", "text": part["text"]}


def _reasoning(item: Mapping[str, Any], at: str) -> None:
    """A ``reasoning`` item of an earlier answer, checked and left out: a chat body has no place
    for it (the targets' chat templates drop earlier reasoning; Bedrock would need its signature)."""
    for name in ("summary", "content"):
        said = item.get(name)
        if said is not None and not (isinstance(said, list) and all(isinstance(p, dict) for p in said)):
            raise bad(f"{at}.{name}", f"'{at}.{name}' must be a list of parts")


def _function_call(item: Mapping[str, Any], at: str) -> dict[str, Any]:
    call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments", "{}")
    if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
        raise bad(at, f"'{at}' needs a 'call_id' and a 'name'")
    if not isinstance(arguments, str):
        raise bad(f"{at}.arguments", f"'{at}.arguments' must be a string (JSON)")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _function_output(item: Mapping[str, Any], at: str) -> dict[str, Any]:
    call_id, output = item.get("call_id"), item.get("output")
    if not isinstance(call_id, str) or not call_id:
        raise bad(f"{at}.call_id", f"'{at}.call_id' is required")
    if isinstance(output, list):
        parts = [_part(p, f"{at}.output[{k}]") for k, p in enumerate(output)]
        for k, part in enumerate(parts):  # a chat tool message holds text only: an image would be lost
            if part["type"] != "text":
                where = f"{at}.output[{k}]"
                raise bad(where, f"'{where}': a function_call_output can carry text only here (chat tool messages)")
        output = "".join(part["text"] for part in parts)
    elif not isinstance(output, str):
        raise bad(f"{at}.output", f"'{at}.output' must be a string or text parts")
    return {"role": "tool", "tool_call_id": call_id, "content": output}


def _tool(tool: Any, i: int) -> dict[str, Any]:
    at = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise bad(at, f"'{at}' must be a function tool" + (f" ({kind!r} tools are not supported)" if kind else ""))
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        raise bad(f"{at}.name", f"'{at}.name' is required")
    parameters = tool.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise bad(f"{at}.parameters", f"'{at}.parameters' must be an object")
    function: dict[str, Any] = {"name": tool["name"], "parameters": parameters or {"type": "object", "properties": {}}}
    return {"type": "function", "function": function | _typed(tool, at, description=str, strict=bool)}


def _name_param(i: int) -> str:
    return f"tools[{i}].name"


def _tool_choice(choice: Any, tools: list[str]) -> Any:
    """``tools``: the names the request declares. A choice that needs a tool needs them, as OpenAI
    answers: a target that has none to call (the embedded model) answered in text instead."""
    if isinstance(choice, str) and choice in ("auto", "none", "required"):
        if choice == "required" and not tools:
            raise bad("tool_choice", "'tool_choice' 'required' needs 'tools' to choose from")
        return choice
    name = choice.get("name") if isinstance(choice, dict) else None
    if isinstance(name, str) and name and choice.get("type") == "function":
        if name not in tools:
            raise bad("tool_choice.name", f"'tool_choice.name' {name!r} is not one of the request's tools")
        return {"type": "function", "function": {"name": name}}
    raise bad("tool_choice", "'tool_choice' must be auto, none, required or {type: function, name}")


def _text(text: Any) -> dict[str, Any]:
    if not isinstance(text, dict):
        raise bad("text", "'text' must be an object")
    unknown = sorted(k for k in text if k not in ("format", "verbosity"))
    if unknown:
        raise bad(f"text.{unknown[0]}", f"'text.{unknown[0]}' is not supported by this gateway's Responses API")
    out: dict[str, Any] = {}
    if text.get("verbosity") is not None:
        if text["verbosity"] not in VERBOSITY:
            raise bad("text.verbosity", "'text.verbosity' must be low, medium or high")
        out["verbosity"] = text["verbosity"]  # chat's name for it
    return out | _format(text.get("format"))


def _format(fmt: Any) -> dict[str, Any]:
    if fmt is None:
        return {}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if not isinstance(kind, str) or kind not in FORMATS:
        raise bad("text.format.type", "'text.format.type' must be text, json_object or json_schema")
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"response_format": {"type": "json_object"}}
    if not isinstance(fmt.get("name"), str) or not fmt["name"]:
        raise bad("text.format.name", "'text.format.name' is required for json_schema")
    if not isinstance(fmt.get("schema"), dict):
        raise bad("text.format.schema", "'text.format.schema' must be an object")
    schema = {"name": fmt["name"], "schema": fmt["schema"]} | _typed(fmt, "text.format", strict=bool, description=str)
    return {"response_format": {"type": "json_schema", "json_schema": schema}}


def _typed(obj: Mapping[str, Any], at: str, **types: type) -> dict[str, Any]:
    """The optional fields of ``obj`` named in ``types`` that it holds (not null), each checked to
    be of its type: a wrong type is a 400 naming it, never read as absent."""
    out: dict[str, Any] = {}
    for name, kind in types.items():
        value = obj.get(name)
        if value is None:
            continue
        if not isinstance(value, kind):
            raise bad(f"{at}.{name}", f"'{at}.{name}' must be a {'boolean' if kind is bool else 'string'}")
        out[name] = value
    return out


def _positive(value: Any, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad(param, f"'{param}' must be a positive integer")
    return value


def _number(value: Any, param: str, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= hi:
        raise bad(param, f"'{param}' must be a number between 0 and {hi:g}")
    return value


def _list(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise bad(param, f"'{param}' must be a list")
    return value


# --- the answer ------------------------------------------------------------------------------


def output(chat: Mapping[str, Any], response_id: str) -> tuple[list[dict[str, Any]], Any]:
    """A chat completion's output items and its finish reason: its reasoning (a ``reasoning``
    item), its text and refusal (a ``message`` item's ``output_text`` and ``refusal`` parts),
    its tool calls."""
    choices = chat.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    said = choice.get("message") or {}
    items: list[dict[str, Any]] = []
    message: dict[str, Any] | None = None
    for kind, text in pieces_of(said):
        if kind == "reasoning":
            items.append(reasoning_item(response_id, 0, "completed"))
            items[-1]["content"].append(part(kind, text))
            continue
        if message is None:
            message = message_item(response_id, 0, "completed")
            items.append(message)
        message["content"].append(part(kind, text))
    for i, call in enumerate(calls_of(said)):
        function = function_of(call)
        item = call_item(response_id, i, str(call.get("id") or ""), str(function.get("name") or ""), "completed")
        item["arguments"] = arguments_text(function.get("arguments"))
        items.append(item)
    finish = choice.get("finish_reason")
    if items:
        items[-1]["status"] = last_status(finish)
    return items, finish


def last_status(finish: Any) -> str:
    """The status of an answer's last item: ``incomplete`` where the answer was cut
    (``max_output_tokens``, a content filter) while the model was writing it, as OpenAI says."""
    return "incomplete" if str(finish) in INCOMPLETE else "completed"


def message_item(response_id: str, index: int, status: str) -> dict[str, Any]:
    """The ``index``-th message item of a Response (a stream may write text after a call: a
    second one), its parts to add."""
    item_id = f"msg_{response_id}" + (f"_{index}" if index else "")
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": []}


def reasoning_item(response_id: str, index: int, status: str) -> dict[str, Any]:
    """The ``index``-th reasoning item: the model's reasoning as the upstream gave it (vLLM's
    ``reasoning_content``), its ``reasoning_text`` part to add; no summary, nothing encrypted."""
    item_id = f"rs_{response_id}" + (f"_{index}" if index else "")
    return {"type": "reasoning", "id": item_id, "status": status, "summary": [], "content": []}


def part(kind: Kind, text: str) -> dict[str, Any]:
    """A content part of an output item: a message's text or refusal, a reasoning item's text."""
    if kind == "refusal":
        return {"type": "refusal", "refusal": text}
    if kind == "reasoning":
        return {"type": "reasoning_text", "text": text}
    return {"type": "output_text", "text": text, "annotations": []}


def call_item(response_id: str, index: int, call_id: str, name: str, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": f"fc_{response_id}_{index}",
        "call_id": call_id,
        "name": name,
        "arguments": "",
        "status": status,
    }


def response(
    response_id: str,
    created_at: int,
    task: str,
    items: list[dict[str, Any]],
    usage: Usage | None,
    finish: Any = None,
    echo: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The Response object; ``echo``: the request's settings it repeats (``metadata``, ...);
    ``usage`` None: still in progress."""
    incomplete = INCOMPLETE.get(str(finish))
    status = "in_progress" if usage is None else ("incomplete" if incomplete else "completed")
    return {
        "id": f"resp_{response_id}",
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": incomplete} if incomplete and usage is not None else None,
        "model": task,
        "output": items,
        "usage": None if usage is None else _usage(usage),
        **(echo or {}),
    }


def _usage(usage: Usage) -> dict[str, Any]:
    """The Responses API's usage: the details as the upstream reported them (0: it said none).
    ``input_tokens`` counts them all, the cache's reads and writes among them."""
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": usage.cache_write_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def echo(body: Mapping[str, Any]) -> dict[str, Any]:
    """The request settings a Response repeats, as the caller sent them."""
    return {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "store": False,  # whatever was asked: nothing is stored
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "truncation": "disabled",  # whatever was asked: nothing is dropped
        "prompt_cache_key": body.get("prompt_cache_key"),
        "safety_identifier": body.get("safety_identifier"),
    }
