"""OpenAI chat ⇄ Bedrock Converse translation: every mapping, the LiteLLM regressions, errors
with their params, and property tests (round trip of conversations; streaming reassembles to
the non-streaming answer). Every request produced is also checked against botocore's own
Converse input shape."""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from turnout.errors import RequestError
from turnout.providers.base import Usage
from turnout.providers.bedrock.translate import (
    JSON_OBJECT_INSTRUCTION,
    LEADING_USER_TEXT,
    StreamTranslator,
    Translation,
    assistant_message,
    finish_reason,
    from_converse,
    to_converse,
    tool_use_id,
    usage_of,
)

botocore_session = pytest.importorskip("botocore.session")
botocore_validate = pytest.importorskip("botocore.validate")

_CONVERSE_SHAPE = (
    botocore_session.get_session().get_service_model("bedrock-runtime").operation_model("Converse").input_shape
)
_STREAM_SHAPE = (
    botocore_session.get_session().get_service_model("bedrock-runtime").operation_model("ConverseStream").input_shape
)
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def assert_valid(body: dict[str, Any], *, stream: bool = False) -> None:
    """What botocore would refuse to send is a bug in the translation."""
    report = botocore_validate.ParamValidator().validate(
        {"modelId": "m", **body}, _STREAM_SHAPE if stream else _CONVERSE_SHAPE
    )
    assert not report.has_errors(), report.generate_report()


def convert(body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    out = to_converse({"model": "t", **body}, **kwargs)
    assert_valid(out.request, stream=kwargs.get("stream", False))
    return out.request


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def call(call_id: str, name: str, args: Any) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


def tool_def(name: str, **fn: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, **fn}}


WEATHER = [
    user("Weather in Paris and Rome?"),
    {"role": "assistant", "content": None, "tool_calls": [call("t1", "weather", {"city": "Paris"})]},
    {"role": "tool", "tool_call_id": "t1", "content": '{"tempC": 21}'},
]


# -- messages ---------------------------------------------------------------------------------


def test_system_and_developer_messages_become_system_blocks_in_order() -> None:
    out = convert(
        {
            "messages": [
                {"role": "system", "content": "one"},
                user("hi"),
                {"role": "developer", "content": [{"type": "text", "text": "two"}]},
                {"role": "assistant", "content": "hello"},
                {"role": "system", "content": "three"},
                user("bye"),
            ]
        }
    )
    assert out["system"] == [{"text": "one"}, {"text": "two"}, {"text": "three"}]
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]


def test_consecutive_messages_of_one_role_are_merged() -> None:
    out = convert(
        {
            "messages": [
                user("a"),
                {"role": "user", "content": [{"type": "text", "text": "b"}]},
                {"role": "assistant", "content": "c"},
                {"role": "assistant", "content": "d"},
            ]
        }
    )
    assert out["messages"] == [
        {"role": "user", "content": [{"text": "a"}, {"text": "b"}]},
        {"role": "assistant", "content": [{"text": "c"}, {"text": "d"}]},
    ]


def test_a_leading_assistant_message_gets_a_placeholder_user_turn() -> None:
    out = convert({"messages": [{"role": "assistant", "content": "Hi, how can I help?"}, user("Weather?")]})
    assert out["messages"][0] == {"role": "user", "content": [{"text": LEADING_USER_TEXT}]}
    assert out["messages"][1]["role"] == "assistant"


def test_blank_text_is_dropped_and_an_emptied_message_lets_its_neighbours_merge() -> None:
    out = convert({"messages": [user("a"), {"role": "assistant", "content": "  \n"}, user("b")]})
    assert out["messages"] == [{"role": "user", "content": [{"text": "a"}, {"text": "b"}]}]


def test_only_system_messages_is_a_request_error() -> None:
    with pytest.raises(RequestError) as err:
        to_converse({"messages": [{"role": "system", "content": "x"}]})
    assert err.value.param == "messages"


@pytest.mark.parametrize(("mime", "fmt"), [("png", "png"), ("jpeg", "jpeg"), ("jpg", "jpeg"), ("webp", "webp")])
def test_data_url_images_become_image_blocks(mime: str, fmt: str) -> None:
    part = {"type": "image_url", "image_url": {"url": f"data:image/{mime};base64,{PNG}"}}
    out = convert({"messages": [{"role": "user", "content": [{"type": "text", "text": "what?"}, part]}]})
    assert out["messages"][0]["content"][1] == {"image": {"format": fmt, "source": {"bytes": PNG}}}


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("https://example.com/cat.png", "cannot fetch"),
        ("http://example.com/cat.png", "cannot fetch"),
        (f"data:image/svg+xml;base64,{PNG}", "png, jpeg, gif or webp"),
        ("data:image/png;base64,not base64!", "not valid base64"),
        ("data:image/png;base64,", "no image data"),
    ],
)
def test_images_converse_cannot_take_are_request_errors(url: str, needle: str) -> None:
    part = {"type": "image_url", "image_url": {"url": url}}
    with pytest.raises(RequestError) as err:
        to_converse({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, part]}]})
    assert err.value.param == "messages[0].content[1].image_url"
    assert needle in err.value.message


