"""A chat stream as the Responses API's stream events, numbered by ``sequence_number``.

Output items never interleave: each is added, filled and done before the next is added, and every
delta names its own item (``item_id``, ``output_index``). Tool calls an upstream interleaves by
index are put in order by ``CallOrder``: the first call streams as its argument deltas come, the
others (and text after a call) follow it whole when the stream ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from turnout.providers.base import Usage
from turnout.serving.call_order import CallOrder, arguments_text, calls_of, function_of, text_of
from turnout.serving.response_items import call_item, last_status, message_item, response


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
        self.finish: Any = None

    def start(self) -> bytes:
        snapshot = response(self.response_id, self.created_at, self.task, [], None, echo=self.echo)
        return self.event("response.created", response=snapshot) + self.event("response.in_progress", response=snapshot)

    def chunk(self, chunk: Mapping[str, Any]) -> bytes:
        out = b""
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if (text := text_of(delta)) and not self.calls.holds_text(text):
                out += self._text(text)
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

    def _text(self, text: str) -> bytes:
        out = b""
        item = self.items[-1] if self.open else None
        if item is None or item["type"] != "message":
            out += self._close()
            item = message_item(self.response_id, "", "in_progress")
            out += self._add(item)
            item["content"].append({"type": "output_text", "text": "", "annotations": []})
            out += self.event("response.content_part.added", **self._at(), content_index=0, part=_part_of(""))
        item["content"][0]["text"] += text
        return out + self.event("response.output_text.delta", **self._at(), content_index=0, delta=text, logprobs=[])

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
        if self.calls.text:
            out += self._text("".join(self.calls.text))
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
        self.open = False
        item = self.items[-1]
        item["status"] = status
        out = b""
        if item["type"] == "message":
            text = item["content"][0]["text"]
            at = {**self._at(), "content_index": 0}
            out += self.event("response.output_text.done", **at, text=text, logprobs=[])
            out += self.event("response.content_part.done", **at, part=_part_of(text))
        else:
            out += self.event(
                "response.function_call_arguments.done", **self._at(), name=item["name"], arguments=item["arguments"]
            )
        return out + self.event("response.output_item.done", output_index=len(self.items) - 1, item=item)

    def _at(self) -> dict[str, Any]:
        """Where the open item is: the last one (items never interleave)."""
        return {"item_id": self.items[-1]["id"], "output_index": len(self.items) - 1}


def _part_of(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}


def error_event(events: Events, code: str, message: str) -> bytes:
    """A failure after the first byte: the stream's last event. ``code`` and ``message`` as the
    Responses API's error event has them, and the same in an ``error`` object, which is what
    makes OpenAI's SDKs raise instead of handing the event on."""
    error = {"code": code, "message": message, "param": None}
    return events.event("error", **error, error={"type": code, **error})
