"""``POST /v1/messages/count_tokens`` with the official ``anthropic`` SDK: the prompt bound the
quota reserves (a target's tokenizer where one is configured, the largest of the task's
targets), authenticated and checked as ``/v1/messages`` is, errors in Anthropic's shape, no
upstream called; and every other path under ``/v1/messages`` answers in Anthropic's shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import pydantic
import pytest

from tests.asgi import request
from tests.conftest import AppFactory
from tests.fakes.upstream import FakeUpstream
from tests.test_messages_api import KEY, WEATHER, chats, config, gateway
from turnout.control.tokens import load_tokenizer, prompt_tokens

COUNT = "/v1/messages/count_tokens"
ENGLISH = "Thank you for contacting support. Your order has shipped and should arrive within three business days. "
HELLO: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Hello, Claude"}]


def chat_body(system: str | None = None, tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The chat body the targets would receive for ``HELLO``: what the bound counts."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": "Hello, Claude"}
    ]
    body: dict[str, Any] = {"messages": messages}
    if tools:
        body["tools"] = tools
    return body


async def test_the_sdk_counts_a_prompt_without_calling_any_target(make_app: AppFactory, tmp_path: Path) -> None:
    async with (
        FakeUpstream(reply=("never",)) as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (_, client),
    ):
        plain = await client.messages.count_tokens(model="support", messages=HELLO)
        assert plain.input_tokens == prompt_tokens(chat_body())
        fuller = await client.messages.count_tokens(
            model="support", system="You are terse.", messages=HELLO, tools=[WEATHER], tool_choice={"type": "auto"}
        )
        function = {"name": WEATHER["name"], "parameters": WEATHER["input_schema"]}
        function["description"] = WEATHER["description"]
        counted = {
            **chat_body("You are terse.", [{"type": "function", "function": function}]),
            "tool_choice": "auto",
        }
        assert fuller.input_tokens == prompt_tokens(counted) > plain.input_tokens
        # the thinking config the request will send is taken as the Messages door takes it
        thinking = await client.messages.count_tokens(
            model="support", messages=HELLO, thinking={"type": "enabled", "budget_tokens": 1024}
        )
        assert thinking.input_tokens == plain.input_tokens
        assert chats(up) == []  # nothing generated, nothing asked of the upstream


async def test_the_sdks_output_format_is_counted_as_the_quota_counts_it(make_app: AppFactory, tmp_path: Path) -> None:
    """``count_tokens(output_format=...)`` sends ``output_config``, whose schema reaches the target
    as the chat ``response_format`` and counts toward the quota's bound: it was a 400, so a caller
    could not count the prompt it sends with ``messages.parse``."""

    class Order(pydantic.BaseModel):
        order_id: str
        shipped: bool

    async with (
        FakeUpstream(reply=('{"order_id": "A1", "shipped": true}',)) as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (_, client),
    ):
        plain = await client.messages.count_tokens(model="support", messages=HELLO)
        shaped = await client.messages.count_tokens(model="support", messages=HELLO, output_format=Order)
        effort = client.messages.count_tokens(model="support", messages=HELLO, output_config={"effort": "low"})
        with pytest.raises(anthropic.BadRequestError) as refused:
            await effort
        assert chats(up) == []
        await client.messages.parse(model="support", max_tokens=32, messages=HELLO, output_format=Order)
    [sent] = chats(up)  # the prompt the target received for the same request
    assert shaped.input_tokens == prompt_tokens({**chat_body(), "response_format": sent["response_format"]})
    assert shaped.input_tokens > plain.input_tokens
    assert "output_config.effort" in str(refused.value)


async def test_counting_takes_the_largest_bound_of_the_tasks_targets(make_app: AppFactory, tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([ENGLISH] * 50, trainer)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    body = {"model": "support", "messages": [{"role": "user", "content": ENGLISH * 4}]}
    by_tokenizer = prompt_tokens({"messages": body["messages"]}, load_tokenizer(str(path)))
    by_bytes = prompt_tokens({"messages": body["messages"]})
    assert by_tokenizer * 3 < by_bytes

    raw = config(tmp_path, {"onprem": "http://127.0.0.1:9/v1", "cloud": "http://127.0.0.1:9/v1"})
    raw["targets"]["onprem"]["tokenizer"] = str(path)
    raw["tasks"]["tokenized"] = {"route": ["onprem"]}
    app = await make_app(raw)
    both = await request(app, "POST", COUNT, body=body, headers={"x-api-key": KEY})
    assert (both.status, both.json()) == (200, {"input_tokens": by_bytes})  # the byte-counted target's
    alone = await request(app, "POST", COUNT, body={**body, "model": "tokenized"}, headers={"x-api-key": KEY})
    assert alone.json() == {"input_tokens": by_tokenizer}
    assert alone.headers["x-turnout-request-id"]


async def test_errors_come_in_anthropics_shape_and_the_sdk_raises_the_matching_error(
    make_app: AppFactory, tmp_path: Path
) -> None:
    async with FakeUpstream() as up, gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (app, client):
        with pytest.raises(anthropic.NotFoundError) as unknown:
            await client.messages.count_tokens(model="nope", messages=HELLO)
        assert unknown.value.body == {
            "type": "error",
            "error": {"type": "not_found_error", "message": "the task 'nope' does not exist or is not open to you"},
        }
        with pytest.raises(anthropic.BadRequestError) as empty:
            await client.messages.count_tokens(model="support", messages=[])
        assert "'messages' must hold at least one message" in str(empty.value)
        with pytest.raises(anthropic.BadRequestError) as block:
            await client.messages.count_tokens(
                model="support",
                messages=[{"role": "user", "content": [{"type": "text", "text": ""}]}],
            )
        assert "messages[0].content[0].text" in str(block.value)
        with pytest.raises(anthropic.BadRequestError) as extra:
            await client.messages.count_tokens(model="support", messages=HELLO, extra_body={"max_tokens": 10})
        assert "'max_tokens' is not a count_tokens field" in str(extra.value)
        stranger = anthropic.AsyncAnthropic(base_url=str(client.base_url), api_key="wrong-key", max_retries=0)
        async with stranger:
            with pytest.raises(anthropic.AuthenticationError):
                await stranger.messages.count_tokens(model="support", messages=HELLO)
        assert chats(up) == []

        missing = await request(app, "POST", COUNT, body={"messages": HELLO}, headers={"x-api-key": KEY})
        assert missing.status == 400
        assert missing.json()["error"] == {
            "type": "invalid_request_error",
            "message": "'model' is required and must name a task (a string)",
        }
        bearer = await request(
            app, "POST", COUNT, body={"model": "support", "messages": HELLO}, headers={"authorization": f"Bearer {KEY}"}
        )
        assert bearer.status == 200
        wrong = await request(app, "GET", COUNT, headers={"x-api-key": KEY})
        assert (wrong.status, wrong.json()["type"], wrong.json()["error"]["type"]) == (
            405,
            "error",
            "invalid_request_error",
        )


@pytest.mark.parametrize("path", ["/v1/messages/batches", "/v1/messages/count_tokens/x", "/v1/messages/"])
async def test_an_unknown_path_under_messages_answers_in_anthropics_shape(
    make_app: AppFactory, tmp_path: Path, path: str
) -> None:
    app = await make_app(config(tmp_path, {"onprem": "http://127.0.0.1:9/v1"}))
    resp = await request(app, "POST", path, body={}, headers={"x-api-key": KEY})
    assert resp.status == 404
    assert resp.json() == {
        "type": "error",
        "error": {"type": "not_found_error", "message": f"no route for POST {path}"},
    }
    # Elsewhere the shape stays OpenAI's.
    other = await request(app, "POST", "/v1/messagesx", body={}, headers={"x-api-key": KEY})
    assert other.status == 404 and "type" not in other.json() and "code" in other.json()["error"]
