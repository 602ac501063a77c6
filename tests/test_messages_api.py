"""``POST /v1/messages`` with the official ``anthropic`` SDK through the App behind a real
uvicorn, to fake OpenAI-compatible servers: plain, streamed, a tool round trip, errors in
Anthropic's shape, the policy by data class, budgets and the ledger's endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anthropic
import jsonschema
import orjson
import pydantic
import pytest
import uvicorn
from anthropic.types import ToolParam

from tests.asgi import request
from tests.conftest import AppFactory
from tests.fakes.upstream import FakeUpstream, Fault
from tests.serving import free_port
from tests.uvicorn_app import rows
from turnout.serving.app import App

KEY = "acme-key-0123456789"
WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def config(tmp_path: Path, targets: dict[str, str], **tenant: Any) -> dict[str, Any]:
    return {
        "store": {"kind": "sqlite", "path": str(tmp_path / "ledger.db"), "flush_interval_ms": 10},
        "targets": {
            name: {
                "provider": "openai",
                "base_url": url,
                "model": "m",
                "retry": {"attempts": 1},
                "price": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
            }
            for name, url in targets.items()
        },
        "tenants": {"acme": {"keys": [KEY], "data_classes": ["public", "internal", "restricted"], **tenant}},
        "policy": {"restricted": {"targets": ["onprem"]}},
        "tasks": {"support": {"route": list(targets)}},
    }


def chats(up: FakeUpstream) -> list[dict[str, Any]]:
    """The chat bodies the fake received (not the readiness probes' GETs)."""
    return [r.body for r in up.requests if r.path.endswith("/chat/completions")]


@asynccontextmanager
async def gateway(make_app: AppFactory, raw: dict[str, Any]) -> AsyncIterator[tuple[App, anthropic.AsyncAnthropic]]:
    app = await make_app(raw)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn has a flag, no event
        await asyncio.sleep(0.01)
    client = anthropic.AsyncAnthropic(base_url=f"http://127.0.0.1:{port}", api_key=KEY, max_retries=0)
    try:
        yield app, client
    finally:
        await client.close()
        server.should_exit = True
        await task


async def test_a_plain_message_is_answered_in_anthropics_shape(make_app: AppFactory, tmp_path: Path) -> None:
    async with (
        FakeUpstream(reply=("Sunny", " today")) as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (app, client),
    ):
        answer = await client.messages.create(
            model="support",
            max_tokens=100,
            system="You are terse.",
            messages=[{"role": "user", "content": "Weather?"}],
            stop_sequences=["END"],
            extra_body={"temperature": 0.2},
        )
        assert answer.type == "message" and answer.role == "assistant" and answer.model == "support"
        assert [b.type for b in answer.content] == ["text"]
        assert answer.content[0].text == "Sunny today"  # type: ignore[union-attr]
        assert answer.stop_reason == "end_turn"
        assert answer.usage.output_tokens == 2
        sent = chats(up)[0]
        assert sent["messages"] == [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Weather?"},
        ]
        assert (sent["max_tokens"], sent["stop"], sent["temperature"]) == (100, ["END"], 0.2)
        [row] = await rows(app, 1)
    assert (row.endpoint, row.status, row.tenant, row.task) == ("messages", 200, "acme", "support")
    assert row.cost_usd is not None and row.cost_usd > 0


class Forecast(pydantic.BaseModel):
    city: str
    celsius: int


@pytest.mark.parametrize("stream", [False, True])
async def test_structured_output_through_the_sdks_parse(make_app: AppFactory, tmp_path: Path, stream: bool) -> None:
    """``messages.parse(output_format=...)`` sends ``output_config.format``: it was a 400, so the
    SDK's structured outputs could not be used through the gateway."""
    async with (
        FakeUpstream(reply=('{"city": "Paris",', ' "celsius": 21}')) as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (_, client),
    ):
        ask: dict[str, Any] = {
            "model": "support",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "Paris?"}],
        }
        if stream:
            async with client.messages.stream(**ask, output_format=Forecast) as events:
                parsed = (await events.get_final_message()).parsed_output
        else:
            parsed = (await client.messages.parse(**ask, output_format=Forecast)).parsed_output
        assert parsed == Forecast(city="Paris", celsius=21)
        fmt = chats(up)[0]["response_format"]
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "output"
        assert fmt["json_schema"]["schema"]["properties"].keys() == {"city", "celsius"}


