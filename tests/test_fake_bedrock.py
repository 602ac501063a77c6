"""The Bedrock fake speaks the real wire protocol: proved with boto3, the reference client.

boto3 is synchronous, so each call runs in a worker thread (``asyncio.to_thread``) while the fake
serves on the test's event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import boto3  # type: ignore[import-untyped, unused-ignore]
import botocore.config  # type: ignore[import-untyped, unused-ignore]
import orjson
import pytest
import urllib3
import yarl
from botocore.auth import SigV4Auth  # type: ignore[import-untyped, unused-ignore]
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped, unused-ignore]
from botocore.credentials import Credentials  # type: ignore[import-untyped, unused-ignore]
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer  # type: ignore[import-untyped, unused-ignore]
from botocore.exceptions import ClientError, EventStreamError  # type: ignore[import-untyped, unused-ignore]

from tests.fakes.bedrock import (
    ACCESS_KEY,
    CONTEXT_WINDOW_MESSAGE,
    ERROR_NAMESPACE,
    ERRORS,
    EVENTSTREAM,
    SECRET_KEY,
    STREAM_EXCEPTIONS,
    FakeBedrock,
    Fault,
    Reply,
    ToolUse,
    encode_event,
    encode_message,
)
from tests.serving import free_port, wait_http

KEY = ACCESS_KEY
MODEL = "deepseek.v3-v1:0"
ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.qwen.qwen3-32b-v1:0"
HELLO = [{"role": "user", "content": [{"text": "Weather in Paris?"}]}]
TOOLS = {
    "tools": [
        {"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}}},
        {"toolSpec": {"name": "get_time", "inputSchema": {"json": {"type": "object"}}}},
    ]
}
WEATHER = ToolUse("get_weather", {"city": "Paris", "units": "metric"}, "tooluse_w")
CLOCK = ToolUse("get_time", {"tz": "Europe/Paris"}, "tooluse_t")


@pytest.fixture(autouse=True)
def _no_ambient_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's AWS settings must not reach the client: a bearer token would replace SigV4.
    monkeypatch.delenv("AWS_BEARER_TOKEN_BEDROCK", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


@pytest.fixture
async def fake() -> AsyncIterator[FakeBedrock]:
    async with FakeBedrock(verify_signature=True) as bedrock:
        yield bedrock


def make_client(url: str, secret: str = SECRET_KEY, key: str = KEY) -> Any:
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=url,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=botocore.config.Config(retries={"max_attempts": 0}, read_timeout=5, connect_timeout=5),
    )


@pytest.fixture
def client(fake: FakeBedrock) -> Iterator[Any]:
    bedrock = make_client(fake.url)
    yield bedrock
    bedrock.close()


async def converse(client: Any, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("modelId", MODEL)
    kwargs.setdefault("messages", HELLO)
    result: dict[str, Any] = await asyncio.to_thread(client.converse, **kwargs)
    return result


async def converse_stream(client: Any, into: list[dict[str, Any]] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Every event of a ConverseStream; ``into`` keeps those that arrived before an error."""
    kwargs.setdefault("modelId", MODEL)
    kwargs.setdefault("messages", HELLO)
    events = [] if into is None else into

    def run() -> list[dict[str, Any]]:
        stream = client.converse_stream(**kwargs)["stream"]
        try:
            events.extend(stream)
        finally:
            stream.close()  # an error mid-stream leaves the connection checked out otherwise
        return events

    return await asyncio.to_thread(run)


def kind(event: dict[str, Any]) -> str:
    (name,) = event
    return str(name)


# -- the encoder, against botocore's decoder ---------------------------------------------------


def test_encoder_round_trips_through_botocores_decoder() -> None:
    headers = {":message-type": "event", ":event-type": "contentBlockDelta", ":content-type": "application/json"}
    payload = b'{"contentBlockIndex":0,"delta":{"text":"h\xc3\xa9"}}'
    frame = encode_message(headers, payload)

    buffer = EventStreamBuffer()
    buffer.add_data(frame)
    (message,) = list(buffer)

    assert message.headers == headers
    assert message.payload == payload
    assert message.prelude.total_length == len(frame)
    assert message.prelude.headers_length == len(frame) - 16 - len(payload)
    assert int.from_bytes(frame[-4:], "big") == message.crc  # botocore validated both CRCs


