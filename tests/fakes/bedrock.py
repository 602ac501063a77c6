"""A fault-injecting fake of AWS Bedrock Runtime's Converse API, on aiohttp.web.

It speaks the real wire protocol, so boto3, aiobotocore and our own SigV4 client can all be
pointed at it: rest-json bodies, ``x-amzn-ErrorType`` errors and, for ConverseStream, the binary
``application/vnd.amazon.eventstream`` framing (see :func:`encode_message`).

In a test, on 127.0.0.1 with an ephemeral port::

    async with FakeBedrock(verify_signature=True) as fake:
        fake.reply = Reply(tool_uses=(ToolUse("get_weather", {"city": "Paris"}),))
        fake.fault = Fault("exception", error="throttlingException", after=3)
        ... boto3.client("bedrock-runtime", endpoint_url=fake.url, ...) ...
        assert fake.requests[0].model_id == "deepseek.v3-v1:0"

As a process for end-to-end tests, switched over HTTP while a gateway talks to it::

    python -m tests.fakes.bedrock --port 8002 [--verify-signature]
    POST /_fault {"mode": "error", "error": "ThrottlingException", "times": 2}
    POST /_fault {"reply": {"text": ["Bonjour"], "stop_reason": "max_tokens"}}
    GET /_requests     DELETE /_requests

Routes: ``POST /model/{modelId}/converse`` and ``POST /model/{modelId}/converse-stream``, matched
on the raw path, where the model id is percent-encoded (``deepseek.v3-v1%3A0``, an ARN with
``%3A`` and ``%2F``). Anything else is a 404 ``UnknownOperationException``. Every response
carries ``x-amzn-RequestId``.

Modes (``Fault.mode``); the stream modes act on ConverseStream only, Converse answers ok:

    ok            the model's reply (``FakeBedrock.reply``): JSON, or a stream of events
    error         before any answer: HTTP status + ``x-amzn-ErrorType: <error>:<namespace>`` +
                  ``{"message": ...}``, for every name in ``ERRORS``
    exception     stream: ``after`` events, then a modelled ``:message-type=exception`` message
                  whose ``:exception-type`` is one of ``STREAM_EXCEPTIONS``
    stream_error  stream: ``after`` events, then an unmodelled ``:message-type=error`` message
                  with ``:error-code`` = ``error`` and ``:error-message``
    hang          never answers (until the client leaves or the server stops)
    cut           stream: ``after`` events, then the connection closes; Converse: half a body
    corrupt       stream: ``after`` events, then a frame whose message CRC is wrong
    malformed     stream: ``after`` events, then a frame whose checksums hold but whose content
                  does not: with ``error`` "header", a header of a type the format lacks, else an
                  event of the wrong shape (a ``delta`` that is a list); Converse: a body whose
                  ``content`` is a string, not a list of blocks

Delivery works in every mode: ``head_delay`` before the response head, ``first_event_delay``
between a stream's head and its first event, ``chunk_delay`` between later events, and
``split_frames`` writes each frame in pieces so that frames straddle network reads. ``times``
limits a fault to that many requests, after which the fake answers ok again.

Validation: a ``toolUse`` or ``toolResult`` whose ``toolUseId`` is not 1-64 of ``[a-zA-Z0-9_-]``
is a 400 ``ValidationException``, as Bedrock answers it.

Auth: every request is recorded with its ``Authorization`` header. A SigV4 signature is
recomputed with botocore's own ``SigV4Auth`` from the request as received (raw path, signed
headers, body) and the fake's keys, and the verdict recorded in ``Received.signature_ok``. With
``verify_signature`` a bad signature is a 403 ``InvalidSignatureException``, an unknown access key
a 403 ``UnrecognizedClientException``, a missing header a 403
``MissingAuthenticationTokenException``; a ``Bearer`` token must equal ``bearer_token`` if set.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import itertools
import os
import random
import re
import string
import struct
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import orjson
from aiohttp import web
from botocore.auth import SigV4Auth  # type: ignore[import-untyped, unused-ignore]
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped, unused-ignore]
from botocore.credentials import Credentials  # type: ignore[import-untyped, unused-ignore]
from multidict import CIMultiDictProxy

from tests.fakes.server import FakeServer

if TYPE_CHECKING:
    import pytest

MODES = ("ok", "error", "exception", "stream_error", "hang", "cut", "corrupt", "malformed")

# x-amzn-ErrorType names before the stream starts, with their HTTP status (botocore's service model).
ERRORS: dict[str, int] = {
    "ValidationException": 400,
    "ServiceQuotaExceededException": 400,
    "AccessDeniedException": 403,
    "ResourceNotFoundException": 404,
    "ModelTimeoutException": 408,
    "ModelErrorException": 424,
    "ThrottlingException": 429,
    "ModelNotReadyException": 429,
    "InternalServerException": 500,
    "ServiceUnavailableException": 503,
}
# Modelled in-stream exceptions: members of the ConverseStreamOutput union.
STREAM_EXCEPTIONS = (
    "internalServerException",
    "modelStreamErrorException",
    "validationException",
    "throttlingException",
    "serviceUnavailableException",
)
# Real Bedrock appends this to x-amzn-ErrorType; clients must strip everything after ':'.
ERROR_NAMESPACE = "http://internal.amazon.com/coral/com.amazon.bedrock/"
# What Bedrock says when the prompt does not fit the model's context window (a ValidationException).
CONTEXT_WINDOW_MESSAGE = "Input is too long for requested model."
MESSAGES: dict[str, str] = {
    "ValidationException": "Malformed input request, please reformat your input and try again.",
    "ServiceQuotaExceededException": "Your request exceeds the service quota for your account.",
    "AccessDeniedException": "You don't have access to the model with the specified model ID.",
    "ResourceNotFoundException": "Could not resolve the foundation model from the provided model identifier.",
    "ModelTimeoutException": "Model has timed out in processing the request. Try your request again.",
    "ModelErrorException": "The system encountered an unexpected error during processing. Try your request again.",
    "ThrottlingException": "Too many requests, please wait before trying again.",
    "ModelNotReadyException": "Model is not ready to serve inference requests. Try your request again.",
    "InternalServerException": "The server encountered an internal error while processing the request.",
    "ServiceUnavailableException": "Bedrock is unable to process your request.",
    "ModelStreamErrorException": "The model returned an error while streaming its response.",
}
EVENTSTREAM = "application/vnd.amazon.eventstream"
# The fake's credentials: AWS's documented example key pair.
ACCESS_KEY = "AKIDEXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
_OPERATION = re.compile(r"/model/(?P<model>[^/]+)/(?P<op>converse|converse-stream)")
_SIGV4 = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,"
    r" ?SignedHeaders=(?P<signed>[a-z0-9;-]+), ?Signature=(?P<signature>[0-9a-f]{64})"
)
_PADDING = string.ascii_letters + string.digits
_TOOL_USE_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")


@dataclass
class Fault:
    mode: str = "ok"
    error: str = "ThrottlingException"  # error: an ERRORS name; exception: a STREAM_EXCEPTIONS name (any case)
    message: str | None = None  # None: the usual message for ``error``
    status: int | None = None  # error: overrides the status from ERRORS (and allows unlisted names)
    original_status_code: int = 500  # ModelErrorException, modelStreamErrorException
    original_message: str = "upstream model failed"  # modelStreamErrorException
    resource_name: str = "fake-model-resource"  # ModelErrorException
    after: int = 2  # stream modes: events sent before the fault strikes
    head_delay: float = 0.0
    first_event_delay: float = 0.0
    chunk_delay: float = 0.0
    split_frames: bool = False
    times: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected one of {', '.join(MODES)}")
        if self.mode == "error" and self.error not in ERRORS and self.status is None:
            raise ValueError(f"unknown error {self.error!r}: give a status, or one of {', '.join(ERRORS)}")
        if self.mode == "exception" and _lower_camel(self.error) not in STREAM_EXCEPTIONS:
            raise ValueError(f"unknown stream exception {self.error!r}; expected one of {', '.join(STREAM_EXCEPTIONS)}")

    @property
    def text(self) -> str:
        if self.message is not None:
            return self.message
        return MESSAGES.get(self.error[:1].upper() + self.error[1:], "injected fault")


@dataclass
class ToolUse:
    name: str
    input: dict[str, Any]
    tool_use_id: str = ""  # empty: a fresh "tooluse_..." id per response, as Bedrock does


@dataclass
class Reply:
    """What the model says. Tool uses are answered only when the request carries ``toolConfig``."""

    text: tuple[str, ...] = ("Hello", ",", " world")  # one contentBlockDelta each; joined for Converse
    tool_uses: tuple[ToolUse, ...] = ()
    reasoning: tuple[str, ...] = ()  # a reasoningContent block ahead of the text
    reasoning_signature: str = "fake-signature"
    stop_reason: str | None = None  # None: "tool_use" when tool uses are sent, else "end_turn"
    input_tokens: int | None = None  # None: the words in the request
    output_tokens: int | None = None  # None: the pieces sent
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    latency_ms: int = 42

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Reply:
        fields = dict(raw)
        for name in ("text", "reasoning"):
            if name in fields:
                fields[name] = tuple(fields[name])
        fields["tool_uses"] = tuple(ToolUse(**t) for t in fields.get("tool_uses", ()))
        return cls(**fields)


@dataclass
class Received:
    method: str
    path: str  # raw, as sent: /model/deepseek.v3-v1%3A0/converse
    model_id: str  # unquoted: deepseek.v3-v1:0
    operation: str  # "converse", "converse-stream", or "" for an unknown route
    headers: dict[str, str]
    body: Any  # parsed JSON, or the text when it is not JSON
    peer: str  # the client's address:port, which tells connections apart
    signature_ok: bool | None  # a SigV4 signature recomputed with the fake's keys; None when not SigV4

    @property
    def authorization(self) -> str:
        return next((v for k, v in self.headers.items() if k.lower() == "authorization"), "")


@dataclass
class FakeBedrock(FakeServer):
    host: str = "127.0.0.1"
    port: int = 0
    region: str = "us-east-1"
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    bearer_token: str | None = None  # with verify_signature: the only Bearer token accepted
    verify_signature: bool = False
    reply: Reply = field(default_factory=Reply)
    fault: Fault = field(default_factory=Fault)
    requests: list[Received] = field(default_factory=list)
    disconnects: int = 0  # answers stopped because the client went away

    @property
    def url(self) -> str:
        """The ``endpoint_url`` for a client."""
        return f"http://{self.host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/_fault", self._set_fault)
        app.router.add_get("/_requests", self._get_requests)
        app.router.add_delete("/_requests", self._clear_requests)
        # One catch-all: routes are matched on the raw path, where the model id is still encoded.
        app.router.add_route("*", "/{tail:.*}", self._model)
        return app

    # -- the Bedrock surface ----------------------------------------------------------------

    async def _model(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        path = urlsplit(request.raw_path).path
        route = _OPERATION.fullmatch(path) if request.method == "POST" else None
        received = self._record(request, raw, route)
        request_id = str(uuid.uuid4())
        if route is None:
            return _error("UnknownOperationException", 404, "Unknown operation", request_id)
        denied = self._deny(received)
        if denied is not None:
            return _error(*denied, request_id)
        invalid = _invalid(received.body)
        if invalid is not None:
            return _error("ValidationException", 400, invalid, request_id)
        fault = self._take()
        try:
            await _sleep(fault.head_delay)
            if fault.mode == "hang":
                await self._stopping.wait()
                return web.Response(status=503)
            if fault.mode == "error":
                return _fault_error(fault, request_id)
            body = received.body if isinstance(received.body, dict) else {}
            if received.operation == "converse":
                return await self._converse(request, body, fault, request_id)
            return await self._converse_stream(request, body, fault, request_id)
        except asyncio.CancelledError:
            self.disconnects += 1
            raise

    def _record(self, request: web.Request, raw: bytes, route: re.Match[str] | None) -> Received:
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        peer = request.transport.get_extra_info("peername") if request.transport else None
        received = Received(
            method=request.method,
            path=request.raw_path,
            model_id=unquote(route["model"]) if route else "",
            operation=route["op"] if route else "",
            headers={str(k): v for k, v in request.headers.items()},  # istr keys upset orjson
            body=body,
            peer=f"{peer[0]}:{peer[1]}" if peer else "?",
            signature_ok=self._signature_ok(request, raw),
        )
        self.requests.append(received)
        return received

    def _signature_ok(self, request: web.Request, raw: bytes) -> bool | None:
        auth = _SIGV4.fullmatch(request.headers.get("Authorization", ""))
        if auth is None:
            return None
        return auth["key"] == self.access_key and sigv4_signature_ok(
            request.method, request.raw_path, request.headers, raw, self.access_key, self.secret_key
        )

    def _deny(self, received: Received) -> tuple[str, int, str] | None:
        """The 403 a real endpoint would give this request's credentials, when we check them."""
        if not self.verify_signature:
            return None
        authorization = received.authorization
        if authorization.startswith("Bearer "):
            if self.bearer_token is not None and authorization != f"Bearer {self.bearer_token}":
                return (
                    "UnrecognizedClientException",
                    403,
                    "Invalid API Key format: Must start with pre-defined prefix",
                )
            return None
        auth = _SIGV4.fullmatch(authorization)
        if auth is None:
            return ("MissingAuthenticationTokenException", 403, "Missing Authentication Token")
        if auth["key"] != self.access_key:
            return ("UnrecognizedClientException", 403, "The security token included in the request is invalid.")
        if auth["region"] != self.region or auth["service"] != "bedrock":
            scope = f"'{self.region}/bedrock'"
            return ("InvalidSignatureException", 403, f"Credential should be scoped to a valid region/service {scope}.")
        if not received.signature_ok:
            return (
                "InvalidSignatureException",
                403,
                "The request signature we calculated does not match the signature you provided. "
                "Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
            )
        return None

    async def _converse(
        self, request: web.Request, body: dict[str, Any], fault: Fault, request_id: str
    ) -> web.StreamResponse:
        answer = converse_response(self.reply, body)
        if fault.mode == "malformed":
            answer["output"]["message"]["content"] = "".join(self.reply.text)
        payload = orjson.dumps(answer)
        headers = {"Content-Type": "application/json", "x-amzn-RequestId": request_id}
        if fault.mode != "cut":
            return web.Response(body=payload, headers=headers)
        resp = web.StreamResponse(headers=headers)
        resp.content_length = len(payload)
        await resp.prepare(request)
        await resp.write(payload[: len(payload) // 2])
        _hang_up(request)
        return resp

    async def _converse_stream(
        self, request: web.Request, body: dict[str, Any], fault: Fault, request_id: str
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": EVENTSTREAM, "x-amzn-RequestId": request_id})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await _sleep(fault.first_event_delay)
        frames = [encode_event(kind, payload) for kind, payload in stream_events(self.reply, body)]
        strikes = fault.mode in ("exception", "stream_error", "cut", "corrupt", "malformed")
        for i, frame in enumerate(frames):
            if strikes and i == fault.after:
                break
            if i:
                await _sleep(fault.chunk_delay)
            await _write(resp, frame, fault.split_frames)
        if fault.mode == "cut":
            _hang_up(request)
        elif fault.mode == "corrupt":
            frame = encode_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "garbled"}})
            await _write(resp, frame[:-1] + bytes([frame[-1] ^ 0xFF]), fault.split_frames)
        elif fault.mode == "malformed":
            await _write(resp, _malformed_frame(fault.error), fault.split_frames)
        elif fault.mode == "exception":
            await _write(resp, _exception_frame(fault), fault.split_frames)
        elif fault.mode == "stream_error":
            headers = {":message-type": "error", ":error-code": fault.error, ":error-message": fault.text}
            await _write(resp, encode_message(headers, b""), fault.split_frames)
        return resp

    def _take(self) -> Fault:
        """The fault for this request; a fault with ``times`` expires after that many."""
        fault = self.fault
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                self.fault = Fault()
        return fault

    # -- control, for tests that drive the fake over HTTP ----------------------------------

    async def _set_fault(self, request: web.Request) -> web.StreamResponse:
        """``{"mode": ..., <Fault fields>, "reply": {<Reply fields>}}``; a missing reply is kept."""
        try:
            raw = orjson.loads(await request.read() or b"{}")
            reply = raw.pop("reply", None)
            fault = Fault(**raw)
            if reply is not None:
                self.reply = Reply.from_json(reply)
        except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
            return _json({"message": str(exc)}, status=400)
        self.fault = fault
        return _json({"fault": asdict(self.fault), "reply": asdict(self.reply)})

    async def _get_requests(self, request: web.Request) -> web.StreamResponse:
        return _json([asdict(r) for r in self.requests])

    async def _clear_requests(self, request: web.Request) -> web.StreamResponse:
        self.requests.clear()
        return _json({"cleared": True})


