"""The price book: which price applies when, and what a request, an attempt and an idle fleet
cost. Every expected figure is worked out by hand next to its assertion."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnout.config import validate
from turnout.control.pricing import ManagedPrice, PriceBook, SelfHostedPrice, reference_gpu_prices
from turnout.errors import ConfigError
from turnout.ledger.record import AttemptRecord
from turnout.providers.base import Usage
from turnout.providers.bedrock.stream import usage_of


def ts(day: str, hour: int = 0) -> float:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC).timestamp()


def config(prices: list[dict[str, Any]] | None = None, **targets: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, dict[str, Any]] = {
        "bedrock": {"provider": "bedrock", "model": "deepseek.v3.2", "region": "us-east-1"},
        "vllm": {"provider": "openai", "base_url": "http://vllm.invalid/v1", "model": "m"},
        "local": {"provider": "local"},
    }
    base.update(targets)
    raw: dict[str, Any] = {"targets": base, "tasks": {"t": {"route": list(base)}}}
    if prices is not None:
        raw["prices"] = prices
    return raw


def book(prices: list[dict[str, Any]] | None = None, **targets: dict[str, Any]) -> PriceBook:
    return PriceBook(validate(config(prices, **targets)))


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        validate(raw)
    return caught.value.problems


MANAGED = {"input_per_mtok": 2.0, "output_per_mtok": 8.0}
BEDROCK = {"provider": "bedrock", "model": "deepseek.v3.2", "region": "us-east-1"}
# One replica = 4 GPUs at $2/GPU-h = $8 per replica-hour.
FLEET = {"gpu_hour_usd": 2.0, "gpus": 4, "replicas": 2}
WHEN = ts("2026-06-15", 12)


# --- precedence -------------------------------------------------------------------------------


def test_the_catalog_prices_a_bedrock_model_and_local_is_free() -> None:
    prices = book()
    assert prices.price_at("bedrock", WHEN) == ManagedPrice(0.62, 1.85)  # data/bedrock_models.yaml
    assert prices.price_at("local", WHEN) == ManagedPrice(0.0, 0.0)
    assert prices.price_at("vllm", WHEN) is None  # nothing says: unpriced
    assert prices.request_cost("vllm", Usage(10, 10), 1.0, WHEN) is None  # never 0


def test_a_target_price_wins_over_the_catalog() -> None:
    target = {"provider": "bedrock", "model": "deepseek.v3.2", "region": "us-east-1", "price": MANAGED}
    assert book(bedrock=target).price_at("bedrock", WHEN) == ManagedPrice(2.0, 8.0)


def test_the_price_book_wins_over_the_target_price_from_its_date() -> None:
    target = {"provider": "bedrock", "model": "deepseek.v3.2", "region": "us-east-1", "price": MANAGED}
    prices = book(
        [{"effective": "2026-06-01", "targets": {"bedrock": {"input_per_mtok": 1, "output_per_mtok": 1}}}],
        bedrock=target,
    )
    assert prices.price_at("bedrock", ts("2026-06-01")) == ManagedPrice(1.0, 1.0)  # from 00:00 UTC
    assert prices.price_at("bedrock", ts("2026-06-01") - 1) == ManagedPrice(2.0, 8.0)  # before: the target's
    assert prices.price_at("local", WHEN) == ManagedPrice(0.0, 0.0)  # targets the book omits: as before


# --- versioning -------------------------------------------------------------------------------


def test_the_newest_version_naming_the_target_applies_whatever_the_file_order() -> None:
    prices = book(
        [
            {"effective": "2026-09-01", "targets": {"vllm": {**FLEET, "gpu_hour_usd": 1.5}}},
            {"effective": "2026-01-01", "targets": {"vllm": FLEET, "bedrock": MANAGED}},
            {"effective": "2026-05-01", "targets": {"vllm": {**FLEET, "gpu_hour_usd": 3.0}}},
        ]
    )
    rate = [prices.price_at("vllm", ts(d)) for d in ("2026-02-01", "2026-05-01", "2026-08-31", "2026-09-01")]
    assert [p.gpu_hour_usd for p in rate if isinstance(p, SelfHostedPrice)] == [2.0, 3.0, 3.0, 1.5]
    # Later versions list only what changed: bedrock keeps its January price.
    assert prices.price_at("bedrock", ts("2026-10-01")) == ManagedPrice(2.0, 8.0)
    assert prices.price_at("vllm", ts("2025-12-31")) is None  # before the book, nothing else prices it


# --- managed ------------------------------------------------------------------------------------


def test_managed_cost_is_tokens_times_prices() -> None:
    prices = book([{"effective": "2026-01-01", "targets": {"vllm": MANAGED}}])
    # 3,000 in × $2/M + 500 out × $8/M = 0.006 + 0.004
    assert prices.request_cost("vllm", Usage(3000, 500), None, WHEN) == pytest.approx(0.010)
    assert prices.request_cost("vllm", None, 1.0, WHEN) is None  # no usage: not known


def test_cached_input_tokens_use_their_own_price() -> None:
    cached = ManagedPrice(2.0, 8.0, cached_input_per_mtok=0.5)
    # 1,000 cached at $0.5/M + 2,000 fresh at $2/M + 500 out at $8/M = 0.0005 + 0.004 + 0.004
    assert cached.tokens_cost(3000, 500, cached=1000) == pytest.approx(0.0085)
    assert ManagedPrice(2.0, 8.0).tokens_cost(3000, 500, cached=1000) == pytest.approx(0.010)
    assert cached.tokens_cost(100, 0, cached=500) == pytest.approx(100 * 0.5 / 1e6)  # never more than the prompt


def test_cache_writes_use_their_own_price() -> None:
    written = ManagedPrice(2.0, 8.0, cache_write_per_mtok=2.5)
    # 1,000 written at $2.5/M + 2,000 fresh at $2/M + 500 out at $8/M = 0.0025 + 0.004 + 0.004
    assert written.tokens_cost(3000, 500, written=1000) == pytest.approx(0.0105)
    assert ManagedPrice(2.0, 8.0).tokens_cost(3000, 500, written=1000) == pytest.approx(0.010)  # no price: input's
    both = ManagedPrice(2.0, 8.0, cached_input_per_mtok=0.5, cache_write_per_mtok=2.5)
    # 100 read at $0.5/M, and the writes never beyond the rest of the prompt: 900 at $2.5/M
    assert both.tokens_cost(1000, 0, cached=100, written=5000) == pytest.approx((100 * 0.5 + 900 * 2.5) / 1e6)
    # A reservation's bound: every prompt token could be a write
    assert written.worst_cost(3000, 500) == pytest.approx((3000 * 2.5 + 500 * 8.0) / 1e6)
    assert both.worst_cost(3000, 500) > both.tokens_cost(3000, 500)


def test_bedrock_cache_reads_are_billed_at_the_cached_price_and_writes_at_the_input_price() -> None:
    """Converse's inputTokens leaves out cache reads and writes: the usage adds them back, the
    reads billed at the cached price (a price-book entry's, or the target's), the writes and the
    rest at the input price when no cache-write price is given; the catalog knows no cached
    price, so there reads cost the input price."""
    usage = Usage.from_openai(usage_of({"inputTokens": 1000, "outputTokens": 500, "cacheReadInputTokens": 2000}))
    assert usage == Usage(3000, 500, cached_tokens=2000)
    entry = {**MANAGED, "cached_input_per_mtok": 0.5}
    for prices in (
        book([{"effective": "2026-01-01", "targets": {"bedrock": entry}}]),
        book(bedrock={**BEDROCK, "price": entry}),
    ):
        # 2,000 read at $0.5/M + 1,000 fresh at $2/M + 500 out at $8/M = 0.001 + 0.002 + 0.004
        assert prices.request_cost("bedrock", usage, None, WHEN) == pytest.approx(0.007)
    # The catalog's DeepSeek V3.2: 3,000 in × $0.62/M + 500 out × $1.85/M
    assert book().request_cost("bedrock", usage, None, WHEN) == pytest.approx(0.00186 + 0.000925)
    written = Usage.from_openai(usage_of({"inputTokens": 1000, "outputTokens": 0, "cacheWriteInputTokens": 2000}))
    assert written is not None and written.cached_tokens == 0 and written.cache_write_tokens == 2000
    assert book(bedrock={**BEDROCK, "price": entry}).request_cost("bedrock", written, None, WHEN) == pytest.approx(
        0.006
    )
    # With a cache-write price, on the target or in the book: 2,000 written at $2.5/M + 1,000 at $2/M
    priced = {**entry, "cache_write_per_mtok": 2.5}
    for prices in (
        book([{"effective": "2026-01-01", "targets": {"bedrock": priced}}]),
        book(bedrock={**BEDROCK, "price": priced}),
    ):
        assert prices.request_cost("bedrock", written, None, WHEN) == pytest.approx(0.007)


# --- self-hosted --------------------------------------------------------------------------------


def test_busy_seconds_pay_the_replica_rate_for_the_latency() -> None:
    prices = book([{"effective": "2026-01-01", "targets": {"vllm": FLEET}}])
    # $8 per replica-hour = $8/3600 per second; 4.5 s → $0.01
    assert prices.request_cost("vllm", Usage(1, 1), 4.5, WHEN) == pytest.approx(0.01)
    assert prices.request_cost("vllm", Usage(1, 1), None, WHEN) is None  # no busy time: not known


def test_busy_seconds_split_between_concurrent_requests() -> None:
    prices = book([{"effective": "2026-01-01", "targets": {"vllm": {**FLEET, "max_concurrency": 8}}}])
    # 36 s of an $8/h replica = $0.08, shared by 8 concurrent requests → $0.01
    assert prices.request_cost("vllm", None, 36.0, WHEN) == pytest.approx(0.01)


def test_tokens_allocation_charges_a_share_of_a_replica_hour() -> None:
    fleet = {**FLEET, "allocation": "tokens", "tokens_per_s": 2000}
    prices = book([{"effective": "2026-01-01", "targets": {"vllm": fleet}}])
    # A replica serves 2,000 × 3,600 = 7.2M tokens an hour for $8; 6,000 + 1,200 = 7,200 tokens
    # are a thousandth of that: $0.008. The busy time does not matter.
    assert prices.request_cost("vllm", Usage(6000, 1200), 99.0, WHEN) == pytest.approx(0.008)


# --- attempts -----------------------------------------------------------------------------------


def test_failed_attempts_cost_nothing_by_tokens_and_their_latency_by_busy_seconds() -> None:
    prices = book(
        [
            {
                "effective": "2026-01-01",
                "targets": {
                    "bedrock": MANAGED,
                    "vllm": FLEET,
                    "local": {**FLEET, "allocation": "tokens", "tokens_per_s": 10},
                },
            }
        ]
    )
    assert prices.attempt_cost("bedrock", None, 30_000, WHEN) == 0.0  # managed: no tokens billed
    assert prices.attempt_cost("local", None, 30_000, WHEN) == 0.0  # by tokens: none known
    assert prices.attempt_cost("vllm", None, 9_000, WHEN) == pytest.approx(0.02)  # 9 s × $8/3600
    assert prices.attempt_cost("bedrock", Usage(3000, 500), 800, WHEN) == pytest.approx(0.010)


def test_an_unpriced_attempt_is_unknown_even_when_it_failed() -> None:
    assert book().attempt_cost("vllm", None, 100, WHEN) is None


def test_a_request_total_is_the_sum_of_its_attempts() -> None:
    prices = book([{"effective": "2026-01-01", "targets": {"vllm": FLEET, "bedrock": MANAGED}}])
    attempts = [
        AttemptRecord("vllm", "r1", "timeout_ttft", 9_000.0),  # 9 s of a replica: $0.02
        AttemptRecord("vllm", "", "breaker_open", 0.0),  # never sent: 0
        AttemptRecord("bedrock", "us-east-1", None, 800.0, 9_000.0),  # 3,000 + 500 tokens: $0.01
    ]
    priced = prices.price_attempts(attempts, Usage(3000, 500), WHEN)
    assert [a.cost_usd for a in priced.attempts] == pytest.approx([0.02, 0.0, 0.01])
    assert priced.total == pytest.approx(0.03)
    assert [a.cost_usd for a in attempts] == [None, None, None]  # the records given are left as they were
    assert [a.target for a in priced.attempts] == [a.target for a in attempts]


def test_a_stream_is_busy_until_its_end() -> None:
    prices = book([{"effective": "2026-01-01", "targets": {"vllm": FLEET}}])
    attempts = [AttemptRecord("vllm", "r1", None, 200.0)]  # 200 ms to the first chunk
    assert prices.price_attempts(attempts, Usage(10, 10), WHEN, answer_s=4.5).total == pytest.approx(0.01)


def test_a_failed_attempt_at_an_unpriced_target_keeps_the_total_known() -> None:
    """A fallback from an unpriced target to a priced one: the request still has a cost (the
    failed attempt billed no tokens), so it stays in cost reports; the attempt's own is unknown."""
    prices = book([{"effective": "2026-01-01", "targets": {"bedrock": MANAGED}}])
    attempts = [AttemptRecord("vllm", "r", "connect", 5.0), AttemptRecord("bedrock", "r", None, 800.0)]
    priced = prices.price_attempts(attempts, Usage(3000, 500), WHEN)
    assert priced.total == pytest.approx(0.01)
    assert [a.cost_usd for a in priced.attempts] == [None, pytest.approx(0.01)]