async def test_output_config_fields_not_translated_are_refused_by_name(make_app: AppFactory, tmp_path: Path) -> None:
    async with (
        FakeUpstream() as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (app, _),
    ):
        ask = {"model": "support", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
        auth = {"x-api-key": KEY}
        for output_config, param in [
            ({"effort": "high"}, "output_config.effort"),
            ({"format": {"type": "text"}}, "output_config.format"),
            ({"format": {"type": "json_schema", "schema": "x"}}, "output_config.format.schema"),
            ({"format": {"type": "json_schema", "schema": {}, "name": "n"}}, "output_config.format.name"),
            ("json", "output_config"),
        ]:
            resp = await request(app, "POST", "/v1/messages", {**ask, "output_config": output_config}, auth)
            assert resp.status == 400 and param in resp.json()["error"]["message"], (output_config, resp.json())
        resp = await request(
            app, "POST", "/v1/messages", {**ask, "output_config": {"effort": None, "format": None}}, auth
        )
        assert resp.status == 200 and "response_format" not in chats(up)[0]


async def test_a_stream_arrives_as_anthropic_events_and_reassembles(make_app: AppFactory, tmp_path: Path) -> None:
    async with (
        FakeUpstream(reply=("One", " two", " three")) as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (app, client),
    ):
        kinds = []
        async with client.messages.stream(
            model="support", max_tokens=50, messages=[{"role": "user", "content": "Count"}]
        ) as stream:
            async for event in stream:
                kinds.append(event.type)
            final = await stream.get_final_message()
        assert kinds[0] == "message_start"
        assert "content_block_start" in kinds and "content_block_delta" in kinds and kinds[-1] == "message_stop"
        assert final.content[0].text == "One two three"  # type: ignore[union-attr]
        assert final.stop_reason == "end_turn"
        assert final.usage.output_tokens == 3
        [row] = await rows(app, 1)
    assert (row.endpoint, row.stream, row.status) == ("messages", True, 200)


async def test_a_tool_round_trip_through_the_sdk(make_app: AppFactory, tmp_path: Path) -> None:
    call = {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}
    async with (
        FakeUpstream(tool_calls=(call,)) as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (_, client),
    ):
        first = await client.messages.create(
            model="support",
            max_tokens=100,
            tools=[WEATHER],
            tool_choice={"type": "tool", "name": "get_weather"},
            messages=[{"role": "user", "content": "Weather in Paris?"}],
        )
        assert first.stop_reason == "tool_use"
        [use] = first.content
        assert (use.type, use.id, use.name, use.input) == ("tool_use", "call_1", "get_weather", {"city": "Paris"})  # type: ignore[union-attr]
        sent = chats(up)[0]
        assert sent["tools"] == [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": WEATHER["input_schema"],
                    "description": "The weather in a city",
                },
            }
        ]
        assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
        up.tool_calls = ()
        up.reply = ("It is sunny in Paris.",)
        second = await client.messages.create(
            model="support",
            max_tokens=100,
            messages=[
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [use.model_dump()]},  # type: ignore[misc, list-item]
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                                             {"type": "text", "text": "Thanks"}]},
            ],
        )  # fmt: skip
        assert second.content[0].text == "It is sunny in Paris."  # type: ignore[union-attr]
        history = chats(up)[1]["messages"]
        assert history[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
        assert history[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
        assert history[3] == {"role": "user", "content": [{"type": "text", "text": "Thanks"}]}


async def test_an_answer_the_sdk_holds_goes_back_as_the_next_turn_as_it_is(
    make_app: AppFactory, tmp_path: Path
) -> None:
    """The usual loop passes the SDK's own answer objects (``message.content``, whole or from a
    stream) back as the assistant's turn: every field the SDK serialises from them is accepted
    by the door's field checks (``caller``, ``toolset_name``, ``citations``, ...)."""
    call = {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}
    async with (
        FakeUpstream(tool_calls=(call,)) as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (_, client),
    ):
        asked: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Weather in Paris?"}]
        whole = await client.messages.create(model="support", max_tokens=50, tools=[WEATHER], messages=asked)
        async with client.messages.stream(model="support", max_tokens=50, tools=[WEATHER], messages=asked) as stream:
            streamed = await stream.get_final_message()
        up.tool_calls = ()
        up.reply = ("Sunny.",)
        for said in (whole.content, streamed.content):
            result: anthropic.types.ToolResultBlockParam = {
                "type": "tool_result",
                "tool_use_id": "call_1",
                "content": "sunny",
            }
            answer = await client.messages.create(
                model="support",
                max_tokens=50,
                tools=[WEATHER],
                messages=[*asked, {"role": "assistant", "content": said}, {"role": "user", "content": [result]}],
            )
            assert answer.content[0].text == "Sunny."  # type: ignore[union-attr]
        # Text answers too, whole and streamed.
        text = await client.messages.create(model="support", max_tokens=50, messages=asked)
        async with client.messages.stream(model="support", max_tokens=50, messages=asked) as stream:
            streamed_text = await stream.get_final_message()
        for said in (text.content, streamed_text.content):
            again = await client.messages.create(
                model="support",
                max_tokens=50,
                messages=[*asked, {"role": "assistant", "content": said}, {"role": "user", "content": "And tomorrow?"}],
            )
            assert again.content[0].text == "Sunny."  # type: ignore[union-attr]
    histories = [c["messages"] for c in chats(up)]
    assert [h[1]["tool_calls"][0]["function"]["name"] for h in histories[2:4]] == ["get_weather"] * 2
    assert [h[1]["content"] for h in histories[6:8]] == ["Sunny.", "Sunny."]


async def test_a_streamed_tool_call_arrives_as_input_json_deltas(make_app: AppFactory, tmp_path: Path) -> None:
    call = {"id": "call_9", "name": "get_weather", "arguments": '{"city": "Oslo"}'}
    async with (
        FakeUpstream(tool_calls=(call,)) as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (_, client),
        client.messages.stream(
            model="support",
            max_tokens=50,
            tools=[WEATHER],
            messages=[{"role": "user", "content": "Oslo?"}],
        ) as stream,
    ):
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].input == {"city": "Oslo"}  # type: ignore[union-attr]


async def test_interleaved_tool_call_deltas_arrive_whole_one_block_after_another(
    make_app: AppFactory, tmp_path: Path
) -> None:
    """An upstream that interleaves two calls' argument deltas by index: each call is one
    content block, opened, filled and stopped before the next opens, with all its arguments."""
    calls = (
        {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Oslo", "unit": "celsius"}'},
        {"id": "call_2", "name": "get_weather", "arguments": '{"city": "Bergen", "unit": "kelvin"}'},
    )
    async with (
        FakeUpstream(tool_calls=calls, interleave=True) as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (_, client),
        client.messages.stream(
            model="support", max_tokens=50, tools=[WEATHER], messages=[{"role": "user", "content": "Oslo, Bergen?"}]
        ) as stream,
    ):
        events = [event async for event in stream]
        final = await stream.get_final_message()
    kinds = ("content_block_start", "content_block_delta", "content_block_stop")
    blocks = [(d["type"], d["index"]) for d in (e.model_dump() for e in events) if d["type"] in kinds]
    assert blocks == [
        ("content_block_start", 0),
        *[("content_block_delta", 0)] * 2,  # its two halves, as they came
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),  # the held call, whole
        ("content_block_stop", 1),
    ]
    assert final.stop_reason == "tool_use"
    assert [(b.id, b.input) for b in final.content] == [  # type: ignore[union-attr]
        ("call_1", {"city": "Oslo", "unit": "celsius"}),
        ("call_2", {"city": "Bergen", "unit": "kelvin"}),
    ]


async def test_errors_come_in_anthropics_shape_and_the_sdk_raises_the_matching_error(
    make_app: AppFactory, tmp_path: Path
) -> None:
    async with FakeUpstream() as up, gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (_, client):
        with pytest.raises(anthropic.NotFoundError) as missing:
            await client.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
        with pytest.raises(anthropic.BadRequestError, match="temperature"):
            await client.messages.create(
                model="support",
                max_tokens=5,
                messages=[{"role": "user", "content": "x"}],
                extra_body={"temperature": 5},
            )
        assert not chats(up)  # refused before any target
        with pytest.raises(anthropic.BadRequestError, match="thinking"):
            await client.messages.create(
                model="support", max_tokens=5, messages=[{"role": "user", "content": "x"}],
                extra_body={"thinking": {"type": "enabled", "budget_tokens": 100}},
            )  # fmt: skip
        bad = anthropic.AsyncAnthropic(base_url=str(client.base_url), api_key="wrong-key", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            await bad.messages.create(model="support", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        await bad.close()
        up.fault = Fault("status", status=500)
        with pytest.raises(anthropic.APIStatusError) as failed:
            await client.messages.create(model="support", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        assert failed.value.status_code == 502
        assert failed.value.body["type"] == "error"  # type: ignore[index]


async def test_an_unknown_block_type_or_field_is_a_400_and_what_the_sdk_sends_is_accepted(
    make_app: AppFactory, tmp_path: Path
) -> None:
    unknown_type: Any = [{"role": "user", "content": [{"type": "txt", "text": "hi"}]}]
    typo: Any = [{"role": "user", "content": [{"type": "text", "text": "hi", "txet": "x"}]}]
    async with (
        FakeUpstream(reply=("ok",)) as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (_, client),
    ):
        with pytest.raises(anthropic.BadRequestError) as unknown:
            await client.messages.create(model="support", max_tokens=5, messages=unknown_type)
        assert unknown.value.body == {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "message": "'messages[0].content[0].type': 'txt' is not a content block type; "
                "a user message takes text, image or tool_result blocks here",
            },
        }
        with pytest.raises(anthropic.BadRequestError, match=r"'messages\[0\]\.content\[0\]\.txet'"):
            await client.messages.create(model="support", max_tokens=5, messages=typo)
        assert not chats(up)  # refused before any target
        ephemeral: anthropic.types.CacheControlEphemeralParam = {"type": "ephemeral"}
        answer = await client.messages.create(
            model="support",
            max_tokens=5,
            system=[{"type": "text", "text": "Be brief.", "cache_control": ephemeral}],
            tools=[{**WEATHER, "type": "custom", "cache_control": ephemeral, "strict": True}],
            messages=[
                {"role": "user", "content": [{"type": "text", "text": "Weather?", "cache_control": ephemeral}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "As cited.", "citations": [
                        {"type": "char_location", "cited_text": "sun", "document_index": 0, "document_title": None,
                         "start_char_index": 0, "end_char_index": 3}]},
                    {"type": "tool_use", "id": "c1", "name": "get_weather", "input": {"city": "Oslo"},
                     "cache_control": ephemeral}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "Sunny",
                                              "is_error": False, "cache_control": ephemeral}]},
            ],
        )  # fmt: skip
    assert answer.content[0].text == "ok"  # type: ignore[union-attr]
    [sent] = chats(up)
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "tool"]
    assert "cache_control" not in str(sent) and "citations" not in str(sent)