# -- the binary event-stream framing -----------------------------------------------------------


def encode_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One ``application/vnd.amazon.eventstream`` message, as Bedrock frames each stream event::

    total length    u32 BE   the whole message, these 4 bytes and the final CRC included
    headers length  u32 BE
    prelude CRC     u32 BE   CRC32 of the 8 bytes above
    headers         repeated: name length u8, name, type u8 (7 = string), value length u16 BE, value
    payload         bytes (JSON for Bedrock)
    message CRC     u32 BE   CRC32 of everything before it, prelude CRC included
    """
    encoded = b"".join(_header(name, value) for name, value in headers.items())
    prelude = struct.pack("!II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack("!I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack("!I", zlib.crc32(message))


def _header(name: str, value: str) -> bytes:
    key, data = name.encode(), value.encode()
    return struct.pack("!B", len(key)) + key + b"\x07" + struct.pack("!H", len(data)) + data


def encode_event(event_type: str, payload: Mapping[str, Any]) -> bytes:
    """A ConverseStream event, padded with a random ``"p"`` field as real Bedrock does."""
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return encode_message(headers, orjson.dumps({**payload, "p": _padding()}))


def _malformed_frame(what: str) -> bytes:
    """A frame with sound checksums and unsound content (``Fault`` mode ``malformed``)."""
    if what == "header":  # header value type 99: the format defines 0-9
        header = b"\x0d:message-type" + b"\x63" + struct.pack("!H", 5) + b"event"
        prelude = struct.pack("!II", 12 + len(header) + 2 + 4, len(header))
        message = prelude + struct.pack("!I", zlib.crc32(prelude)) + header + b"{}"
        return message + struct.pack("!I", zlib.crc32(message))
    return encode_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": ["garbled"]})


def _exception_frame(fault: Fault) -> bytes:
    name = _lower_camel(fault.error)
    payload: dict[str, Any] = {"message": fault.text}
    if name == "modelStreamErrorException":
        payload |= {"originalStatusCode": fault.original_status_code, "originalMessage": fault.original_message}
    headers = {":exception-type": name, ":content-type": "application/json", ":message-type": "exception"}
    return encode_message(headers, orjson.dumps(payload))


# -- the model's answer ------------------------------------------------------------------------


def converse_response(reply: Reply, request: Mapping[str, Any]) -> dict[str, Any]:
    """The Converse response body for ``reply`` to ``request``."""
    content: list[dict[str, Any]] = []
    if reply.reasoning:
        text = {"text": "".join(reply.reasoning), "signature": reply.reasoning_signature}
        content.append({"reasoningContent": {"reasoningText": text}})
    if reply.text:
        content.append({"text": "".join(reply.text)})
    tools = _tool_uses(reply, request)
    content += [{"toolUse": {"toolUseId": t.tool_use_id, "name": t.name, "input": t.input}} for t in tools]
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": _stop_reason(reply, tools),
        "usage": _usage(reply, request),
        "metrics": {"latencyMs": reply.latency_ms},
    }


def stream_events(reply: Reply, request: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The ConverseStream events for ``reply`` to ``request``, without padding, in order."""
    events: list[tuple[str, dict[str, Any]]] = [("messageStart", {"role": "assistant"})]
    index = 0
    if reply.reasoning:
        events += [_delta(index, {"reasoningContent": {"text": piece}}) for piece in reply.reasoning]
        events.append(_delta(index, {"reasoningContent": {"signature": reply.reasoning_signature}}))
        events.append(("contentBlockStop", {"contentBlockIndex": index}))
        index += 1
    if reply.text:
        # Text blocks have no contentBlockStart: ContentBlockStart has no text member.
        events += [_delta(index, {"text": piece}) for piece in reply.text]
        events.append(("contentBlockStop", {"contentBlockIndex": index}))
        index += 1
    tools = _tool_uses(reply, request)
    for tool in tools:
        start = {"toolUse": {"toolUseId": tool.tool_use_id, "name": tool.name}}
        events.append(("contentBlockStart", {"contentBlockIndex": index, "start": start}))
        arguments = orjson.dumps(tool.input).decode()
        events += [_delta(index, {"toolUse": {"input": piece}}) for piece in _fragments(arguments)]
        events.append(("contentBlockStop", {"contentBlockIndex": index}))
        index += 1
    events.append(("messageStop", {"stopReason": _stop_reason(reply, tools)}))
    events.append(("metadata", {"usage": _usage(reply, request), "metrics": {"latencyMs": reply.latency_ms}}))
    return events


