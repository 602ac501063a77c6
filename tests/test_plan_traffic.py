"""``traffic_from_rows``: hourly volumes, peak concurrency from overlapping requests, success
rates per target, and what it leaves out."""

from __future__ import annotations

import dataclasses

from turnout.ledger.record import LedgerRow
from turnout.ledger.store import EVAL_TENANT
from turnout.offline.plan.traffic import concurrency_by_hour, traffic_from_rows

T0 = 19676 * 86400  # a midnight, UTC


def row(
    rid: str,
    at: float,
    latency_s: float = 1.0,
    *,
    task: str = "support",
    target: str | None = "gpt",
    status: int = 200,
    tokens: tuple[int | None, int | None] = (100, 20),
    outcome: str | None = None,
    cache_hit: bool | None = None,
) -> LedgerRow:
    return LedgerRow(
        request_id=rid,
        started_at=at,
        tenant="acme",
        task=task,
        data_class="internal",
        stream=False,
        target=target,
        status=status,
        prompt_tokens=tokens[0],
        completion_tokens=tokens[1],
        latency_ms=latency_s * 1000,
        outcome=outcome,
        cache_hit=cache_hit,
    )


def test_hourly_volumes_over_the_window() -> None:
    rows = [
        row("a", T0 + 10),
        row("b", T0 + 3599),
        row("c", T0 + 2 * 3600 + 5, tokens=(None, None)),  # tokens unknown: counted as 0
        row("d", T0 + 20, task="other"),
    ]
    traffic = traffic_from_rows(rows, "support")
    assert [(h.requests, h.input_tokens, h.output_tokens) for h in traffic.hours] == [
        (2, 200, 40),
        (0, 0, 0),
        (1, 0, 0),
    ]
    assert traffic.hours[0].start == T0 and traffic.hours[2].hour_of_day == 2
    assert traffic.days == 3 / 24
    assert (traffic.requests, traffic.input_tokens, traffic.output_tokens) == (3, 200, 40)


def test_window_runs_to_end_and_skips_rows_after_it() -> None:
    traffic = traffic_from_rows([row("a", T0 + 10), row("b", T0 + 7200)], "support", end=T0 + 5400)
    assert len(traffic.hours) == 2 and traffic.requests == 1  # hours 0 and 1; b is past the end


def test_caller_errors_are_left_out() -> None:
    traffic = traffic_from_rows([row("a", T0), row("b", T0 + 1, status=429), row("c", T0 + 2, status=502)], "support")
    assert traffic.requests == 2  # the 429 is the caller's; the 502 is a request the task paid for


def test_eval_runs_are_not_traffic() -> None:
    """A golden set of 50 cases run in one hour (as the gateway's own tenant or a customer's)
    sized the fleet for that burst and priced its tokens as the task's traffic."""
    golden = [dataclasses.replace(row(f"g{i}", T0 + 3600 + i, 30.0), evaluation=True) for i in range(50)]
    older = [dataclasses.replace(row(f"o{i}", T0 + 3600 + i, 30.0), tenant=EVAL_TENANT) for i in range(5)]
    traffic = traffic_from_rows([row("a", T0 + 10), *golden, *older, row("b", T0 + 7200)], "support")
    assert traffic.requests == 2 and traffic.peak_concurrency == 1
    assert [h.requests for h in traffic.hours] == [1, 0, 1]


def test_cache_hits_are_requests_that_used_no_model() -> None:
    """Seen: `turnout plan` on a cached task said "100 requests in flight at once" and priced
    every hit's tokens: the 99 followers of one single-flight miss, which no model generated."""
    hits = [row(f"h{i}", T0 + 10, 2.0, cache_hit=True) for i in range(99)]
    traffic = traffic_from_rows([row("miss", T0 + 10, 2.0, cache_hit=False), *hits], "support")
    assert (traffic.requests, traffic.input_tokens, traffic.output_tokens) == (100, 100, 20)
    assert traffic.peak_concurrency == 1


def test_peak_concurrency_from_overlapping_requests() -> None:
    rows = [
        row("a", T0 + 0, 10),  # [0, 10)
        row("b", T0 + 2, 5),  # [2, 7)
        row("c", T0 + 4, 2),  # [4, 6): a, b, c in flight at 4-6 → 3
        row("d", T0 + 10, 1),  # starts as a ends: not an overlap
        row("e", T0 + 3598, 10),  # [3598, 3608): crosses into hour 1
        row("f", T0 + 3605, 1),  # in hour 1 with e → 2
    ]
    traffic = traffic_from_rows(rows, "support")
    assert [h.peak_concurrency for h in traffic.hours] == [3, 2]
    assert traffic.peak_concurrency == 3


def test_a_request_spanning_whole_hours_counts_in_each() -> None:
    assert concurrency_by_hour([(0.0, 3 * 3600 + 1)], 0, 4) == [1, 1, 1, 1]
    assert concurrency_by_hour([(10.0, 10.0)], 0, 1) == [0]  # zero latency: never in flight


def test_success_rates_per_target() -> None:
    rows = [
        row("a", T0, outcome="success"),
        row("b", T0 + 1, outcome="failure"),
        row("c", T0 + 2, outcome="success"),
        row("d", T0 + 3),  # no feedback: not in the rate
        row("e", T0 + 4, target="llama", outcome="success"),
        row("f", T0 + 5, target="qwen"),
    ]
    traffic = traffic_from_rows(rows, "support")
    gpt, llama, qwen = traffic.targets["gpt"], traffic.targets["llama"], traffic.targets["qwen"]
    assert (gpt.requests, gpt.outcomes, gpt.successes, gpt.success_rate) == (4, 3, 2, 2 / 3)
    assert llama.success_rate == 1.0 and qwen.success_rate is None
    assert traffic.success_rate == 3 / 4
    assert traffic.busiest_target() == "gpt"


def test_no_rows_no_traffic() -> None:
    traffic = traffic_from_rows([row("a", T0, task="other")], "support")
    assert traffic.hours == () and traffic.requests == 0 and traffic.peak_concurrency == 0
    assert traffic.success_rate is None and traffic.busiest_target() is None
