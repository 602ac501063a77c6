"""`turnout serve` with no config, as a new user runs it: the embedded SmolLM2 answers the
official openai SDK (sync, async, streaming); SIGTERM drains the ledger; no prompt text is
written anywhere."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator

import openai
import pytest

from tests.serving import Served, sdk_client, turnout_serve

pytestmark = pytest.mark.slow
SECRET = "SENTINEL-c0ffee-4242-never-store-me"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with turnout_serve(tmp_path_factory.mktemp("serve")) as s:
        yield s


def client(served: Served) -> openai.OpenAI:
    return sdk_client(served.base_url, "unused")


def test_models_lists_the_default_task(served: Served) -> None:
    assert [m.id for m in client(served).models.list()] == ["default"]


def test_sync_completion_is_generated_by_the_model(served: Served) -> None:
    resp = client(served).chat.completions.with_raw_response.create(
        model="default",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=16,
        temperature=0,
    )
    completion = resp.parse()
    assert completion.model == "default"
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert resp.headers["x-turnout-target"] == "local"
    assert resp.headers["x-turnout-model-version"].startswith("SmolLM2-135M-Instruct")


async def test_async_streaming_with_usage(served: Served) -> None:
    aclient = openai.AsyncOpenAI(base_url=served.base_url, api_key="unused", max_retries=0)
    async with aclient:
        stream = await aclient.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "Count from one to five."}],
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces, usage = [], None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
    assert len(pieces) > 3 and "".join(pieces).strip()
    assert usage is not None and usage.completion_tokens >= len(pieces) - 1


def test_sync_streaming_without_usage(served: Served) -> None:
    stream = client(served).chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, stream=True
    )
    chunks = list(stream)
    assert chunks and all(c.usage is None for c in chunks)


def test_a_streamed_tool_call_reads_whole_in_the_sdk(served: Served) -> None:
    """The SDK's stream helper concatenates what each delta repeats: the call's name comes
    out once only if the gateway sends it once, as OpenAI does."""
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
    with client(served).chat.completions.stream(
        model="default",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[tool],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=48,
        temperature=0,
    ) as stream:
        final = stream.get_final_completion()
    [choice] = final.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.function_call is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)


def test_errors_reach_the_sdk_as_typed_exceptions(served: Served) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client(served).chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client(served).chat.completions.create(model="default", messages=[])


def test_zz_sigterm_drains_the_ledger_and_stores_no_text(served: Served) -> None:
    c = client(served)
    for _ in range(3):
        c.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": f"My password is {SECRET}. Repeat it."}],
            max_tokens=8,
        )
    # uvicorn re-raises SIGTERM after its graceful shutdown, so the exit reads as the signal
    assert served.stop() in (0, -15)
    assert b"Application shutdown complete" in served.log.read_bytes()
    cwd = served.log.parent
    ledger = cwd / ".turnout" / "turnout.db"
    rows = sqlite3.connect(ledger).execute("SELECT task, target, status, prompt_tokens FROM requests").fetchall()
    assert len(rows) >= 8  # every request in this module, written before exit
    assert ("default", "local", 200) in {r[:3] for r in rows}
    for path in cwd.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"prompt text leaked into {path}"
