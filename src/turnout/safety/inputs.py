"""A request's untrusted texts, by channel, as the doors hand them to screening.

* chat completions: each ``user`` message is the ``user`` channel, each ``tool`` (and legacy
  ``function``) message the ``tool_output`` channel; a message's content is a string or text
  parts. ``system``, ``developer`` and ``assistant`` messages are the application's own.
* the task API: each of ``documents`` is the ``documents`` channel; the string values of
  ``variables`` (nested ones too) are the ``user`` channel: they carry the end user's input.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from turnout.safety.policy import Input
from turnout.safety.screen import Channel

ROLES: dict[str, Channel] = {"user": "user", "tool": "tool_output", "function": "tool_output"}
MAX_DEPTH = 8  # how deep variables are walked for strings


def chat(messages: Sequence[Any]) -> Iterator[Input]:
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        channel = ROLES.get(role) if isinstance(role, str) else None
        if channel is None:
            continue
        content = message.get("content")
        if isinstance(content, str):
            yield Input(channel, f"messages[{i}].content", content)
        elif isinstance(content, list):
            for j, part in enumerate(content):
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str):
                    yield Input(channel, f"messages[{i}].content[{j}].text", text)


def task(variables: Mapping[str, Any], documents: Sequence[str]) -> Iterator[Input]:
    for i, document in enumerate(documents):
        yield Input("documents", f"documents[{i}]", document)
    yield from _strings(variables, "variables", 0)


def _strings(value: Any, where: str, depth: int) -> Iterator[Input]:
    if isinstance(value, str):
        yield Input("user", where, value)
    elif depth >= MAX_DEPTH:
        return
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, f"{where}[{i}]", depth + 1)