def test_an_unsupported_part_type_names_the_part() -> None:
    part = {"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}
    with pytest.raises(RequestError) as err:
        to_converse(
            {"messages": [user("x"), {"role": "assistant", "content": "y"}, {"role": "user", "content": [part]}]}
        )
    assert err.value.param == "messages[2].content[0]"


def test_an_image_in_a_system_message_is_a_request_error() -> None:
    part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    with pytest.raises(RequestError) as err:
        to_converse({"messages": [{"role": "system", "content": [part]}, user("x")]})
    assert err.value.param == "messages[0].content[0]"


def test_assistant_tool_calls_become_tool_use_blocks_after_the_text() -> None:
    calls = [call("t1", "weather", {"city": "Paris"}), call("t2", "weather", {"city": "Rome"})]
    out = convert(
        {"messages": [user("?"), {"role": "assistant", "content": "Checking.", "tool_calls": calls}]},
    )
    assert out["messages"][1]["content"] == [
        {"text": "Checking."},
        {"toolUse": {"toolUseId": "t1", "name": "weather", "input": {"city": "Paris"}}},
        {"toolUse": {"toolUseId": "t2", "name": "weather", "input": {"city": "Rome"}}},
    ]


def test_empty_tool_call_arguments_are_an_empty_object() -> None:
    bad = {"id": "t1", "type": "function", "function": {"name": "now", "arguments": ""}}
    out = convert({"messages": [user("?"), {"role": "assistant", "content": None, "tool_calls": [bad]}]})
    assert out["messages"][1]["content"][0]["toolUse"]["input"] == {}


@pytest.mark.parametrize("arguments", ['{"city": "Par', "[1, 2]", '"text"'])
def test_tool_call_arguments_must_be_a_json_object(arguments: str) -> None:
    bad = {"id": "t1", "type": "function", "function": {"name": "weather", "arguments": arguments}}
    with pytest.raises(RequestError) as err:
        to_converse({"messages": [user("?"), {"role": "assistant", "content": None, "tool_calls": [bad]}]})
    assert err.value.param == "messages[1].tool_calls[0].function.arguments"


def test_a_tool_call_without_id_or_name_is_a_request_error() -> None:
    bad = {"type": "function", "function": {"name": "weather", "arguments": "{}"}}
    with pytest.raises(RequestError) as err:
        to_converse({"messages": [user("?"), {"role": "assistant", "content": None, "tool_calls": [bad]}]})
    assert err.value.param == "messages[1].tool_calls[0]"


def test_tool_results_are_json_when_an_object_and_text_otherwise_and_merge_into_one_user_turn() -> None:
    calls = [call("t1", "a", {}), call("t2", "b", {}), call("t3", "c", {})]
    out = convert(
        {
            "messages": [
                user("?"),
                {"role": "assistant", "content": None, "tool_calls": calls},
                {"role": "tool", "tool_call_id": "t1", "content": '{"ok": true}'},
                {"role": "tool", "tool_call_id": "t2", "content": "[1, 2]"},
                {"role": "tool", "tool_call_id": "t3", "content": [{"type": "text", "text": "plain"}]},
                user("and?"),
            ]
        }
    )
    assert len(out["messages"]) == 3
    turn = out["messages"][2]
    assert turn["role"] == "user"
    assert [b.get("toolResult", {}).get("content") for b in turn["content"]] == [
        [{"json": {"ok": True}}],
        [{"text": "[1, 2]"}],
        [{"text": "plain"}],
        None,
    ]
    assert turn["content"][3] == {"text": "and?"}
    assert all(b["toolResult"]["status"] == "success" for b in turn["content"][:3])


def test_a_legacy_function_message_is_a_request_error() -> None:
    with pytest.raises(RequestError) as err:
        to_converse({"messages": [user("?"), {"role": "function", "name": "f", "content": "x"}]})
    assert err.value.param == "messages[1].role"


# -- tools ------------------------------------------------------------------------------------


def test_tools_become_tool_specs() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    out = convert(
        {
            "messages": [user("?")],
            "tools": [tool_def("weather", description="Get weather", parameters=schema, strict=True)],
            "tool_choice": "auto",
        }
    )
    assert out["toolConfig"] == {
        "tools": [
            {
                "toolSpec": {
                    "name": "weather",
                    "description": "Get weather",
                    "inputSchema": {"json": schema},
                    "strict": True,
                }
            }
        ],
        "toolChoice": {"auto": {}},
    }


@pytest.mark.parametrize(
    "fn",
    [{}, {"description": ""}, {"description": "  ", "parameters": {}}, {"parameters": None}],
)
def test_empty_description_or_parameters_still_make_a_valid_tool_spec(fn: dict[str, Any]) -> None:
    # LiteLLM regression: an empty description or missing parameters made Bedrock reject the spec.
    out = convert({"messages": [user("?")], "tools": [tool_def("now", **fn)]})
    assert out["toolConfig"]["tools"] == [
        {"toolSpec": {"name": "now", "inputSchema": {"json": {"type": "object", "properties": {}}}}}
    ]


def test_parameters_without_a_type_are_an_object_schema() -> None:
    out = convert({"messages": [user("?")], "tools": [tool_def("f", parameters={"properties": {"a": {}}})]})
    assert out["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"] == {
        "type": "object",
        "properties": {"a": {}},
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"auto": {}}),
        ("required", {"any": {}}),
        ({"type": "function", "function": {"name": "b"}}, {"tool": {"name": "b"}}),
    ],
)
def test_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    out = convert({"messages": [user("?")], "tools": [tool_def("a"), tool_def("b")], "tool_choice": choice})
    assert out["toolConfig"]["toolChoice"] == expected


