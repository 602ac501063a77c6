"""The embedded model's request translation (``providers/local/params.py``): what llama.cpp
would mishandle is refused by name before a worker is taken, and what SmolLM2's chat template
cannot render (an assistant turn that only called tools) is put in a form it can."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("llama_cpp")  # the module turns JSON schemas into llama.cpp grammars

from turnout.errors import RequestError
from turnout.providers.local.params import grammars, request_params

HI = [{"role": "user", "content": "hi"}]
GET = {"type": "function", "function": {"name": "get", "parameters": {"type": "object"}}}
PUT = {"type": "function", "function": {"name": "put"}}


def refused(body: dict[str, Any]) -> RequestError:
    with pytest.raises(RequestError) as err:
        request_params({"messages": HI, **body}, "m")
    assert err.value.status == 400
    return err.value


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"top_k": "x"}, "top_k"),
        ({"top_k": 1.5}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"min_p": "x"}, "min_p"),
        ({"min_p": [1]}, "min_p"),
        ({"min_p": 1.5}, "min_p"),
        ({"repeat_penalty": "x"}, "repeat_penalty"),
        ({"repeat_penalty": {}}, "repeat_penalty"),
        ({"repeat_penalty": 0}, "repeat_penalty"),
    ],
)
def test_a_sampling_knob_llama_cpp_cannot_take_is_a_400_naming_it(extra: dict[str, Any], param: str) -> None:
    """These reached llama.cpp's ctypes, whose TypeError in the worker was a 502."""
    assert refused(extra).param == param


def test_sampling_knobs_in_range_pass_and_top_k_fits_a_c_int() -> None:
    params = request_params({"messages": HI, "top_k": 2**40, "min_p": 0.05, "repeat_penalty": 1.1}, "m")
    assert (params["top_k"], params["min_p"], params["repeat_penalty"]) == (2**31 - 1, 0.05, 1.1)
    assert request_params({"messages": HI, "top_k": -1}, "m")["top_k"] == 0  # no limit, as llama.cpp reads it


def test_a_tool_round_trip_renders_for_the_chat_template() -> None:
    """OpenAI's assistant turn that only called a tool has no content; SmolLM2's template
    concatenates content, so it failed (502) on the second turn of every tool conversation."""
    call: dict[str, Any] = {
        "id": "c1",
        "type": "function",
        "function": {"name": "get", "arguments": '{"city": "Oslo"}'},
    }
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "12C"}]},
    ]
    out = request_params({"messages": messages}, "m")["messages"]
    assert out[1] == {**messages[1], "content": '{"name":"get","arguments":"{\\"city\\": \\"Oslo\\"}"}'}
    assert out[2]["content"] == "12C"
    assert messages[1]["content"] is None  # the caller's body is untouched
    said = {"role": "assistant", "content": "Let me look.", "tool_calls": [call]}
    assert request_params({"messages": [*HI, said]}, "m")["messages"][1]["content"].startswith("Let me look.\n{")


def test_a_content_part_that_is_not_text_is_named() -> None:
    image = {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}]}
    err = refused({"messages": [image]})
    assert err.param == "messages[0].content[1].type" and "text only" in err.message
    refusal = {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]}
    assert request_params({"messages": [*HI, refusal]}, "m")["messages"][1]["content"] == "No."


def test_required_with_one_tool_forces_it_and_with_several_is_refused() -> None:
    """The template does not show the model its tools: a call happens only when one is forced."""
    params = request_params({"messages": HI, "tools": [GET], "tool_choice": "required"}, "m")
    assert params["tool_choice"] == {"type": "function", "function": {"name": "get"}}
    err = refused({"tools": [GET, PUT], "tool_choice": "required"})
    assert err.param == "tool_choice" and "name one" in err.message


@pytest.mark.parametrize(
    "extra",
    [
        {"tool_choice": "banana", "tools": [GET]},
        {"tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": [GET]},
        {"tool_choice": {"type": "function", "function": {"name": "get"}}},  # no tools at all
        {"tool_choice": {"function": "get"}, "tools": [GET]},
    ],
)
def test_a_tool_choice_the_model_cannot_honour_is_refused(extra: dict[str, Any]) -> None:
    assert refused(extra).param == "tool_choice"


def test_a_forced_tool_without_parameters_takes_none() -> None:
    """llama.cpp read ``parameters`` unguarded: a KeyError, a 502."""
    params = request_params({"messages": HI, "tools": [PUT], "tool_choice": "required"}, "m")
    assert params["tools"][0]["function"]["parameters"] == {"type": "object", "properties": {}}
    assert [where for where, _ in grammars(params)] == ["tools[0].function.parameters"]


@pytest.mark.parametrize(
    "schema",
    [{"type": "wibble"}, {"$ref": "#/nope"}, {"type": "string", "pattern": "(((("}, "nope", {"not": {}}],
)
def test_a_schema_llama_cpp_cannot_follow_is_a_400_not_any_json(schema: Any) -> None:
    """llama-cpp-python falls back to any JSON when its converter fails: an answer that ignores
    the schema the caller asked for."""
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    err = refused({"response_format": fmt})
    assert err.param == "response_format.json_schema.schema" and "cannot follow this JSON schema" in err.message
    tool = {"type": "function", "function": {"name": "get", "parameters": schema}}
    assert refused({"tools": [tool], "tool_choice": "required"}).param == "tools[0].function.parameters"


def test_a_schema_becomes_the_grammar_the_worker_checks() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer"}}}
    params = request_params({"messages": HI, "response_format": fmt}, "m")
    [(where, text)] = grammars(params)
    assert where == "response_format" and "root ::=" in text
    assert "response_format" not in params  # the grammar alone: llama.cpp's fallback is never reached
    assert request_params({"messages": HI, "response_format": {"type": "json_object"}}, "m")["response_format"] == {
        "type": "json_object"
    }