async def test_a_restricted_request_never_leaves_its_allowed_targets(make_app: AppFactory, tmp_path: Path) -> None:
    async with FakeUpstream(reply=("kept",)) as onprem, FakeUpstream(reply=("cloud",)) as cloud:
        raw = config(tmp_path, {"cloud": cloud.base_url, "onprem": onprem.base_url})
        async with gateway(make_app, raw) as (_, client):
            answer = await client.messages.create(
                model="support",
                max_tokens=5,
                messages=[{"role": "user", "content": "secret"}],
                extra_headers={"X-Turnout-Data-Class": "restricted"},
            )
            assert answer.content[0].text == "kept"  # type: ignore[union-attr]
            cloud.fault = Fault("status", status=500)
            onprem.fault = Fault("status", status=500)
            with pytest.raises(anthropic.APIStatusError):
                await client.messages.create(
                    model="support", max_tokens=5, messages=[{"role": "user", "content": "secret"}],
                    extra_headers={"X-Turnout-Data-Class": "restricted"},
                )  # fmt: skip
    assert chats(cloud) == []  # never, not even as a fallback


async def test_metadata_takes_user_id_and_turnouts_keys_only_and_its_limits_hold(
    make_app: AppFactory, tmp_path: Path
) -> None:
    """Anthropic's API refuses a metadata key but ``user_id``; this door read turnout's own and
    dropped any other silently: a misspelt ``data_class`` served a restricted prompt under the
    default class, on targets its policy keeps it from, and ``max_cost_usd`` bounded nothing."""
    ask: list[anthropic.types.MessageParam] = [{"role": "user", "content": "secret"}]
    async with FakeUpstream(reply=("kept",)) as onprem, FakeUpstream(reply=("cloud",)) as cloud:
        raw = config(tmp_path, {"cloud": cloud.base_url, "onprem": onprem.base_url})
        typo_meta: Any = {"data_clas": "restricted"}
        tiny_budget: Any = {"max_cost_usd": 1e-9}
        async with gateway(make_app, raw) as (_, client):
            with pytest.raises(anthropic.BadRequestError) as typo:
                await client.messages.create(model="support", max_tokens=5, messages=ask, metadata=typo_meta)
            with pytest.raises(anthropic.UnprocessableEntityError) as limited:
                await client.messages.create(model="support", max_tokens=5, messages=ask, metadata=tiny_budget)
            meta: Any = {"user_id": "u-1", "data_class": "restricted", "max_cost_usd": 1, "max_latency_ms": 60_000}
            answer = await client.messages.create(model="support", max_tokens=5, messages=ask, metadata=meta)
    assert typo.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "metadata.data_clas" in typo.value.message
    assert "max_cost_usd" in limited.value.message
    assert answer.content[0].text == "kept"  # type: ignore[union-attr]
    assert chats(cloud) == [] and len(chats(onprem)) == 1


