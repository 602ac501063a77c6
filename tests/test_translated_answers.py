"""The translated doors (``/v1/messages``, ``/v1/responses``) read a chat answer as some
OpenAI-compatible servers write it: ``content`` as a list of text parts and a tool call's
``arguments`` as an object, plain and streamed, through the official SDKs. Read as Python values
they became the answer's text as Python prints them (``[{'type': 'text', ...``, ``{'city': ...``:
not JSON), and a stream's failure inside the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest
from aiohttp import web

from tests.conftest import AppFactory
from tests.fakes.server import FakeServer
from tests.test_messages_api import KEY, config, gateway
from turnout.serving import anthropic_events, response_events

ASK: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
TOOL: Any = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
FUNCTION = {"type": "function", "name": "get_weather", "parameters": TOOL["input_schema"]}
PARIS = {"city": "Paris"}


@dataclass
class PartsServer(FakeServer):
    """An OpenAI-compatible server that writes text as content parts and arguments as objects."""

    host: str = "127.0.0.1"
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)  # the start-up probe
        return app

    async def _models(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        called = bool(body.get("tools"))
        message: dict[str, Any]
        deltas: list[dict[str, Any]]
        if called:
            call = {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": PARIS},
            }
            message, deltas, finish = {"content": None, "tool_calls": [call]}, [{"tool_calls": [call]}], "tool_calls"
        else:
            parts = [{"type": "text", "text": "Sunny"}, {"type": "text", "text": " today"}]
            message, deltas, finish = {"content": parts}, [{"content": [p]} for p in parts], "stop"
        usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        if not body.get("stream"):
            choice = {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
            return web.json_response({"object": "chat.completion", "choices": [choice], "usage": usage})
        chunks: list[dict[str, Any]] = [{"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
        chunks += [{"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}, {"choices": [], "usage": usage}]
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for chunk in chunks:
            await response.write(b"data: " + orjson.dumps({"object": "chat.completion.chunk", **chunk}) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response


@asynccontextmanager
async def clients(make_app: AppFactory, tmp_path: Path) -> AsyncIterator[tuple[anthropic.AsyncAnthropic, Any]]:
    async with PartsServer() as up, gateway(make_app, config(tmp_path, {"onprem": up.base_url})) as (_, client):
        responses = openai.AsyncOpenAI(base_url=f"{str(client.base_url).rstrip('/')}/v1", api_key=KEY, max_retries=0)
        async with responses:
            yield client, responses


@pytest.mark.parametrize("stream", [False, True])
async def test_text_parts_and_object_arguments_reach_an_anthropic_client_as_text_and_input(
    make_app: AppFactory, tmp_path: Path, stream: bool
) -> None:
    text: Any
    call: Any
    async with clients(make_app, tmp_path) as (client, _):
        if stream:
            async with client.messages.stream(model="support", max_tokens=16, messages=ASK) as said:
                text = await said.get_final_message()
            async with client.messages.stream(model="support", max_tokens=16, messages=ASK, tools=[TOOL]) as called:
                call = await called.get_final_message()
        else:
            text = await client.messages.create(model="support", max_tokens=16, messages=ASK)
            call = await client.messages.create(model="support", max_tokens=16, messages=ASK, tools=[TOOL])
    assert [(b.type, getattr(b, "text", None)) for b in text.content] == [("text", "Sunny today")]
    assert [(b.type, getattr(b, "input", None)) for b in call.content] == [("tool_use", PARIS)]
    assert call.stop_reason == "tool_use"


@pytest.mark.parametrize("stream", [False, True])
async def test_text_parts_and_object_arguments_reach_a_responses_client_as_text_and_json(
    make_app: AppFactory, tmp_path: Path, stream: bool
) -> None:
    async with clients(make_app, tmp_path) as (_, client):
        if stream:
            async with client.responses.stream(model="support", input="Weather in Paris?") as said:
                text = await said.get_final_response()
            async with client.responses.stream(model="support", input="Weather?", tools=[FUNCTION]) as called:
                call = await called.get_final_response()
        else:
            text = await client.responses.create(model="support", input="Weather in Paris?")
            call = await client.responses.create(model="support", input="Weather?", tools=[FUNCTION])
    assert text.output_text == "Sunny today"
    [item] = call.output
    assert item.type == "function_call" and orjson.loads(item.arguments) == PARIS


def test_a_call_whose_index_is_null_streams_as_the_first_call() -> None:
    """A null ``index`` was taken for "no call streaming yet": the Responses events wrote its
    arguments into no item (an IndexError, the stream failing inside the gateway)."""
    head = {"index": None, "id": "call_1", "function": {"name": "get_weather", "arguments": '{"city": '}}
    rest = {"index": None, "function": {"arguments": '"Paris"}'}}
    chunks = [{"choices": [{"index": 0, "delta": {"tool_calls": [d]}, "finish_reason": None}]} for d in (head, rest)]
    events = response_events.Events("r1", 1, "support", {})
    for chunk in chunks:
        events.chunk(chunk)
    assert [(i["type"], i["arguments"]) for i in events.items] == [("function_call", '{"city": "Paris"}')]
    blocks = anthropic_events.Events("msg_1", "support", 1)
    sent = b"".join(blocks.chunk(chunk) for chunk in chunks)
    assert sent.count(b"event: content_block_start") == 1 and sent.count(b"input_json_delta") == 2
