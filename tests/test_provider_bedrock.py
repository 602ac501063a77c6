"""BedrockProvider against the Bedrock wire-protocol server (tests/fakes/bedrock.py) over a real
socket: SigV4 and bearer auth, credentials off the event loop, the translation as it crosses the
wire, Bedrock's typed errors before and inside a stream, stream delivery faults, and what the
attempt loop (and the API) make of each.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from botocore.credentials import RefreshableCredentials  # type: ignore[import-untyped, unused-ignore]
from botocore.exceptions import CredentialRetrievalError  # type: ignore[import-untyped, unused-ignore]
from botocore.session import Session  # type: ignore[import-untyped, unused-ignore]

from tests.asgi import ledger_rows, request
from tests.conftest import AppFactory
from tests.fakes.bedrock import (
    ACCESS_KEY,
    CONTEXT_WINDOW_MESSAGE,
    ERRORS,
    MESSAGES,
    SECRET_KEY,
    STREAM_EXCEPTIONS,
    FakeBedrock,
    Fault,
    Received,
    Reply,
    ToolUse,
)
from tests.fakes.scripted import ScriptedProvider
from tests.serving import free_port
from turnout.config import BedrockTarget, BreakerConfig, RetryConfig, validate
from turnout.control.catalog import ModelInfo, context_window
from turnout.errors import (
    AllTargetsFailed,
    ContextWindowExceeded,
    CredentialsMissing,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from turnout.providers.base import Call, Completion, Load, Stream, Timeouts, Usage
from turnout.providers.bedrock import provider as bedrock_module
from turnout.providers.bedrock.provider import BedrockProvider
from turnout.providers.registry import create
from turnout.routing import attempts as attempt_loop
from turnout.routing.attempts import Target, execute
from turnout.routing.backoff import delay
from turnout.routing.breaker import Breaker

MODEL = "deepseek.v3-v1:0"
PROFILE = "us.meta.llama4-maverick-17b-instruct-v1:0"
ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.deepseek.v3-v1:0"
BEARER = "ABSKQmVkcm9ja0FQSUtleS1leGFtcGxlLXRva2Vu"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE-session-token"
FAST = Timeouts(connect=2, ttft=5, total=10)
HELLO: dict[str, Any] = {"model": "task", "messages": [{"role": "user", "content": "Say hello."}]}
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CLOCK_TOOL: dict[str, Any] = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
WEATHER = ToolUse("get_weather", {"city": "Paris", "units": "metric"}, "tooluse_w")
CLOCK = ToolUse("get_time", {"tz": "Europe/Paris"}, "tooluse_t")
FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
    "malformed_model_output": "stop",
    "malformed_tool_use": "stop",
    "a_reason_from_the_future": "stop",
}
# name → (status, retryable, fallback, error_class), as bedrock_errors documents them.
BEFORE_STREAM = {
    "ThrottlingException": (429, True, True, "bedrock_throttling"),
    "ModelNotReadyException": (429, True, True, "bedrock_model_not_ready"),
    "ServiceUnavailableException": (503, True, True, "bedrock_service_unavailable"),
    "InternalServerException": (500, True, True, "bedrock_internal_server"),
    "ModelTimeoutException": (408, False, True, "bedrock_model_timeout"),
    "ModelErrorException": (424, False, True, "bedrock_model_error"),
    "AccessDeniedException": (403, False, True, "bedrock_access_denied"),
    "ResourceNotFoundException": (404, False, True, "bedrock_resource_not_found"),
    "ServiceQuotaExceededException": (400, False, True, "bedrock_service_quota_exceeded"),
    "ValidationException": (400, False, False, "bedrock_validation"),
}
IN_STREAM = {
    "internalServerException": (500, True, True, "bedrock_internal_server"),
    "modelStreamErrorException": (424, False, True, "bedrock_model_stream_error"),
    "validationException": (400, False, False, "bedrock_validation"),
    "throttlingException": (429, True, True, "bedrock_throttling"),
    "serviceUnavailableException": (503, True, True, "bedrock_service_unavailable"),
}
# Events are spaced out so that the fault reaches the client well after the first content
# chunk, in a later read: the fault then belongs to the stream, not to stream().
PACED = 0.05

Make = Callable[..., BedrockProvider]


def test_the_tables_cover_every_error_the_fake_knows() -> None:
    assert set(BEFORE_STREAM) == set(ERRORS)
    assert set(IN_STREAM) == set(STREAM_EXCEPTIONS)


# -- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _env_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake's key pair in the environment, and nothing else from the developer's AWS setup."""
    for name in (
        "AWS_BEARER_TOKEN_BEDROCK",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never wait on IMDS


@pytest.fixture
async def fake() -> AsyncIterator[FakeBedrock]:
    async with FakeBedrock(verify_signature=True) as bedrock:
        yield bedrock


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """Build BedrockProviders from validated config, as the gateway does; at the end, each has
    settled every call it started (nothing left in flight) and is closed."""
    made: list[BedrockProvider] = []

    def factory(fake: FakeBedrock | str, model: str = MODEL, **extra: Any) -> BedrockProvider:
        url = fake if isinstance(fake, str) else fake.url
        provider = create("bedrock", bedrock_config(url, model, **extra))
        assert isinstance(provider, BedrockProvider)
        made.append(provider)
        return provider

    yield factory
    for provider in made:
        await provider.aclose()
    assert [p.load().in_flight for p in made] == [0] * len(made), "a call was never settled"


def bedrock_config(url: str, model: str = MODEL, **extra: Any) -> BedrockTarget:
    raw = {"provider": "bedrock", "region": "us-east-1", "model": model, "endpoint_url": url, **extra}
    cfg = validate({"targets": {"bedrock": raw}, "tasks": {"task": {"route": ["bedrock"]}}}).targets["bedrock"]
    assert isinstance(cfg, BedrockTarget)
    return cfg


def call(body: dict[str, Any] | None = None, *, stream: bool = False, timeouts: Timeouts = FAST) -> Call:
    return Call(body or HELLO, stream, timeouts, "req-1")


async def read_all(stream: Stream) -> list[dict[str, Any]]:
    return [chunk async for chunk in stream.chunks]


async def read_until_error(stream: Stream) -> tuple[list[dict[str, Any]], UpstreamError]:
    chunks: list[dict[str, Any]] = []
    try:
        async for chunk in stream.chunks:
            chunks.append(chunk)
    except UpstreamError as exc:
        return chunks, exc
    raise AssertionError(f"the stream ended cleanly after {len(chunks)} chunks")


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["delta"].get("content") or "" for chunk in chunks for c in chunk["choices"])


