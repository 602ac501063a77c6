"""Names a client chose (a task that does not exist, an episode id), made safe to keep and to
print: control characters (ESC, BEL, CR, LF, the C1 range) would let a caller drive an
operator's terminal or forge report and log lines, and a name of half a megabyte would break
every table it lands in."""

from __future__ import annotations

import re

MAX_CHARS = 100
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str, limit: int = MAX_CHARS) -> str:
    """``text`` with each control character as ``?`` and at most ``limit`` characters (the cut
    marked with ``…``); text that needs neither comes back as it is."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return _CONTROL.sub("?", text) if _CONTROL.search(text) else text
