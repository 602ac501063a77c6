"""`turnout serve` in front of fake upstream processes, driven by the official openai and
anthropic SDKs: a caller's X-Turnout-Max-Latency-Ms / X-Turnout-Max-Cost-Usd (or metadata) skip
a target whose recent p95 is too slow and one whose worst case costs too much, before any
attempt (the fakes count what reaches them); nothing that fits is a 422, a bad value a 400, a
budget spent across attempts a 504; the ledger row records the limits and the skips."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests.serving import Process, Served, sdk_client, turnout_serve

pytestmark = pytest.mark.slow
KEY = "sk-e2e-constraints-4c1a"
SLOW_S = 0.6  # the slow fake's every answer: its p95 is at least this
WARM = 6  # answers from the slow target before it is judged (>= latency.MIN_SAMPLES)
NAMES = ("slow", "pricey", "cheap", "stuck")
PRICES = {
    "pricey": {"input_per_mtok": 100.0, "output_per_mtok": 1000.0},  # 8 tokens out alone: $0.008
    "cheap": {"input_per_mtok": 0.01, "output_per_mtok": 0.01},
    "slow": {"input_per_mtok": 0.01, "output_per_mtok": 0.01},
    "stuck": {"input_per_mtok": 0.01, "output_per_mtok": 0.01},
}


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, Process]]:
    started: dict[str, Process] = {}
    try:
        for name in NAMES:
            started[name] = Process("tests.fakes.upstream", "--model", f"{name}-model")
        yield started
    finally:
        for fake in started.values():
            fake.stop()


@pytest.fixture(scope="module")
def served(fakes: dict[str, Process], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    cwd = tmp_path_factory.mktemp("serve")
    targets: dict[str, Any] = {
        name: {
            "provider": "openai",
            "base_url": f"{fake.url}/v1",
            "model": f"{name}-model",
            "retry": {"attempts": 1},
            "timeouts": {"connect": 2, "ttft": 5, "total": 10},
        }
        for name, fake in fakes.items()
    }
    for name, price in PRICES.items():
        targets[name]["price"] = price
    config = {
        "targets": targets,
        "tenants": {"acme": {"keys": [KEY]}},
        "tasks": {"support": {"route": ["slow", "pricey", "cheap"]}, "stuck": {"route": ["stuck"]}},
    }
    path = cwd / "turnout.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    fakes["slow"].post("/_fault", {"head_delay": SLOW_S})
    fakes["stuck"].post("/_fault", {"mode": "hang"})
    with turnout_serve(cwd, path) as s:
        yield s


def ask(served: Served, task: str = "support", headers: dict[str, str] | None = None, **kw: Any) -> Any:
    return sdk_client(served.base_url, KEY).chat.completions.with_raw_response.create(
        model=task, messages=[{"role": "user", "content": "hello"}], max_tokens=8, extra_headers=headers, **kw
    )


def count(fake: Process) -> int:
    return sum(1 for r in fake.requests() if r["path"] == "/v1/chat/completions")


def test_a_is_the_slow_target_warmed_without_limits(served: Served, fakes: dict[str, Process]) -> None:
    for _ in range(WARM):
        assert ask(served).headers["x-turnout-target"] == "slow"
    assert count(fakes["slow"]) == WARM


def test_a_slow_target_is_skipped_before_any_attempt(served: Served, fakes: dict[str, Process]) -> None:
    before = {name: count(fakes[name]) for name in ("slow", "pricey")}
    resp = ask(served, headers={"X-Turnout-Max-Latency-Ms": str(int(SLOW_S * 1000) - 200)})
    assert resp.headers["x-turnout-target"] == "pricey"  # no history of its own yet: kept
    assert count(fakes["slow"]) == before["slow"]
    assert count(fakes["pricey"]) == before["pricey"] + 1


def test_an_expensive_target_is_skipped_too(served: Served, fakes: dict[str, Process]) -> None:
    before = {name: count(fakes[name]) for name in ("slow", "pricey", "cheap")}
    headers = {"X-Turnout-Max-Latency-Ms": "400", "X-Turnout-Max-Cost-Usd": "0.001"}
    resp = ask(served, headers=headers)
    assert resp.headers["x-turnout-target"] == "cheap"
    assert resp.parse().choices[0].message.content
    assert [count(fakes[n]) - before[n] for n in ("slow", "pricey", "cheap")] == [0, 0, 1]


def test_metadata_carries_the_limits_and_never_reaches_the_target(served: Served, fakes: dict[str, Process]) -> None:
    resp = ask(served, metadata={"max_cost_usd": "0.001", "max_latency_ms": "400", "ticket": "T-1"})
    assert resp.headers["x-turnout-target"] == "cheap"
    sent = fakes["cheap"].requests()[-1]["body"]
    assert sent["metadata"] == {"ticket": "T-1"}  # turnout's keys taken out, the caller's kept


def test_nothing_that_fits_is_a_422_naming_the_limit(served: Served) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        ask(served, headers={"X-Turnout-Max-Cost-Usd": "0.000000001"})
    err = caught.value.body
    assert isinstance(err, dict)
    assert err["code"] == "constraint_unsatisfiable"
    assert err["param"] == "max_cost_usd"
    assert "max_cost_usd=1e-09" in err["message"]


@pytest.mark.parametrize(
    ("headers", "metadata", "param"),
    [
        ({"X-Turnout-Max-Latency-Ms": "-5"}, None, "X-Turnout-Max-Latency-Ms"),
        ({"X-Turnout-Max-Cost-Usd": "cheap please"}, None, "X-Turnout-Max-Cost-Usd"),
        ({"X-Turnout-Max-Latency-Ms": "1e300"}, None, "X-Turnout-Max-Latency-Ms"),
        (None, {"max_latency_ms": "soon"}, "metadata.max_latency_ms"),
        (None, {"max_cost_usd": "0"}, "metadata.max_cost_usd"),
    ],
)
def test_a_bad_value_is_a_400_naming_the_field(
    served: Served, headers: dict[str, str] | None, metadata: dict[str, str] | None, param: str
) -> None:
    kw: dict[str, Any] = {"metadata": metadata} if metadata is not None else {}
    with pytest.raises(openai.BadRequestError) as caught:
        ask(served, headers=headers, **kw)
    err = caught.value.body
    assert isinstance(err, dict)
    assert err["param"] == param
    assert err["code"] == "invalid_value"


def test_the_budget_left_is_the_deadline_of_the_attempts(served: Served, fakes: dict[str, Process]) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        ask(served, task="stuck", headers={"X-Turnout-Max-Latency-Ms": "300"})
    assert caught.value.status_code == 504
    err = caught.value.body
    assert isinstance(err, dict)
    assert err["code"] == "max_latency_exceeded"
    assert count(fakes["stuck"]) == 1  # it was tried: no history said it was slow


def test_the_messages_door_honours_the_limits(served: Served, fakes: dict[str, Process]) -> None:
    client = anthropic.Anthropic(base_url=served.base_url.removesuffix("/v1"), api_key=KEY, max_retries=0)
    try:
        before = count(fakes["slow"])
        headers = {"X-Turnout-Max-Latency-Ms": "400", "X-Turnout-Max-Cost-Usd": "0.001"}
        raw = client.messages.with_raw_response.create(
            model="support", max_tokens=8, messages=[{"role": "user", "content": "hello"}], extra_headers=headers
        )
        assert raw.headers["x-turnout-target"] == "cheap"
        assert count(fakes["slow"]) == before
        with pytest.raises(anthropic.APIStatusError) as caught:
            client.messages.create(
                model="support",
                max_tokens=8,
                messages=[{"role": "user", "content": "hello"}],
                extra_headers={"X-Turnout-Max-Cost-Usd": "0.000000001"},
            )
        assert caught.value.status_code == 422
        assert "max_cost_usd" in str(caught.value.message)
    finally:
        client.close()


def test_zz_the_ledger_records_the_limits_and_the_skips(served: Served) -> None:
    served.stop()  # the ledger is flushed on shutdown
    db = served.log.parent / ".turnout" / "turnout.db"
    rows = sqlite3.connect(db).execute("SELECT target, status, constraints FROM requests").fetchall()
    limited = [r for r in rows if r[2] is not None]
    assert (
        "cheap",
        200,
        "max_latency_ms=400 max_cost_usd=0.001 skipped=slow:max_latency_ms,pricey:max_cost_usd",
    ) in limited
    assert ("pricey", 200, "max_latency_ms=400 skipped=slow:max_latency_ms") in limited
    assert (None, 422, "max_cost_usd=1e-09 skipped=slow:max_cost_usd,pricey:max_cost_usd,cheap:max_cost_usd") in limited
    assert (None, 504, "max_latency_ms=300") in limited
    assert sum(1 for r in rows if r[2] is None and r[0] == "slow") == WARM
