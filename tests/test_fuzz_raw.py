"""A hand-written fuzzer for what schemathesis cannot send, over raw sockets to a real ``turnout
serve``: bytes that are not JSON, broken UTF-8, NUL, duplicate keys, numbers past any float or
64-bit integer, 100,000 brackets, every field of every body swapped for hostile values, unknown
methods, absurd headers, wrong content types, chunked bodies that lie, odd paths.

Every request is well-formed HTTP unless marked otherwise. A well-formed one must get an answer
(no empty reply, no reset) below 500, and an error must be OpenAI's shape, a 400 about a field
naming it in ``param``. A malformed one (a lying length, a broken chunk) may be refused by the HTTP
parser (a 400 in OpenAI's shape, code invalid_http) or closed, but never answered 5xx. Each fuzzer prints how many
requests it tried and how many 5xx it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from tests.hostile import (
    ADMIN_KEY,
    CHAT_TASK,
    TASK,
    TENANT_KEY,
    WHOLE_BODY_CODES,
    Gateway,
    error_shape_problem,
    hostile_gateway,
    report,
)

pytestmark = pytest.mark.slow

PARALLEL = 8
READ_TIMEOUT_S = 15.0
PARSER_REFUSAL = "invalid_http"  # the HTTP parser's 400, before turnout's app sees anything
MAX_BODY = 262_144  # tests/hostile.py's server.max_body_bytes


@dataclass(frozen=True)
class Probe:
    name: str
    raw: bytes  # the whole request as sent
    well_formed: bool = True
    half_close: bool = False  # shut our side after sending: a lying length then ends at EOF
    field: str | None = None  # the body field under test: a 400 must name it


@dataclass
class Reply:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    failure: str | None = None  # no reply: reset, timeout, empty


@dataclass
class Tally:
    """One fuzzer's figures and problems."""

    name: str
    tried: int = 0
    server_errors: int = 0
    parser_refused: int = 0
    closed: int = 0  # malformed requests the server closed without an answer
    statuses: Counter[int] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        by_status = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items()))
        return (
            f"fuzz {self.name}: {self.tried} requests, {self.server_errors} 5xx, {self.parser_refused} refused by the "
            f"HTTP parser, {self.closed} closed unanswered (malformed) [{by_status}]"
        )


# --- the raw HTTP client ----------------------------------------------------------------------


def http_request(
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Iterable[tuple[str, str | bytes]] = (),
    *,
    key: str | None = "auto",
    content_type: str | None = "application/json",
    version: bytes = b"HTTP/1.1",
) -> bytes:
    """One request as bytes; ``key``: "auto" sends the key the route wants, None none."""
    lines = [method.encode("latin-1") + b" " + path.encode("latin-1") + b" " + version, b"host: 127.0.0.1"]
    if key == "auto":
        key = ADMIN_KEY if path.startswith("/admin") else TENANT_KEY
    if key is not None:
        lines.append(b"authorization: Bearer " + key.encode())
    if body is not None:
        if content_type is not None:
            lines.append(b"content-type: " + content_type.encode())
        if not any(name.lower() in ("content-length", "transfer-encoding") for name, _ in headers):
            lines.append(b"content-length: " + str(len(body)).encode())
    for name, value in headers:
        lines.append(name.encode("latin-1") + b": " + (value if isinstance(value, bytes) else value.encode("latin-1")))
    lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


async def exchange(port: int, probe: Probe) -> Reply:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        return Reply(failure=f"connect: {exc!r}")
    try:
        writer.write(probe.raw)
        await writer.drain()
        if probe.half_close:
            writer.write_eof()
        raw = await asyncio.wait_for(reader.read(-1), READ_TIMEOUT_S)
    except (ConnectionError, TimeoutError) as exc:
        return Reply(failure=type(exc).__name__)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    if not raw:
        return Reply(failure="empty reply")
    return parse_reply(raw, head_only=probe.raw.startswith(b"HEAD "))


