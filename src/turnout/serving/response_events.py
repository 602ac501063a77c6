"""A chat stream as the Responses API's stream events, numbered by ``sequence_number``.

Output items never interleave: each is added, filled and done before the next is added, and every
delta names its own item (``item_id``, ``output_index``). Reasoning (``reasoning_content``) is a
``reasoning`` item (``response.reasoning_text.*``), text and a refusal are a ``message`` item's
``output_text`` and ``refusal`` parts (``response.output_text.*``, ``response.refusal.*``), each
part added, filled and done before the next. Tool calls an upstream interleaves by
index are put in order by ``CallOrder``: the first call streams as its argument deltas come, the
others (and text after a call) follow it whole when the stream ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from turnout.providers.base import Usage
from turnout.serving.call_order import CallOrder, Kind, arguments_text, calls_of, function_of, pieces_of
from turnout.serving.response_items import call_item, last_status, message_item, part, reasoning_item, response

# Each kind's item type, delta and done events, and the field its done event and part hold it in.
ITEM: dict[Kind, str] = {"reasoning": "reasoning", "text": "message", "refusal": "message"}
EVENTS: dict[Kind, tuple[str, str, str]] = {
    "reasoning": ("response.reasoning_text.delta", "response.reasoning_text.done", "text"),
    "text": ("response.output_text.delta", "response.output_text.done", "text"),
    "refusal": ("response.refusal.delta", "response.refusal.done", "refusal"),
}


class Events:
    """Chat chunks in, Responses stream events out (SSE bytes), numbered. One per stream."""

    def __init__(self, response_id: str, created_at: int, task: str, echo: Mapping[str, Any]) -> None:
        self.response_id = response_id
        self.created_at = created_at
        self.task = task
        self.echo = echo
        self.sequence = 0
        self.items: list[dict[str, Any]] = []  # every output item so far, the last one maybe open
        self.open = False
        self.calls = CallOrder()
        self.called = 0  # function_call items so far
        self.counts = {"message": 0, "reasoning": 0}  # message and reasoning items so far
        self.kind: Kind | None = None  # the kind of the open item's open part
        self.finish: Any = None

    def start(self) -> bytes:
        snapshot = response(self.response_id, self.created_at, self.task, [], None, echo=self.echo)
        return self.event("response.created", response=snapshot) + self.event("response.in_progress", response=snapshot)

    def chunk(self, chunk: Mapping[str, Any]) -> bytes:
        out = b""
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            for kind, text in pieces_of(delta):
                if not self.calls.holds_text(text, kind):
                    out += self._text(text, kind)
            for call in calls_of(delta):
                out += self._call(call)
            if choice.get("finish_reason") is not None:
                self.finish = choice["finish_reason"]
        return out

    def end(self, usage: Usage) -> bytes:
        """The held items, then ``response.completed`` (or ``.incomplete``) with ``usage``. The
        item still open is the one the model was writing when it stopped: ``incomplete`` where
        it was cut."""
        out = self._held() + self._close(last_status(self.finish))
        final = response(self.response_id, self.created_at, self.task, self.items, usage, self.finish, self.echo)
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        return out + self.event(kind, response=final)

    def event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _text(self, text: str, kind: Kind = "text") -> bytes:
        out = b""
        item = self.items[-1] if self.open else None
        if item is None or item["type"] != ITEM[kind]:
            out += self._close()
            made = message_item if ITEM[kind] == "message" else reasoning_item
            item = made(self.response_id, self.counts[ITEM[kind]], "in_progress")
            self.counts[ITEM[kind]] += 1
            out += self._add(item)
        if self.kind != kind:
            out += self._close_part()
            self.kind = kind
            item["content"].append(part(kind, ""))
            out += self.event("response.content_part.added", **self._in_part(), part=part(kind, ""))
        delta, _, field = EVENTS[kind]
        item["content"][-1][field] += text
        logprobs: dict[str, Any] = {"logprobs": []} if kind == "text" else {}
        return out + self.event(delta, **self._in_part(), delta=text, **logprobs)

    def _call(self, call: Mapping[str, Any]) -> bytes:
        place = self.calls.place(call)
        if place == "held":
            return b""
        function = function_of(call)
        out = b""
        if place == "open":
            out += self._open_call(str(call.get("id") or ""), str(function.get("name") or ""))
        return out + self._arguments(arguments_text(function.get("arguments")))

    def _held(self) -> bytes:
        """What waited behind the streamed call: its text, then each held call, whole."""
        out = b""
        for kind, text in self.calls.text:
            out += self._text(text, kind)
        for held in self.calls.held.values():
            out += self._open_call(held.id, held.name) + self._arguments(held.arguments)
        return out

    def _open_call(self, call_id: str, name: str) -> bytes:
        out = self._close()
        item = call_item(self.response_id, self.called, call_id, name, "in_progress")
        self.called += 1
        return out + self._add(item)

    def _arguments(self, arguments: str) -> bytes:
        """More arguments of the open function_call item."""
        if not arguments:
            return b""
        self.items[-1]["arguments"] += arguments
        return self.event("response.function_call_arguments.delta", **self._at(), delta=arguments)

    def _add(self, item: dict[str, Any]) -> bytes:
        self.items.append(item)
        self.open = True
        return self.event("response.output_item.added", output_index=len(self.items) - 1, item=item)

    def _close(self, status: str = "completed") -> bytes:
        if not self.open:
            return b""
        item = self.items[-1]
        item["status"] = status
        out = self._close_part()
        if item["type"] == "function_call":
            out += self.event(
                "response.function_call_arguments.done", **self._at(), name=item["name"], arguments=item["arguments"]
            )
        self.open = False
        return out + self.event("response.output_item.done", output_index=len(self.items) - 1, item=item)

    def _close_part(self) -> bytes:
        """The open item's open part (a message's text or refusal, reasoning's text), done."""
        if self.kind is None:
            return b""
        kind, self.kind = self.kind, None
        done = self.items[-1]["content"][-1]
        _, event, field = EVENTS[kind]
        logprobs: dict[str, Any] = {"logprobs": []} if kind == "text" else {}
        said = self.event(event, **self._in_part(), **{field: done[field]}, **logprobs)
        return said + self.event("response.content_part.done", **self._in_part(), part=done)

    def _in_part(self) -> dict[str, Any]:
        """Where the open part is: the open item's last."""
        return {**self._at(), "content_index": len(self.items[-1]["content"]) - 1}

    def _at(self) -> dict[str, Any]:
        """Where the open item is: the last one (items never interleave)."""
        return {"item_id": self.items[-1]["id"], "output_index": len(self.items) - 1}


def error_event(events: Events, code: str, message: str) -> bytes:
    """A failure after the first byte: the stream's last event. ``code`` and ``message`` as the
    Responses API's error event has them, and the same in an ``error`` object, which is what
    makes OpenAI's SDKs raise instead of handing the event on."""
    error = {"code": code, "message": message, "param": None}
    return events.event("error", **error, error={"type": code, **error})
