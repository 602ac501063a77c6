"""Budgets cover the output stage: a checked task's reservation holds its first answer, every
repair re-ask (each prompt grown by the rejected answer and the repair turn) and the escalation
target's worst case, so a request whose repairs or escalation might not fit is refused up front
(429 ``budget_exceeded``, before any upstream call) and one that is admitted never spends past
the budget, against the in-process and the Redis limiter. The upstream here charges the most
the bound allows: its prompt tokens are turnout's own prompt bound of what it received, its
completion tokens the request's ``max_tokens``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.asgi import Response, request
from tests.budget import BACKENDS, ledger, limits
from tests.conftest import AppFactory
from tests.fakes.upstream import FakeUpstream
from turnout.control.quota.plan import REPAIR_TURN_TOKENS
from turnout.control.tokens import TOKENS_PER_MESSAGE, prompt_tokens
from turnout.safety.output import HINT_BYTES, Checks, capped
from turnout.safety.tools import compile_schema
from turnout.serving.app import App
from turnout.serving.output import REPAIR_SUFFIX

KEY = "sk-acme-outbudget-0001"
ADMIN = "adm-outbudget-0123456789"
PRICE = {"input_per_mtok": 100.0, "output_per_mtok": 1000.0}
DEAR = {"input_per_mtok": 400.0, "output_per_mtok": 4000.0}
ORDER = {"type": "object", "required": ["order_id"], "properties": {"order_id": {"type": "string"}}}
GOOD = '{"order_id": "A-17"}'
BAD = '{"order": 17}'
ASK = [{"role": "user", "content": "Extract the order from: order A-17, shipped on Monday."}]
MAX_TOKENS = 40
PROMPT = prompt_tokens({"messages": ASK, "max_tokens": MAX_TOKENS})


def usd(prompt: int, completion: int, price: dict[str, float] = PRICE) -> float:
    return (prompt * price["input_per_mtok"] + completion * price["output_per_mtok"]) / 1e6


def chain(repairs: int, price: dict[str, float] = PRICE) -> float:
    """The most the first answer and ``repairs`` re-asks of one target may cost: each re-ask is
    the request with one rejected answer (at most ``MAX_TOKENS``) and one repair turn."""
    return usd(PROMPT, MAX_TOKENS, price) + repairs * usd(PROMPT + MAX_TOKENS + REPAIR_TURN_TOKENS, MAX_TOKENS, price)


class DearUpstream(FakeUpstream):
    """Charges the most the reservation's bound allows: the prompt bound turnout itself computes
    for what was sent, and every token of ``max_tokens``."""

    def _usage(self, body: Any) -> dict[str, int] | None:
        prompt = prompt_tokens(body)
        completion = int(body.get("max_tokens") or 0)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@dataclass
class Setup:
    small: DearUpstream
    strong: DearUpstream
    section: dict[str, Any]


@pytest.fixture(params=BACKENDS)
def limits_section(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    with limits(request.param) as section:
        yield section


@pytest.fixture
async def ups(limits_section: dict[str, Any]) -> AsyncIterator[Setup]:
    async with DearUpstream() as small, DearUpstream() as strong:
        small.reply, strong.reply = (BAD,), (GOOD,)
        yield Setup(small, strong, limits_section)


def config(s: Setup, budget: float, tasks: dict[str, Any], *, strong_price: dict[str, float] = PRICE) -> dict[str, Any]:
    target = {"provider": "openai", "model": "m", "retry": {"attempts": 1}}
    return {
        "server": {"admin_key": ADMIN},
        "limits": s.section,
        "targets": {
            "small": {**target, "base_url": s.small.base_url, "price": PRICE},
            "strong": {**target, "base_url": s.strong.base_url, "price": strong_price},
        },
        "tenants": {"acme": {"keys": [KEY], "limits": {"usd_per_day": budget}}},
        "tasks": tasks,
    }


def checked(repairs: int, to: str | None = None, route: tuple[str, ...] = ("small",)) -> dict[str, Any]:
    output: dict[str, Any] = {"schema": ORDER, "repair_attempts": repairs}
    if to is not None:
        output["escalate"] = {"to": to}
    return {"route": list(route), "output": output}


async def chat(app: App, task: str, **extra: Any) -> Response:
    body = {"model": task, "messages": ASK, "max_tokens": MAX_TOKENS, **extra}
    return await request(app, "POST", "/v1/chat/completions", body, {"authorization": f"Bearer {KEY}"})


async def day(app: App) -> dict[str, Any]:
    resp = await request(app, "GET", "/admin/usage?tenant=acme", headers={"authorization": f"Bearer {ADMIN}"})
    [scope] = resp.json()["data"]
    state: dict[str, Any] = scope["usage"]["usd_per_day"]
    return state


def chats(fake: FakeUpstream) -> int:
    return sum(1 for r in fake.requests if r.path.endswith("/chat/completions"))


def refused_for_budget(resp: Response) -> bool:
    return resp.status == 429 and resp.json()["error"]["code"] == "budget_exceeded"


# --- refused up front ----------------------------------------------------------------------------


async def test_a_budget_for_one_answer_but_not_its_repairs_is_refused_before_any_call(
    make_app: AppFactory, ups: Setup
) -> None:
    one = usd(PROMPT, MAX_TOKENS)
    budget = 1.5 * one  # the first answer fits; it and two repairs do not
    assert chain(2) > budget
    app = await make_app(config(ups, budget, {"extract": checked(2)}))
    resp = await chat(app, "extract")
    assert refused_for_budget(resp)
    assert chats(ups.small) == 0  # nothing was generated, nothing overspent
    assert (await day(app))["spent"] == 0


async def test_the_escalation_targets_worst_case_is_reserved_too(make_app: AppFactory, ups: Setup) -> None:
    budget = chain(1) + usd(PROMPT, MAX_TOKENS, DEAR) * 0.99  # repairs fit; the dear escalation does not
    tasks = {"upgrade": checked(1, "strong")}
    app = await make_app(config(ups, budget, tasks, strong_price=DEAR))
    resp = await chat(app, "upgrade")
    assert refused_for_budget(resp)
    assert chats(ups.small) == chats(ups.strong) == 0


# --- admitted: never past the budget -------------------------------------------------------------


async def test_repairs_and_an_escalation_that_fit_spend_at_most_the_budget(make_app: AppFactory, ups: Setup) -> None:
    budget = chain(2) + usd(PROMPT, MAX_TOKENS, DEAR)  # exactly the reservation
    tasks = {"upgrade": checked(2, "strong")}
    app = await make_app(config(ups, budget, tasks, strong_price=DEAR))
    resp = await chat(app, "upgrade")
    assert resp.status == 200 and resp.headers["x-turnout-target"] == "strong"
    assert chats(ups.small) == 3 and chats(ups.strong) == 1  # the answer, two repairs, the escalation
    [row] = await ledger(app, 1)
    assert (row.repairs, row.escalated_to) == (2, "strong")
    assert row.cost_usd is not None and 0 < row.cost_usd <= budget
    # Four answers at their dearest: several times what one answer's reservation (the gate's
    # before repairs and escalation counted) would have held back.
    assert row.cost_usd > 4 * usd(PROMPT, MAX_TOKENS)
    state = await day(app)
    assert state["spent"] == pytest.approx(row.cost_usd, abs=1e-5) and state["reserved"] == 0
    # What is left cannot hold another worst case: the next request is refused before any call.
    assert refused_for_budget(await chat(app, "upgrade"))
    assert chats(ups.small) == 3


async def test_a_cent_short_of_the_reservation_is_refused(make_app: AppFactory, ups: Setup) -> None:
    budget = chain(2) + usd(PROMPT, MAX_TOKENS) - 0.01
    app = await make_app(config(ups, budget, {"upgrade": checked(2, "strong")}))
    assert refused_for_budget(await chat(app, "upgrade"))


async def test_an_escalation_to_a_person_reserves_no_tokens(make_app: AppFactory, ups: Setup) -> None:
    budget = chain(1)
    app = await make_app(config(ups, budget, {"person": checked(1, "human")}))
    resp = await chat(app, "person")
    assert resp.status == 202 and resp.json()["status"] == "pending"
    [row] = await ledger(app, 1)
    assert row.cost_usd is not None and row.cost_usd <= budget


async def test_a_request_its_task_does_not_check_reserves_one_answer(make_app: AppFactory, ups: Setup) -> None:
    # ``output: {}`` checks only a requested response_format: without one, nothing is repaired.
    ups.small.reply = ("anything",)
    budget = usd(PROMPT, MAX_TOKENS) * 1.01
    tasks = {"format": {"route": ["small"], "output": {"repair_attempts": 3, "escalate": {"to": "strong"}}}}
    app = await make_app(config(ups, budget, tasks))
    assert (await chat(app, "format")).status == 200
    # The same task asked for JSON is checked: its repairs and escalation no longer fit.
    asked = {"response_format": {"type": "json_object"}}
    assert refused_for_budget(await chat(app, "format", **asked))


async def test_cheaper_keeps_the_targets_whose_repairs_and_escalation_fit(make_app: AppFactory, ups: Setup) -> None:
    async with DearUpstream(reply=(BAD,)) as dear:
        tasks = {"pick": {**checked(1, "strong", ("dear", "small")), "on_budget_exceeded": "cheaper"}}
        budget = chain(1) + usd(PROMPT, MAX_TOKENS)  # the cheap chain and the escalation; not the dear chain
        assert chain(1, DEAR) + usd(PROMPT, MAX_TOKENS) > budget
        cfg = config(ups, budget, tasks)
        cfg["targets"]["dear"] = {**cfg["targets"]["small"], "base_url": dear.base_url, "price": DEAR}
        app = await make_app(cfg)
        resp = await chat(app, "pick")
        assert resp.status == 200 and resp.headers["x-turnout-target"] == "strong"
        assert chats(dear) == 0 and chats(ups.small) == 2
        [row] = await ledger(app, 1)
        assert row.cost_usd is not None and row.cost_usd <= budget


async def test_cheaper_still_refuses_when_the_escalation_alone_does_not_fit(make_app: AppFactory, ups: Setup) -> None:
    tasks = {"pick": {**checked(1, "strong"), "on_budget_exceeded": "cheaper"}}
    budget = usd(PROMPT, MAX_TOKENS, DEAR) * 0.9
    app = await make_app(config(ups, budget, tasks, strong_price=DEAR))
    assert refused_for_budget(await chat(app, "pick"))
    assert chats(ups.small) == 0


# --- the repair turn's bound ---------------------------------------------------------------------


def test_the_repair_turn_bound_holds_the_longest_hint_and_its_suffix() -> None:
    assert HINT_BYTES + len(REPAIR_SUFFIX.encode()) + 2 * TOKENS_PER_MESSAGE <= REPAIR_TURN_TOKENS


@pytest.mark.parametrize("char", ["a", "é", "語", "🙂"])
def test_a_hint_is_capped_in_bytes_never_inside_a_character(char: str) -> None:
    hint = capped(char * 5000)
    assert len(hint.encode()) <= HINT_BYTES and hint == char * len(hint)
    assert len(hint.encode()) > HINT_BYTES - 4
    assert capped("short") == "short"


def test_a_schema_hint_quoting_a_huge_answer_stays_within_the_bound() -> None:
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    checks = Checks((("s", compile_schema(schema, "s")),), None, {}, fenced=False)
    answer = '{"x": "' + "語" * 3000 + '"}'
    problem = checks.verify({"choices": [{"message": {"content": answer}}]})
    assert problem is not None and problem.reason == "schema"
    assert len(problem.hint.encode()) <= HINT_BYTES