def test_an_unpriced_answer_leaves_the_total_unknown() -> None:
    prices = book([{"effective": "2026-01-01", "targets": {"bedrock": MANAGED}}])
    attempts = [AttemptRecord("bedrock", "r", "timeout_ttft", 5.0), AttemptRecord("vllm", "r", None, 800.0)]
    priced = prices.price_attempts(attempts, Usage(3000, 500), WHEN)
    assert priced.total is None
    assert [a.cost_usd for a in priced.attempts] == [0.0, None]


def test_an_answer_without_usage_is_unknown_unless_priced_by_busy_time() -> None:
    prices = book([{"effective": "2026-01-01", "targets": {"bedrock": MANAGED, "vllm": FLEET}}])
    assert prices.price_attempts([AttemptRecord("bedrock", "r", None, 800.0)], None, WHEN).total is None
    assert prices.price_attempts([AttemptRecord("vllm", "r", None, 4_500.0)], None, WHEN).total == pytest.approx(0.01)


def test_a_failed_request_is_priced_without_usage() -> None:
    prices = book([{"effective": "2026-01-01", "targets": {"vllm": FLEET}}])
    attempts = [AttemptRecord("vllm", "r", "timeout_total", 4_500.0)]
    assert prices.price_attempts(attempts, None, WHEN).total == pytest.approx(0.01)


