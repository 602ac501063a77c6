"""Output checks on the request path, in-process: the App over ASGI in front of two fake
OpenAI-compatible servers (real HTTP, the real provider). Schema pass and fail, a repair that
succeeds on its second attempt (both attempts in the row, each with its cost), repairs spent and
escalated to a stronger target, escalated to a person (202, a ticket, the reviewer's answer
through the admin API, fetched by the caller, 404 for another tenant), ``max_chars``,
``must_not_contain`` (an AWS key caught and never echoed), the request's ``response_format``,
streams answered whole, the task API's release schema, and config errors with key paths."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.asgi import Response, request
from tests.conftest import AppFactory
from tests.fakes.scripted import ScriptedProvider, Step
from tests.fakes.upstream import FakeUpstream, Fault
from tests.test_task_api import SCHEMA, StaticRegistry, release
from turnout.config import validate
from turnout.errors import ConfigError, UpstreamStatusError
from turnout.ledger.record import LedgerRow
from turnout.providers.base import Call, Completion
from turnout.releases.base import Serving
from turnout.serving.app import App

KEY = "sk-acme-output-0001"
OTHER = "sk-globex-output-0001"
ADMIN = "admin-output-key-0001"
AUTH = {"authorization": f"Bearer {KEY}"}
ORDER = {
    "type": "object",
    "required": ["order_id"],
    "properties": {"order_id": {"type": "string"}},
    "additionalProperties": False,
}
GOOD = '{"order_id": "A-17"}'
BAD = '{"order": 17}'
AWS_KEY = "AKIAZ3MHQ4PLXK2VBN7R"
LEAK = f"Sure: use aws_access_key_id = {AWS_KEY} to log in."
ASK = [{"role": "user", "content": "Extract the order from: order A-17, mail jane.doe@example.com"}]
PRICE = {"input_per_mtok": 1_000_000.0, "output_per_mtok": 2_000_000.0}  # $1 a prompt token, $2 an answer token


@dataclass
class Setup:
    app: App
    small: FakeUpstream
    strong: FakeUpstream


def config(small: FakeUpstream, strong: FakeUpstream, tmp: Path) -> dict[str, Any]:
    target = {"provider": "openai", "model": "m", "retry": {"attempts": 1}, "price": PRICE}
    schema = {"schema": ORDER}
    return {
        "server": {"admin_key": ADMIN},
        "releases": {"path": str(tmp / "no-releases"), "store_path": str(tmp / "releases.db")},
        "targets": {
            "primary": {**target, "base_url": small.base_url},
            "strong": {**target, "base_url": strong.base_url},
        },
        "policy": {"restricted": {"targets": ["primary"]}},
        "tenants": {
            "acme": {"keys": [KEY], "data_classes": ["public", "internal", "restricted"]},
            "globex": {"keys": [OTHER]},
        },
        "tasks": {
            "plain": {"route": ["primary"]},
            "format": {"route": ["primary"], "output": {}},
            "extract": {"route": ["primary"], "output": {**schema, "repair_attempts": 1}},
            "once": {"route": ["primary"], "output": schema},
            "upgrade": {"route": ["primary"], "output": {**schema, "repair_attempts": 1, "escalate": {"to": "strong"}}},
            "person": {"route": ["primary"], "output": {**schema, "escalate": {"to": "human"}}},
            "short": {"route": ["primary"], "output": {"max_chars": 12, "repair_attempts": 1}},
            "safe": {"route": ["primary"], "output": {"must_not_contain": ["secrets", "pii"], "repair_attempts": 1}},
            "taskapi": {"route": ["primary"], "output": {"repair_attempts": 1}},
            "taskperson": {"route": ["primary"], "output": {"escalate": {"to": "human"}}},
        },
    }


@pytest.fixture
async def setup(make_app: AppFactory, tmp_path: Path) -> AsyncIterator[Setup]:
    async with FakeUpstream() as small, FakeUpstream() as strong:
        small.reply, strong.reply = (BAD,), (GOOD,)
        app = await make_app(config(small, strong, tmp_path))
        yield Setup(app, small, strong)


async def chat(app: App, task: str, key: str = KEY, **extra: Any) -> Response:
    body = {"model": task, "messages": ASK, **extra}
    return await request(app, "POST", "/v1/chat/completions", body, {"authorization": f"Bearer {key}"})


async def get(app: App, path: str, key: str = KEY) -> Response:
    return await request(app, "GET", path, headers={"authorization": f"Bearer {key}"})


async def row_of(app: App, request_id: str) -> LedgerRow:
    assert app.runtime.store is not None
    for _ in range(400):
        await asyncio.sleep(0.005)
        found = await app.runtime.store.get(request_id)
        if found is not None:
            return found
    raise AssertionError(f"no ledger row for {request_id}")


async def queued(app: App, resp: Response, task: str = "person") -> dict[str, Any]:
    """The review item of the ticket ``resp`` answered."""
    listed = (await get(app, f"/admin/review?status=pending&task={task}", ADMIN)).json()["data"]
    [item] = [i for i in listed if i["request_id"] == resp.json()["id"]]
    return dict(item)


def content(resp: Response) -> str:
    text: str = resp.json()["choices"][0]["message"]["content"]
    return text


def chats(fake: FakeUpstream) -> list[Any]:
    """The chat requests the fake received (health probes list models)."""
    return [r for r in fake.requests if r.path.endswith("/chat/completions")]


def sent_messages(fake: FakeUpstream, i: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = chats(fake)[i].body["messages"]
    return messages


# --- pass, repair, refuse ---------------------------------------------------------------------------


async def test_an_answer_that_passes_is_served_as_it_came(setup: Setup) -> None:
    setup.small.reply = (GOOD,)
    resp = await chat(setup.app, "extract")
    assert resp.status == 200 and content(resp) == GOOD
    assert resp.headers["x-turnout-attempts"] == "1"
    row = await row_of(setup.app, resp.headers["x-turnout-request-id"])
    assert (row.status, row.repairs, row.output_check, row.escalated_to, row.escalated) == (200, None, None, None, None)
    assert len(chats(setup.small)) == 1


async def test_a_failed_schema_is_repaired_on_the_second_attempt_and_both_are_paid(setup: Setup) -> None:
    setup.small.queue = [(BAD,), (GOOD,)]
    resp = await chat(setup.app, "extract")
    assert resp.status == 200 and content(resp) == GOOD
    assert resp.headers["x-turnout-attempts"] == "2" and resp.headers["x-turnout-target"] == "primary"
    # The re-ask: the same target, the rejected answer and what was wrong with it appended.
    first, second = sent_messages(setup.small, 0), sent_messages(setup.small, 1)
    assert first == ASK and second[: len(ASK)] == ASK
    assert second[1] == {"role": "assistant", "content": BAD}
    assert second[2]["role"] == "user" and "'order_id' is a required property" in second[2]["content"]
    row = await row_of(setup.app, resp.headers["x-turnout-request-id"])
    assert (row.repairs, row.output_check, row.escalated_to) == (1, "schema", None)
    assert [a.error_class for a in row.attempts] == ["output_invalid", None]
    costs = [a.cost_usd for a in row.attempts]
    assert all(c is not None and c > 0 for c in costs)
    assert row.cost_usd == pytest.approx(sum(c for c in costs if c is not None))
    assert float(resp.headers["x-turnout-cost-usd"]) == pytest.approx(row.cost_usd)
    # Every generated token counts: the first answer's and the repair's.
    assert row.completion_tokens == 2 and row.prompt_tokens is not None and row.prompt_tokens > 2 * len(ASK)


async def test_repairs_spent_without_escalation_fail_closed(setup: Setup) -> None:
    resp = await chat(setup.app, "extract")
    assert resp.status == 502
    error = resp.json()["error"]
    assert error["code"] == "output_invalid" and error["type"] == "upstream_error"
    assert "after 1 repair attempt(s)" in error["message"] and "/(root)" not in error["message"]
    assert BAD not in resp.body.decode()  # never the rejected answer
    row = await row_of(setup.app, resp.headers["x-turnout-request-id"])
    assert (row.status, row.error_class, row.repairs, row.output_check) == (502, "output_invalid", 1, "schema schema")
    assert len(row.attempts) == 2 and all(a.error_class == "output_invalid" for a in row.attempts)
    assert row.cost_usd is not None and row.cost_usd > 0 and row.completion_tokens == 2


async def test_no_repair_attempts_means_one_answer_then_refusal(setup: Setup) -> None:
    resp = await chat(setup.app, "once")
    assert resp.status == 502 and resp.json()["error"]["code"] == "output_invalid"
    assert len(chats(setup.small)) == 1
    row = await row_of(setup.app, resp.headers["x-turnout-request-id"])
    assert (row.repairs, row.output_check) == (0, "schema")


async def test_not_json_is_its_own_reason(setup: Setup) -> None:
    setup.small.reply = ("Here you go: A-17",)
    resp = await chat(setup.app, "once")
    assert resp.status == 502 and "not JSON" in resp.json()["error"]["message"]
    row = await row_of(setup.app, resp.headers["x-turnout-request-id"])
    assert row.output_check == "json"


# --- escalation -----------------------------------------------------------------------------------


async def test_spent_repairs_escalate_to_the_stronger_target(setup: Setup) -> None:
    resp = await chat(setup.app, "upgrade")
    assert resp.status == 200 and content(resp) == GOOD
    assert resp.headers["x-turnout-target"] == "strong" and resp.headers["x-turnout-attempts"] == "3"
    assert len(chats(setup.small)) == 2 and len(chats(setup.strong)) == 1
    assert sent_messages(setup.strong, 0) == ASK  # the original request, not the repair dialogue
    row = await row_of(setup.app, resp.headers["x-turnout-request-id"])
    assert (row.target, row.escalated_to, row.escalated, row.repairs) == ("strong", "strong", True, 1)
    assert [a.target for a in row.attempts] == ["primary", "primary", "strong"]
    assert [a.error_class for a in row.attempts] == ["output_invalid", "output_invalid", None]
    assert row.cost_usd == pytest.approx(sum(a.cost_usd or 0 for a in row.attempts))
    assert row.human_review is None


async def test_an_escalation_the_policy_forbids_is_refused(setup: Setup) -> None:
    headers = {**AUTH, "x-turnout-data-class": "restricted"}
    body = {"model": "upgrade", "messages": ASK}
    resp = await request(setup.app, "POST", "/v1/chat/completions", body, headers)
    assert resp.status == 502 and "not allowed for restricted data" in resp.json()["error"]["message"]
    assert not chats(setup.strong)  # fails closed: restricted data never reaches it


async def test_a_failing_escalation_target_is_refused_too(setup: Setup) -> None:
    setup.strong.reply = (BAD,)
    resp = await chat(setup.app, "upgrade")
    assert resp.status == 502 and "'strong', where it was escalated, failed too" in resp.json()["error"]["message"]
    row = await row_of(setup.app, resp.headers["x-turnout-request-id"])
    assert (row.escalated_to, row.output_check) == ("strong", "schema schema schema")


async def test_an_escalation_target_that_fails_is_a_refusal_with_every_attempt_priced(setup: Setup) -> None:
    setup.strong.fault = Fault("status", status=503)
    resp = await chat(setup.app, "upgrade")
    assert resp.status == 502 and "the escalation to 'strong' failed too" in resp.json()["error"]["message"]
    row = await row_of(setup.app, resp.headers["x-turnout-request-id"])
    assert [a.error_class for a in row.attempts] == ["output_invalid", "output_invalid", "http_503"]
    assert (row.escalated_to, row.error_class) == ("strong", "output_invalid")


async def test_a_repair_that_gets_no_answer_is_said_so(make_app: AppFactory, tmp_path: Path) -> None:
    async with FakeUpstream() as small, FakeUpstream() as strong:
        broken = UpstreamStatusError(500, "down")
        primary = ScriptedProvider("primary", Step(text=BAD), Step(error=broken))
        app = await make_app(config(small, strong, tmp_path), {"primary": primary})
        resp = await chat(app, "extract")
        assert resp.status == 502
        assert "after 1 repair attempt(s)" in resp.json()["error"]["message"]
        assert "the last repair attempt got no answer" in resp.json()["error"]["message"]
        row = await row_of(app, resp.headers["x-turnout-request-id"])
        assert [a.error_class for a in row.attempts] == ["output_invalid", "http_500"]
        assert row.completion_tokens == 3  # the rejected answer's tokens, the failed call has none


async def test_escalation_to_a_person_gives_a_ticket_the_reviewer_answers(setup: Setup) -> None:
    app = setup.app
    resp = await chat(app, "person")
    assert resp.status == 202
    ticket = resp.json()
    request_id = resp.headers["x-turnout-request-id"]
    assert ticket["id"] == request_id and ticket["status"] == "pending" and ticket["reason"] == "escalated"
    assert ticket["url"] == f"/v1/tasks/person/tickets/{request_id}" == resp.headers["location"]
    row = await row_of(app, request_id)
    assert (row.status, row.escalated_to, row.escalated, row.human_review) == (202, "human", True, True)
    assert row.cost_usd is not None and row.cost_usd > 0

    assert (await get(app, ticket["url"])).json()["status"] == "pending"
    queued = (await get(app, "/admin/review?status=pending", ADMIN)).json()["data"]
    [item] = [i for i in queued if i["request_id"] == request_id]
    assert (item["reason"], item["tenant"], item["task"]) == ("escalated", "acme", "person")
    assert "A-17" in item["text"] and BAD in item["text"]  # the request and the rejected answer
    assert "jane.doe@example.com" not in item["text"]  # redacted before it was stored

    label = f"/admin/review/{item['id']}"
    headers = {"authorization": f"Bearer {ADMIN}"}
    refused = await request(app, "POST", label, {"label": "accept", "by": "rev@example.com"}, headers)
    assert refused.status == 400 and refused.json()["error"]["param"] == "answer"
    answer = '{"order_id": "A-17"}'
    done = await request(app, "POST", label, {"label": "accept", "by": "rev@example.com", "answer": answer}, headers)
    assert done.status == 200 and done.json()["answer"] == answer

    fetched = (await get(app, ticket["url"])).json()
    assert (fetched["status"], fetched["answer"], fetched["object"]) == ("answered", answer, "turnout.ticket")
    assert fetched["answered_at"] is not None and "note" not in fetched and "labeled_by" not in fetched


async def test_a_ticket_is_its_tenants_only(setup: Setup) -> None:
    app = setup.app
    resp = await chat(app, "person")
    url = resp.json()["url"]
    other = await get(app, url, OTHER)
    assert other.status == 404 and other.json()["error"]["type"] == "invalid_request_error"
    assert (await get(app, url.replace("/person/", "/extract/"))).status == 404  # another task
    assert (await get(app, "/v1/tasks/person/tickets/0000000000000000")).status == 404
    assert (await get(app, "/v1/tasks/nope/tickets/x")).status == 404
    assert (await get(app, url, "sk-wrong-key-000000")).status == 401
    posted = await request(app, "POST", url, {}, AUTH)
    assert posted.status == 405


async def test_a_ticket_is_read_with_the_key_as_x_api_key_too(setup: Setup) -> None:
    """Every door takes the key as x-api-key (Anthropic's SDKs): the ticket a Messages request
    was answered with was 401 "missing API key" to the same key."""
    app = setup.app
    url = (await chat(app, "person")).json()["url"]
    mine = await request(app, "GET", url, headers={"x-api-key": KEY})
    assert mine.status == 200 and mine.json()["status"] == "pending"
    assert (await request(app, "GET", url, headers={"x-api-key": OTHER})).status == 404  # still its tenant's only


async def test_a_rejected_ticket_says_so_without_an_answer(setup: Setup) -> None:
    app = setup.app
    resp = await chat(app, "person")
    item = await queued(app, resp)
    headers = {"authorization": f"Bearer {ADMIN}"}
    await request(app, "POST", f"/admin/review/{item['id']}", {"label": "reject", "by": "rev"}, headers)
    fetched = (await get(app, resp.json()["url"])).json()
    assert (fetched["status"], fetched["answer"]) == ("rejected", None)


async def test_a_tickets_outcome_is_final(setup: Setup) -> None:
    """A relabel flipped an answered ticket to rejected (or back to pending) after the caller
    may have read it: an escalated item's first accept or reject is final (409)."""
    app = setup.app
    headers = {"authorization": f"Bearer {ADMIN}"}
    ids = []
    for _ in range(2):
        resp = await chat(app, "person")
        item = await queued(app, resp)
        ids.append((item["id"], resp.json()["url"]))
    (answered, answered_url), (rejected, rejected_url) = ids
    for by in ("rev\x1b[2J", "rev\nforged", "r" * 201):  # printed by the CLI and the console: one clean line
        bad = await request(app, "POST", f"/admin/review/{answered}", {"label": "escalate", "by": by}, headers)
        assert bad.status == 400 and bad.json()["error"]["param"] == "by"
    kept = await request(app, "POST", f"/admin/review/{answered}", {"label": "escalate", "by": "a"}, headers)
    assert kept.status == 200  # escalate keeps it pending: still open
    done = {"label": "accept", "by": "a", "answer": GOOD}
    assert (await request(app, "POST", f"/admin/review/{answered}", done, headers)).status == 200
    assert (
        await request(app, "POST", f"/admin/review/{rejected}", {"label": "reject", "by": "b"}, headers)
    ).status == 200
    for item, label in ((answered, "reject"), (answered, "escalate"), (answered, "accept"), (rejected, "accept")):
        body = {"label": label, "by": "c", "answer": '{"order_id": "other"}'}
        refused = await request(app, "POST", f"/admin/review/{item}", body, headers)
        assert refused.status == 409 and refused.json()["error"]["code"] == "conflict", (item, label)
        assert "final" in refused.json()["error"]["message"]
    first = (await get(app, answered_url)).json()
    assert (first["status"], first["answer"], first["output"]) == ("answered", GOOD, {"order_id": "A-17"})
    assert (await get(app, rejected_url)).json()["status"] == "rejected"


async def test_a_label_with_a_field_it_does_not_take_is_refused(setup: Setup) -> None:
    """A typo ("notes", "anwser") was dropped silently: the label was recorded without the
    reviewer's note, as POST /admin/keys refuses an unknown field."""
    app = setup.app
    item = await queued(app, await chat(app, "person"))
    headers = {"authorization": f"Bearer {ADMIN}"}
    body = {"label": "reject", "by": "rev", "notes": "the order id is made up"}
    refused = await request(app, "POST", f"/admin/review/{item['id']}", body, headers)
    assert refused.status == 400 and refused.json()["error"]["param"] == "notes"
    assert "note" in refused.json()["error"]["message"]
    listed = (await get(app, "/admin/review?status=&task=", ADMIN)).json()["data"]  # blank: the defaults
    assert item["id"] in {i["id"] for i in listed}  # nothing was recorded


async def test_a_reviewers_answer_must_pass_the_tasks_output_checks(setup: Setup) -> None:
    """The caller gets the reviewer's answer in place of the model's: it must pass the same
    checks (here the task's schema); the ticket's ``output`` is it parsed, as the task API's."""
    app = setup.app
    resp = await chat(app, "person")
    item = await queued(app, resp)
    headers = {"authorization": f"Bearer {ADMIN}"}
    for bad in ("order A-17", BAD, '{"order_id": 17}'):
        body = {"label": "accept", "by": "rev", "answer": bad}
        refused = await request(app, "POST", f"/admin/review/{item['id']}", body, headers)
        assert refused.status == 400 and refused.json()["error"]["param"] == "answer", bad
        assert refused.json()["error"]["code"] == "answer_invalid"
    assert (await get(app, resp.json()["url"])).json()["status"] == "pending"  # nothing was recorded
    body = {"label": "accept", "by": "rev", "answer": '```json\n{"order_id": "A-17"}\n```'}
    assert (await request(app, "POST", f"/admin/review/{item['id']}", body, headers)).status == 200
    assert (await get(app, resp.json()["url"])).json()["output"] == {"order_id": "A-17"}


# --- max_chars, must_not_contain ----------------------------------------------------------------------


async def test_max_chars_repairs_without_echoing_the_long_answer(setup: Setup) -> None:
    setup.small.queue = [("x" * 40,), ("short",)]
    resp = await chat(setup.app, "short")
    assert resp.status == 200 and content(resp) == "short"
    repair = sent_messages(setup.small, 1)
    assert [m["role"] for m in repair] == ["user", "user"] and "at most 12" in repair[1]["content"]
    row = await row_of(setup.app, resp.headers["x-turnout-request-id"])
    assert (row.repairs, row.output_check) == (1, "max_chars")


async def test_a_leaked_aws_key_is_caught_and_never_sent_anywhere(setup: Setup) -> None:
    setup.small.reply = (LEAK,)
    resp = await chat(setup.app, "safe")
    assert resp.status == 502
    error = resp.json()["error"]
    assert error["code"] == "output_invalid" and "an AWS access key (secrets)" in error["message"]
    assert AWS_KEY not in resp.body.decode()
    repair = orjson.dumps(sent_messages(setup.small, 1)).decode()
    assert AWS_KEY not in repair and "without any secrets" in repair  # the key is not sent back
    row = await row_of(setup.app, resp.headers["x-turnout-request-id"])
    assert row.output_check == "secrets secrets" and AWS_KEY not in repr(row)


async def test_pii_in_the_answer_is_caught_and_a_clean_repair_passes(setup: Setup) -> None:
    setup.small.queue = [("Write to jane.doe@example.com",), ("I cannot share contact details.",)]
    resp = await chat(setup.app, "safe")
    assert resp.status == 200 and content(resp) == "I cannot share contact details."
    row = await row_of(setup.app, resp.headers["x-turnout-request-id"])
    assert row.output_check == "pii"


async def test_a_refused_answer_on_the_messages_door_is_in_anthropics_error_shape(setup: Setup) -> None:
    """Seen: ``/v1/messages`` answered an output-check refusal in OpenAI's shape, unlike every
    other error on that door."""
    setup.small.queue = [("Write to jane.doe@example.com",), ("Or to jane.doe@example.com",)]
    body = {"model": "safe", "max_tokens": 50, "messages": [{"role": "user", "content": "contact?"}]}
    resp = await request(setup.app, "POST", "/v1/messages", body, {"x-api-key": KEY})
    assert resp.status == 502
    payload = resp.json()
    assert payload["type"] == "error" and payload["error"]["type"] == "api_error"
    assert "jane.doe" not in resp.body.decode()


# --- the request's response_format, the unchecked task --------------------------------------------------


async def test_the_requested_schema_is_checked_where_the_task_has_output_checks(setup: Setup) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "order", "schema": ORDER}}
    setup.small.reply = (BAD,)
    bad = await chat(setup.app, "format", response_format=fmt)
    assert bad.status == 502 and "the requested response_format schema" in bad.json()["error"]["message"]
    setup.small.reply = (GOOD,)
    assert (await chat(setup.app, "format", response_format=fmt)).status == 200
    setup.small.reply = ("[1, 2]",)
    listed = await chat(setup.app, "format", response_format={"type": "json_object"})
    assert listed.status == 502 and "JSON object format" in listed.json()["error"]["message"]