def test_a_frame_split_across_feeds_is_decoded_once_complete() -> None:
    first = encode_event("messageStart", {"role": "assistant"})
    second = encode_event("messageStop", {"stopReason": "end_turn"})
    data = first + second
    buffer = EventStreamBuffer()
    decoded = []
    # Cuts inside the prelude, its CRC, the headers, and across the boundary between frames.
    for start, end in zip(
        [0, 3, 9, 20, len(first) - 1, len(first) + 2],
        [3, 9, 20, len(first) - 1, len(first) + 2, len(data)],
        strict=True,
    ):
        buffer.add_data(data[start:end])
        decoded += [orjson.loads(m.payload) for m in buffer]
        if end < len(first):
            assert decoded == []

    assert [d.get("role") or d.get("stopReason") for d in decoded] == ["assistant", "end_turn"]
    assert all(d["p"] for d in decoded)  # the padding real Bedrock adds


def test_a_bad_message_crc_is_caught_by_botocore() -> None:
    frame = encode_event("messageStart", {"role": "assistant"})
    buffer = EventStreamBuffer()
    buffer.add_data(frame[:-1] + bytes([frame[-1] ^ 1]))
    with pytest.raises(ChecksumMismatch):
        next(buffer)


# -- Converse ---------------------------------------------------------------------------------


async def test_converse_returns_text_stop_reason_and_usage(fake: FakeBedrock, client: Any) -> None:
    fake.reply = Reply(text=("Bonjour", "!"), input_tokens=11, output_tokens=2, cache_read_tokens=5, latency_ms=7)

    result = await converse(client, inferenceConfig={"maxTokens": 16})

    assert result["output"]["message"] == {"role": "assistant", "content": [{"text": "Bonjour!"}]}
    assert result["stopReason"] == "end_turn"
    assert result["usage"] == {
        "inputTokens": 11,
        "outputTokens": 2,
        "totalTokens": 13,
        "cacheReadInputTokens": 5,
        "cacheWriteInputTokens": 0,
    }
    assert result["metrics"] == {"latencyMs": 7}
    assert result["ResponseMetadata"]["RequestId"]
    assert fake.requests[0].body["inferenceConfig"] == {"maxTokens": 16}


async def test_converse_answers_with_tool_uses_when_tools_are_offered(fake: FakeBedrock, client: Any) -> None:
    fake.reply = Reply(text=(), tool_uses=(WEATHER, CLOCK))

    with_tools = await converse(client, toolConfig=TOOLS)
    without = await converse(client)

    assert with_tools["output"]["message"]["content"] == [
        {"toolUse": {"toolUseId": "tooluse_w", "name": "get_weather", "input": {"city": "Paris", "units": "metric"}}},
        {"toolUse": {"toolUseId": "tooluse_t", "name": "get_time", "input": {"tz": "Europe/Paris"}}},
    ]
    assert with_tools["stopReason"] == "tool_use"
    assert without["output"]["message"]["content"] == []
    assert without["stopReason"] == "end_turn"


async def test_converse_reasoning_and_a_set_stop_reason(fake: FakeBedrock, client: Any) -> None:
    fake.reply = Reply(reasoning=("Think", "ing."), stop_reason="max_tokens")

    result = await converse(client)

    reasoning, text = result["output"]["message"]["content"]
    assert reasoning == {"reasoningContent": {"reasoningText": {"text": "Thinking.", "signature": "fake-signature"}}}
    assert text == {"text": "Hello, world"}
    assert result["stopReason"] == "max_tokens"


# -- ConverseStream ---------------------------------------------------------------------------