@given(
    st.lists(
        st.tuples(st.sampled_from(["bedrock", "vllm", "local"]), st.booleans(), st.floats(0, 120_000)),
        min_size=1,
        max_size=6,
    ),
    st.integers(0, 100_000),
    st.integers(0, 10_000),
)
def test_the_total_always_equals_the_sum_of_attempt_costs(
    steps: list[tuple[str, bool, float]], prompt: int, completion: int
) -> None:
    prices = PriceBook(_PRICED)
    attempts = [AttemptRecord(t, "r", None if ok else "connect", ms) for t, ok, ms in steps]
    priced = prices.price_attempts(attempts, Usage(prompt, completion), WHEN)
    assert priced.total is not None
    assert priced.total == pytest.approx(sum(a.cost_usd or 0.0 for a in priced.attempts))
    assert all(a.cost_usd is not None and a.cost_usd >= 0 for a in priced.attempts)


_PRICED = validate(config([{"effective": "2026-01-01", "targets": {"vllm": FLEET, "bedrock": MANAGED}}]))


# --- worst case (budget reservations) -------------------------------------------------------------


def test_worst_cases_bound_one_answer() -> None:
    fleet_by_tokens = {**FLEET, "allocation": "tokens", "tokens_per_s": 2000}
    vllm = {"provider": "openai", "base_url": "http://v.invalid/v1", "model": "m", "timeouts": {"total": 90}}
    prices = book(
        [{"effective": "2026-01-01", "targets": {"bedrock": MANAGED, "vllm": FLEET, "local": fleet_by_tokens}}],
        vllm=vllm,
    )
    assert prices.worst_case("bedrock", 3000, 500, WHEN) == pytest.approx(0.010)  # the token bound
    assert prices.worst_case("local", 6000, 1200, WHEN) == pytest.approx(0.008)  # tokens at the stated rate
    assert prices.worst_case("vllm", 1, 1, WHEN) == pytest.approx(0.2)  # 90 s total timeout × $8/3600


