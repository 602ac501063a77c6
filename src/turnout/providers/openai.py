"""Any OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp server, Ollama) over one pooled
aiohttp session per target.

A target may list several replicas. Each call goes to one whose breaker lets calls through,
chosen by ``balance`` (``turnout.providers.balance``: least loaded by calls in flight and, with
``load``, each server's own queue and KV-cache use read from its ``/metrics``; or by prefix
affinity), and its outcome is recorded on that replica's breaker: 5xx, connect, timeout
and protocol failures count against it, and so do answers about its own configuration (401,
403, 404, 407, 3xx: ``UpstreamStatusError.fallback``); a 4xx the caller caused does not, nor
does a 429 (the replica is busy, not broken: no verdict, as ``turnout.routing.attempts`` tells
the target's), nor a 503 that sheds load (with Retry-After, or saying it is busy or overloaded:
Ollama's full queue).

Timeouts (``Call.timeouts``), the session, how a call is settled, the clean-up of an abandoned
response and the translation of aiohttp and OS errors into ``turnout.errors`` follow
``turnout.providers.transport``, shared with the Bedrock provider. Messages name the replica by
label (``r0``, ``r1``, ...), never by URL, and the API key is scrubbed from anything the
upstream echoes back.
"""

from __future__ import annotations

import asyncio
import re
from functools import partial
from typing import Any

import aiohttp
import orjson
from yarl import URL

from turnout.config import OpenAITarget
from turnout.errors import (
    BreakerOpen,
    ConfigError,
    ContextWindowExceeded,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
)
from turnout.providers.balance import Candidate, Scraper, least_loaded, prefix_key, with_affinity
from turnout.providers.base import Call, Completion, Health, Load, ReplicaHealth, ReplicaLoad, Stream, Usage
from turnout.providers.healthcheck import HealthChecks
from turnout.providers.transport import (
    ABANDONED,
    TRANSPORT_ERRORS,
    Client,
    Exchange,
    Response,
    StreamBody,
    describe,
    error_body,
    json_object,
)
from turnout.routing.backoff import parse_retry_after
from turnout.routing.breaker import Breaker

# Below the 5 s keep-alive of uvicorn (vLLM, SGLang, llama-cpp-python) and llama.cpp's server,
# so an idle pooled socket is dropped by us before the server closes it under a new request.
_KEEPALIVE_S = 4.0
_HEALTH_TIMEOUT_S = 5.0
_MAX_SSE_LINE = 8 * 1024 * 1024  # one event; long tool-call arguments must fit
_DRAIN_S = 0.1  # after [DONE], how long to wait for the body's end so the socket can be reused
_DETAIL_CHARS = 200
_INCLUDE_USAGE = {"include_usage": True}


class Replica(Candidate):
    """One base URL of a target, with its own breaker, count of calls in flight and load."""

    __slots__ = ("chat_url", "embeddings_url", "models_url")

    def __init__(self, label: str, base_url: str, breaker: Breaker, metrics_path: str) -> None:
        super().__init__(label, base_url, breaker, metrics_path)
        self.chat_url = URL(base_url + "/chat/completions")
        self.embeddings_url = URL(base_url + "/embeddings")
        self.models_url = URL(base_url + "/models")

    def __repr__(self) -> str:  # the URL may carry credentials, so it stays out of reprs
        return f"Replica({self.label}, in_flight={self.in_flight}, {self.breaker.state.value})"