async def test_a_requested_schema_that_is_no_schema_is_the_callers_400(setup: Setup) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}
    resp = await chat(setup.app, "format", response_format=fmt)
    assert resp.status == 400 and resp.json()["error"]["param"] == "response_format.json_schema.schema"
    assert not chats(setup.small)


async def test_a_task_without_output_checks_passes_answers_as_before(setup: Setup) -> None:
    setup.small.reply = ("not json at all",)
    resp = await chat(setup.app, "plain", response_format={"type": "json_object"})
    assert resp.status == 200 and content(resp) == "not json at all"
    assert setup.app.pipeline.output.checks("plain", {"response_format": {"type": "json_object"}}, fenced=False) is None


# --- streams ------------------------------------------------------------------------------------------


async def test_a_checked_stream_is_generated_whole_checked_and_relayed(setup: Setup) -> None:
    setup.small.queue = [(BAD,), (GOOD,)]
    resp = await chat(setup.app, "extract", stream=True, stream_options={"include_usage": True})
    assert resp.status == 200 and resp.headers["content-type"] == "text/event-stream"
    events = resp.events()
    assert events[-1] == "[DONE]"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in events[:-1] if c["choices"])
    assert text == GOOD
    assert events[-2]["usage"]["completion_tokens"] == 1 and all(e["model"] == "extract" for e in events[:-1])
    assert all(r.body["stream"] is False for r in chats(setup.small))  # asked whole
    row = await row_of(setup.app, resp.headers["x-turnout-request-id"])
    assert (row.stream, row.repairs, row.status) == (True, 1, 200)


