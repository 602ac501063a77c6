"""A provider that plays a script: for fault injection in in-process tests of the attempt loop
and the API. Each call takes the next step (the last one repeats)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from turnout.providers.base import Call, Completion, Health, Load, Stream, Usage


@dataclass
class Step:
    error: Exception | None = None
    text: str = "hello from the fake"
    fail_after: int | None = None  # stream: raise ``error`` after this many chunks
    delay: float = 0.0
    model_version: str = "fake-v1"  # what the upstream says answered (its body's "model")


def completion_body(text: str, model: str = "fake-model") -> dict[str, Any]:
    return {
        "id": "upstream-id",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }


class ScriptedProvider:
    def __init__(self, name: str, *steps: Step) -> None:
        self.name = name
        self.steps = list(steps) or [Step()]
        self.calls: list[Call] = []
        self.closed_streams = 0
        self.healthy = True

    def _next(self) -> Step:
        return self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]

    async def complete(self, call: Call) -> Completion:
        self.calls.append(call)
        step = self._next()
        await asyncio.sleep(step.delay)
        if step.error is not None:
            raise step.error
        return Completion(completion_body(step.text), Usage(7, 3), step.model_version, "r0")

    async def stream(self, call: Call) -> Stream:
        self.calls.append(call)
        step = self._next()
        await asyncio.sleep(step.delay)
        if step.error is not None and step.fail_after is None:
            raise step.error
        return Stream(self._chunks(step), step.model_version, "r0")

    async def _chunks(self, step: Step) -> AsyncGenerator[dict[str, Any]]:
        try:
            words = step.text.split()
            for i, word in enumerate(words):
                if step.fail_after is not None and i >= step.fail_after and step.error is not None:
                    raise step.error
                delta = {"content": word + " "} if i else {"role": "assistant", "content": word + " "}
                yield {
                    "id": "u",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": "fake-model",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                }
                await asyncio.sleep(0)
            yield {
                "id": "u",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "fake-model",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            }
            yield {
                "id": "u",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "fake-model",
                "choices": [],
                "usage": {"prompt_tokens": 7, "completion_tokens": len(words), "total_tokens": 7 + len(words)},
            }
        finally:
            self.closed_streams += 1

    def load(self) -> Load:
        return Load()

    async def health(self) -> Health:
        return Health(self.healthy, "" if self.healthy else "scripted down")

    async def aclose(self) -> None:
        return None