async def test_stream_yields_every_event_type_with_frames_split_across_reads(fake: FakeBedrock, client: Any) -> None:
    fake.reply = Reply(text=("Let me", " check."), tool_uses=(WEATHER, CLOCK), reasoning=("Hmm",))
    fake.fault = Fault(split_frames=True)

    events = await converse_stream(client, toolConfig=TOOLS)

    assert events[0] == {"messageStart": {"role": "assistant"}}
    assert {kind(e) for e in events} == {
        "messageStart",
        "contentBlockStart",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    }
    deltas = [e["contentBlockDelta"] for e in events if kind(e) == "contentBlockDelta"]
    assert "".join(d["delta"]["text"] for d in deltas if "text" in d["delta"]) == "Let me check."
    assert [d["delta"]["reasoningContent"] for d in deltas if "reasoningContent" in d["delta"]] == [
        {"text": "Hmm"},
        {"signature": "fake-signature"},
    ]
    starts = [e["contentBlockStart"] for e in events if kind(e) == "contentBlockStart"]
    assert [(s["contentBlockIndex"], s["start"]["toolUse"]) for s in starts] == [
        (2, {"toolUseId": "tooluse_w", "name": "get_weather"}),
        (3, {"toolUseId": "tooluse_t", "name": "get_time"}),
    ]
    for index, tool in ((2, WEATHER), (3, CLOCK)):
        pieces = [d["delta"]["toolUse"]["input"] for d in deltas if d["contentBlockIndex"] == index]
        assert len(pieces) > 1  # fragments cut through keys and values
        assert orjson.loads("".join(pieces)) == tool.input
    stops = [e["contentBlockStop"]["contentBlockIndex"] for e in events if kind(e) == "contentBlockStop"]
    assert stops == [0, 1, 2, 3]
    assert events[-2] == {"messageStop": {"stopReason": "tool_use"}}
    assert set(events[-1]["metadata"]["usage"]) == {
        "inputTokens",
        "outputTokens",
        "totalTokens",
        "cacheReadInputTokens",
        "cacheWriteInputTokens",
    }
    assert all("p" not in next(iter(e.values())) for e in events)  # botocore drops the padding


async def test_stream_wire_format_frames_headers_and_padding() -> None:
    async with (
        FakeBedrock() as fake,
        aiohttp.ClientSession() as session,
        session.post(f"{fake.url}/model/m/converse-stream", json={}) as resp,
    ):
        raw = await resp.read()
        response_headers = resp.headers

    assert response_headers["Content-Type"] == EVENTSTREAM
    assert response_headers["Transfer-Encoding"] == "chunked"
    assert response_headers["x-amzn-RequestId"]
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    messages = list(buffer)
    assert [m.headers[":event-type"] for m in messages] == [
        "messageStart",
        *["contentBlockDelta"] * 3,
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    for message in messages:
        assert message.headers[":message-type"] == "event"
        assert message.headers[":content-type"] == "application/json"
        assert orjson.loads(message.payload)["p"]


async def test_first_event_delay_holds_the_stream(fake: FakeBedrock, client: Any) -> None:
    fake.fault = Fault(first_event_delay=0.2, chunk_delay=0.01)

    started = time.monotonic()
    events = await converse_stream(client)

    assert time.monotonic() - started >= 0.2
    assert kind(events[-1]) == "metadata"


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ERRORS))
@pytest.mark.parametrize("streaming", [False, True], ids=["converse", "converse-stream"])
async def test_errors_before_the_stream_are_client_errors(
    fake: FakeBedrock, client: Any, name: str, streaming: bool
) -> None:
    fake.fault = Fault("error", error=name)

    with pytest.raises(ClientError) as caught:
        await (converse_stream(client) if streaming else converse(client))

    response = caught.value.response
    assert response["Error"]["Code"] == name  # botocore stripped the namespace
    assert response["Error"]["Message"]
    assert response["ResponseMetadata"]["HTTPStatusCode"] == ERRORS[name]
    assert response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"] == f"{name}:{ERROR_NAMESPACE}"
    assert response["ResponseMetadata"]["RequestId"]


async def test_model_error_carries_the_original_status(fake: FakeBedrock, client: Any) -> None:
    fake.fault = Fault("error", error="ModelErrorException", original_status_code=502, resource_name="gpu-7")

    with pytest.raises(ClientError) as caught:
        await converse(client)

    assert caught.value.response["Error"]["Code"] == "ModelErrorException"
    assert caught.value.response["originalStatusCode"] == 502
    assert caught.value.response["resourceName"] == "gpu-7"