def parse_reply(raw: bytes, head_only: bool = False) -> Reply:
    head, _, rest = raw.partition(b"\r\n\r\n")
    while re.match(rb"HTTP/1\.[01] 1\d\d ", head) and rest:  # 100 Continue: the answer follows
        head, _, rest = rest.partition(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3})", status_line)
    if match is None:
        return Reply(failure=f"not HTTP: {raw[:80]!r}")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    body = b"" if head_only else _dechunk(rest) if headers.get("transfer-encoding") == "chunked" else rest
    return Reply(int(match.group(1)), headers, body)


def _dechunk(data: bytes) -> bytes:
    out = []
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(data[:size])
        data = data[size + 2 :]
    return b"".join(out)


# --- judging ----------------------------------------------------------------------------------


def judge(tally: Tally, probe: Probe, reply: Reply) -> None:
    tally.tried += 1
    where = f"{probe.name}"
    if reply.status is None:
        if probe.well_formed:
            tally.problems.append(f"{where}: no answer ({reply.failure})")
        else:
            tally.closed += 1
        return
    tally.statuses[reply.status] += 1
    if reply.status < 200:  # an interim answer only
        tally.problems.append(f"{where}: only a {reply.status}")
        return
    if reply.status >= 500:
        tally.server_errors += 1
        tally.problems.append(f"{where}: {reply.status} {reply.body[:200]!r}")
        return
    if reply.status == 405 and not reply.headers.get("allow"):  # HTTP requires it on a 405
        tally.problems.append(f"{where}: a 405 without Allow")
    if reply.status < 400 or probe.raw.startswith(b"HEAD "):
        return
    if not reply.headers.get("content-type", "").startswith("application/json"):
        tally.problems.append(f"{where}: {reply.status} is not JSON: {reply.body[:120]!r}")
        return
    try:
        body = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        tally.problems.append(f"{where}: {reply.status} body is not JSON: {reply.body[:120]!r}")
        return
    problem = error_shape_problem(reply.status, body)
    if problem is not None:
        tally.problems.append(f"{where}: {problem}")
        return
    if body["error"]["code"] == PARSER_REFUSAL:
        tally.parser_refused += 1
    err = body["error"]
    if probe.field is not None and reply.status == 400 and err["code"] not in WHOLE_BODY_CODES:
        root = re.split(r"[.\[]", probe.field, maxsplit=1)[0]
        named = re.split(r"[.\[]", err["param"], maxsplit=1)[0]
        if named != root:
            tally.problems.append(f"{where}: 400 names {err['param']!r}, not {probe.field!r}: {err['message']}")


async def run(gw: Gateway, tally: Tally, probes: Iterable[Probe]) -> None:
    gate = asyncio.Semaphore(PARALLEL)

    async def one(probe: Probe) -> None:
        async with gate:
            judge(tally, probe, await exchange(gw.port, probe))

    await asyncio.gather(*(one(p) for p in probes))


def finish(request: pytest.FixtureRequest, tally: Tally) -> None:
    report(request, tally.line())
    assert tally.server_errors == 0 and not tally.problems, "\n".join(tally.problems[:30])


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with hostile_gateway(tmp_path_factory.mktemp("fuzz")) as gw:
        yield gw


# --- what is sent -----------------------------------------------------------------------------

POST_ROUTES = (
    "/v1/chat/completions",
    f"/v1/tasks/{TASK}",
    "/v1/tasks/no-such-task",
    "/v1/feedback",
    "/admin/keys",
    "/admin/review/1",
    "/admin/review/99999999999999999999999",
)
GET_ROUTES = (
    "/v1/models",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/admin/tenants",
    "/admin/keys",
    "/admin/usage",
    "/admin/targets",
    "/admin/review",
)

DEEP = 100_000