class OpenAIProvider:
    embed_batch = 32  # TEI's default max_client_batch_size; vLLM and llama.cpp take more
    embed_batch_max: int | None = None

    def __init__(self, name: str, cfg: OpenAITarget) -> None:
        self.name = name
        self.cfg = cfg
        path = cfg.load.path if cfg.load is not None else "/metrics"
        self.replicas = tuple(
            Replica(f"r{i}", url, Breaker(cfg.breaker, target=name, replica=f"r{i}"), path)
            for i, url in enumerate(cfg.urls)
        )
        if cfg.api_key and any(r.chat_url.user for r in self.replicas):
            # aiohttp sends URL credentials as Basic auth and refuses them next to a Bearer key.
            raise ConfigError([f"targets.{name}: give credentials in base_url or as api_key, not both"])
        headers = {"Content-Type": "application/json", **cfg.headers}
        if cfg.api_key:
            headers["Authorization"] = f"Bearer {cfg.api_key}"
        self._http = Client(cfg.max_connections, _KEEPALIVE_S, headers, lean=True)
        self._turn = 0  # where the next tie-break starts
        self._affinity = cfg.balance == "prefix_affinity"
        self._scraper: Scraper | None = None
        if cfg.load is not None:  # built inside the event loop (the runtime's start-up)
            scrapes = Client(len(self.replicas), _KEEPALIVE_S, headers)  # a proxy in front may want the key
            self._scraper = Scraper(name, self.replicas, scrapes, cfg.load)
            self._scraper.start()
        self.checks: HealthChecks | None = None
        if cfg.health is not None:  # likewise; a pool of its own, one connection per replica
            checks = Client(len(self.replicas), _KEEPALIVE_S, headers)
            self.checks = HealthChecks(name, self.replicas, checks, cfg.health)
            self.checks.start()

    # -- the protocol ----------------------------------------------------------------------

    async def complete(self, call: Call) -> Completion:
        replica = self._acquire(call)
        body = await self._exchange(replica, call).complete(
            partial(_completion, label=replica.label, api_key=self.cfg.api_key)
        )
        return Completion(
            body=body,
            usage=Usage.from_openai(body.get("usage")),
            model_version=self.cfg.model_version or body.get("model") or self.cfg.model,
            replica=replica.label,
        )

    async def stream(self, call: Call) -> Stream:
        replica = self._acquire(call)
        chunks = await self._exchange(replica, call).stream(partial(_Chunks.start, api_key=self.cfg.api_key))
        return Stream(
            chunks=chunks,
            model_version=self.cfg.model_version or chunks.model or self.cfg.model,
            replica=replica.label,
        )

    async def embed(self, call: Call) -> Completion:
        """One batch of ``POST /embeddings`` (``turnout.providers.embeddings``), asked as floats:
        the gateway encodes base64 itself when the caller wants it."""
        replica = self._acquire(None)  # no conversation to keep together
        exchange = Exchange(
            lambda: self._post_embeddings(replica, call),
            partial(self._status_error, replica),
            replica.label,
            call.timeouts,
            partial(self._settle, replica),
        )
        body = await exchange.complete(partial(json_object, label=replica.label, what="response"))
        return Completion(
            body=body,
            usage=Usage.from_openai(body.get("usage")),
            model_version=self.cfg.model_version or body.get("model") or self.cfg.model,
            replica=replica.label,
        )

    async def health(self) -> Health:
        session = self._http.session()
        timeout = aiohttp.ClientTimeout(total=min(_HEALTH_TIMEOUT_S, self.cfg.timeouts.ttft))
        problems = await asyncio.gather(*(self._probe(session, r, timeout) for r in self.replicas))
        each = tuple(ReplicaHealth(r.label, not why, why) for r, why in zip(self.replicas, problems, strict=True))
        failing = [f"{r.name} ({r.detail})" for r in each if not r.ok]
        if not failing:
            return Health(True, replicas=each)
        return Health(len(failing) < len(self.replicas), "failing: " + ", ".join(failing), each)

    def load(self) -> Load:
        replicas = tuple(_replica_load(r) for r in self.replicas)
        return Load(sum(r.in_flight for r in replicas), None, replicas)

    async def aclose(self) -> None:
        if self._scraper is not None:
            await self._scraper.aclose()
        if self.checks is not None:
            await self.checks.aclose()
        await self._http.aclose()

    # -- replicas --------------------------------------------------------------------------

    def _acquire(self, call: Call | None) -> Replica:
        """Reserve the replica ``balance`` picks among those whose breaker lets a call through."""
        replicas = self.replicas
        n = len(replicas)
        start = self._turn
        self._turn = (start + 1) % n
        key = prefix_key(call.body) if self._affinity and call is not None else None
        if key is None:
            best = least_loaded(replicas, start)
        else:
            best = with_affinity(replicas, key, start, self.cfg.affinity_slack)
        # Nothing is awaited between available() and allow(), so they agree.
        if best is None or not best.breaker.allow():
            soonest = min(r.breaker.retry_after() for r in replicas)
            what = "breaker open" if n == 1 else f"breakers of all {n} replicas open"
            raise BreakerOpen(what, retry_after=soonest)
        best.in_flight += 1
        return best

    def _settle(self, replica: Replica, exc: BaseException | None) -> None:
        """Free the replica's slot and give its breaker the verdict, exactly once per call."""
        replica.in_flight -= 1
        breaker = replica.breaker
        if (
            exc is None
            or isinstance(exc, ContextWindowExceeded)
            or (isinstance(exc, UpstreamStatusError) and not exc.fallback)
        ):
            breaker.success()  # it answered; a 4xx is the caller's doing (not a 401/404: its own)
        elif isinstance(exc, UpstreamError) and not exc.busy:
            breaker.failure()
        else:
            breaker.release()  # busy (429), cancelled or abandoned: no verdict

    # -- one exchange ----------------------------------------------------------------------

    def _exchange(self, replica: Replica, call: Call) -> Exchange:
        return Exchange(
            lambda: self._post(replica, call),
            partial(self._status_error, replica),
            replica.label,
            call.timeouts,
            partial(self._settle, replica),
        )

    async def _post(self, replica: Replica, call: Call) -> Response:
        body = dict(call.body)  # shallow: only top-level keys change
        body["model"] = self.cfg.model
        body["stream"] = call.stream
        if call.stream:
            # The gateway's ledger needs usage; it strips the usage chunk if the caller did
            # not ask for it.
            opts = body.get("stream_options")
            body["stream_options"] = {**opts, **_INCLUDE_USAGE} if isinstance(opts, dict) else _INCLUDE_USAGE
        else:
            body.pop("stream_options", None)  # servers reject it on non-streaming calls
        if self.cfg.continue_final_message and _ends_with_assistant(body.get("messages")):
            body.setdefault("continue_final_message", True)  # the caller's own choice wins
            body.setdefault("add_generation_prompt", False)
        return await self._http.post(replica.chat_url, orjson.dumps(body), call.timeouts, stream=call.stream)

    async def _post_embeddings(self, replica: Replica, call: Call) -> Response:
        body = {**call.body, "model": self.cfg.model, "encoding_format": "float"}
        return await self._http.post(replica.embeddings_url, orjson.dumps(body), call.timeouts, stream=False)

    async def _status_error(self, replica: Replica, resp: Response) -> UpstreamError:
        raw = await error_body(resp)
        detail = _scrub(_error_detail(raw) or resp.reason or "no detail", self.cfg.api_key)
        if resp.status in (401, 403, 407):  # its words may quote the key in part ("sk-ab***cd"): not passed on
            detail = f"the server refused the gateway's credentials (targets.{self.name}.api_key)"
        if resp.status == 400 and (too_long := _CONTEXT_OVERFLOW.search(detail)):
            window = int(too_long.group("window")) if too_long.group("window") else None
            return ContextWindowExceeded(f"{detail} ({replica.label})", window=window)
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        # A 503 that sheds load (Ollama's full queue, a proxy's "come back in N s") is busy, as
        # a 429 is: no verdict. One that says nothing of the kind (down, loading) still counts.
        busy = resp.status == 429 or (resp.status == 503 and (retry_after is not None or bool(_SHED.search(detail))))
        return UpstreamStatusError(resp.status, f"{detail} ({replica.label})", retry_after=retry_after, busy=busy)

    async def _probe(self, session: aiohttp.ClientSession, replica: Replica, limit: aiohttp.ClientTimeout) -> str:
        """Why this replica is unhealthy, or "" when it answers."""
        try:
            async with session.get(replica.models_url, timeout=limit, allow_redirects=False) as resp:
                return "" if resp.status < 300 else f"HTTP {resp.status}"
        except TimeoutError:
            return "timeout"
        except TRANSPORT_ERRORS as exc:
            return describe(exc)


