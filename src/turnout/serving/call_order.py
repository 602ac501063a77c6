"""A chat stream's tool calls in an order the translated APIs can write: one after another.

An OpenAI-compatible upstream may interleave its calls' deltas by ``index`` (call 0's name and
first arguments, call 1's, then more of call 0's). Anthropic's content blocks and the Responses
API's output items are written one at a time, each started, filled and finished before the next,
and a call is finished only when the stream is (until then more of its arguments may come). So
the first call streams as it comes and stays open to the end; a call that starts while it is
open, and any text (reasoning, a refusal) that comes after it, are held and written whole at the
end, in the order they started. An upstream that sends its calls one after another loses nothing but the streaming of
the calls after the first.

What the doors read of a chat answer is read here as some OpenAI-compatible servers write it:
``arguments`` as an object rather than its JSON text (``arguments_text``), ``content`` as a list
of parts (``text_of``), a malformed call skipped (``calls_of``, ``function_of``), reasoning as
vLLM and DeepSeek write it (``reasoning_content``; newer vLLM: ``reasoning``) and a refusal
(``refusal``) read beside the text (``pieces_of``). Read as Python
values they became the answer's text as Python wrote them (``[{'type': 'text', ...``), or a
stream's failure inside the gateway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from turnout.safety.output import content_text

Place = Literal["open", "live", "held"]
Kind = Literal["reasoning", "text", "refusal"]  # what a message says, in the order a model says it
KINDS: tuple[Kind, ...] = ("reasoning", "text", "refusal")


@dataclass(slots=True)
class HeldCall:
    id: str
    name: str
    arguments: str = ""


class CallOrder:
    """Where each tool-call delta goes: ``open`` (a new call to start and stream), ``live``
    (more of the call being streamed), ``held`` (kept here, in ``held``, for the end)."""

    __slots__ = ("held", "live", "text")

    def __init__(self) -> None:
        self.live: int | None = None  # the index of the call being streamed
        self.held: dict[int, HeldCall] = {}  # the calls that started while it was open, by index
        self.text: list[tuple[Kind, str]] = []  # what was said while it was open

    def place(self, call: Mapping[str, Any]) -> Place:
        position = call.get("index")
        position = position if type(position) is int else 0  # as the provider reads a choice's
        if position == self.live:
            return "live"
        if self.live is None:
            self.live = position
            return "open"
        function = function_of(call)
        held = self.held.get(position)
        if held is None:
            held = self.held[position] = HeldCall(_string(call.get("id")), _string(function.get("name")))
        held.id = held.id or _string(call.get("id"))
        held.name = held.name or _string(function.get("name"))
        held.arguments += arguments_text(function.get("arguments"))
        return "held"

    def holds_text(self, text: str, kind: Kind = "text") -> bool:
        """Whether ``text`` must wait (a call is being streamed); if so it is kept in ``text``."""
        if self.live is None:
            return False
        if self.text and self.text[-1][0] == kind:
            self.text[-1] = (kind, self.text[-1][1] + text)
        else:
            self.text.append((kind, text))
        return True


def calls_of(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The tool calls of an answer's message or a stream's delta: the objects among them."""
    calls = message.get("tool_calls")
    return [call for call in calls if isinstance(call, dict)] if isinstance(calls, list) else []


def function_of(call: Mapping[str, Any]) -> dict[str, Any]:
    function = call.get("function")
    return function if isinstance(function, dict) else {}


def arguments_text(arguments: Any) -> str:
    """A call's arguments as the JSON text both APIs carry: as sent where text, the JSON of what
    some servers send as an object."""
    if arguments is None or isinstance(arguments, str):
        return arguments or ""
    return orjson.dumps(arguments).decode()


def text_of(message: Mapping[str, Any]) -> str:
    """The text of an answer's message or a stream's delta: its content, or its parts' texts."""
    return content_text(message.get("content"))


def pieces_of(message: Mapping[str, Any]) -> list[tuple[Kind, str]]:
    """What an answer's message or a stream's delta says, by kind, the empty left out."""
    said = {"reasoning": _reasoning(message), "text": text_of(message), "refusal": _string(message.get("refusal"))}
    return [(kind, said[kind]) for kind in KINDS if said[kind]]


def _reasoning(message: Mapping[str, Any]) -> str:
    return _string(message.get("reasoning_content")) or _string(message.get("reasoning"))


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""
