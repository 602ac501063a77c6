"""The reply side of Bedrock Converse → OpenAI chat completions, pure (no I/O):
``from_converse`` for a Converse response, ``StreamTranslator`` for ConverseStream events.
The request side, and the choices made there, are in ``turnout.providers.bedrock.translate``.

Choices:

  * Text blocks are concatenated into ``content``; ``toolUse`` blocks become ``tool_calls`` in
    order; reasoning text becomes ``reasoning_content`` (the vLLM/DeepSeek field).
  * ``finish_reason``: end_turn/stop_sequence → stop, tool_use → tool_calls, max_tokens and
    model_context_window_exceeded → length, guardrail_intervened/content_filtered →
    content_filter; malformed_model_output, malformed_tool_use and anything unknown → stop.
    The raw reason is kept as ``native_finish_reason`` on the choice (OpenRouter's field).
  * Usage: Converse's ``inputTokens`` excludes cache reads and writes, so ``prompt_tokens`` =
    input + cacheRead + cacheWrite, ``prompt_tokens_details.cached_tokens`` = cacheRead and
    ``cache_creation_input_tokens`` = cacheWrite (Anthropic's name). No usage, or a count that
    is not one (negative, not a whole number), is ``{}``: unreadable, never zeros (a free answer)
    or a lowered count, so the gateway counts the answer itself, as for any upstream.
  * With the json_schema fallback (``Translation.json_via_tool``), the input of that tool
    is the answer's ``content`` (other text, a preamble, is dropped) and a reply that stopped
    for it finishes with ``stop``. While streaming, text is held back in that mode until the
    end, since only then is it known whether the tool gave the answer.
  * Streaming: OpenAI counts tool calls, not content blocks, so each ``toolUse`` block gets the
    next tool-call index. A tool block that ends with no input fragment gets ``"{}"`` as its
    arguments, so the reassembled call always parses. Stream exception events are the
    provider's to raise; unknown event types (and the ``p`` padding field) are ignored.
  * A reply of the wrong shape (a list where an object belongs, a tool use without its name, a
    tool input fragment that is not a string) raises one of ``MALFORMED``, which the provider
    reports as ``UpstreamProtocolError``: the gateway falls back, never answers a 500.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

# What reading a Converse reply of the wrong shape raises (see the module docstring).
MALFORMED: tuple[type[Exception], ...] = (AttributeError, KeyError, TypeError, ValueError, IndexError)
_USAGE_KEYS = ("inputTokens", "outputTokens", "cacheReadInputTokens", "cacheWriteInputTokens")


@dataclass(frozen=True, slots=True)
class Translation:
    """A translated request. ``request`` is the Converse JSON without ``modelId``; the reply
    side needs ``json_via_tool``: the name of the tool whose input is the answer's content, if
    the json_schema fallback is in use."""

    request: dict[str, Any]
    json_via_tool: str | None = None


_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}


def finish_reason(stop_reason: str | None) -> str:
    """OpenAI's finish_reason for a Converse stopReason (see the module docstring)."""
    return _FINISH.get(stop_reason or "", "stop")


def usage_of(usage: Any) -> dict[str, Any]:
    """OpenAI usage from Converse TokenUsage, whose inputTokens excludes cache reads and writes;
    ``{}`` (no usage) without one, or when a count is not a whole number of 0 or more."""
    if not isinstance(usage, Mapping):
        return {}
    counts = [usage.get(key) or 0 for key in _USAGE_KEYS]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
        return {}
    fresh, completion, read, write = counts
    prompt = fresh + read + write
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": read},
        "cache_creation_input_tokens": write,
    }


def assistant_message(message: Mapping[str, Any], *, json_via_tool: str | None = None) -> dict[str, Any]:
    """An OpenAI assistant message from a Converse assistant message. With ``json_via_tool``,
    that tool's input is the content (and other text, a preamble, is dropped)."""
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    answer: str | None = None
    for block in message.get("content") or ():
        if "text" in block:
            texts.append(block["text"])
        elif "toolUse" in block:
            use = block["toolUse"]
            arguments = orjson.dumps(use.get("input") or {}).decode()
            if use["name"] == json_via_tool:
                answer = arguments
            else:
                calls.append(_tool_call(use["toolUseId"], use["name"], arguments))
        elif text := (block.get("reasoningContent") or {}).get("reasoningText", {}).get("text"):
            reasoning.append(text)
    content = answer if answer is not None else "".join(texts) or None
    out: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        out["tool_calls"] = calls
    if reasoning:
        out["reasoning_content"] = "".join(reasoning)
    return out


def _tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def reply_finish_reason(stop_reason: str | None, *, tool_calls: bool, json_answered: bool) -> str:
    """finish_reason, except that an answer given through the json tool is a plain stop."""
    if stop_reason == "tool_use" and json_answered and not tool_calls:
        return "stop"
    return finish_reason(stop_reason)