def finishes(chunks: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [
        (c["finish_reason"], c.get("native_finish_reason"))
        for chunk in chunks
        for c in chunk["choices"]
        if c["finish_reason"]
    ]


def tool_calls_of(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reassemble streamed tool calls by index, as an OpenAI client does."""
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for c in chunk["choices"]:
            for part in c["delta"].get("tool_calls") or ():
                slot = calls.setdefault(part["index"], {"id": "", "name": "", "arguments": ""})
                slot["id"] += part.get("id") or ""
                fn = part.get("function") or {}
                slot["name"] += fn.get("name") or ""
                slot["arguments"] += fn.get("arguments") or ""
    return [calls[i] for i in sorted(calls)]


def header(received: Received, name: str) -> str | None:
    return next((v for k, v in received.headers.items() if k.lower() == name.lower()), None)


def signed_headers(received: Received) -> list[str]:
    match = re.search(r"SignedHeaders=([a-z0-9;-]+)", received.authorization)
    assert match is not None, received.authorization
    return match[1].split(";")


async def until(predicate: Callable[[], bool]) -> None:
    """Wait (boundedly) for something the fake does on its own schedule."""
    for _ in range(400):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the condition never held")


def secrets_absent(err: BaseException) -> None:
    text = f"{err} {err!r} {getattr(err, 'message', '')}"
    assert SECRET_KEY not in text
    assert BEARER not in text


# -- signing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "encoded"),
    [
        (MODEL, "deepseek.v3-v1%3A0"),
        (PROFILE, "us.meta.llama4-maverick-17b-instruct-v1%3A0"),
        (ARN, "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.deepseek.v3-v1%3A0"),
    ],
    ids=["model-id", "inference-profile", "arn"],
)
async def test_sigv4_signed_calls_pass_for_every_model_id_form(
    fake: FakeBedrock, make: Make, model: str, encoded: str
) -> None:
    provider = make(fake, model)

    done = await provider.complete(call())
    chunks = await read_all(await provider.stream(call(stream=True)))

    assert done.body["choices"][0]["message"]["content"] == "Hello, world"
    assert text_of(chunks) == "Hello, world"
    assert [r.path for r in fake.requests] == [f"/model/{encoded}/converse", f"/model/{encoded}/converse-stream"]
    assert [r.model_id for r in fake.requests] == [model, model]
    today = datetime.now(UTC).date()
    for received in fake.requests:
        assert received.signature_ok is True
        stamp = header(received, "X-Amz-Date")
        assert stamp is not None
        date = stamp[:8]
        assert abs(datetime.strptime(date, "%Y%m%d").replace(tzinfo=UTC).date() - today) <= timedelta(days=1)
        assert received.authorization.startswith(
            f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{date}/us-east-1/bedrock/aws4_request, "
        )
        assert {"host", "x-amz-date", "content-type"} <= set(signed_headers(received))
        assert header(received, "X-Amz-Security-Token") is None


async def test_a_session_token_is_sent_and_signed(
    fake: FakeBedrock, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    provider = make(fake)

    await provider.complete(call())
    await read_all(await provider.stream(call(stream=True)))

    assert len(fake.requests) == 2
    for received in fake.requests:
        assert header(received, "X-Amz-Security-Token") == SESSION_TOKEN
        assert "x-amz-security-token" in signed_headers(received)
        assert received.signature_ok is True


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(
    ("variable", "value", "code"),
    [
        ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYWRONGKEY", "InvalidSignatureException"),
        ("AWS_ACCESS_KEY_ID", "AKIDSOMEONEELSE", "UnrecognizedClientException"),
    ],
    ids=["wrong-secret", "unknown-key"],
)
async def test_bad_credentials_give_a_clear_error_that_is_not_retried(
    fake: FakeBedrock, make: Make, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, code: str, stream: bool
) -> None:
    monkeypatch.setenv(variable, value)
    provider = make(fake)

    with pytest.raises(UpstreamStatusError) as caught:
        await (provider.stream(call(stream=True)) if stream else provider.complete(call()))

    err = caught.value
    assert err.upstream_status == 403
    assert not err.retryable  # the same credentials fail the same way
    assert err.fallback  # the target is misconfigured, not the request: another target may do
    assert code in err.message and "credentials" in err.message
    assert value not in err.message
    secrets_absent(err)
    assert fake.requests[0].signature_ok is False


async def test_a_bearer_token_replaces_signing(make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", BEARER)

    def no_chain(self: Any) -> Any:
        raise AssertionError("the credential chain must not be consulted with an API key")

    monkeypatch.setattr(Session, "get_credentials", no_chain)
    async with FakeBedrock(verify_signature=True, bearer_token=BEARER) as fake:
        provider = make(fake)
        health = await provider.health()
        done = await provider.complete(call())
        chunks = await read_all(await provider.stream(call(stream=True)))

    assert health.ok and "API key" in health.detail and BEARER not in health.detail
    assert done.body["choices"][0]["message"]["content"] == text_of(chunks) == "Hello, world"
    assert [r.operation for r in fake.requests] == ["converse", "converse-stream"]
    for received in fake.requests:
        assert received.authorization == f"Bearer {BEARER}"
        assert received.signature_ok is None
        assert header(received, "X-Amz-Date") is None
        assert header(received, "X-Amz-Security-Token") is None


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_a_rejected_bearer_token_is_not_retried_nor_quoted(
    make: Make, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", BEARER)
    async with FakeBedrock(verify_signature=True, bearer_token="ABSK-the-right-one") as fake:
        provider = make(fake)
        with pytest.raises(UpstreamStatusError) as caught:
            await (provider.stream(call(stream=True)) if stream else provider.complete(call()))

    err = caught.value
    assert err.upstream_status == 403 and not err.retryable and err.fallback
    assert "UnrecognizedClientException" in err.message
    secrets_absent(err)


# -- credentials: resolved and refreshed off the event loop ----------------------------------------


async def test_credentials_are_resolved_once_in_a_worker_thread(
    fake: FakeBedrock, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[threading.Thread] = []
    resolve = Session.get_credentials

    def spy(self: Any) -> Any:
        threads.append(threading.current_thread())
        return resolve(self)

    monkeypatch.setattr(Session, "get_credentials", spy)
    provider = make(fake)

    results = await asyncio.gather(*(provider.complete(call()) for _ in range(5)))
    health = await provider.health()

    assert len(results) == 5
    assert len(threads) == 1  # concurrent first calls share one resolution
    assert threads[0] is not threading.current_thread()  # not the event loop's thread
    assert all(r.signature_ok for r in fake.requests)
    assert health.ok and "env" in health.detail and "AKID" in health.detail and SECRET_KEY not in health.detail


class Clock:
    """The credentials' idea of now, moved by the test."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


async def test_expiring_credentials_are_refreshed_in_a_worker_thread_once_for_concurrent_calls(
    fake: FakeBedrock, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    refreshes: list[threading.Thread] = []

    def refresh() -> dict[str, str]:
        refreshes.append(threading.current_thread())
        return {
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            "token": f"token-{len(refreshes)}",
            "expiry_time": (clock.now + timedelta(hours=1)).isoformat(),
        }

    expired = clock.now - timedelta(minutes=1)
    creds = RefreshableCredentials(
        ACCESS_KEY, SECRET_KEY, "token-0", expired, refresh, "assume-role", time_fetcher=clock
    )
    monkeypatch.setattr(Session, "get_credentials", lambda self: creds)
    provider = make(fake)

    await asyncio.gather(*(provider.complete(call()) for _ in range(4)))
    assert len(refreshes) == 1  # expired at first use: one refresh, shared by all four
    assert refreshes[0] is not threading.current_thread()

    await asyncio.gather(*(provider.complete(call()) for _ in range(4)))
    assert len(refreshes) == 1  # still fresh: no refresh

    clock.now += timedelta(minutes=50)  # within botocore's 15-minute advisory window
    await asyncio.gather(*(provider.complete(call()) for _ in range(4)))
    assert len(refreshes) == 2
    assert refreshes[1] is not threading.current_thread()

    tokens = [header(r, "X-Amz-Security-Token") for r in fake.requests]
    assert tokens == ["token-1"] * 8 + ["token-2"] * 4
    assert all(r.signature_ok for r in fake.requests)


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_a_failed_credential_refresh_is_an_upstream_error(
    fake: FakeBedrock, make: Make, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    clock = Clock()

    def refresh() -> dict[str, str]:
        raise CredentialRetrievalError(provider="assume-role", error_msg="STS is unreachable")

    creds = RefreshableCredentials(
        ACCESS_KEY, SECRET_KEY, "token-0", clock.now - timedelta(minutes=1), refresh, "assume-role", time_fetcher=clock
    )
    monkeypatch.setattr(Session, "get_credentials", lambda self: creds)
    provider = make(fake)

    with pytest.raises(UpstreamError) as caught:
        await (provider.stream(call(stream=True)) if stream else provider.complete(call()))
    health = await provider.health()

    assert caught.value.fallback  # another target may have working credentials
    assert "credentials" in caught.value.message
    assert not health.ok and "credentials" in health.detail
    assert fake.requests == []


async def test_no_credentials_at_all_is_an_upstream_error_and_unhealthy(
    fake: FakeBedrock, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    provider = make(fake)

    with pytest.raises(CredentialsMissing, match="AWS credentials are missing: none found") as caught:
        await provider.complete(call())
    health = await provider.health()

    assert caught.value.fallback and not caught.value.retryable  # configuration: the same on every try
    assert not health.ok and "AWS credentials are missing" in health.detail
    assert fake.requests == []


async def test_a_missing_profile_is_an_upstream_error_and_unhealthy(fake: FakeBedrock, make: Make) -> None:
    provider = make(fake, profile="no-such-profile")

    health = await provider.health()
    with pytest.raises(UpstreamError, match="credentials"):
        await provider.complete(call())

    assert not health.ok
    assert fake.requests == []


# -- translation, through the wire ---------------------------------------------------------------

CONVERSATION: dict[str, Any] = {
    "model": "task",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 3}'},
        {"role": "developer", "content": "Use metric units."},
        {"role": "user", "content": "And in Paris, and the time there?"},
    ],
    "max_tokens": 64,
    "temperature": 0.2,
    "top_p": 0.9,
    "stop": ["END"],
    "tools": [WEATHER_TOOL, CLOCK_TOOL],
    "tool_choice": "auto",
    "parallel_tool_calls": True,
    "top_k": 40,
    "seed": 7,
    "user": "end-user-1",
}
GUARDRAIL = {"id": "gr-123", "version": "2", "trace": "enabled", "stream_mode": "async"}
ADDITIONAL = {"top_k": 10, "reasoning_config": {"type": "enabled", "budget_tokens": 1024}}


@pytest.mark.parametrize("stream", [False, True], ids=["converse", "converse-stream"])
async def test_the_request_body_fake_bedrock_receives(fake: FakeBedrock, make: Make, stream: bool) -> None:
    provider = make(fake, guardrail=GUARDRAIL, additional_fields=ADDITIONAL)
    fake.reply = Reply(text=(), tool_uses=(WEATHER,))

    if stream:
        await read_all(await provider.stream(call(CONVERSATION, stream=True)))
    else:
        await provider.complete(call(CONVERSATION))

    [received] = fake.requests
    guardrail = {"guardrailIdentifier": "gr-123", "guardrailVersion": "2", "trace": "enabled"}
    if stream:
        guardrail["streamProcessingMode"] = "async"
    assert received.body == {
        "system": [{"text": "Be brief."}, {"text": "Use metric units."}],
        "messages": [
            {"role": "user", "content": [{"text": "Weather in Oslo?"}]},
            {
                "role": "assistant",
                "content": [{"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Oslo"}}}],
            },
            {
                "role": "user",
                "content": [
                    {"toolResult": {"toolUseId": "call_1", "content": [{"json": {"temp": 3}}], "status": "success"}},
                    {"text": "And in Paris, and the time there?"},
                ],
            },
        ],
        "inferenceConfig": {"maxTokens": 64, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]},
        "toolConfig": {
            "tools": [
                {
                    "toolSpec": {
                        "name": "get_weather",
                        "inputSchema": {"json": WEATHER_TOOL["function"]["parameters"]},
                        "description": "Current weather",
                    }
                },
                {"toolSpec": {"name": "get_time", "inputSchema": {"json": {"type": "object"}}}},
            ],
            "toolChoice": {"auto": {}},
        },
        # the target's fields under the caller's: the caller's top_k wins
        "additionalModelRequestFields": {
            "top_k": 40,
            "seed": 7,
            "reasoning_config": {"type": "enabled", "budget_tokens": 1024},
        },
        "guardrailConfig": guardrail,
        "requestMetadata": {"user": "end-user-1"},
    }
    assert received.signature_ok is True


