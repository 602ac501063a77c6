"""Golden-set loading: the format, and errors that name the line and the problem."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from turnout.offline.evals import Case, Expectation, GoldenSetError, golden_set_path, load_cases, parse_cases


def line(obj: object) -> str:
    return orjson.dumps(obj).decode()


GOOD = [
    line({"id": "a", "variables": {"text": "x"}, "expect": [{"scorer": "equals", "value": "X"}], "tags": ["t1"]}),
    "",
    "// a comment",
    line(
        {
            "id": "b",
            "messages": [{"role": "user", "content": "hi"}],
            "expect": [{"scorer": "contains", "any": ["hello", "hi"]}, {"scorer": "regex", "pattern": "h"}],
            "metadata": {"source": "tickets"},
        }
    ),
]


def test_loads_cases_from_file(tmp_path: Path) -> None:
    path = golden_set_path(tmp_path, "orders")
    assert path == tmp_path / "orders.jsonl"
    path.write_text("\n".join(GOOD) + "\n")
    cases = load_cases(path)
    assert [c.id for c in cases] == ["a", "b"]
    a, b = cases
    assert a.variables == {"text": "x"} and a.messages is None and a.tags == ("t1",) and a.line == 1
    assert a.expect == (Expectation("equals", {"value": "X"}),)
    assert b.messages == [{"role": "user", "content": "hi"}] and b.variables is None and b.line == 4
    assert b.expect[0] == Expectation("contains", {"any": ["hello", "hi"]})
    assert b.metadata == {"source": "tickets"}


def test_case_dict_round_trip() -> None:
    for case in parse_cases(GOOD):
        assert Case.from_dict(orjson.loads(orjson.dumps(case.to_dict()))) == case


def problems_of(lines: list[str]) -> list[str]:
    with pytest.raises(GoldenSetError) as info:
        parse_cases(lines, source="evals/t.jsonl")
    return info.value.problems


def test_every_problem_is_reported_with_its_line() -> None:
    lines = [
        line({"id": "ok", "variables": {}, "expect": [{"scorer": "equals", "value": "1"}]}),
        "{not json",
        line({"id": "ok", "variables": {}, "expect": [{"scorer": "equals", "value": "1"}]}),
        line({"id": "c", "variables": {}, "messages": [{"role": "user", "content": "x"}], "expect": []}),
        line({"id": "d", "variables": {}, "expect": [{"scorer": "equal", "value": "1"}]}),
        line({"id": "e", "variables": {}, "expect": [{"scorer": "regex", "pattern": "("}], "colour": 1}),
        line(["not", "an", "object"]),
        line({"id": "", "messages": [{"content": "no role"}], "expect": [{"scorer": "equals"}], "tags": "x"}),
    ]
    problems = problems_of(lines)
    text = "\n".join(problems)
    assert "evals/t.jsonl:2: not valid JSON" in text
    assert "evals/t.jsonl:3: duplicate id 'ok' (first on line 1)" in text
    assert "evals/t.jsonl:4: give exactly one of 'variables' or 'messages'" in text
    assert "evals/t.jsonl:4: 'expect' must be a non-empty list" in text
    assert "evals/t.jsonl:5: expect[0]: unknown scorer 'equal' (known: " in text
    assert "evals/t.jsonl:6: unknown keys ['colour']" in text
    assert "evals/t.jsonl:6: expect[0] (regex): bad pattern" in text
    assert "evals/t.jsonl:7: a case must be a JSON object, not list" in text
    assert "evals/t.jsonl:8: 'id' must be a non-empty string" in text
    assert "evals/t.jsonl:8: messages[0] must be an object with 'role' and 'content'" in text
    assert "evals/t.jsonl:8: 'tags' must be a list of strings" in text
    assert "evals/t.jsonl:8: expect[0] (equals): 'value' must be a string" in text
    assert not any(p.startswith("evals/t.jsonl:1:") for p in problems)


@pytest.mark.parametrize(
    ("expect", "message"),
    [
        ({"scorer": "contains"}, "give 'value', 'all' or 'any'"),
        ({"scorer": "json_schema", "schema": {"type": "objekt"}}, "invalid schema"),
        ({"scorer": "required_fields"}, "give 'fields' or 'values'"),
        ({"scorer": "number_close", "expected": "3"}, "'expected' must be a number"),
        ({"scorer": "number_close", "expected": 3, "abs_tol": -1}, "'abs_tol' must be a number ≥ 0"),
        ({"scorer": "python_test"}, "'test' must be Python code"),
        ({"scorer": "python_test", "test": "pass", "memory_mb": 4}, "'memory_mb' must be an integer ≥ 32"),
        ({"scorer": "judge", "target": "m"}, "'rubric' must be text"),
        ({"scorer": "regex", "pattern": "a", "flags": "q"}, "'flags' must be a string of"),
        # A misspelt argument would silently change what the scorer checks: refused by name.
        (
            {"scorer": "equals", "value": "X", "ignore_cases": True},
            "expect[0] (equals): unknown argument 'ignore_cases' (did you mean 'ignore_case'?); equals takes value,",
        ),
        ({"scorer": "contains", "any": ["a"], "al": ["b"]}, "unknown argument 'al'"),
        ({"scorer": "python_test", "test": "pass", "timeout": 5}, "unknown argument 'timeout' (did you mean"),
        (
            {"scorer": "judge", "rubric": "ok?", "refrence": "x"},
            "unknown argument 'refrence' (did you mean 'reference'?)",
        ),
    ],
)
def test_scorer_arguments_are_checked_at_load(expect: dict[str, object], message: str) -> None:
    problems = problems_of([line({"id": "x", "variables": {}, "expect": [expect]})])
    assert any(message in p for p in problems), problems


def test_empty_and_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(GoldenSetError, match="no cases"):
        load_cases(tmp_path / "empty.jsonl")
    with pytest.raises(GoldenSetError, match="cannot read"):
        load_cases(tmp_path / "missing.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"id": "a", "messages": [], "expect": []}\n\xe9\n')
    with pytest.raises(GoldenSetError) as info:  # a UnicodeDecodeError traceback in `turnout eval`
        load_cases(tmp_path / "latin1.jsonl")
    assert info.value.problems == [f"{tmp_path / 'latin1.jsonl'}: not UTF-8 text (byte 42: b'\\xe9')"]


def test_many_problems_are_capped_in_the_message() -> None:
    with pytest.raises(GoldenSetError) as info:
        parse_cases(["{"] * 80)
    assert len(info.value.problems) == 80
    assert "… and 30 more" in str(info.value)
