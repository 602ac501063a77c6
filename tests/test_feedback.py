"""``POST /v1/feedback`` in-process: tenant scoping, idempotence, episodes, validation, and the
episode id a chat or task request carries into its ledger row."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest

from tests.asgi import Response, request, settled
from tests.conftest import AppFactory
from tests.fakes.scripted import ScriptedProvider
from tests.test_app import AUTH, MESSAGES, OTHER_KEY, config
from turnout.ledger.record import LedgerRow
from turnout.serving.app import App
from turnout.serving.boundary import new_request_id
from turnout.serving.feedback import MIN_POLL_S, PENDING_WAIT_S

OTHER = {"authorization": f"Bearer {OTHER_KEY}"}


async def started(make_app: AppFactory) -> App:
    fakes = {name: ScriptedProvider(name) for name in ("primary", "secondary", "onprem")}
    return await make_app(config(), dict(fakes))


async def chat(app: App, headers: dict[str, str] | None = None, **body: Any) -> Response:
    payload = {"model": "chat", "messages": MESSAGES, **body}
    resp = await request(app, "POST", "/v1/chat/completions", payload, {**AUTH, **(headers or {})})
    assert resp.status == 200, resp.body
    return resp


async def feedback(app: App, body: Any, headers: dict[str, str] | None = None) -> Response:
    return await request(app, "POST", "/v1/feedback", body, headers or AUTH)


async def stored(app: App, request_id: str) -> LedgerRow:
    await settled(app)
    assert app.runtime.store is not None
    row = await app.runtime.store.get(request_id)
    assert row is not None
    return row


def bare(resp: Response) -> str:
    return str(resp.json()["id"]).removeprefix("chatcmpl-")


async def test_feedback_labels_the_tenants_request(make_app: AppFactory) -> None:
    app = await started(make_app)
    resp = await chat(app)
    await stored(app, bare(resp))
    body = {"request_id": resp.json()["id"], "outcome": "success", "human_review": True, "value": 12.5}
    answer = await feedback(app, body)
    assert answer.status == 200, answer.body
    assert answer.json() == {
        "object": "feedback",
        "updated": 1,
        "request_id": bare(resp),
        "outcome": "success",
        "human_review": True,
        "value": 12.5,
    }
    row = await stored(app, bare(resp))
    assert (row.outcome, row.human_review, row.escalated, row.outcome_value) == ("success", True, None, 12.5)
    assert row.outcome_at is not None


async def test_the_same_feedback_twice_leaves_the_same_state(make_app: AppFactory) -> None:
    app = await started(make_app)
    request_id = bare(await chat(app))
    await stored(app, request_id)
    body = {"request_id": request_id, "outcome": "failure", "escalated": True}
    first, second = await feedback(app, body), await feedback(app, body)
    assert first.status == second.status == 200 and first.json() == second.json()
    row = await stored(app, request_id)
    assert (row.outcome, row.escalated, row.human_review) == ("failure", True, None)


async def test_feedback_in_pieces_keeps_what_came_before(make_app: AppFactory) -> None:
    app = await started(make_app)
    request_id = bare(await chat(app))
    await stored(app, request_id)
    assert (await feedback(app, {"request_id": request_id, "outcome": "success"})).status == 200
    assert (await feedback(app, {"request_id": request_id, "human_review": True})).status == 200
    row = await stored(app, request_id)
    assert (row.outcome, row.human_review) == ("success", True)


async def test_another_tenants_request_is_not_found_like_an_unknown_one(make_app: AppFactory) -> None:
    app = await started(make_app)
    request_id = bare(await chat(app))
    await stored(app, request_id)
    theirs = await feedback(app, {"request_id": request_id, "outcome": "failure"}, OTHER)
    unknown = await feedback(app, {"request_id": "0" * 24, "outcome": "failure"}, OTHER)
    assert theirs.status == unknown.status == 404
    assert theirs.json()["error"]["type"] == unknown.json()["error"]["type"] == "invalid_request_error"
    assert theirs.json()["error"]["code"] == "not_found"
    assert theirs.json()["error"]["message"].replace(request_id, "X") == unknown.json()["error"]["message"].replace(
        "0" * 24, "X"
    )
    assert (await stored(app, request_id)).outcome is None  # untouched


async def test_an_episode_groups_requests_and_feedback_updates_them_all(make_app: AppFactory) -> None:
    app = await started(make_app)
    a = bare(await chat(app, {"x-turnout-episode": "TICKET-7"}))
    b = bare(await chat(app, metadata={"episode_id": "TICKET-7", "topic": "billing"}))
    c = bare(await chat(app))
    other = bare(await chat(app, {**OTHER, "x-turnout-episode": "TICKET-7", "x-turnout-data-class": "public"}))
    for request_id in (a, b, c, other):
        await stored(app, request_id)
    answer = await feedback(app, {"episode_id": "TICKET-7", "outcome": "success", "escalated": False})
    assert answer.status == 200 and answer.json()["updated"] == 2  # acme's two, not other's
    assert [(await stored(app, r)).outcome for r in (a, b, c, other)] == ["success", "success", None, None]
    assert (await stored(app, a)).episode_id == (await stored(app, b)).episode_id == "TICKET-7"
    # the other tenant labels its own request of the same episode name, and only that one
    mine = await feedback(app, {"episode_id": "TICKET-7", "outcome": "failure"}, OTHER)
    assert mine.json()["updated"] == 1
    assert (await stored(app, a)).outcome == "success"


async def test_a_utf8_episode_header_is_the_same_id_as_in_a_json_body(make_app: AppFactory) -> None:
    """Seen: ``X-Turnout-Episode: café-42`` (UTF-8, as curl and the SDKs send it) was stored as
    ``cafÃ©-42``, so feedback for ``café-42`` found nothing."""
    app = await started(make_app)
    a = bare(await chat(app, {"x-turnout-episode": "café-42"}))
    b = bare(await chat(app, metadata={"episode_id": "café-42"}))
    assert (await stored(app, a)).episode_id == (await stored(app, b)).episode_id == "café-42"
    answer = await feedback(app, {"episode_id": "café-42", "outcome": "success"})
    assert answer.status == 200 and answer.json()["updated"] == 2


async def test_the_episode_id_is_turnouts_and_does_not_reach_the_target(make_app: AppFactory) -> None:
    fakes = {name: ScriptedProvider(name) for name in ("primary", "secondary", "onprem")}
    app = await make_app(config(), dict(fakes))
    await chat(app, metadata={"episode_id": "T-1", "topic": "billing"})
    sent = fakes["primary"].calls[-1].body
    assert sent["metadata"] == {"topic": "billing"}


async def test_a_request_can_join_an_episode_through_feedback(make_app: AppFactory) -> None:
    app = await started(make_app)
    request_id = bare(await chat(app))
    await stored(app, request_id)
    answer = await feedback(app, {"request_id": request_id, "episode_id": "T-2", "outcome": "success"})
    assert answer.status == 200
    assert (await stored(app, request_id)).episode_id == "T-2"


async def test_feedback_waits_briefly_for_a_row_still_in_the_writers_queue(make_app: AppFactory) -> None:
    app = await started(make_app)
    request_id = bare(await chat(app))  # sent at once: the row is most likely still queued
    answer = await feedback(app, {"request_id": request_id, "outcome": "success"})
    assert answer.status == 200
    assert (await stored(app, request_id)).outcome == "success"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"outcome": "success"}, "request_id"),
        ({"request_id": "x", "outcome": "great"}, "outcome"),
        ({"request_id": "x", "outcome": {}}, "outcome"),
        ({"request_id": "x", "outcome": ["success"]}, "outcome"),
        ({"request_id": "x", "outcome": "success", "human_review": "yes"}, "human_review"),
        ({"request_id": "x", "escalated": 1}, "escalated"),
        ({"request_id": "x", "value": "12"}, "value"),
        ({"request_id": "x", "value": True}, "value"),
        ({"request_id": "x", "value": 1.7e308}, "value"),  # two of them summed to inf in reports
        ({"request_id": "x", "value": -2e15}, "value"),
        ({"request_id": "x"}, "outcome"),
        ({"request_id": 7, "outcome": "success"}, "request_id"),
        ({"episode_id": "", "outcome": "success"}, "episode_id"),
        ({"episode_id": "e" * 300, "outcome": "success"}, "episode_id"),
        ({"request_id": "x", "outcome": "success", "labels": "vip"}, "labels"),
        ({"request_id": "x", "outcome": "success", "labels": [1]}, "labels"),
        ({"request_id": "x", "outcome": "success", "outcom": "x"}, "outcom"),
        # A bare prefix names no request: it was a 404 about "episode None", param episode_id.
        ({"request_id": "chatcmpl-", "outcome": "success"}, "request_id"),
        ({"request_id": "task- ", "outcome": "success"}, "request_id"),
        ({"request_id": "resp_", "episode_id": "e1", "outcome": "success"}, "request_id"),
    ],
)
async def test_invalid_feedback_is_refused_in_openais_shape(
    make_app: AppFactory, body: dict[str, Any], param: str
) -> None:
    app = await started(make_app)
    resp = await feedback(app, body)
    assert resp.status == 400
    error = resp.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, "invalid_value")


async def test_malformed_bodies_and_methods(make_app: AppFactory) -> None:
    app = await started(make_app)
    assert (await request(app, "POST", "/v1/feedback", raw=b"{", headers=AUTH)).json()["error"][
        "code"
    ] == "invalid_json"
    assert (await feedback(app, [1, 2])).status == 400
    assert (await request(app, "GET", "/v1/feedback", headers=AUTH)).status == 405


async def test_feedback_needs_a_key(make_app: AppFactory) -> None:
    app = await started(make_app)
    resp = await request(app, "POST", "/v1/feedback", {"request_id": "x", "outcome": "success"})
    assert resp.status == 401 and resp.json()["error"]["type"] == "authentication_error"
    bad = await feedback(app, {"request_id": "x", "outcome": "success"}, {"authorization": "Bearer nope"})
    assert bad.status == 401


async def test_labels_are_stored_and_idempotent(make_app: AppFactory) -> None:
    app = await started(make_app)
    request_id = bare(await chat(app))
    await stored(app, request_id)
    body = {"request_id": request_id, "outcome": "success", "labels": ["refund", "vip"]}
    first, second = await feedback(app, body), await feedback(app, body)
    assert first.status == second.status == 200 and first.json() == second.json()
    assert first.json() == {
        "object": "feedback",
        "updated": 1,
        "request_id": request_id,
        "outcome": "success",
        "labels": ["refund", "vip"],
    }
    assert "ignored" not in first.json()
    row = await stored(app, request_id)
    assert (row.outcome, row.labels) == ("success", ["refund", "vip"])


async def test_labels_left_out_are_kept_and_labels_given_replace_them(make_app: AppFactory) -> None:
    app = await started(make_app)
    request_id = bare(await chat(app))
    await stored(app, request_id)
    assert (await feedback(app, {"request_id": request_id, "labels": ["refund"]})).status == 200  # labels alone
    assert (await feedback(app, {"request_id": request_id, "human_review": True})).status == 200
    row = await stored(app, request_id)
    assert (row.human_review, row.labels) == (True, ["refund"])
    assert (await feedback(app, {"request_id": request_id, "labels": ["churn"]})).status == 200
    assert (await stored(app, request_id)).labels == ["churn"]
    assert (await feedback(app, {"request_id": request_id, "labels": []})).status == 200
    assert (await stored(app, request_id)).labels == []


async def test_an_episodes_feedback_labels_every_row(make_app: AppFactory) -> None:
    app = await started(make_app)
    a = bare(await chat(app, {"x-turnout-episode": "T-3"}))
    b = bare(await chat(app, {"x-turnout-episode": "T-3"}))
    c = bare(await chat(app))
    for request_id in (a, b, c):
        await stored(app, request_id)
    answer = await feedback(app, {"episode_id": "T-3", "outcome": "failure", "labels": ["escalation"]})
    assert answer.status == 200 and answer.json()["updated"] == 2
    assert [(await stored(app, r)).labels for r in (a, b, c)] == [["escalation"], ["escalation"], None]


async def test_without_a_ledger_feedback_is_unavailable(make_app: AppFactory) -> None:
    app = await make_app(
        config(store={"kind": "none"}), {n: ScriptedProvider(n) for n in ("primary", "secondary", "onprem")}
    )
    resp = await feedback(app, {"request_id": "x", "outcome": "success"})
    assert resp.status == 503 and resp.json()["error"]["code"] == "ledger_off"


async def test_an_invalid_episode_header_is_refused(make_app: AppFactory) -> None:
    app = await started(make_app)
    payload = {"model": "chat", "messages": MESSAGES}
    resp = await request(app, "POST", "/v1/chat/completions", payload, {**AUTH, "x-turnout-episode": "e" * 300})
    assert resp.status == 400 and resp.json()["error"]["param"] == "X-Turnout-Episode"


async def test_the_ids_every_door_answers_with_take_feedback(make_app: AppFactory) -> None:
    """Messages answers ``msg_<id>`` and Responses ``resp_<id>``: both were 404 here."""
    app = await started(make_app)
    for path, body, prefix in (
        ("/v1/messages", {"model": "chat", "max_tokens": 16, "messages": MESSAGES}, "msg_"),
        ("/v1/responses", {"model": "chat", "input": "hi"}, "resp_"),
    ):
        resp = await request(app, "POST", path, body, AUTH)
        assert resp.status == 200, resp.body
        given = resp.json()["id"]
        assert given.startswith(prefix)
        await stored(app, given.removeprefix(prefix))
        answer = await feedback(app, {"request_id": given, "outcome": "success"})
        assert answer.status == 200 and answer.json()["updated"] == 1, answer.body
        assert (await stored(app, given.removeprefix(prefix))).outcome == "success"


async def test_labels_with_control_characters_are_refused(make_app: AppFactory) -> None:
    app = await started(make_app)
    resp = await chat(app)
    for label in ("\x00", "\x1b[2J", "two\nlines"):
        answer = await feedback(app, {"request_id": resp.json()["id"], "labels": [label]})
        assert answer.status == 400 and answer.json()["error"]["param"] == "labels"


async def test_feedback_for_a_row_another_replica_still_holds_waits_for_it(make_app: AppFactory) -> None:
    """In a fleet the feedback often reaches a replica whose own writer is empty, while the
    replica that answered has the row a flush away: a request id issued moments ago is waited
    for (it was a final 404), an old or made-up one is not."""
    app = await started(make_app)
    store = app.runtime.store
    assert store is not None
    template = await stored(app, bare(await chat(app)))
    recent = new_request_id()  # answered just now by "another replica"
    row = dataclasses.replace(template, request_id=recent)
    asyncio.get_running_loop().call_later(0.3, lambda: asyncio.ensure_future(store.write_batch([row])))
    answer = await feedback(app, {"request_id": recent, "outcome": "success"})
    assert answer.status == 200 and answer.json()["updated"] == 1
    assert (await stored(app, recent)).outcome == "success"
    looked: list[str] = []
    lookup = store.set_outcome

    async def counted(request_id: str, *args: Any, **kwargs: Any) -> bool:
        looked.append(request_id)
        return await lookup(request_id, *args, **kwargs)

    store.set_outcome = counted  # type: ignore[method-assign]
    old = f"{int((time.time() - 3600) * 1000):012x}{'0' * 12}"
    assert (await feedback(app, {"request_id": old, "outcome": "success"})).status == 404
    assert (await feedback(app, {"request_id": "not-an-id", "outcome": "success"})).status == 404
    assert looked == [old, "not-an-id"]  # each looked up once: neither waited the pending window
    forged = f"{int(time.time() * 1000):012x}{'0' * 12}"  # recent-looking: waited for, boundedly
    assert (await feedback(app, {"request_id": forged, "outcome": "success"})).status == 404
    assert 2 <= looked.count(forged) <= PENDING_WAIT_S / MIN_POLL_S + 1


async def test_an_episodes_feedback_counts_the_rows_a_flush_away(make_app: AppFactory) -> None:
    app = await started(make_app)
    store = app.runtime.store
    writer = app.runtime.ledger
    assert store is not None and writer is not None
    template = await stored(app, bare(await chat(app, {"x-turnout-episode": "ep-flush"})))
    row = dataclasses.replace(template, request_id=new_request_id(), episode_id="ep-flush")
    # Answered elsewhere a moment ago: stored within one flush interval of the feedback's arrival.
    asyncio.get_running_loop().call_later(
        writer.flush_interval_s / 2, lambda: asyncio.ensure_future(store.write_batch([row]))
    )
    answer = await feedback(app, {"episode_id": "ep-flush", "outcome": "success"})
    assert answer.json()["updated"] == 2


async def test_the_key_may_come_as_x_api_key_as_on_every_door(make_app: AppFactory) -> None:
    """Anthropic's SDKs send the key as x-api-key, which every door takes and the Messages ids
    (msg_) feedback takes come from: feedback answered 401 "missing API key" to it."""
    app = await started(make_app)
    resp = await chat(app)
    await stored(app, bare(resp))
    key = AUTH["authorization"].removeprefix("Bearer ")
    answer = await feedback(app, {"request_id": resp.json()["id"], "outcome": "success"}, {"x-api-key": key})
    assert answer.status == 200, answer.body
    assert (await stored(app, bare(resp))).outcome == "success"
    other = await feedback(app, {"request_id": resp.json()["id"], "outcome": "failure"}, {"x-api-key": "sk-wrong-0"})
    assert other.status == 401