SCHEMA_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "schema": {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]},
    },
}


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_tool_call_ids_made_elsewhere_are_sent_in_the_form_converse_takes(
    fake: FakeBedrock, make: Make, stream: bool
) -> None:
    """Seen: a conversation whose tool calls came from another server (Kimi's ids read
    ``functions.get_weather:0``) fell back to Bedrock, which refused it: 400 ValidationException,
    toolUseId must match [a-zA-Z0-9_-]+."""
    ids = ["functions.get_weather:0", "functions.get_weather:1", "x" * 80, "call_ok-1"]
    calls = [
        {"id": i, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}} for i in ids
    ]
    results = [{"role": "tool", "tool_call_id": i, "content": "3 C"} for i in ids]
    body = {
        "model": "task",
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": calls},
            *results,
        ],
        "tools": [WEATHER_TOOL],
    }

    provider = make(fake)
    if stream:
        await read_all(await provider.stream(call(body, stream=True)))
    else:
        await provider.complete(call(body))

    [received] = fake.requests
    used = [b["toolUse"]["toolUseId"] for b in received.body["messages"][1]["content"]]
    answered = [b["toolResult"]["toolUseId"] for b in received.body["messages"][2]["content"]]
    assert used == answered and len(set(used)) == 4 and used[3] == "call_ok-1"
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", u) for u in used)


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_json_schema_goes_through_a_tool_on_models_without_structured_output(
    fake: FakeBedrock, make: Make, stream: bool
) -> None:
    provider = make(fake)  # DeepSeek V3.1: no structured output in the catalog
    fake.reply = Reply(text=("Here you go:",), tool_uses=(ToolUse("json_response", {"answer": 42}),))
    body = {**HELLO, "response_format": SCHEMA_FORMAT}

    if stream:
        chunks = await read_all(await provider.stream(call(body, stream=True)))
        content, reasons = text_of(chunks), [f for f, _ in finishes(chunks)]
        assert tool_calls_of(chunks) == []
    else:
        done = await provider.complete(call(body))
        [choice] = done.body["choices"]
        content, reasons = choice["message"]["content"], [choice["finish_reason"]]
        assert "tool_calls" not in choice["message"]

    assert content == '{"answer":42}'  # the tool's input is the answer; the preamble is dropped
    assert reasons == ["stop"]
    sent = fake.requests[0].body
    assert "outputConfig" not in sent
    [tool] = sent["toolConfig"]["tools"]
    assert tool["toolSpec"]["name"] == "json_response"
    assert tool["toolSpec"]["inputSchema"]["json"] == SCHEMA_FORMAT["json_schema"]["schema"]
    assert sent["toolConfig"]["toolChoice"] == {"any": {}}


