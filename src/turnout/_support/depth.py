"""How deep JSON may nest: orjson reads 1024 levels but writes only 254, so a value read from a
client or an upstream can fail when the gateway writes it out again. ``too_deep`` asks the
writer itself (at C speed; a walk in Python costs 30 times more)."""

from __future__ import annotations

from typing import Any

import orjson

WRITER_DEPTH = 254  # how deep orjson writes


def too_deep(value: Any, levels: int) -> bool:
    """Whether ``value`` nests deeper than ``levels``: wrapped in enough lists to leave it only
    ``levels``, can the writer still take it?"""
    for _ in range(WRITER_DEPTH - levels):
        value = [value]
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return True
    return False


def brackets(raw: bytes | bytearray) -> int:
    """An upper bound on how deep ``raw`` nests, cheap enough to skip the real check."""
    return raw.count(b"[") + raw.count(b"{")
