"""The output checks' parts on their own: the checks (``turnout.safety.output``), the review
queue's tickets and its migration, pricing of rejected answers, the replayed stream, the cost
report's escalation columns, the OpenAPI description, and a ticket answered from the console."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.asgi import request
from tests.test_console import csrf, get, login, post
from tests.test_output_checks import ADMIN, AUTH, BAD, GOOD, ORDER, Setup, chat, setup  # noqa: F401 - fixture
from tests.test_review import Upper
from turnout.config import OutputConfig, validate
from turnout.control.pricing import PriceBook
from turnout.errors import Conflict, RequestError
from turnout.ledger.record import AttemptRecord, LedgerRow
from turnout.offline.reports.figures import compute
from turnout.providers.base import Completion, Usage
from turnout.releases.review import MAX_ANSWER, MIGRATIONS, ReviewQueue
from turnout.safety.output import Outputs, Problem, resolve, strip_fence
from turnout.serving import openapi
from turnout.serving.output import Checked, repair_body, replay, ticket_text

CHAT_BODY: dict[str, Any] = {"model": "t", "messages": [{"role": "user", "content": "hi"}]}


def answer(content: str | None, **message: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content, **message}}]}


def rules(**output: Any) -> Any:
    return resolve("t", OutputConfig.model_validate(output))


# --- the checks -------------------------------------------------------------------------------------


def test_nothing_to_check_is_no_checks() -> None:
    assert rules(repair_attempts=2).checks(CHAT_BODY, fenced=False) is None
    assert (
        rules(response_format=False).checks({**CHAT_BODY, "response_format": {"type": "json_object"}}, fenced=False)
        is None
    )
    assert (
        Outputs(validate({"targets": {"a": {"provider": "local"}}, "tasks": {"t": {"route": ["a"]}}})).get("t") is None
    )


def test_the_task_schema_and_the_requested_one_both_apply() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object", "required": ["extra"]}}}
    checks = rules(schema=ORDER).checks({**CHAT_BODY, "response_format": fmt}, fenced=False)
    assert checks is not None and len(checks.schemas) == 2
    first = checks.verify(answer('{"extra": 1}'))
    assert first is not None and "the task's output schema" in first.detail
    second = checks.verify(answer('{"order_id": "x"}'))
    assert (
        second is not None and "the requested response_format schema" in second.detail and "required" in second.detail
    )
    assert checks.verify(answer('{"order_id": "x", "extra": 1}')) is not None  # additionalProperties: false
    # A json_schema without its schema asks for JSON, any JSON.
    loose = rules().checks(
        {**CHAT_BODY, "response_format": {"type": "json_schema", "json_schema": {"name": "n"}}}, fenced=False
    )
    assert loose is not None and loose.verify(answer("[1]")) is None and loose.verify(answer("nope")) is not None


def test_fences_are_stripped_only_where_the_door_parses_them() -> None:
    fenced = answer("```json\n" + GOOD + "\n```")
    strict, lenient = (rules(schema=ORDER).checks(CHAT_BODY, fenced=f) for f in (False, True))
    assert strict is not None and lenient is not None
    problem = strict.verify(fenced)
    assert problem is not None and problem.reason == "json"
    assert lenient.verify(fenced) is None
    assert strip_fence("```\n{}\n```").strip() == "{}" and strip_fence("```") == ""


def test_a_tool_call_answer_has_no_text_to_check_against_a_schema() -> None:
    checks = rules(schema=ORDER).checks(CHAT_BODY, fenced=False)
    assert checks is not None
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    assert checks.verify(answer(None, tool_calls=[call])) is None
    assert checks.verify(answer(None)) is not None  # no tool call, no text: not JSON


def test_a_secret_in_tool_call_arguments_is_a_leak_too() -> None:
    checks = rules(must_not_contain=["secrets"]).checks(CHAT_BODY, fenced=False)
    assert checks is not None
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"key": "AKIAZ3MHQ4PLXK2VBN7R"}'}}
    problem = checks.verify(answer("calling", tool_calls=[call]))
    assert problem is not None and (problem.reason, problem.echo) == ("secrets", False)
    assert "AKIA" not in problem.detail and "AKIA" not in problem.hint


CARD_TEXT = "Your card 4111 1111 1111 1111 is on file."
AWS_KEY = "AKIAZ3MHQ4PLXK2VBN7R"


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"content": [{"type": "text", "text": CARD_TEXT}]}, "pii"),
        (
            {"content": [{"type": "text", "text": "Your card 4111 1111"}, {"type": "text", "text": " 1111 1111."}]},
            "pii",
        ),
        ({"content": [{"type": "refusal", "refusal": CARD_TEXT}]}, "pii"),
        ({"content": [{"type": "text", "text": "x" * 21}]}, "max_chars"),
        ({"content": None, "function_call": {"name": "f", "arguments": f'{{"key": "{AWS_KEY}"}}'}}, "secrets"),
        (
            {"content": None, "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {"key": AWS_KEY}}}]},
            "secrets",
        ),
        (
            {"content": None, "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": [{"k": [AWS_KEY]}]}}]},
            "secrets",
        ),
    ],
    ids=["text parts", "split over parts", "refusal part", "long text parts", "function_call", "object", "nested"],
)
def test_an_answer_in_any_shape_the_caller_gets_is_checked(message: dict[str, Any], reason: str) -> None:
    """Seen: an upstream answering with content parts (a list), a legacy ``function_call`` or
    tool-call arguments as an object passed ``must_not_contain`` and ``max_chars`` untouched,
    and the caller got the card number or the key as the upstream sent it."""
    checks = rules(must_not_contain=["secrets", "pii"], max_chars=20).checks(CHAT_BODY, fenced=False)
    assert checks is not None
    problem = checks.verify({"choices": [{"index": 0, "message": {"role": "assistant", **message}}]})
    assert problem is not None and problem.reason == reason


def test_a_json_answer_in_content_parts_is_checked_against_the_schema() -> None:
    checks = rules(schema=ORDER).checks(CHAT_BODY, fenced=False)
    assert checks is not None
    parts = [{"type": "text", "text": GOOD[:5]}, {"type": "text", "text": GOOD[5:]}]
    assert checks.verify(answer(parts)) is None  # type: ignore[arg-type]


def test_pii_is_checked_only_when_asked() -> None:
    text = answer("Mail jane.doe@example.com or call +1 415 555 0100")
    secrets_only = rules(must_not_contain=["secrets"]).checks(CHAT_BODY, fenced=False)
    with_pii = rules(must_not_contain=["pii"]).checks(CHAT_BODY, fenced=False)
    assert secrets_only is not None and with_pii is not None
    assert secrets_only.verify(text) is None
    problem = with_pii.verify(text)
    assert problem is not None and problem.reason == "pii" and "email address" in problem.detail


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning", "refusal"])
def test_what_the_model_says_beside_its_content_is_checked_for_leaks(field: str) -> None:
    checks = rules(must_not_contain=["secrets", "pii"], max_chars=20).checks(CHAT_BODY, fenced=False)
    assert checks is not None
    thought = "The customer's SSN is 123-45-6789 and card 4111 1111 1111 1111; mail jane.doe@example.com."
    problem = checks.verify(answer("All good.", **{field: thought}))
    assert problem is not None and (problem.reason, problem.echo) == ("pii", False)
    assert "123-45" not in problem.detail + problem.hint
    # A long but clean thought is not the answer's text: max_chars counts the content only.
    assert checks.verify(answer("All good.", **{field: "Let me think step by step. " * 20})) is None


def test_max_chars_counts_characters_not_bytes() -> None:
    checks = rules(max_chars=5).checks(CHAT_BODY, fenced=False)
    assert checks is not None
    assert checks.verify(answer("ééééé")) is None
    problem = checks.verify(answer("ééééé!"))
    assert problem is not None and problem.reason == "max_chars" and "6 characters" in problem.detail


def test_every_choice_is_checked() -> None:
    checks = rules(max_chars=3).checks(CHAT_BODY, fenced=False)
    assert checks is not None
    body = {"choices": [answer("ok")["choices"][0], {"index": 1, "message": {"content": "too long"}}]}
    assert checks.verify(body) is not None


def test_too_deep_json_is_refused_before_the_schema_runs() -> None:
    checks = rules(schema={"type": "array"}).checks(CHAT_BODY, fenced=False)
    assert checks is not None
    problem = checks.verify(answer("[" * 200 + "]" * 200))
    assert problem is not None and problem.reason == "json" and "deeper" in problem.detail


def test_a_callers_schema_that_is_no_schema_is_400_and_its_patterns_never_run() -> None:
    with pytest.raises(RequestError) as caught:
        rules().checks(
            {**CHAT_BODY, "response_format": {"type": "json_schema", "json_schema": {"schema": []}}}, fenced=False
        )
    assert caught.value.param == "response_format.json_schema.schema"
    catastrophic = {"type": "string", "pattern": "^(a+)+$"}
    fmt = {"type": "json_schema", "json_schema": {"schema": catastrophic}}
    checks = rules().checks({**CHAT_BODY, "response_format": fmt}, fenced=False)
    assert checks is not None and checks.verify(answer(orjson.dumps("a" * 40 + "!").decode())) is None


# --- repair and replay ---------------------------------------------------------------------------------


def test_the_repair_asks_again_with_the_failure_appended() -> None:
    completion = Completion(answer(BAD), Usage(3, 2), "v1")
    shown = repair_body(CHAT_BODY, completion, Problem("schema", "d", "Fix it."))
    assert shown["messages"][1:] == [
        {"role": "assistant", "content": BAD},
        {"role": "user", "content": "Fix it. Reply with the corrected answer only."},
    ]
    hidden = repair_body(CHAT_BODY, completion, Problem("secrets", "d", "No keys.", echo=False))
    assert [m["role"] for m in hidden["messages"]] == ["user", "user"]
    assert CHAT_BODY["messages"] == [{"role": "user", "content": "hi"}]  # the caller's body untouched


async def test_a_whole_answer_replays_as_chunks() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    body = {
        "id": "x",
        "created": 5,
        "model": "m",
        "choices": [{"index": 0, "message": {"content": "hi", "tool_calls": [call]}, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
    }
    chunks = [c async for c in replay(Completion(body, None, "v1")).chunks]
    assert chunks[0]["choices"][0]["delta"] == {
        "role": "assistant",
        "content": "hi",
        "tool_calls": [{"index": 0, **call}],
    }
    assert chunks[1]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[2] == {
        "id": "x",
        "object": "chat.completion.chunk",
        "created": 5,
        "model": "m",
        "choices": [],
        "usage": body["usage"],
    }


async def test_a_replayed_answer_carries_what_the_model_said_beside_its_content() -> None:
    message = {"content": "All good.", "reasoning_content": "Thinking.", "reasoning": "Thinking.", "refusal": None}
    body = {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    chunks = [c async for c in replay(Completion(body, None, "v1")).chunks]
    assert chunks[0]["choices"][0]["delta"] == {
        "role": "assistant",
        "content": "All good.",
        "reasoning_content": "Thinking.",
        "reasoning": "Thinking.",
    }


def nothing_spent() -> Checked:
    checked = Checked.__new__(Checked)
    checked.spent, checked.spent_estimated = None, False
    return checked


def test_the_spent_tokens_add_to_the_answer() -> None:
    checked = nothing_spent()  # a helper: mypy would keep ``spent`` narrowed to None here
    checked.spend(Usage(3, 4), False)
    checked.spend(Usage(1, 1), True)
    assert (checked.spent, checked.spent_estimated) == (Usage(4, 5), True)


def test_the_ticket_text_holds_the_request_and_the_rejected_answer() -> None:
    text = ticket_text(CHAT_BODY, Completion(answer(BAD), None, "v1"), Problem("schema", "fails", "h"))
    assert text.startswith('[{"role":"user","content":"hi"}]') and "(schema: fails)" in text and text.endswith(BAD)


# --- pricing, the report ------------------------------------------------------------------------------


def test_a_rejected_answer_keeps_its_own_cost() -> None:
    book = PriceBook(validate({"targets": {"a": {"provider": "local"}}, "tasks": {"t": {"route": ["a"]}}}))
    rejected = AttemptRecord("a", "", "output_invalid", 10.0, 0.0, 0.25)
    failed = AttemptRecord("a", "", "timeout_total", 10.0, 10.0)
    answered = AttemptRecord("a", "", None, 10.0, 20.0)
    priced = book.price_attempts([rejected, failed, answered], Usage(1, 1), 0.0)
    assert [a.cost_usd for a in priced.attempts] == [0.25, 0.0, 0.0] and priced.total == 0.25


def test_the_cost_report_counts_repairs_and_escalations() -> None:
    def row(i: int, cost: float, **kw: Any) -> LedgerRow:
        return LedgerRow(f"r{i}", 1000.0, "acme", "t", "internal", False, status=200, cost_usd=cost, **kw)

    rows = [row(0, 1.0), row(1, 2.0, repairs=1), row(2, 4.0, repairs=1, escalated_to="big", escalated=True)]
    rows.append(row(3, 8.0, repairs=0, escalated_to="human", escalated=True, human_review=True))
    [figures] = compute("cost", rows).rows
    assert (figures["repairs"], figures["escalated"], figures["escalated_spend_usd"]) == (2, 2, 12.0)
    assert figures["escalation_rate"] == 1.0  # the two escalations are the only feedback
    [none] = compute("cost", rows[:1]).rows
    assert (none["escalated"], none["escalated_spend_usd"]) == (0, None)


# --- the review queue ---------------------------------------------------------------------------------


async def test_tickets_in_the_review_queue(tmp_path: Path) -> None:
    queue = ReviewQueue(tmp_path / "releases.db", redactor=Upper("redacted"), clock=lambda: 7.0)
    await queue.open()
    try:
        item = await queue.enqueue_ticket("t", "v1", "req-1", "acme", "text of jane")
        assert item is not None and (item.reason, item.tenant, item.mode, item.text) == (
            "escalated",
            "acme",
            "redacted",
            "[redacted] TEXT OF JANE",
        )
        assert await queue.enqueue_ticket("t", "v1", "req-1", "acme", "again") is None  # once per request
        assert await queue.ticket("missing") is None
        with pytest.raises(RequestError):
            await queue.label(item.id, "accept", None, "rev")
        with pytest.raises(RequestError):
            await queue.label(item.id, "accept", None, "rev", "x" * (MAX_ANSWER + 1))
        done = await queue.label(item.id, "accept", None, "rev", "the answer")
        assert done is not None and done.answer == "the answer"
        with pytest.raises(Conflict, match="final"):  # a ticket's outcome is given once
            await queue.label(item.id, "reject", "changed my mind", "rev2")
        assert (await queue.ticket("req-1")) == done
        assert await queue.label(999, "accept", None, "rev", "a") is None
        sampled = await queue.maybe_enqueue("t", "v1", "req-2", "sampled", 1.0, __import__("random").Random(1))
        assert sampled is not None and sampled.reason is None and await queue.ticket("req-2") is None
        assert await queue.label(sampled.id, "accept", None, "rev") is not None  # no answer needed
        changed = await queue.label(sampled.id, "reject", None, "rev2")
        assert changed is not None and changed.status == "reject"  # a sample's label may change
    finally:
        await queue.aclose()


async def test_without_a_redactor_no_ticket_is_stored(tmp_path: Path) -> None:
    queue = ReviewQueue(tmp_path / "releases.db")
    await queue.open()
    try:
        with pytest.raises(Exception, match="no redactor"):
            await queue.enqueue_ticket("t", None, "req-1", "acme", "text")
    finally:
        await queue.aclose()


async def test_a_queue_of_the_first_schema_migrates_in_place(tmp_path: Path) -> None:
    path = tmp_path / "releases.db"
    with sqlite3.connect(path) as db:
        for statement in MIGRATIONS[0]:
            db.execute(statement)
        db.execute("CREATE TABLE review_migrations (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
        db.execute("INSERT INTO review_migrations VALUES (1, 0)")
        db.execute(
            "INSERT INTO review_items (task, release, request_id, text, mode, created_at)"
            " VALUES ('t', NULL, 'old', 'x', 'redacted', 1)"
        )
    queue = ReviewQueue(path, redactor=Upper("r"))
    await queue.open()
    try:
        [old] = await queue.list()
        assert (old.request_id, old.reason, old.tenant, old.answer) == ("old", None, None, None)
    finally:
        await queue.aclose()


# --- the contract, the console ----------------------------------------------------------------------


def test_the_openapi_document_describes_tickets() -> None:
    doc = openapi.document()
    get_ticket = doc["paths"]["/v1/tasks/{task}/tickets/{id}"]["get"]
    assert get_ticket["operationId"] == "getTicket" and "200" in get_ticket["responses"]
    assert "202" in doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "202" in doc["paths"]["/v1/tasks/{task}"]["post"]["responses"]
    assert "answer" in doc["components"]["schemas"]["ReviewLabel"]["properties"]
    assert doc["components"]["schemas"]["Ticket"]["properties"]["status"]["enum"] == ["pending", "answered", "rejected"]


async def test_a_reviewer_answers_a_ticket_from_the_console(setup: Setup) -> None:  # noqa: F811 - the fixture
    app = setup.app
    ticket = (await chat(app, "person")).json()
    cookie = await login(app, ADMIN, "carol")
    page = await get(app, "/ui/review", cookie)
    html = page.body.decode()
    assert "escalated · acme" in html and 'name="answer"' in html
    [item] = re.findall(r'action="/ui/review/(\d+)"', html)
    refused = await post(app, f"/ui/review/{item}", f"csrf={csrf(page)}&label=accept&back=/ui/review", cookie)
    assert refused.status == 303
    assert "needs an &#39;answer&#39;" in (await get(app, "/ui/review", cookie)).body.decode()
    form = f"csrf={csrf(page)}&label=accept&answer=%7B%22order_id%22%3A+%22A-17%22%7D&back=/ui/review"
    assert (await post(app, f"/ui/review/{item}", form, cookie)).status == 303
    fetched = (await request(app, "GET", ticket["url"], headers=AUTH)).json()
    assert (fetched["status"], fetched["answer"]) == ("answered", GOOD)


async def test_the_admin_api_checks_the_answer(setup: Setup) -> None:  # noqa: F811 - the fixture
    app = setup.app
    resp = await chat(app, "person")
    headers = {"authorization": f"Bearer {ADMIN}"}
    queued = (await request(app, "GET", "/admin/review?task=person", headers=headers)).json()["data"]
    [item] = [i for i in queued if i["request_id"] == resp.headers["x-turnout-request-id"]]
    path = f"/admin/review/{item['id']}"
    not_text = await request(app, "POST", path, {"label": "accept", "by": "rev", "answer": 7}, headers)
    assert not_text.status == 400 and not_text.json()["error"]["param"] == "answer"
    long = "é" * (MAX_ANSWER + 1)  # fits the body limit, escaped or not: the length is what is refused
    too_long = await request(app, "POST", path, {"label": "accept", "by": "rev", "answer": long}, headers)
    assert too_long.status == 400 and too_long.json()["error"]["param"] == "answer"