async def test_json_schema_goes_to_output_config_on_models_with_structured_output(
    fake: FakeBedrock, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = ModelInfo("acme.structured-v1:0", "Structured", 64_000, True, True, None, None)
    monkeypatch.setattr(bedrock_module, "bedrock_model", lambda model: info)
    provider = make(fake, "acme.structured-v1:0")
    fake.reply = Reply(text=('{"answer": 42}',))

    done = await provider.complete(call({**HELLO, "response_format": SCHEMA_FORMAT}))

    assert done.body["choices"][0]["message"]["content"] == '{"answer": 42}'
    sent = fake.requests[0].body
    assert "toolConfig" not in sent
    structure = sent["outputConfig"]["textFormat"]
    assert structure["type"] == "json_schema"
    assert structure["structure"]["jsonSchema"]["name"] == "answer"
    assert '"answer"' in structure["structure"]["jsonSchema"]["schema"]


async def test_text_reply_complete_and_streamed(fake: FakeBedrock, make: Make) -> None:
    provider = make(fake)
    fake.reply = Reply(text=("Bon", "jour", "!"))

    done = await provider.complete(call())
    chunks = await read_all(await provider.stream(call(stream=True)))

    assert isinstance(done, Completion)
    assert done.body["object"] == "chat.completion"
    assert done.body["model"] == MODEL and done.model_version == MODEL
    [choice] = done.body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "Bonjour!"}
    assert choice["finish_reason"] == "stop" and choice["native_finish_reason"] == "end_turn"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert text_of(chunks) == "Bonjour!"
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:4]] == ["Bon", "jour", "!"]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert finishes(chunks) == [("stop", "end_turn")]


async def test_parallel_tool_calls_complete_and_streamed(fake: FakeBedrock, make: Make) -> None:
    provider = make(fake)
    fake.reply = Reply(text=(), tool_uses=(WEATHER, CLOCK))
    body = {**HELLO, "tools": [WEATHER_TOOL, CLOCK_TOOL]}

    done = await provider.complete(call(body))
    chunks = await read_all(await provider.stream(call(body, stream=True)))

    [choice] = done.body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert [(c["id"], c["type"], c["function"]["name"]) for c in choice["message"]["tool_calls"]] == [
        ("tooluse_w", "function", "get_weather"),
        ("tooluse_t", "function", "get_time"),
    ]
    args = [orjson.loads(c["function"]["arguments"]) for c in choice["message"]["tool_calls"]]
    assert args == [WEATHER.input, CLOCK.input]
    streamed = tool_calls_of(chunks)
    assert [(c["id"], c["name"]) for c in streamed] == [("tooluse_w", "get_weather"), ("tooluse_t", "get_time")]
    assert [orjson.loads(c["arguments"]) for c in streamed] == [WEATHER.input, CLOCK.input]
    assert finishes(chunks) == [("tool_calls", "tool_use")]
    assert text_of(chunks) == ""


async def test_reasoning_content_complete_and_streamed(fake: FakeBedrock, make: Make) -> None:
    provider = make(fake)
    fake.reply = Reply(reasoning=("Let me ", "think."), text=("42",))

    done = await provider.complete(call())
    chunks = await read_all(await provider.stream(call(stream=True)))

    message = done.body["choices"][0]["message"]
    assert message["reasoning_content"] == "Let me think."
    assert message["content"] == "42"
    streamed = "".join(c["delta"].get("reasoning_content") or "" for chunk in chunks for c in chunk["choices"])
    assert streamed == "Let me think."
    assert text_of(chunks) == "42"


async def test_usage_counts_cache_reads_and_writes_as_prompt_tokens(fake: FakeBedrock, make: Make) -> None:
    provider = make(fake)
    fake.reply = Reply(input_tokens=11, output_tokens=5, cache_read_tokens=7, cache_write_tokens=3)
    expected = {
        "prompt_tokens": 21,
        "completion_tokens": 5,
        "total_tokens": 26,
        "prompt_tokens_details": {"cached_tokens": 7},
        "cache_creation_input_tokens": 3,
    }

    done = await provider.complete(call())
    chunks = await read_all(await provider.stream(call(stream=True)))

    assert done.body["usage"] == expected
    assert done.usage == Usage(21, 5, cached_tokens=7, cache_write_tokens=3)  # kept for the doors that report them
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == expected
    assert sum(1 for c in chunks if c.get("usage")) == 1


@pytest.mark.parametrize(("stop_reason", "finish"), list(FINISH.items()))
async def test_every_stop_reason_has_a_finish_reason(
    fake: FakeBedrock, make: Make, stop_reason: str, finish: str
) -> None:
    provider = make(fake)
    fake.reply = Reply(stop_reason=stop_reason)

    done = await provider.complete(call())
    chunks = await read_all(await provider.stream(call(stream=True)))

    [choice] = done.body["choices"]
    assert (choice["finish_reason"], choice["native_finish_reason"]) == (finish, stop_reason)
    assert finishes(chunks) == [(finish, stop_reason)]