def test_tool_choice_absent_leaves_the_default() -> None:
    out = convert({"messages": [user("?")], "tools": [tool_def("a")]})
    assert "toolChoice" not in out["toolConfig"]


@pytest.mark.parametrize("choice", [{"type": "function", "function": {"name": "zzz"}}, "sometimes", {"type": "x"}])
def test_a_bad_tool_choice_is_a_request_error(choice: Any) -> None:
    with pytest.raises(RequestError) as err:
        to_converse({"messages": [user("?")], "tools": [tool_def("a")], "tool_choice": choice})
    assert err.value.param == "tool_choice"


def test_tool_choice_none_leaves_the_tools_out() -> None:
    out = convert({"messages": [user("?")], "tools": [tool_def("a")], "tool_choice": "none"})
    assert "toolConfig" not in out


def test_tool_choice_none_with_tool_history_keeps_the_tools_without_a_choice() -> None:
    out = convert({"messages": WEATHER, "tools": [tool_def("weather")], "tool_choice": "none"})
    assert out["toolConfig"] == {
        "tools": [{"toolSpec": {"name": "weather", "inputSchema": {"json": {"type": "object", "properties": {}}}}}]
    }


def test_tool_history_without_tools_synthesizes_tool_specs() -> None:
    # LiteLLM regression: "The toolConfig field must be defined when using toolUse and toolResult".
    messages = [
        *WEATHER,
        {"role": "assistant", "content": None, "tool_calls": [call("t2", "clock", {}), call("t3", "weather", {})]},
        {"role": "tool", "tool_call_id": "t2", "content": "noon"},
        {"role": "tool", "tool_call_id": "t3", "content": "sun"},
    ]
    out = convert({"messages": messages})
    assert [t["toolSpec"]["name"] for t in out["toolConfig"]["tools"]] == ["weather", "clock"]
    assert "toolChoice" not in out["toolConfig"]


def test_tool_results_alone_still_get_a_tool_config() -> None:
    out = convert({"messages": [user("?"), {"role": "tool", "tool_call_id": "t1", "content": "x"}]})
    assert out["toolConfig"]["tools"][0]["toolSpec"]["name"] == "tool"


def test_tools_are_kept_next_to_structured_output() -> None:
    # LiteLLM regression: tools were dropped from chat completions when another feature was on.
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}}
    out = convert({"messages": [user("?")], "tools": [tool_def("a")], "response_format": fmt})
    assert [t["toolSpec"]["name"] for t in out["toolConfig"]["tools"]] == ["a"]
    assert "outputConfig" in out


# -- inference, formats, extras ---------------------------------------------------------------


def test_inference_config() -> None:
    out = convert(
        {"messages": [user("?")], "max_tokens": 10, "max_completion_tokens": 20, "temperature": 0, "top_p": 0.5}
    )
    assert out["inferenceConfig"] == {"maxTokens": 20, "temperature": 0, "topP": 0.5}
    assert convert({"messages": [user("?")], "max_tokens": 7})["inferenceConfig"] == {"maxTokens": 7}
    assert "inferenceConfig" not in convert({"messages": [user("?")]})


@pytest.mark.parametrize(
    ("stop", "expected"), [("\n\n", ["\n\n"]), (["a", "", "b"], ["a", "b"]), ([], None), ("", None)]
)
def test_stop_sequences(stop: Any, expected: list[str] | None) -> None:
    out = convert({"messages": [user("?")], "stop": stop})
    assert out.get("inferenceConfig", {}).get("stopSequences") == expected