async def test_context_window_overflow_is_a_validation_error(fake: FakeBedrock, client: Any) -> None:
    fake.fault = Fault("error", error="ValidationException", message=CONTEXT_WINDOW_MESSAGE)

    with pytest.raises(ClientError) as caught:
        await converse(client)

    assert caught.value.response["Error"] == {"Code": "ValidationException", "Message": CONTEXT_WINDOW_MESSAGE}


@pytest.mark.parametrize("name", STREAM_EXCEPTIONS)
async def test_exceptions_in_the_stream_are_event_stream_errors(fake: FakeBedrock, client: Any, name: str) -> None:
    fake.fault = Fault("exception", error=name, after=3, message="went wrong")
    events: list[dict[str, Any]] = []

    with pytest.raises(EventStreamError) as caught:
        await converse_stream(client, into=events)

    assert caught.value.response["Error"] == {"Code": name, "Message": "went wrong"}
    assert [kind(e) for e in events] == ["messageStart", "contentBlockDelta", "contentBlockDelta"]


async def test_model_stream_error_carries_the_original_status(fake: FakeBedrock, client: Any) -> None:
    # The error type's spelling is accepted too; botocore keeps only code and message, so the
    # extra fields are read off the wire.
    fake.fault = Fault("exception", error="ModelStreamErrorException", original_status_code=503, after=1)

    with pytest.raises(EventStreamError) as caught:
        await converse_stream(client)
    fake.verify_signature = False
    async with aiohttp.ClientSession() as session, session.post(f"{fake.url}/model/m/converse-stream") as resp:
        raw = await resp.read()

    assert caught.value.response["Error"]["Code"] == "modelStreamErrorException"
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    start, error = list(buffer)
    assert start.headers[":event-type"] == "messageStart"
    assert error.headers == {
        ":exception-type": "modelStreamErrorException",
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    assert orjson.loads(error.payload) == {
        "message": "The model returned an error while streaming its response.",
        "originalStatusCode": 503,
        "originalMessage": "upstream model failed",
    }


async def test_an_unmodelled_error_message_in_the_stream(fake: FakeBedrock, client: Any) -> None:
    fake.fault = Fault("stream_error", error="InternalFailure", message="oops", after=1)

    with pytest.raises(EventStreamError) as caught:
        await converse_stream(client)

    assert caught.value.response["Error"] == {"Code": "InternalFailure", "Message": "oops"}


async def test_a_cut_stream_is_a_broken_response(fake: FakeBedrock, client: Any) -> None:
    fake.fault = Fault("cut", after=2)
    events: list[dict[str, Any]] = []

    with pytest.raises(urllib3.exceptions.ProtocolError):
        await converse_stream(client, into=events)

    assert len(events) == 2


async def test_a_cut_converse_body_goes_unnoticed_by_boto3(fake: FakeBedrock, client: Any) -> None:
    # botocore reads with enforce_content_length=False and parses the broken JSON leniently, so
    # half a body is a "success" without output: a client must check the fields it needs.
    fake.fault = Fault("cut")

    result = await converse(client)

    assert result["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert "output" not in result
    assert "stopReason" not in result


async def test_a_corrupted_frame_fails_the_checksum(fake: FakeBedrock, client: Any) -> None:
    fake.fault = Fault("corrupt", after=2, split_frames=True)

    with pytest.raises(ChecksumMismatch):
        await converse_stream(client)


async def test_hang_never_answers(fake: FakeBedrock) -> None:
    fake.fault = Fault("hang")
    fake.verify_signature = False
    timeout = aiohttp.ClientTimeout(total=0.2)

    async with aiohttp.ClientSession(timeout=timeout) as session:
        with pytest.raises(TimeoutError):
            await session.post(f"{fake.url}/model/m/converse", json={})

    assert len(fake.requests) == 1


async def test_a_fault_expires_after_times(fake: FakeBedrock, client: Any) -> None:
    fake.fault = Fault("error", error="ThrottlingException", times=1)

    with pytest.raises(ClientError):
        await converse(client)
    result = await converse(client)

    assert result["stopReason"] == "end_turn"
    assert fake.fault.mode == "ok"


def test_unknown_faults_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        Fault("explode")
    with pytest.raises(ValueError, match="unknown error"):
        Fault("error", error="TeapotException")
    with pytest.raises(ValueError, match="unknown stream exception"):
        Fault("exception", error="accessDeniedException")
    assert Fault("error", error="TeapotException", status=418).status == 418


# -- paths and auth ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "encoded"),
    [
        (MODEL, "deepseek.v3-v1%3A0"),
        (ARN, "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.qwen.qwen3-32b-v1%3A0"),
    ],
    ids=["model-id", "arn"],
)
async def test_model_ids_arrive_percent_encoded(fake: FakeBedrock, client: Any, model: str, encoded: str) -> None:
    await converse(client, modelId=model)
    await converse_stream(client, modelId=model)

    assert [r.path for r in fake.requests] == [f"/model/{encoded}/converse", f"/model/{encoded}/converse-stream"]
    assert [r.model_id for r in fake.requests] == [model, model]
    assert [r.operation for r in fake.requests] == ["converse", "converse-stream"]


async def test_boto3_signs_with_sigv4_for_bedrock(fake: FakeBedrock, client: Any) -> None:
    await converse(client)

    (received,) = fake.requests
    today = datetime.now(UTC).strftime("%Y%m%d")
    scope, signed, signature = received.authorization.split(", ")
    assert scope in (
        f"AWS4-HMAC-SHA256 Credential={KEY}/{today}/us-east-1/bedrock/aws4_request",
        # The request may have been signed just before midnight UTC.
        f"AWS4-HMAC-SHA256 Credential={KEY}/{received.headers['X-Amz-Date'][:8]}/us-east-1/bedrock/aws4_request",
    )
    assert "host" in signed.removeprefix("SignedHeaders=").split(";")
    assert len(signature.removeprefix("Signature=")) == 64
    assert received.signature_ok is True


@pytest.mark.parametrize(
    ("key", "secret", "code"),
    [
        (KEY, "not-the-secret", "InvalidSignatureException"),
        ("AKIDSOMEONEELSE", SECRET_KEY, "UnrecognizedClientException"),
    ],
)
async def test_bad_credentials_are_refused(fake: FakeBedrock, key: str, secret: str, code: str) -> None:
    bedrock = make_client(fake.url, secret=secret, key=key)
    try:
        with pytest.raises(ClientError) as caught:
            await converse(bedrock)
    finally:
        bedrock.close()

    assert caught.value.response["Error"]["Code"] == code
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert fake.requests[0].signature_ok is False


def sign(url: str, body: bytes) -> dict[str, str]:
    """Headers for a POST to ``url`` signed as botocore signs it, for requests sent by hand."""
    request = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(KEY, SECRET_KEY), "bedrock", "us-east-1").add_auth(request)
    return dict(request.headers.items())