async def test_frames_split_across_reads_and_padding_are_handled(fake: FakeBedrock, make: Make) -> None:
    provider = make(fake)
    fake.fault = Fault(split_frames=True)
    fake.reply = Reply(text=("Hello", ",", " world"), tool_uses=(WEATHER,), reasoning=("hm",))
    body = {**HELLO, "tools": [WEATHER_TOOL]}

    chunks = await read_all(await provider.stream(call(body, stream=True)))

    assert text_of(chunks) == "Hello, world"
    [tool] = tool_calls_of(chunks)
    assert tool["name"] == "get_weather" and tool["arguments"] == '{"city":"Paris","units":"metric"}'
    assert finishes(chunks) == [("tool_calls", "tool_use")]
    # Bedrock's random "p" padding never leaks into a chunk
    assert all("p" not in chunk and all("p" not in c["delta"] for c in chunk["choices"]) for chunk in chunks)
    assert fake.requests[0].body.get("p") is None


# -- errors before the stream ----------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["sigv4", "bearer"])
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("name", list(BEFORE_STREAM))
async def test_errors_before_the_stream_map_to_their_documented_behaviour(
    make: Make, monkeypatch: pytest.MonkeyPatch, name: str, stream: bool, auth: str
) -> None:
    status, retryable, fallback, error_class = BEFORE_STREAM[name]
    if auth == "bearer":
        monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", BEARER)
    async with FakeBedrock(verify_signature=True, bearer_token=BEARER) as fake:
        provider = make(fake)
        fake.fault = Fault("error", error=name)
        with pytest.raises(UpstreamStatusError) as caught:
            await (provider.stream(call(stream=True)) if stream else provider.complete(call()))

    err = caught.value
    assert (err.upstream_status, err.retryable, err.fallback, err.error_class) == (
        status,
        retryable,
        fallback,
        error_class,
    )
    assert name in err.message and MESSAGES[name] in err.message
    assert err.message.startswith(f"HTTP {status}: bedrock: Bedrock {name}")
    if not retryable:
        assert "not retried" in err.message  # says why another try here is pointless
    if not fallback:
        assert "Bedrock rejected the request" in err.message
    secrets_absent(err)
    assert len(fake.requests) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_a_prompt_too_long_is_context_window_exceeded(fake: FakeBedrock, make: Make, stream: bool) -> None:
    provider = make(fake)
    fake.fault = Fault("error", error="ValidationException", message=CONTEXT_WINDOW_MESSAGE)

    with pytest.raises(ContextWindowExceeded) as caught:
        await (provider.stream(call(stream=True)) if stream else provider.complete(call()))

    err = caught.value
    assert not err.retryable and err.fallback
    assert err.error_class == "context_window_exceeded"
    assert CONTEXT_WINDOW_MESSAGE in err.message


async def test_an_unknown_error_type_is_an_upstream_status_error(fake: FakeBedrock, make: Make) -> None:
    provider = make(fake)
    fake.fault = Fault("error", error="TeapotException", status=418, message="short and stout")

    with pytest.raises(UpstreamStatusError) as caught:
        await provider.complete(call())

    err = caught.value
    assert err.upstream_status == 418 and not err.fallback
    assert err.error_class == "bedrock_teapot"
    assert "TeapotException" in err.message and "short and stout" in err.message


async def test_connection_refused_is_a_connect_error(make: Make) -> None:
    provider = make(f"http://127.0.0.1:{free_port()}")

    with pytest.raises(UpstreamConnectError) as complete_err:
        await provider.complete(call())
    with pytest.raises(UpstreamConnectError) as stream_err:
        await provider.stream(call(stream=True))

    assert complete_err.value.retryable and stream_err.value.retryable
    assert "cannot connect" in complete_err.value.message


# -- in-stream failures ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(IN_STREAM))
async def test_an_exception_before_any_content_raises_from_stream(fake: FakeBedrock, make: Make, name: str) -> None:
    status, retryable, fallback, error_class = IN_STREAM[name]
    provider = make(fake)
    fake.fault = Fault("exception", error=name, after=1)  # right after messageStart

    with pytest.raises(UpstreamStatusError) as caught:
        await provider.stream(call(stream=True))

    err = caught.value
    assert (err.upstream_status, err.retryable, err.fallback, err.error_class) == (
        status,
        retryable,
        fallback,
        error_class,
    )
    pascal = name[:1].upper() + name[1:]
    assert pascal in err.message and MESSAGES[pascal] in err.message
    secrets_absent(err)


@pytest.mark.parametrize("name", list(IN_STREAM))
async def test_an_exception_after_content_raises_from_the_chunks(fake: FakeBedrock, make: Make, name: str) -> None:
    status, retryable, fallback, error_class = IN_STREAM[name]
    provider = make(fake)
    fake.fault = Fault("exception", error=name, after=3, chunk_delay=PACED)  # messageStart, "Hello", ","

    stream = await provider.stream(call(stream=True))
    chunks, err = await read_until_error(stream)

    assert text_of(chunks) == "Hello,"
    assert isinstance(err, UpstreamStatusError)
    assert (err.upstream_status, err.retryable, err.fallback, err.error_class) == (
        status,
        retryable,
        fallback,
        error_class,
    )
    secrets_absent(err)
    await stream.chunks.aclose()  # after a failure: a no-op


async def test_a_context_window_exception_inside_a_stream(fake: FakeBedrock, make: Make) -> None:
    provider = make(fake)
    fake.fault = Fault("exception", error="validationException", message=CONTEXT_WINDOW_MESSAGE, after=1)

    with pytest.raises(ContextWindowExceeded):
        await provider.stream(call(stream=True))


async def test_an_unmodelled_stream_error(fake: FakeBedrock, make: Make) -> None:
    provider = make(fake)
    fake.fault = Fault("stream_error", error="InternalFailure", message="something broke", after=1)
    with pytest.raises(UpstreamStatusError) as early:
        await provider.stream(call(stream=True))

    fake.fault = Fault("stream_error", error="InternalFailure", message="something broke", after=3, chunk_delay=PACED)
    chunks, late = await read_until_error(await provider.stream(call(stream=True)))

    for err in (early.value, late):
        assert isinstance(err, UpstreamStatusError)
        assert err.upstream_status == 502 and err.retryable and err.fallback
        assert "InternalFailure" in err.message and "something broke" in err.message
        assert err.error_class == "bedrock_internal_failure"
    assert text_of(chunks) == "Hello,"


async def test_a_cut_stream_is_a_connect_error(fake: FakeBedrock, make: Make) -> None:
    provider = make(fake)
    fake.fault = Fault("cut", after=1)
    with pytest.raises(UpstreamConnectError):
        await provider.stream(call(stream=True))

    fake.fault = Fault("cut", after=3)
    chunks, err = await read_until_error(await provider.stream(call(stream=True)))

    assert isinstance(err, UpstreamConnectError) and err.retryable
    assert text_of(chunks) == "Hello,"


