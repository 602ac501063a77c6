"""Span-level precision and recall of a redactor against labelled texts.

Matching is by overlap within a kind: a found span is a true positive when it overlaps an
expected span of the same kind, otherwise a false positive; an expected span that no found
span of its kind overlaps is a false negative. Overlap (not exact bounds) because what matters
is that the value is gone, and ``password: hunter2`` vs ``hunter2`` is a labelling choice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from turnout.privacy.redact.engine import Redactor


@dataclass
class Tally:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


@dataclass
class Score:
    by_kind: dict[str, Tally] = field(default_factory=dict)
    overall: Tally = field(default_factory=Tally)
    misses: list[tuple[str, str, str]] = field(default_factory=list)  # (row id, "fp"/"fn", kind)

    def add(self, kind: str, outcome: str, row_id: str) -> None:
        for tally in (self.by_kind.setdefault(kind, Tally()), self.overall):
            setattr(tally, outcome, getattr(tally, outcome) + 1)
        if outcome != "tp":
            self.misses.append((row_id, outcome, kind))


def score(redactor: Redactor, rows: Iterable[Mapping[str, Any]]) -> Score:
    """Rows are ``{"id", "text", "spans": [{"kind", "start", "end"}, ...]}``."""
    result = Score()
    for row in rows:
        expected = [(s["start"], s["end"], s["kind"]) for s in row["spans"]]
        found = [(f.start, f.end, f.kind) for f in redactor.redact(row["text"]).findings]
        for start, end, kind in found:
            hit = any(k == kind and s < end and start < e for s, e, k in expected)
            result.add(kind, "tp" if hit else "fp", row["id"])
        for start, end, kind in expected:
            if not any(k == kind and s < end and start < e for s, e, k in found):
                result.add(kind, "fn", row["id"])
    return result
