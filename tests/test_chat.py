"""The chat-completions body: valid shapes pass, each invalid field names its `param`."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from turnout.errors import RequestError
from turnout.serving.chat import ChatRequest, parse, validate

MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": "hi"}]


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "chat", "messages": copy.deepcopy(MESSAGES), **fields}


def bad(raw: dict[str, Any]) -> RequestError:
    with pytest.raises(RequestError) as info:
        validate(raw)
    assert info.value.status == 400
    assert info.value.type == "invalid_request_error"
    return info.value


# --- valid bodies -----------------------------------------------------------------------------


def test_minimal_body() -> None:
    req = validate(body())
    assert req == ChatRequest("chat", body(), stream=False, include_usage=False, data_class=None, user=None)


def test_parse_reads_json_bytes() -> None:
    req = parse(orjson.dumps(body(stream=True)))
    assert req.task == "chat"
    assert req.stream is True


@pytest.mark.parametrize("raw", [b"{", b"", b"nope", b"\xff"])
def test_parse_refuses_invalid_json(raw: bytes) -> None:
    with pytest.raises(RequestError) as info:
        parse(raw)
    assert info.value.code == "invalid_json"
    assert info.value.param is None


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"s"', b"null"])
def test_parse_refuses_a_non_object(raw: bytes) -> None:
    with pytest.raises(RequestError) as info:
        parse(raw)
    assert info.value.code == "invalid_json"
    assert "JSON object" in info.value.message


def test_tools_and_the_whole_tool_call_round_trip_pass() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": "use tools"},
        {"role": "user", "content": "weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "12C"},
        {"role": "assistant", "function_call": {"name": "weather", "arguments": "{}"}},
        {"role": "function", "name": "weather", "content": "12C"},
    ]
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    raw = {"model": "chat", "messages": messages, "tools": tools, "tool_choice": "auto"}
    req = validate(raw)
    assert req.body == raw  # passed through untouched


def test_content_parts_pass() -> None:
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    validate(body(messages=[{"role": "user", "content": parts}]))


@pytest.mark.parametrize(
    "fmt",
    [
        {"type": "text"},
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": True}},
    ],
)
def test_response_formats_pass(fmt: dict[str, Any]) -> None:
    assert validate(body(response_format=fmt)).body["response_format"] == fmt


def test_stream_options_with_stream() -> None:
    req = validate(body(stream=True, stream_options={"include_usage": True}))
    assert req.stream is True
    assert req.include_usage is True
    req = validate(body(stream=True, stream_options={}))
    assert req.include_usage is False


def test_numbers_at_their_bounds_pass() -> None:
    validate(
        body(
            temperature=0,
            top_p=1.0,
            presence_penalty=-2,
            frequency_penalty=2.0,
            max_tokens=1,
            max_completion_tokens=5,
            n=1,
            top_logprobs=0,
            seed=-7,
            stop=["a", "b", "c", "d"],
        )
    )
    validate(body(temperature=2, top_p=0, stop="END"))


def test_explicit_nulls_are_absent_fields() -> None:
    req = validate(
        body(stream=None, stream_options=None, max_tokens=None, temperature=None, stop=None, tools=None, metadata=None)
    )
    assert req.stream is False


def test_unknown_fields_pass_through() -> None:
    raw = body(logit_bias={"1": 2}, parallel_tool_calls=False, vendor_extension={"x": [1]})
    assert validate(raw).body == raw


# --- invalid fields, each naming its param -------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ({"messages": MESSAGES}, "model"),
        (body(model=""), "model"),
        (body(model=3), "model"),
        ({"model": "chat"}, "messages"),
        (body(messages=[]), "messages"),
        (body(messages={"role": "user"}), "messages"),
        (body(messages=["hi"]), "messages[0]"),
        (body(messages=[*MESSAGES, {"role": "robot", "content": "x"}]), "messages[1].role"),
        (body(messages=[{"content": "x"}]), "messages[0].role"),
        (body(messages=[{"role": "user"}]), "messages[0].content"),
        (body(messages=[{"role": "user", "content": None}]), "messages[0].content"),
        (body(messages=[{"role": "assistant", "content": None}]), "messages[0].content"),
        (body(messages=[{"role": "assistant", "content": None, "tool_calls": []}]), "messages[0].content"),
        (body(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
        (body(messages=[{"role": "user", "content": {"type": "text"}}]), "messages[0].content"),
        (body(messages=[{"role": "user", "content": ["text"]}]), "messages[0].content"),
        (body(messages=[{"role": "user", "content": [{"text": "no type"}]}]), "messages[0].content"),
        (body(messages=[{"role": "tool", "content": "12C"}]), "messages[0].tool_call_id"),
        (body(messages=[{"role": "tool", "content": "12C", "tool_call_id": 1}]), "messages[0].tool_call_id"),
        (body(stream="yes"), "stream"),
        (body(stream=1), "stream"),
        (body(stream_options={"include_usage": True}), "stream_options"),
        (body(stream=False, stream_options={"include_usage": True}), "stream_options"),
        (body(stream=True, stream_options=[]), "stream_options"),
        (body(stream=True, stream_options={"include_usage": "yes"}), "stream_options.include_usage"),
        (body(max_tokens=0), "max_tokens"),
        (body(max_tokens=1.5), "max_tokens"),
        (body(max_tokens="10"), "max_tokens"),
        (body(max_completion_tokens=0), "max_completion_tokens"),
        (body(n=0), "n"),
        (body(top_logprobs=-1), "top_logprobs"),
        (body(seed=1.0), "seed"),
        (body(temperature=2.1), "temperature"),
        (body(temperature=-0.1), "temperature"),
        (body(temperature="hot"), "temperature"),
        (body(top_p=1.01), "top_p"),
        (body(presence_penalty=-2.5), "presence_penalty"),
        (body(frequency_penalty=3), "frequency_penalty"),
        (body(stop=5), "stop"),
        (body(stop=["a", "b", "c", "d", "e"]), "stop"),
        (body(stop=["a", 1]), "stop"),
        (body(tools={"type": "function"}), "tools"),
        (body(tools=["weather"]), "tools[0]"),
        (body(tools=[{"type": "function", "function": {"name": "ok"}}, {"type": "function"}]), "tools[1]"),
        (body(tools=[{"type": "retrieval", "function": {"name": "x"}}]), "tools[0]"),
        (body(tools=[{"type": "function", "function": {"name": 3}}]), "tools[0]"),
        (body(tools=[{"type": "function", "function": {"name": ""}}]), "tools[0].function.name"),
        # the same name twice: the model's calls of it, and a tool_choice naming it, are ambiguous
        (body(tools=[{"type": "function", "function": {"name": n}} for n in "aba"]), "tools[2].function.name"),
        (body(response_format="json"), "response_format"),
        (body(response_format={"type": "yaml"}), "response_format"),
        (body(response_format={}), "response_format"),
        (body(response_format={"type": []}), "response_format"),
        (body(response_format={"type": {"a": 1}}), "response_format"),
        (body(response_format={"type": "json_schema"}), "response_format.json_schema"),
        (body(response_format={"type": "json_schema", "json_schema": "x"}), "response_format.json_schema"),
        (body(user=5), "user"),
        (body(metadata="x"), "metadata"),
        (body(metadata=["data_class"]), "metadata"),
    ],
)
def test_an_invalid_field_names_its_param(raw: dict[str, Any], param: str) -> None:
    err = bad(raw)
    assert err.param == param
    assert err.code == "invalid_value"
    assert param.split("[")[0].split(".")[0] in err.message


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens", "n", "top_logprobs", "seed"])
@pytest.mark.parametrize("value", [True, False])
def test_bool_is_not_an_integer(name: str, value: bool) -> None:
    assert bad(body(**{name: value})).param == name


@pytest.mark.parametrize("name", ["temperature", "top_p", "presence_penalty", "frequency_penalty"])
def test_bool_is_not_a_number(name: str) -> None:
    assert bad(body(**{name: True})).param == name


def test_the_first_problem_is_the_one_reported() -> None:
    # model is checked before messages, so a body with both wrong names model
    assert bad({"model": 1, "messages": []}).param == "model"


# --- turnout metadata ---------------------------------------------------------------------------


def test_turnout_metadata_is_taken_out_and_the_rest_kept() -> None:
    raw = body(
        metadata={
            "data_class": "restricted",
            "user": "u-42",
            "max_latency_ms": 500,
            "max_cost_usd": 0.01,
            "trace": "abc",
        }
    )
    req = validate(raw)
    assert req.data_class == "restricted"
    assert req.user == "u-42"
    assert req.body["metadata"] == {"trace": "abc"}
    assert req.body["messages"] == MESSAGES


def test_metadata_holding_only_turnout_fields_is_dropped() -> None:
    req = validate(body(metadata={"data_class": "public", "max_cost_usd": 1}))
    assert "metadata" not in req.body
    assert req.data_class == "public"


def test_metadata_without_turnout_fields_is_forwarded_as_is() -> None:
    raw = body(metadata={"trace": "abc"})
    req = validate(raw)
    assert req.body["metadata"] == {"trace": "abc"}
    assert req.data_class is None


def test_user_comes_from_the_body_when_metadata_has_none() -> None:
    req = validate(body(user="top-level", metadata={"data_class": "public"}))
    assert req.user == "top-level"
    assert req.body["user"] == "top-level"  # OpenAI's own field is forwarded


def test_metadata_user_wins_over_the_body_user() -> None:
    req = validate(body(user="top-level", metadata={"user": "from-meta"}))
    assert req.user == "from-meta"
    assert "metadata" not in req.body


def test_the_input_dict_is_not_mutated() -> None:
    raw = body(metadata={"data_class": "restricted", "user": "u", "trace": "abc"})
    before = copy.deepcopy(raw)
    req = validate(raw)
    assert raw == before
    assert req.body is not raw
    assert req.body["metadata"] is not raw["metadata"]