async def test_the_signature_covers_the_exact_path_sent(fake: FakeBedrock) -> None:
    """The %3A trap: a client that signs ``%3A`` but sends ``:`` gets a 403 from AWS."""
    body = orjson.dumps({"messages": HELLO})
    signed_url = f"{fake.url}/model/deepseek.v3-v1%3A0/converse"
    headers = sign(signed_url, body)

    async with aiohttp.ClientSession() as session:
        async with session.post(yarl.URL(signed_url, encoded=True), data=body, headers=headers) as resp:
            assert resp.status == 200
        decoded_url = yarl.URL(f"{fake.url}/model/deepseek.v3-v1:0/converse", encoded=True)
        async with session.post(decoded_url, data=body, headers=headers) as resp:
            assert resp.status == 403
            assert resp.headers["x-amzn-ErrorType"].startswith("InvalidSignatureException:")
            assert "signature we calculated does not match" in (await resp.json())["message"]
        tampered = {**headers, "X-Amz-Content-SHA256": hashlib.sha256(b"other").hexdigest()}
        async with session.post(yarl.URL(signed_url, encoded=True), data=b'{"messages": []}', headers=tampered) as resp:
            assert resp.status == 403

    assert [r.path for r in fake.requests] == [
        "/model/deepseek.v3-v1%3A0/converse",
        "/model/deepseek.v3-v1:0/converse",
        "/model/deepseek.v3-v1%3A0/converse",
    ]
    assert [r.signature_ok for r in fake.requests] == [True, False, False]
    assert fake.requests[1].model_id == MODEL