def hostile_bodies(seed: int = 12) -> Iterator[tuple[str, bytes]]:
    """Whole bodies that are not what any route wants."""
    rng = random.Random(seed)
    yield "empty", b""
    yield "space", b" \t\r\n"
    for text in (b"null", b"[]", b"0", b'"x"', b"true", b"{", b'{"a":', b"}", b"'single'", b"{'a': 1}"):
        yield f"json {text!r}", text
    yield "broken utf-8", b"\xff\xfe\xfd"
    yield "broken utf-8 in a string", b'{"model": "\xff\xfe", "messages": []}'
    yield "overlong utf-8", b'{"model": "\xc0\xaf"}'
    yield "lone surrogate escape", b'{"model": "\\ud800", "messages": []}'
    yield "NUL byte", b"\x00"
    yield "NUL in a key", b'{"\x00": 1}'
    yield "NUL escape", b'{"model": "\\u0000", "messages": [{"role": "user", "content": "\\u0000"}]}'
    yield "BOM", b'\xef\xbb\xbf{"model": "chat"}'
    yield "duplicate keys", b'{"model": "chat", "model": ["x"], "messages": [], "messages": {}}'
    yield "many duplicate keys", b'{"model": "chat"' + b', "labels": []' * 2000 + b"}"
    for number in (b"1e309", b"-1e309", b"1" + b"0" * 400, b"-1" + b"0" * 400, b"1e-400", b"NaN", b"Infinity"):
        yield f"number {number[:12]!r}", b'{"model": ' + number + b', "value": ' + number + b"}"
    yield "100k [", b"[" * DEEP
    yield "100k [ closed", b"[" * DEEP + b"]" * DEEP
    yield "100k {", b'{"a":' * DEEP
    yield "deep in a field", b'{"model": "chat", "x": ' + b"[" * DEEP + b"]" * DEEP + b"}"
    yield "long string", b'{"model": "' + b"x" * 200_000 + b'"}'
    yield "over the body limit", b'{"model": "' + b"x" * (MAX_BODY + 10) + b'"}'
    for i in range(20):
        yield f"random bytes {i}", rng.randbytes(rng.randint(1, 4096))
    for i in range(10):
        yield f"random printable {i}", bytes(rng.choice(b'{}[]":,0123456789abcdeftrunl\\ ') for _ in range(300))


def test_hostile_bodies(gateway: Gateway, request: pytest.FixtureRequest) -> None:
    tally = Tally("bodies")
    probes = [
        Probe(f"POST {route} {name}", http_request("POST", route, body))
        for route in POST_ROUTES
        for name, body in hostile_bodies()
    ]
    asyncio.run(run(gateway, tally, probes))
    finish(request, tally)


# The field grid: every field of a valid body (nested ones too) swapped for each of these, as JSON
# text (some are not valid JSON at all: 1e309, a bare surrogate).
HOSTILE_VALUES: tuple[bytes, ...] = (
    b"null",
    b"true",
    b"0",
    b"-1",
    b"0.5",
    b"1e308",
    b"1e309",
    b"18446744073709551615",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"1" + b"0" * 400,
    b'""',
    b'" "',
    b'"x"',
    b'"\\u0000"',
    b'"\\ud800"',
    b'"\xff"',
    b'"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"',
    b'"' + b"y" * 70_000 + b'"',
    b"[]",
    b"{}",
    b'["a"]',
    b'[{"a": 1}]',
    b'{"a": "b"}',
    b"[" * 129 + b"]" * 129,
    b'{"a":' * 127 + b"1" + b"}" * 127,
    b"[" * 300 + b"]" * 300,
)


def _chat_base() -> dict[str, Any]:
    return {
        "model": CHAT_TASK,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
            {"role": "tool", "content": "42", "tool_call_id": "c1"},
        ],
        "metadata": {"user": "u-1", "data_class": "internal", "episode_id": "ep-1", "other": "kept"},
        "temperature": 0.5,
        "top_p": 1,
        "max_tokens": 8,
        "n": 1,
        "seed": 7,
        "stop": ["\n"],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
        "user": "u-2",
        "stream": False,
        "logit_bias": {"1": 1},
    }


