"""Text as the detectors read it: the same characters a person reads, written plainly. A card
number with no-break spaces between its groups (pasted from a PDF or a web page), an email or a
key in fullwidth letters, a zero-width space inside a secret, ``\\u0040`` for ``@`` in a tool
call's JSON arguments: each read as plain text is what the PII and secret patterns match, and
without this each passed classification, the output checks and capture's redaction."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator

from turnout.safety.normalize import INVISIBLE

# What renders as nothing (zero-width characters, the soft hyphen, bidi controls): the screener's
# set, out; and the one space separator NFKC leaves (Ogham's), a space.
_CLEAN: dict[int, str | None] = {**dict.fromkeys(map(ord, INVISIBLE)), 0x1680: " "}
_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


def needs_plain(text: str) -> bool:
    return not text.isascii() or "\\u" in text


def plain(text: str) -> str:
    """``text`` with JSON ``\\uXXXX`` escapes read, NFKC applied (fullwidth letters and digits,
    other scripts' digits stay as digits the patterns take), invisible characters removed and
    every Unicode space a plain space. ASCII text without escapes comes back as it is."""
    if not needs_plain(text):
        return text
    if "\\u" in text:
        text = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)
    return unicodedata.normalize("NFKC", text).translate(_CLEAN)  # NFKC makes other spaces plain


def read_plainly(items: Iterable[str]) -> Iterator[str]:
    """Each text as written and, where reading it plainly changes it, that too."""
    for text in items:
        yield text
        if needs_plain(text) and (read := plain(text)) != text:
            yield read