def _delta(index: int, delta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return ("contentBlockDelta", {"contentBlockIndex": index, "delta": delta})


def _tool_uses(reply: Reply, request: Mapping[str, Any]) -> list[ToolUse]:
    if not request.get("toolConfig"):
        return []
    return [
        ToolUse(t.name, t.input, t.tool_use_id or f"tooluse_{''.join(random.choices(_PADDING, k=22))}")
        for t in reply.tool_uses
    ]


def _fragments(text: str, size: int = 7) -> list[str]:
    """Pieces that cut through keys and values, as a model's token stream does."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _stop_reason(reply: Reply, tools: list[ToolUse]) -> str:
    if reply.stop_reason is not None:
        return reply.stop_reason
    return "tool_use" if tools else "end_turn"


def _usage(reply: Reply, request: Mapping[str, Any]) -> dict[str, int]:
    prompt = reply.input_tokens if reply.input_tokens is not None else max(1, _words(request))
    completion = reply.output_tokens
    if completion is None:
        completion = len(reply.text) + len(reply.reasoning) + len(_tool_uses(reply, request))
    return {
        "inputTokens": prompt,
        "outputTokens": completion,
        "totalTokens": prompt + completion,
        "cacheReadInputTokens": reply.cache_read_tokens,
        "cacheWriteInputTokens": reply.cache_write_tokens,
    }


def _words(request: Mapping[str, Any]) -> int:
    blocks = list(request.get("system") or [])
    for message in request.get("messages") or []:
        if isinstance(message, dict):
            blocks += message.get("content") or []
    return sum(len(str(b.get("text", "")).split()) for b in blocks if isinstance(b, dict))


# -- SigV4 -------------------------------------------------------------------------------------


def sigv4_signature_ok(
    method: str, raw_path: str, headers: CIMultiDictProxy[str], body: bytes, access_key: str, secret_key: str
) -> bool:
    """Whether the SigV4 ``Authorization`` in ``headers`` signs this request as received.

    botocore's own signer recomputes the signature over the raw path (so a client that signs
    ``%3A`` but sends ``:`` fails, as it does against AWS), the headers the client listed as
    signed, the body and the client's ``X-Amz-Date``.
    """
    auth = _SIGV4.fullmatch(headers.get("Authorization", ""))
    timestamp = headers.get("X-Amz-Date", "")
    if auth is None or not timestamp.startswith(auth["date"]):
        return False
    request = AWSRequest(method=method, url=f"http://{headers.get('Host', '')}{raw_path}", data=body)
    for name in auth["signed"].split(";"):
        for value in headers.getall(name, []):  # a repeated header is signed as its values joined
            request.headers[name] = value
    request.context["timestamp"] = timestamp
    signer = SigV4Auth(Credentials(access_key, secret_key), auth["service"], auth["region"])
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    return hmac.compare_digest(str(expected), auth["signature"])


# -- helpers -----------------------------------------------------------------------------------


def _invalid(body: Any) -> str | None:
    """What Bedrock's input validation says of a body it refuses, as far as the fake checks:
    tool use ids outside Converse's pattern. None: it passes."""
    messages = body.get("messages") if isinstance(body, dict) else None
    for i, message in enumerate(messages if isinstance(messages, list) else ()):
        for j, block in enumerate(message.get("content") or () if isinstance(message, dict) else ()):
            for kind in ("toolUse", "toolResult"):
                inner = block.get(kind) if isinstance(block, dict) else None
                if isinstance(inner, dict) and not _TOOL_USE_ID.fullmatch(str(inner.get("toolUseId", ""))):
                    return (
                        f"1 validation error detected: Value at 'messages.{i + 1}.member.content.{j + 1}.member."
                        f"{kind}.toolUseId' failed to satisfy constraint: Member must satisfy regular expression "
                        "pattern: [a-zA-Z0-9_-]+"
                    )
    return None


