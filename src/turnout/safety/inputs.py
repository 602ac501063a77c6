"""A request's untrusted texts, by channel, as the doors hand them to screening.

* chat completions: each ``user`` message is the ``user`` channel, each ``tool`` (and legacy
  ``function``) message the ``tool_output`` channel; a message's content is a string or parts,
  and every text a part carries is read: its ``text``, its ``refusal``, and a ``file`` part's
  ``file_data`` where it is a text data URL (``text/*``, JSON, XML, YAML; base64 decoded; a file
  of another type is not decoded). ``system``, ``developer`` and ``assistant`` messages are the
  application's own.
* the task API: each of ``documents`` is the ``documents`` channel; every string in
  ``variables``, however deep and object keys included, is the ``user`` channel: they carry the
  end user's input, and a template writes a list or dict variable out whole.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import unquote_to_bytes

from turnout.safety.policy import Input
from turnout.safety.screen import Channel

ROLES: dict[str, Channel] = {"user": "user", "tool": "tool_output", "function": "tool_output"}
MAX_KEY_CHARS = 64  # a longer key of the caller's is not echoed in a refusal's param
_PART_TEXTS = ("text", "refusal")  # a content part's own texts, whatever its type
_TEXT_MEDIA = ("application/json", "application/xml", "application/yaml", "application/x-yaml", "application/x-ndjson")


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
                if isinstance(part, dict):
                    yield from _part(part, channel, f"messages[{i}].content[{j}]")


def _part(part: Mapping[str, Any], channel: Channel, where: str) -> Iterator[Input]:
    for key in _PART_TEXTS:
        text = part.get(key)
        if isinstance(text, str):
            yield Input(channel, f"{where}.{key}", text)
    file = part.get("file")
    data = file.get("file_data") if isinstance(file, dict) else None
    if isinstance(data, str):
        text = text_data_url(data)
        if text is not None:
            yield Input(channel, f"{where}.file.file_data", text)


def text_data_url(url: str) -> str | None:
    """The text a ``data:`` URL carries when its media type is text (``text/*``, JSON, XML, YAML),
    base64 or percent-encoded; None for another type, another URL or data that does not decode
    (the upstream will not read it as text either)."""
    head, comma, payload = url.partition(",")
    if not comma or head[:5].lower() != "data:":
        return None
    params = [p.strip().lower() for p in head[5:].split(";")]
    media = params[0] or "text/plain"  # RFC 2397: a data URL without a type is text
    if not (media.startswith("text/") or media in _TEXT_MEDIA or media.endswith(("+json", "+xml"))):
        return None
    try:
        if "base64" in params[1:]:
            payload = "".join(payload.split())
            data = base64.b64decode(payload + "=" * (-len(payload) % 4))
        else:
            data = unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        return None
    charset = next((p.removeprefix("charset=") for p in params[1:] if p.startswith("charset=")), "utf-8")
    try:
        return data.decode(charset, errors="replace")
    except (LookupError, UnicodeError):  # no codec by that name, or none of text (rot13, hex, zlib, idna)
        return data.decode("utf-8", errors="replace")


def task(variables: Mapping[str, Any], documents: Sequence[str]) -> Iterator[Input]:
    for i, document in enumerate(documents):
        yield Input("documents", f"documents[{i}]", document)
    for where, text in _strings(variables, "variables"):
        yield Input("user", where, text)


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """Every text of a JSON value, however deep (the body's nesting is bounded where it is read;
    no recursion here), in the order sent, with where it is: object keys included, since a
    template writes a dict's keys as it writes its values. A key the caller chose is named in the
    ``param`` only when it is a short identifier (the refusal never echoes the text it refused);
    any other entry is named by its position, ``where.#N``."""
    stack: list[tuple[str, Any]] = [(where, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            yield where, item
        elif isinstance(item, Mapping):
            for i, (key, nested) in reversed(list(enumerate(item.items()))):
                path = _entry(where, key, i)
                stack += ((path, nested), (path, key))  # the key is read first
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", nested) for i, nested in reversed(list(enumerate(item))))


def _entry(where: str, key: Any, i: int) -> str:
    named = isinstance(key, str) and key.isidentifier() and len(key) <= MAX_KEY_CHARS
    return f"{where}.{key}" if named else f"{where}.#{i}"
