"""A provider whose answers are tool calls, for in-process tests of tool allowlists: each call
takes the next script (the last one repeats), whole or as a stream whose tool-call arguments
arrive in pieces split mid-token, as real servers send them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from turnout.providers.base import Call, Completion, Health, Load, Stream, Usage


@dataclass
class Script:
    calls: list[tuple[str, str]] = field(default_factory=list)  # (name, arguments as sent)
    text: str = ""  # said before the calls (streams: word by word)
    legacy: bool = False  # one function_call instead of tool_calls


def _head(model: str) -> dict[str, Any]:
    return {"id": "up", "object": "chat.completion.chunk", "created": 1, "model": model}


class ToolCaller:
    def __init__(self, name: str, *scripts: Script) -> None:
        self.name = name
        self.scripts = list(scripts) or [Script()]
        self.calls: list[Call] = []
        self.closed_streams = 0

    def _next(self) -> Script:
        return self.scripts.pop(0) if len(self.scripts) > 1 else self.scripts[0]

    async def complete(self, call: Call) -> Completion:
        self.calls.append(call)
        script = self._next()
        message: dict[str, Any] = {"role": "assistant", "content": script.text or None}
        if script.legacy and script.calls:
            name, arguments = script.calls[0]
            message["function_call"] = {"name": name, "arguments": arguments}
        elif script.calls:
            message["tool_calls"] = [
                {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
                for i, (name, arguments) in enumerate(script.calls)
            ]
        body = {
            "id": "up",
            "object": "chat.completion",
            "created": 1,
            "model": self.name,
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if script.calls else "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14},
        }
        return Completion(body, Usage(5, 9), f"{self.name}-v1", "r0")

    async def stream(self, call: Call) -> Stream:
        self.calls.append(call)
        return Stream(self._chunks(self._next()), f"{self.name}-v1", "r0")

    async def _chunks(self, script: Script) -> AsyncGenerator[dict[str, Any]]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**_head(self.name), "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        try:
            yield chunk({"role": "assistant", "content": ""})
            for word in script.text.split():
                yield chunk({"content": word + " "})
                await asyncio.sleep(0)
            for i, (name, arguments) in enumerate(script.calls):
                if script.legacy:
                    yield chunk({"function_call": {"name": name, "arguments": ""}})
                else:
                    head = {"index": i, "id": f"call_{i}", "type": "function"}
                    yield chunk({"tool_calls": [{**head, "function": {"name": name, "arguments": ""}}]})
                half = len(arguments) // 2
                for piece in (arguments[:half], arguments[half:]):
                    if script.legacy:
                        yield chunk({"function_call": {"arguments": piece}})
                    else:
                        yield chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
                    await asyncio.sleep(0)
            yield chunk({}, "tool_calls" if script.calls else "stop")
            yield {**_head(self.name), "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}}
        finally:
            self.closed_streams += 1

    def load(self) -> Load:
        return Load()

    async def health(self) -> Health:
        return Health(True)

    async def aclose(self) -> None:
        return None
