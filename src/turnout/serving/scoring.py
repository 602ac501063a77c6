"""Live scoring: a share of each task's answers (``tasks.T.scoring: {rate, scorers}``) scored
with the golden sets' reference-free scorers (``turnout.offline.evals.scorers``), after the
answer has gone out and before its ledger row is written.

    draw(task)      at admission: None (the task scores nothing, or this request was not
                    drawn) or the task's scorers; a drawn request collects its answer's text
    passes(text)    every scorer's verdict on the text: True only when all pass; a scorer that
                    raises fails (its error class is logged, never the text)

The verdict goes to the row (``live_pass``), and from there to ``/metrics``
(``turnout_live_scores_total``), ``turnout report quality`` and the canary's
``min_live_pass_rate``. Each scorer's arguments are checked at start-up (``ConfigError`` with the
key path), as ``turnout check`` checks them.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from turnout.config import Config
from turnout.errors import ConfigError
from turnout.offline.evals.cases import Case
from turnout.offline.evals.scorers import Equals  # noqa: F401  (registers the deterministic scorers)
from turnout.offline.evals.scoring import REGISTRY, Scorer, argument_problems

log = logging.getLogger(__name__)

_CASE = Case(id="live", expect=())  # the scorers read their arguments, never the case


@dataclass(frozen=True, slots=True)
class TaskScorers:
    task: str
    rate: float
    checks: tuple[tuple[Scorer, Mapping[str, Any]], ...]

    async def passes(self, text: str) -> bool:
        for scorer, args in self.checks:
            try:
                verdict = await scorer.score(text, _CASE, args)
            except Exception as exc:  # a scorer's bug fails the answer, and says so
                log.warning("live scoring of task %s: %s raised %s", self.task, scorer.name, type(exc).__name__)
                return False
            if not verdict.passed:
                return False
        return True


class LiveScoring:
    def __init__(self, config: Config, rng: random.Random | None = None) -> None:
        self.tasks = build(config)
        self.rng = rng or random.Random()

    def draw(self, task: str) -> TaskScorers | None:
        found = self.tasks.get(task)
        if found is None or self.rng.random() >= found.rate:
            return None
        return found


def build(config: Config) -> dict[str, TaskScorers]:
    """Each scoring task's scorers, their arguments checked; ``ConfigError`` with every problem."""
    out: dict[str, TaskScorers] = {}
    problems: list[str] = []
    for name, task in config.tasks.items():
        if task.scoring is None:
            continue
        checks = []
        for i, spec in enumerate(task.scoring.scorers):
            args = {k: v for k, v in spec.items() if k != "scorer"}
            scorer = REGISTRY[spec["scorer"]]()  # the config allows only registered, live ones
            found = argument_problems(scorer, args)
            problems += [f"tasks.{name}.scoring.scorers[{i}]: {p}" for p in found]
            checks.append((scorer, args))
        out[name] = TaskScorers(name, task.scoring.rate, tuple(checks))
    if problems:
        raise ConfigError(problems)
    return out