class Reasoner(ScriptedProvider):
    """Answers with ``reasoning_content`` (and ``reasoning``) beside the content, as vLLM's
    reasoning parsers and DeepSeek do; each call the next of ``thoughts`` (the last repeats)."""

    def __init__(self, *thoughts: str) -> None:
        super().__init__("primary")
        self.thoughts = list(thoughts)

    async def complete(self, call: Call) -> Completion:
        answer = await super().complete(call)
        thought = self.thoughts.pop(0) if len(self.thoughts) > 1 else self.thoughts[0]
        answer.body["choices"][0]["message"].update(reasoning_content=thought, reasoning=thought)
        return answer


LEAKY_THOUGHT = "The customer is SSN 123-45-6789, card 4111 1111 1111 1111, mail jane.doe@example.com."


@pytest.mark.parametrize("stream", [False, True])
async def test_reasoning_is_checked_like_the_content(make_app: AppFactory, tmp_path: Path, stream: bool) -> None:
    async with FakeUpstream() as small, FakeUpstream() as strong:
        raw = config(small, strong, tmp_path)
        raw["tasks"]["strict"] = {"route": ["primary"], "output": {"must_not_contain": ["secrets", "pii"]}}
        primary = Reasoner(LEAKY_THOUGHT)
        app = await make_app(raw, {"primary": primary})
        resp = await chat(app, "strict", stream=stream)
        assert resp.status == 502 and resp.json()["error"]["code"] == "output_invalid"
        assert "123-45" not in resp.body.decode() and "jane.doe" not in resp.body.decode()


