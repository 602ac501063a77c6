"""Names a client chose (a task that does not exist, an episode id), made safe to keep and to
print: control characters (ESC, BEL, CR, LF, the C1 range) would let a caller drive an
operator's terminal or forge report and log lines, Unicode's bidirectional controls (U+202E
right-to-left override, the isolates, the marks) would show a line's text reordered, and a name
of half a megabyte would break every table it lands in. In a CSV file such a name must not be a formula either
(``spreadsheet_text``): ``=HYPERLINK(...)`` runs when the operator opens the report."""

from __future__ import annotations

import re

MAX_CHARS = 100
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what Excel, LibreOffice and Sheets read as a formula


def printable(text: str, limit: int = MAX_CHARS) -> str:
    """``text`` with each control character (bidirectional ones too) as ``?`` and at most ``limit`` characters (the cut
    marked with ``…``); text that needs neither comes back as it is."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return _CONTROL.sub("?", text) if _CONTROL.search(text) else text


def spreadsheet_text(text: str) -> str:
    """``text`` as a CSV cell a spreadsheet shows as text: one that would start a formula gets a
    leading ``'`` (OWASP's advice); others come back as they are."""
    return "'" + text if text.startswith(_FORMULA_START) else text
