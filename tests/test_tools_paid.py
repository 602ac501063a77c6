"""An answer the tool allowlist turns down was generated upstream: it is paid for. Its attempt
carries its cost in the row, the row's tokens count it, and the tenant's budget is charged —
whether the request then fails (refuse: 502) or falls back and succeeds. Before, a tenant who
could steer the model into a blocked tool call got unlimited answers billed nowhere."""

from __future__ import annotations

from typing import Any

import pytest

from tests.asgi import request
from tests.conftest import AppFactory
from tests.fakes.toolcalls import Script, ToolCaller
from tests.test_tools_allowlist import GOOD, KEY, ORDER, WEATHER, config, rows
from turnout.serving.app import App

PRICE = {"input_per_mtok": 100_000.0, "output_per_mtok": 100_000.0}  # 14 tokens: $1.40 an answer
BLOCKED = Script(calls=[("delete_all_records", "{}")])


async def started(make_app: AppFactory, primary: Script, secondary: Script, budget: float = 100.0) -> App:
    raw: dict[str, Any] = config()
    for target in raw["targets"].values():
        target["price"] = PRICE
    raw["tenants"]["acme"]["limits"] = {"usd_per_day": budget}
    return await make_app(
        raw, {"primary": ToolCaller("primary", primary), "secondary": ToolCaller("secondary", secondary)}
    )


async def ask(app: App, task: str, stream: bool = False) -> Any:
    body = {
        "model": task,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [WEATHER, ORDER],
        "stream": stream,
        "max_tokens": 20,
    }
    return await request(app, "POST", "/v1/chat/completions", body, {"authorization": f"Bearer {KEY}"})


@pytest.mark.parametrize("stream", [False, True])
async def test_a_refused_answer_is_charged_and_priced(make_app: AppFactory, stream: bool) -> None:
    app = await started(make_app, BLOCKED, Script(calls=[GOOD]))
    resp = await ask(app, "agent", stream)
    assert resp.status == 502
    [row] = await rows(app)
    [attempt] = row.attempts
    assert attempt.error_class == "tool_call_blocked"
    assert attempt.cost_usd is not None and attempt.cost_usd > 0
    assert row.cost_usd == attempt.cost_usd
    assert row.completion_tokens is not None and row.completion_tokens > 0
    assert row.usage_estimated is stream  # a stream cut at the blocked call reported no usage


async def test_a_turned_down_answer_before_a_fallback_is_charged_with_it(make_app: AppFactory) -> None:
    app = await started(make_app, Script(calls=[("get_weather", '{"city": 1}')]), Script(calls=[GOOD]))
    resp = await ask(app, "fallback")
    assert resp.status == 200 and resp.headers["x-turnout-target"] == "secondary"
    [row] = await rows(app)
    first, second = row.attempts
    assert first.error_class == "tool_call_blocked" and first.cost_usd == pytest.approx(1.4)
    assert second.cost_usd == pytest.approx(1.4)
    assert row.cost_usd == pytest.approx(2.8)
    assert (row.prompt_tokens, row.completion_tokens) == (10, 18)  # both answers' tokens


async def test_blocked_answers_exhaust_the_budget(make_app: AppFactory) -> None:
    """$50 a day, $1.40 an answer: the budget refuses the tenant once blocked answers have
    spent it (36 at most), instead of never."""
    app = await started(make_app, BLOCKED, BLOCKED, budget=50.0)
    statuses = [(await ask(app, "agent")).status for _ in range(60)]
    assert statuses[0] == 502 and 429 in statuses
    assert statuses.count(502) <= 50 / 1.4
