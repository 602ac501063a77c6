"""Every deterministic scorer, the judge with a stub judge, and the registry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pytest

from turnout.offline.evals import REGISTRY, Case, Expectation, Score, Scorer, build_scorers, register, score_case
from turnout.offline.evals.judge import build_prompt, parse_verdict
from turnout.offline.evals.scorers import parse_json_output

CASE = Case(id="c1", expect=(Expectation("equals", {"value": "x"}),), variables={"text": "Order A-17"})
SCORERS = build_scorers()


async def score(name: str, output: str, **args: Any) -> Score:
    scorer = SCORERS[name]
    assert scorer.check(args) == [], scorer.check(args)
    return await scorer.score(output, CASE, args)


async def test_equals() -> None:
    assert (await score("equals", " Paris\n", value="Paris")).passed
    miss = await score("equals", "paris", value="Paris")
    assert not miss.passed and miss.value == 0.0 and "expected 'Paris', got 'paris'" in miss.detail
    assert (await score("equals", "paris", value="Paris", ignore_case=True)).passed
    assert not (await score("equals", "New  York", value="New York")).passed
    assert (await score("equals", "New \n York", value="new york", ignore_case=True, ignore_whitespace=True)).passed


async def test_contains() -> None:
    out = "Order A-17: two mugs"
    assert (await score("contains", out, value="A-17")).passed
    assert (await score("contains", out, all=["A-17", "mugs"], any=["two", "2"])).passed
    s = await score("contains", out, all=["A-17", "plates"], any=["three", "3"])
    assert not s.passed and s.value == pytest.approx(1 / 3)
    assert "missing 'plates'" in s.detail and "none of 'three', '3'" in s.detail
    assert not (await score("contains", out, value="MUGS")).passed
    assert (await score("contains", out, value="MUGS", ignore_case=True)).passed


async def test_regex() -> None:
    assert (await score("regex", "id: 1234 ok", pattern=r"\d{4}")).passed
    assert not (await score("regex", "id: 1234 ok", pattern=r"\d{4}", full=True)).passed
    assert (await score("regex", " 1234\n", pattern=r"\d{4}", full=True)).passed
    assert (await score("regex", "Hello", pattern="^hello$", flags="i")).passed
    assert (await score("regex", "fine", pattern="sorry|cannot", negate=True)).passed
    refused = await score("regex", "sorry, I cannot", pattern="sorry|cannot", negate=True)
    assert not refused.passed and "matched 'sorry'" in refused.detail


SCHEMA = {
    "type": "object",
    "required": ["order_id", "qty"],
    "properties": {"order_id": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
}


async def test_json_schema() -> None:
    assert (await score("json_schema", '{"order_id": "A-17", "qty": 2}', schema=SCHEMA)).passed
    fenced = 'Here you go:\n```json\n{"order_id": "A-17", "qty": 2}\n```\n'
    assert (await score("json_schema", fenced, schema=SCHEMA)).passed
    bad = await score("json_schema", '{"order_id": 17, "qty": 0}', schema=SCHEMA)
    assert (
        not bad.passed and bad.detail.startswith("order_id: 17 is not of type 'string'") and "(+1 more)" in bad.detail
    )
    missing = await score("json_schema", '{"qty": 1}', schema=SCHEMA)
    assert "(root): 'order_id' is a required property" in missing.detail
    not_json = await score("json_schema", "order A-17", schema=SCHEMA)
    assert not not_json.passed and "not JSON" in not_json.detail


async def test_required_fields() -> None:
    out = '{"order_id": "A-17", "customer": {"name": "Ann"}, "items": [{"sku": "M1"}], "gift": true}'
    assert (await score("required_fields", out, fields=["order_id", "customer.name", "items.0.sku"])).passed
    assert (await score("required_fields", out, values={"customer.name": "Ann", "gift": True})).passed
    s = await score("required_fields", out, fields=["order_id", "total"], values={"customer.name": "Bob"})
    assert not s.passed and s.value == pytest.approx(1 / 3)
    assert "missing total" in s.detail and "customer.name: expected 'Bob', got 'Ann'" in s.detail
    # true is not 1, even though Python says True == 1
    assert not (await score("required_fields", '{"gift": 1}', values={"gift": True})).passed
    assert not (await score("required_fields", '{"n": true}', values={"n": 1})).passed
    assert not (await score("required_fields", "no json", fields=["a"])).passed


async def test_number_close() -> None:
    assert (await score("number_close", "The total is 1,234.50 dollars", expected=1234.5)).passed
    s = await score("number_close", "3 apples and 5 pears: 8 fruit", expected=8)
    assert s.passed and s.value == 8.0
    assert (await score("number_close", "3 apples and 5 pears: 8 fruit", expected=3, pick="first")).passed
    assert (await score("number_close", "about 99.5", expected=100, abs_tol=0.5)).passed
    assert not (await score("number_close", "about 99.4", expected=100, abs_tol=0.5)).passed
    assert (await score("number_close", "1.01e3", expected=1000, rel_tol=0.02)).passed
    assert (await score("number_close", "-0.5", expected=-0.5)).passed
    assert (await score("number_close", '{"total": 41.99, "n": 3}', expected=42, abs_tol=0.05, path="total")).passed
    assert (await score("number_close", '{"total": "42 USD"}', expected=42, path="total")).passed
    far = await score("number_close", "it is 50", expected=42, abs_tol=1)
    assert not far.passed and far.value == 50.0 and "expected 42" in far.detail
    none = await score("number_close", "no digits here", expected=1)
    assert not none.passed and none.value is None and none.detail == "no number in the output"
    missing = await score("number_close", '{"x": 1}', expected=1, path="total")
    assert not missing.passed and missing.detail == "missing total"


def test_parse_json_output_rejects_prose() -> None:
    assert parse_json_output("  [1, 2]\n") == [1, 2]
    assert parse_json_output('```\n{"a": 1}\n```') == {"a": 1}
    with pytest.raises(ValueError, match="not JSON"):
        parse_json_output("```python\nprint(1)\n```")


# --- judge -------------------------------------------------------------------------------


class StubJudge:
    def __init__(self, reply: str | Exception) -> None:
        self.reply = reply
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, prompt: str, target: str) -> str:
        self.calls.append((prompt, target))
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


JUDGE_ARGS: dict[str, Any] = {"rubric": "Mentions the order id.", "target": "judge-model", "reference": "A-17"}


async def judge_score(reply: str | Exception, output: str = "Your order A-17 ships today.", **args: Any) -> Score:
    stub = StubJudge(reply)
    scorers = build_scorers(stub, judge_target="default-judge")
    s = await scorers["judge"].score(output, CASE, {**JUDGE_ARGS, **args})
    if stub.calls:
        prompt, _ = stub.calls[0]
        assert output in prompt and "Mentions the order id." in prompt and "A-17" in prompt
    return s


async def test_judge_passes_and_fails_on_the_verdict() -> None:
    ok = await judge_score('{"pass": true, "reason": "names A-17"}')
    assert ok.passed and ok.value == 1.0 and ok.detail == "names A-17"
    no = await judge_score('{"pass": false, "reason": "no id"}')
    assert not no.passed and no.value == 0.0 and no.detail == "no id"


async def test_judge_uses_the_case_target_or_the_default() -> None:
    stub = StubJudge('{"pass": true}')
    scorer = build_scorers(stub, judge_target="default-judge")["judge"]
    await scorer.score("x", CASE, {"rubric": "r", "target": "named"})
    await scorer.score("x", CASE, {"rubric": "r"})
    assert [t for _, t in stub.calls] == ["named", "default-judge"]


async def test_judge_failures_fail_the_expectation() -> None:
    unreadable = await judge_score("I think it is fine overall.")
    assert not unreadable.passed and "unreadable verdict from judge-model" in unreadable.detail
    boom = await judge_score(RuntimeError("gateway down"))
    assert not boom.passed and "judge judge-model failed: RuntimeError: gateway down" in boom.detail
    unwired = await build_scorers()["judge"].score("x", CASE, JUDGE_ARGS)
    assert not unwired.passed and unwired.detail == "no judge configured"
    no_target = await build_scorers(StubJudge("{}"))["judge"].score("x", CASE, {"rubric": "r"})
    assert not no_target.passed and no_target.detail == "no judge target"


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ('{"pass": true, "reason": "ok"}', (True, "ok")),
        ('```json\n{"pass": false, "reason": "wrong id"}\n```', (False, "wrong id")),
        (
            'Sure! Here is my verdict: {"reason": "has {braces} in it", "pass": "yes"} Hope that helps.',
            (True, "has {braces} in it"),
        ),
        ('{"verdict": "FAIL", "explanation": "nope"}', (False, "nope")),
        ('{"notes": {"x": 1}} then {"passed": true}', (True, "")),
        ("pass: false because the id is missing", (False, "")),
        ("'pass': True", (True, "")),
        ('{"pass": maybe}', None),
        ("", None),
        ('{"reason": "no verdict key"}', None),
    ],
)
def test_parse_verdict_is_lenient(reply: str, verdict: tuple[bool, str] | None) -> None:
    assert parse_verdict(reply) == verdict


def test_judge_prompt_shows_messages() -> None:
    case = Case(id="m", expect=(), messages=[{"role": "user", "content": "What is 2+2?"}])
    prompt = build_prompt("4", case, "Correct arithmetic.")
    assert "[user] What is 2+2?" in prompt and "<answer>\n4\n</answer>" in prompt and "Reference" not in prompt


# --- registry and case scoring -------------------------------------------------------------


def test_builtin_scorers_are_registered() -> None:
    expected = {"equals", "contains", "regex", "json_schema", "required_fields", "number_close", "python_test", "judge"}
    assert expected <= set(REGISTRY)
    assert expected <= set(build_scorers())


async def test_a_new_scorer_is_one_small_class() -> None:
    @register
    class StartsWith(Scorer):
        name: ClassVar[str] = "test_starts_with"

        async def score(self, output: str, case: Case, args: Mapping[str, Any]) -> Score:
            return Score(output.startswith(args["value"]))

    try:
        scorers = build_scorers()
        case = Case(id="n", expect=(Expectation("test_starts_with", {"value": "Dear"}),), variables={})
        assert (await score_case("Dear Ann", case, scorers))[1]
        assert not (await score_case("Hi Ann", case, scorers))[1]
        with pytest.raises(ValueError, match="already registered"):

            @register
            class Clash(Scorer):
                name: ClassVar[str] = "test_starts_with"
    finally:
        REGISTRY.pop("test_starts_with", None)


async def test_a_case_passes_only_when_every_expectation_passes() -> None:
    case = Case(
        id="all",
        expect=(Expectation("contains", {"value": "A-17"}), Expectation("regex", {"pattern": "^Order"})),
        variables={},
    )
    scores, passed = await score_case("Order A-17", case, SCORERS)
    assert passed and [s.passed for s in scores] == [True, True]
    scores, passed = await score_case("A-17 order", case, SCORERS)
    assert not passed and [s.passed for s in scores] == [True, False]


async def test_a_scorer_that_raises_fails_its_expectation() -> None:
    class Broken(Scorer):
        name: ClassVar[str] = "broken"

        async def score(self, output: str, case: Case, args: Mapping[str, Any]) -> Score:
            raise KeyError("value")

    case = Case(id="b", expect=(Expectation("broken"), Expectation("nope")), variables={})
    scores, passed = await score_case("x", case, {"broken": Broken()})
    assert not passed
    assert scores[0].detail == "scorer broken failed: KeyError: 'value'"
    assert scores[1].detail == "unknown scorer 'nope'"
