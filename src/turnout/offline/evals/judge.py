"""``judge``: an LLM grades the output against a rubric, through turnout itself.

    {"scorer": "judge", "rubric": "The reply apologises and offers a refund.",
     "target": "judge-model", "reference": "optional: a model answer to compare with"}

The runner's caller supplies the judge callable ``judge(prompt, target) -> reply`` (the CLI sends
it through the gateway to ``target``); ``target`` falls back to the scorer's default target. The
judge is asked for ``{"pass": true|false, "reason": "…"}``; the reply is parsed leniently (code
fences, prose around the object, ``"verdict": "pass"``, quoted booleans). A reply with no
readable verdict fails the expectation and says so, as does a judge call that raises.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from turnout.offline.evals.cases import Case
from turnout.offline.evals.sandbox import PythonTest
from turnout.offline.evals.scoring import REGISTRY, JudgeFn, Score, Scorer, register

_TRUE = {"true", "yes", "pass", "passed", "1"}
_FALSE = {"false", "no", "fail", "failed", "0"}
_PASS_FIELD = re.compile(r"""["']?(?:pass|passed|verdict)["']?\s*[:=]\s*["']?(\w+)""", re.IGNORECASE)

PROMPT = """You are grading one answer produced by an AI system. Judge it only against the rubric.

## Rubric
{rubric}

## Input given to the system
{input}
{reference}
## Answer to grade
<answer>
{output}
</answer>

Reply with one JSON object and nothing else:
{{"pass": true or false, "reason": "one or two sentences"}}"""


def build_prompt(output: str, case: Case, rubric: str, reference: str | None = None) -> str:
    if case.messages is not None:
        shown = "\n".join(f"[{m.get('role')}] {m.get('content')}" for m in case.messages)
    else:
        shown = orjson.dumps(case.variables or {}, option=orjson.OPT_INDENT_2).decode()
    ref = f"\n## Reference answer\n{reference}\n" if reference else ""
    return PROMPT.format(rubric=rubric.strip(), input=shown, reference=ref, output=output)


def parse_verdict(reply: str) -> tuple[bool, str] | None:
    """(passed, reason) from a judge's reply, or None when it has no readable verdict."""
    for obj in _json_objects(reply):
        verdict = _verdict(obj)
        if verdict is not None:
            return verdict, str(obj.get("reason", obj.get("explanation", ""))).strip()
    m = _PASS_FIELD.search(reply)
    if m:
        word = m.group(1).lower()
        if word in _TRUE | _FALSE:
            return word in _TRUE, ""
    return None


def _verdict(obj: dict[str, Any]) -> bool | None:
    for key in ("pass", "passed", "verdict", "result"):
        if key not in obj:
            continue
        v = obj[key]
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
            return v.strip().lower() in _TRUE
    return None


def _json_objects(text: str) -> list[dict[str, Any]]:
    """Every top-level {...} in the text that parses as a JSON object, in order."""
    out: list[dict[str, Any]] = []
    depth, start, in_str, escaped = 0, -1, False, False
    for i, ch in enumerate(text):
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"' and depth > 0:
            in_str = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                try:
                    obj = orjson.loads(text[start : i + 1])
                except orjson.JSONDecodeError:
                    continue
                if isinstance(obj, dict):
                    out.append(obj)
    return out


@register
class JudgeScorer(Scorer):
    name = "judge"
    arguments = ("rubric", "reference", "target")

    def __init__(self, judge: JudgeFn | None = None, *, default_target: str | None = None) -> None:
        self.judge = judge
        self.default_target = default_target

    def check(self, args: Mapping[str, Any]) -> list[str]:
        problems = [] if isinstance(args.get("rubric"), str) and args["rubric"].strip() else ["'rubric' must be text"]
        for key in ("target", "reference"):
            if key in args and not isinstance(args[key], str):
                problems.append(f"'{key}' must be a string")
        return problems

    async def score(self, output: str, case: Case, args: Mapping[str, Any]) -> Score:
        target = args.get("target") or self.default_target
        if self.judge is None or not target:
            return Score(False, None, "no judge configured" if self.judge is None else "no judge target")
        prompt = build_prompt(output, case, args["rubric"], args.get("reference"))
        try:
            reply = await self.judge(prompt, target)
        except Exception as exc:  # the judge's failure is this expectation's, not the run's
            return Score(False, None, f"judge {target} failed: {type(exc).__name__}: {exc}")
        verdict = parse_verdict(reply)
        if verdict is None:
            return Score(False, None, f"unreadable verdict from {target}: {reply.strip()[:200]!r}")
        passed, reason = verdict
        return Score(passed, 1.0 if passed else 0.0, reason)


def build_scorers(
    judge: JudgeFn | None = None, *, judge_target: str | None = None, allow_unsandboxed_code: bool = False
) -> dict[str, Scorer]:
    """One instance of every registered scorer; the ``judge`` scorer gets the judge callable,
    ``python_test`` the config's ``evals.allow_unsandboxed_code``. Here, beside the judge
    scorer, so that the registry (``scoring``) imports no scorer."""
    out: dict[str, Scorer] = {name: cls() for name, cls in REGISTRY.items()}
    out[JudgeScorer.name] = JudgeScorer(judge, default_target=judge_target)
    out[PythonTest.name] = PythonTest(allow_unsandboxed_code=allow_unsandboxed_code)
    return out