async def test_a_corrupt_frame_is_a_protocol_error(fake: FakeBedrock, make: Make) -> None:
    provider = make(fake)
    fake.fault = Fault("corrupt", after=1)
    with pytest.raises(UpstreamProtocolError):
        await provider.stream(call(stream=True))

    fake.fault = Fault("corrupt", after=3, chunk_delay=PACED, split_frames=True)
    chunks, err = await read_until_error(await provider.stream(call(stream=True)))

    assert isinstance(err, UpstreamProtocolError) and "malformed event-stream frame" in err.message
    assert text_of(chunks) == "Hello,"


@pytest.mark.parametrize("what", ["shape", "header"])
async def test_a_malformed_event_is_a_protocol_error(fake: FakeBedrock, make: Make, what: str) -> None:
    """Sound checksums, unsound content: an event of the wrong shape, a header botocore cannot
    read. Before content it raises from stream() (the gateway falls back), after it from the chunks."""
    provider = make(fake)
    fake.fault = Fault("malformed", error=what, after=1)
    with pytest.raises(UpstreamProtocolError, match="malformed ConverseStream event"):
        await provider.stream(call(stream=True))

    fake.fault = Fault("malformed", error=what, after=3, chunk_delay=PACED, split_frames=True)
    chunks, err = await read_until_error(await provider.stream(call(stream=True)))

    assert isinstance(err, UpstreamProtocolError) and "malformed ConverseStream event" in err.message
    assert text_of(chunks) == "Hello,"


async def test_a_converse_response_of_the_wrong_shape_is_a_protocol_error(fake: FakeBedrock, make: Make) -> None:
    fake.fault = Fault("malformed")
    with pytest.raises(UpstreamProtocolError, match="the Converse response is malformed"):
        await make(fake).complete(call())


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_api_a_malformed_reply_falls_back_and_alone_is_a_502(
    make_app: AppFactory, fake: FakeBedrock, stream: bool
) -> None:
    fake.fault = Fault("malformed", after=1)
    app, backup = await app_with_bedrock(make_app, fake)
    resp = await chat(app, stream=stream)
    assert resp.status == 200 and resp.headers["x-turnout-target"] == "backup" and len(backup.calls) == 1

    alone, _ = await app_with_bedrock(make_app, fake, ("bedrock",))
    resp = await chat(alone, stream=stream)
    assert resp.status == 502 and resp.json()["error"]["type"] == "upstream_error"
    assert "malformed" in resp.json()["error"]["message"]


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_no_answer_is_a_ttft_timeout(fake: FakeBedrock, make: Make, stream: bool) -> None:
    provider = make(fake)
    fake.fault = Fault("hang")
    short = Timeouts(connect=2, ttft=0.2, total=10)

    with pytest.raises(UpstreamTimeout) as caught:
        await (
            provider.stream(call(stream=True, timeouts=short)) if stream else provider.complete(call(timeouts=short))
        )

    assert caught.value.phase == "ttft" and caught.value.error_class == "timeout_ttft"
    assert caught.value.retryable
    await until(lambda: fake.disconnects == 1)  # the abandoned request was hung up on


async def test_a_head_without_a_first_event_is_a_ttft_timeout(fake: FakeBedrock, make: Make) -> None:
    provider = make(fake)
    fake.fault = Fault(first_event_delay=5)

    with pytest.raises(UpstreamTimeout) as caught:
        await provider.stream(call(stream=True, timeouts=Timeouts(connect=2, ttft=0.2, total=10)))

    assert caught.value.phase == "ttft"
    await until(lambda: fake.disconnects == 1)


async def test_a_stream_slower_than_total_is_a_total_timeout(fake: FakeBedrock, make: Make) -> None:
    provider = make(fake)
    fake.reply = Reply(text=tuple("abcdefghijklmnopqrstuvwxyz"))
    fake.fault = Fault(chunk_delay=0.05)

    stream = await provider.stream(call(stream=True, timeouts=Timeouts(connect=2, ttft=5, total=0.5)))
    chunks, err = await read_until_error(stream)

    assert isinstance(err, UpstreamTimeout) and err.phase == "total" and err.error_class == "timeout_total"
    assert 0 < len(text_of(chunks)) < 26
    await until(lambda: fake.disconnects == 1)


async def test_a_completion_slower_than_total_is_a_total_timeout(fake: FakeBedrock, make: Make) -> None:
    provider = make(fake)
    fake.fault = Fault(head_delay=5)

    with pytest.raises(UpstreamTimeout) as caught:
        await provider.complete(call(timeouts=Timeouts(connect=2, ttft=5, total=0.2)))

    assert caught.value.phase == "total"


async def test_a_truncated_converse_body_is_an_error_not_a_half_completion(fake: FakeBedrock, make: Make) -> None:
    provider = make(fake)
    fake.fault = Fault("cut")

    with pytest.raises(UpstreamError) as caught:
        await provider.complete(call())

    assert isinstance(caught.value, UpstreamConnectError) and caught.value.retryable


# -- connections ---------------------------------------------------------------------------------


async def test_closing_a_stream_early_hangs_up_on_bedrock(fake: FakeBedrock, make: Make) -> None:
    provider = make(fake)
    fake.reply = Reply(text=tuple(f"w{i} " for i in range(200)))
    fake.fault = Fault(chunk_delay=0.01)

    stream = await provider.stream(call(stream=True))
    await anext(stream.chunks)
    await stream.chunks.aclose()
    await until(lambda: fake.disconnects == 1)

    unread = await provider.stream(call(stream=True))  # closed before any iteration
    await unread.chunks.aclose()
    await until(lambda: fake.disconnects == 2)

    fake.fault = Fault()
    done = await provider.complete(call())  # the provider is still usable
    assert done.body["choices"][0]["message"]["content"].startswith("w0 w1")
    assert len({r.peer for r in fake.requests}) == 3  # dropped connections are not reused


async def test_load_counts_the_calls_in_flight(fake: FakeBedrock, make: Make) -> None:
    provider = make(fake)
    assert provider.load() == Load(in_flight=0)  # queued stays unknown: Bedrock's own
    fake.fault = Fault("hang")
    held = asyncio.create_task(provider.complete(call(timeouts=Timeouts(connect=2, ttft=30, total=60))))
    await until(lambda: len(fake.requests) == 1)
    assert provider.load() == Load(in_flight=1)

    fake.fault = Fault(chunk_delay=0.05)
    stream = await provider.stream(call(stream=True))
    assert provider.load() == Load(in_flight=2)  # a started stream counts until it ends
    await stream.chunks.aclose()
    assert provider.load() == Load(in_flight=1)

    held.cancel()
    with pytest.raises(asyncio.CancelledError):
        await held
    assert provider.load() == Load(in_flight=0)


