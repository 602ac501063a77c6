"""llama-cpp-python's stream chunks in OpenAI's shape.

llama-cpp-python's tool-call handlers repeat a call's ``id``, ``type`` and ``function.name``
in every delta and add a legacy ``function_call`` beside ``tool_calls``; a client that
accumulates the deltas as the ``openai`` SDK does (strings concatenated) would read the name
``get_weatherget_weather...``. OpenAI's shape: the first delta of a call carries ``index``,
``id``, ``type``, ``function.name`` and ``function.arguments`` (maybe empty); later ones carry
``index`` and an ``arguments`` fragment only; no ``function_call`` (turnout never passes the
legacy ``functions`` on, so any ``function_call`` is llama.cpp's duplicate of a tool call).
"""

from __future__ import annotations

from typing import Any


class ToolDeltas:
    """One stream's chunks reshaped, in order: remembers which calls have begun."""

    __slots__ = ("_begun",)

    def __init__(self) -> None:
        self._begun: set[tuple[Any, Any]] = set()  # (choice index, call index)

    def __call__(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """``chunk`` reshaped in place (it is the worker's own dict) and returned."""
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            delta.pop("function_call", None)
            calls = delta.get("tool_calls")
            if calls is None:
                delta.pop("tool_calls", None)
                continue
            if isinstance(calls, list):
                delta["tool_calls"] = [self._call(choice.get("index", 0), call) for call in calls]
        return chunk

    def _call(self, choice: Any, call: Any) -> Any:
        if not isinstance(call, dict):
            return call
        fn = call.get("function")
        if not isinstance(fn, dict):
            fn = {}
        arguments = fn.get("arguments") or ""
        key = (choice, call.get("index", 0))
        if key in self._begun:
            return {"index": key[1], "function": {"arguments": arguments}}
        self._begun.add(key)
        return {
            "index": key[1],
            "id": call.get("id"),
            "type": call.get("type") or "function",
            "function": {"name": fn.get("name"), "arguments": arguments},
        }
