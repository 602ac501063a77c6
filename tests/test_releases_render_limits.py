"""A release's template cannot make a render big or long: values, output and total work are
bounded in size before they are built, and every loop, call and output passes a deadline. Seen
before: ``'a'*300000000`` allocated 286 MB; nested loops ran past 5 s."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tests.asgi import request
from tests.conftest import AppFactory
from tests.fakes.scripted import ScriptedProvider
from turnout.releases import bounded
from turnout.releases.base import Prompt, Release, Serving
from turnout.releases.render import TemplateFailed, render

MiB = 1024 * 1024


def release(user: str, **variables: str) -> Release:
    return Release(
        task="extract",
        name="v1",
        route=("primary",),
        model_version=None,
        tokenizer=None,
        prompt=Prompt(system=None, user=user, variables=variables),
    )


@pytest.fixture
def peak_memory() -> Iterator[Callable[[], int]]:
    """The peak of Python allocations since the test started, in bytes."""
    tracemalloc.start()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def refused(template: str, variables: dict[str, Any] | None = None, **declared: str) -> str:
    with pytest.raises(TemplateFailed) as info:
        render(release(template, **declared), variables or {})
    assert info.value.status == 500 and info.value.code == "release_template_error"
    return info.value.message


# Attacks refused before the big value exists: each must fail the render and allocate almost
# nothing (the 286 MB of the report).
BEFORE_BUILDING = {
    "string times a number": "{{ 'a' * 300000000 }}",
    "a variable times a number": "{{ text * 300000000 }}",
    "a list times a number": "{{ ([text] * 100000000)|length }}",
    "center filter": "{{ 'a'|center(300000000) }}",
    "str.ljust": "{{ 'a'.ljust(300000000) }}",
    "str.zfill": "{{ '1'.zfill(300000000) }}",
    "format width": "{{ '{:>300000000}'.format('a') }}",
    "format width from an argument": "{{ '{:>{}}'.format('a', 300000000) }}",
    "percent width": "{{ '%300000000s' % 'a' }}",
    "percent star width": "{{ '%*s' % (300000000, 'a') }}",
    "format filter width": "{{ '%300000000s'|format('a') }}",
    "replace filter": "{{ (text * 10000)|replace('a', text * 10000) }}",
    "replace of the empty string": "{{ (text * 10000)|replace('', text * 10000) }}",
    "str.expandtabs": "{{ ('\\t' * 100000).expandtabs(100000) }}",
    "indent filter": "{{ ('\\n' * 100000)|indent(100000) }}",
    "wordwrap filter": "{{ (text * 10000)|wordwrap(1, wrapstring=text * 1000) }}",
    "batch filter padding": "{{ [1]|batch(300000000, 0)|list|length }}",
    "slice filter": "{{ [1]|slice(300000000)|list|length }}",
    "join of repeated text": "{{ ([text * 1000] * 1000)|join }}",
    "a ~ chain": "{% set s = text * 400000 %}{{ s ~ s ~ s ~ s ~ s ~ s ~ s ~ s ~ s ~ s ~ s ~ s }}",
    "doubling by ~": "{% set ns = namespace(s='a') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "doubling by +": "{% set ns = namespace(s='a') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "squaring an integer": (
        "{% set ns = namespace(x=3) %}{% for i in range(60) %}{% set ns.x = ns.x * ns.x %}{% endfor %}"
    ),
    "a power": "{{ 10 ** 100000000 }}",
    "nested list literals written out": (
        "{% set s = text * 400000 %}{% set a = [s, s, s, s, s, s, s, s] %}{% set b = [a, a, a, a, a, a, a, a] %}{{ b }}"
    ),
    "nested list literals through a filter": (
        "{% set s = text * 400000 %}{% set a = [s, s, s, s, s, s, s, s] %}{% set b = [a, a, a, a] %}{{ b|pprint }}"
    ),
}


@pytest.mark.parametrize("template", BEFORE_BUILDING.values(), ids=BEFORE_BUILDING.keys())
def test_a_value_past_the_limit_is_refused_before_it_is_built(template: str, peak_memory: Callable[[], int]) -> None:
    message = refused(template, {"text": "abcdefghij"}, text="str")
    assert "the user template failed" in message
    assert "limit" in message
    assert peak_memory() < 64 * MiB  # a few values of up to 4 Mi characters at most, never 286 MB


TOO_LONG = {
    "nested loops over range": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "nested loops that write": "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    "nested loops over a variable": (
        "{% for a in l %}{% for b in l %}{% for c in l %}{% for d in l %}"
        "{% endfor %}{% endfor %}{% endfor %}{% endfor %}"
    ),
    "nested loops into a block": (
        "{% set x %}{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxx"
        "{% endfor %}{% endfor %}{% endset %}"
    ),
    "a macro that calls itself twice": (
        "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}"
    ),
    "a recursive loop": (
        "{% for x in [1, 1] recursive %}{% for y in range(100000) %}{% endfor %}{{ loop([1, 1]) }}{% endfor %}"
    ),
}


@pytest.mark.parametrize("template", TOO_LONG.values(), ids=TOO_LONG.keys())
def test_a_render_past_the_deadline_is_stopped(template: str) -> None:
    message = refused(template, {"l": list(range(1000))}, l="list")
    # Stopped by whichever bound it reaches first: the deadline, the recursion limit or the
    # output size (a template that writes as it loops reaches the size first on a fast core).
    stops = (f"took longer than {bounded.TIMEOUT_S:g} s", "RecursionError", "limit", "characters")
    assert any(stop in message for stop in stops), message


def test_nested_loops_are_stopped_by_the_deadline() -> None:
    # the loop of the report: 10¹⁰ empty iterations, no call, no output inside
    loops = "{% for a in l %}{% for b in l %}{% for c in l %}{% endfor %}{% endfor %}{% endfor %}"
    message = refused(loops, {"l": list(range(3000))}, l="list")
    assert f"took longer than {bounded.TIMEOUT_S:g} s" in message


def test_the_rendered_text_is_bounded() -> None:
    text = "x" * MiB
    template = "{{ t }}{{ t }}{{ t }}{{ t }}{{ t }}"
    assert "longer than" in refused(template, {"t": text}, t="str")
    # four copies fit
    assert len(render(release("{{ t }}{{ t }}{{ t }}{{ t }}", t="str"), {"t": text})[0]["content"]) == 4 * MiB


def test_all_the_work_of_a_render_is_bounded(peak_memory: Callable[[], int]) -> None:
    # each value fits, together they do not: 100000 strings of 100000 characters
    message = refused("{{ range(100000)|map('center', 100000)|join }}")
    assert "in all" in message
    assert peak_memory() < 256 * MiB  # not the 10 GB the join would have built


# One filter call on a value within the size limits, whose work grows with the square of a
# word's length: the render's deadline is checked only after the call, which ran for seconds
# (wordwrap(1) of a 1 Mi-character word: 21 s) or minutes, holding the event loop. Refused
# before they run.
SLOW_STEPS = {
    "wordwrap of a long word": ("{{ text|wordwrap(1) }}", "a" * 300_000),
    "wordwrap of a long word at a usual width": ("{{ text|wordwrap(10) }}", "a" * 2_000_000),
    "urlize balancing brackets": ("{{ text|urlize }}", "a" + "(" * 200_000 + ")" * 200_000),
    "urlize balancing escaped brackets": ("{{ text|urlize }}", "a" + "<" * 200_000 + ">" * 200_000),
}


@pytest.mark.parametrize(("template", "text"), SLOW_STEPS.values(), ids=SLOW_STEPS.keys())
def test_a_filter_whose_work_outgrows_its_input_is_refused_before_it_runs(template: str, text: str) -> None:
    message = refused(template, {"text": text}, text="str")
    assert "would copy about" in message and f"the limit is {bounded.MAX_STEP_COPIES}" in message


def test_sum_of_lists_is_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    # Python's sum made a new list per item: 100,000 one-item lists copied 5·10⁹ items in one
    # step (about half a minute). A deadline far above a linear pass: it is never the limit here.
    monkeypatch.setattr(bounded, "TIMEOUT_S", 10.0)
    lists = [[i] for i in range(100_000)]
    got = render(
        release("{{ l|sum(start=[])|length }} {{ t|sum(start=(0,))|length }}", l="list", t="list"),
        {
            "l": lists,
            "t": [(1, 2)] * 100_000,
        },
    )
    assert got[0]["content"] == "100000 200001"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ [[1], [2, 3]]|sum(start=[0]) }}", "[0, 1, 2, 3]"),
        ("{{ [(1,), (2, 3)]|sum(start=()) }}", "(1, 2, 3)"),
        ("{{ [dict(a=[1]), dict(a=[2])]|sum('a', start=[]) }}", "[1, 2]"),
        ("{{ [1, 2.5]|sum }} {{ []|sum(start=[]) }}", "3.5 []"),
    ],
)
def test_sum_gives_what_python_gives(template: str, expected: str) -> None:
    assert render(release(template), {})[0]["content"] == expected
    plain = ImmutableSandboxedEnvironment(undefined=StrictUndefined)
    assert plain.from_string(template).render() == expected


@pytest.mark.parametrize("template", ["{{ [[1], (2,)]|sum(start=[]) }}", "{{ [[1]]|sum(start=()) }}"])
def test_sum_of_mixed_sequences_fails_as_in_python(template: str) -> None:
    assert "can only concatenate" in refused(template)


def test_wordwrap_and_urlize_of_ordinary_text_render_as_before() -> None:
    template = "{{ text|wordwrap(12) }}|{{ text|urlize }}|{{ ('x' * 5000)|wordwrap(80)|length }}"
    variables = {"text": "see (www.example.com) or mail a@b.example about <it>"}
    got = render(release(template, text="str"), variables)[0]["content"]
    plain = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)
    assert got == plain.from_string(template).render(variables)


def test_lipsum_is_gone() -> None:
    assert "'lipsum' is undefined" in refused("{{ lipsum(100000) }}")


NORMAL = [
    ("{{ text }} and {{ text|upper }}", "ab and AB"),
    ("{% for x in l %}{{ loop.index }}/{{ loop.length }}:{{ x }}{% if not loop.last %}, {% endif %}{% endfor %}", None),
    ("{% for x in l if x > 1 %}{{ x }}{% else %}none{% endfor %}", None),
    ("{% for x in [] %}{{ x }}{% else %}none{% endfor %}", "none"),
    ("{{ '%s has %d items'|format(text, l|length) }}", "ab has 3 items"),
    ("{{ '{} has {:>3} items'.format(text, l|length) }}", "ab has   3 items"),
    ("{{ '%-5s|' % text }}", "ab   |"),
    ("{{ text * 3 }} {{ [1, 2] + [3] }} {{ 2 ** 10 }} {{ 6 * 7 }}", "ababab [1, 2, 3] 1024 42"),
    ("{{ text ~ '-' ~ l|join(',') }}", "ab-1,2,3"),
    ("{{ text|center(6) }}|{{ text.rjust(4, '.') }}|{{ '7'.zfill(3) }}", "  ab  |..ab|007"),
    ("{{ 'a b'|replace(' ', '_') }} {{ 'x\\ny'|indent(2, true) }}", "a_b   x\n  y"),
    ("{% macro item(x) %}<{{ x }}>{% endmacro %}{% for x in l %}{{ item(x) }}{% endfor %}", "<1><2><3>"),
    (
        "{% set ns = namespace(total=0) %}{% for x in l %}{% set ns.total = ns.total + x %}{% endfor %}{{ ns.total }}",
        "6",
    ),
    ("{{ l|batch(2)|list }} {{ l|sum }} {{ d|dictsort }} {{ d.a }}", "[[1, 2], [3]] 6 [('a', 1)] 1"),
    (
        "{% for x in [[1, [2]], [3]] recursive %}{% if x is iterable %}{{ loop(x) }}{% else %}{{ x }}{% endif %}"
        "{% endfor %}",
        "123",
    ),
    ("{{ range(3)|list }} {{ d|tojson }}", '[0, 1, 2] {"a": 1}'),
]


@pytest.mark.parametrize(("template", "expected"), NORMAL)
def test_ordinary_templates_render_as_before(template: str, expected: str | None) -> None:
    variables = {"text": "ab", "l": [1, 2, 3], "d": {"a": 1}}
    got = render(release(template, text="str", l="list", d="dict"), variables)[0]["content"]
    plain = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)
    assert got == plain.from_string(template).render(variables)  # what Jinja's own sandbox writes
    if expected is not None:
        assert got == expected


def test_a_large_variable_within_the_limit_renders() -> None:
    text = "y" * (2 * MiB)
    got = render(release("<<{{ t }}>>", t="str"), {"t": text})[0]["content"]
    assert got == f"<<{text}>>"


async def test_a_bomb_template_is_a_500_and_the_gateway_keeps_serving(make_app: AppFactory) -> None:
    config: dict[str, Any] = {
        "targets": {"primary": {"provider": "openai", "base_url": "http://p.invalid/v1", "model": "m"}},
        "tasks": {"extract": {"route": ["primary"]}},
    }
    primary = ScriptedProvider("primary")
    app = await make_app(config, {"primary": primary})

    class Registry:
        current = Serving(release("{{ 'a' * 300000000 }}{{ text }}", text="str"))

        def serving(self, task: str) -> Serving | None:
            return self.current if task == "extract" else None

        def get(self, task: str, name: str) -> Release | None:
            return self.current.active if name == "v1" else None

    app.runtime.releases = Registry()
    resp = await request(app, "POST", "/v1/tasks/extract", {"variables": {"text": "x"}})
    assert resp.status == 500
    error = resp.json()["error"]
    assert error["code"] == "release_template_error" and "limit" in error["message"]
    assert not primary.calls  # nothing was sent upstream
    assert (await request(app, "GET", "/healthz")).status == 200