async def test_the_quota_gate_reserves_the_worst_case_from_the_book_it_is_handed() -> None:
    from turnout.control.quota.gate import QuotaGate
    from turnout.control.quota.memory import MemoryLimiter

    raw = config([{"effective": "2026-01-01", "targets": {"vllm": FLEET, "bedrock": MANAGED}}])
    raw["tenants"] = {"acme": {"keys": ["sk-acme-0123456789"], "limits": {"usd_per_day": 5}}}
    cfg = validate(raw)
    limiter = MemoryLimiter(60)
    gate = QuotaGate(cfg, limiter, PriceBook(cfg))
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 500}
    task = next(iter(cfg.tasks))
    allowed, grant = await gate.admit("acme", task, body, ["bedrock"], "req-1")
    assert allowed == ["bedrock"] and grant is not None
    assert grant.ask.cost_usd == pytest.approx(
        PriceBook(cfg).worst_case("bedrock", grant.ask.tokens - 500, 500, grant.ask.now)
    )
    await gate.release(grant)
    await limiter.aclose()


# --- idle cost ----------------------------------------------------------------------------------


SCHEDULED = {"gpu_hour_usd": 2.0, "gpus": 4, "schedule": {"0-7": 1, "8-19": 3, "20-23": 2}}


def test_idle_cost_over_a_day_follows_the_schedule() -> None:
    prices = book([{"effective": "2026-01-01", "targets": {"vllm": SCHEDULED}}])
    day = ts("2026-06-15"), ts("2026-06-16")
    # Replica-hours: 8 × 1 + 12 × 3 + 4 × 2 = 52, at $8 → $416. Requests held replicas for
    # 36,000 s = 10 replica-hours → $80 charged to them; idle: $336.
    assert prices.fleet_cost("vllm", *day) == pytest.approx(416.0)
    assert prices.idle_cost("vllm", *day, 36_000) == pytest.approx(336.0)
    assert prices.idle_cost("vllm", *day, 0, allocated_usd=16.0) == pytest.approx(400.0)