def _task_base() -> dict[str, Any]:
    return {
        "variables": {"text": "hi"},
        "documents": ["doc"],
        "metadata": {"user": "u-1", "data_class": "internal", "episode_id": "ep-1"},
        "user": "u-2",
    }


def _paths(value: Any, prefix: str = "") -> Iterator[str]:
    """Every field path of ``value``: ``a``, ``a.b``, ``a[0]``, ``a[0].b``."""
    if isinstance(value, dict):
        for key, child in value.items():
            path = f"{prefix}.{key}" if prefix else key
            yield path
            yield from _paths(child, path)
    elif isinstance(value, list):
        for i, child in enumerate(value):
            path = f"{prefix}[{i}]"
            yield path
            yield from _paths(child, path)


_SLOT = "\x00SLOT\x00"


def swapped(base: dict[str, Any], path: str, raw_value: bytes) -> bytes:
    """``base`` as JSON with the field at ``path`` replaced by ``raw_value``, spliced in as text."""
    body = orjson.loads(orjson.dumps(base))
    parent: Any = body
    steps = re.findall(r"[^.\[\]]+|\[\d+\]", path)
    for step in steps[:-1]:
        parent = parent[int(step[1:-1])] if step.startswith("[") else parent[step]
    last = steps[-1]
    if last.startswith("["):
        parent[int(last[1:-1])] = _SLOT
    else:
        parent[last] = _SLOT
    return orjson.dumps(body).replace(orjson.dumps(_SLOT), raw_value)


def field_probes(route: str, base: dict[str, Any]) -> Iterator[Probe]:
    for path in _paths(base):
        for value in HOSTILE_VALUES:
            yield Probe(
                f"POST {route} {path}={value[:16]!r}",
                http_request("POST", route, swapped(base, path, value)),
                field=path,
            )
    yield Probe(f"POST {route} unknown field", http_request("POST", route, orjson.dumps({**base, "zz_unknown": [1]})))


def test_every_field_swapped_for_hostile_values(gateway: Gateway, request: pytest.FixtureRequest) -> None:
    tally = Tally("fields")
    chat = _chat_base()
    ok = asyncio.run(
        exchange(gateway.port, Probe("base", http_request("POST", "/v1/chat/completions", orjson.dumps(chat))))
    )
    assert ok.status == 200, ok  # the base bodies are valid: every 400 below is the swapped field's
    answered = orjson.loads(ok.body)["id"]
    feedback = {
        "request_id": answered,
        "episode_id": "ep-1",
        "outcome": "success",
        "human_review": True,
        "escalated": False,
        "value": 1.5,
        "labels": ["a"],
    }
    bases = {
        "/v1/chat/completions": chat,
        f"/v1/tasks/{TASK}": _task_base(),
        "/v1/feedback": feedback,
        "/admin/keys": {"tenant": "acme", "name": "fuzz", "expires_in_s": 60},
        "/admin/review/1": {"label": "accept", "by": "fuzzer", "note": "n"},
    }
    for route, base in bases.items():
        first = asyncio.run(exchange(gateway.port, Probe("base", http_request("POST", route, orjson.dumps(base)))))
        assert first.status in (200, 201), (route, first)
    probes = [p for route, base in bases.items() for p in field_probes(route, base)]
    asyncio.run(run(gateway, tally, probes))
    finish(request, tally)


# --- methods, headers, chunked bodies, paths -------------------------------------------------

METHODS = (
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT",
    "PROPFIND", "MKCOL", "LOCK", "SEARCH", "PURGE", "BREW", "WHEN", "FOO-BAR", "get",
)  # fmt: skip