async def test_a_checked_stream_carries_the_reasoning_the_whole_answer_does(
    make_app: AppFactory, tmp_path: Path
) -> None:
    async with FakeUpstream() as small, FakeUpstream() as strong:
        primary = Reasoner(LEAKY_THOUGHT, "First the order id, then the format.")
        app = await make_app(config(small, strong, tmp_path), {"primary": primary})
        resp = await chat(app, "safe")  # the leaky thought is repaired away
        assert resp.status == 200
        message = resp.json()["choices"][0]["message"]
        assert message["reasoning_content"] == "First the order id, then the format."
        resp = await chat(app, "safe", stream=True)
        assert resp.status == 200
        deltas = [e["choices"][0]["delta"] for e in resp.events()[:-1] if e["choices"]]
        assert "".join(d.get("reasoning_content") or "" for d in deltas) == message["reasoning_content"]
        assert "".join(d.get("reasoning") or "" for d in deltas) == message["reasoning"]
        assert "".join(d.get("content") or "" for d in deltas) == message["content"]


async def test_a_stream_without_usage_asked_gets_no_usage_chunk(setup: Setup) -> None:
    setup.small.reply = (GOOD,)
    resp = await chat(setup.app, "extract", stream=True)
    assert all("usage" not in e for e in resp.events()[:-1])