def _lower_camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def _padding() -> str:
    return _PADDING[: random.randint(1, len(_PADDING))]


def _fault_error(fault: Fault, request_id: str) -> web.Response:
    status = fault.status if fault.status is not None else ERRORS[fault.error]
    extra: dict[str, Any] = {}
    if fault.error == "ModelErrorException":
        extra = {"originalStatusCode": fault.original_status_code, "resourceName": fault.resource_name}
    return _error(fault.error, status, fault.text, request_id, extra)


def _error(name: str, status: int, message: str, request_id: str, extra: dict[str, Any] | None = None) -> web.Response:
    headers = {"x-amzn-ErrorType": f"{name}:{ERROR_NAMESPACE}", "x-amzn-RequestId": request_id}
    return _json({"message": message, **(extra or {})}, status=status, headers=headers)


def _json(payload: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, headers=headers, content_type="application/json")


async def _write(resp: web.StreamResponse, frame: bytes, split: bool) -> None:
    if not split:
        await resp.write(frame)
        return
    # Cut inside the prelude, inside its CRC and inside the payload, each cut its own segment.
    cuts = sorted({0, 5, 10, len(frame) // 2, len(frame)})
    for start, end in itertools.pairwise(cuts):
        await resp.write(frame[start:end])
        await asyncio.sleep(0.001)


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


def _hang_up(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="a fault-injecting fake of AWS Bedrock Runtime's Converse API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--access-key", default=ACCESS_KEY)
    parser.add_argument("--secret-key", default=SECRET_KEY)
    parser.add_argument("--bearer-token", default=None)
    parser.add_argument("--verify-signature", action="store_true", help="answer 403 to badly signed requests")
    args = parser.parse_args()
    fake = FakeBedrock(
        host=args.host,
        port=args.port,
        region=args.region,
        access_key=args.access_key,
        secret_key=args.secret_key,
        bearer_token=args.bearer_token,
        verify_signature=args.verify_signature,
    )
    web.run_app(fake.app(), host=args.host, port=args.port, handler_cancellation=True, access_log=None)


if __name__ == "__main__":
    main()


def use_fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake's static keys from the environment; nothing from files, a Bedrock API key or
    the network."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.delenv("AWS_BEARER_TOKEN_BEDROCK", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