def test_fleet_cost_counts_part_hours_and_price_changes() -> None:
    prices = book(
        [
            {"effective": "2026-01-01", "targets": {"vllm": SCHEDULED}},
            {"effective": "2026-06-16", "targets": {"vllm": {**SCHEDULED, "gpu_hour_usd": 1.0}}},
        ]
    )
    # 23:30 → 01:00 across the price change: half an hour of 2 replicas at $8 ($8), then an hour
    # of 1 replica at $4 ($4).
    assert prices.fleet_cost("vllm", ts("2026-06-15", 23) + 1800, ts("2026-06-16", 1)) == pytest.approx(12.0)


def test_unscheduled_hours_use_replicas_and_managed_targets_have_no_idle_cost() -> None:
    prices = book(
        [{"effective": "2026-01-01", "targets": {"vllm": {**FLEET, "schedule": {"0-11": 0}}, "bedrock": MANAGED}}]
    )
    # 12 hours of nothing, 12 hours of 2 replicas at $8: $192
    assert prices.fleet_cost("vllm", ts("2026-06-15"), ts("2026-06-16")) == pytest.approx(192.0)
    assert prices.idle_cost("bedrock", ts("2026-06-15"), ts("2026-06-16"), 100) == 0.0


# --- validation ---------------------------------------------------------------------------------


def test_the_simplest_price_keeps_working() -> None:
    raw = config(bedrock={"provider": "bedrock", "model": "x", "region": "us-east-1", "price": MANAGED})
    assert validate(raw).targets["bedrock"].price is not None


def test_versions_are_sorted_at_load() -> None:
    raw = config([{"effective": "2026-05-01", "targets": {}}, {"effective": "2026-01-01", "targets": {}}])
    assert [str(v.effective) for v in validate(raw).prices] == ["2026-01-01", "2026-05-01"]