def test_json_schema_becomes_output_config_with_the_schema_as_a_string() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False}
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "thing", "description": "A thing", "schema": schema, "strict": True},
    }
    out = to_converse({"messages": [user("?")], "response_format": fmt})
    assert out.json_via_tool is None
    js = out.request["outputConfig"]["textFormat"]["structure"]["jsonSchema"]
    assert out.request["outputConfig"]["textFormat"]["type"] == "json_schema"
    assert json.loads(js["schema"]) == schema
    assert (js["name"], js["description"]) == ("thing", "A thing")
    assert_valid(out.request)


def test_json_schema_without_structured_output_forces_a_json_tool() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}}
    out = to_converse({"messages": [user("?")], "response_format": fmt}, structured_output=False)
    assert out.json_via_tool == "json_response"
    assert "outputConfig" not in out.request
    (tool,) = out.request["toolConfig"]["tools"]
    assert tool["toolSpec"]["name"] == "json_response"
    assert tool["toolSpec"]["inputSchema"] == {"json": schema}
    assert tool["toolSpec"]["strict"] is True
    assert out.request["toolConfig"]["toolChoice"] == {"any": {}}
    assert_valid(out.request)


def test_the_json_tool_avoids_the_callers_tool_names_and_keeps_a_named_choice() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    choice = {"type": "function", "function": {"name": "json_response"}}
    out = to_converse(
        {"messages": [user("?")], "response_format": fmt, "tools": [tool_def("json_response")], "tool_choice": choice},
        structured_output=False,
    )
    assert out.json_via_tool == "json_response_"
    assert [t["toolSpec"]["name"] for t in out.request["toolConfig"]["tools"]] == ["json_response", "json_response_"]
    assert out.request["toolConfig"]["toolChoice"] == {"tool": {"name": "json_response"}}


def test_json_object_adds_a_system_instruction() -> None:
    out = convert(
        {
            "messages": [{"role": "system", "content": "Be terse."}, user("?")],
            "response_format": {"type": "json_object"},
        }
    )
    assert out["system"] == [{"text": "Be terse."}, {"text": JSON_OBJECT_INSTRUCTION}]
    assert "outputConfig" not in out
    assert "system" not in convert({"messages": [user("?")], "response_format": {"type": "text"}})


def test_unknown_fields_go_to_additional_model_request_fields_over_the_configured_ones() -> None:
    out = convert(
        {
            "messages": [user("?")],
            "top_k": 40,
            "seed": 7,
            "reasoning_effort": "low",
            "min_p": None,
            "parallel_tool_calls": False,
            "store": True,
            "stream": True,
            "stream_options": {"include_usage": True},
            "n": 1,
            "logprobs": False,
        },
        additional_fields={"top_k": 1, "reasoning_config": {"type": "enabled"}},
    )
    assert out["additionalModelRequestFields"] == {
        "top_k": 40,
        "reasoning_config": {"type": "enabled"},
        "seed": 7,
        "reasoning_effort": "low",
    }


def test_guardrail_from_config_keys_with_stream_mode_only_when_streaming() -> None:
    guard = {"id": "gr-1", "version": "2", "trace": "enabled", "stream_mode": "async"}
    assert convert({"messages": [user("?")]}, guardrail=guard)["guardrailConfig"] == {
        "guardrailIdentifier": "gr-1",
        "guardrailVersion": "2",
        "trace": "enabled",
    }
    streamed = convert({"messages": [user("?")]}, guardrail=guard, stream=True)
    assert streamed["guardrailConfig"]["streamProcessingMode"] == "async"


def test_guardrail_in_converse_keys_passes_through() -> None:
    guard = {"guardrailIdentifier": "gr-1", "guardrailVersion": "DRAFT"}
    assert convert({"messages": [user("?")]}, guardrail=guard, stream=True)["guardrailConfig"] == guard


def test_user_and_string_metadata_become_request_metadata() -> None:
    meta = {"tenant": "acme", "n": 3, "bad": "no\u00e9", "": "empty key", "team": "x" * 257}
    out = convert({"messages": [user("?")], "user": "u-1", "metadata": meta})
    assert out["requestMetadata"] == {"user": "u-1", "tenant": "acme"}


def test_request_metadata_keeps_at_most_16_entries() -> None:
    out = convert({"messages": [user("?")], "metadata": {f"k{i}": "v" for i in range(20)}})
    assert len(out["requestMetadata"]) == 16


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
    ],
)
def test_fields_that_cannot_be_honoured_are_request_errors(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestError) as err:
        to_converse({"messages": [user("?")], **extra})
    assert err.value.param == param
    assert err.value.status == 400


def test_the_body_is_not_mutated() -> None:
    body = {
        "messages": [*WEATHER, {"role": "assistant", "content": "21C"}],
        "tools": [tool_def("weather", parameters={"type": "object"})],
        "metadata": {"a": "b"},
    }
    before = copy.deepcopy(body)
    to_converse(body, additional_fields={"x": 1})
    assert body == before