async def test_finished_calls_return_their_connection_to_the_pool(fake: FakeBedrock, make: Make) -> None:
    provider = make(fake)

    await provider.complete(call())
    await read_all(await provider.stream(call(stream=True)))
    await provider.complete(call())

    assert len({r.peer for r in fake.requests}) == 1
    assert fake.disconnects == 0


async def test_close_is_idempotent_and_the_provider_reopens(fake: FakeBedrock, make: Make) -> None:
    provider = make(fake)
    await provider.complete(call())
    await provider.aclose()
    await provider.aclose()
    assert (await provider.complete(call())).body["choices"]


# -- through the attempt loop -------------------------------------------------------------------


def bedrock_target(provider: BedrockProvider, *, attempts: int = 3, window: int | None = None) -> Target:
    return Target(
        "bedrock",
        provider,
        Breaker(BreakerConfig()),
        RetryConfig(attempts=attempts, backoff_ms=0),
        FAST,
        window,
    )


def scripted(name: str, *, window: int | None = None) -> Target:
    return Target(name, ScriptedProvider(name), Breaker(BreakerConfig()), RetryConfig(backoff_ms=0), FAST, window)


def calls(target: Target) -> int:
    assert isinstance(target.provider, ScriptedProvider)
    return len(target.provider.calls)


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_throttling_is_retried_then_falls_back(fake: FakeBedrock, make: Make, stream: bool) -> None:
    fake.fault = Fault("error", error="ThrottlingException")
    primary, backup = bedrock_target(make(fake)), scripted("backup")

    result = await execute([primary, backup], HELLO, stream=stream, request_id="r")

    assert result.target is backup and result.fallback
    assert len(fake.requests) == 3 and calls(backup) == 1
    assert [(a.target, a.error_class) for a in result.attempts] == [("bedrock", "bedrock_throttling")] * 3 + [
        ("backup", None)
    ]
    if isinstance(result.answer, Stream):
        await result.answer.chunks.aclose()


async def test_throttling_that_clears_is_answered_by_bedrock(fake: FakeBedrock, make: Make) -> None:
    fake.fault = Fault("error", error="ThrottlingException", times=2)
    primary, backup = bedrock_target(make(fake)), scripted("backup")

    result = await execute([primary, backup], HELLO, stream=False, request_id="r")

    assert result.target is primary and calls(backup) == 0
    assert [a.error_class for a in result.attempts] == ["bedrock_throttling", "bedrock_throttling", None]
    assert isinstance(result.answer, Completion)
    assert result.answer.body["choices"][0]["message"]["content"] == "Hello, world"


@pytest.mark.parametrize("name", ["ModelTimeoutException", "AccessDeniedException"])
async def test_fallback_only_errors_skip_retries_at_bedrock(fake: FakeBedrock, make: Make, name: str) -> None:
    fake.fault = Fault("error", error=name)
    primary, backup = bedrock_target(make(fake)), scripted("backup")

    result = await execute([primary, backup], HELLO, stream=False, request_id="r")

    assert result.target is backup
    assert len(fake.requests) == 1 and calls(backup) == 1
    assert primary.breaker._consecutive == 1  # it counts against the target


