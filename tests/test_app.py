"""The HTTP API in-process: statuses, error shapes, headers, fallback, policy, streams, ledger."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from tests.asgi import ledger_rows as rows
from tests.asgi import request
from tests.conftest import AppFactory
from tests.fakes.scripted import ScriptedProvider, Step
from turnout.errors import (
    ContextWindowExceeded,
    Overloaded,
    RequestError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from turnout.offline.reports.figures import Column
from turnout.offline.reports.render import cell
from turnout.serving import openapi
from turnout.serving.app import App
from turnout.serving.pipeline import _data_class
from turnout.serving.runtime import pseudonym

KEY = "sk-acme-0123456789"
OTHER_KEY = "sk-other-0123456789"
AUTH = {"authorization": f"Bearer {KEY}"}
MESSAGES = [{"role": "user", "content": "hi"}]


def config(**extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "targets": {
            "primary": {
                "provider": "openai",
                "base_url": "http://primary.invalid/v1",
                "model": "m1",
                "retry": {"attempts": 2, "backoff_ms": 1},
            },
            "secondary": {"provider": "openai", "base_url": "http://secondary.invalid/v1", "model": "m2"},
            "onprem": {"provider": "openai", "base_url": "http://onprem.invalid/v1", "model": "m3"},
        },
        "tenants": {
            "acme": {"keys": [KEY], "data_classes": ["public", "internal", "confidential", "restricted"]},
            "other": {"keys": [OTHER_KEY], "data_classes": ["public"], "tasks": ["chat"]},
        },
        "policy": {"restricted": {"targets": ["onprem"]}},
        "tasks": {
            "chat": {"route": ["primary", "secondary"]},
            "private": {"route": ["primary", "secondary", "onprem"]},
        },
    }
    raw.update(extra)
    return raw


async def setup(make_app: AppFactory, **providers: ScriptedProvider) -> tuple[App, dict[str, ScriptedProvider]]:
    fakes = {name: providers.get(name) or ScriptedProvider(name) for name in ("primary", "secondary", "onprem")}
    app = await make_app(config(), dict(fakes))
    return app, fakes


async def chat(app: App, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None, **kw: Any) -> Any:
    payload = {"model": "chat", "messages": MESSAGES, **(body or {})}
    return await request(app, "POST", "/v1/chat/completions", payload, {**AUTH, **(headers or {})}, **kw)


async def test_completion_names_the_task_and_carries_turnout_headers(make_app: AppFactory) -> None:
    app, _ = await setup(make_app)
    resp = await chat(app)
    assert resp.status == 200
    body = resp.json()
    assert body["model"] == "chat"
    assert body["choices"][0]["message"]["content"] == "hello from the fake"
    rid = resp.headers["x-turnout-request-id"]
    assert body["id"] == f"chatcmpl-{rid}"
    assert resp.headers["x-turnout-task"] == "chat"
    assert resp.headers["x-turnout-target"] == "primary"
    assert resp.headers["x-turnout-model-version"] == "fake-v1"
    assert resp.headers["x-turnout-attempts"] == "1"
    assert resp.headers["x-turnout-fallback"] == "false"
    assert resp.headers["x-turnout-release"] == "none"
    assert resp.headers["x-turnout-prompt-version"] == "none"


@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_model_name_cannot_break_the_answer_head(make_app: AppFactory, stream: bool) -> None:
    # The upstream's "model" is the answer's X-Turnout-Model-Version: a line break in it made
    # the server refuse the head, and the caller got an empty reply instead of its answer.
    hostile = ScriptedProvider("primary", Step(model_version="v2\r\nSet-Cookie: stolen=1\x00"))
    app, _ = await setup(make_app, primary=hostile)
    resp = await chat(app, {"stream": stream})
    assert resp.status == 200
    assert resp.headers["x-turnout-model-version"] == "v2??Set-Cookie: stolen=1?"
    assert "set-cookie" not in resp.headers


async def test_body_reaches_the_target_without_turnout_metadata(make_app: AppFactory) -> None:
    app, fakes = await setup(make_app)
    body = {
        "temperature": 0.2,
        "seed": 7,
        "stop": ["\n"],
        "max_tokens": 5,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "response_format": {"type": "json_object"},
        "metadata": {"data_class": "public", "user": "u1", "trace": "x"},
    }
    assert (await chat(app, body)).status == 200
    sent = fakes["primary"].calls[0].body
    assert sent["metadata"] == {"trace": "x"}
    assert sent["seed"] == 7 and sent["tools"][0]["function"]["name"] == "f"
    assert sent["response_format"] == {"type": "json_object"}
    [row] = await rows(app)
    assert row.data_class == "public"
    assert row.user == pseudonym(app.runtime.secret, "u1")  # the end user, not their id


@pytest.mark.parametrize(
    ("raw", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (orjson.dumps({"messages": MESSAGES}), 400, "model"),
        (orjson.dumps({"model": "chat", "messages": []}), 400, "messages"),
        (orjson.dumps({"model": "chat", "messages": [{"role": "wizard", "content": "x"}]}), 400, "messages[0].role"),
        (orjson.dumps({"model": "chat", "messages": MESSAGES, "temperature": 3}), 400, "temperature"),
        (orjson.dumps({"model": "chat", "messages": MESSAGES, "max_tokens": True}), 400, "max_tokens"),
        (
            orjson.dumps({"model": "chat", "messages": MESSAGES, "stream_options": {"include_usage": True}}),
            400,
            "stream_options",
        ),
        (orjson.dumps({"model": "nope", "messages": MESSAGES}), 404, "model"),
    ],
)
async def test_bad_requests_get_openai_errors(make_app: AppFactory, raw: bytes, status: int, param: str | None) -> None:
    app, fakes = await setup(make_app)
    resp = await request(app, "POST", "/v1/chat/completions", raw=raw, headers=AUTH)
    assert resp.status == status
    err = resp.json()["error"]
    assert err["message"] and err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert not fakes["primary"].calls
    [row] = await rows(app)
    assert row.status == status


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong-key-123"}, {"authorization": "Basic x"}])
async def test_missing_or_bad_key_is_401(make_app: AppFactory, headers: dict[str, str]) -> None:
    app, _ = await setup(make_app)
    resp = await request(app, "POST", "/v1/chat/completions", {"model": "chat", "messages": MESSAGES}, headers)
    assert resp.status == 401
    assert resp.json()["error"]["type"] == "authentication_error"


async def test_body_over_the_limit_is_413(make_app: AppFactory) -> None:
    app = await make_app(
        {**config(), "server": {"max_body_bytes": 1000}},
        {n: ScriptedProvider(n) for n in ("primary", "secondary", "onprem")},
    )
    big = {"model": "chat", "messages": [{"role": "user", "content": "x" * 5000}]}
    assert (await request(app, "POST", "/v1/chat/completions", big, AUTH)).status == 413
    # without a content-length, counted as the body streams in
    raw = orjson.dumps(big)
    resp = await request(
        app, "POST", "/v1/chat/completions", raw=raw, chunk_size=300, headers={**AUTH, "content-length": "x"}
    )
    assert resp.status == 413
    assert resp.json()["error"]["code"] == "body_too_large"


async def test_tenant_sees_and_uses_only_its_tasks(make_app: AppFactory) -> None:
    app, _ = await setup(make_app)
    models = await request(app, "GET", "/v1/models", headers={"authorization": f"Bearer {OTHER_KEY}"})
    assert [m["id"] for m in models.json()["data"]] == ["chat"]
    resp = await chat(app, {"model": "private"}, {"authorization": f"Bearer {OTHER_KEY}"})
    assert resp.status == 404
    all_models = await request(app, "GET", "/v1/models", headers=AUTH)
    assert {m["id"] for m in all_models.json()["data"]} == {"chat", "private"}


async def test_tenant_may_not_send_a_data_class_it_lacks(make_app: AppFactory) -> None:
    app, _ = await setup(make_app)
    resp = await chat(app, headers={"authorization": f"Bearer {OTHER_KEY}", "x-turnout-data-class": "internal"})
    assert resp.status == 403
    assert resp.json()["error"]["type"] == "permission_denied"
    assert resp.json()["error"]["param"] == "X-Turnout-Data-Class"
    assert (await chat(app, headers={"x-turnout-data-class": "secret"})).status == 400
    # Declared in the body: the refusal names the field the client sent, not a header it never did.
    other = {"authorization": f"Bearer {OTHER_KEY}"}
    resp = await chat(app, {"metadata": {"data_class": "internal"}}, other)
    assert resp.status == 403 and resp.json()["error"]["param"] == "metadata.data_class"
    resp = await chat(app, {"metadata": {"data_class": "public"}}, other | {"x-turnout-data-class": "internal"})
    assert resp.status == 403 and resp.json()["error"]["param"] == "X-Turnout-Data-Class"


@pytest.mark.parametrize(
    ("header", "metadata"),
    [("public", "restricted"), ("restricted", "public"), ("public, restricted", None), ("Restricted,public", None)],
)
async def test_conflicting_declarations_take_the_strictest_class(
    make_app: AppFactory, header: str, metadata: str | None
) -> None:
    """Seen: header ``public`` and ``metadata.data_class: restricted`` went out as public, to a
    target restricted data may not reach. Fail closed: the strictest declared class applies."""
    app, fakes = await setup(make_app)
    body: dict[str, Any] = {"model": "private"}
    if metadata is not None:
        body["metadata"] = {"data_class": metadata}
    resp = await chat(app, body, {"x-turnout-data-class": header})
    assert resp.status == 200, resp.body
    assert resp.headers["x-turnout-target"] == "onprem"
    assert not fakes["primary"].calls and not fakes["secondary"].calls
    [row] = await rows(app)
    assert row.data_class == "restricted"


def test_a_repeated_data_class_header_takes_the_strictest() -> None:
    two = {"headers": [(b"x-turnout-data-class", b"public"), (b"X-Turnout-Data-Class", b"confidential")]}
    assert _data_class(two, b"public", None) == "confidential"
    assert _data_class(two, b"public", "restricted") == "restricted"
    one = {"headers": [(b"x-turnout-data-class", b"PUBLIC")]}
    assert _data_class(one, b"PUBLIC", None) == "public"
    assert _data_class({"headers": []}, None, None) == "internal"  # nothing declared
    with pytest.raises(RequestError):
        _data_class({"headers": [(b"x-turnout-data-class", b"public, secret")]}, b"public, secret", None)


async def test_an_unknown_task_name_is_kept_and_echoed_printable_and_short(make_app: AppFactory) -> None:
    """Seen: a ``model`` of escape sequences went into the ledger as it came and ``turnout report``
    printed it raw (the caller drove the operator's terminal, forged report lines); a name of
    500,000 characters was kept and echoed whole."""
    app, _ = await setup(make_app)
    hostile = "\x1b[31mRED\x1b]0;pwned\x07\r\nFAKE LINE"
    resp = await chat(app, {"model": hostile})
    assert resp.status == 404
    assert "\x1b" not in resp.json()["error"]["message"]
    long = await chat(app, {"model": "t" * 500_000})
    assert long.status == 404 and len(long.body) < 1000
    found = sorted(await rows(app), key=lambda r: len(r.task))
    assert found[0].task == "?[31mRED?]0;pwned???FAKE LINE"
    assert len(found[1].task) == 100 and found[1].task.endswith("…")


async def test_an_unknown_task_name_keeps_no_key_in_the_ledger(make_app: AppFactory) -> None:
    """Seen: a ``model`` carrying an OpenAI key, an AWS key id and an email was kept as it came
    in the ledger's task column (the access log had them redacted)."""
    app, _ = await setup(make_app)
    model = "ZEBRA key sk-proj-AbCdEfGhIjKlMnOpQrStUvWx0123 aws AKIAZ7Q3XK5N2B4MPL6R mail jane@example.org"
    assert (await chat(app, {"model": model})).status == 404
    [row] = await rows(app)
    assert "sk-proj" not in row.task and "AKIAZ7Q3" not in row.task and "jane@" not in row.task
    assert row.task.startswith("ZEBRA key [") and "[EMAIL]" in row.task


async def test_a_400_for_a_real_task_keeps_its_task_in_the_ledger(make_app: AppFactory) -> None:
    """Seen: a request whose ``model`` named a configured task and whose messages were malformed
    was kept with an empty task: the 400s of a task went missing from its report."""
    app, _ = await setup(make_app)
    resp = await chat(app, {"messages": [{"role": "user"}]})
    assert resp.status == 400
    unknown = await chat(app, {"model": "ghost", "messages": "nope"})  # a name the gateway does not know
    assert unknown.status == 400
    known = await request(app, "POST", "/v1/messages", {"model": "chat", "max_tokens": "x"}, AUTH)
    assert known.status == 400
    found = sorted((r.endpoint, r.status, r.task) for r in await rows(app))
    assert found == [("chat.completions", 400, ""), ("chat.completions", 400, "chat"), ("messages", 400, "chat")]


async def test_a_400_for_a_task_named_by_the_path_keeps_it_printable(make_app: AppFactory) -> None:
    """The task API's path names the task before its body is read: a body it cannot parse keeps
    that name, made printable and masked like any name a client chose."""
    app, _ = await setup(make_app)
    path = "/v1/tasks/a\x1b[31m sk-proj-AbCdEfGhIjKlMnOpQrStUvWx0123"
    assert (await request(app, "POST", path, raw=b"{", headers=AUTH)).status == 400
    [row] = await rows(app)
    assert row.task.startswith("a?[31m ") and "sk-proj-AbCd" not in row.task


async def test_a_request_refused_before_any_target_costs_zero_not_unknown(make_app: AppFactory) -> None:
    """Seen: 400s, 403s and 404s were kept with no cost, and ``turnout report cost`` called a
    task of refusals "unpriced": they reached no target and cost exactly $0. An answer from a
    target without a price stays unknown."""
    app, _ = await setup(make_app)
    assert (await chat(app, {"messages": [{"role": "user"}]})).status == 400
    assert (await chat(app, {"model": "private"}, {"authorization": f"Bearer {OTHER_KEY}"})).status == 404
    assert (await chat(app, {"model": "private"}, {"x-turnout-data-class": "restricted"})).status == 200
    other = {"authorization": f"Bearer {OTHER_KEY}", "x-turnout-data-class": "internal"}
    assert (await chat(app, headers=other)).status == 403
    found = sorted((r.status, r.cost_usd, r.attempts) for r in await rows(app))
    assert [(status, cost) for status, cost, _ in found] == [(200, None), (400, 0.0), (403, 0.0), (404, 0.0)]
    assert [len(attempts) for _, _, attempts in found] == [1, 0, 0, 0]


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_an_upstream_refusing_the_gateways_own_call_falls_back_and_never_blames_the_caller(
    make_app: AppFactory, status: int
) -> None:
    """Seen: a server refusing the gateway's own key (or serving no such model) answered the
    caller 401 ``authentication_error``, as if the caller's key were wrong, and the next target
    was never tried: the caller chose neither the key nor the model."""
    refused = UpstreamStatusError(status, "the server refused the gateway's credentials")
    app, fakes = await setup(make_app, primary=ScriptedProvider("primary", Step(refused)))
    resp = await chat(app)
    assert resp.status == 200 and resp.headers["x-turnout-target"] == "secondary"
    assert len(fakes["primary"].calls) == 1  # not retried: the same key fails the same way

    alone = ScriptedProvider("primary", Step(refused), Step(refused))
    app, _ = await setup(make_app, primary=alone, secondary=ScriptedProvider("secondary", Step(refused)))
    resp = await chat(app)
    assert resp.status == 502 and resp.json()["error"]["code"] == "all_targets_failed"


async def test_an_upstream_error_echoing_the_prompt_reaches_the_client_masked(make_app: AppFactory) -> None:
    """Seen: an upstream's 400 echoing the prompt (a system prompt with an email and a card)
    went back word for word, past the task's checks: the status and words stay, those values go."""
    echoed = "bad prompt: write jane.secret@example.org, card 4111 1111 1111 1111"
    primary = ScriptedProvider("primary", Step(UpstreamStatusError(400, echoed)))
    app, _ = await setup(make_app, primary=primary)
    resp = await chat(app)
    assert resp.status == 400 and resp.json()["error"]["code"] == "upstream_rejected"
    message = resp.json()["error"]["message"]
    assert "bad prompt: write [EMAIL]" in message and "4111" not in message and "jane" not in message


@pytest.mark.parametrize("part", [{"type": "text", "text": 5}, {"type": "text"}, {"type": "text", "text": None}])
async def test_a_text_part_without_a_text_is_a_400(make_app: AppFactory, part: dict[str, Any]) -> None:
    """Seen: forwarded as it came; the upstream's 500 became a 502 and counted against its breaker."""
    app, fakes = await setup(make_app)
    resp = await chat(app, {"messages": [{"role": "user", "content": [part]}]})
    assert resp.status == 400 and resp.json()["error"]["param"] == "messages[0].content[0].text"
    assert not fakes["primary"].calls


def test_report_cells_print_no_control_characters() -> None:
    column = Column("task", "task", "text")
    assert cell(column, "\x1b[2Jwiped\r\nforged") == "?[2Jwiped??forged"
    assert cell(column, "support-reply") == "support-reply"


async def test_a_compressed_body_is_refused_not_read_as_plain(make_app: AppFactory) -> None:
    """Seen: ``Content-Encoding: gzip`` over a plain JSON body was read as JSON, and a real gzip
    body would have been "not valid JSON". Only identity is accepted; anything else is 415."""
    app, fakes = await setup(make_app)
    for encoding in ("gzip", "br", "deflate, gzip"):
        resp = await chat(app, headers={"content-encoding": encoding})
        assert resp.status == 415
        assert resp.json()["error"]["code"] == "unsupported_content_encoding"
    assert (await chat(app, headers={"content-encoding": "identity"})).status == 200
    assert len(fakes["primary"].calls) == 1


def test_every_operation_that_reads_a_body_describes_its_415() -> None:
    """Every route that reads a body answers 415 to a compressed one (``read_body``), and
    /openapi.json listed 413 for each of them but never 415."""
    for path, operations in openapi.document()["paths"].items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            if "413" in statuses or "requestBody" in operation:
                assert "415" in statuses, f"{method.upper()} {path}"


async def test_restricted_never_falls_back_outside_its_allowed_set(make_app: AppFactory) -> None:
    broken = ScriptedProvider("onprem", Step(UpstreamStatusError(500, "boom")))
    app, fakes = await setup(make_app, onprem=broken)
    resp = await chat(app, {"model": "private"}, {"x-turnout-data-class": "restricted"})
    assert resp.status == 502
    assert not fakes["primary"].calls and not fakes["secondary"].calls
    assert len(fakes["onprem"].calls) == 2  # retried, but only inside the allowed set
    # a task whose route has no allowed target at all is refused before any attempt
    resp = await chat(app, {"model": "chat"}, {"x-turnout-data-class": "restricted"})
    assert resp.status == 403
    assert not fakes["primary"].calls


async def test_failing_primary_falls_back_and_reports_it(make_app: AppFactory) -> None:
    primary = ScriptedProvider("primary", Step(UpstreamStatusError(500, "boom")))
    app, _ = await setup(make_app, primary=primary)
    resp = await chat(app)
    assert resp.status == 200
    assert resp.headers["x-turnout-target"] == "secondary"
    assert resp.headers["x-turnout-fallback"] == "true"
    assert resp.headers["x-turnout-attempts"] == "3"  # two tries at primary, one at secondary
    [row] = await rows(app)
    assert row.fallback and row.target == "secondary" and row.fallback_ms is not None
    assert [(a.target, a.error_class) for a in row.attempts] == [
        ("primary", "http_500"),
        ("primary", "http_500"),
        ("secondary", None),
    ]


async def test_all_targets_failed_status_follows_the_failures(make_app: AppFactory) -> None:
    down = Step(UpstreamConnectError("connection refused"))
    app, _ = await setup(
        make_app, primary=ScriptedProvider("primary", down), secondary=ScriptedProvider("secondary", down)
    )
    resp = await chat(app)
    assert resp.status == 502
    msg = resp.json()["error"]["message"]
    assert "primary: connection refused" in msg and "secondary: connection refused" in msg

    slow = Step(UpstreamTimeout("ttft", 1.0))
    app, _ = await setup(
        make_app, primary=ScriptedProvider("primary", slow), secondary=ScriptedProvider("secondary", slow)
    )
    assert (await chat(app)).status == 504

    busy = Step(UpstreamStatusError(429, "slow down", retry_after=30))
    app, _ = await setup(
        make_app, primary=ScriptedProvider("primary", busy), secondary=ScriptedProvider("secondary", busy)
    )
    resp = await chat(app)
    assert resp.status == 503
    assert resp.headers["retry-after"] == "30"

    # Throttled without a hint (a 429 and a queue that is full): the 503 still says when to return.
    unhinted = Step(UpstreamStatusError(429, "slow down"))
    app, _ = await setup(
        make_app, primary=ScriptedProvider("primary", unhinted), secondary=ScriptedProvider("secondary", unhinted)
    )
    resp = await chat(app)
    assert resp.status == 503 and resp.headers["retry-after"] == "1"


async def test_a_prompt_too_long_for_every_target_is_openais_context_length_exceeded(make_app: AppFactory) -> None:
    raw = config()
    raw["targets"]["secondary"]["context_window"] = 1024  # smaller: skipped, not called
    too_long = ContextWindowExceeded("primary: prompt is 5000 tokens, the model's context is 2048", window=2048)
    fakes = {name: ScriptedProvider(name) for name in ("secondary", "onprem")}
    app = await make_app(raw, {"primary": ScriptedProvider("primary", Step(too_long)), **fakes})

    resp = await chat(app)
    assert resp.status == 400
    assert resp.json() == {
        "error": {
            "message": "the prompt does not fit the context window of any target (primary: prompt is 5000 tokens, "
            "the model's context is 2048; secondary: skipped: its context window of 1024 tokens is no larger "
            "than 2048)",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }
    assert not fakes["secondary"].calls
    # Each door blames its own prompt field: the Responses API's is ``input``.
    responses = await request(app, "POST", "/v1/responses", {"model": "chat", "input": "hi"}, AUTH)
    assert responses.status == 400
    assert (responses.json()["error"]["code"], responses.json()["error"]["param"]) == (
        "context_length_exceeded",
        "input",
    )


@pytest.mark.parametrize(
    ("busy", "retry_after"),
    [(UpstreamStatusError(429, "slow down", retry_after=30), "30"), (Overloaded("the queue is full"), "1")],
    ids=["429", "full-queue"],
)
@pytest.mark.parametrize("busy_first", [False, True], ids=["too-long-first", "busy-first"])
async def test_a_prompt_too_long_here_while_the_other_target_is_busy_is_busy(
    make_app: AppFactory, busy: UpstreamError, retry_after: str, busy_first: bool
) -> None:
    """Too long for one target, the other busy: the busy one may take it once it has room, so
    it is the all-busy answer (503 and when to come back), neither a 502 nor the prompt's 400."""
    too_long = ContextWindowExceeded("prompt is 5000 tokens, the model's context is 2048", window=2048)
    steps = {"primary": Step(busy), "secondary": Step(too_long)}
    if not busy_first:
        steps = {"primary": Step(too_long), "secondary": Step(busy)}
    app, _ = await setup(make_app, **{name: ScriptedProvider(name, step) for name, step in steps.items()})

    resp = await chat(app)

    assert resp.status == 503, resp.body
    assert resp.headers["retry-after"] == retry_after
    error = resp.json()["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "all_targets_failed")
    assert "prompt is 5000 tokens" in error["message"] and str(busy.message) in error["message"]


async def test_a_request_the_target_rejects_is_not_retried_elsewhere(make_app: AppFactory) -> None:
    primary = ScriptedProvider("primary", Step(UpstreamStatusError(400, "context too long")))
    app, fakes = await setup(make_app, primary=primary)
    resp = await chat(app)
    assert resp.status == 400
    assert "context too long" in resp.json()["error"]["message"]
    assert len(primary.calls) == 1 and not fakes["secondary"].calls


async def test_breaker_opens_then_recovers_through_half_open(make_app: AppFactory) -> None:
    raw = config()
    raw["targets"]["primary"]["breaker"] = {"failures": 2, "cooldown_s": 0.05}
    raw["targets"]["primary"]["retry"] = {"attempts": 1}
    primary = ScriptedProvider("primary", Step(UpstreamStatusError(503, "down")))
    fakes = {"primary": primary, "secondary": ScriptedProvider("secondary"), "onprem": ScriptedProvider("onprem")}
    app = await make_app(raw, dict(fakes))
    breaker = app.runtime.targets["primary"].breaker
    for _ in range(2):
        assert (await chat(app)).headers["x-turnout-target"] == "secondary"
    assert breaker.state == "open"
    resp = await chat(app)  # skipped without a call while open
    assert resp.headers["x-turnout-target"] == "secondary"
    assert len(primary.calls) == 2
    primary.steps = [Step()]  # the primary heals
    await asyncio.sleep(0.06)
    resp = await chat(app)  # the half-open probe goes to the primary and closes the breaker
    assert resp.headers["x-turnout-target"] == "primary"
    assert breaker.state == "closed"
    assert [(a.value, b.value) for a, b in breaker.transitions] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


async def test_stream_relays_chunks_and_honours_include_usage(make_app: AppFactory) -> None:
    app, _ = await setup(make_app)
    resp = await chat(app, {"stream": True})
    assert resp.status == 200 and resp.headers["content-type"] == "text/event-stream"
    events = resp.events()
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text.strip() == "hello from the fake"
    assert all("usage" not in e for e in events[:-1])
    assert {e["model"] for e in events[:-1]} == {"chat"}

    resp = await chat(app, {"stream": True, "stream_options": {"include_usage": True}})
    events = resp.events()
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 4
    ledger = await rows(app)
    assert all(r.completion_tokens == 4 and r.ttft_ms is not None for r in ledger)


async def test_stream_falls_back_before_the_first_byte(make_app: AppFactory) -> None:
    primary = ScriptedProvider("primary", Step(UpstreamConnectError("refused")))
    app, _ = await setup(make_app, primary=primary)
    resp = await chat(app, {"stream": True})
    assert resp.status == 200
    assert resp.headers["x-turnout-target"] == "secondary"
    assert resp.events()[-1] == "[DONE]"


async def test_stream_failure_after_first_byte_ends_with_an_error_event(make_app: AppFactory) -> None:
    primary = ScriptedProvider("primary", Step(UpstreamConnectError("reset"), text="a b c d", fail_after=2))
    app, fakes = await setup(make_app, primary=primary)
    resp = await chat(app, {"stream": True})
    events = resp.events()
    assert resp.headers["x-turnout-target"] == "primary"
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "stream_interrupted"
    assert not fakes["secondary"].calls  # no switch once bytes have reached the client
    [row] = await rows(app)
    assert row.status == 502 and row.error_class == "connect"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "chat", "messages": MESSAGES}),
        ("/v1/messages", {"model": "chat", "max_tokens": 8, "messages": MESSAGES}),
        ("/v1/responses", {"model": "chat", "input": "hi"}),
    ],
)
async def test_an_upstream_error_mid_stream_echoing_the_prompt_reaches_the_client_masked(
    make_app: AppFactory, path: str, body: dict[str, Any]
) -> None:
    """Seen on the Messages and Responses APIs: an upstream's error after the first byte went
    into the stream's error event word for word (chat's was masked), an email and a card that
    the prompt held among them."""
    echoed = "bad prompt: write jane.secret@example.org, card 4111 1111 1111 1111"
    primary = ScriptedProvider("primary", Step(UpstreamStatusError(400, echoed), text="a b c d", fail_after=2))
    app, _ = await setup(make_app, primary=primary)
    resp = await request(app, "POST", path, {**body, "stream": True}, AUTH)
    text = resp.body.decode()
    assert resp.status == 200 and "bad prompt: write [EMAIL]" in text
    assert "4111" not in text and "jane" not in text