async def test_a_stream_escalated_to_a_person_is_an_error_naming_its_ticket(setup: Setup) -> None:
    """A stream's SDK reads events: a 202 ticket body read as a stream ended empty, no error.
    The ticket is queued all the same, and the error names it; the SDKs must not retry."""
    resp = await chat(setup.app, "person", stream=True)
    assert resp.status == 502 and resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    request_id = resp.headers["x-turnout-request-id"]
    url = f"/v1/tasks/person/tickets/{request_id}"
    assert error["code"] == "escalated_to_human" and url in error["message"]
    assert resp.headers["location"] == url and resp.headers["x-should-retry"] == "false"
    assert (await get(setup.app, url)).json()["status"] == "pending"
    row = await row_of(setup.app, request_id)
    assert (row.status, row.escalated_to, row.human_review, row.error_class) == (
        502,
        "human",
        True,
        "escalated_to_human",
    )


async def test_a_refused_stream_is_a_plain_error_before_any_event(setup: Setup) -> None:
    resp = await chat(setup.app, "once", stream=True)
    assert resp.status == 502 and resp.json()["error"]["code"] == "output_invalid"
    assert resp.headers["x-should-retry"] == "false"  # the SDKs would pay for the same refusal again


# --- the task API -------------------------------------------------------------------------------------