# -- response ---------------------------------------------------------------------------------


def converse_reply(content: list[dict[str, Any]], stop: str = "end_turn", **usage: int) -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop,
        "usage": {"inputTokens": 5, "outputTokens": 4, "totalTokens": 9, **usage},
        "metrics": {"latencyMs": 42},
    }


def test_from_converse_text_tool_calls_and_reasoning() -> None:
    resp = converse_reply(
        [
            {"reasoningContent": {"reasoningText": {"text": "think", "signature": "sig"}}},
            {"text": "Checking "},
            {"toolUse": {"toolUseId": "t1", "name": "weather", "input": {"city": "Paris"}}},
            {"text": "both."},
            {"toolUse": {"toolUseId": "t2", "name": "weather", "input": {"city": "Rome"}}},
        ],
        "tool_use",
    )
    out = from_converse(resp, model="claude", created=123, completion_id="chatcmpl-x")
    assert out["id"] == "chatcmpl-x"
    assert (out["object"], out["model"], out["created"]) == ("chat.completion", "claude", 123)
    (choice,) = out["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["native_finish_reason"] == "tool_use"
    msg = choice["message"]
    assert msg["content"] == "Checking both."
    assert msg["reasoning_content"] == "think"
    assert [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in msg["tool_calls"]] == [
        ("t1", "weather", {"city": "Paris"}),
        ("t2", "weather", {"city": "Rome"}),
    ]
    assert all(c["type"] == "function" for c in msg["tool_calls"])


def test_from_converse_tool_calls_only_have_null_content_and_a_fresh_id() -> None:
    resp = converse_reply([{"toolUse": {"toolUseId": "t1", "name": "now", "input": {}}}], "tool_use")
    out = from_converse(resp, model="m", created=0)
    assert out["id"].startswith("chatcmpl-")
    assert out["choices"][0]["message"]["content"] is None
    assert out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == "{}"
    assert "reasoning_content" not in out["choices"][0]["message"]


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("tool_use", "tool_calls"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
        ("malformed_model_output", "stop"),
        ("malformed_tool_use", "stop"),
        ("something_new", "stop"),
        (None, "stop"),
    ],
)
def test_finish_reason(stop: str | None, finish: str) -> None:
    assert finish_reason(stop) == finish


def test_malformed_output_keeps_the_native_reason() -> None:
    out = from_converse(converse_reply([{"text": "x"}], "malformed_tool_use"), model="m", created=0)
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["choices"][0]["native_finish_reason"] == "malformed_tool_use"


def test_usage_counts_cache_reads_and_writes_in_the_prompt() -> None:
    usage = {
        "inputTokens": 10,
        "outputTokens": 4,
        "totalTokens": 114,
        "cacheReadInputTokens": 80,
        "cacheWriteInputTokens": 20,
    }
    assert usage_of(usage) == {
        "prompt_tokens": 110,
        "completion_tokens": 4,
        "total_tokens": 114,
        "prompt_tokens_details": {"cached_tokens": 80},
        "cache_creation_input_tokens": 20,
    }
    assert usage_of({"inputTokens": 3, "outputTokens": 2, "totalTokens": 5})["prompt_tokens"] == 3


@pytest.mark.parametrize(
    "usage",
    [
        None,  # no usage at all: not a free answer
        [1, 2],
        {"inputTokens": "10", "outputTokens": 2},
        {"inputTokens": 10, "outputTokens": 2.5},
        {"inputTokens": True, "outputTokens": 2},
        {"inputTokens": -100, "outputTokens": 2, "cacheReadInputTokens": 200},  # would lower the prompt to 100
    ],
)
def test_a_usage_that_is_not_counts_is_no_usage(usage: Any) -> None:
    """Unreadable, never zeros or a lowered count: the gateway counts the answer itself."""
    assert usage_of(usage) == {}
    assert Usage.from_openai(usage_of(usage)) is None


def test_json_via_tool_answer_becomes_the_content() -> None:
    request = Translation({}, json_via_tool="json_response")
    resp = converse_reply(
        [{"text": "Here it is:"}, {"toolUse": {"toolUseId": "t", "name": "json_response", "input": {"a": 1}}}],
        "tool_use",
    )
    out = from_converse(resp, model="m", created=0, request=request)
    assert json.loads(out["choices"][0]["message"]["content"]) == {"a": 1}
    assert "tool_calls" not in out["choices"][0]["message"]
    assert out["choices"][0]["finish_reason"] == "stop"