async def test_client_disconnect_closes_the_upstream_stream(make_app: AppFactory) -> None:
    primary = ScriptedProvider("primary", Step(text=" ".join(["w"] * 200)))
    app, _ = await setup(make_app, primary=primary)
    resp = await chat(app, {"stream": True}, disconnect_after=3)
    assert len(resp.chunks) < 20
    assert primary.closed_streams == 1
    [row] = await rows(app)
    assert row.status == 499


async def test_ledger_has_one_metadata_row_per_request_and_no_text(make_app: AppFactory) -> None:
    app, _ = await setup(make_app)
    secret = "SENTINEL-7f3a-do-not-store"
    for stream in (False, True):
        body = {"messages": [{"role": "user", "content": secret}], "stream": stream, "user": "end-user-1"}
        assert (await chat(app, body, {"x-turnout-data-class": "confidential"})).status == 200
    await chat(app, {"model": "missing", "messages": [{"role": "user", "content": secret}]})
    ledger = await rows(app)
    assert len(ledger) == 3
    assert secret not in repr(ledger)
    ok = [r for r in ledger if r.status == 200]
    assert {r.stream for r in ok} == {False, True}
    for r in ok:
        assert r.tenant == "acme" and r.task == "chat" and r.target == "primary" and r.replica == "r0"
        assert r.data_class == "confidential" and r.model_version == "fake-v1"
        assert r.user is not None and r.user.startswith("u_") and "end-user-1" not in r.user
        assert r.prompt_tokens == 7 and r.latency_ms > 0 and len(r.attempts) == 1
    assert len({r.user for r in ok}) == 1  # one user, one pseudonym


