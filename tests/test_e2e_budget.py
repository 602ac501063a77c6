"""A real ``turnout serve`` and the official SDK: a hundred streams read to their last word and
dropped before the usage chunk are each charged what was generated, and the budget refuses
once spent (before, each was charged $0: 100 of them cost $4.90 at list price against $1.00)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.budget import BACKENDS, limits
from tests.serving import Process, sdk_client, turnout_serve
from turnout.control.tokens import completion_tokens, prompt_tokens

pytestmark = pytest.mark.slow
KEY = "sk-acme-e2e-budget-0001"
PRICE = {"input_per_mtok": 100.0, "output_per_mtok": 1000.0}
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me a story."}]
REPLY = ["Once", " upon", " a", " time", "."]
BUDGET = 1.0


@pytest.fixture(scope="module")
def upstream() -> Iterator[Process]:
    fake = Process("tests.fakes.upstream", ready_path="/v1/models")
    fake.post("/_reply", {"text": REPLY, "usage": {"prompt_tokens": 9, "completion_tokens": 40, "total_tokens": 49}})
    fake.post("/_fault", {"mode": "ok", "chunk_delay": 0.02})  # the client leaves between two chunks
    yield fake
    fake.stop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_hundred_streams_dropped_before_the_usage_chunk_are_paid_for(
    tmp_path: Path, upstream: Process, backend: str
) -> None:
    with limits(backend) as section:
        config: dict[str, Any] = {
            "limits": section,
            "targets": {"up": {"provider": "openai", "base_url": upstream.url + "/v1", "model": "m", "price": PRICE}},
            "tenants": {"acme": {"keys": [KEY], "limits": {"usd_per_day": BUDGET}}},
            "tasks": {"chat": {"route": ["up"]}},
        }
        (tmp_path / "turnout.yaml").write_text(json.dumps(config))
        codes: list[str | None] = []  # of the refusals
        with turnout_serve(tmp_path, tmp_path / "turnout.yaml") as served:
            client = sdk_client(served.base_url, KEY)
            for _ in range(100):
                try:
                    stream = client.chat.completions.create(
                        model="chat",
                        messages=MESSAGES,
                        max_tokens=200,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                except openai.RateLimitError as exc:
                    codes.append(exc.code)
                    continue
                words = []
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        words.append(chunk.choices[0].delta.content)
                    if len(words) == len(REPLY):
                        break  # the whole answer read; the finish and usage chunks never are
                stream.close()
                assert "".join(words) == "".join(REPLY)
        rows = sqlite3.connect(tmp_path / ".turnout" / "turnout.db").execute(
            "SELECT status, usage_estimated, prompt_tokens, completion_tokens, cost_usd FROM requests"
        )
        found = rows.fetchall()
    charged = [r for r in found if r[0] != 429]
    assert len(found) == 100 and len(codes) == 100 - len(charged) > 0
    assert set(codes) == {"budget_exceeded"}
    prompt, completion = prompt_tokens({"messages": MESSAGES}), completion_tokens(REPLY)
    cost = (prompt * PRICE["input_per_mtok"] + completion * PRICE["output_per_mtok"]) / 1e6
    for status, estimated, p, c, usd in charged:
        assert status in (200, 499)  # 200 only if the whole stream was relayed before the close was seen
        if status == 499:
            assert (estimated, p, c) == (1, prompt, completion)
            assert usd == pytest.approx(cost)
        assert usd > 0
    reserved = (prompt * PRICE["input_per_mtok"] + 200 * PRICE["output_per_mtok"]) / 1e6
    total = sum(r[4] for r in charged)
    assert BUDGET - reserved < total <= BUDGET  # spent up to the budget, never past it
