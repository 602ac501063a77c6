"""Replica choice as pure functions: least loaded by score, prefix affinity by rendezvous
hashing with its overload escape, and the conversation key, on examples and by property."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnout.config import BreakerConfig, LoadScrapeConfig, OpenAITarget
from turnout.providers.balance import (
    KV_WEIGHT,
    LEAD_CHARS,
    QUEUE_WEIGHT,
    Candidate,
    least_loaded,
    prefix_key,
    pressure,
    with_affinity,
)
from turnout.providers.promtext import Gauges
from turnout.routing.breaker import Breaker, State
from turnout.serving.summary import target_kind


def replicas(n: int, *, in_flight: tuple[int, ...] = (), pressures: tuple[float, ...] = ()) -> list[Candidate]:
    made = []
    for i in range(n):
        r = Candidate(f"r{i}", f"http://10.0.0.{i}:8000/v1", Breaker(BreakerConfig(failures=1)), "/metrics")
        r.in_flight = in_flight[i] if in_flight else 0
        r.pressure = pressures[i] if pressures else 0.0
        made.append(r)
    return made


def open_breaker(r: Candidate) -> None:
    r.breaker.failure()
    assert r.breaker.state is State.OPEN


def body(*messages: tuple[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": role, "content": content} for role, content in messages]}


# -- the score ------------------------------------------------------------------------------


def test_pressure_weighs_the_queue_and_the_kv_cache() -> None:
    assert pressure(Gauges()) == 0.0
    assert pressure(Gauges(waiting=3, running=50)) == 3 * QUEUE_WEIGHT  # running is in the score via in-flight
    assert pressure(Gauges(kv_cache=0.5)) == 0.5 * KV_WEIGHT
    assert pressure(Gauges(waiting=1, kv_cache=1.0)) == QUEUE_WEIGHT + KV_WEIGHT


def test_the_metrics_url_is_the_base_urls_origin_with_the_path() -> None:
    r = Candidate("r0", "http://user:pw@gpu-1:8000/v1", Breaker(BreakerConfig()), "/metrics")
    assert str(r.metrics_url) == "http://user:pw@gpu-1:8000/metrics"


# -- least_loaded ---------------------------------------------------------------------------


def test_least_loaded_adds_pressure_to_calls_in_flight() -> None:
    pool = replicas(3, in_flight=(0, 2, 1), pressures=(8.0, 0.0, 0.5))
    assert least_loaded(pool, 0) is pool[2]


def test_least_loaded_rotates_between_ties() -> None:
    pool = replicas(3)
    assert [least_loaded(pool, start).label for start in range(4)] == ["r0", "r1", "r2", "r0"]  # type: ignore[union-attr]


def test_least_loaded_skips_open_breakers_and_finds_none_when_all_are() -> None:
    pool = replicas(2, in_flight=(0, 5))
    open_breaker(pool[0])
    assert least_loaded(pool, 0) is pool[1]
    open_breaker(pool[1])
    assert least_loaded(pool, 0) is None


@given(st.lists(st.tuples(st.integers(0, 50), st.floats(0, 100)), min_size=1, max_size=8), st.integers(0, 20))
def test_least_loaded_picks_a_minimum_score(loads: list[tuple[int, float]], start: int) -> None:
    pool = replicas(len(loads), in_flight=tuple(f for f, _ in loads), pressures=tuple(p for _, p in loads))
    chosen = least_loaded(pool, start % len(pool))
    assert chosen is not None
    assert chosen.in_flight + chosen.pressure == min(f + p for f, p in loads)


# -- with_affinity --------------------------------------------------------------------------


def test_a_key_keeps_its_home_within_the_slack_and_leaves_it_past() -> None:
    pool = replicas(3)
    key = 12345
    home = with_affinity(pool, key, 0, slack=8)
    assert home is not None
    assert {with_affinity(pool, key, s, slack=8) for s in range(3)} == {home}  # the rotation does not matter
    home.pressure = 8.0
    assert with_affinity(pool, key, 0, slack=8) is home  # equal to the slack: still home
    home.pressure = 8.5
    moved = with_affinity(pool, key, 0, slack=8)
    assert moved is not home and moved is not None
    assert moved.in_flight + moved.pressure == 0


def test_a_home_with_an_open_breaker_hands_its_keys_to_the_next_in_rendezvous_order() -> None:
    pool = replicas(3)
    key = 99
    home = with_affinity(pool, key, 0, slack=100)
    assert home is not None
    open_breaker(home)
    second = with_affinity(pool, key, 0, slack=100)
    assert second is not None and second is not home
    # The same second choice as if the home had never been configured.
    assert with_affinity([r for r in pool if r is not home], key, 0, slack=100) is second


@given(st.lists(st.integers(0, 2**64 - 1), min_size=50, max_size=50, unique=True))
def test_removing_a_replica_moves_only_its_own_keys(keys: list[int]) -> None:
    pool = replicas(4)
    before = {k: with_affinity(pool, k, 0, slack=1e9) for k in keys}
    gone = pool[1]
    after = {k: with_affinity([r for r in pool if r is not gone], k, 0, slack=1e9) for k in keys}
    assert all(after[k] is before[k] for k in keys if before[k] is not gone)


def test_keys_spread_evenly() -> None:
    pool = replicas(4)
    homes = Counter(with_affinity(pool, k * 7919, 0, slack=1e9).label for k in range(4000))  # type: ignore[union-attr]
    assert set(homes) == {"r0", "r1", "r2", "r3"}
    assert max(homes.values()) < 1.2 * min(homes.values()), homes


# -- prefix_key -----------------------------------------------------------------------------


def test_every_turn_of_a_conversation_has_the_first_turns_key() -> None:
    first = body(("system", "Be brief."), ("user", "What is a KV cache?"))
    later = body(
        ("system", "Be brief."),
        ("user", "What is a KV cache?"),
        ("assistant", "Memory of past tokens."),
        ("user", "And prefix caching?"),
    )
    assert prefix_key(first) == prefix_key(later) is not None


@pytest.mark.parametrize(
    "other",
    [
        body(("system", "Be long."), ("user", "What is a KV cache?")),
        body(("system", "Be brief."), ("user", "What is a GPU?")),
        body(("user", "What is a KV cache?")),
        body(("developer", "Be brief."), ("user", "What is a KV cache?")),
    ],
)
def test_a_different_lead_is_a_different_key(other: dict[str, Any]) -> None:
    assert prefix_key(other) != prefix_key(body(("system", "Be brief."), ("user", "What is a KV cache?")))


def test_only_the_first_lead_chars_of_a_message_count() -> None:
    long = "x" * LEAD_CHARS
    assert prefix_key(body(("user", long + "tail one"))) == prefix_key(body(("user", long + "tail two")))
    assert prefix_key(body(("user", long[:-1] + "y"))) != prefix_key(body(("user", long)))


def test_content_parts_count_by_their_text() -> None:
    parts = [{"type": "text", "text": "hello"}, {"type": "image_url", "image_url": {"url": "data:..."}}]
    same = [{"type": "text", "text": "hello"}, {"type": "image_url", "image_url": {"url": "data:other"}}]
    assert prefix_key(body(("user", parts))) == prefix_key(body(("user", same)))
    assert prefix_key(body(("user", parts))) != prefix_key(body(("user", [{"type": "text", "text": "hi"}])))


@pytest.mark.parametrize("value", [None, "text", 3, [], {"role": "user"}])
def test_a_body_without_messages_has_no_key(value: Any) -> None:
    assert prefix_key({"messages": value}) is None
    assert prefix_key({}) is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["role", "content", "text"]), inner),
    max_leaves=20,
)


@given(st.dictionaries(st.sampled_from(["messages", "model"]), JSON | st.lists(JSON, max_size=5)))
def test_any_json_body_gets_a_key_or_none_without_raising(raw: dict[str, Any]) -> None:
    key = prefix_key(raw)
    assert key is None or 0 <= key < 2**64


# -- the config -----------------------------------------------------------------------------


def openai_target(**extra: Any) -> OpenAITarget:
    return OpenAITarget.model_validate({"provider": "openai", "base_url": "http://h:1/v1", "model": "m", **extra})


def test_defaults_keep_fewest_in_flight_and_no_scraper() -> None:
    cfg = openai_target()
    assert (cfg.balance, cfg.load, cfg.affinity_slack) == ("least_loaded", None, 8.0)
    load = openai_target(load={}).load
    assert load is not None
    assert (load.interval_s, load.timeout_s, load.path, load.stale_s) == (2.0, 1.0, "/metrics", None)


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ({"balance": "round_robin"}, "balance"),
        ({"affinity_slack": -1}, "affinity_slack"),
        ({"load": {"interval_s": 0}}, "interval_s"),
        ({"load": {"path": "metrics"}}, "path"),
        ({"load": {"path": "/metrics?x=1"}}, "path"),
        ({"load": {"every": 1}}, "every"),
    ],
)
def test_a_bad_balance_or_load_section_is_refused_naming_its_key(extra: dict[str, Any], where: str) -> None:
    with pytest.raises(ValueError, match=where):
        openai_target(**extra)


def test_the_start_up_summary_names_the_balance_and_the_scrape_never_a_url() -> None:
    plain = OpenAITarget.model_validate(
        {"provider": "openai", "base_urls": ["http://a:1/v1", "http://b:1/v1"], "model": "m"}
    )
    assert target_kind(plain) == "openai, 2 replicas"  # as before
    tuned = plain.model_copy(update={"balance": "prefix_affinity", "load": LoadScrapeConfig(interval_s=0.5)})
    assert target_kind(tuned) == "openai, 2 replicas, prefix_affinity, load read every 0.5s"