async def test_service_routes(make_app: AppFactory) -> None:
    app, fakes = await setup(make_app)
    assert (await request(app, "GET", "/healthz")).json() == {"status": "ok"}
    ready = await request(app, "GET", "/readyz")
    assert ready.status == 200 and ready.json() == {"status": "ready", "checks": {"config": "ok", "ledger": "ok"}}
    fakes["primary"].healthy = fakes["secondary"].healthy = False
    assert (await request(app, "GET", "/readyz")).status == 200  # upstreams: the admin's view, not readiness
    assert (await request(app, "GET", "/nope")).status == 404
    resp = await request(app, "GET", "/v1/chat/completions")
    assert resp.status == 405 and resp.json()["error"]["code"] == "method_not_allowed"
    assert resp.headers["allow"] == "POST"  # HTTP requires Allow on a 405
    resp = await request(app, "POST", "/v1/models")
    assert resp.status == 405 and resp.headers["allow"] == "GET, HEAD"


async def test_probes_answer_get_and_head_only(make_app: AppFactory) -> None:
    """/healthz and /readyz answered 200 to any method (POST, DELETE, TRACE), where
    /openapi.json describes GET alone and every other route answers 405."""
    app, _ = await setup(make_app)
    for path in ("/healthz", "/readyz"):
        assert (await request(app, "HEAD", path)).status == 200, path
        for method in ("POST", "DELETE", "TRACE"):
            refused = await request(app, method, path)
            assert refused.status == 405 and refused.headers["allow"] == "GET, HEAD", (method, path)
            assert refused.json()["error"]["code"] == "method_not_allowed"