async def test_bad_credentials_fall_back_to_another_target(
    fake: FakeBedrock, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    primary, backup = bedrock_target(make(fake)), scripted("backup")

    result = await execute([primary, backup], HELLO, stream=False, request_id="r")

    assert result.target is backup and len(fake.requests) == 1
    assert result.attempts[0].error_class == "bedrock_invalid_signature"


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("missing", ["no-credentials", "no-such-profile"])
async def test_missing_credentials_skip_the_target_at_once(
    fake: FakeBedrock, make: Make, monkeypatch: pytest.MonkeyPatch, stream: bool, missing: str
) -> None:
    """A configuration failure, the same on every try: no retry, no backoff, the next target."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    lookups: list[int] = []
    resolve = Session.get_credentials

    def counted(self: Any) -> Any:
        lookups.append(1)
        return resolve(self)

    monkeypatch.setattr(Session, "get_credentials", counted)
    backoffs: list[int] = []

    def backoff(cfg: RetryConfig, n: int, retry_after: float | None) -> float | None:
        backoffs.append(n)
        return delay(cfg, n, retry_after)

    monkeypatch.setattr(attempt_loop, "delay", backoff)
    provider = make(fake, profile="no-such-profile") if missing == "no-such-profile" else make(fake)
    primary, backup = bedrock_target(provider, attempts=3), scripted("backup")
    primary.retry = RetryConfig(attempts=3, backoff_ms=500)

    result = await execute([primary, backup], HELLO, stream=stream, request_id="r")

    assert result.target is backup and calls(backup) == 1
    assert [(a.target, a.error_class) for a in result.attempts] == [
        ("bedrock", "credentials_missing"),
        ("backup", None),
    ]
    assert backoffs == [] and len(lookups) <= 1 and fake.requests == []  # no retry, no wait
    assert primary.breaker._consecutive == 0  # never called: configuration, not a verdict on it


async def test_missing_credentials_say_so_in_the_answer(
    fake: FakeBedrock, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)  # the key id alone is set: partial
    primary = bedrock_target(make(fake))

    with pytest.raises(AllTargetsFailed) as caught:
        await execute([primary], HELLO, stream=False, request_id="r")

    assert caught.value.message.startswith("all targets failed (bedrock: AWS credentials are missing")
    assert "AWS_SECRET_ACCESS_KEY" in caught.value.message  # which part is missing, never a value
    assert "bedrock: bedrock:" not in caught.value.message and ACCESS_KEY not in caught.value.message
    assert len(caught.value.records) == 1
    secrets_absent(caught.value)


async def test_a_validation_error_stops_the_walk(fake: FakeBedrock, make: Make) -> None:
    fake.fault = Fault("error", error="ValidationException")
    primary, backup = bedrock_target(make(fake)), scripted("backup")

    with pytest.raises(AllTargetsFailed) as caught:
        await execute([primary, backup], HELLO, stream=False, request_id="r")

    assert caught.value.status == 400 and caught.value.type == "invalid_request_error"
    assert len(fake.requests) == 1 and calls(backup) == 0
    assert primary.breaker._consecutive == 0  # the request was at fault, not Bedrock


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_a_prompt_too_long_goes_only_to_larger_windows(fake: FakeBedrock, make: Make, stream: bool) -> None:
    fake.fault = Fault("error", error="ValidationException", message=CONTEXT_WINDOW_MESSAGE)
    provider = make(fake)
    primary = bedrock_target(provider, window=None)  # from the catalog: DeepSeek V3.1, 128k
    same, smaller, bigger = scripted("same", window=128_000), scripted("smaller", window=32_768), scripted("big")
    bigger.context_window = 1_000_000
    primary.context_window = context_window(provider.cfg)
    assert primary.context_window == 128_000

    result = await execute([primary, same, smaller, bigger], HELLO, stream=stream, request_id="r")

    assert result.target is bigger
    assert len(fake.requests) == 1
    assert (calls(same), calls(smaller), calls(bigger)) == (0, 0, 1)
    assert [(a.target, a.error_class) for a in result.attempts] == [
        ("bedrock", "context_window_exceeded"),
        ("same", "context_window_exceeded"),
        ("smaller", "context_window_exceeded"),
        ("big", None),
    ]
    if isinstance(result.answer, Stream):
        await result.answer.chunks.aclose()


async def test_in_stream_throttling_before_content_falls_back(fake: FakeBedrock, make: Make) -> None:
    fake.fault = Fault("exception", error="throttlingException", after=1)
    primary, backup = bedrock_target(make(fake), attempts=2), scripted("backup")

    result = await execute([primary, backup], HELLO, stream=True, request_id="r")

    assert result.target is backup
    assert len(fake.requests) == 2 and calls(backup) == 1
    assert isinstance(result.answer, Stream)
    assert text_of(await read_all(result.answer)).strip() == "hello from the fake"


async def test_in_stream_throttling_after_content_fails_the_stream(fake: FakeBedrock, make: Make) -> None:
    fake.fault = Fault("exception", error="throttlingException", after=3, chunk_delay=PACED)
    primary, backup = bedrock_target(make(fake)), scripted("backup")

    result = await execute([primary, backup], HELLO, stream=True, request_id="r")
    assert result.target is primary and isinstance(result.answer, Stream)
    chunks, err = await read_until_error(result.answer)

    assert text_of(chunks) == "Hello," and err.error_class == "bedrock_throttling"
    assert calls(backup) == 0 and len(fake.requests) == 1
    assert primary.breaker._consecutive == 0  # throttled is busy, not broken: no verdict


# -- through the API -----------------------------------------------------------------------------


async def app_with_bedrock(
    make_app: AppFactory, fake: FakeBedrock, route: tuple[str, ...] = ("bedrock", "backup")
) -> tuple[Any, ScriptedProvider]:
    backup = ScriptedProvider("backup")
    raw = {
        "targets": {
            "bedrock": {
                "provider": "bedrock",
                "region": "us-east-1",
                "model": MODEL,
                "endpoint_url": fake.url,
                "retry": {"attempts": 2, "backoff_ms": 1},
                "timeouts": {"connect": 2, "ttft": 5, "total": 10},
            },
            "backup": {"provider": "openai", "base_url": "http://backup.invalid/v1", "model": "m"},
        },
        "tasks": {"chat": {"route": list(route)}},
    }
    app = await make_app(raw, {"backup": backup})  # the bedrock target is the real provider
    assert isinstance(app.runtime.targets["bedrock"].provider, BedrockProvider)
    return app, backup


async def chat(app: Any, **extra: Any) -> Any:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], **extra}
    return await request(app, "POST", "/v1/chat/completions", body)


async def test_api_answers_from_bedrock(make_app: AppFactory, fake: FakeBedrock) -> None:
    app, backup = await app_with_bedrock(make_app, fake)

    resp = await chat(app)
    streamed = await chat(app, stream=True)

    assert resp.status == 200 and resp.headers["x-turnout-target"] == "bedrock"
    assert resp.json()["choices"][0]["message"]["content"] == "Hello, world"
    assert resp.headers["x-turnout-model-version"] == MODEL
    events = streamed.events()
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"]) == "Hello, world"
    assert not backup.calls
    assert all(r.signature_ok for r in fake.requests)


@pytest.mark.parametrize("route", [("bedrock",), ("bedrock", "backup")], ids=["alone", "first"])
async def test_api_missing_credentials_never_read_as_circuit_open(
    make_app: AppFactory, fake: FakeBedrock, monkeypatch: pytest.MonkeyPatch, route: tuple[str, ...]
) -> None:
    """Ten requests in a row, twice the breaker's five failures: each one's reason is still the
    missing credentials, alone (the error) or first on the route (the fallback's reason)."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    app, backup = await app_with_bedrock(make_app, fake, route)

    for _ in range(10):
        resp = await chat(app)
        if route == ("bedrock",):
            message = resp.json()["error"]["message"]
            assert resp.status == 502 and "AWS credentials are missing" in message, message
            assert "circuit open" not in message
        else:
            assert resp.status == 200 and resp.headers["x-turnout-fallback"] == "true"
    rows = await ledger_rows(app)
    assert len(rows) == 10
    assert all(row.attempts[0].error_class == "credentials_missing" for row in rows)
    assert app.runtime.targets["bedrock"].breaker.state == "closed" and fake.requests == []
    assert len(backup.calls) == (0 if route == ("bedrock",) else 10)


async def test_api_throttled_bedrock_falls_back(make_app: AppFactory, fake: FakeBedrock) -> None:
    app, backup = await app_with_bedrock(make_app, fake)
    fake.fault = Fault("error", error="ThrottlingException")

    resp = await chat(app)

    assert resp.status == 200
    assert resp.headers["x-turnout-target"] == "backup" and resp.headers["x-turnout-fallback"] == "true"
    assert resp.headers["x-turnout-attempts"] == "3"
    assert len(fake.requests) == 2 and len(backup.calls) == 1


async def test_api_validation_error_is_a_400_without_fallback(make_app: AppFactory, fake: FakeBedrock) -> None:
    app, backup = await app_with_bedrock(make_app, fake)
    fake.fault = Fault("error", error="ValidationException")

    resp = await chat(app)

    assert resp.status == 400
    err = resp.json()["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "upstream_rejected"
    assert "ValidationException" in err["message"] and SECRET_KEY not in err["message"]
    assert len(fake.requests) == 1 and not backup.calls


async def test_api_in_stream_throttling_before_content_falls_back(make_app: AppFactory, fake: FakeBedrock) -> None:
    app, backup = await app_with_bedrock(make_app, fake)
    fake.fault = Fault("exception", error="throttlingException", after=1)

    resp = await chat(app, stream=True)

    assert resp.status == 200 and resp.headers["x-turnout-target"] == "backup"
    assert resp.events()[-1] == "[DONE]"
    assert len(backup.calls) == 1


async def test_api_in_stream_throttling_after_content_ends_with_an_error_event(
    make_app: AppFactory, fake: FakeBedrock
) -> None:
    app, backup = await app_with_bedrock(make_app, fake)
    fake.fault = Fault("exception", error="throttlingException", after=3, chunk_delay=PACED)

    resp = await chat(app, stream=True)

    events = resp.events()
    assert resp.status == 200 and resp.headers["x-turnout-target"] == "bedrock"
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-2] if e.get("choices")) == "Hello,"
    assert events[-2]["error"]["code"] == "stream_interrupted"
    assert events[-1] == "[DONE]"
    assert not backup.calls
