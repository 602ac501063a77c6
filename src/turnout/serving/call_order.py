"""A chat stream's tool calls in an order the translated APIs can write: one after another.

An OpenAI-compatible upstream may interleave its calls' deltas by ``index`` (call 0's name and
first arguments, call 1's, then more of call 0's). Anthropic's content blocks and the Responses
API's output items are written one at a time, each started, filled and finished before the next,
and a call is finished only when the stream is (until then more of its arguments may come). So
the first call streams as it comes and stays open to the end; a call that starts while it is
open, and any text that comes after it, are held and written whole at the end, in the order they
started. An upstream that sends its calls one after another loses nothing but the streaming of
the calls after the first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Place = Literal["open", "live", "held"]


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
        self.text: list[str] = []  # text that came while it was open

    def place(self, call: Mapping[str, Any]) -> Place:
        position = call.get("index", 0)
        if position == self.live:
            return "live"
        if self.live is None:
            self.live = position
            return "open"
        function = call.get("function") or {}
        held = self.held.get(position)
        if held is None:
            held = self.held[position] = HeldCall(call.get("id") or "", function.get("name") or "")
        held.id = held.id or call.get("id") or ""
        held.name = held.name or function.get("name") or ""
        held.arguments += function.get("arguments") or ""
        return "held"

    def holds_text(self, text: str) -> bool:
        """Whether ``text`` must wait (a call is being streamed); if so it is kept in ``text``."""
        if self.live is None:
            return False
        self.text.append(text)
        return True