async def test_without_tenants_access_is_anonymous(make_app: AppFactory) -> None:
    raw = {
        "targets": {"local": {"provider": "openai", "base_url": "http://x.invalid/v1", "model": "m"}},
        "tasks": {"default": {"route": ["local"]}},
    }
    app = await make_app(raw, {"local": ScriptedProvider("local")})
    resp = await request(app, "POST", "/v1/chat/completions", {"model": "default", "messages": MESSAGES})
    assert resp.status == 200
    [row] = await rows(app)
    assert row.tenant == "anonymous" and row.data_class == "internal"


class BuggyProvider(ScriptedProvider):
    """Raises a non-turnout exception whose message quotes the prompt, as a bug might."""

    async def complete(self, call: Any) -> Any:
        raise KeyError(call.body["messages"][0]["content"])


async def test_a_bug_answers_500_in_openai_shape_and_logs_no_content(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = await setup(make_app, primary=BuggyProvider("primary"))
    secret = "SENTINEL-bug-path-31337"
    resp = await chat(app, {"messages": [{"role": "user", "content": secret}]})
    assert resp.status == 500
    request_id = resp.headers["x-turnout-request-id"]
    message = f"internal error (request {request_id})"
    assert resp.json()["error"] == {"message": message, "type": "api_error", "param": None, "code": None}
    assert "KeyError" in caplog.text and secret not in caplog.text
    [row] = await rows(app)
    assert row.status == 500 and row.error_class == "internal"


async def test_a_bug_mid_stream_ends_it_with_an_error_event(make_app: AppFactory) -> None:
    primary = ScriptedProvider("primary", Step(RuntimeError("oops"), text="a b c", fail_after=1))
    app, _ = await setup(make_app, primary=primary)
    events = (await chat(app, {"stream": True})).events()
    assert events[-2]["error"]["code"] == "stream_interrupted" and events[-1] == "[DONE]"
    [row] = await rows(app)
    assert row.status == 500 and row.error_class == "internal"
