"""The planner's arithmetic: a known-answer test on a synthetic week whose every figure is
worked out by hand below, break-even edge cases, and the spec parser's errors."""

from __future__ import annotations

import math
import tracemalloc

import pytest

from turnout.offline.plan import (
    HourBucket,
    PlanError,
    SpecError,
    TargetStats,
    Traffic,
    parse_bedrock,
    parse_managed,
    parse_self_hosted,
    plan,
)
from turnout.offline.plan.full import step_edges
from turnout.offline.plan.model import break_even, demand, step_points
from turnout.offline.plan.render import as_json, table

MIDNIGHT = 19676 * 86400  # 2023-11-15 00:00 UTC
DAY_REQUESTS, NIGHT_REQUESTS = 100, 10  # per hour: 08:00-20:00 UTC is day, the rest night
INPUT, OUTPUT = 2000, 720  # tokens per request


def week() -> Traffic:
    """7 days; each day hour has 100 requests, each night hour 10; 2000 in + 720 out tokens
    each; one request in flight at a time; feedback on every request, 90% success, on 'gpt'."""
    hours = []
    for i in range(7 * 24):
        n = DAY_REQUESTS if 8 <= i % 24 < 20 else NIGHT_REQUESTS
        hours.append(HourBucket(MIDNIGHT + i * 3600, n, n * INPUT, n * OUTPUT, 1))
    requests = 7 * (12 * DAY_REQUESTS + 12 * NIGHT_REQUESTS)  # 7 · 1320 = 9240
    return Traffic("support", tuple(hours), {"gpt": TargetStats(requests, requests, requests * 9 // 10)})


SELF_HOSTED = "gpu_hour_usd=0.5,gpus=1,tokens_per_s=16,utilization=0.5,scale_down=night,night=20-8"


def test_known_answer() -> None:
    result = plan(
        week(),
        parse_self_hosted(SELF_HOSTED),
        parse_managed("input=5,output=25,target=gpt"),
        parse_bedrock("qwen.qwen3-32b-v1:0"),  # catalog: $0.15 in, $0.60 out per 1M
    )
    # Volume: 9240 requests in 7 days → × 30/7 = 39,600 requests a month.
    assert result.days == 7
    assert result.observed_requests == 9240
    assert result.monthly.requests == pytest.approx(39_600)
    assert result.monthly.input_tokens == pytest.approx(39_600 * 2000)  # 79.2M
    assert result.monthly.output_tokens == pytest.approx(39_600 * 720)  # 28.512M
    # Busiest hour: 100 requests · 720 output tokens / 3600 s = 20 tokens/s.
    assert result.peak_tokens_per_s == pytest.approx(20)
    assert result.peak_concurrency == 1

    managed = result.option("gpt")
    # 79.2M · $5 + 28.512M · $25 = 396 + 712.8 = $1,108.80 a month.
    assert managed.monthly_cost == pytest.approx(1108.8)
    assert managed.success.value == pytest.approx(0.9)
    assert managed.success.source.startswith("observed on gpt")
    # $1,108.80 / (39,600 · 0.9 = 35,640 completed tasks) = $0.031111.
    assert managed.cost_per_completed_task == pytest.approx(1108.8 / 35_640)

    bedrock = result.option("bedrock qwen.qwen3-32b-v1:0")
    # 79.2M · $0.15 + 28.512M · $0.60 = 11.88 + 17.1072 = $28.9872.
    assert bedrock.monthly_cost == pytest.approx(28.9872)
    assert bedrock.success.source.startswith("observed over all targets")  # bedrock served nothing
    assert bedrock.cost_per_completed_task == pytest.approx(28.9872 / 35_640)

    # A replica carries 16 tokens/s · 0.5 = 8 tokens/s. Peak 20 tokens/s → ceil(20 / 8) = 3 replicas,
    # all day: 3 · 1 GPU · $0.5 · 720 h = $1,080 a month.
    always_on = result.option("self-hosted")
    assert always_on.replicas == (3,) * 24
    assert always_on.monthly_cost == pytest.approx(1080)
    assert always_on.cost_per_completed_task == pytest.approx(1080 / 35_640)  # $0.030303
    # Utilization: 28.512M tokens / (3 · 720 h · 3600 s · 16 tokens/s = 124.416M) = 0.229167.
    assert always_on.utilization == pytest.approx(28.512e6 / 124.416e6)

    # Night scale-down (20:00-08:00 UTC): night peak 10 · 720 / 3600 = 2 tokens/s → ceil(2 / 8) = 1 replica.
    # 12 h · 3 + 12 h · 1 = 48 replica-hours a day · 30 days · $0.5 = $720 a month.
    night = result.option("self-hosted (night scale-down)")
    assert night.replicas == (1,) * 8 + (3,) * 12 + (1,) * 4
    assert night.monthly_cost == pytest.approx(720)
    assert night.cost_per_completed_task == pytest.approx(720 / 35_640)  # $0.020202
    assert night.utilization == pytest.approx(28.512e6 / (48 * 30 * 3600 * 16))  # 0.34375

    # Sensitivity: cost per request ÷ success rate.
    assert managed.cost_per_task_at(0.7) == pytest.approx(1108.8 / 39_600 / 0.7)
    assert always_on.cost_per_task_at(0.99) == pytest.approx(1080 / 39_600 / 0.99)
    assert result.sensitivity == (0.7, 0.8, 0.9, 0.95, 0.99)

    # Break-even, always-on vs gpt. k scales today's traffic; M(k) = 1108.8 k.
    # u = 20 / 8 = 2.5 replicas per unit of k in every hour; F = one replica a month = $360.
    # First fleet (1 replica) costs $360 and carries k ≤ 1 / 2.5 = 0.4: break-even at
    # k = 360 / 1108.8 = 0.32468 (12,857 requests a month), inside the first fleet.
    # Each step to n replicas (at k = (n-1)/2.5) makes managed cheaper again until k = 360 n / 1108.8,
    # while 360 n > 1108.8 (n - 1) / 2.5 = 443.52 (n - 1), i.e. n < 443.52 / 83.52 = 5.31:
    # the last crossing is in the 5-replica step, at k = 5 · 360 / 1108.8 = 1.62338.
    by_pair = {(b.self_hosted, b.versus): b for b in result.break_evens}
    b = by_pair[("self-hosted", "gpt")]
    assert b.first == pytest.approx(360 / 1108.8)
    assert b.first_replicas == 1
    assert b.first_fleet_until == pytest.approx(0.4)
    assert b.within_first_fleet
    assert b.stays_cheaper_from == pytest.approx(5 * 360 / 1108.8)
    assert b.self_hosted_per_k_at_scale == pytest.approx(360 * 2.5)  # $900 per unit of k at scale

    # Scale-down vs gpt: day hours u = 2.5, night u = 2 / 8 = 0.25; a replica-hour-of-day is $15 a month.
    # k ≤ 0.4: 24 slots · $15 = $360 → k = 0.32468. (0.4, 0.8]: 12 · 2 + 12 · 1 = 36 slots = $540 >
    # M(0.4) = 443.52, crossing at 540 / 1108.8 = 0.48701. (0.8, 1.2]: 48 slots = $720 < M(0.8) = 887.04, and
    # at scale $15 · (12 · 2.5 + 12 · 0.25) = $495 per unit of k < $1,108.80: cheaper for good from 0.48701.
    b = by_pair[("self-hosted (night scale-down)", "gpt")]
    assert b.first == pytest.approx(360 / 1108.8)
    assert b.stays_cheaper_from == pytest.approx(540 / 1108.8)
    assert b.self_hosted_per_k_at_scale == pytest.approx(495)

    # Against Bedrock ($28.99 per unit of k) self-hosted never catches up: at scale it adds $900 (or $495).
    for name in ("self-hosted", "self-hosted (night scale-down)"):
        b = by_pair[(name, "bedrock qwen.qwen3-32b-v1:0")]
        assert b.first is None and b.stays_cheaper_from is None


def test_known_answer_renders() -> None:
    result = plan(week(), parse_self_hosted(SELF_HOSTED), parse_managed("input=5,output=25,target=gpt"))
    text = table(result)
    assert "$1,109" in text and "$1,080" in text and "$720" in text
    assert "break-even at 12.9k requests/month" in text
    assert "stays cheaper above 64.3k requests/month" in text
    assert "Assumptions:" in text and "observed on gpt" in text
    assert "1-3 (by hour)" in text
    raw = as_json(result)
    first = raw["break_evens"][0]["first"]
    assert first["requests"] == pytest.approx(39_600 * 360 / 1108.8)
    assert raw["options"][0]["sensitivity"]["0.9"] == pytest.approx(1108.8 / 35_640)


def test_stated_success_rate_applies_where_nothing_was_observed() -> None:
    result = plan(
        week(),
        parse_self_hosted("gpu_hour_usd=1,gpus=1,tokens_per_s=100"),
        parse_managed("input=5,output=25,target=gpt"),
        assumed_success=0.8,
    )
    assert result.option("gpt").success.value == pytest.approx(0.9)  # observed wins
    hosted = result.option("self-hosted")
    assert hosted.success.value == 0.8 and "assumed" in hosted.success.source
    assert hosted.cost_per_completed_task == pytest.approx(hosted.monthly_cost / (39_600 * 0.8))


def test_no_feedback_assumes_every_request_completes() -> None:
    t = week()
    bare = Traffic(t.task, t.hours, {"gpt": TargetStats(9240)})
    hosted = plan(bare, parse_self_hosted("gpu_hour_usd=1,gpus=1,tokens_per_s=100")).option("self-hosted")
    assert hosted.success.value == 1.0 and "no feedback" in hosted.success.source


def test_concurrency_can_size_the_fleet() -> None:
    t = week()
    busy = Traffic(t.task, tuple(HourBucket(h.start, h.requests, h.input_tokens, h.output_tokens, 12) for h in t.hours))
    spec = parse_self_hosted("gpu_hour_usd=1,gpus=1,tokens_per_s=1000,concurrency=5")
    # Tokens need ceil(20 / 600) = 1 replica; 12 in flight at 5 each need ceil(12 / 5) = 3.
    assert plan(busy, spec).option("self-hosted").replicas == (3,) * 24


def test_total_tokens_count_input_too() -> None:
    spec = parse_self_hosted("gpu_hour_usd=1,gpus=1,tokens_per_s=100,utilization=1,count=total")
    # Busiest hour: 100 · (2000 + 720) / 3600 = 75.6 tokens/s per unit of k, on 100 tokens/s replicas.
    assert demand(week(), spec) == [pytest.approx(0.7555555555555555)] * 24


def test_break_even_when_the_fleet_never_grows() -> None:
    spec = parse_self_hosted("gpu_hour_usd=1,gpus=1,tokens_per_s=10")
    b = break_even(spec, [0.0] * 24, "self", "api", 100.0)
    # 1 replica all month = $720, so k = 7.2; nothing to carry, so no step ever comes.
    assert b.first == pytest.approx(7.2) and b.stays_cheaper_from == pytest.approx(7.2)
    assert b.first_fleet_until == math.inf


def test_break_even_beyond_the_first_fleet() -> None:
    spec = parse_self_hosted("gpu_hour_usd=1,gpus=1,tokens_per_s=10,min_replicas=2")
    # u = 1 per unit of k in every hour; F = $720. Fleet of 2 carries k ≤ 2 and costs $1,440.
    # M = $600 per k → first crossing at 1440 / 600 = 2.4 > 2: the 3-replica step (2, 3] costs $2,160,
    # 2160 / 600 = 3.6 > 3; (3, 4]: 2880 / 600 = 4.8 > 4 … never, since at scale $720 per k > $600.
    assert break_even(spec, [1.0] * 24, "self", "api", 600.0).first is None
    # M = $1,000 per k: 1440 / 1000 = 1.44 ≤ 2, in the first fleet; from there every step's cost
    # (720 n) is below M at its start (1000 (n - 1)) once n ≥ 3.57, and (2, 3] costs 2160 > 2000: the
    # last crossing is at 2160 / 1000 = 2.16.
    b = break_even(spec, [1.0] * 24, "self", "api", 1000.0)
    assert b.first == pytest.approx(1.44) and b.first_replicas == 2 and b.within_first_fleet
    assert b.stays_cheaper_from == pytest.approx(2.16)


def test_step_points_are_the_lowest_distinct_steps_of_every_hour() -> None:
    # Hours needing 2 and 3 replicas per unit of k, from 1 replica: steps at j/2 and j/3.
    assert step_points([2.0, 0.0, 3.0, 2.0], 1, 2.0, 100) == pytest.approx(
        [1 / 3, 1 / 2, 2 / 3, 1.0, 4 / 3, 3 / 2, 5 / 3, 2.0]
    )
    assert step_points([2.0, 3.0], 1, 2.0, 3) == pytest.approx([1 / 3, 1 / 2, 2 / 3])


def test_a_fleet_that_grows_often_is_walked_in_bounded_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen: ``--self-hosted ...,tokens_per_s=1e-300`` (or a small GPU on a busy task) made
    millions of steps per hour of the day, every one held in a set at once, and the plan was
    killed for memory. Here over a million steps each way; the walk holds the steps it looks
    at (MAX_STEPS, cut to 1,000 to keep the test quick), not every step."""
    monkeypatch.setattr("turnout.offline.plan.model.MAX_STEPS", 1000)
    monkeypatch.setattr("turnout.offline.plan.full.MAX_STEPS", 1000)
    spec = parse_self_hosted("gpu_hour_usd=1,gpus=1,tokens_per_s=10")
    need = [60.0 + h / 7 for h in range(24)]  # 24 hours of about 60,000 steps below k = 1000
    at_scale = 30 * sum(need)  # self-hosted's cost per unit of k once every hour has grown
    tracemalloc.start()
    try:
        # A per-token price a hair above it: the last crossing is 24 / 2e-5 = 1.2M steps away.
        b = break_even(spec, need, "self", "api", at_scale * (1 + 2e-5))
        edges = step_edges(need, 1, 1000.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not b.exact and len(edges) == 1001
    assert edges == sorted(set(edges)) and edges[1] == pytest.approx(1 / need[-1])
    assert peak < 5_000_000, f"{peak:,} bytes"


def test_no_traffic_is_an_error() -> None:
    with pytest.raises(PlanError, match="no traffic"):
        plan(Traffic("support", ()), parse_self_hosted("gpu_hour_usd=1,gpus=1,tokens_per_s=10"))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gpus=1,tokens_per_s=10", "missing gpu_hour_usd"),
        ("gpu_hour_usd=1,gpus=0,tokens_per_s=10", "gpus=0: expected a whole number above 0"),
        ("gpu_hour_usd=x,gpus=1,tokens_per_s=10", "gpu_hour_usd=x: expected a number above 0"),
        ("gpu_hour_usd=1,gpus=1,tokens_per_s=10,utilization=1.5", "utilization=1.5"),
        ("gpu_hour_usd=1,gpus=1,tokens_per_s=10,scale_down=weekend", "none, hourly or night"),
        ("gpu_hour_usd=1,gpus=1,tokens_per_s=10,night=25-6", "night=25-6"),
        ("gpu_hour_usd=1,gpus=1,tokens_per_s=10,night=6-6", "night=6-6"),
        ("gpu_hour_usd=1,gpus=1,tokens_per_s=10,count=input", "output or total"),
        ("gpu_hour_usd=1,gpus=1,tokens_per_s=10,colour=red", "unknown key(s) colour"),
        ("gpu_hour_usd=1,gpus=1,gpus=2,tokens_per_s=10", "gpus: given twice"),
        ("gpu_hour_usd=1,gpus,tokens_per_s=10", "'gpus': expected key=value"),
    ],
)
def test_self_hosted_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_self_hosted(spec)


def test_self_hosted_spec_parses() -> None:
    spec = parse_self_hosted(
        "gpu_hour_usd=7.91,gpus=4,tokens_per_s=5000,utilization=0.7,count=total,concurrency=64,"
        "min_replicas=2,scale_down=night,night=23-7,target=vllm,name=h200"
    )
    assert (spec.gpu_hour_usd, spec.gpus, spec.tokens_per_s, spec.utilization) == (7.91, 4, 5000, 0.7)
    assert (spec.count, spec.concurrency, spec.min_replicas, spec.scale_down) == ("total", 64, 2, "night")
    assert spec.night_hours() == frozenset({23, 0, 1, 2, 3, 4, 5, 6})
    assert (spec.target, spec.name) == ("vllm", "h200")
    assert spec.capacity == pytest.approx(3500)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("input=3", "missing output"),
        ("input=-1,output=2", "input=-1"),
        ("input=1,output=2,cached=1", "unknown key"),
        ("no-such-model", "not a priced config target or Bedrock catalog model"),
        ("", "not a priced"),
    ],
)
def test_managed_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_managed(spec)


def test_managed_spec_by_price_or_by_catalog_name() -> None:
    assert parse_managed("input=3,output=15").name == "managed"
    named = parse_managed("input=3,output=15,target=gpt")
    assert (named.name, named.target, named.input_per_mtok, named.output_per_mtok) == ("gpt", "gpt", 3, 15)
    llama = parse_managed("us.meta.llama3-3-70b-instruct-v1:0")  # a cross-region profile id
    assert (llama.input_per_mtok, llama.output_per_mtok) == (0.72, 0.72)


def test_bedrock_spec_errors() -> None:
    with pytest.raises(SpecError, match="not in turnout's Bedrock catalog"):
        parse_bedrock("acme.model-v1")
    with pytest.raises(SpecError, match="has no price"):
        parse_bedrock("qwen.qwen3-coder-30b-a3b-v1:0")