async def test_bearer_tokens_are_recorded_and_checked() -> None:
    async with FakeBedrock(verify_signature=True, bearer_token="ABSKexample") as fake, aiohttp.ClientSession() as s:
        url = f"{fake.url}/model/deepseek.v3-v1%3A0/converse"
        async with s.post(url, json={"messages": HELLO}, headers={"Authorization": "Bearer ABSKexample"}) as resp:
            assert resp.status == 200
        async with s.post(url, json={"messages": HELLO}, headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 403
        async with s.post(url, json={"messages": HELLO}) as resp:
            assert resp.status == 403
            assert resp.headers["x-amzn-ErrorType"].startswith("MissingAuthenticationTokenException:")

    assert [r.authorization for r in fake.requests] == ["Bearer ABSKexample", "Bearer wrong", ""]
    assert [r.signature_ok for r in fake.requests] == [None, None, None]


async def test_without_verification_any_credentials_pass() -> None:
    async with FakeBedrock() as fake:
        bedrock = make_client(fake.url, secret="anything")
        try:
            result = await converse(bedrock)
        finally:
            bedrock.close()

    assert result["stopReason"] == "end_turn"
    assert fake.requests[0].signature_ok is False


async def test_unknown_routes_are_unknown_operations(fake: FakeBedrock) -> None:
    async with aiohttp.ClientSession() as session, session.post(f"{fake.url}/model/m/invoke", json={}) as resp:
        assert resp.status == 404
        assert resp.headers["x-amzn-ErrorType"].startswith("UnknownOperationException:")
        assert resp.headers["x-amzn-RequestId"]

    assert fake.requests[0].operation == ""


# -- control over HTTP ------------------------------------------------------------------------


async def test_control_endpoint_sets_faults_and_replies(fake: FakeBedrock, client: Any) -> None:
    reply = {
        "text": ["Hi"],
        "tool_uses": [{"name": "get_weather", "input": {"city": "Oslo"}}],
        "stop_reason": "tool_use",
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{fake.url}/_fault", json={"reply": reply}) as resp:
            assert resp.status == 200
            assert (await resp.json())["reply"]["tool_uses"][0]["name"] == "get_weather"
        result = await converse(client, toolConfig=TOOLS)
        async with session.post(
            f"{fake.url}/_fault", json={"mode": "error", "error": "ModelNotReadyException"}
        ) as resp:
            assert (await resp.json())["fault"]["mode"] == "error"
        with pytest.raises(ClientError, match="ModelNotReadyException"):
            await converse(client)
        async with session.post(f"{fake.url}/_fault", json={"mode": "nonsense"}) as resp:
            assert resp.status == 400
        async with session.get(f"{fake.url}/_requests") as resp:
            recorded = await resp.json()
        async with session.delete(f"{fake.url}/_requests") as resp:
            assert resp.status == 200

    content = result["output"]["message"]["content"]
    assert content[0] == {"text": "Hi"}
    assert content[1]["toolUse"]["input"] == {"city": "Oslo"}
    assert content[1]["toolUse"]["toolUseId"].startswith("tooluse_")
    assert [r["model_id"] for r in recorded] == [MODEL, MODEL]
    assert recorded[0]["body"]["toolConfig"] == TOOLS
    assert recorded[0]["signature_ok"] is True
    assert fake.requests == []


@pytest.mark.slow
def test_runs_as_a_process() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "tests.fakes.bedrock", "--port", str(port), "--verify-signature"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bedrock = make_client(url)
    try:
        wait_http(f"{url}/_requests", 20.0, proc)
        fault = orjson.dumps({"mode": "error", "error": "ServiceUnavailableException", "times": 1})
        control = urllib.request.Request(f"{url}/_fault", data=fault, method="POST")  # noqa: S310 - loopback
        with urllib.request.urlopen(control, timeout=5) as resp:  # noqa: S310
            assert resp.status == 200
        with pytest.raises(ClientError, match="ServiceUnavailableException"):
            bedrock.converse(modelId=MODEL, messages=HELLO)
        result = bedrock.converse(modelId=MODEL, messages=HELLO)
        assert result["output"]["message"]["content"] == [{"text": "Hello, world"}]
    finally:
        bedrock.close()
        proc.terminate()
        proc.wait(10)
