"""The scorer interface and its registry.

A scorer is one small class::

    @register
    class StartsWith(Scorer):
        name = "starts_with"

        def check(self, args: Mapping[str, Any]) -> list[str]:     # optional: load-time checks
            return [] if isinstance(args.get("value"), str) else ["'value' must be a string"]

        async def score(self, output: str, case: Case, args: Mapping[str, Any]) -> Score:
            ok = output.startswith(args["value"])
            return Score(ok, 1.0 if ok else 0.0, "" if ok else f"does not start with {args['value']!r}")

``args`` are the expectation's other keys (``{"scorer": "starts_with", "value": "Dear"}``).
A case passes when every one of its expectations passes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from turnout._support.printable import printable
from turnout._support.suggest import nearest

if TYPE_CHECKING:
    from turnout.offline.evals.cases import Case

# An LLM judge: (prompt, target name) → the judge's reply text. The runner's caller wires it to
# turnout's own request path.
JudgeFn = Callable[[str, str], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Score:
    passed: bool
    value: float | None = None  # a number the scorer measured (similarity, extracted value…), if any
    detail: str = ""  # why it failed, or what it saw; short

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "value": self.value, "detail": self.detail}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Score:
        return cls(bool(d["passed"]), d.get("value"), str(d.get("detail", "")))


class Scorer:
    """Base class: set ``name``, implement ``score``; override ``check`` to reject bad arguments
    when the golden set is loaded rather than halfway through a run. ``arguments``: every key an
    expectation may give it; any other is refused at load, since a misspelt one (``ignore_cases``)
    would silently change what it checks (None: any key, unchecked)."""

    name: ClassVar[str]
    arguments: ClassVar[tuple[str, ...] | None] = None

    def check(self, args: Mapping[str, Any]) -> list[str]:
        return []

    async def score(self, output: str, case: Case, args: Mapping[str, Any]) -> Score:
        raise NotImplementedError


def argument_problems(scorer: Scorer, args: Mapping[str, Any]) -> list[str]:
    """What is wrong with an expectation's arguments: one the scorer does not take, then its checks."""
    known = scorer.arguments
    unknown = [] if known is None else [k for k in args if k not in known]
    return [
        f"unknown argument {printable(k)!r}{nearest(k, known or ())}; {scorer.name} takes {', '.join(known or ())}"
        for k in unknown
    ] + scorer.check(args)


S = TypeVar("S", bound=type[Scorer])

REGISTRY: dict[str, type[Scorer]] = {}


def register(cls: S) -> S:
    """Class decorator: make a scorer available by its ``name`` in golden sets."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a non-empty class attribute 'name'")
    if name in REGISTRY and REGISTRY[name] is not cls:
        raise ValueError(f"scorer {name!r} is already registered by {REGISTRY[name].__name__}")
    REGISTRY[name] = cls
    return cls


async def score_case(output: str, case: Case, scorers: Mapping[str, Scorer]) -> tuple[tuple[Score, ...], bool]:
    """Every expectation of the case against one output. A scorer that raises fails its
    expectation (with the error as detail) rather than the whole run."""
    scores: list[Score] = []
    for exp in case.expect:
        scorer = scorers.get(exp.scorer)
        if scorer is None:
            scores.append(Score(False, None, f"unknown scorer {exp.scorer!r}"))
            continue
        try:
            scores.append(await scorer.score(output, case, exp.args))
        except Exception as exc:  # a scorer bug must not sink the run
            scores.append(Score(False, None, f"scorer {exp.scorer} failed: {type(exc).__name__}: {exc}"))
    return tuple(scores), all(s.passed for s in scores)