class TaskRegistry(StaticRegistry):
    def serving(self, task: str) -> Serving | None:
        return self.current if task in ("taskapi", "taskperson") else None


async def test_a_task_api_ticket_is_answered_to_its_releases_schema(setup: Setup) -> None:
    """On the task API the schema is the release's: the reviewer's answer must pass it, and the
    ticket's ``output`` is the answer parsed, as the task API's own ``output`` would be."""
    app = setup.app
    app.runtime.releases = TaskRegistry(Serving(release("v1", task="taskperson")))
    resp = await request(app, "POST", "/v1/tasks/taskperson", {"variables": {"text": "A-17"}}, AUTH)
    assert resp.status == 202, resp.body
    item = await queued(app, resp, "taskperson")
    headers = {"authorization": f"Bearer {ADMIN}"}
    label = f"/admin/review/{item['id']}"
    refused = await request(app, "POST", label, {"label": "accept", "by": "rev", "answer": BAD}, headers)
    assert refused.status == 400 and refused.json()["error"]["code"] == "answer_invalid"
    done = await request(app, "POST", label, {"label": "accept", "by": "rev", "answer": GOOD}, headers)
    assert done.status == 200
    assert (await get(app, resp.json()["url"])).json()["output"] == {"order_id": "A-17"}


async def test_the_task_api_repairs_against_the_release_schema(setup: Setup) -> None:
    app = setup.app
    app.runtime.releases = TaskRegistry(Serving(release("v1", task="taskapi")))
    setup.small.queue = [(BAD,), ("```json\n" + GOOD + "\n```",)]
    resp = await request(app, "POST", "/v1/tasks/taskapi", {"variables": {"text": "A-17"}}, AUTH)
    assert resp.status == 200 and resp.json()["output"] == {"order_id": "A-17"}
    assert chats(setup.small)[1].body["response_format"]["json_schema"]["schema"] == SCHEMA
    row = await row_of(app, resp.headers["x-turnout-request-id"])
    assert (row.repairs, row.output_check, row.release) == (1, "schema", "v1")


