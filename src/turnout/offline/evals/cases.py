"""Golden sets: ``evals/<task>.jsonl``, one case per line::

    {"id": "order-1", "variables": {"text": "Order A-17, two mugs"},
     "expect": [{"scorer": "json_schema", "schema": {...}},
                {"scorer": "required_fields", "values": {"order_id": "A-17"}}],
     "tags": ["extraction", "easy"]}

A case gives either ``variables`` (rendered by the release's prompt template) or ``messages``
(sent as they are), one or more expectations (each names a scorer; its other keys are the
scorer's arguments), optional ``tags`` and optional free-form ``metadata``. Blank lines and lines
starting with ``//`` are skipped. Every problem is reported with its line number, all at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from turnout.config import not_utf8
from turnout.errors import TurnoutError
from turnout.offline.evals.scoring import REGISTRY, Scorer, argument_problems

_KEYS = {"id", "variables", "messages", "expect", "tags", "metadata"}
_MAX_PROBLEMS = 50


class GoldenSetError(TurnoutError):
    """A golden set failed to load; ``problems`` holds one ``file:line: message`` per issue."""

    def __init__(self, source: str, problems: list[str]) -> None:
        shown = problems[:_MAX_PROBLEMS]
        more = f"\n  … and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        super().__init__(f"invalid golden set {source}:\n" + "\n".join(f"  {p}" for p in shown) + more)
        self.source = source
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Expectation:
    scorer: str
    args: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"scorer": self.scorer, **self.args}


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    expect: tuple[Expectation, ...]
    variables: dict[str, Any] | None = None
    messages: list[dict[str, Any]] | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    line: int = 0  # where it came from, for messages

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id}
        if self.variables is not None:
            d["variables"] = self.variables
        if self.messages is not None:
            d["messages"] = self.messages
        d["expect"] = [e.to_dict() for e in self.expect]
        d["tags"] = list(self.tags)
        if self.metadata:
            d["metadata"] = self.metadata
        d["line"] = self.line
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Case:
        return cls(
            id=d["id"],
            expect=tuple(_expectation(e) for e in d["expect"]),
            variables=d.get("variables"),
            messages=d.get("messages"),
            tags=tuple(d.get("tags", ())),
            metadata=dict(d.get("metadata", {})),
            line=int(d.get("line", 0)),
        )


def golden_set_path(evals_path: str | Path, task: str) -> Path:
    return Path(evals_path) / f"{task}.jsonl"


def load_cases(path: str | Path, scorers: Mapping[str, Scorer] | None = None) -> list[Case]:
    """Read and check a golden set. ``scorers`` (name → instance) decides which scorer names are
    known and checks their arguments; by default every registered scorer."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise GoldenSetError(str(p), [f"{p}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise GoldenSetError(str(p), [not_utf8(p, exc)]) from None
    return parse_cases(text.splitlines(), source=str(p), scorers=scorers)


def parse_cases(
    lines: Iterable[str], *, source: str = "<golden set>", scorers: Mapping[str, Scorer] | None = None
) -> list[Case]:
    known = scorers if scorers is not None else {name: cls() for name, cls in REGISTRY.items()}
    cases: list[Case] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(lines, start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("//"):
            continue
        where = f"{source}:{lineno}"
        try:
            obj = orjson.loads(stripped)
        except orjson.JSONDecodeError as exc:
            problems.append(f"{where}: not valid JSON: {exc}")
            continue
        case_problems: list[str] = []
        case = _case(obj, lineno, known, case_problems)
        if case is not None and case.id in seen:
            case_problems.append(f"duplicate id {case.id!r} (first on line {seen[case.id]})")
        problems.extend(f"{where}: {msg}" for msg in case_problems)
        if case is not None and not case_problems:
            seen[case.id] = lineno
            cases.append(case)
    if not cases and not problems:
        problems.append(f"{source}: no cases")
    if problems:
        raise GoldenSetError(source, problems)
    return cases


def _case(obj: Any, lineno: int, known: Mapping[str, Scorer], problems: list[str]) -> Case | None:
    if not isinstance(obj, dict):
        problems.append(f"a case must be a JSON object, not {type(obj).__name__}")
        return None
    unknown = sorted(set(obj) - _KEYS)
    if unknown:
        problems.append(f"unknown keys {unknown} (allowed: {sorted(_KEYS)})")
    case_id = obj.get("id")
    if not isinstance(case_id, str) or not case_id:
        problems.append("'id' must be a non-empty string")
    variables, messages = obj.get("variables"), obj.get("messages")
    if (variables is None) == (messages is None):
        problems.append("give exactly one of 'variables' or 'messages'")
    if variables is not None and not isinstance(variables, dict):
        problems.append("'variables' must be an object")
    if messages is not None:
        problems.extend(_message_problems(messages))
    tags = obj.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        problems.append("'tags' must be a list of strings")
    metadata = obj.get("metadata", {})
    if not isinstance(metadata, dict):
        problems.append("'metadata' must be an object")
    expect = _expectations(obj.get("expect"), known, problems)
    if problems or not isinstance(case_id, str):
        return None
    return Case(
        id=case_id,
        expect=expect,
        variables=variables,
        messages=messages,
        tags=tuple(tags),
        metadata=metadata,
        line=lineno,
    )


def _message_problems(messages: Any) -> list[str]:
    if not isinstance(messages, list) or not messages:
        return ["'messages' must be a non-empty list"]
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            out.append(f"messages[{i}] must be an object with 'role' and 'content'")
    return out


def _expectations(raw: Any, known: Mapping[str, Scorer], problems: list[str]) -> tuple[Expectation, ...]:
    if not isinstance(raw, list) or not raw:
        problems.append("'expect' must be a non-empty list of expectations")
        return ()
    out: list[Expectation] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("scorer"), str):
            problems.append(f"expect[{i}] must be an object with a 'scorer' name")
            continue
        exp = _expectation(item)
        scorer = known.get(exp.scorer)
        if scorer is None:
            problems.append(f"expect[{i}]: unknown scorer {exp.scorer!r} (known: {', '.join(sorted(known))})")
            continue
        problems.extend(f"expect[{i}] ({exp.scorer}): {msg}" for msg in argument_problems(scorer, exp.args))
        out.append(exp)
    return tuple(out)


def _expectation(item: Mapping[str, Any]) -> Expectation:
    return Expectation(str(item["scorer"]), {k: v for k, v in item.items() if k != "scorer"})
