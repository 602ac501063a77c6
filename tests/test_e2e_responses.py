"""``POST /v1/responses`` end to end: the official openai SDK's ``client.responses`` through a real
``turnout serve`` to the Bedrock wire-protocol server (Converse, SigV4 verified) and to an
OpenAI-compatible server saying the same thing: the caller gets the same Response from either,
plain or streamed, and a function call round trip reaches Bedrock as toolUse and toolResult."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests import bedrock_pair as pair
from tests.bedrock_pair import say
from tests.serving import Process, Served, sdk_client

pytestmark = pytest.mark.slow

TEXT = ["Hello", ",", " world"]
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, Process]]:
    with pair.fakes() as procs:
        yield procs


@pytest.fixture(scope="module")
def served(fakes: dict[str, Process], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with pair.served(fakes, tmp_path_factory.mktemp("serve")) as s:
        yield s


def summary(response: Any) -> dict[str, Any]:
    """What a caller reads from a Response (its ids are its own)."""
    calls = [
        (item.call_id, item.name, json.loads(item.arguments))
        for item in response.output
        if item.type == "function_call"
    ]
    usage = (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens)
    return {"status": response.status, "text": response.output_text, "calls": calls, "usage": usage}


def ask(served: Served, task: str, **kw: Any) -> Any:
    client: Any = sdk_client(served.base_url, "unused")  # typed loosely: plain dicts for tools
    return client.responses.create(model=task, input="What is the weather in Paris?", max_output_tokens=32, **kw)


def streamed(served: Served, task: str, **kw: Any) -> Any:
    """The stream's last event's Response, after checking the text deltas add up to it."""
    events = list(ask(served, task, stream=True, **kw))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == final.output_text
    return final


def test_plain_and_streamed_responses_are_the_same_from_bedrock_and_a_self_hosted_server(
    served: Served, fakes: dict[str, Process]
) -> None:
    say(fakes, TEXT, calls=False)
    answers = [summary(ask(served, t)) for t in ("via-bedrock", "via-openai")]
    answers += [summary(streamed(served, t)) for t in ("via-bedrock", "via-openai")]
    expected = {"status": "completed", "text": "Hello, world", "calls": [], "usage": (12, 3, 15)}
    assert answers == [expected] * 4


def test_function_calls_are_the_same_and_round_trip_to_bedrock(served: Served, fakes: dict[str, Process]) -> None:
    say(fakes, [], calls=True)
    answers = [summary(ask(served, t, tools=[WEATHER])) for t in ("via-bedrock", "via-openai")]
    answers += [summary(streamed(served, t, tools=[WEATHER])) for t in ("via-bedrock", "via-openai")]
    assert all(a["calls"] == [("call_1", "get_weather", {"city": "Paris"})] for a in answers), answers
    first = ask(served, "via-bedrock", tools=[WEATHER])
    [call] = first.output
    fakes["bedrock"].post("/_fault", {"mode": "ok", "reply": {"text": ["It is 21 °C."]}})
    client: Any = sdk_client(served.base_url, "unused")
    final = client.responses.create(
        model="via-bedrock",
        tools=[WEATHER],
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature_c": 21}'},
        ],
    )
    assert final.output_text == "It is 21 °C."
    sent = fakes["bedrock"].requests()[-1]
    assert sent["signature_ok"] is True
    turns = sent["body"]["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"] == [
        {"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Paris"}}}
    ]
    result = turns[2]["content"][0]["toolResult"]
    assert result["toolUseId"] == "call_1" and result["content"] == [{"json": {"temperature_c": 21}}]


def test_json_schema_reaches_bedrock_and_the_answer_parses(served: Served, fakes: dict[str, Process]) -> None:
    say(fakes, ['{"city": "Paris", ', '"temperature_c": 21}'], calls=False)
    fmt = {
        "type": "json_schema",
        "name": "weather",
        "schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "temperature_c": {"type": "integer"}},
            "required": ["city", "temperature_c"],
        },
    }
    for task in ("via-bedrock", "via-openai"):
        answer = ask(served, task, text={"format": fmt})
        assert json.loads(answer.output_text) == {"city": "Paris", "temperature_c": 21}