# --- config ---------------------------------------------------------------------------------------------


def problems(output: dict[str, Any], targets: tuple[str, ...] = ("a",)) -> list[str]:
    raw = {
        "targets": {n: {"provider": "openai", "base_url": "http://x.invalid/v1", "model": "m"} for n in targets},
        "tasks": {"t": {"route": [targets[0]], "output": output}},
    }
    with pytest.raises(ConfigError) as caught:
        validate(raw)
    return caught.value.problems


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (
            {"escalate": {"to": "gpt-9"}},
            "tasks.t.output.escalate.to: unknown target 'gpt-9' (a target's name, or 'human')",
        ),
        ({"escalate": {}}, "tasks.t.output.escalate.to: Field required"),
        ({"schema": {"type": "nope"}}, "tasks.t.output.schema: not a valid JSON Schema at type"),
        ({"max_chars": 0}, "tasks.t.output.max_chars: Input should be greater than 0"),
        ({"repair_attempts": -1}, "tasks.t.output.repair_attempts: Input should be greater than or equal to 0"),
        ({"must_not_contain": ["passwords"]}, "tasks.t.output.must_not_contain[0]: Input should be 'secrets' or 'pii'"),
        ({"retries": 2}, "tasks.t.output.retries: unknown key"),
    ],
)
def test_bad_output_config_names_the_key(output: dict[str, Any], expected: str) -> None:
    assert any(p.startswith(expected) for p in problems(output)), problems(output)


def test_human_is_ambiguous_when_a_target_has_that_name() -> None:
    found = problems({"escalate": {"to": "human"}}, ("a", "human"))
    assert found == ["tasks.t.output.escalate.to: 'human' is ambiguous: a target has that name; rename the target"]


def test_the_review_queue_opens_for_a_task_that_escalates_to_a_person(setup: Setup) -> None:
    assert setup.app.runtime.reviews is not None
    assert setup.app.runtime.capture is None  # no text capture is needed for it
