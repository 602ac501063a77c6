"""Tool allowlists on the request path, in-process: a declared tool outside the allowlist (400
naming it), a model's call to a tool not allowed, not declared, or with arguments its schema
refuses (blocked, never passed on: refuse, fallback, escalate), streams (tool calls held until
complete and checked, text not held), the tenant override, the ledger and the metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from tests.asgi import Response, request
from tests.conftest import AppFactory
from tests.fakes.scripted import ScriptedProvider, Step, completion_body
from tests.fakes.toolcalls import Script, ToolCaller
from turnout.config import validate
from turnout.errors import ConfigError
from turnout.ledger.record import LedgerRow
from turnout.providers.base import Call, Completion, Usage
from turnout.safety.tools import Allowlists, parse_record, resolve
from turnout.serving.app import App

KEY = "sk-acme-tools-0001"
OTHER = "sk-globex-tools-0001"
AUTH = {"authorization": f"Bearer {KEY}"}
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
ORDER = {
    "type": "function",
    "function": {"name": "lookup_order", "parameters": {"type": "object", "properties": {"id": {"type": "integer"}}}},
}
DELETE = {"type": "function", "function": {"name": "delete_all_records"}}
GOOD = ("get_weather", '{"city": "Paris", "unit": "c"}')
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]


def config(**tasks: dict[str, Any]) -> dict[str, Any]:
    allow = {"allow": ["get_weather", "lookup_order"]}
    return {
        "targets": {
            name: {"provider": "openai", "base_url": f"http://{name}.invalid/v1", "model": "m"}
            for name in ("primary", "secondary")
        },
        "tenants": {
            "acme": {"keys": [KEY]},
            "globex": {
                "keys": [OTHER],
                "task_tools": {"agent": {"allow": ["get_weather", "delete_all_records"]}},
                "tools": {"on_violation": "fallback"},
            },
        },
        "tasks": {
            "agent": {"route": ["primary", "secondary"], "tools": allow},
            "fallback": {"route": ["primary", "secondary"], "tools": {**allow, "on_violation": "fallback"}},
            "escalate": {"route": ["primary", "secondary"], "tools": {**allow, "on_violation": "escalate"}},
            "loose": {"route": ["primary"], "tools": {**allow, "strict": False}},
            "open": {"route": ["primary"]},
            **tasks,
        },
    }


async def start(
    make_app: AppFactory, primary: list[Script], secondary: list[Script] | None = None
) -> tuple[App, ToolCaller, ToolCaller]:
    first = ToolCaller("primary", *primary)
    second = ToolCaller("secondary", *(secondary or [Script(calls=[GOOD])]))
    app = await make_app(config(), {"primary": first, "secondary": second})
    return app, first, second


async def chat(app: App, task: str = "agent", tools: list[Any] | None = None, key: str = KEY, **extra: Any) -> Response:
    body = {"model": task, "messages": MESSAGES, "tools": [WEATHER, ORDER] if tools is None else tools, **extra}
    return await request(app, "POST", "/v1/chat/completions", body, {"authorization": f"Bearer {key}"})


async def rows(app: App, n: int = 1) -> list[LedgerRow]:
    assert app.runtime.store is not None
    for _ in range(400):
        await asyncio.sleep(0.005)
        found = await app.runtime.store.recent(100)
        if len(found) >= n:
            return found
    raise AssertionError(f"expected {n} ledger rows")


def error(resp: Response) -> dict[str, Any]:
    found: dict[str, Any] = resp.json()["error"]
    return found


# --- what the request declares -----------------------------------------------------------------


async def test_a_declared_tool_outside_the_allowlist_is_refused_naming_it(make_app: AppFactory) -> None:
    app, primary, _ = await start(make_app, [Script(calls=[GOOD])])
    resp = await chat(app, tools=[WEATHER, DELETE])
    assert resp.status == 400
    err = error(resp)
    assert err["code"] == "tool_not_allowed" and err["param"] == "tools[1]"
    assert "delete_all_records" in err["message"] and err["type"] == "invalid_request_error"
    assert primary.calls == []  # refused before any attempt
    [row] = await rows(app)
    assert (row.status, row.error_class, row.tool_violations) == (
        400,
        "tool_not_allowed",
        "delete_all_records:not_allowed",
    )


async def test_legacy_functions_are_checked_too(make_app: AppFactory) -> None:
    app, primary, _ = await start(make_app, [Script(calls=[GOOD])])
    resp = await chat(app, tools=[], functions=[{"name": "get_weather"}, {"name": "drop_tables"}])
    assert resp.status == 400 and error(resp)["param"] == "functions[1]"
    assert primary.calls == []


@pytest.mark.parametrize(
    ("tools", "param"),
    [
        (
            [{**WEATHER, "function": {**WEATHER["function"], "parameters": {"type": "nonsense"}}}],
            "tools[0].function.parameters",
        ),
        ([{**WEATHER, "function": {**WEATHER["function"], "parameters": [1]}}], "tools[0].function.parameters"),
        ([WEATHER, WEATHER], "tools[1].function.name"),  # by the door, before the allowlist
    ],
)
async def test_a_declaration_that_cannot_be_checked_is_a_400(make_app: AppFactory, tools: Any, param: str) -> None:
    app, primary, _ = await start(make_app, [Script(calls=[GOOD])])
    resp = await chat(app, tools=tools)
    assert resp.status == 400 and error(resp)["param"] == param
    assert primary.calls == []


# --- what the model calls, whole answers -------------------------------------------------------


async def test_a_valid_call_passes_unchanged(make_app: AppFactory) -> None:
    app, _, _ = await start(make_app, [Script(calls=[GOOD, ("lookup_order", '{"id": 7}')])])
    resp = await chat(app)
    assert resp.status == 200
    calls = resp.json()["choices"][0]["message"]["tool_calls"]
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [GOOD, ("lookup_order", '{"id": 7}')]
    [row] = await rows(app)
    assert row.tool_violations is None


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        (("delete_all_records", '{"confirm": true}'), "not_allowed"),
        (("lookup_order", '{"id": 1}'), "undeclared"),  # allowed, but this request did not offer it
        (("get_weather", '{"city": "Paris", "then": "rm -rf"}'), "invalid_arguments"),  # strict: no extra property
        (("get_weather", '{"unit": "c"}'), "invalid_arguments"),  # required missing
        (("get_weather", '{"city": 3}'), "invalid_arguments"),
        (("get_weather", '{"city": "Par'), "invalid_arguments"),  # not JSON
        (("get_weather", '["Paris"]'), "invalid_arguments"),  # not an object
        (("", "{}"), "malformed"),
    ],
)
async def test_a_blocked_call_never_reaches_the_client(
    make_app: AppFactory, call: tuple[str, str], reason: str
) -> None:
    app, primary, secondary = await start(make_app, [Script(calls=[call])])
    resp = await chat(app, tools=[WEATHER])
    assert resp.status == 502
    err = error(resp)
    assert err["code"] == "tool_call_blocked" and err["type"] == "upstream_error"
    assert call[1] not in resp.body.decode() or call[1] == "{}"  # never the arguments
    assert "rm -rf" not in resp.body.decode()
    assert len(primary.calls) == 1 and secondary.calls == []  # refuse: no other target
    [row] = await rows(app)
    assert row.status == 502 and row.error_class == "tool_call_blocked"
    assert parse_record(row.tool_violations or "") == [(call[0] or "(none)", reason)]
    assert [a.error_class for a in row.attempts] == ["tool_call_blocked"]


async def test_a_call_in_the_legacy_shape_is_checked(make_app: AppFactory) -> None:
    app, _, _ = await start(make_app, [Script(calls=[("drop_tables", "{}")], legacy=True)])
    resp = await chat(app, tools=[], functions=[{"name": "get_weather"}])
    assert resp.status == 502 and error(resp)["code"] == "tool_call_blocked"


async def test_fallback_tries_the_next_target(make_app: AppFactory) -> None:
    bad = Script(calls=[("get_weather", '{"city": "Paris", "extra": 1}')])
    app, _, _ = await start(make_app, [bad])
    resp = await chat(app, task="fallback")
    assert resp.status == 200
    assert resp.headers["x-turnout-target"] == "secondary" and resp.headers["x-turnout-fallback"] == "true"
    assert resp.json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == GOOD[1]
    [row] = await rows(app)
    assert row.status == 200 and row.fallback and row.target == "secondary"
    assert [(a.target, a.error_class) for a in row.attempts] == [("primary", "tool_call_blocked"), ("secondary", None)]
    assert row.tool_violations == "get_weather:invalid_arguments"


async def test_fallback_with_every_target_blocked_says_so(make_app: AppFactory) -> None:
    bad = Script(calls=[("delete_all_records", "{}")])
    app, _, _ = await start(make_app, [bad], [bad])
    resp = await chat(app, task="fallback")
    assert resp.status == 502 and error(resp)["code"] == "tool_call_blocked"
    [row] = await rows(app)
    assert row.tool_violations == "delete_all_records:not_allowed delete_all_records:not_allowed"
    assert [a.error_class for a in row.attempts] == ["tool_call_blocked", "tool_call_blocked"]


async def test_escalate_refuses_until_escalation_exists(make_app: AppFactory) -> None:
    app, _, secondary = await start(make_app, [Script(calls=[("delete_all_records", "{}")])])
    resp = await chat(app, task="escalate")
    assert resp.status == 502 and error(resp)["code"] == "tool_call_blocked"
    assert "escalat" in error(resp)["message"]
    assert secondary.calls == []


async def test_without_strict_extra_properties_pass_but_the_schema_holds(make_app: AppFactory) -> None:
    app, _, _ = await start(
        make_app,
        [Script(calls=[("get_weather", '{"city": "Paris", "extra": 1}')]), Script(calls=[("get_weather", "{}")])],
    )
    assert (await chat(app, task="loose")).status == 200
    assert (await chat(app, task="loose")).status == 502  # "city" is still required


async def test_a_task_without_an_allowlist_is_not_checked(make_app: AppFactory) -> None:
    app, _, _ = await start(make_app, [Script(calls=[("delete_all_records", "{}")])])
    resp = await chat(app, task="open", tools=[DELETE])
    assert resp.status == 200
    [row] = await rows(app)
    assert row.tool_violations is None


async def test_the_tenant_override(make_app: AppFactory) -> None:
    # globex may declare delete_all_records on agent; its calls that fail fall back (inherited
    # from its tenant-wide block), while strict comes from the task's default.
    bad = Script(calls=[("delete_all_records", '{"really": true}')])
    app, _, _ = await start(make_app, [Script(calls=[("delete_all_records", "{}")]), bad])
    resp = await chat(app, tools=[WEATHER, DELETE], key=OTHER)
    assert resp.status == 200 and resp.headers["x-turnout-target"] == "primary"
    resp = await chat(app, tools=[WEATHER, DELETE], key=OTHER)
    assert resp.status == 200 and resp.headers["x-turnout-target"] == "secondary"  # strict: "really" is extra
    assert (await chat(app, tools=[ORDER], key=OTHER)).status == 400  # its own allowlist replaced the task's
    assert (await chat(app, tools=[DELETE])).status == 400  # acme: the task's


async def test_a_callers_regular_expression_never_runs(make_app: AppFactory) -> None:
    # (a+)+$ against "aaaa…!" backtracks for hours; dropped, the call is checked at once.
    evil = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "pattern": "^(a+)+$"}},
        "patternProperties": {"^(b+)+$": {"type": "string"}},
    }}}  # fmt: skip
    app, _, _ = await start(
        make_app, [Script(calls=[("get_weather", orjson.dumps({"city": "a" * 40 + "!"}).decode())])]
    )
    assert (await chat(app, tools=[evil])).status == 200
    app2, _, _ = await start(make_app, [Script(calls=[("get_weather", orjson.dumps({"b" * 40 + "!": "x"}).decode())])])
    assert (await chat(app2, tools=[evil])).status == 502  # strict: a key only patternProperties admits is extra


# --- streams -----------------------------------------------------------------------------------


def deltas(resp: Response) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in resp.events() if isinstance(c, dict) and c.get("choices")]


async def test_a_streamed_call_is_released_whole_once_checked(make_app: AppFactory) -> None:
    calls = [GOOD, ("lookup_order", '{"id": 7}')]
    app, _, _ = await start(make_app, [Script(calls=calls, text="Let me check.")])
    resp = await chat(app, stream=True)
    assert resp.status == 200
    seen = deltas(resp)
    texts = [d["content"] for d in seen if d.get("content")]
    assert texts == ["Let ", "me ", "check. "]  # text passes chunk by chunk
    released = [d["tool_calls"] for d in seen if d.get("tool_calls")]
    assert len(released) == 1  # one chunk, every call whole
    assert [(c["index"], c["id"], c["function"]["name"], c["function"]["arguments"]) for c in released[0]] == [
        (0, "call_0", *GOOD),
        (1, "call_1", "lookup_order", '{"id": 7}'),
    ]
    finishes = [c["choices"][0]["finish_reason"] for c in resp.events() if isinstance(c, dict) and c.get("choices")]
    assert finishes[-1] == "tool_calls"
    assert resp.events()[-1] == "[DONE]"


async def test_a_blocked_stream_before_any_text_is_a_plain_error(make_app: AppFactory) -> None:
    app, primary, _ = await start(make_app, [Script(calls=[("delete_all_records", '{"confirm": true}')])])
    resp = await chat(app, stream=True)
    assert resp.status == 502 and resp.starts == 1
    assert error(resp)["code"] == "tool_call_blocked"
    assert "confirm" not in resp.body.decode()
    assert primary.closed_streams == 1  # the upstream stream was closed
    [row] = await rows(app)
    assert (
        row.stream
        and row.error_class == "tool_call_blocked"
        and row.tool_violations == "delete_all_records:not_allowed"
    )


async def test_a_blocked_stream_falls_back_when_nothing_was_sent(make_app: AppFactory) -> None:
    app, _, _ = await start(make_app, [Script(calls=[("lookup_order", '{"id": 1}')])])
    resp = await chat(app, task="fallback", tools=[WEATHER], stream=True)
    assert resp.status == 200 and resp.headers["x-turnout-target"] == "secondary"
    [released] = [d["tool_calls"] for d in deltas(resp) if d.get("tool_calls")]
    assert released[0]["function"]["name"] == "get_weather"
    assert "lookup_order" not in resp.body.decode()


async def test_a_call_blocked_after_text_ends_the_stream_with_an_error_event(make_app: AppFactory) -> None:
    script = Script(calls=[("get_weather", '{"city": "Paris", "exfil": "secrets"}')], text="Sure, one moment.")
    app, _, secondary = await start(make_app, [script])
    resp = await chat(app, task="fallback", stream=True)
    assert resp.status == 200  # the text went out first
    events = resp.events()
    assert [d["content"] for d in deltas(resp) if d.get("content")] == ["Sure, ", "one ", "moment. "]
    assert not any(d.get("tool_calls") for d in deltas(resp))
    assert events[-2]["error"]["code"] == "tool_call_blocked" and events[-1] == "[DONE]"
    assert "exfil" not in resp.body.decode()
    assert secondary.calls == []  # too late to fall back
    [row] = await rows(app)
    assert (row.status, row.error_class) == (502, "tool_call_blocked")


async def test_a_streamed_legacy_function_call_is_held_and_checked(make_app: AppFactory) -> None:
    app, _, _ = await start(make_app, [Script(calls=[("get_weather", '{"city": "Oslo"}')], legacy=True)])
    resp = await chat(app, tools=[], functions=[WEATHER["function"]], stream=True)
    assert resp.status == 200
    [fc] = [d["function_call"] for d in deltas(resp) if d.get("function_call")]
    assert fc == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}


# --- the metrics and the config ------------------------------------------------------------------


async def test_violations_are_counted_by_tool_and_reason(make_app: AppFactory) -> None:
    app, _, _ = await start(make_app, [Script(calls=[("made_up_tool_" + "x" * 200, "{}")]), Script(calls=[GOOD])])
    await chat(app)
    await chat(app, tools=[DELETE])
    await rows(app, 2)
    text = (await request(app, "GET", "/metrics")).body.decode()
    assert 'turnout_tool_violations_total{reason="not_allowed",task="agent",tool="other"} 1.0' in text
    assert 'turnout_tool_violations_total{reason="not_allowed",task="agent",tool="delete_all_records"} 1.0' in text


def test_rules_resolve_per_value_most_specific_first() -> None:
    cfg = validate(config())
    rules = resolve(cfg, "globex", "agent")
    assert rules is not None
    assert rules.allow == {"get_weather", "delete_all_records"} and rules.on_violation == "fallback" and rules.strict
    assert resolve(cfg, "acme", "agent") == resolve(cfg, None, "agent")
    assert resolve(cfg, None, "open") is None
    assert Allowlists(cfg).get("somebody-else", "open") is None


def test_an_empty_block_allows_nothing() -> None:
    cfg = validate(config(locked={"route": ["primary"], "tools": {}}))
    rules = resolve(cfg, None, "locked")
    assert rules is not None and rules.allow == frozenset() and rules.on_violation == "refuse"


@pytest.mark.parametrize(
    ("tenant", "problem"),
    [
        ({"task_tools": {"nope": {"allow": ["a"]}}}, "tenants.acme.task_tools.nope: unknown task"),
        ({"tools": {"on_violation": "shrug"}}, "tenants.acme.tools.on_violation"),
        ({"tools": {"allow": [""]}}, "tenants.acme.tools.allow[0]"),
    ],
)
def test_bad_tool_config_is_named(tenant: dict[str, Any], problem: str) -> None:
    raw = config()
    raw["tenants"]["acme"].update(tenant)
    with pytest.raises(ConfigError) as caught:
        validate(raw)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


# --- argument schemas, alone ---------------------------------------------------------------------


def guard_for(parameters: Any, *, strict: bool = True) -> Any:
    rules = resolve(validate(config(t={"route": ["primary"], "tools": {"allow": ["f"], "strict": strict}})), None, "t")
    assert rules is not None
    return rules.admit({"tools": [{"type": "function", "function": {"name": "f", "parameters": parameters}}]})


ADDRESS = {"type": "object", "properties": {"street": {"type": "string"}}, "required": ["street"]}


@pytest.mark.parametrize(
    ("parameters", "arguments", "ok"),
    [
        # nested objects are closed too
        ({"type": "object", "properties": {"to": ADDRESS}}, {"to": {"street": "x"}}, True),
        ({"type": "object", "properties": {"to": ADDRESS}}, {"to": {"street": "x", "zip": 1}}, False),
        # $ref: the referring scope is closed, and sees the definition's properties
        (
            {"type": "object", "properties": {"to": {"$ref": "#/$defs/a"}}, "$defs": {"a": ADDRESS}},
            {"to": {"street": "x"}},
            True,
        ),
        (
            {"type": "object", "properties": {"to": {"$ref": "#/$defs/a"}}, "$defs": {"a": ADDRESS}},
            {"to": {"street": "x", "y": 1}},
            False,
        ),
        # allOf composes: properties from each part are known to the whole
        ({"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}]}, {"a": 1, "b": 2}, True),
        ({"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}]}, {"a": 1, "c": 2}, False),
        # anyOf with the parent's own properties
        (
            {"type": "object", "properties": {"kind": {}}, "anyOf": [{"properties": {"x": {}}}]},
            {"kind": 1, "x": 2},
            True,
        ),
        # items of an array of objects
        ({"type": "object", "properties": {"l": {"type": "array", "items": ADDRESS}}}, {"l": [{"street": "s"}]}, True),
        (
            {"type": "object", "properties": {"l": {"type": "array", "items": ADDRESS}}},
            {"l": [{"street": "s", "n": 1}]},
            False,
        ),
        # what the caller opens stays open
        ({"type": "object", "additionalProperties": True}, {"anything": 1}, True),
        ({"type": "object", "additionalProperties": {"type": "integer"}}, {"n": 1}, True),
        ({"type": "object", "additionalProperties": {"type": "integer"}}, {"n": "1"}, False),
        # an untyped property takes any value, objects with any keys included
        ({"type": "object", "properties": {"blob": {}}}, {"blob": {"k": [1, {"z": None}]}}, True),
        # no parameters under strict: no arguments
        (None, {}, True),
        (None, {"x": 1}, False),
    ],
)
def test_strict_closes_every_object_scope(parameters: Any, arguments: Any, ok: bool) -> None:
    guard = guard_for(parameters)
    found = guard.violation("f", orjson.dumps(arguments).decode())
    assert (found is None) == ok, found


def test_without_strict_objects_stay_open_and_absent_parameters_take_any_object() -> None:
    assert guard_for({"type": "object", "properties": {"a": {}}}, strict=False).violation("f", '{"b": 1}') is None
    assert guard_for(None, strict=False).violation("f", '{"b": 1}') is None
    assert guard_for(None, strict=False).violation("f", "3") is not None  # still an object


def test_empty_arguments_are_an_empty_object() -> None:
    assert guard_for(None).violation("f", "") is None
    assert guard_for(ADDRESS).violation("f", "") is not None  # street is required


def test_a_ref_to_another_document_is_never_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.request

    fetched: list[Any] = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **kw: fetched.append(a))
    guard = guard_for({"type": "object", "properties": {"a": {"$ref": "http://127.0.0.1:9/internal.json"}}})
    found = guard.violation("f", '{"a": 1}')
    assert found is not None and found.reason == "invalid_arguments"
    assert fetched == []


def test_a_deeply_recursive_schema_blocks_instead_of_failing() -> None:
    guard = guard_for(
        {"$defs": {"n": {"type": "object", "properties": {"c": {"$ref": "#/$defs/n"}}}}, "$ref": "#/$defs/n"}
    )
    text = '{"c":' * 900 + "{}" + "}" * 900  # valid all the way down, deeper than Python recurses
    found = guard.violation("f", text)
    assert found is not None and found.reason == "invalid_arguments"


def test_names_are_labels_in_records() -> None:
    guard = guard_for(None)
    found = guard.violation("evil name:with spaces\n" + "x" * 100, "{}")
    assert found is not None and found.reason == "not_allowed"
    assert " " not in found.name and ":" not in found.name and len(found.name) <= 64
    guard.violations.append(found)
    assert parse_record(guard.record or "") == [(found.name, "not_allowed")]


# --- holding, alone ------------------------------------------------------------------------------


async def held_chunks(chunks: list[dict[str, Any]], on_violation: str = "refuse") -> list[dict[str, Any]]:
    from turnout.providers.base import Stream
    from turnout.safety.held import hold

    raw = config(t={"route": ["primary"], "tools": {"allow": ["f"], "on_violation": on_violation}})
    rules = resolve(validate(raw), None, "t")
    assert rules is not None
    guard = rules.admit({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]})

    async def gen() -> Any:
        for chunk in chunks:
            yield chunk

    stream = await hold(Stream(gen(), "v"), guard)
    return [chunk async for chunk in stream.chunks]


def tool_chunk(index: int, name: str | None = None, arguments: str = "") -> dict[str, Any]:
    fn: dict[str, Any] = {"arguments": arguments, **({"name": name} if name else {})}
    return {
        "choices": [{"index": 0, "delta": {"tool_calls": [{"index": index, "function": fn}]}, "finish_reason": None}]
    }


async def test_too_many_calls_in_one_stream_are_blocked() -> None:
    from turnout.safety.tools import ToolCallBlocked

    with pytest.raises(ToolCallBlocked, match="more than 128"):
        await held_chunks([tool_chunk(i, "f", "{}") for i in range(200)])


async def test_arguments_past_the_limit_are_blocked_while_held() -> None:
    from turnout.safety.tools import ToolCallRejected

    pieces = [tool_chunk(0, "f")] + [tool_chunk(0, arguments="x" * 65536) for _ in range(20)]
    with pytest.raises(ToolCallRejected, match="too large"):  # nothing sent yet: fallback is still open
        await held_chunks(pieces, "fallback")


async def test_a_stream_that_ends_without_a_finish_still_releases_its_calls() -> None:
    out = await held_chunks([tool_chunk(0, "f"), tool_chunk(0, arguments="{}")])
    assert [c["choices"][0]["delta"] for c in out] == [
        {"tool_calls": [{"index": 0, "id": "", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    ]


async def test_chunks_without_tool_calls_pass_untouched() -> None:
    chunks: list[dict[str, Any]] = [
        {"id": "x", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {"id": "x", "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]},
        {"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"id": "x", "choices": [], "usage": {"prompt_tokens": 1}},
        {"weird": True},
    ]
    assert await held_chunks([dict(c) for c in chunks]) == chunks


@pytest.mark.parametrize("tool_calls", ["absent", None, []])
async def test_a_plain_text_answer_on_a_task_with_an_allowlist_passes(make_app: AppFactory, tool_calls: Any) -> None:
    """Seen: every non-streaming answer without tool calls (no ``tool_calls``, null or []) was
    refused as "a tool call without a function name", 502 tool_call_blocked."""

    class Texting(ScriptedProvider):
        async def complete(self, call: Call) -> Completion:
            self.calls.append(call)
            body = completion_body("It is sunny in Paris.")
            if tool_calls != "absent":
                body["choices"][0]["message"]["tool_calls"] = tool_calls
            return Completion(body, Usage(7, 5), "fake-v1", "r0")

    primary = Texting("primary", Step())
    app = await make_app(config(), {"primary": primary, "secondary": ToolCaller("secondary", Script(calls=[GOOD]))})
    for task in ("agent", "fallback"):
        resp = await chat(app, task)
        assert resp.status == 200, resp.body
        assert resp.json()["choices"][0]["message"]["content"] == "It is sunny in Paris."
        assert resp.headers["x-turnout-target"] == "primary"
    assert all(r.tool_violations is None for r in await rows(app, 2))