async def test_a_budget_is_charged_and_then_refuses_with_a_rate_limit_error(
    make_app: AppFactory, tmp_path: Path
) -> None:
    async with FakeUpstream(
        usage={"prompt_tokens": 100_000, "completion_tokens": 100_000, "total_tokens": 200_000}
    ) as up:
        raw = config(tmp_path, {"onprem": up.base_url}, limits={"usd_per_day": 0.3})
        async with gateway(make_app, raw) as (app, client):
            await client.messages.create(model="support", max_tokens=10, messages=[{"role": "user", "content": "x"}])
            with pytest.raises(anthropic.RateLimitError):
                await client.messages.create(
                    model="support", max_tokens=10, messages=[{"role": "user", "content": "x"}]
                )
            [charged, refused] = sorted(await rows(app, 2), key=lambda r: r.started_at)
    assert charged.cost_usd == pytest.approx(0.3)
    assert (refused.status, refused.endpoint) == (429, "messages")


async def test_cached_input_tokens_are_reported_apart_as_anthropic_counts_them(
    make_app: AppFactory, tmp_path: Path
) -> None:
    """OpenAI's ``prompt_tokens`` counts cached tokens (and Bedrock's cache writes, reported as
    ``cache_creation_input_tokens``); Anthropic's ``input_tokens`` is the uncached rest."""
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 5,
        "total_tokens": 105,
        "prompt_tokens_details": {"cached_tokens": 60},
        "cache_creation_input_tokens": 10,
    }
    async with (
        FakeUpstream(usage=usage) as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (app, client),
    ):
        ask: Any = {"model": "support", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}
        plain = await client.messages.create(**ask)
        async with client.messages.stream(**ask) as stream:
            streamed = await stream.get_final_message()
        rows_seen = await rows(app, 2)
    for answer in (plain, streamed):
        counts = answer.usage
        assert (counts.input_tokens, counts.cache_read_input_tokens, counts.cache_creation_input_tokens) == (30, 60, 10)
        assert counts.output_tokens == 5
    assert [(r.prompt_tokens, r.completion_tokens) for r in rows_seen] == [(100, 5)] * 2  # the ledger's: all of them


