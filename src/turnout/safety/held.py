"""A stream whose tool calls are held back until they are complete and checked.

Tool-call deltas (``delta.tool_calls``, legacy ``delta.function_call``) are taken out of the
chunks as they come and put together per choice, as the ``openai`` SDK does (strings
concatenated). When a choice finishes (its ``finish_reason``) or the stream ends, each of its
calls is checked by the request's ``Guard``; all valid, they go out in one chunk, whole, just
before the chunk that finishes the choice. Everything else (text, role, finish, usage) passes
through at once: text is never delayed. A call that is blocked never leaves: the iteration
raises the guard's error.

``hold`` reads ahead until the first chunk that shows the client something (text, a released
call, a finish) or the stream's end, inside the attempt loop: a call blocked by then has not
been seen by anyone, so ``fallback`` can still send the request to the next target. A tool-call
answer has no text, so it is read whole there. After that, a block ends the stream with an
error event (``turnout.serving.respond``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from turnout.providers.base import Chunks, Stream

MAX_CALLS = 128  # calls held in one stream; past it the stream is blocked
MAX_ARGUMENT_CHARS = 1 << 20  # one call's arguments, held; past it the call is blocked
LEGACY = -1  # the index of a choice's legacy function_call


class Checker(Protocol):
    """What holding needs of the request's guard (``turnout.safety.tools.Guard``)."""

    def verify(self, name: Any, arguments: Any, *, relayed: bool) -> None:
        """Raise when the call is blocked."""

    def refuse(self, name: str, detail: str, *, relayed: bool) -> Exception:
        """Record a call blocked as malformed or too large, and the error that says so."""


async def hold(stream: Stream, guard: Checker) -> Stream:
    held = Held(stream.chunks, guard)
    stream.chunks = held  # a stream turned down here is priced by what ``held.taken`` says it made
    ahead: list[dict[str, Any]] = []
    try:
        async for chunk in held:
            ahead.append(chunk)
            if _visible(chunk):
                break
    except BaseException:
        await held.aclose()
        raise
    held.relayed = True
    held.unread(ahead)
    return stream


@dataclass(slots=True)
class _Call:
    id: str = ""
    type: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)
    size: int = 0


class Held:
    """``Chunks`` with their tool-call deltas held (see the module docstring)."""

    __slots__ = ("_chunks", "_ended", "_guard", "_head", "_out", "_pending", "relayed", "taken")

    def __init__(self, chunks: Chunks, guard: Checker) -> None:
        self._chunks = chunks
        self._guard = guard
        self._pending: dict[int, dict[int, _Call]] = {}  # choice index → call index → call so far
        self._out: deque[dict[str, Any]] = deque()
        self._ended = False
        self._head: dict[str, Any] = {}  # the last chunk's id, object, created, model: for released calls
        self.relayed = False  # part of the answer reached the client: no fallback any more
        self.taken: list[str] = []  # the held calls' names and arguments: generated, so paid for

    def __aiter__(self) -> Held:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while not self._out:
            if self._ended:
                raise StopAsyncIteration
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._ended = True
                for choice in list(self._pending):  # a stream that ends without a finish
                    self._release(choice)
                continue
            self._take(chunk)
        return self._out.popleft()

    async def aclose(self) -> None:
        await self._chunks.aclose()

    def unread(self, chunks: list[dict[str, Any]]) -> None:
        self._out.extendleft(reversed(chunks))

    def _take(self, chunk: dict[str, Any]) -> None:
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not any(_holds(c) or _finishes(c) for c in choices):
            self._out.append(chunk)  # the common case: nothing to hold, nothing to release
            return
        self._head = {k: v for k, v in chunk.items() if k not in ("choices", "usage")}
        kept: list[Any] = []
        for choice in choices:
            if not isinstance(choice, dict):
                kept.append(choice)
                continue
            index = choice.get("index", 0) if isinstance(choice.get("index", 0), int) else 0
            delta = choice.get("delta")
            if _holds(choice):
                assert isinstance(delta, dict)
                delta = dict(delta)
                calls = delta.pop("tool_calls", None)
                legacy = delta.pop("function_call", None)
                for part in calls if isinstance(calls, list) else [calls] if calls else []:
                    self._add(index, part)
                if legacy:
                    self._add(index, {"index": LEGACY, "function": legacy})
                choice = {**choice, "delta": delta}
            if _finishes(choice):
                self._release(index)
            if delta or _finishes(choice) or choice.get("logprobs"):
                kept.append(choice)
        if kept or chunk.get("usage") is not None:
            self._out.append({**chunk, "choices": kept})

    def _add(self, choice: int, part: Any) -> None:
        calls = self._pending.setdefault(choice, {})
        raw = part.get("index", 0) if isinstance(part, dict) else 0
        index = raw if isinstance(raw, int) and not isinstance(raw, bool) else 0
        call = calls.get(index)
        if call is None:
            if sum(len(c) for c in self._pending.values()) >= MAX_CALLS:
                raise self._guard.refuse("", f"more than {MAX_CALLS} tool calls in one answer", relayed=self.relayed)
            call = calls[index] = _Call()
        fn = part.get("function") if isinstance(part, dict) else None
        if not isinstance(fn, dict):
            return
        # Strings are concatenated, as the openai SDK accumulates them: what is checked is what
        # the client would have put together.
        for attr, value in (("id", part.get("id")), ("name", fn.get("name"))):
            if isinstance(value, str):
                setattr(call, attr, getattr(call, attr) + value)
        if isinstance(fn.get("name"), str):
            self.taken.append(fn["name"])
        if isinstance(part.get("type"), str):
            call.type = part["type"]
        piece = fn.get("arguments")
        if isinstance(piece, str) and piece:
            call.size += len(piece)
            self.taken.append(piece)
            if call.size > MAX_ARGUMENT_CHARS:
                raise self._guard.refuse(call.name, "the arguments are too large", relayed=self.relayed)
            call.arguments.append(piece)

    def _release(self, choice: int) -> None:
        """Check every call of ``choice``; all valid, queue them as one chunk."""
        calls = self._pending.pop(choice, None)
        if not calls:
            return
        out: dict[str, Any] = {}
        for index in sorted(calls):
            call = calls[index]
            arguments = "".join(call.arguments)
            self._guard.verify(call.name, arguments, relayed=self.relayed)
            function = {"name": call.name, "arguments": arguments}
            if index == LEGACY:
                out["function_call"] = function
            else:
                whole = {"index": index, "id": call.id, "type": call.type or "function", "function": function}
                out.setdefault("tool_calls", []).append(whole)
        self._out.append({**self._head, "choices": [{"index": choice, "delta": out, "finish_reason": None}]})


def _holds(choice: Any) -> bool:
    delta = choice.get("delta") if isinstance(choice, dict) else None
    return isinstance(delta, dict) and (bool(delta.get("tool_calls")) or bool(delta.get("function_call")))


def _finishes(choice: Any) -> bool:
    return isinstance(choice, dict) and choice.get("finish_reason") is not None


def _visible(chunk: dict[str, Any]) -> bool:
    """Whether the client would see something in this chunk beyond its role."""
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if choice.get("finish_reason") is not None:
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict) and any(delta.get(k) for k in ("content", "refusal", "tool_calls", "function_call")):
            return True
    return False
