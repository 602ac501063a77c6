"""Offline evaluation of task releases: golden sets, scorers, paired runs, gates, reports.

    cases.py     golden sets (evals/<task>.jsonl) → Case; GoldenSetError with line numbers
    scoring.py   Score, the Scorer base class, the registry (@register)
    scorers.py   equals, contains, regex, json_schema, required_fields, number_close
    sandbox.py   python_test: the output's code and given tests, jailed, with limits
    jail.py      the bubblewrap jail python_test runs code in; whether it works here
    judge.py     judge: an LLM grades against a rubric, through a callable the caller wires;
                 build_scorers: one instance of every registered scorer
    runner.py    run_eval: both releases on the same cases, concurrency-limited → EvalResult
    stats.py     Wilson intervals, exact McNemar, paired bootstrap, percentiles, cost per pass
    gates.py     config Gates against an EvalResult → GateResult per gate
    report.py    terminal table and JSON;  html.py: the self-contained HTML report

Importing this package registers every built-in scorer.
"""

from turnout.offline.evals import judge, sandbox, scorers  # noqa: F401  (registers the built-in scorers)
from turnout.offline.evals.cases import Case, Expectation, GoldenSetError, golden_set_path, load_cases, parse_cases
from turnout.offline.evals.gates import GateResult, all_passed, evaluate_gates, failed
from turnout.offline.evals.html import render_html
from turnout.offline.evals.judge import build_scorers
from turnout.offline.evals.report import from_json, render_table, to_json
from turnout.offline.evals.runner import (
    Call,
    EvalResult,
    Outcome,
    Progress,
    ReleaseSummary,
    Run,
    TextProgress,
    run_eval,
)
from turnout.offline.evals.scoring import REGISTRY, JudgeFn, Score, Scorer, register, score_case
from turnout.offline.evals.stats import Interval, PairedComparison

__all__ = [
    "REGISTRY",
    "Call",
    "Case",
    "EvalResult",
    "Expectation",
    "GateResult",
    "GoldenSetError",
    "Interval",
    "JudgeFn",
    "Outcome",
    "PairedComparison",
    "Progress",
    "ReleaseSummary",
    "Run",
    "Score",
    "Scorer",
    "TextProgress",
    "all_passed",
    "build_scorers",
    "evaluate_gates",
    "failed",
    "from_json",
    "golden_set_path",
    "load_cases",
    "parse_cases",
    "register",
    "render_html",
    "render_table",
    "run_eval",
    "score_case",
    "to_json",
]