async def test_a_stream_without_upstream_usage_reports_what_the_ledger_charged(
    make_app: AppFactory, tmp_path: Path
) -> None:
    """The upstream counts nothing: the client is told the gateway's count, the one the row
    keeps (``usage_estimated``), not the answer's bytes."""
    async with (
        FakeUpstream(reply=("Grüße", " aus", " Köln"), no_usage=True) as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (app, client),
        client.messages.stream(model="support", max_tokens=50, messages=[{"role": "user", "content": "Hi"}]) as stream,
    ):
        final = await stream.get_final_message()
        [row] = await rows(app, 1)
    assert row.usage_estimated is True
    assert (final.usage.input_tokens, final.usage.output_tokens) == (row.prompt_tokens, row.completion_tokens)


async def test_x_api_key_and_bearer_both_identify_the_tenant(make_app: AppFactory, tmp_path: Path) -> None:
    async with FakeUpstream() as up:
        app = await make_app(config(tmp_path, {"onprem": up.base_url}))
        body = {"model": "support", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        for headers in ({"x-api-key": KEY}, {"authorization": f"Bearer {KEY}"}):
            answer = await request(app, "POST", "/v1/messages", body=body, headers=headers)
            assert answer.status == 200, answer.body
            assert answer.json()["type"] == "message"
        refused = await request(app, "POST", "/v1/messages", body=body, headers={})
        assert refused.status == 401
        assert refused.json() == {
            "type": "error",
            "error": {"type": "authentication_error", "message": refused.json()["error"]["message"]},
        }


async def test_a_stop_sequence_is_reported_plain_and_streamed(make_app: AppFactory, tmp_path: Path) -> None:
    """The upstream stopped at one of the caller's stop sequences and said so: the SDK reads
    ``stop_sequence`` and which one, as from Anthropic's API (it read ``end_turn``)."""
    async with (
        FakeUpstream(reply=("one, two", " END three")) as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (app, client),
    ):
        ask: Any = {"model": "support", "max_tokens": 50, "messages": [{"role": "user", "content": "Count"}]}
        answer = await client.messages.create(**ask, stop_sequences=["END"])
        assert (answer.stop_reason, answer.stop_sequence) == ("stop_sequence", "END")
        assert answer.content[0].text == "one, two "
        # As /openapi.json describes the answer (it said stop_sequence is always null).
        raw = await client.messages.with_raw_response.create(**ask, stop_sequences=["END"])
        schema = (await request(app, "GET", "/openapi.json")).json()["components"]["schemas"]["Message"]
        jsonschema.validate(orjson.loads(await raw.read()), schema)
        async with client.messages.stream(**ask, stop_sequences=["END", "two"]) as stream:
            final = await stream.get_final_message()
        assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "two")
        plain = await client.messages.create(**ask)
        assert (plain.stop_reason, plain.stop_sequence) == ("end_turn", None)


