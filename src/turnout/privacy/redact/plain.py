"""Text as the detectors read it: the same characters a person reads, written plainly. A card
number with no-break spaces between its groups (pasted from a PDF or a web page), an email or a
key in fullwidth letters, a zero-width space inside a secret, ``\\u0040`` for ``@`` in a tool
call's JSON arguments, a card in Arabic-Indic or Devanagari digits, combining marks stacked on its
digits, a Unicode tag or variation selector inside an address: each read as plain text is what
the PII and secret patterns match, and without this each passed classification, the output
checks and capture's redaction."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator

from turnout.safety.normalize import INVISIBLE

# What renders as nothing (zero-width characters, the soft hyphen, bidi controls): the screener's
# set, out; so are Unicode tags and variation selectors, and the combining diacritics NFKC could
# not compose with the letter or digit before them (``4\u0301``). The one space separator NFKC
# leaves (Ogham's), a space; every script's decimal digits (all below U+20000), ASCII digits:
# NFKC folds fullwidth digits but leaves ``٤١١١`` as it is, which the checksums do not read.
_CLEAN: dict[int, str | None] = {
    **dict.fromkeys(map(ord, INVISIBLE)),
    **dict.fromkeys(range(0xE0000, 0xE0080)),  # tags
    **dict.fromkeys(range(0xFE00, 0xFE10)),  # variation selectors
    **dict.fromkeys(range(0xE0100, 0xE01F0)),  # variation selectors supplement
    **dict.fromkeys(range(0x0300, 0x0370)),  # combining diacritics
    0x1680: " ",
    **{cp: str(unicodedata.decimal(chr(cp))) for cp in range(0x80, 0x20000) if chr(cp).isdecimal()},
}
_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


def needs_plain(text: str) -> bool:
    return not text.isascii() or "\\u" in text


def plain(text: str) -> str:
    """``text`` with JSON ``\\uXXXX`` escapes read, NFKC applied (fullwidth letters and digits),
    every script's digits ASCII, invisible characters and uncomposed combining marks removed and
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