def test_json_via_tool_next_to_a_real_tool_call_keeps_the_call() -> None:
    request = Translation({}, json_via_tool="json_response")
    resp = converse_reply([{"toolUse": {"toolUseId": "t", "name": "search", "input": {"q": "x"}}}], "tool_use")
    out = from_converse(resp, model="m", created=0, request=request)
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert out["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "search"
    text_only = from_converse(converse_reply([{"text": "no"}]), model="m", created=0, request=request)
    assert text_only["choices"][0]["message"]["content"] == "no"


# -- stream -----------------------------------------------------------------------------------


def feed_all(translator: StreamTranslator, events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [chunk for event, payload in events for chunk in translator.feed(event, payload)]


def deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks if c["choices"]]


def test_stream_chunks_for_text_and_parallel_tool_calls() -> None:
    events: list[tuple[str, dict[str, Any]]] = [
        ("messageStart", {"role": "assistant", "p": "abcdef"}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Checking"}, "p": "ab"}),
        ("contentBlockStop", {"contentBlockIndex": 0}),
        ("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t1", "name": "weather"}}}),
        ("contentBlockStart", {"contentBlockIndex": 2, "start": {"toolUse": {"toolUseId": "t2", "name": "clock"}}}),
        ("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": '{"tz"'}}}),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"city": "Paris"}'}}}),
        ("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": ': "UTC"}'}}}),
        ("contentBlockStop", {"contentBlockIndex": 1}),
        ("contentBlockStop", {"contentBlockIndex": 2}),
        ("messageStop", {"stopReason": "tool_use"}),
        ("metadata", {"usage": {"inputTokens": 5, "outputTokens": 4, "totalTokens": 9}, "metrics": {"latencyMs": 1}}),
    ]
    translator = StreamTranslator("m", 7, "chatcmpl-s")
    chunks = feed_all(translator, events[:-2])
    assert not translator.finished
    chunks += feed_all(translator, events[-2:])
    assert translator.finished
    assert all(c["id"] == "chatcmpl-s" and c["object"] == "chat.completion.chunk" for c in chunks)
    assert deltas(chunks) == [
        {"role": "assistant", "content": ""},
        {"content": "Checking"},
        {
            "tool_calls": [
                {"index": 0, "id": "t1", "type": "function", "function": {"name": "weather", "arguments": ""}}
            ]
        },
        {"tool_calls": [{"index": 1, "id": "t2", "type": "function", "function": {"name": "clock", "arguments": ""}}]},
        {"tool_calls": [{"index": 1, "function": {"arguments": '{"tz"'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Paris"}'}}]},
        {"tool_calls": [{"index": 1, "function": {"arguments": ': "UTC"}'}}]},
        {},
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-2]["choices"][0]["native_finish_reason"] == "tool_use"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] == 9


def test_stream_reasoning_and_ignored_events() -> None:
    translator = StreamTranslator("m", 0, "c")
    assert translator.feed(
        "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "hm"}}}
    )[0]["choices"][0]["delta"] == {"reasoning_content": "hm"}
    assert (
        translator.feed(
            "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "s"}}}
        )
        == []
    )
    assert translator.feed("contentBlockStop", {"contentBlockIndex": 0}) == []
    assert translator.feed("somethingNew", {"x": 1}) == []
    assert translator.feed("contentBlockStart", {"contentBlockIndex": 1, "start": {"image": {}}}) == []


def test_stream_tool_without_input_gets_empty_object_arguments() -> None:
    translator = StreamTranslator("m", 0, "c")
    feed_all(
        translator,
        [("contentBlockStart", {"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "t", "name": "now"}}})],
    )
    (chunk,) = translator.feed("contentBlockStop", {"contentBlockIndex": 0})
    assert chunk["choices"][0]["delta"] == {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}


def test_stream_json_via_tool_fragments_become_content_and_the_preamble_is_dropped() -> None:
    request = Translation({}, json_via_tool="json_response")
    events: list[tuple[str, dict[str, Any]]] = [
        ("messageStart", {"role": "assistant"}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Sure:"}}),
        (
            "contentBlockStart",
            {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t", "name": "json_response"}}},
        ),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"a":'}}}),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": " 1}"}}}),
        ("contentBlockStop", {"contentBlockIndex": 1}),
        ("messageStop", {"stopReason": "tool_use"}),
    ]
    chunks = feed_all(StreamTranslator("m", 0, "c", request), events)
    assert deltas(chunks) == [{"role": "assistant", "content": ""}, {"content": '{"a":'}, {"content": " 1}"}, {}]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_stream_json_via_tool_unused_flushes_the_held_text() -> None:
    request = Translation({}, json_via_tool="json_response")
    events: list[tuple[str, dict[str, Any]]] = [
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "a"}}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "b"}}),
        ("messageStop", {"stopReason": "end_turn"}),
    ]
    assert deltas(feed_all(StreamTranslator("m", 0, "c", request), events)) == [{"content": "ab"}, {}]


# -- properties -------------------------------------------------------------------------------

_NAMES = st.from_regex(r"[a-zA-Z][a-zA-Z0-9_-]{0,15}", fullmatch=True)
_IDS = st.from_regex(r"[a-zA-Z0-9_.:-]{1,20}", fullmatch=True)
_TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)
_ARGS = st.dictionaries(_TEXT, _JSON, max_size=4)


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """User text, assistant text and/or tool calls with JSON-object arguments, tool results."""
    messages: list[dict[str, Any]] = []
    seen: set[str] = set()
    for _ in range(draw(st.integers(1, 4))):
        messages.append(user(draw(_TEXT.filter(str.strip))))
        for _ in range(draw(st.integers(0, 2))):
            ids = draw(st.lists(_IDS.filter(lambda i: i not in seen), max_size=3, unique=True))
            seen.update(ids)
            calls = [call(i, draw(_NAMES), draw(_ARGS)) for i in ids]
            text = draw(_TEXT)
            messages.append({"role": "assistant", "content": text if text or not calls else None, "tool_calls": calls})
            for c in calls:
                result = draw(_TEXT | _ARGS.map(json.dumps))
                messages.append({"role": "tool", "tool_call_id": c["id"], "content": result})
    return messages


def normalized(msg: dict[str, Any]) -> tuple[str, list[tuple[str, str, Any]]]:
    calls = [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in msg.get("tool_calls") or ()
    ]
    return msg.get("content") or "", calls


def merged_assistants(messages: list[dict[str, Any]]) -> Iterator[tuple[str, list[tuple[str, str, Any]]]]:
    """The assistant turns Converse sees: runs of assistant messages (tool and user turns split
    them), blank text dropped."""
    run: list[dict[str, Any]] | None = None
    for msg in [*messages, {"role": "user"}]:
        if msg["role"] == "assistant":
            run = [*(run or []), msg]
        elif run is not None:
            texts = [m["content"] or "" for m in run]
            turn = "".join(t for t in texts if t.strip()), [c for m in run for c in normalized(m)[1]]
            if turn != ("", []):  # an assistant message with only blank text is dropped
                yield turn
            run = None


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(conversations())
def test_round_trip_preserves_text_tool_calls_and_results(messages: list[dict[str, Any]]) -> None:
    out = to_converse({"model": "t", "messages": messages})
    assert_valid(out.request)
    turns = out.request["messages"]
    assert turns[0]["role"] == "user"
    assert all(a["role"] != b["role"] for a, b in itertools.pairwise(turns))
    back = [normalized(assistant_message(t)) for t in turns if t["role"] == "assistant"]
    # Ids go in Converse's form (``.`` and ``:`` are not in it), the same for a call and its result.
    sent = [(text, [(tool_use_id(i), n, a) for i, n, a in calls]) for text, calls in merged_assistants(messages)]
    assert back == sent
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", i) for _, calls in back for i, _, _ in calls)
    results = [b["toolResult"] for t in turns for b in t["content"] if "toolResult" in b]
    tools = [m for m in messages if m["role"] == "tool"]
    assert [r["toolUseId"] for r in results] == [tool_use_id(m["tool_call_id"]) for m in tools]
    for r, m in zip(results, tools, strict=True):
        (block,) = r["content"]
        if "json" in block:
            assert block["json"] == json.loads(m["content"])
        else:
            assert block["text"] == m["content"]


@st.composite
def converse_replies(draw: st.DrawFn) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = []
    if draw(st.booleans()):
        blocks.append({"reasoningContent": {"reasoningText": {"text": draw(_TEXT.filter(bool))}}})
    ids = draw(st.lists(_IDS, max_size=4, unique=True))
    for tool_id in ids:
        if draw(st.booleans()):
            blocks.append({"text": draw(_TEXT.filter(bool))})
        blocks.append({"toolUse": {"toolUseId": tool_id, "name": draw(_NAMES), "input": draw(_ARGS)}})
    if draw(st.booleans()) or not blocks:
        blocks.append({"text": draw(_TEXT.filter(bool))})
    stop = draw(st.sampled_from(["end_turn", "tool_use", "max_tokens", "guardrail_intervened", "malformed_tool_use"]))
    usage = {
        "inputTokens": draw(st.integers(0, 10**6)),
        "outputTokens": draw(st.integers(0, 10**6)),
        "cacheReadInputTokens": draw(st.integers(0, 10**6)),
        "cacheWriteInputTokens": draw(st.integers(0, 10**6)),
    }
    usage["totalTokens"] = sum(usage.values())
    return converse_reply(blocks, stop, **usage)


def pieces(draw: st.DrawFn, text: str) -> list[str]:
    """``text`` split at arbitrary points into non-empty pieces."""
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=4))) if len(text) > 1 else []
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if text[a:b]]