def test_every_method_on_every_route(gateway: Gateway, request: pytest.FixtureRequest) -> None:
    tally = Tally("methods")
    routes = (*POST_ROUTES, *GET_ROUTES, "/admin/keys/key_nope", "/nowhere", "/admin", "/")
    probes = [
        Probe(f"{method} {route}", http_request(method, route, b"{}" if method not in ("GET", "HEAD") else None))
        for route in routes
        for method in METHODS
    ]
    asyncio.run(run(gateway, tally, probes))
    finish(request, tally)


def header_probes() -> Iterator[Probe]:
    chat = orjson.dumps({"model": CHAT_TASK, "messages": [{"role": "user", "content": "hi"}]})
    chat_route = "/v1/chat/completions"

    def chat_with(name: str, headers: list[tuple[str, str | bytes]], **kwargs: Any) -> Probe:
        well_formed = kwargs.pop("well_formed", True)
        return Probe(name, http_request("POST", chat_route, chat, headers, **kwargs), well_formed=well_formed)

    for value in (
        b"",
        b"Bearer",
        b"Bearer ",
        b"bearer " + TENANT_KEY.encode(),
        b"Basic " + TENANT_KEY.encode(),
        b"Bearer " + TENANT_KEY.encode() + b" " + TENANT_KEY.encode(),
        b"Bearer " + b"k" * 60_000,
        b"Bearer \xff\xfe\x80",
        b"Bearer\t" + TENANT_KEY.encode(),
        b"Bearer " + ADMIN_KEY.encode(),
    ):
        for route in ("/v1/models", "/admin/tenants"):
            yield Probe(
                f"authorization {value[:20]!r} on {route}",
                http_request("GET", route, None, [("authorization", value)], key=None),
            )
        yield chat_with(f"authorization {value[:20]!r} on chat", [("authorization", value)], key=None)
    yield chat_with("two authorization headers", [("authorization", b"Bearer nope")])
    for content_type in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=utf-16",
        "application/xml",
        "*/*",
        "\xff\xfe",
        "",
    ):
        yield Probe(f"content-type {content_type!r}", http_request("POST", chat_route, chat, content_type=content_type))
    yield Probe("no content-type", http_request("POST", chat_route, chat, content_type=None))
    for name, value in (
        ("x-turnout-data-class", b"PUBLIC"),
        ("x-turnout-data-class", b"restricted"),
        ("x-turnout-data-class", b"\xff\xfe"),
        ("x-turnout-data-class", b"public, internal"),
        ("x-turnout-data-class", b"d" * 10_000),
        ("x-turnout-episode", b"e" * 300),
        ("x-turnout-episode", b"\xe9t\xe9"),
        ("x-turnout-user", b"u" * 60_000),
        ("x-turnout-user", b"\xff\xfe\x80"),
        ("expect", b"100-continue"),
        ("expect", b"banana"),
        ("transfer-encoding", b"gzip"),
        ("content-encoding", b"gzip"),
        ("accept", b"text/event-stream"),
        ("x-" + "h" * 1000, b"v"),
        ("cookie", b"a=" + b"c" * 30_000),
    ):
        yield chat_with(f"{name}: {value[:16]!r}", [(name, value)], well_formed=name != "transfer-encoding")
    many: list[tuple[str, str | bytes]] = [(f"x-h{i}", "v") for i in range(2000)]
    yield chat_with("2000 headers", many)
    yield chat_with("a 200 KB header", [("x-big", "b" * 200_000)])
    for name, raw in (
        ("content-length -1", http_request("POST", chat_route, chat, [("content-length", "-1")])),
        ("content-length abc", http_request("POST", chat_route, chat, [("content-length", "abc")])),
        ("content-length 1e3", http_request("POST", chat_route, chat, [("content-length", "1e3")])),
        (
            "two content-lengths",
            http_request("POST", chat_route, chat, [("content-length", "5"), ("content-length", "9")]),
        ),
        (
            "content-length and chunked",
            http_request(
                "POST",
                chat_route,
                b"5\r\nhello\r\n0\r\n\r\n",
                [("content-length", "5"), ("transfer-encoding", "chunked")],
            ),
        ),
        ("header without a colon", http_request("GET", "/v1/models", None, [("x-no-colon\r\nbroken", "")])),
        ("space in a header name", http_request("GET", "/v1/models", None, [("x y", "z")])),
        ("obs-fold", http_request("GET", "/v1/models", None, [("x-fold", "a\r\n  b")])),
        ("NUL in a header", http_request("GET", "/v1/models", None, [("x-nul", "a\x00b")])),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        ("HTTP/0.9", b"GET /v1/models\r\n\r\n"),
        ("HTTP/3.0", http_request("GET", "/v1/models", version=b"HTTP/3.0")),
        ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),  # a TLS client hello
    ):
        yield Probe(name, raw, well_formed=False, half_close=True)
    yield Probe(
        "content-length past the limit",
        http_request("POST", chat_route, chat, [("content-length", "99999999999")]),
        half_close=True,
    )
    # Refused before the body is read: the answer must still arrive (no reset on unread bytes).
    big = orjson.dumps({"model": CHAT_TASK, "messages": [{"role": "user", "content": "x" * 200_000}]})
    for route, key in (
        (chat_route, "sk-wrong"),
        ("/v1/feedback", "sk-wrong"),
        ("/admin/keys", TENANT_KEY),
        ("/admin/review/1", None),
        ("/v1/models", TENANT_KEY),
        ("/nowhere", TENANT_KEY),
    ):
        yield Probe(f"a 200 KB body refused unread at {route}", http_request("POST", route, big, key=key))
    yield Probe("HTTP/1.0", http_request("GET", "/v1/models", version=b"HTTP/1.0"))
    yield Probe("no host", http_request("GET", "/v1/models").replace(b"host: 127.0.0.1\r\n", b""))


