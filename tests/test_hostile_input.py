"""Bad input is a 4xx naming the field, never a 500: each case here was a 500 (or was taken
as valid) before, found by the fuzzers (tests/test_contract.py, tests/test_fuzz_raw.py) or
reported in issue 12. In-process, through the error boundary, with a scripted upstream."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from openapi_spec_validator import validate

from tests.asgi import Response, request
from tests.conftest import AppFactory
from tests.fakes.scripted import ScriptedProvider, Step
from tests.test_task_api import CONFIG, StaticRegistry, release
from turnout.releases.base import Serving
from turnout.serving import openapi
from turnout.serving.app import App
from turnout.serving.asgi import MAX_DEPTH

KEY = "sk-acme-hostile-0123456789"
ADMIN = "adm-hostile-0123456789abcdef"
USER = {"authorization": f"Bearer {KEY}"}
ADMIN_HEADERS = {"authorization": f"Bearer {ADMIN}"}
MESSAGES = [{"role": "user", "content": "hi"}]


async def start(make_app: AppFactory, tmp_path: Path) -> App:
    raw = {
        "server": {"admin_key": ADMIN},
        "capture": {"mode": "redacted", "redaction_key": "hostile-key-0123456789"},
        "releases": {"store_path": str(tmp_path / "releases.db")},
        "targets": {"up": {"provider": "openai", "base_url": "http://up.invalid/v1", "model": "m"}},
        "tenants": {"acme": {"keys": [KEY]}},
        "tasks": {"chat": {"route": ["up"], "review_rate": 1.0}, "t": {"route": ["up"]}},
    }
    return await make_app(raw, {"up": ScriptedProvider("up", *(Step(text="fine") for _ in range(50)))})


async def chat(app: App, **body: Any) -> Response:
    return await request(app, "POST", "/v1/chat/completions", {"model": "chat", "messages": MESSAGES, **body}, USER)


def refused(resp: Response, param: str, status: int = 400) -> None:
    assert resp.status == status, resp.body
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param, error


@pytest.mark.parametrize("user", [["a"], 12345, {"a": 1}, True])
async def test_chat_metadata_user_must_be_a_string(make_app: AppFactory, tmp_path: Path, user: Any) -> None:
    app = await start(make_app, tmp_path)
    refused(await chat(app, metadata={"user": user}), "metadata.user")


@pytest.mark.parametrize("data_class", [["public"], 3, "secret"])
async def test_chat_metadata_data_class_is_named_when_wrong(
    make_app: AppFactory, tmp_path: Path, data_class: Any
) -> None:
    app = await start(make_app, tmp_path)
    refused(await chat(app, metadata={"data_class": data_class}), "metadata.data_class")


async def test_chat_metadata_as_before_when_right(make_app: AppFactory, tmp_path: Path) -> None:
    app = await start(make_app, tmp_path)
    resp = await chat(app, metadata={"user": "u-1", "data_class": "PUBLIC", "episode_id": "e-1", "kept": "x"})
    assert resp.status == 200, resp.body


@pytest.mark.parametrize("role", [{}, [], ["user"], 1, None])
async def test_an_unhashable_or_missing_role_is_a_400(make_app: AppFactory, tmp_path: Path, role: Any) -> None:
    app = await start(make_app, tmp_path)
    refused(await chat(app, messages=[{"role": role, "content": "hi"}]), "messages[0].role")


@pytest.mark.parametrize("kind", [{}, [], 1, None])
async def test_a_content_part_type_must_be_a_string(make_app: AppFactory, tmp_path: Path, kind: Any) -> None:
    app = await start(make_app, tmp_path)
    resp = await chat(app, messages=[{"role": "user", "content": [{"type": kind, "text": "hi"}]}])
    refused(resp, "messages[0].content")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"user": 5}, "user"),
        ({"metadata": {"user": ["a"]}}, "metadata.user"),
        ({"metadata": {"data_class": {}}}, "metadata.data_class"),
        ({"metadata": {"data_class": "nope"}}, "metadata.data_class"),
    ],
)
async def test_task_user_and_data_class_must_be_strings(
    make_app: AppFactory, tmp_path: Path, body: dict[str, Any], param: str
) -> None:
    app = await start(make_app, tmp_path)
    refused(await request(app, "POST", "/v1/tasks/t", {"variables": {}, **body}, USER), param)


@pytest.mark.parametrize(
    "item",
    ["99999999999999999999999", "9223372036854775808", "²", "١", "-1", "1e3", "0x1", " 1"],
)
async def test_a_review_id_sqlite_cannot_hold_is_a_404(make_app: AppFactory, tmp_path: Path, item: str) -> None:
    app = await start(make_app, tmp_path)
    resp = await request(app, "POST", f"/admin/review/{item}", {"label": "accept", "by": "me"}, ADMIN_HEADERS)
    assert resp.status == 404, resp.body
    assert resp.json()["error"]["code"] == "not_found"


async def test_the_largest_review_id_is_looked_up(make_app: AppFactory, tmp_path: Path) -> None:
    app = await start(make_app, tmp_path)
    assert (await chat(app)).status == 200  # sampled: item 1
    for item, status in (("1", 200), ("9223372036854775807", 404)):
        resp = await request(app, "POST", f"/admin/review/{item}", {"label": "accept", "by": "me"}, ADMIN_HEADERS)
        assert resp.status == status, resp.body


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"label": 1, "by": "me"}, "label"),
        ({"label": "accept", "by": ["me"]}, "by"),
        ({"label": "accept", "by": "me", "note": {}}, "note"),
        ({"label": "maybe", "by": "me"}, "label"),
    ],
)
async def test_a_review_label_names_the_field_at_fault(
    make_app: AppFactory, tmp_path: Path, body: dict[str, Any], param: str
) -> None:
    app = await start(make_app, tmp_path)
    refused(await request(app, "POST", "/admin/review/1", body, ADMIN_HEADERS), param)


@pytest.mark.parametrize("name", [5, ["a"], {"a": 1}, "n" * 201])
async def test_an_issued_key_name_must_be_a_short_string(make_app: AppFactory, tmp_path: Path, name: Any) -> None:
    app = await start(make_app, tmp_path)
    refused(await request(app, "POST", "/admin/keys", {"tenant": "acme", "name": name}, ADMIN_HEADERS), "name")


def with_nested(body: dict[str, Any], depth: int) -> bytes:
    """``body`` as JSON text with each "NESTED" string replaced by ``depth`` nested arrays (the
    JSON writer itself stops at 254)."""
    return orjson.dumps(body).replace(b'"NESTED"', b"[" * depth + b"1" + b"]" * depth)


async def test_a_body_nested_past_the_limit_is_a_400_naming_its_field(make_app: AppFactory, tmp_path: Path) -> None:
    """Deeper than the JSON writer goes, it was a 500 when forwarded; the limit leaves room."""
    app = await start(make_app, tmp_path)

    async def chat_raw(body: dict[str, Any], depth: int) -> Response:
        raw = with_nested({"model": "chat", "messages": MESSAGES, **body}, depth)
        return await request(app, "POST", "/v1/chat/completions", headers=USER, raw=raw)

    # The body is level 1: a field at the limit holds MAX_DEPTH - 1 levels.
    assert (await chat_raw({"extra": "NESTED"}, MAX_DEPTH - 1)).status == 200
    for depth in (MAX_DEPTH, 300, 1000):
        resp = await chat_raw({"extra": "NESTED"}, depth)
        refused(resp, "extra")
        assert resp.json()["error"]["code"] == "too_deep"
    deep_part = [{"role": "user", "content": [{"type": "text", "x": "NESTED"}]}]
    refused(await chat_raw({"messages": deep_part}, MAX_DEPTH), "messages")
    feedback = with_nested({"request_id": "r", "outcome": "success", "labels": "NESTED"}, MAX_DEPTH)
    refused(await request(app, "POST", "/v1/feedback", headers=USER, raw=feedback), "labels")


async def test_many_shallow_containers_are_not_too_deep(make_app: AppFactory, tmp_path: Path) -> None:
    app = await start(make_app, tmp_path)
    many = [{"role": "user", "content": [{"type": "text", "text": str(i)}]} for i in range(500)]
    assert (await chat(app, messages=many)).status == 200


async def refused_with_body_left(app: App, path: str, headers: dict[str, str]) -> tuple[int, int]:
    """Send a body in 8 parts to a route that refuses before reading it; (status, parts left
    unread when the answer began)."""
    body = orjson.dumps({"model": "chat", "messages": MESSAGES, "pad": "x" * 8000})
    parts = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    head = [(k.encode(), v.encode()) for k, v in headers.items()]
    head.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "method": "POST", "path": path, "headers": head, "query_string": b""}
    left_at_answer: list[int] = []

    async def receive() -> dict[str, Any]:
        if parts:
            part = parts.pop(0)
            return {"type": "http.request", "body": part, "more_body": bool(parts)}
        await asyncio.sleep(3600)
        raise AssertionError("read past the body")

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            left_at_answer.append(len(parts))
            sent.append(message["status"])

    sent: list[int] = []
    await app.http(scope, receive, send)
    return sent[0], left_at_answer[0]


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/v1/chat/completions", {"authorization": "Bearer wrong"}, 401),
        ("/admin/keys", {"authorization": f"Bearer {KEY}"}, 403),
        ("/v1/models", USER, 405),
        ("/nowhere", USER, 404),
    ],
)
async def test_a_refusal_before_the_body_drains_it_first(
    make_app: AppFactory, tmp_path: Path, path: str, headers: dict[str, str], status: int
) -> None:
    """Closing on unread bytes resets the connection and the client never reads its answer."""
    app = await start(make_app, tmp_path)
    assert await refused_with_body_left(app, path, headers) == (status, 0)


async def test_a_body_read_whole_is_not_read_again(make_app: AppFactory, tmp_path: Path) -> None:
    app = await start(make_app, tmp_path)
    refused(await chat(app, temperature=9), "temperature")  # read, then refused: nothing to drain


async def test_the_description_is_served_and_is_openapi_3_1(make_app: AppFactory, tmp_path: Path) -> None:
    app = await start(make_app, tmp_path)
    resp = await request(app, "GET", "/openapi.json")
    assert resp.status == 200 and resp.headers["content-type"] == "application/json"
    document = resp.json()
    validate(document)
    assert document == openapi.document() and document["openapi"] == "3.1.0"
    assert (await request(app, "POST", "/openapi.json", {})).status == 405


@pytest.mark.parametrize("depth", [MAX_DEPTH, 300])
async def test_a_task_answer_nested_too_deep_is_a_502_not_a_500(make_app: AppFactory, depth: int) -> None:
    """The model's JSON passes a shallow output schema at any depth; past what the writer can
    write, answering it was a 500."""
    deep = '{"order_id": "A-17", "x": ' + "[" * depth + "]" * depth + "}"
    primary = ScriptedProvider("primary", Step(text=deep))
    app = await make_app(CONFIG, {"primary": primary, "secondary": ScriptedProvider("secondary")})
    app.runtime.releases = StaticRegistry(Serving(release("v1")))
    resp = await request(app, "POST", "/v1/tasks/extract", {"variables": {"text": "order A-17"}})
    assert resp.status == 502, resp.body
    assert resp.json()["error"]["code"] == "output_invalid"
