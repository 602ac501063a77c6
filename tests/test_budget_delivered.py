"""Delivered text is always paid for: an answer whose usage never came (a client that leaves
before the usage chunk, a stream cut mid-way, an upstream that reports none) is charged what
it generated, counted like the prompt, against the budget and in its ledger row
(``usage_estimated``); and the one overshoot left (an upstream that ignores ``max_tokens``) is
bounded to one request's overrun. Each against the in-process and the Redis limiter."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.asgi import Response, request
from tests.budget import BACKENDS, ledger, limits, spent
from tests.conftest import AppFactory
from tests.fakes.upstream import FakeUpstream, Fault
from tests.test_task_api import StaticRegistry, release
from turnout.control.tokens import completion_tokens, prompt_tokens
from turnout.ledger.record import LedgerRow
from turnout.releases.base import Serving
from turnout.serving.app import App

KEY = "sk-acme-budget-0123456789"
ADMIN = "adm-budget-0123456789abcdef"
PRICE = {"input_per_mtok": 100.0, "output_per_mtok": 1000.0}
REPLY = ("Hello", ",", " world")
MESSAGES = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
MAX_TOKENS = 100
PROMPT = prompt_tokens({"messages": MESSAGES})
RESERVED = (PROMPT * PRICE["input_per_mtok"] + MAX_TOKENS * PRICE["output_per_mtok"]) / 1e6


def usd(prompt: int, completion: int) -> float:
    return (prompt * PRICE["input_per_mtok"] + completion * PRICE["output_per_mtok"]) / 1e6


@pytest.fixture(params=BACKENDS)
def limits_section(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    with limits(request.param) as section:
        yield section


def config(base_url: str, budget: float, limits_section: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "server": {"admin_key": ADMIN},
        "limits": limits_section,
        "targets": {"up": {"provider": "openai", "base_url": base_url, "model": "m", "price": PRICE}},
        "tenants": {"acme": {"keys": [KEY], "limits": {"usd_per_day": budget}}},
        "tasks": {"chat": {"route": ["up"]}},
        **extra,
    }


async def chat(app: App, disconnect_after: int | None = None, **body: Any) -> Response:
    payload = {"model": "chat", "messages": MESSAGES, "max_tokens": MAX_TOKENS, **body}
    headers = {"authorization": f"Bearer {KEY}"}
    return await request(app, "POST", "/v1/chat/completions", payload, headers, disconnect_after=disconnect_after)


async def budget_state(app: App) -> dict[str, Any]:
    resp = await request(app, "GET", "/admin/usage?tenant=acme", headers={"authorization": f"Bearer {ADMIN}"})
    [scope] = resp.json()["data"]
    state: dict[str, Any] = scope["usage"]["usd_per_day"]
    return state


def answered(rows: list[LedgerRow]) -> list[LedgerRow]:
    return [r for r in rows if r.status != 429]


async def test_a_hundred_streams_dropped_before_the_usage_chunk_are_charged_until_refused(
    make_app: AppFactory, limits_section: dict[str, Any]
) -> None:
    budget = 20.5 * RESERVED  # room for dozens of abandoned streams, each charged far less than it reserved
    async with FakeUpstream(reply=REPLY, fault=Fault(chunk_delay=0.005)) as fake:
        app = await make_app(config(fake.base_url, budget, limits_section))
        # The client reads the role chunk and the three content chunks, then leaves: the finish
        # chunk and the usage chunk (asked for with include_usage) are never read.
        statuses = [
            (await chat(app, 4, stream=True, stream_options={"include_usage": True})).status for _ in range(100)
        ]
        rows = await ledger(app, 100)
        state = await budget_state(app)
    charged = [r for r in rows if r.status == 499]
    refused = [r for r in rows if r.status == 429]
    assert len(charged) + len(refused) == 100 and charged and refused
    assert statuses == [200] * len(charged) + [429] * len(refused)  # once spent, every next one is refused
    completion = completion_tokens(REPLY)  # what was generated: the whole reply, its usage unread
    for row in charged:
        assert row.usage_estimated is True and row.error_class == "client_disconnected"
        assert (row.prompt_tokens, row.completion_tokens) == (PROMPT, completion)
        assert row.cost_usd == pytest.approx(usd(PROMPT, completion))
    assert {r.usage_estimated for r in refused} == {None}  # no answer: nothing to count
    assert spent(rows) <= budget
    assert state["spent"] == pytest.approx(spent(rows), abs=1e-5)  # settled, not released
    assert state["reserved"] == 0
    assert budget - spent(charged) < RESERVED  # refused because the next worst case did not fit


async def test_a_stream_dropped_mid_answer_is_charged_what_was_generated(
    make_app: AppFactory, limits_section: dict[str, Any]
) -> None:
    async with FakeUpstream(reply=("one ", "two ", "three ", "four ", "five"), fault=Fault(chunk_delay=0.02)) as fake:
        app = await make_app(config(fake.base_url, 1.0, limits_section))
        resp = await chat(app, 2, stream=True)  # the role chunk and "one ", then gone
        [row] = await ledger(app, 1)
        state = await budget_state(app)
    assert resp.status == 200 and row.status == 499 and row.usage_estimated is True
    relayed = completion_tokens(["one "])
    assert relayed <= (row.completion_tokens or 0) <= completion_tokens(["one ", "two "])  # and one in flight
    assert row.cost_usd is not None and row.cost_usd > 0
    assert state["spent"] == pytest.approx(row.cost_usd, abs=1e-5) and state["reserved"] == 0


async def test_a_stream_cut_by_the_upstream_is_charged(make_app: AppFactory, limits_section: dict[str, Any]) -> None:
    async with FakeUpstream(reply=REPLY, fault=Fault("cut")) as fake:  # hangs up after "Hello"
        app = await make_app(config(fake.base_url, 1.0, limits_section))
        resp = await chat(app, stream=True)
        [row] = await ledger(app, 1)
        state = await budget_state(app)
    assert resp.events()[-2]["error"]["code"] == "stream_interrupted"
    assert row.status == 502 and row.usage_estimated is True
    assert row.completion_tokens == completion_tokens(["Hello"])
    assert state["spent"] == pytest.approx(usd(PROMPT, completion_tokens(["Hello"])), abs=1e-5)


async def test_streams_from_an_upstream_without_usage_are_charged(
    make_app: AppFactory, limits_section: dict[str, Any]
) -> None:
    async with FakeUpstream(reply=REPLY, no_usage=True) as fake:
        app = await make_app(config(fake.base_url, 1.0, limits_section))
        for _ in range(5):
            resp = await chat(app, stream=True, stream_options={"include_usage": True})
            assert resp.status == 200 and resp.events()[-1] == "[DONE]"
        rows = await ledger(app, 5)
        state = await budget_state(app)
    assert [(r.status, r.usage_estimated, r.completion_tokens) for r in rows] == [
        (200, True, completion_tokens(REPLY))
    ] * 5
    assert state["spent"] == pytest.approx(5 * usd(PROMPT, completion_tokens(REPLY)), abs=1e-5)


async def test_a_stream_that_asked_for_usage_gets_the_count_the_ledger_charged(make_app: AppFactory) -> None:
    """``include_usage`` from an upstream that sends no usage: the last chunk before ``[DONE]``
    is the usage chunk all the same, with the counts the row was charged (the gateway's, as
    ``usage_estimated`` says); without ``include_usage``, none."""
    async with FakeUpstream(reply=REPLY, no_usage=True) as fake:
        app = await make_app(config(fake.base_url, 1.0, {"backend": "memory"}))
        asked = await chat(app, stream=True, stream_options={"include_usage": True})
        plain = await chat(app, stream=True)
        rows = await ledger(app, 2)
    [row] = [r for r in rows if r.request_id == asked.headers["x-turnout-request-id"]]
    *_, last, done = asked.events()
    assert done == "[DONE]" and last["choices"] == [] and last["model"] == "chat"
    assert last["id"] == f"chatcmpl-{asked.headers['x-turnout-request-id']}"
    assert row.prompt_tokens is not None and row.completion_tokens is not None
    assert last["usage"] == {
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "total_tokens": row.prompt_tokens + row.completion_tokens,
    }
    assert (row.usage_estimated, row.completion_tokens) == (True, completion_tokens(REPLY))
    assert all("usage" not in e for e in plain.events()[:-1])


async def test_a_whole_answer_without_usage_is_charged_and_the_row_says_so(
    make_app: AppFactory, limits_section: dict[str, Any], tmp_path: Path
) -> None:
    store = {"kind": "sqlite", "path": str(tmp_path / "ledger.db"), "flush_interval_ms": 10}
    cost = usd(PROMPT, completion_tokens(REPLY))
    budget = RESERVED + 2.5 * cost  # three answers fit, with the worst case of the third
    async with FakeUpstream(reply=REPLY, no_usage=True) as fake:
        app = await make_app(config(fake.base_url, budget, limits_section, store=store))
        responses = [await chat(app) for _ in range(4)]
        rows = await ledger(app, 4)
    assert [r.status for r in responses] == [200, 200, 200, 429]
    assert [float(r.headers["x-turnout-cost-usd"]) for r in responses[:3]] == [pytest.approx(cost)] * 3
    assert sorted((r.status, r.usage_estimated) for r in rows) == [(200, True)] * 3 + [(429, None)]
    # The caller is told the count it was charged, as a stream that asked for usage is.
    [first] = [r for r in rows if r.request_id == responses[0].headers["x-turnout-request-id"]]
    assert first.prompt_tokens is not None and first.completion_tokens is not None
    assert responses[0].json()["usage"] == {
        "prompt_tokens": first.prompt_tokens,
        "completion_tokens": first.completion_tokens,
        "total_tokens": first.prompt_tokens + first.completion_tokens,
    }
    assert spent(rows) == pytest.approx(3 * cost) and spent(rows) <= budget
    stored = sqlite3.connect(tmp_path / "ledger.db").execute("SELECT status, usage_estimated FROM requests").fetchall()
    assert sorted(stored, key=lambda r: r[0]) == [(200, 1)] * 3 + [(429, None)]


async def test_an_answer_with_usage_is_charged_as_reported(make_app: AppFactory) -> None:
    usage = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    async with FakeUpstream(reply=REPLY, usage=usage) as fake:
        app = await make_app(config(fake.base_url, 1.0, {"backend": "memory"}))
        assert (await chat(app)).status == 200
        assert (await chat(app, stream=True)).status == 200
        rows = await ledger(app, 2)
    assert [(r.prompt_tokens, r.completion_tokens, r.usage_estimated) for r in rows] == [(11, 3, False)] * 2


async def test_an_upstream_that_ignores_max_tokens_passes_the_budget_by_one_overrun_at_most(
    make_app: AppFactory, limits_section: dict[str, Any]
) -> None:
    # The upstream answers 2,000 tokens whatever max_tokens says: each answer costs $2.0 more
    # than the 10 output tokens its reservation covered.
    usage = {"prompt_tokens": 20, "completion_tokens": 2000, "total_tokens": 2020}
    budget = 5.0
    async with FakeUpstream(reply=REPLY, usage=usage) as fake:
        app = await make_app(config(fake.base_url, budget, limits_section))
        statuses = [(await chat(app, max_tokens=10)).status for _ in range(6)]
        rows = await ledger(app, 6)
        state = await budget_state(app)
    cost = usd(20, 2000)
    reserved = usd(PROMPT, 10)
    assert statuses == [200, 200, 200, 429, 429, 429]  # the third fits its reservation, then costs 2.0
    assert spent(rows) == pytest.approx(3 * cost)
    assert budget < spent(rows) <= budget + (cost - reserved)  # past it by one request's overrun at most
    assert state["spent"] == pytest.approx(3 * cost, abs=1e-5) and state["remaining"] == 0


async def test_a_task_answer_that_fails_its_schema_is_refused_but_paid_for(
    make_app: AppFactory, limits_section: dict[str, Any]
) -> None:
    usage = {"prompt_tokens": 30, "completion_tokens": 20, "total_tokens": 50}
    budget = 0.25
    async with FakeUpstream(reply=("Order", " A-17", " shipped"), usage=usage) as fake:
        raw = config(fake.base_url, budget, limits_section)
        raw["targets"] = {"primary": raw["targets"]["up"]}
        raw["tasks"] = {"extract": {"route": ["primary"]}}
        app = await make_app(raw)
        app.runtime.releases = StaticRegistry(Serving(release("v1")))  # max_tokens 50, an output schema
        headers = {"authorization": f"Bearer {KEY}"}
        body = {"variables": {"text": "order A-17"}}
        responses = [await request(app, "POST", "/v1/tasks/extract", body, headers) for _ in range(10)]
        rows = await ledger(app, 10)
        state = await budget_state(app)
    failed = [r for r in responses if r.status == 502]
    assert failed and all(r.json()["error"]["code"] == "output_invalid" for r in failed)
    assert [r.status for r in responses] == [502] * len(failed) + [429] * (10 - len(failed))
    assert b"shipped" not in b"".join(r.body for r in responses)  # never handed out
    for row in answered(rows):
        assert (row.status, row.error_class, row.usage_estimated) == (502, "output_invalid", False)
        assert row.cost_usd == pytest.approx(usd(30, 20))
    assert state["spent"] == pytest.approx(len(failed) * usd(30, 20), abs=1e-5)
    assert state["spent"] <= budget


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1/responses"])
async def test_a_client_leaving_a_stalled_stream_frees_its_reservation_at_once(
    make_app: AppFactory, limits_section: dict[str, Any], path: str
) -> None:
    """The upstream sends its first chunk and then nothing for an hour: the client that leaves
    is not held to the next chunk. Its request ends (499, charged what came), its reservation
    is released and the upstream call is closed, without waiting for the upstream."""
    async with FakeUpstream(reply=REPLY, fault=Fault(chunk_delay=3600)) as fake:
        app = await make_app(config(fake.base_url, 1.0, limits_section))
        if path == "/v1/responses":
            payload: dict[str, Any] = {"model": "chat", "input": "Tell me.", "max_output_tokens": MAX_TOKENS}
        else:
            payload = {"model": "chat", "messages": MESSAGES, "max_tokens": MAX_TOKENS}
        payload["stream"] = True
        headers = {"authorization": f"Bearer {KEY}"}
        async with asyncio.timeout(30):  # before: the request waited the hour for the next chunk
            resp = await request(app, "POST", path, payload, headers, disconnect_after=1)
            [row] = await ledger(app, 1)
        state = await budget_state(app)
    assert resp.status == 200 and row.status == 499 and row.error_class == "client_disconnected"
    assert state["reserved"] == 0 and state["spent"] == pytest.approx(row.cost_usd or 0.0, abs=1e-5)


async def test_failed_attempts_priced_by_busy_seconds_are_charged_to_the_budget(
    make_app: AppFactory, limits_section: dict[str, Any]
) -> None:
    """A self-hosted target billed by busy seconds costs its failed attempts too (the replica was
    held): the row prices them, so the budget must count them. Released instead, requests that
    time out were never charged: spend in the ledger passed the budget and nothing refused."""
    hosted = {"gpu_hour_usd": 36.0, "gpus": 1}  # $0.01 a second held
    async with FakeUpstream(reply=REPLY, fault=Fault("hang")) as fake:
        cfg = config(
            fake.base_url, 0.01, limits_section, prices=[{"effective": "2020-01-01", "targets": {"up": hosted}}]
        )
        cfg["targets"]["up"] = {
            "provider": "openai",
            "base_url": fake.base_url,
            "model": "m",
            "timeouts": {"ttft": 0.3, "total": 0.3},
            "retry": {"attempts": 1},
            "breaker": {"failures": 100},
        }
        app = await make_app(cfg)
        statuses = [(await chat(app)).status for _ in range(6)]
        rows = await ledger(app, 6)
        state = await budget_state(app)
    failed = [r for r in rows if r.status == 504]
    assert failed and all(r.cost_usd is not None and r.cost_usd > 0 for r in failed)
    assert state["spent"] == pytest.approx(sum(r.cost_usd or 0.0 for r in failed), abs=1e-5)
    assert state["reserved"] == 0
    assert statuses[:3] == [504] * 3 and statuses[-1] == 429  # the timeouts used up the budget: $0.003 each
    assert state["spent"] <= 0.01 + 0.001  # past it by what the attempts ran over their 0.3 s at most