async def test_a_wrong_method_is_answered_in_anthropics_shape(make_app: AppFactory, tmp_path: Path) -> None:
    async with FakeUpstream() as up:
        app = await make_app(config(tmp_path, {"onprem": up.base_url}))
        resp = await request(app, "GET", "/v1/messages", headers={"x-api-key": KEY})
        assert resp.status == 405
        assert resp.json() == {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "use POST for this route"},
        }
        other = await request(app, "GET", "/v1/chat/completions")
        assert other.status == 405 and other.json()["error"]["code"] == "method_not_allowed"  # OpenAI's elsewhere


async def test_a_timeout_is_anthropics_timeout_error(make_app: AppFactory, tmp_path: Path) -> None:
    """Anthropic answers a 504 as ``timeout_error`` (the SDK's ``GatewayTimeoutError`` object);
    it was ``api_error``, the type of a 500."""
    async with FakeUpstream(fault=Fault("hang")) as up:
        app = await make_app(config(tmp_path, {"onprem": up.base_url}))
        resp = await request(
            app,
            "POST",
            "/v1/messages",
            {"model": "support", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
            {"x-api-key": KEY, "x-turnout-max-latency-ms": "200"},
        )
    assert resp.status == 504
    assert resp.json()["error"]["type"] == "timeout_error"


async def test_a_tool_name_declared_twice_or_not_one_anthropic_takes_is_a_400_naming_it(
    make_app: AppFactory, tmp_path: Path
) -> None:
    """As Anthropic's API refuses them (``tools: Tool names must be unique``, its name pattern);
    both reached the targets, where a call of a name declared twice could not be told apart."""
    async with FakeUpstream() as up, gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (_, client):
        for tools, param, says in (
            ([WEATHER, {**WEATHER, "description": "again"}], "tools[1].name", "'get_weather' is declared twice"),
            ([{**WEATHER, "name": "get.weather"}], "tools[0].name", "must match '^[a-zA-Z0-9_-]{1,128}$'"),
            ([{**WEATHER, "name": "x" * 129}], "tools[0].name", "must match"),
        ):
            with pytest.raises(anthropic.BadRequestError) as refused:
                await client.messages.create(
                    model="support",
                    max_tokens=5,
                    messages=[{"role": "user", "content": "x"}],
                    tools=tools,  # type: ignore[arg-type]
                )
            error = refused.value.body["error"]  # type: ignore[index]
            assert error["type"] == "invalid_request_error" and says in error["message"] and param in error["message"]
        answer = await client.messages.create(
            model="support", max_tokens=5, messages=[{"role": "user", "content": "x"}],
            tools=[{**WEATHER, "name": "y" * 128}],
        )  # fmt: skip
        assert answer.stop_reason == "end_turn"
    assert len(chats(up)) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_every_target_busy_is_anthropics_529_overloaded_which_the_sdk_retries(
    make_app: AppFactory, tmp_path: Path, stream: bool
) -> None:
    """Anthropic answers "overloaded" with 529 ``overloaded_error`` (its SDKs' ``OverloadedError``);
    the gateway's all-busy 503 said ``overloaded_error`` under a status Anthropic does not use for
    it. The SDK retries it after the Retry-After the gateway sends; the row keeps 503."""
    async with FakeUpstream() as up, gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (app, client):
        up.fault = Fault("status", status=429, retry_after=1, times=2)
        retrying = client.with_options(max_retries=1)
        with pytest.raises(anthropic.OverloadedError) as busy:
            await retrying.messages.create(
                model="support", max_tokens=5, messages=[{"role": "user", "content": "x"}], stream=stream
            )
        assert busy.value.status_code == 529 and busy.value.response.headers["retry-after"] == "1"
        assert busy.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
        assert len(chats(up)) == 2  # asked again by the SDK
        statuses = [row.status for row in await rows(app, 2)]
        after = [{"role": "user", "content": "y"}]
        answer = await client.messages.create(model="support", max_tokens=5, messages=after)  # type: ignore[arg-type]
        assert answer.stop_reason == "end_turn"
    assert statuses == [503, 503]


async def test_reasoning_is_thinking_where_asked_and_a_refusal_is_anthropics_refusal(
    make_app: AppFactory, tmp_path: Path
) -> None:
    """A reasoning model's ``reasoning_content`` was dropped, and ``thinking`` refused; chat's
    ``refusal`` came back as an empty ``end_turn``. Now ``thinking`` blocks where the request
    enables thinking (none where it does not, as on Anthropic's API), sent back as the next
    turn's history (as Anthropic asks) and left out of what the targets get; a refusal is the
    answer's text with ``stop_reason: refusal``, plain and streamed alike."""
    question: list[Any] = [{"role": "user", "content": "Capital of France?"}]
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    async with (
        FakeUpstream(reply=("Paris",), reasoning=("The capital", " of France.")) as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (_, client),
    ):
        asked: dict[str, Any] = {"model": "support", "max_tokens": 2048, "messages": question}
        plain = await client.messages.create(**asked, thinking=thinking)
        async with client.messages.stream(**asked, thinking=thinking) as stream:
            streamed = await stream.get_final_message()
        unasked = await client.messages.create(**asked)
        turns = [*question, {"role": "assistant", "content": [b.model_dump() for b in plain.content]}]
        await client.messages.create(**{**asked, "messages": [*turns, {"role": "user", "content": "And Italy?"}]})
        up.refusal = "I can't help with that."
        refusals = [await client.messages.create(**asked)]
        async with client.messages.stream(**asked) as stream:
            refusals.append(await stream.get_final_message())
    for answer in (plain, streamed):
        assert [b.model_dump() for b in answer.content] == [
            {"type": "thinking", "thinking": "The capital of France.", "signature": ""},
            {"type": "text", "text": "Paris", "citations": None},
        ]
    assert [b.type for b in unasked.content] == ["text"]
    assert chats(up)[3]["messages"][1] == {"role": "assistant", "content": "Paris"}  # the thinking left out
    for answer in refusals:
        assert answer.stop_reason == "refusal"
        assert [(b.type, b.text) for b in answer.content] == [("text", "I can't help with that.")]