def _ends_with_assistant(messages: Any) -> bool:
    last = messages[-1] if isinstance(messages, list) and messages else None
    return isinstance(last, dict) and last.get("role") == "assistant"


def _replica_load(r: Replica) -> ReplicaLoad:
    gauges = r.gauges
    if gauges is None:
        return ReplicaLoad(r.label, r.in_flight, r.breaker.state)
    return ReplicaLoad(r.label, r.in_flight, r.breaker.state, gauges.waiting, gauges.running, gauges.kv_cache)


class _Chunks:
    """``Stream.chunks``: the first event (already read), then the rest as they arrive. Ending,
    failing or ``aclose`` finishes the body (the connection freed, the call settled), once.
    A class rather than an async generator so that ``aclose`` works even before the first
    ``__anext__`` (a generator that never started skips its ``finally``). The consumer must
    end it one of those ways; it holds a pooled socket until then."""

    __slots__ = ("_api_key", "_body", "_finished", "_first", "_started", "model")

    def __init__(self, body: StreamBody, first: dict[str, Any], api_key: str | None) -> None:
        self._body = body
        self._first: dict[str, Any] | None = first
        self._api_key = api_key
        self._started: set[int] = set()  # the choices' indexes seen, and those that finished
        self._finished: set[int] = set()
        model = first.get("model")
        self.model = model if isinstance(model, str) else None  # what the server says it ran
        self._follow(first)

    @classmethod
    async def start(cls, body: StreamBody, api_key: str | None) -> _Chunks:
        """Read the first event (``Exchange.stream`` bounds it by ``ttft``)."""
        first = await _next_event(body.content, body.label, api_key, start=True)
        if first is None or first is _ENDED:
            raise UpstreamProtocolError(f"{body.label}: stream ended before its first chunk")
        return cls(body, first, api_key)

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> dict[str, Any]:
        first = self._first
        if first is not None:
            self._first = None
            return first
        body = self._body
        if body.finished:
            raise StopAsyncIteration
        try:
            chunk = await body.read(_next_event(body.content, body.label, self._api_key))
            if chunk is _ENDED and (not self._finished or self._started - self._finished):
                # No [DONE], and a choice never said why it stopped: the body was cut (a server
                # that crashed behind a proxy, a body framed by the connection's end), not done.
                raise UpstreamProtocolError(f"{body.label}: stream ended without [DONE] or a finish_reason")
            if chunk is not None and chunk is not _ENDED:
                self._follow(chunk)
        except BaseException as exc:
            body.finish(exc)
            raise
        if chunk is None or chunk is _ENDED:
            await self._drain()
            body.finish(None)
            raise StopAsyncIteration
        return chunk

    def _follow(self, chunk: dict[str, Any]) -> None:
        """Check a chunk's choices (a list of objects, each ``delta`` an object; a null or
        missing ``delta`` is made ``{}``, as a client reads it) and note which have finished."""
        choices = chunk.get("choices")
        if choices is None:
            return
        label = self._body.label
        if type(choices) is not list:
            raise UpstreamProtocolError(f"{label}: a stream chunk's choices are not a list")
        for choice in choices:
            if type(choice) is not dict:
                raise UpstreamProtocolError(f"{label}: a stream chunk's choice is not an object")
            delta = choice.get("delta")
            if delta is None:
                choice["delta"] = {}
            elif type(delta) is not dict:
                raise UpstreamProtocolError(f"{label}: a stream chunk's delta is not an object")
            index = choice.get("index")
            index = index if type(index) is int else 0
            self._started.add(index)
            if choice.get("finish_reason") is not None:
                self._finished.add(index)

    async def aclose(self) -> None:
        """Stop early: closing the socket is how an OpenAI-compatible server learns to stop."""
        self._first = None
        self._body.finish(ABANDONED)

    async def _drain(self) -> None:
        # The body's final empty chunk usually trails [DONE] by a moment; reading it lets the
        # socket go back to the pool instead of being closed.
        content = self._body.content
        if content.is_eof():
            return
        try:
            async with asyncio.timeout(_DRAIN_S):
                await content.read()
        except TRANSPORT_ERRORS:
            pass  # finish() closes the socket instead