@pytest.mark.parametrize(
    ("prices", "expected"),
    [
        ([{"effective": "2026-01-01", "targets": {"nope": MANAGED}}], "prices[0].targets.nope: unknown target 'nope'"),
        (
            [{"effective": "2026-01-01", "targets": {}}, {"effective": "2026-01-01", "targets": {}}],
            "prices[1].effective: 2026-01-01 is also the date of prices[0]",
        ),
        ([{"effective": "soon", "targets": {}}], "prices[0].effective: Input should be a valid date"),
        ([{"targets": {}}], "prices[0].effective: Field required"),
        (
            [{"effective": "2026-01-01", "targets": {"vllm": {**MANAGED, "gpu_hour_usd": 2}}}],
            "prices[0].targets.vllm: give a managed price (input_per_mtok, output_per_mtok) "
            "or a self-hosted one (gpu_hour_usd), not both",
        ),
        (
            [{"effective": "2026-01-01", "targets": {"vllm": {"input_per_mtok": 1}}}],
            "prices[0].targets.vllm: missing output_per_mtok (managed)",
        ),
        ([{"effective": "2026-01-01", "targets": {"vllm": {}}}], "prices[0].targets.vllm: missing input_per_mtok"),
        (
            [{"effective": "2026-01-01", "targets": {"vllm": {"gpus": 8}}}],
            "prices[0].targets.vllm: a self-hosted price needs gpu_hour_usd",
        ),
        (
            [{"effective": "2026-01-01", "targets": {"vllm": {**FLEET, "allocation": "tokens"}}}],
            "prices[0].targets.vllm: allocation 'tokens' needs tokens_per_s",
        ),
        (
            [{"effective": "2026-01-01", "targets": {"vllm": {**FLEET, "schedule": {"22-3": 1}}}}],
            "prices[0].targets.vllm: schedule: '22-3' is not an hour or a range 0-23",
        ),
        (
            [{"effective": "2026-01-01", "targets": {"vllm": {**FLEET, "schedule": {"0-7": 1, "7": 2}}}}],
            "prices[0].targets.vllm: schedule: hour 7 is listed twice",
        ),
        (
            [{"effective": "2026-01-01", "targets": {"vllm": {**FLEET, "gpu_hour_usd": -1}}}],
            "prices[0].targets.vllm.gpu_hour_usd: Input should be greater than or equal to 0",
        ),
        (
            [{"effective": "2026-01-01", "targets": {"vllm": {**FLEET, "gpu": 8}}}],
            "prices[0].targets.vllm.gpu: unknown key",
        ),
    ],
)
def test_a_bad_price_book_is_reported_with_its_key_path(prices: list[dict[str, Any]], expected: str) -> None:
    found = problems(config(prices))
    assert any(p.startswith(expected) for p in found), found


def test_a_gpu_hour_price_on_the_target_points_at_the_price_book() -> None:
    """docs/self-hosted.md once said ``price: {gpu_hour_usd, gpus, replicas}`` on the target:
    one problem saying where a fleet's price goes, not five about fields it never had."""
    vllm = {"provider": "openai", "base_url": "http://vllm.invalid/v1", "model": "m", "price": FLEET}
    found = problems(config(vllm=vllm))
    assert found == [
        "targets.vllm.price: gpu_hour_usd, gpus, replicas: a target's price is per token (input_per_mtok, "
        "output_per_mtok); price a GPU fleet in the price book: prices: [{effective: DATE, targets: "
        "{NAME: {gpu_hour_usd: …}}}]"
    ]


def test_every_reference_gpu_price_has_a_source_and_says_verify() -> None:
    ref = reference_gpu_prices()
    assert {"p5.48xlarge", "p5en.48xlarge", "p5e.48xlarge", "p4d.24xlarge", "g6e.xlarge", "g5.xlarge"} <= set(ref)
    for name, row in ref.items():
        assert row["verify_before_use"] is True, name
        assert row["source"] and row["date"], name
        assert row["usd_per_gpu_hour"] > 0, name
        if row["usd_per_hour"] is not None:
            assert row["usd_per_gpu_hour"] == pytest.approx(row["usd_per_hour"] / row["gpus"], abs=0.001), name