def from_converse(
    resp: Mapping[str, Any],
    *,
    model: str,
    created: int,
    request: Translation | None = None,
    completion_id: str | None = None,
) -> dict[str, Any]:
    """A ``chat.completion`` from a Converse response. ``completion_id`` defaults to a fresh id
    (the provider may pass Bedrock's request id instead)."""
    json_tool = request.json_via_tool if request else None
    raw = (resp.get("output") or {}).get("message") or {}
    message = assistant_message(raw, json_via_tool=json_tool)
    json_answered = json_tool is not None and any(
        b.get("toolUse", {}).get("name") == json_tool for b in raw.get("content") or ()
    )
    stop_reason = resp.get("stopReason")
    choice = {
        "index": 0,
        "message": message,
        "finish_reason": reply_finish_reason(
            stop_reason, tool_calls="tool_calls" in message, json_answered=json_answered
        ),
        "native_finish_reason": stop_reason,
        "logprobs": None,
    }
    return {
        "id": completion_id or f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage_of(resp.get("usage")),
    }


# -- stream ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _ToolBlock:
    index: int | None  # the OpenAI tool-call index; None for the json fallback tool
    has_input: bool = False


class StreamTranslator:
    """ConverseStream events → OpenAI ``chat.completion.chunk`` dicts, one reply at a time.

    ``feed`` takes each event's type (``:event-type``) and decoded payload and returns the
    chunks it produces, often none. The ``metadata`` event yields a usage chunk with no
    choices; the gateway drops it when the caller did not ask for ``include_usage``.
    """

    def __init__(self, model: str, created: int, chunk_id: str, request: Translation | None = None) -> None:
        self.model = model
        self.created = created
        self.chunk_id = chunk_id
        self._json_tool = request.json_via_tool if request else None
        self._blocks: dict[int, _ToolBlock] = {}  # contentBlockIndex → tool block
        self._tool_calls = 0
        self._json_answered = False
        self._held: list[str] = []  # text held back in json-tool mode
        self.finished = False  # messageStop was seen: a stream that ends before it was cut short
        self._handlers: dict[str, Callable[[Mapping[str, Any]], list[dict[str, Any]]]] = {
            "messageStart": self._message_start,
            "contentBlockStart": self._block_start,
            "contentBlockDelta": self._block_delta,
            "contentBlockStop": self._block_stop,
            "messageStop": self._message_stop,
            "metadata": self._metadata,
        }

    def feed(self, event_type: str, payload: Mapping[str, Any]) -> list[dict[str, Any]]:
        handler = self._handlers.get(event_type)
        return handler(payload) if handler else []

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None, **extra}
        return {
            "id": self.chunk_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    def _message_start(self, payload: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block_start(self, payload: Mapping[str, Any]) -> list[dict[str, Any]]:
        use = (payload.get("start") or {}).get("toolUse")
        if not isinstance(use, dict):
            return []
        name = use.get("name", "")
        block = self._new_block(payload.get("contentBlockIndex", 0), json_tool=name == self._json_tool)
        if block.index is None:
            return []
        call = {"index": block.index, "id": use.get("toolUseId", ""), "type": "function"}
        call["function"] = {"name": name, "arguments": ""}
        return [self._chunk({"tool_calls": [call]})]

    def _new_block(self, position: int, *, json_tool: bool) -> _ToolBlock:
        if json_tool:
            self._json_answered = True
            block = _ToolBlock(None)
        else:
            block = _ToolBlock(self._tool_calls)
            self._tool_calls += 1
        self._blocks[position] = block
        return block

    def _block_delta(self, payload: Mapping[str, Any]) -> list[dict[str, Any]]:
        delta = payload.get("delta") or {}
        if isinstance(text := delta.get("text"), str) and text:
            if self._json_tool is not None:
                self._held.append(text)
                return []
            return [self._chunk({"content": text})]
        if isinstance(use := delta.get("toolUse"), dict) and (fragment := use.get("input")):
            if not isinstance(fragment, str):
                raise TypeError("a toolUse input fragment is not a string")
            position = payload.get("contentBlockIndex", 0)
            # A delta with no start event should not happen; treat it as an unnamed tool call.
            block = self._blocks.get(position) or self._new_block(position, json_tool=False)
            block.has_input = True
            return [self._input_chunk(block, fragment)]
        if text := (delta.get("reasoningContent") or {}).get("text"):
            return [self._chunk({"reasoning_content": text})]
        return []

    def _input_chunk(self, block: _ToolBlock, fragment: str) -> dict[str, Any]:
        if block.index is None:
            return self._chunk({"content": fragment})
        return self._chunk({"tool_calls": [{"index": block.index, "function": {"arguments": fragment}}]})

    def _block_stop(self, payload: Mapping[str, Any]) -> list[dict[str, Any]]:
        block = self._blocks.get(payload.get("contentBlockIndex", 0))
        if block is None or block.has_input:
            return []
        block.has_input = True
        return [self._input_chunk(block, "{}")]  # a tool with no input still has parseable arguments

    def _message_stop(self, payload: Mapping[str, Any]) -> list[dict[str, Any]]:
        self.finished = True
        out = []
        if self._held and not self._json_answered:
            out.append(self._chunk({"content": "".join(self._held)}))
        self._held.clear()
        stop_reason = payload.get("stopReason")
        finish = reply_finish_reason(stop_reason, tool_calls=self._tool_calls > 0, json_answered=self._json_answered)
        out.append(self._chunk({}, finish, native_finish_reason=stop_reason))
        return out

    def _metadata(self, payload: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [
            {
                "id": self.chunk_id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage_of(payload.get("usage")),
            }
        ]
