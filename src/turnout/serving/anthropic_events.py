"""A chat stream as Anthropic's Messages stream events (``message_start``, ``content_block_*``,
``message_delta``, ``message_stop``), as SSE bytes.

Content blocks never interleave: each is started, filled and stopped before the next starts.
Tool calls an upstream interleaves by index are put in order by ``CallOrder``: the first call
streams as its ``input_json_delta``\\ s come, the others (and text after a call) follow it whole
when the stream ends. Reasoning (``reasoning_content``) is a ``thinking`` block
(``thinking_delta``) where the request asked to see it; a refusal is text, and the stop reason
``refusal``.

Anthropic's SDKs parse a call's input at every ``input_json_delta`` and raise on one that is not
JSON. A model may write arguments that are not (``city=Paris``, a Python dict): a call's deltas
stream while what came so far can begin a JSON object; the rest is held, and the call ends as
the whole message has it (``{"_raw": ...}``) where what was sent begins that, else where it stopped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pydantic_core

from turnout.providers.base import Usage
from turnout.serving.anthropic import STOP_REASONS, input_json, stop_matched, thinking_block, usage_of
from turnout.serving.call_order import CallOrder, Kind, arguments_text, calls_of, function_of, pieces_of


class Events:
    """Chat chunks in, Anthropic stream events out (SSE bytes). One per stream."""

    def __init__(
        self, message_id: str, task: str, input_tokens: int, stops: Sequence[str] = (), thinking: bool = False
    ) -> None:
        self.message_id = message_id
        self.thinking = thinking  # the request asked to see the model's reasoning
        self.refused = False
        self.stops = stops
        self.matched: str | None = None  # the stop sequence that ended the answer, where told
        self.task = task
        self.input_tokens = input_tokens
        self.index = -1  # the open content block's index; -1: none yet
        self.kind = ""  # "thinking", "text" or "tool_use": the open block's kind
        self.calls = CallOrder()
        self.arguments = ""  # the streamed call's arguments so far
        self.sent = ""  # the part of them sent: a start of a JSON object
        self.finish: Any = None

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.task,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage_of(Usage(self.input_tokens, 0)),
        }
        return event("message_start", {"type": "message_start", "message": message}) + event("ping", {"type": "ping"})

    def chunk(self, chunk: Mapping[str, Any]) -> bytes:
        out = b""
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            for kind, text in pieces_of(delta):
                if (kind != "reasoning" or self.thinking) and not self.calls.holds_text(text, kind):
                    out += self._text(text, kind)
            for call in calls_of(delta):
                out += self._tool_delta(call)
            if choice.get("finish_reason") is not None:
                self.finish = choice["finish_reason"]
                self.matched = stop_matched(choice, self.stops)
        return out

    def end(self, usage: Usage) -> bytes:
        """The held blocks, then ``message_delta`` with ``usage`` (``message_start`` had the
        gateway's prompt bound)."""
        out = self._rest_of_call() + self._held() + self._close()
        reason = STOP_REASONS.get(str(self.finish), "tool_use" if self.calls.live is not None else "end_turn")
        if self.finish == "stop" and self.matched is not None:
            reason = "stop_sequence"
        elif self.refused and reason == "end_turn":
            reason = "refusal"
        out += event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": self.matched},
                "usage": usage_of(usage),
            },
        )
        return out + event("message_stop", {"type": "message_stop"})

    def _text(self, text: str, kind: Kind = "text") -> bytes:
        if kind == "reasoning":
            out = b"" if self.kind == "thinking" else self._open(thinking_block(""), "thinking")
            return out + self._delta({"type": "thinking_delta", "thinking": text})
        self.refused = self.refused or kind == "refusal"
        out = b"" if self.kind == "text" else self._open({"type": "text", "text": ""}, "text")
        return out + self._delta({"type": "text_delta", "text": text})

    def _tool_delta(self, call: Mapping[str, Any]) -> bytes:
        place = self.calls.place(call)
        if place == "held":
            return b""
        out = b""
        function = function_of(call)
        if place == "open":
            out += self._open(_tool_block(str(call.get("id") or ""), str(function.get("name") or "")), "tool_use")
        if arguments := arguments_text(function.get("arguments")):
            streaming = self.sent == self.arguments  # nothing held back yet
            self.arguments += arguments
            if streaming and _object_start(self.arguments):
                self.sent = self.arguments
                out += self._delta({"type": "input_json_delta", "partial_json": arguments})
        return out

    def _rest_of_call(self) -> bytes:
        """What the streamed call's deltas held back, where what was sent begins it."""
        if self.sent == self.arguments:
            return b""
        whole = input_json(self.arguments)
        if not whole.startswith(self.sent):
            return b""
        return self._delta({"type": "input_json_delta", "partial_json": whole[len(self.sent) :]})

    def _held(self) -> bytes:
        """What waited behind the streamed call: its text, then each held call, whole."""
        out = b""
        for kind, text in self.calls.text:
            out += self._text(text, kind)
        for held in self.calls.held.values():
            out += self._open(_tool_block(held.id, held.name), "tool_use")
            if held.arguments:
                out += self._delta({"type": "input_json_delta", "partial_json": input_json(held.arguments)})
        return out

    def _open(self, block: dict[str, Any], kind: str) -> bytes:
        out = self._close()
        self.index += 1
        self.kind = kind
        return out + event(
            "content_block_start", {"type": "content_block_start", "index": self.index, "content_block": block}
        )

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return event("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})

    def _close(self) -> bytes:
        if not self.kind:
            return b""
        self.kind = ""
        return event("content_block_stop", {"type": "content_block_stop", "index": self.index})


def _object_start(text: str) -> bool:
    """Whether ``text`` is a JSON object, or can begin one."""
    try:
        return isinstance(pydantic_core.from_json(text, allow_partial=True), dict)
    except ValueError:
        return False


def _tool_block(call_id: str, name: str) -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": {}}


def event(name: str, data: Mapping[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