_BOM = b"\xef\xbb\xbf"
_ENDED: dict[str, Any] = {}  # what ``_next_event`` returns at the body's end without [DONE]


async def _next_event(
    content: aiohttp.StreamReader, label: str, api_key: str | None, *, start: bool = False
) -> dict[str, Any] | None:
    """The next SSE event's JSON, None at ``[DONE]``, or ``_ENDED`` at a clean end of the
    body without it.

    Lines are read one at a time from aiohttp's buffer, so nothing is scanned twice. Only
    ``data`` fields and an ``event: error`` matter; comments (keep-alives) and other fields are
    skipped; a byte-order mark that begins the body (``start``) is dropped, as the SSE spec
    says, not the line it begins. A server that omits ``[DONE]`` but ends its body properly is accepted where every
    choice finished (``_Chunks``); a cut body raises from aiohttp instead.
    """
    data: bytes | bytearray | None = None
    failed = False  # an ``event: error`` line
    while True:
        line = await content.readuntil(b"\n", max_size=_MAX_SSE_LINE)
        if start:
            start = False
            if line.startswith(_BOM):
                line = line[3:]
        if not line:  # end of body
            if data is None:
                return _ENDED
            break
        line = line.rstrip(b"\r\n")
        if line:
            if line.startswith(b"data:"):
                value = line[6:] if line[5:6] == b" " else line[5:]
                if data is None:
                    data = value
                elif len(data) + len(value) < _MAX_SSE_LINE:  # the bound is the event's, not a line's
                    data = data if type(data) is bytearray else bytearray(data)  # joined in place
                    data += b"\n" + value
                else:
                    raise UpstreamProtocolError(f"{label}: a stream event is over {_MAX_SSE_LINE >> 20} MiB")
            elif line.startswith(b"event:"):
                failed = line[6:].strip() == b"error"
            continue
        if data is not None:  # a blank line ends the event
            break
        failed = False  # an event without data is not one
    if data == b"[DONE]" and not failed:
        return None
    if failed:
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            parsed = None
        event = parsed if isinstance(parsed, dict) else {"message": _shorten(data.decode("utf-8", "replace"))}
        raise _event_error(event, label, api_key)
    event = json_object(data, label, "stream event")
    if "error" in event or event.get("object") == "error":
        raise _event_error(event, label, api_key)
    return event


