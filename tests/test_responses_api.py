"""``POST /v1/responses`` with the official ``openai`` SDK's ``client.responses`` through the App
behind a real uvicorn, to fake OpenAI-compatible servers: plain, streamed (events reassemble to
the plain answer), a tool round trip, JSON schema, no response state, the policy by data class,
budgets and the ledger's endpoint."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
import uvicorn
from openai.types.responses import (
    FunctionToolParam,
    ResponseIncompleteEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
)
from openai.types.responses.response import IncompleteDetails
from pydantic import BaseModel

from tests.asgi import request
from tests.conftest import AppFactory
from tests.fakes.upstream import FakeUpstream, Fault
from tests.serving import free_port
from tests.uvicorn_app import rows
from turnout.serving.app import App

KEY = "acme-key-0123456789"
WEATHER: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}


class City(BaseModel):
    name: str
    population: int


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


def items(answer: Any) -> list[dict[str, Any]]:
    """An answer's output items as the caller reads them (each answer's ids are its own)."""
    out = []
    for item in answer.output:
        seen = item.model_dump(exclude={"id"})
        for part in seen.get("content") or ():
            part.pop("parsed", None)  # the stream helper's extra field
        out.append(seen)
    return out


async def drain(events: Any, seen: list[str]) -> None:
    async for event in events:
        seen.append(event.type)


@asynccontextmanager
async def gateway(make_app: AppFactory, raw: dict[str, Any]) -> AsyncIterator[tuple[App, openai.AsyncOpenAI]]:
    app = await make_app(raw)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn has a flag, no event
        await asyncio.sleep(0.01)
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
    try:
        yield app, client
    finally:
        await client.close()
        server.should_exit = True
        await task


async def test_a_plain_response_is_answered_in_the_responses_shape(make_app: AppFactory, tmp_path: Path) -> None:
    async with (
        FakeUpstream(reply=("Sunny", " today")) as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (app, client),
    ):
        raw = await client.responses.with_raw_response.create(
            model="support",
            instructions="You are terse.",
            input="Weather?",
            max_output_tokens=100,
            temperature=0.2,
            top_p=0.9,
            metadata={"ticket": "T-1"},
            store=True,
        )
        answer = raw.parse()
        assert (answer.object, answer.model, answer.status) == ("response", "support", "completed")
        assert answer.id.startswith("resp_") and answer.created_at > 0
        assert answer.output_text == "Sunny today"
        [item] = answer.output
        assert (item.type, item.role) == ("message", "assistant")  # type: ignore[union-attr]
        assert answer.usage is not None and answer.usage.output_tokens == 2
        assert answer.usage.total_tokens == answer.usage.input_tokens + 2
        assert answer.metadata == {"ticket": "T-1"}
        assert answer.model_dump()["store"] is False  # asked, but nothing is kept: the Response says so
        assert raw.headers["x-turnout-task"] == "support" and raw.headers["x-turnout-target"] == "onprem"
        assert float(raw.headers["x-turnout-cost-usd"]) > 0
        sent = chats(up)[0]
        assert sent["messages"] == [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Weather?"},
        ]
        assert (sent["max_tokens"], sent["temperature"], sent["top_p"]) == (100, 0.2, 0.9)
        assert "metadata" not in sent and "store" not in sent
        [row] = await rows(app, 1)
    assert (row.endpoint, row.status, row.tenant, row.task) == ("responses", 200, "acme", "support")
    assert row.cost_usd is not None and row.cost_usd > 0


async def test_a_stream_arrives_as_typed_events_that_reassemble_to_the_plain_answer(
    make_app: AppFactory, tmp_path: Path
) -> None:
    async with (
        FakeUpstream(reply=("One", " two", " three")) as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (app, client),
    ):
        plain = await client.responses.create(model="support", input="Count")
        events = [e async for e in await client.responses.create(model="support", input="Count", stream=True)]
        async with client.responses.stream(model="support", input="Count") as helper:
            final = await helper.get_final_response()
        [_, streamed, helped] = sorted(await rows(app, 3), key=lambda r: r.started_at)
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 3,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "One two three"
    done = events[-1].response  # type: ignore[union-attr]
    for streamed_answer in (done, final):
        assert streamed_answer.output_text == plain.output_text == "One two three"
        assert items(streamed_answer) == items(plain)
        assert streamed_answer.usage is not None and plain.usage is not None
        assert streamed_answer.usage.output_tokens == plain.usage.output_tokens
    assert (streamed.endpoint, streamed.stream, streamed.status) == ("responses", True, 200)
    assert helped.stream is True


async def test_an_answer_cut_at_max_output_tokens_is_incomplete_plain_and_streamed(
    make_app: AppFactory, tmp_path: Path
) -> None:
    async with (
        FakeUpstream(reply=("One", " two", " three", " four"), pieces_are_tokens=True) as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (_, client),
    ):
        plain = await client.responses.create(model="support", input="Count", max_output_tokens=2)
        events = [
            e
            async for e in await client.responses.create(
                model="support", input="Count", max_output_tokens=2, stream=True
            )
        ]
        whole = await client.responses.create(model="support", input="Count", max_output_tokens=16)
    assert [chat["max_tokens"] for chat in chats(up)] == [2, 2, 16]
    assert (plain.status, plain.incomplete_details) == ("incomplete", IncompleteDetails(reason="max_output_tokens"))
    [message] = plain.output
    assert isinstance(message, ResponseOutputMessage) and message.status == "incomplete"
    assert plain.output_text == "One two"
    kinds = [e.type for e in events]
    assert kinds[-1] == "response.incomplete" and "response.completed" not in kinds
    done = [e.item.model_dump() for e in events if isinstance(e, ResponseOutputItemDoneEvent)]
    assert [item["status"] for item in done] == ["incomplete"]
    last = events[-1]
    assert isinstance(last, ResponseIncompleteEvent)
    assert (last.response.status, last.response.incomplete_details) == (plain.status, plain.incomplete_details)
    assert last.response.output_text == "One two" and items(last.response) == items(plain)
    # Not cut: completed, as before.
    assert (whole.status, whole.incomplete_details) == ("completed", None)
    assert [item.model_dump()["status"] for item in whole.output] == ["completed"]


async def test_a_tool_round_trip_through_the_sdk(make_app: AppFactory, tmp_path: Path) -> None:
    call = {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}
    async with (
        FakeUpstream(tool_calls=(call,)) as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (_, client),
    ):
        first = await client.responses.create(
            model="support",
            input="Weather in Paris?",
            tools=[WEATHER],
            tool_choice={"type": "function", "name": "get_weather"},
        )
        [use] = first.output
        assert use.type == "function_call"
        assert (use.call_id, use.name, json.loads(use.arguments)) == ("call_1", "get_weather", {"city": "Paris"})
        sent = chats(up)[0]
        assert sent["tools"] == [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": WEATHER["parameters"],
                    "description": "The weather in a city",
                    "strict": True,
                },
            }
        ]
        assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
        up.tool_calls = ()
        up.reply = ("It is sunny in Paris.",)
        second = await client.responses.create(
            model="support",
            input=[
                {"role": "user", "content": "Weather in Paris?"},
                use.model_dump(exclude_none=True),  # type: ignore[list-item]
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            ],
            tools=[WEATHER],
        )
        assert second.output_text == "It is sunny in Paris."
        history = chats(up)[1]["messages"]
    assert history == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": use.arguments}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]


async def test_a_streamed_tool_call_arrives_as_argument_deltas(make_app: AppFactory, tmp_path: Path) -> None:
    call = {"id": "call_9", "name": "get_weather", "arguments": '{"city": "Oslo"}'}
    async with (
        FakeUpstream(tool_calls=(call,)) as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (_, client),
    ):
        events = [
            e async for e in await client.responses.create(model="support", input="Oslo?", tools=[WEATHER], stream=True)
        ]
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(deltas) == {"city": "Oslo"}
    [item] = events[-1].response.output  # type: ignore[union-attr]
    assert (item.type, item.call_id, item.name, item.arguments) == ("function_call", "call_9", "get_weather", deltas)  # type: ignore[union-attr]


async def test_interleaved_tool_call_deltas_go_to_their_own_items(make_app: AppFactory, tmp_path: Path) -> None:
    """An upstream that interleaves two calls' argument deltas by index: every delta names the
    item it belongs to, no item gets a delta after its ``.done``, and each ends with all its
    arguments."""
    calls = (
        {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Oslo", "unit": "celsius"}'},
        {"id": "call_2", "name": "get_weather", "arguments": '{"city": "Bergen", "unit": "kelvin"}'},
    )
    async with (
        FakeUpstream(tool_calls=calls, interleave=True) as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (_, client),
        client.responses.stream(model="support", input="Oslo, Bergen?", tools=[WEATHER]) as stream,
    ):
        events = [event async for event in stream]
        final = await stream.get_final_response()
    added = {str(e.item.id): e.output_index for e in events if e.type == "response.output_item.added"}
    arguments: dict[str, str] = dict.fromkeys(added, "")
    done: dict[str, str] = {}
    for e in events:
        if e.type == "response.function_call_arguments.delta":
            assert e.item_id not in done and added[e.item_id] == e.output_index
            arguments[e.item_id] += e.delta
        elif e.type == "response.function_call_arguments.done":
            done[e.item_id] = e.arguments
    assert done == arguments and list(arguments.values()) == [c["arguments"] for c in calls]
    assert [(i.call_id, i.arguments) for i in final.output] == [(c["id"], c["arguments"]) for c in calls]  # type: ignore[union-attr]


async def test_cached_and_reasoning_tokens_are_reported_as_the_upstream_counted_them(
    make_app: AppFactory, tmp_path: Path
) -> None:
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 8,
        "total_tokens": 108,
        "prompt_tokens_details": {"cached_tokens": 60},
        "completion_tokens_details": {"reasoning_tokens": 3},
    }
    async with (
        FakeUpstream(usage=usage) as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (_, client),
    ):
        plain = await client.responses.create(model="support", input="Hi")
        async with client.responses.stream(model="support", input="Hi") as stream:
            streamed = await stream.get_final_response()
    for answer in (plain, streamed):
        counts = answer.usage
        assert counts is not None and (counts.input_tokens, counts.output_tokens, counts.total_tokens) == (100, 8, 108)
        assert counts.input_tokens_details.cached_tokens == 60
        assert counts.output_tokens_details.reasoning_tokens == 3


async def test_a_stream_without_upstream_usage_reports_what_the_ledger_charged(
    make_app: AppFactory, tmp_path: Path
) -> None:
    """The upstream counts nothing: the client is told the gateway's count, the one the row
    keeps (``usage_estimated``), not the answer's bytes."""
    async with (
        FakeUpstream(reply=("Grüße", " aus", " Köln"), no_usage=True) as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (app, client),
        client.responses.stream(model="support", input="Hi") as stream,
    ):
        final = await stream.get_final_response()
        [row] = await rows(app, 1)
    assert row.usage_estimated is True and final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (row.prompt_tokens, row.completion_tokens)