@st.composite
def stream_events(draw: st.DrawFn, resp: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The ConverseStream events Bedrock would send for ``resp``, text and input split anywhere."""
    events: list[tuple[str, dict[str, Any]]] = [("messageStart", {"role": "assistant", "p": "abc"})]
    for i, block in enumerate(resp["output"]["message"]["content"]):
        if "toolUse" in block:
            use = block["toolUse"]
            events.append(
                (
                    "contentBlockStart",
                    {
                        "contentBlockIndex": i,
                        "start": {"toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}},
                    },
                )
            )
            deltas_: list[dict[str, Any]] = [{"toolUse": {"input": p}} for p in pieces(draw, json.dumps(use["input"]))]
        elif "text" in block:
            deltas_ = [{"text": p} for p in pieces(draw, block["text"])]
        else:
            deltas_ = [
                {"reasoningContent": {"text": p}}
                for p in pieces(draw, block["reasoningContent"]["reasoningText"]["text"])
            ]
        events.extend(("contentBlockDelta", {"contentBlockIndex": i, "delta": d, "p": "x"}) for d in deltas_)
        events.append(("contentBlockStop", {"contentBlockIndex": i}))
    events.append(("messageStop", {"stopReason": resp["stopReason"]}))
    events.append(("metadata", {"usage": resp["usage"], "metrics": {"latencyMs": 3}}))
    return events


def reassemble(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """What an OpenAI client builds from the chunks: concatenated content, and tool calls
    assembled per index."""
    content, reasoning, finish, usage = "", "", None, None
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk["choices"]:
            delta = choice["delta"]
            content += delta.get("content") or ""
            reasoning += delta.get("reasoning_content") or ""
            for tc in delta.get("tool_calls") or ():
                slot = calls.setdefault(
                    tc["index"], {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
                )
                slot["id"] = tc.get("id") or slot["id"]
                slot["function"]["name"] += tc.get("function", {}).get("name") or ""
                slot["function"]["arguments"] += tc.get("function", {}).get("arguments") or ""
            finish = choice["finish_reason"] or finish
    message: dict[str, Any] = {"role": "assistant", "content": content or None}
    if calls:
        assert sorted(calls) == list(range(len(calls)))
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    if reasoning:
        message["reasoning_content"] = reasoning
    return {"message": message, "finish_reason": finish, "usage": usage}


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_streaming_reassembles_to_the_non_streaming_answer(data: st.DataObject) -> None:
    resp = data.draw(converse_replies())
    events = data.draw(stream_events(resp))
    chunks = feed_all(StreamTranslator("m", 1, "c"), events)
    streamed = reassemble(chunks)
    whole = from_converse(resp, model="m", created=1, completion_id="c")
    choice = whole["choices"][0]
    assert normalized(streamed["message"]) == normalized(choice["message"])
    assert streamed["message"].get("reasoning_content") == choice["message"].get("reasoning_content")
    assert streamed["finish_reason"] == choice["finish_reason"]
    assert streamed["usage"] == whole["usage"]


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_streaming_json_via_tool_reassembles_to_the_non_streaming_answer(data: st.DataObject) -> None:
    answer = data.draw(_ARGS)
    content: list[dict[str, Any]] = [{"toolUse": {"toolUseId": "t", "name": "json_response", "input": answer}}]
    if data.draw(st.booleans()):
        content.insert(0, {"text": data.draw(_TEXT.filter(bool))})
    resp = converse_reply(content, "tool_use")
    request = Translation({}, json_via_tool="json_response")
    events = data.draw(stream_events(resp))
    streamed = reassemble(feed_all(StreamTranslator("m", 1, "c", request), events))
    choice = from_converse(resp, model="m", created=1, request=request)["choices"][0]
    assert json.loads(streamed["message"]["content"]) == json.loads(choice["message"]["content"]) == answer
    assert "tool_calls" not in streamed["message"]
    assert streamed["finish_reason"] == choice["finish_reason"] == "stop"


@pytest.mark.parametrize("function", [None, "x", 0, [], True])
def test_a_tool_choice_whose_function_is_not_an_object_is_a_400(function: Any) -> None:
    """It was an AttributeError: a 500 to the caller."""
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = {"messages": [{"role": "user", "content": "x"}], "tools": tools}
    with pytest.raises(RequestError) as err:
        to_converse({**body, "tool_choice": {"type": "function", "function": function}})
    assert err.value.param == "tool_choice"


@pytest.mark.parametrize("calls", [True, -1, 1e300, "abc", {"id": "x"}])
def test_tool_calls_that_are_not_a_list_are_a_400(calls: Any) -> None:
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "tool_calls": calls}]
    with pytest.raises(RequestError) as err:
        to_converse({"messages": messages})
    assert err.value.param is not None and err.value.param.endswith("tool_calls")
