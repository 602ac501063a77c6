"""The Prometheus text parser behind load-aware routing: the gauges of vLLM, SGLang and
llama.cpp read from real-looking pages, and hostile pages (by example and by property) that
must neither raise nor yield a number outside its range."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fakes.vllm import FLAVOURS, FakeVLLM
from turnout.providers import promtext
from turnout.providers.promtext import Gauges, parse

VLLM_PAGE = b"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B"} 5.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B"} 12.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B"} 0.4375
vllm:request_queue_time_seconds_bucket{engine="0",le="0.3",model_name="meta-llama/Llama-3.1-8B"} 3.0
"""


def page(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def test_a_vllm_page_gives_its_queue_running_and_kv_cache() -> None:
    assert parse(VLLM_PAGE) == Gauges(waiting=12.0, running=5.0, kv_cache=0.4375)


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_each_server_flavour_the_fake_writes_is_read(flavour: str) -> None:
    fake = FakeVLLM(flavour=flavour, waiting=7, running=3, kv_cache=0.25)
    gauges = parse(fake.page().encode())
    assert gauges == Gauges(7.0, 3.0, None if flavour == "llamacpp" else 0.25)


def test_data_parallel_engines_sum_their_counts_and_report_the_fullest_cache() -> None:
    gauges = parse(
        page(
            'vllm:num_requests_waiting{engine="0"} 2',
            'vllm:num_requests_waiting{engine="1"} 3',
            'vllm:num_requests_running{engine="0"} 1',
            'vllm:num_requests_running{engine="1"} 4',
            'vllm:kv_cache_usage_perc{engine="0"} 0.2',
            'vllm:kv_cache_usage_perc{engine="1"} 0.9',
        )
    )
    assert gauges == Gauges(5.0, 5.0, 0.9)


def test_the_old_kv_gauge_counts_only_where_the_new_one_is_missing() -> None:
    old = parse(page("vllm:gpu_cache_usage_perc 0.7"))
    assert old == Gauges(kv_cache=0.7)
    both = parse(page("vllm:gpu_cache_usage_perc 0.7", "vllm:kv_cache_usage_perc 0.1"))
    assert both == Gauges(kv_cache=0.1)


def test_sglang_names() -> None:
    gauges = parse(
        page("sglang:num_queue_reqs{model_name='x'} 4", "sglang:num_running_reqs 2", "sglang:token_usage 0.5")
    )
    assert gauges == Gauges(4.0, 2.0, 0.5)


def test_labels_may_hold_spaces_braces_and_escaped_quotes() -> None:
    line = r'vllm:num_requests_waiting{model_name="a } b \" {c}",engine="0"} 9 1700000000000'
    assert parse(page(line)) == Gauges(waiting=9.0)


def test_names_that_only_start_like_a_gauge_are_not_it() -> None:
    assert parse(page("vllm:num_requests_waiting_total 5", "vllm:num_requests_running_max 3")) is None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\n\n\n",
        b"# TYPE vllm:num_requests_waiting gauge\n",
        b"<html>nginx: 502 Bad Gateway</html>",
        b"python_gc_objects_collected_total 3\n",
        b"vllm:num_requests_waiting\n",  # no value
        b'vllm:num_requests_waiting{unclosed="x 5\n',
        b"vllm:num_requests_waiting five\n",
        b"vllm:num_requests_waiting NaN\nvllm:kv_cache_usage_perc +Inf\n",
        "vllm:num_requests_waiting \u0665\n".encode(),  # an Arabic-Indic digit: float() takes it as str
    ],
)
def test_a_page_without_a_usable_gauge_is_none(body: bytes) -> None:
    assert parse(body) is None


def test_out_of_range_values_are_clamped() -> None:
    gauges = parse(
        page(
            "vllm:num_requests_waiting -4",
            "vllm:num_requests_running 1e300",
            "vllm:num_requests_running 1e300",
            "vllm:kv_cache_usage_perc 7",
        )
    )
    assert gauges == Gauges(0.0, 1e6, 1.0)


def test_a_line_past_the_length_limit_is_skipped() -> None:
    labels = "x" * 5000
    assert parse(page(f'vllm:num_requests_waiting{{a="{labels}"}} 5', "vllm:num_requests_running 2")) == Gauges(
        running=2.0
    )


def test_only_the_first_max_bytes_are_read_and_a_cut_line_is_dropped() -> None:
    head = b"# " + b"x" * (promtext.MAX_BYTES - 13) + b"\n"  # ends 10 bytes before the limit
    body = head + b"vllm:num_requests_waiting 123456\n" + b"vllm:num_requests_running 2\n"
    assert len(head) < promtext.MAX_BYTES < len(head) + len(b"vllm:num_requests_waiting 123456")
    assert parse(body) is None  # never "waiting 12" from a cut "123456"


def test_crlf_line_ends_are_read() -> None:
    assert parse(b"vllm:num_requests_waiting 3\r\nvllm:num_requests_running 1\r\n") == Gauges(3.0, 1.0)


# -- properties ------------------------------------------------------------------------------

NAMES = st.sampled_from(
    [name for names in FLAVOURS.values() for name in names if name] + ["vllm:gpu_cache_usage_perc", "other:thing"]
)
LABEL_VALUE = st.text(alphabet='ab}{"\\ =,\t\r\x00\u00e9\u0665', max_size=12)  # what breaks label scanning
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(["NaN", "+Inf", "-Inf", "", "1e", "0x10", "--1", "1_000"]),
    st.text(max_size=8),
)


@st.composite
def lines(draw: st.DrawFn) -> str:
    name = draw(NAMES)
    value = draw(LABEL_VALUE).replace("\\", "\\\\").replace('"', '\\"')
    labels = draw(st.sampled_from(["", f'{{model_name="{value}"}}', f'{{a="{value}",engine="1"}}', "{", "{}"]))
    return f"{name}{labels} {draw(VALUES)}"


def in_range(gauges: Gauges | None) -> bool:
    if gauges is None:
        return True
    counts_ok = all(math.isfinite(v) and 0.0 <= v <= 1e6 for v in (gauges.waiting, gauges.running))
    return counts_ok and (gauges.kv_cache is None or 0.0 <= gauges.kv_cache <= 1.0)


@given(st.binary(max_size=2048))
def test_any_bytes_parse_without_raising_and_stay_in_range(body: bytes) -> None:
    assert in_range(parse(body))


@given(st.lists(lines(), max_size=30))
def test_gauge_shaped_lines_with_hostile_labels_and_values_stay_in_range(body: list[str]) -> None:
    assert in_range(parse("\n".join(body).encode()))


@given(st.lists(lines(), max_size=10), st.lists(st.binary(max_size=80).filter(lambda b: b"\n" not in b), max_size=10))
def test_garbage_lines_between_the_gauges_change_nothing(good: list[str], junk: list[bytes]) -> None:
    """Lines that do not start with a gauge's name are skipped, wherever they are."""
    junk = [b"#" + j for j in junk]  # a comment can hold anything
    clean = "\n".join(good).encode()
    mixed = b"\n".join([*junk, *(line.encode() for line in good), *junk])
    assert parse(mixed) == parse(clean)


@given(st.lists(st.tuples(st.sampled_from(["0", "1", "2"]), st.integers(0, 10_000)), min_size=1, max_size=8))
def test_waiting_is_the_sum_over_engines(engines: list[tuple[str, int]]) -> None:
    body = "\n".join(f'sglang:num_queue_reqs{{engine="{e}"}} {n}' for e, n in engines).encode()
    assert parse(body) == Gauges(waiting=float(sum(n for _, n in engines)))