async def test_a_json_schema_format_reaches_the_target_and_the_sdk_parses_the_answer(
    make_app: AppFactory, tmp_path: Path
) -> None:
    async with (
        FakeUpstream(reply=('{"name": "Oslo", ', '"population": 709000}')) as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (_, client),
    ):
        parsed = await client.responses.parse(model="support", input="Oslo?", text_format=City)
        assert parsed.output_parsed == City(name="Oslo", population=709000)
        fmt = chats(up)[0]["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "City" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"]["properties"]["population"] == {"title": "Population", "type": "integer"}


async def test_response_state_is_not_kept_and_bad_input_is_a_400_in_openais_shape(
    make_app: AppFactory, tmp_path: Path
) -> None:
    async with FakeUpstream() as up, gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (_, client):
        with pytest.raises(openai.BadRequestError, match="keeps no response state") as stateful:
            await client.responses.create(model="support", input="again", previous_response_id="resp_123")
        assert stateful.value.param == "previous_response_id"
        with pytest.raises(openai.BadRequestError, match="web_search") as builtin:
            await client.responses.create(model="support", input="x", tools=[{"type": "web_search"}])
        assert builtin.value.param == "tools[0]"
        with pytest.raises(openai.BadRequestError) as item:
            await client.responses.create(model="support", input=[{"role": "robot", "content": "x"}])  # type: ignore[misc, list-item]
        assert item.value.param == "input[0].role"
        with pytest.raises(openai.BadRequestError, match="'input' is required") as no_input:
            await client.responses.create(model="support", instructions="Be brief.")
        assert no_input.value.param == "input"
        for empty, code in (("", "empty_string"), ([], "empty_array")):
            with pytest.raises(openai.BadRequestError, match="Invalid 'input': empty") as nothing:
                await client.responses.create(model="support", input=empty)
            assert (nothing.value.param, nothing.value.code) == ("input", code)
        with pytest.raises(openai.NotFoundError):
            await client.responses.create(model="nope", input="x")
        bad = openai.AsyncOpenAI(base_url=str(client.base_url), api_key="wrong-key", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await bad.responses.create(model="support", input="x")
        await bad.close()
        up.fault = Fault("status", status=500)
        with pytest.raises(openai.APIStatusError) as failed:
            await client.responses.create(model="support", input="x")
        assert failed.value.status_code == 502
    assert chats(up) == [chats(up)[0]]  # only the last call reached the target; the 400s never did


async def test_a_stream_that_fails_after_its_first_event_ends_with_an_error_event(
    make_app: AppFactory, tmp_path: Path
) -> None:
    async with (
        FakeUpstream(reply=("One", " two", " three")) as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (app, client),
    ):
        up.fault = Fault("error_event")
        seen: list[str] = []
        events = await client.responses.create(model="support", input="Count", stream=True)
        with pytest.raises(openai.APIError, match="the stream from the target failed"):
            await drain(events, seen)
        [row] = await rows(app, 1)
    assert seen[:2] == ["response.created", "response.in_progress"]
    assert "response.completed" not in seen
    assert (row.endpoint, row.stream, row.status) == ("responses", True, 502)


async def test_a_restricted_request_never_leaves_its_allowed_targets(make_app: AppFactory, tmp_path: Path) -> None:
    async with FakeUpstream(reply=("kept",)) as onprem, FakeUpstream(reply=("cloud",)) as cloud:
        raw = config(tmp_path, {"cloud": cloud.base_url, "onprem": onprem.base_url})
        async with gateway(make_app, raw) as (_, client):
            answer = await client.responses.create(
                model="support", input="secret", extra_headers={"X-Turnout-Data-Class": "restricted"}
            )
            assert answer.output_text == "kept"
            by_metadata = await client.responses.create(
                model="support", input="secret", metadata={"data_class": "restricted"}
            )
            assert by_metadata.output_text == "kept"
            onprem.fault = Fault("status", status=500)
            with pytest.raises(openai.APIStatusError):
                await client.responses.create(
                    model="support", input="secret", stream=True, metadata={"data_class": "restricted"}
                )
    assert chats(cloud) == []  # never, not even as a fallback
    assert len(chats(onprem)) == 3


async def test_a_budget_is_charged_and_then_refuses_with_a_rate_limit_error(
    make_app: AppFactory, tmp_path: Path
) -> None:
    async with FakeUpstream(
        usage={"prompt_tokens": 100_000, "completion_tokens": 100_000, "total_tokens": 200_000}
    ) as up:
        raw = config(tmp_path, {"onprem": up.base_url}, limits={"usd_per_day": 0.3})
        async with gateway(make_app, raw) as (app, client):
            await client.responses.create(model="support", input="x", max_output_tokens=10)
            with pytest.raises(openai.RateLimitError):
                await client.responses.create(model="support", input="x", max_output_tokens=10)
            [charged, refused] = sorted(await rows(app, 2), key=lambda r: r.started_at)
    assert charged.cost_usd == pytest.approx(0.3)
    assert (refused.status, refused.endpoint) == (429, "responses")


async def test_a_request_no_tpm_limit_can_admit_names_max_output_tokens(make_app: AppFactory, tmp_path: Path) -> None:
    """A 400 ``request_too_large`` names the field the caller bounds the answer with: it named
    ``max_tokens``, which the Responses API does not have, and told the caller to lower it."""
    async with FakeUpstream() as up:
        raw = config(tmp_path, {"onprem": up.base_url}, limits={"tpm": 1000})
        async with gateway(make_app, raw) as (_, client):
            with pytest.raises(openai.BadRequestError) as refused:
                await client.responses.create(model="support", input="x", max_output_tokens=5000)
    error = refused.value.response.json()["error"]
    assert (error["code"], error["param"]) == ("request_too_large", "max_output_tokens")
    assert "lower max_output_tokens" in error["message"] and "max_tokens" not in error["message"].replace(
        "max_output_tokens", ""
    )
    assert chats(up) == []


async def test_the_in_process_door_takes_bearer_and_x_api_key(make_app: AppFactory, tmp_path: Path) -> None:
    async with FakeUpstream() as up:
        app = await make_app(config(tmp_path, {"onprem": up.base_url}))
        body = {"model": "support", "input": [{"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "hi"}]}]}  # fmt: skip
        for headers in ({"x-api-key": KEY}, {"authorization": f"Bearer {KEY}"}):
            answer = await request(app, "POST", "/v1/responses", body=body, headers=headers)
            assert answer.status == 200, answer.body
            assert answer.json()["object"] == "response"
        refused = await request(app, "POST", "/v1/responses", body=body, headers={})
        assert refused.status == 401
        assert refused.json()["error"]["type"] == "authentication_error" or refused.json()["error"]["code"]
        wrong = await request(app, "GET", "/v1/responses", headers={"authorization": f"Bearer {KEY}"})
        assert wrong.status == 405


async def test_what_real_clients_send_that_changes_nothing_here_is_accepted(
    make_app: AppFactory, tmp_path: Path
) -> None:
    """The SDK's and agent frameworks' ``include``, ``truncation``, ``prompt_cache_key`` and
    ``safety_identifier`` were each a 400: accepted now where they change nothing here (none
    reaches a target, the end user is read as ``user``), refused by name where they would."""
    async with (
        FakeUpstream(reply=("ok",)) as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (app, client),
    ):
        for truncation in ("disabled", "auto"):
            answer = await client.responses.create(
                model="support",
                input="hi",
                include=["reasoning.encrypted_content", "web_search_call.action.sources"],
                truncation=truncation,
                prompt_cache_key="conversation-7",
                safety_identifier="end-user-1",
            )
            assert answer.output_text == "ok" and answer.truncation == "disabled"  # nothing is ever dropped
            assert answer.prompt_cache_key == "conversation-7"
        async with client.responses.stream(model="support", input="hi", include=[]) as stream:
            assert (await stream.get_final_response()).output_text == "ok"
        assert [sent.get("user") for sent in chats(up)] == ["end-user-1", "end-user-1", None]
        for sent in chats(up):
            assert not {"include", "truncation", "prompt_cache_key", "safety_identifier"} & set(sent)
        with pytest.raises(openai.BadRequestError, match="logprobs") as logprobs:
            await client.responses.create(
                model="support", input="hi", include=["reasoning.encrypted_content", "message.output_text.logprobs"]
            )
        assert logprobs.value.param == "include[1]"
        for wrong, param in (({"truncation": "middle"}, "truncation"), ({"include": ["everything"]}, "include[0]")):
            with pytest.raises(openai.BadRequestError) as refused:
                await client.responses.create(model="support", input="hi", extra_body=wrong)
            assert refused.value.param == param
        first = sorted(await rows(app, 3), key=lambda r: r.started_at)[0]
    assert first.status == 200 and len(chats(up)) == 3


async def test_a_tool_name_declared_twice_or_not_one_openai_takes_is_a_400_naming_it(
    make_app: AppFactory, tmp_path: Path
) -> None:
    """Both reached the targets: the model's call of a name declared twice could not be told
    apart, and a name OpenAI refuses (a space, 65 characters) failed at Bedrock or not at all."""
    async with FakeUpstream() as up, gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (_, client):
        other: FunctionToolParam = {**WEATHER, "description": "another"}
        for tools, param, says in (
            ([WEATHER, other], "tools[1].name", "'get_weather' is declared twice (first by 'tools[0].name')"),
            ([{**WEATHER, "name": "get weather"}], "tools[0].name", "must match '^[a-zA-Z0-9_-]{1,64}$'"),
            ([WEATHER, {**WEATHER, "name": "x" * 65}], "tools[1].name", "must match"),
        ):
            with pytest.raises(openai.BadRequestError) as refused:
                await client.responses.create(model="support", input="x", tools=tools)  # type: ignore[arg-type]
            assert refused.value.param == param and says in refused.value.message
        answer = await client.responses.create(model="support", input="x", tools=[{**WEATHER, "name": "a-Z_9" * 12}])
        assert answer.status == "completed"
    assert len(chats(up)) == 1


async def test_reasoning_and_a_refusal_reach_the_client_in_the_responses_shape_and_go_back(
    make_app: AppFactory, tmp_path: Path
) -> None:
    """A reasoning model's ``reasoning_content`` and chat's ``refusal`` were dropped: the answer
    had no reasoning, and a refusal came back as an empty message. Now a ``reasoning`` item and
    a ``refusal`` part, plain and streamed alike, and the output sent back as the next input
    (as OpenAI's docs do it) is accepted, the reasoning left out of what the targets get."""
    async with (
        FakeUpstream(reply=("Paris",), reasoning=("The capital", " of France.")) as up,
        gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (_, client),
    ):
        plain = await client.responses.create(model="support", input="Capital of France?")
        async with client.responses.stream(model="support", input="Capital of France?") as stream:
            kinds = [event.type async for event in stream]
            streamed = await stream.get_final_response()
        nxt: list[Any] = [{"role": "user", "content": "Capital of France?"}]
        nxt += [item.model_dump(exclude_none=True) for item in plain.output]
        nxt.append({"role": "user", "content": "And of Italy?"})
        await client.responses.create(model="support", input=nxt)
        up.refusal = "I can't help with that."
        refused = await client.responses.create(model="support", input="Something bad")
        refused_events = [e async for e in await client.responses.create(model="support", input="x", stream=True)]
        up.refusal = None
        nxt = [{"role": "user", "content": "Something bad"}, *(i.model_dump() for i in refused.output)]
        await client.responses.create(model="support", input=[*nxt, {"role": "user", "content": "Why?"}])
    for answer in (plain, streamed):
        reasoning, message = answer.output
        assert reasoning.type == "reasoning" and message.type == "message"
        assert [(c.type, c.text) for c in reasoning.content or ()] == [("reasoning_text", "The capital of France.")]
        assert answer.output_text == "Paris"
    assert items(streamed) == items(plain)
    assert kinds.count("response.reasoning_text.delta") == 2 and "response.reasoning_text.done" in kinds
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.output_text.delta")
    [message] = refused.output
    assert message.type == "message" and [c.model_dump() for c in message.content] == [
        {"type": "refusal", "refusal": "I can't help with that."}
    ]
    assert refused.output_text == ""
    final = refused_events[-1].response  # type: ignore[union-attr]
    assert items(final) == items(refused)
    assert "response.refusal.delta" in [e.type for e in refused_events]
    sent = chats(up)
    assert sent[2]["messages"] == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},  # the reasoning item left out
        {"role": "user", "content": "And of Italy?"},
    ]
    assert sent[-1]["messages"][1] == {"role": "assistant", "content": "I can't help with that."}