def test_absurd_headers(gateway: Gateway, request: pytest.FixtureRequest) -> None:
    tally = Tally("headers")
    asyncio.run(run(gateway, tally, header_probes()))
    finish(request, tally)


def _chunked(chunks: Iterable[bytes], end: bytes = b"0\r\n\r\n") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + end


def chunked_probes() -> Iterator[Probe]:
    chat = orjson.dumps({"model": CHAT_TASK, "messages": [{"role": "user", "content": "hi"}]})
    te = [("transfer-encoding", "chunked")]
    route = "/v1/chat/completions"

    def raw(body: bytes, path: str = route) -> bytes:
        return http_request("POST", path, body, te)

    yield Probe("one-byte chunks", raw(_chunked(chat[i : i + 1] for i in range(len(chat)))))
    yield Probe("chunk extensions", raw(b"".join(b"%x;a=b\r\n%s\r\n" % (len(c), c) for c in (chat,)) + b"0\r\n\r\n"))
    yield Probe("trailers", raw(_chunked([chat], end=b"0\r\nx-trailer: 1\r\n\r\n")))
    yield Probe("empty chunked body", raw(b"0\r\n\r\n"))
    yield Probe("past the limit in chunks", raw(_chunked([b"x" * 4096] * (MAX_BODY // 4096 + 2))))
    for path in ("/v1/feedback", f"/v1/tasks/{TASK}", "/admin/keys", "/admin/review/1"):
        yield Probe(f"one-byte chunks to {path}", raw(_chunked(b"{}"[i : i + 1] for i in range(2)), path))
    lies = (
        ("chunk longer than its data", b"64\r\n" + chat + b"\r\n"),
        ("chunk shorter than its data", b"4\r\n" + chat + b"\r\n0\r\n\r\n"),
        ("hex garbage size", b"zz\r\n" + chat + b"\r\n0\r\n\r\n"),
        ("huge size", b"ffffffffffffffffff\r\n" + chat + b"\r\n0\r\n\r\n"),
        ("negative size", b"-5\r\nhello\r\n0\r\n\r\n"),
        ("no final chunk", _chunked([chat], end=b"")),
        ("no CRLF after data", b"%x\r\n" % len(chat) + chat + b"0\r\n\r\n"),
    )
    for name, body in lies:
        yield Probe(name, raw(body), well_formed=False, half_close=True)
    yield Probe(
        "content-length longer than the body",
        http_request("POST", route, chat, [("content-length", str(len(chat) + 50))]),
        well_formed=False,
        half_close=True,
    )
    yield Probe(
        "content-length shorter than the body",
        http_request("POST", route, chat, [("content-length", "10")]),
        well_formed=False,
        half_close=True,
    )


def test_chunked_bodies_that_lie(gateway: Gateway, request: pytest.FixtureRequest) -> None:
    tally = Tally("chunked")
    asyncio.run(run(gateway, tally, chunked_probes()))
    finish(request, tally)


ODD_PATHS = (
    "/v1/tasks/",
    "/v1/tasks/%00",
    "/v1/tasks/%FF%FE",
    "/v1/tasks/" + "a" * 10_000,
    "/v1/tasks/t/../t",
    "/v1/tasks/t%2F..%2Fchat",
    "//v1/chat/completions",
    "/v1/chat/completions/",
    "/v1/chat/completions?stream=true",
    "/V1/CHAT/COMPLETIONS",
    "/admin/keys/%2F..%2F",
    "/admin/keys/" + "k" * 5000,
    "/admin/review/-1",
    "/admin/review/0",
    "/admin/review/1e5",
    "/admin/review/%C2%B2",
    "/admin/review/%D9%A1",
    "/admin/review/00000000000000000000001",
    "/admin/review/9223372036854775807",
    "/admin/review/9223372036854775808",
    "/admin/review/99999999999999999999999",
    "/admin/review/1/2",
    "/admin/usage?tenant=%00",
    "/admin/usage?tenant=%FF%FE",
    "/admin/usage?tenant=acme&tenant=x",
    "/admin/keys?tenant=" + "t" * 5000,
    "/admin/review?status=%FF",
    "/admin/review?status=all&task=chat&release=v1",
    "/admin/review?" + "&".join(f"k{i}=v" for i in range(2000)),
    "/readyz?%%%",
    "/metrics?name[]=x",
    "*",
    "http://127.0.0.1/v1/models",
    "/%",
    "/%zz",
)


def test_odd_paths(gateway: Gateway, request: pytest.FixtureRequest) -> None:
    tally = Tally("paths")
    body = orjson.dumps({"label": "accept", "by": "fuzzer"})
    probes = [
        Probe(f"{m} {p[:60]}", http_request(m, p, body if m == "POST" else None))
        for p in ODD_PATHS
        for m in ("GET", "POST")
    ]
    probes += [Probe(f"DELETE {p[:60]}", http_request("DELETE", p)) for p in ODD_PATHS if p.startswith("/admin/keys")]
    asyncio.run(run(gateway, tally, probes))
    finish(request, tally)


@pytest.mark.parametrize(("key", "length"), [("sk-wrong", 1000), (TENANT_KEY, 99_999_999)])
def test_a_refusal_before_100_continue_closes_the_connection(gateway: Gateway, key: str, length: int) -> None:
    """Refused (401, 413) before its body was asked for, a client waiting for ``100 Continue``
    sends no body: kept open, its next request on the connection was read as that body (a
    hang, or 400 'Invalid HTTP request'). The answer says ``connection: close`` and closes."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer %b\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\nexpect: 100-continue\r\n\r\n"
            % (key.encode(), length)
        )
        answer = b""
        while chunk := conn.recv(65536):  # to the end: the server closes
            answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith((b"http/1.1 401", b"http/1.1 413")) and b"100 continue" not in head
    assert b"\r\nconnection: close" in head
