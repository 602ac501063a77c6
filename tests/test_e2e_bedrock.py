"""The official openai SDK through `turnout serve` to the Bedrock wire-protocol server (real
SigV4, verified; real event-stream framing) and to an OpenAI-compatible server saying the same
thing: the caller cannot tell them apart. Tool calls round-trip, JSON output works, and a
throttled Bedrock target falls back to the self-hosted one and comes back."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.bedrock_pair import serve
from tests.serving import Process, Served, sdk_client

pytestmark = pytest.mark.slow

TEXT = ["Hello", ",", " world"]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, Process]]:
    procs = {
        "bedrock": Process("tests.fakes.bedrock", "--verify-signature"),
        "openai": Process("tests.fakes.upstream", ready_path="/v1/models"),
    }
    yield procs
    for p in procs.values():
        p.stop()


@pytest.fixture(scope="module")
def served(fakes: dict[str, Process], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    cwd = tmp_path_factory.mktemp("serve")
    bedrock = {
        "provider": "bedrock",
        "region": "us-east-1",
        "model": "deepseek.v3-v1:0",
        "endpoint_url": fakes["bedrock"].url,
        "retry": {"attempts": 1},
        "breaker": {"failures": 3, "cooldown_s": 0.5},
    }
    config = {
        "targets": {
            "bedrock": bedrock,
            "selfhosted": {"provider": "openai", "base_url": fakes["openai"].url + "/v1", "model": "qwen"},
        },
        "tasks": {
            "via-bedrock": {"route": ["bedrock"]},
            "via-openai": {"route": ["selfhosted"]},
            "support": {"route": ["bedrock", "selfhosted"]},
        },
    }
    with serve(cwd, config) as s:
        yield s


@pytest.fixture(autouse=True)
def same_content(fakes: dict[str, Process]) -> None:
    """Both servers say the same: the same text, the same tool call, the same token counts."""
    fakes["bedrock"].post(
        "/_fault",
        {
            "mode": "ok",
            "reply": {
                "text": TEXT,
                "tool_uses": [{"name": "get_weather", "input": {"city": "Paris"}, "tool_use_id": "call_1"}],
                "input_tokens": 12,
                "output_tokens": 3,
            },
        },
    )
    fakes["openai"].post(
        "/_reply",
        {
            "text": TEXT,
            "tool_calls": [{"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        },
    )
    fakes["openai"].post("/_fault", {"mode": "ok"})


def sdk(served: Served) -> Any:
    """The SDK, typed loosely: these tests pass plain dicts where the SDK wants TypedDicts."""
    return sdk_client(served.base_url, "unused")


def complete(served: Served, task: str, **kw: Any) -> Any:
    return sdk(served).chat.completions.create(model=task, messages=kw.pop("messages", ASK), max_tokens=32, **kw)


def streamed(served: Served, task: str, **kw: Any) -> dict[str, Any]:
    """A stream reassembled as a client would: text, tool calls by index, finish, usage."""
    text, finish, usage = "", None, None
    calls: dict[int, dict[str, Any]] = {}
    chunks: Any = sdk(served).chat.completions.create(
        model=task, messages=ASK, max_tokens=32, stream=True, stream_options={"include_usage": True}, **kw
    )
    for chunk in chunks:
        if chunk.usage is not None:
            usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for tc in choice.delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
                entry["id"] = tc.id or entry["id"]
                entry["name"] = (tc.function and tc.function.name) or entry["name"]
                entry["arguments"] += (tc.function and tc.function.arguments) or ""
            finish = choice.finish_reason or finish
    parsed = [{**c, "arguments": json.loads(c["arguments"])} for _, c in sorted(calls.items())]
    return {"text": text, "tool_calls": parsed, "finish": finish, "usage": usage}


def summary(resp: Any) -> dict[str, Any]:
    choice = resp.choices[0]
    calls = [
        {"id": c.id, "name": c.function.name, "arguments": json.loads(c.function.arguments)}
        for c in choice.message.tool_calls or []
    ]
    return {
        "text": choice.message.content or "",
        "tool_calls": calls,
        "finish": choice.finish_reason,
        "usage": (resp.usage.prompt_tokens, resp.usage.completion_tokens),
    }


def test_plain_answers_are_the_same(served: Served) -> None:
    via_bedrock, via_openai = summary(complete(served, "via-bedrock")), summary(complete(served, "via-openai"))
    assert via_bedrock == via_openai == {"text": "Hello, world", "tool_calls": [], "finish": "stop", "usage": (12, 3)}


def test_streams_are_the_same(served: Served) -> None:
    assert streamed(served, "via-bedrock") == streamed(served, "via-openai")
    assert streamed(served, "via-bedrock")["text"] == "Hello, world"


def test_tool_calls_are_the_same_plain_and_streamed(served: Served, fakes: dict[str, Process]) -> None:
    tool_use = {"name": "get_weather", "input": {"city": "Paris"}, "tool_use_id": "call_1"}
    reply = {"text": [], "tool_uses": [tool_use], "input_tokens": 12, "output_tokens": 3}
    fakes["bedrock"].post("/_fault", {"mode": "ok", "reply": reply})  # a tool call and no text, as the other says
    expected = [{"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}]
    plain = [summary(complete(served, task, tools=TOOLS)) for task in ("via-bedrock", "via-openai")]
    assert plain[0] == plain[1]
    assert plain[0]["tool_calls"] == expected and plain[0]["finish"] == "tool_calls"
    streams = [streamed(served, task, tools=TOOLS) for task in ("via-bedrock", "via-openai")]
    assert streams[0] == streams[1]
    assert streams[0]["tool_calls"] == expected and streams[0]["finish"] == "tool_calls"


def test_tool_call_round_trip_reaches_bedrock_as_tool_use_and_result(served: Served, fakes: dict[str, Process]) -> None:
    first = complete(served, "via-bedrock", tools=TOOLS)
    call = first.choices[0].message.tool_calls[0]
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature_c": 21}'},
    ]
    fakes["bedrock"].post("/_fault", {"mode": "ok", "reply": {"text": ["It is 21 °C."]}})
    final = complete(served, "via-bedrock", tools=TOOLS, messages=history)
    assert final.choices[0].message.content == "It is 21 °C."
    sent = fakes["bedrock"].requests()[-1]
    assert sent["path"] == "/model/deepseek.v3-v1%3A0/converse" and sent["signature_ok"] is True
    assert "Credential=AKIDEXAMPLE/" in sent["headers"]["Authorization"]
    turns = sent["body"]["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"] == [
        {"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Paris"}}}
    ]
    result = turns[2]["content"][0]["toolResult"]
    assert result["toolUseId"] == "call_1" and result["content"] == [{"json": {"temperature_c": 21}}]
    assert sent["body"]["toolConfig"]["tools"][0]["toolSpec"]["name"] == "get_weather"


def test_json_schema_output_comes_back_as_content(served: Served, fakes: dict[str, Process]) -> None:
    answer = {"city": "Paris", "temperature_c": 21}
    fakes["bedrock"].post(
        "/_fault", {"mode": "ok", "reply": {"tool_uses": [{"name": "json_response", "input": answer}]}}
    )
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "temperature_c": {"type": "number"}},
        "required": ["city", "temperature_c"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": schema}}
    resp = complete(served, "via-bedrock", response_format=fmt)
    assert json.loads(resp.choices[0].message.content) == answer
    assert resp.choices[0].finish_reason == "stop" and not resp.choices[0].message.tool_calls
    sent = fakes["bedrock"].requests()[-1]["body"]
    # deepseek.v3 has no native structured output in the catalog: the forced-tool fallback
    assert sent["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"] == schema
    assert "any" in sent["toolConfig"]["toolChoice"]
    streamed_json = streamed(served, "via-bedrock", response_format=fmt)
    assert json.loads(streamed_json["text"]) == answer


def test_throttled_bedrock_falls_back_to_self_hosted_and_comes_back(served: Served, fakes: dict[str, Process]) -> None:
    fakes["bedrock"].post("/_fault", {"mode": "error", "error": "ThrottlingException"})
    raw = sdk(served).chat.completions.with_raw_response.create(model="support", messages=ASK, max_tokens=8)
    assert raw.headers["x-turnout-target"] == "selfhosted" and raw.headers["x-turnout-fallback"] == "true"
    stream = sdk(served).chat.completions.with_raw_response.create(
        model="support", messages=ASK, max_tokens=8, stream=True
    )
    assert stream.headers["x-turnout-target"] == "selfhosted"
    assert "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices) == "Hello, world"
    # throttled mid-stream, before any content: still a clean fallback
    fakes["bedrock"].post("/_fault", {"mode": "exception", "error": "throttlingException", "after": 1})
    stream = sdk(served).chat.completions.with_raw_response.create(
        model="support", messages=ASK, max_tokens=8, stream=True
    )
    assert stream.headers["x-turnout-target"] == "selfhosted"
    stream.parse().close()
    fakes["bedrock"].post("/_fault", {"mode": "ok"})
    time.sleep(0.6)  # the breaker's cool-down, if it opened
    raw = sdk(served).chat.completions.with_raw_response.create(model="support", messages=ASK, max_tokens=8)
    assert raw.headers["x-turnout-target"] == "bedrock" and raw.headers["x-turnout-fallback"] == "false"


def test_bedrock_rejecting_the_request_is_a_clear_400(served: Served, fakes: dict[str, Process]) -> None:
    fakes["bedrock"].post("/_fault", {"mode": "error", "error": "ValidationException", "message": "bad toolSpec"})
    with pytest.raises(openai.BadRequestError) as err:
        complete(served, "support")
    assert "ValidationException" in str(err.value) and "bad toolSpec" in str(err.value)
