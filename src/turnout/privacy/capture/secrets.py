"""``SecretsOnly``: the redactor for ``full`` mode, which keeps PII but never secrets.

``turnout.privacy.redact.Redactor`` has no secrets-only switch, but each finding it returns carries its
kind, its span in the input and its placeholder, so we redact as usual and then rebuild the
text replacing only the findings of the kinds in ``kinds``. The engine resolves overlaps
before it reports findings, so the kept spans never overlap.

Card numbers are scrubbed too, although the redactor files them under PII: a stored card
number puts the capture file in PCI-DSS scope, which no debugging grant should do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from turnout.privacy.redact.plain import plain

ALWAYS_SCRUBBED = frozenset(
    {
        "PRIVATE_KEY",
        "JWT",
        "API_KEY",
        "AWS_ACCESS_KEY",
        "AWS_SECRET_KEY",
        "BEARER_TOKEN",
        "PASSWORD",
        "SECRET",
        "CARD",
    }
)


class Finding(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def start(self) -> int: ...
    @property
    def end(self) -> int: ...
    @property
    def placeholder(self) -> str: ...


class Findings(Protocol):
    @property
    def text(self) -> str: ...
    @property
    def findings(self) -> Sequence[Finding]: ...


class FindingRedactor(Protocol):
    def redact(self, text: str) -> Findings: ...


@dataclass(frozen=True, slots=True)
class Scrubbed:
    text: str


class SecretsOnly:
    def __init__(self, redactor: FindingRedactor, kinds: frozenset[str] = ALWAYS_SCRUBBED) -> None:
        self.redactor = redactor
        self.kinds = kinds

    def redact(self, text: str) -> Scrubbed:
        text = plain(text)  # the findings' offsets are the plain text's (the engine reads it so)
        found = sorted((f for f in self.redactor.redact(text).findings if f.kind in self.kinds), key=lambda f: f.start)
        if not found:
            return Scrubbed(text)
        parts: list[str] = []
        pos = 0
        for f in found:
            if f.start < pos:  # overlapping: the engine should never report it; keep the first
                continue
            parts += (text[pos : f.start], f.placeholder)
            pos = f.end
        parts.append(text[pos:])
        return Scrubbed("".join(parts))
