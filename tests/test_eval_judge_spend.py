"""Judge calls in ``turnout eval`` are priced by the runtime's price book and tallied apart from
the candidate's cost; unpriced judges are counted as such."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import AppFactory
from tests.fakes.scripted import ScriptedProvider, Step
from turnout.cli.evaluate import _judge
from turnout.offline.evals.judge_spend import JudgeSpend

CONFIG: dict[str, Any] = {
    "targets": {
        "judge": {
            "provider": "openai",
            "base_url": "http://j.invalid/v1",
            "model": "m",
            "price": {"input_per_mtok": 3, "output_per_mtok": 15},
        },
        "free": {"provider": "openai", "base_url": "http://f.invalid/v1", "model": "m"},
    },
    "tasks": {"t": {"route": ["judge"]}},
}


async def test_judge_calls_are_priced_and_counted(make_app: AppFactory) -> None:
    verdict = '{"pass": true, "reason": "ok"}'
    judge = ScriptedProvider("judge", Step(text=verdict), Step(text=verdict))
    free = ScriptedProvider("free", Step(text=verdict))
    app = await make_app(CONFIG, {"judge": judge, "free": free})
    spend = JudgeSpend()
    assert await _judge(app, "grade this", "judge", spend) == verdict
    await _judge(app, "grade that", "judge", spend)
    await _judge(app, "grade it", "free", spend)
    # The scripted answer reports 7 prompt + 3 completion tokens: 7 · $3 / 1M + 3 · $15 / 1M = $0.000066
    # a call; two priced calls = $0.000132, and the unpriced target's call is counted apart.
    assert spend.calls == 3 and spend.unpriced == 1
    assert spend.cost_usd == pytest.approx(2 * (7 * 3 + 3 * 15) / 1e6)
    assert spend.line() == "judge: 3 call(s), $0.000132 over 2 priced (1 unpriced)"
    assert spend.to_dict() == {"calls": 3, "cost_usd": pytest.approx(0.000132), "unpriced": 1}


def test_an_eval_without_judge_calls_says_so() -> None:
    spend = JudgeSpend()
    assert spend.line() == "judge: no calls" and spend.to_dict() == {"calls": 0, "cost_usd": 0.0, "unpriced": 0}
    spend.add(0.5)
    assert spend.line() == "judge: 1 call(s), $0.500000 over 1 priced"