def _completion(raw: bytes, label: str, api_key: str | None) -> dict[str, Any]:
    """A non-streaming answer: a JSON object that is a chat completion, one or more choices
    each with its ``message`` an object. An error object sent with a 200 (some proxies do) is
    the upstream's error; anything else a client could not read is a protocol error."""
    body = json_object(raw, label, "response")
    if "error" in body or body.get("object") == "error":
        raise _event_error(body, label, api_key, "in a 200 answer")
    choices = body.get("choices")
    if type(choices) is not list or not choices:
        raise UpstreamProtocolError(f"{label}: the response has no choices")
    for choice in choices:
        if type(choice) is not dict or type(choice.get("message")) is not dict:
            raise UpstreamProtocolError(f"{label}: a choice in the response has no message object")
    return body


def _event_error(
    event: dict[str, Any], label: str, api_key: str | None, where: str = "mid-stream"
) -> UpstreamStatusError:
    """An error sent as a stream event (or as a 200's body); its ``code`` is used as the status
    when it is one."""
    err = event.get("error")
    source = err if isinstance(err, dict) else event
    code = source.get("code")
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    detail = _scrub(_message(event) or "error event", api_key)
    return UpstreamStatusError(status, f"{detail} ({where}, {label})")


def _error_detail(raw: bytes) -> str:
    """The message from an error body: ``{"error": {"message"}}`` (OpenAI, vLLM),
    ``{"object": "error", "message"}`` (older vLLM, SGLang), ``{"error": "..."}`` (TGI,
    llama.cpp), ``{"detail": ...}`` (FastAPI); else the body's text."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _shorten(raw.decode("utf-8", "replace"))
    return _shorten(_message(parsed) if isinstance(parsed, dict) else str(parsed))


def _message(obj: dict[str, Any]) -> str:
    err = obj.get("error")
    if isinstance(err, dict):
        return str(err.get("message") or "")
    if isinstance(err, str):
        return err
    return str(obj.get("message") or obj.get("detail") or "")


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 1] + "…"


# How servers say "the prompt does not fit": vLLM/SGLang ("maximum context length is N tokens"),
# llama.cpp ("exceeds the available context size"), TGI ("must have less than N tokens").
# What a server that sheds load says with its 503: Ollama ("server busy, please try again.
# maximum pending requests exceeded"), OpenAI's API ("engine is currently overloaded").
_SHED = re.compile(r"\bbusy\b|overloaded|maximum pending|too many (?:pending |concurrent )?requests", re.IGNORECASE)
_CONTEXT_OVERFLOW = re.compile(
    r"maximum context length is (?P<window>\d+)|exceeds? the available context size|context length exceeded"
    r"|context_length_exceeded|input is too long",
    re.IGNORECASE,
)


def _scrub(text: str, api_key: str | None) -> str:
    # Some servers quote the key they rejected ("Incorrect API key provided: sk-...").
    return text.replace(api_key, "[redacted]") if api_key else text
