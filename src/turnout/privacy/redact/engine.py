"""The redactor: find sensitive values, resolve overlaps, replace each by a typed placeholder.

A placeholder is ``[KIND_xxxxxxxx]``: the kind, then the first eight hex digits of
HMAC-SHA256(key, value). The same value gets the same placeholder within a text and, under the
same key, across texts (so a ledger reader can see "the same card twice" without seeing it);
without the key the digits say nothing about the value, and 32 bits are far too few to
recover it even with the key. Texts already holding placeholders are left as they are, which
makes ``redact`` idempotent.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from turnout.privacy.redact.patterns import DETECTORS, KINDS, PRIORITY, Span, lowered
from turnout.privacy.redact.plain import plain

DIGEST_CHARS = 8
MIN_KEY_BYTES = 16
_MAX_PASSES = 4  # a pass can uncover another (context that a replaced value hid); rarely more than 2

PLACEHOLDER = re.compile(r"\[(?:" + "|".join(KINDS) + r")_[0-9a-f]{" + str(DIGEST_CHARS) + r"}\]")


@dataclass(frozen=True, slots=True)
class Finding:
    """One replaced value: its kind, its span in the input text and its placeholder. The value
    itself is deliberately not kept."""

    kind: str
    start: int
    end: int
    placeholder: str


@dataclass(frozen=True, slots=True)
class Redacted:
    text: str
    findings: tuple[Finding, ...]

    def __str__(self) -> str:
        return self.text


class Redactor:
    """Replaces secrets and PII in text with keyed pseudonyms. Thread-safe; keep one per process."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the redaction key needs at least {MIN_KEY_BYTES} bytes")
        self._mac = hmac.new(key, digestmod=hashlib.sha256)

    def __repr__(self) -> str:
        return "Redactor(key=<hidden>)"

    def placeholder(self, kind: str, value: str) -> str:
        mac = self._mac.copy()
        mac.update(value.encode("utf-8", "surrogatepass"))
        return f"[{kind}_{mac.hexdigest()[:DIGEST_CHARS]}]"

    def redact(self, text: str) -> Redacted:
        # Read plainly first (``plain``): a card with no-break spaces or a fullwidth email is
        # found and replaced; what is kept is that plain text.
        text = plain(text)
        spans = _detect(text)
        if not spans:
            return Redacted(text, ())
        spans = _propagate(text, spans)
        for _ in range(_MAX_PASSES):
            out, moves = self._render(text, spans)
            more = [_to_input(s, moves) for s in _detect(out)]
            if not more:
                break
            spans = _propagate(text, sorted(spans + more))
        else:
            out, moves = self._render(text, spans)
        findings = tuple(Finding(kind, s, e, self.placeholder(kind, text[s:e])) for s, e, kind in spans)
        return Redacted(out, findings)

    def redact_mapping(self, obj: Any) -> Any:
        """A copy of a JSON-like structure (dicts, lists, tuples) with every string leaf redacted;
        keys and non-string leaves are kept."""
        if isinstance(obj, str):
            return self.redact(obj).text
        if isinstance(obj, dict):
            return {k: self.redact_mapping(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.redact_mapping(v) for v in obj]
        if isinstance(obj, tuple):
            return tuple(self.redact_mapping(v) for v in obj)
        return obj

    def _render(self, text: str, spans: list[Span]) -> tuple[str, list[tuple[int, int, int]]]:
        """The text with spans replaced, and for each replacement (input end, output start, output end)."""
        parts: list[str] = []
        moves: list[tuple[int, int, int]] = []
        pos = out_len = 0
        for start, end, kind in spans:
            parts.append(text[pos:start])
            out_len += start - pos
            ph = self.placeholder(kind, text[start:end])
            parts.append(ph)
            moves.append((end, out_len, out_len + len(ph)))
            out_len += len(ph)
            pos = end
        parts.append(text[pos:])
        return "".join(parts), moves


def redact_mapping(obj: Any, redactor: Redactor) -> Any:
    return redactor.redact_mapping(obj)


def masked(text: str) -> str:
    """``text`` read plainly with each detected secret or PII value as ``[KIND]``: for a name a
    client chose that is kept where no key is at hand (an unknown task's, in the ledger)."""
    text = plain(text)
    spans = _detect(text)
    for start, end, kind in reversed(spans):
        text = f"{text[:start]}[{kind}]{text[end:]}"
    return text


# A JSON string's two-character escapes. A captured prompt is its messages as JSON, so a quoted
# password reads ``password: \"Hunter2!\"`` and a number on a new line ``at\n(415) 555-0132``:
# the patterns saw a backslash before the value, or a word character (``n``) where a number must
# not follow one, and kept both. They read each escape as a blank of the same length (``\"`` as
# `` "``, ``\n`` as a space and a line break): every span is still the text's own.
_JSON_ESCAPE = re.compile(r'\\(["\\/bfnrt])')
_BLANKS = {'"': ' "', "n": " \n", "r": " \r"}


def _blank(m: re.Match[str]) -> str:
    return _BLANKS.get(m.group(1), "  ")


def _detect(text: str) -> list[Span]:
    """Non-overlapping spans sorted by start: most specific kind first, then the longest; spans that
    touch an existing placeholder are dropped."""
    if len(text) < 4:
        return []
    if "\\" in text:
        text = _JSON_ESCAPE.sub(_blank, text)
    lower = lowered(text)
    candidates = [span for detector in DETECTORS for span in detector(text, lower)]
    if not candidates:
        return []
    taken: list[tuple[int, int]] = [m.span() for m in PLACEHOLDER.finditer(text)] if "_" in text else []
    taken.sort()
    kept: list[Span] = []
    for span in sorted(candidates, key=lambda s: (PRIORITY[s[2]], s[0] - s[1], s[0])):
        if span[0] < span[1] and not _overlaps(taken, span[0], span[1]):
            bisect.insort(taken, (span[0], span[1]))
            kept.append(span)
    kept.sort()
    return kept


def _overlaps(taken: list[tuple[int, int]], start: int, end: int) -> bool:
    i = bisect.bisect_left(taken, (start, start))
    if i < len(taken) and taken[i][0] < end:
        return True
    return i > 0 and taken[i - 1][1] > start


def _to_input(span: Span, moves: list[tuple[int, int, int]]) -> Span:
    """Map a span of the rendered text (outside any placeholder) back to the input text."""
    start, end, kind = span
    i = bisect.bisect_right([m[2] for m in moves], start)
    shift = 0 if i == 0 else moves[i - 1][0] - moves[i - 1][2]
    return start + shift, end + shift, kind


def _propagate(text: str, spans: Iterable[Span]) -> list[Span]:
    """Also replace every other occurrence of a found value, so that no found value survives anywhere
    in the output (a password said twice, an address quoted back)."""
    spans = list(spans)
    taken = sorted((s, e) for s, e, _ in spans)
    values = sorted({(text[s:e], k) for s, e, k in spans if e - s >= 4}, key=lambda v: -len(v[0]))
    for value, kind in values:
        pos = text.find(value)
        while pos != -1:
            end = pos + len(value)
            if not _overlaps(taken, pos, end):
                bisect.insort(taken, (pos, end))
                spans.append((pos, end, kind))
            pos = text.find(value, end)
    spans.sort()
    return spans
