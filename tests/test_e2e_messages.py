"""``POST /v1/messages`` end to end: the official anthropic SDK through a real ``turnout serve``
to the Bedrock wire-protocol server (Converse, SigV4 verified) and to an OpenAI-compatible
server saying the same thing: the caller gets the same Message from either, plain or streamed,
and a tool round trip reaches Bedrock as toolUse and toolResult."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests import bedrock_pair as pair
from tests.bedrock_pair import say
from tests.serving import Process, Served

pytestmark = pytest.mark.slow

TEXT = ["Hello", ",", " world"]
WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, Process]]:
    with pair.fakes() as procs:
        yield procs


@pytest.fixture(scope="module")
def served(fakes: dict[str, Process], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with pair.served(fakes, tmp_path_factory.mktemp("serve")) as s:
        yield s


@pytest.fixture
def client(served: Served) -> Iterator[Any]:
    # The SDK appends /v1/messages to its base URL; typed loosely: plain dicts for tools.
    sdk: Any = anthropic.Anthropic(base_url=served.base_url.removesuffix("/v1"), api_key="unused", max_retries=0)
    yield sdk
    sdk.close()


def summary(message: Any) -> dict[str, Any]:
    """What a caller reads from a Message (its id is its own)."""
    text = "".join(b.text for b in message.content if b.type == "text")
    uses = [(b.id, b.name, b.input) for b in message.content if b.type == "tool_use"]
    usage = (message.usage.input_tokens, message.usage.output_tokens)
    return {"stop": message.stop_reason, "text": text, "uses": uses, "usage": usage, "model": message.model}


def plain(client: Any, task: str, **kw: Any) -> Any:
    return client.messages.create(model=task, max_tokens=32, messages=ASK, **kw)


def streamed(client: Any, task: str, **kw: Any) -> Any:
    """The stream's final Message, after checking its text deltas add up to it."""
    with client.messages.stream(model=task, max_tokens=32, messages=ASK, **kw) as stream:
        deltas = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert deltas == "".join(b.text for b in final.content if b.type == "text")
    return final


def test_plain_and_streamed_messages_are_the_same_from_bedrock_and_a_self_hosted_server(
    client: Any, fakes: dict[str, Process]
) -> None:
    say(fakes, TEXT, calls=False)
    answers = [summary(plain(client, t)) for t in ("via-bedrock", "via-openai")]
    answers += [summary(streamed(client, t)) for t in ("via-bedrock", "via-openai")]
    for task, answer in zip(["via-bedrock", "via-openai"] * 2, answers, strict=True):
        assert answer == {"stop": "end_turn", "text": "Hello, world", "uses": [], "usage": (12, 3), "model": task}


def test_tool_use_is_the_same_and_round_trips_to_bedrock(client: Any, fakes: dict[str, Process]) -> None:
    say(fakes, [], calls=True)
    answers = [summary(plain(client, t, tools=[WEATHER])) for t in ("via-bedrock", "via-openai")]
    answers += [summary(streamed(client, t, tools=[WEATHER])) for t in ("via-bedrock", "via-openai")]
    assert all(a["uses"] == [("call_1", "get_weather", {"city": "Paris"})] for a in answers), answers
    assert all(a["stop"] == "tool_use" for a in answers), answers
    first = plain(client, "via-bedrock", tools=[WEATHER])
    [use] = [b for b in first.content if b.type == "tool_use"]
    fakes["bedrock"].post("/_fault", {"mode": "ok", "reply": {"text": ["It is 21 °C."]}})
    final = client.messages.create(
        model="via-bedrock",
        max_tokens=32,
        tools=[WEATHER],
        messages=[
            *ASK,
            {"role": "assistant", "content": [use.model_dump(exclude_none=True)]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "21 °C"}]},
        ],
    )
    assert summary(final)["text"] == "It is 21 °C."
    sent = fakes["bedrock"].requests()[-1]
    assert sent["signature_ok"] is True
    turns = sent["body"]["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"] == [
        {"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Paris"}}}
    ]
    assert turns[2]["content"][0]["toolResult"]["toolUseId"] == "call_1"


def test_a_prefill_asks_a_self_hosted_server_to_continue_it(client: Any, fakes: dict[str, Process]) -> None:
    say(fakes, [" blue."], calls=False)
    prefill = [*ASK, {"role": "assistant", "content": "The sky in Paris is"}]
    client.messages.create(model="via-openai", max_tokens=32, messages=prefill)
    with client.messages.stream(model="via-openai", max_tokens=32, messages=prefill) as stream:
        assert "".join(stream.text_stream) == " blue."  # only what follows the prefill
    client.messages.create(model="via-openai", max_tokens=32, messages=ASK)
    *_, plain_sent, streamed_sent, asked = (r["body"] for r in fakes["openai"].requests())
    for sent in (plain_sent, streamed_sent):
        assert sent["messages"][-1] == {"role": "assistant", "content": "The sky in Paris is"}
        assert (sent["continue_final_message"], sent["add_generation_prompt"]) == (True, False)
    assert "continue_final_message" not in asked  # the user's turn is last: a new turn


def test_errors_reach_the_sdk_as_its_own_exceptions(client: Any) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        plain(client, "no-such-task")
    body: Any = caught.value.body
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="via-openai", max_tokens=-1, messages=ASK)
