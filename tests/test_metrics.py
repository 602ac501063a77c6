"""Prometheus metrics: what ``observe`` counts, what the scrape reads live, bounded labels, and
several workers sharing one ``/metrics`` through prometheus_client's multiprocess mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.asgi import request
from tests.conftest import AppFactory
from tests.fakes.scripted import ScriptedProvider, Step
from turnout.config import BreakerConfig, validate
from turnout.control.quota.base import LimiterStats
from turnout.errors import ConfigError, UpstreamConnectError
from turnout.ledger.memory import MemoryStore
from turnout.ledger.record import AttemptRecord, LedgerRow
from turnout.ledger.writer import LedgerWriter
from turnout.observe.metrics import DURATION_BUCKETS, Metrics
from turnout.providers.base import Load, ReplicaLoad
from turnout.providers.registry import create
from turnout.routing.breaker import Breaker, State
from turnout.serving.runtime import Runtime

KEY = "sk-acme-0123456789"
EMAIL = "jane.doe+sentinel@example.com"


def raw_config() -> dict[str, Any]:
    return {
        "store": {"kind": "memory", "flush_interval_ms": 10},
        "targets": {
            "primary": {"provider": "openai", "base_url": "http://primary.invalid/v1", "model": "m1"},
            "secondary": {
                "provider": "openai",
                "base_urls": ["http://a.invalid/v1", "http://b.invalid/v1"],
                "model": "m2",
            },
        },
        "tenants": {"acme": {"keys": [KEY]}},
        "tasks": {"chat": {"route": ["primary", "secondary"]}, "summarize": {"route": ["secondary"]}},
    }


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    raw = {**raw_config(), "limits": {"keys_path": str(tmp_path / "keys.db")}}
    rt = Runtime(validate(raw), {"primary": ScriptedProvider("primary"), "secondary": ScriptedProvider("secondary")})
    await rt.start()
    yield rt
    await rt.aclose()


def metrics_of(runtime: Runtime, **kw: Any) -> Metrics:
    """Metrics of their own (a fresh registry) over the runtime's live state."""
    return Metrics(runtime.config, runtime.live, **kw)


def row(**kw: Any) -> LedgerRow:
    base: dict[str, Any] = {
        "request_id": "0123456789abcdef01234567",
        "started_at": 1_700_000_000.0,
        "tenant": "acme",
        "task": "chat",
        "data_class": "internal",
        "stream": False,
        "target": "primary",
        "replica": "r0",
        "status": 200,
        "attempts": [AttemptRecord("primary", "r0", None, 400.0)],
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "cost_usd": 0.001,
        "latency_ms": 420.0,
        "generation_ms": 400.0,
    }
    return LedgerRow(**{**base, **kw})


def scrape(metrics: Metrics) -> dict[str, list[Sample]]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(body.decode())}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The one sample called ``name`` whose labels include ``labels``; 0 when there is none."""
    found = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) <= 1, found
    return found[0] if found else 0.0


async def test_phase_histograms_count_each_phase_present_in_the_row(runtime: Runtime) -> None:
    metrics = metrics_of(runtime)
    metrics.observe(row())
    metrics.observe(row(stream=True, ttft_ms=150.0, generation_ms=900.0, latency_ms=1100.0))
    metrics.observe(row(queue_ms=30.0))
    fallback = [AttemptRecord("primary", "", "connect", 5.0), AttemptRecord("secondary", "r1", None, 300.0, 6.0)]
    metrics.observe(row(target="secondary", attempts=fallback, fallback=True, fallback_ms=6.0))
    m = scrape(metrics)

    total = m["turnout_request_duration_seconds"]
    assert value(total, "turnout_request_duration_seconds_count", task="chat", target="primary") == 3
    assert value(total, "turnout_request_duration_seconds_count", task="chat", target="secondary") == 1
    assert value(total, "turnout_request_duration_seconds_sum", target="primary") == pytest.approx(0.42 + 1.1 + 0.42)
    # Cumulative buckets: the 1.1 s request is above 1.0 and within 2.0.
    assert value(total, "turnout_request_duration_seconds_bucket", target="primary", le="1.0") == 2
    assert value(total, "turnout_request_duration_seconds_bucket", target="primary", le="2.0") == 3
    assert len([s for s in total if s.name.endswith("_bucket") and s.labels["target"] == "primary"]) == (
        len(DURATION_BUCKETS) + 1
    )
    ttft = m["turnout_time_to_first_token_seconds"]
    assert value(ttft, "turnout_time_to_first_token_seconds_count") == 1
    assert value(ttft, "turnout_time_to_first_token_seconds_sum") == pytest.approx(0.15)
    assert {s.labels["target"] for s in ttft} == {"primary"}  # no empty series where no stream went
    assert value(m["turnout_queue_wait_seconds"], "turnout_queue_wait_seconds_count") == 1
    generation = m["turnout_generation_duration_seconds"]
    assert value(generation, "turnout_generation_duration_seconds_count", target="primary") == 3
    fb = m["turnout_fallback_duration_seconds"]
    assert value(fb, "turnout_fallback_duration_seconds_count", target="secondary") == 1
    assert value(fb, "turnout_fallback_duration_seconds_sum", target="secondary") == pytest.approx(0.006)


async def test_counters_for_requests_tokens_cost_attempts_fallbacks_and_errors(runtime: Runtime) -> None:
    metrics = metrics_of(runtime)
    metrics.observe(row())
    metrics.observe(row(stream=True))
    fallback = [AttemptRecord("primary", "", "timeout_ttft", 30.0), AttemptRecord("secondary", "r1", None, 300.0, 31.0)]
    metrics.observe(row(target="secondary", attempts=fallback, fallback=True, fallback_ms=31.0))
    failed = [AttemptRecord("primary", "", "connect", 5.0), AttemptRecord("secondary", "", "breaker_open", 0.0, 6.0)]
    metrics.observe(
        row(
            target=None,
            replica=None,
            status=502,
            error_class="all_targets_failed",
            attempts=failed,
            prompt_tokens=None,
            completion_tokens=None,
            cost_usd=None,
            generation_ms=None,
        )
    )
    m = scrape(metrics)

    req = m["turnout_requests"]
    assert value(req, "turnout_requests_total", target="primary", status="200", stream="false", tenant="acme") == 1
    assert value(req, "turnout_requests_total", target="primary", status="200", stream="true") == 1
    assert value(req, "turnout_requests_total", target="secondary", status="200") == 1
    assert value(req, "turnout_requests_total", target="none", status="502") == 1
    tokens = m["turnout_tokens"]
    assert value(tokens, "turnout_tokens_total", target="primary", kind="prompt") == 14
    assert value(tokens, "turnout_tokens_total", target="primary", kind="completion") == 6
    assert value(m["turnout_cost_usd"], "turnout_cost_usd_total", target="primary") == pytest.approx(0.002)
    att = m["turnout_attempts"]
    assert value(att, "turnout_attempts_total", target="primary", outcome="ok") == 2
    assert value(att, "turnout_attempts_total", target="primary", outcome="timeout_ttft") == 1
    assert value(att, "turnout_attempts_total", target="primary", outcome="connect") == 1
    assert value(att, "turnout_attempts_total", target="secondary", outcome="ok") == 1
    assert value(att, "turnout_attempts_total", target="secondary", outcome="breaker_open") == 1
    assert value(m["turnout_fallbacks"], "turnout_fallbacks_total", task="chat") == 1
    assert value(m["turnout_errors"], "turnout_errors_total", task="chat", error_class="all_targets_failed") == 1


async def test_breaker_gauge_follows_the_breaker(runtime: Runtime) -> None:
    now = [0.0]
    breaker = Breaker(BreakerConfig(failures=2, cooldown_s=10.0), clock=lambda: now[0])
    runtime.targets["primary"].breaker = breaker
    metrics = metrics_of(runtime)

    def state() -> float:
        return value(scrape(metrics)["turnout_breaker_state"], "turnout_breaker_state", target="primary")

    assert state() == 0
    breaker.failure()
    breaker.failure()
    assert state() == 2
    now[0] = 11.0
    assert breaker.allow()  # the probe: half-open
    assert state() == 1
    breaker.success()
    assert state() == 0
    assert value(scrape(metrics)["turnout_breaker_state"], "turnout_breaker_state", target="secondary") == 0


async def test_ledger_queue_depth_and_drops_are_read_at_scrape(runtime: Runtime) -> None:
    metrics = metrics_of(runtime)
    assert runtime.ledger is not None
    await runtime.ledger.aclose()
    store = MemoryStore()
    await store.open()
    runtime.ledger = LedgerWriter(store, batch_size=10, queue_size=3)  # not started: rows stay queued
    for _ in range(5):
        runtime.ledger.submit(row())
    m = scrape(metrics)
    assert value(m["turnout_ledger_queue_depth"], "turnout_ledger_queue_depth") == 3
    assert value(m["turnout_ledger_dropped"], "turnout_ledger_dropped_total") == 2
    assert value(m["turnout_ledger_written"], "turnout_ledger_written_total") == 0
    await runtime.ledger.aclose()
    m = scrape(metrics)
    assert value(m["turnout_ledger_queue_depth"], "turnout_ledger_queue_depth") == 0
    assert value(m["turnout_ledger_written"], "turnout_ledger_written_total") == 3


async def test_target_load_and_quota_errors_come_from_the_snapshot(runtime: Runtime) -> None:
    """What the providers' ``load()`` and the limiter's ``stats()`` say, read at scrape."""
    replicas = (ReplicaLoad("r0", 2, State.CLOSED), ReplicaLoad("r1", 1, State.OPEN))
    cast(Any, runtime.targets["secondary"].provider).load = lambda: Load(in_flight=3, replicas=replicas)
    cast(Any, runtime.targets["primary"].provider).load = lambda: Load(in_flight=1, queued=4)
    runtime.quota.limiter = cast(Any, _FakeLimiter(backend_errors=3))
    try:
        m = scrape(metrics_of(runtime))
    finally:
        runtime.quota.limiter = None
    assert value(m["turnout_target_in_flight"], "turnout_target_in_flight", target="secondary") == 3
    assert value(m["turnout_target_in_flight"], "turnout_target_in_flight", target="primary") == 1
    assert value(m["turnout_target_waiting"], "turnout_target_waiting", target="primary") == 4
    assert [s for s in m["turnout_target_waiting"] if s.labels["target"] == "secondary"] == []  # unknown: absent
    replica = m["turnout_replica_breaker_state"]
    assert value(replica, "turnout_replica_breaker_state", target="secondary", replica="r0") == 0
    assert value(replica, "turnout_replica_breaker_state", target="secondary", replica="r1") == 2
    assert value(m["turnout_quota_backend_errors"], "turnout_quota_backend_errors_total") == 3


async def test_a_real_openai_provider_reports_each_replica(runtime: Runtime) -> None:
    real = create("secondary", runtime.config.targets["secondary"])  # an OpenAI-compatible provider, two replicas
    old = runtime.targets["secondary"].provider
    runtime.targets["secondary"].provider = real
    try:
        m = scrape(metrics_of(runtime))
    finally:
        runtime.targets["secondary"].provider = old
        await real.aclose()
    assert value(m["turnout_target_in_flight"], "turnout_target_in_flight", target="secondary") == 0
    replica = m["turnout_replica_breaker_state"]
    assert {s.labels["replica"] for s in replica if s.labels["target"] == "secondary"} == {"r0", "r1"}


class _FakeLimiter:
    def __init__(self, backend_errors: int) -> None:
        self.backend_errors = backend_errors

    def stats(self) -> LimiterStats:
        return LimiterStats(self.backend_errors)


async def test_labels_are_bounded_whatever_the_rows_carry(runtime: Runtime) -> None:
    metrics = metrics_of(runtime)
    for i in range(200):
        metrics.observe(
            row(
                request_id=f"req-{i:04d}-unique",
                user=EMAIL,
                task=f"{EMAIL}-model-{i}",  # a caller's unknown model name is arbitrary text
                tenant=f"tenant-{i}",
                target=f"upstream-{i}",
                model_version=f"gpt-upstream-{i}",
                status=404,
                error_class=f"class_{i}" if i % 2 else f"Message with {EMAIL}",
                attempts=[AttemptRecord(f"upstream-{i}", f"replica-{i}", f"oops {i}", 1.0)],
            )
        )
    body = metrics.render()[0].decode()
    for needle in (EMAIL, "req-0", "upstream-", "replica-", "tenant-1", "gpt-upstream", "Message with", "oops"):
        assert needle not in body, needle
    families = {f.name: f for f in text_string_to_metric_families(body)}
    requests = families["turnout_requests"].samples
    assert {s.labels["task"] for s in requests} == {"other"}
    assert {s.labels["tenant"] for s in requests} == {"other"}
    assert {s.labels["target"] for s in requests} == {"other"}
    classes = {s.labels["error_class"] for s in families["turnout_errors"].samples if s.name.endswith("_total")}
    assert len(classes) <= 65  # at most 64 distinct classes of a safe shape, then "other"
    assert "other" in classes


async def test_requests_through_the_gateway_are_counted_and_carry_no_user(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    primary = ScriptedProvider("primary", Step(), Step(error=UpstreamConnectError("down")))
    app = await make_app(raw_config(), {"primary": primary, "secondary": ScriptedProvider("secondary")})
    metrics = app.runtime.metrics
    assert metrics is not None
    headers = {"authorization": f"Bearer {KEY}", "x-turnout-user": EMAIL}
    body: dict[str, Any] = {"model": "chat", "messages": [{"role": "user", "content": f"mail {EMAIL}"}]}
    assert (await request(app, "POST", "/v1/chat/completions", body, headers)).status == 200
    assert (await request(app, "POST", "/v1/chat/completions", {**body, "user": EMAIL}, headers)).status == 200
    assert (await request(app, "POST", "/v1/chat/completions", {**body, "stream": True}, headers)).status == 200
    unknown = {**body, "model": EMAIL}
    assert (await request(app, "POST", "/v1/chat/completions", unknown, headers)).status == 404
    text = metrics.render()[0].decode()
    assert EMAIL not in text
    m = {f.name: f.samples for f in text_string_to_metric_families(text)}
    req = m["turnout_requests"]
    assert value(req, "turnout_requests_total", target="primary", status="200", stream="false") == 1
    assert value(req, "turnout_requests_total", target="secondary", status="200", stream="false") == 1
    assert value(req, "turnout_requests_total", target="secondary", status="200", stream="true") == 1
    assert value(req, "turnout_requests_total", task="other", target="none", status="404") == 1
    assert value(m["turnout_fallbacks"], "turnout_fallbacks_total", task="chat") == 2  # the 2nd and 3rd
    ttft = m["turnout_time_to_first_token_seconds"]
    assert value(ttft, "turnout_time_to_first_token_seconds_count", target="secondary") == 1
    errors = m["turnout_errors"]
    assert value(errors, "turnout_errors_total", task="other", error_class="model_not_found") == 1


async def test_multiprocess_needs_the_variable_before_prometheus_client_loads(runtime: Runtime, tmp_path: Path) -> None:
    # This test process imported prometheus_client without PROMETHEUS_MULTIPROC_DIR.
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        metrics_of(runtime, multiprocess_dir=str(tmp_path))


WORKER = textwrap.dedent(
    """
    import json, sys
    from turnout.config import validate
    from turnout.serving.runtime import Runtime
    from turnout.ledger.record import AttemptRecord, LedgerRow
    from turnout.observe.metrics import Metrics

    raw, n, target = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    runtime = Runtime(validate(raw))  # not started: no targets yet
    metrics = Metrics(runtime.config, runtime.live)
    for _ in range(n):
        row = LedgerRow("id", 0.0, "acme", "chat", "internal", False, target=target, status=200,
                        attempts=[AttemptRecord(target, "r0", None, 100.0)], latency_ms=120.0,
                        generation_ms=100.0, prompt_tokens=5, completion_tokens=2)
        metrics.observe(row)
    if n == 0:
        sys.stdout.write(metrics.render()[0].decode())
    """
)


def test_multiprocess_mode_merges_every_worker(tmp_path: Path) -> None:
    """Two worker processes observe rows; a third renders and sees both (as any worker
    answering a scrape would)."""
    mp_dir = tmp_path / "prom"
    mp_dir.mkdir()
    raw = {**raw_config(), "store": {"kind": "none"}, "limits": {"keys_path": str(tmp_path / "keys.db")}}
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}

    def worker(n: int, target: str) -> str:
        args = [sys.executable, "-c", WORKER, json.dumps(raw), str(n), target]
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    worker(3, "primary")
    worker(2, "secondary")
    worker(4, "primary")
    assert len(list(mp_dir.glob("*.db"))) >= 3  # one file per process and metric type
    text = worker(0, "primary")
    m = {f.name: f.samples for f in text_string_to_metric_families(text)}
    req = m["turnout_requests"]
    assert value(req, "turnout_requests_total", target="primary", status="200") == 7
    assert value(req, "turnout_requests_total", target="secondary", status="200") == 2
    total = m["turnout_request_duration_seconds"]
    assert value(total, "turnout_request_duration_seconds_count", target="primary") == 7
    assert value(total, "turnout_request_duration_seconds_sum", target="primary") == pytest.approx(0.84)
    assert value(m["turnout_tokens"], "turnout_tokens_total", target="primary", kind="prompt") == 35
    assert "turnout_breaker_state" in m  # the live gauges of the worker answering the scrape


SUMMED = textwrap.dedent(
    """
    import json, os, sys
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector
    from turnout.control.quota.base import LimiterStats
    from turnout.observe.live import LedgerCounts, LiveState, TargetState
    from turnout.observe.summed import Summed
    from turnout.providers.base import Load
    from turnout.routing.breaker import State

    summed = Summed()
    for written, in_flight in json.loads(sys.argv[1]):  # this worker's own counts over time
        summed.sync(LiveState(
            (TargetState("a", State.CLOSED, Load(in_flight=in_flight)),),
            LedgerCounts(queued=1, written=written, dropped=0, failed=0),
            LimiterStats(backend_errors=written // 10),
        ))
    if sys.argv[2] == "render":
        registry = CollectorRegistry()
        MultiProcessCollector(registry, os.environ["PROMETHEUS_MULTIPROC_DIR"])
        sys.stdout.write(generate_latest(registry).decode())
    """
)


def test_workers_live_counts_are_summed_across_workers(tmp_path: Path) -> None:
    """Each worker's ledger counts, quota errors and calls in flight are its own; any worker's
    scrape shows their sum, counters never going down (a worker whose counts restart adds them
    all), and a dead worker's calls in flight leave the sum."""
    mp_dir = tmp_path / "prom"
    mp_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}

    def worker(history: list[tuple[int, int]], then: str = "") -> str:
        args = [sys.executable, "-c", SUMMED, json.dumps(history), then]
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    worker([(5, 2), (12, 3)])  # 12 written, 1 quota error, 3 in flight when it stopped
    worker([(30, 1), (4, 1)])  # restarted counts: 30, then 4 more after a reset
    text = worker([(0, 4)], "render")
    m = {f.name: f.samples for f in text_string_to_metric_families(text)}
    assert value(m["turnout_ledger_written"], "turnout_ledger_written_total") == 12 + 30 + 4
    assert value(m["turnout_quota_backend_errors"], "turnout_quota_backend_errors_total") == 1 + 3
    # livesum: the two finished workers were never marked dead here, so their last values count
    assert value(m["turnout_target_in_flight"], "turnout_target_in_flight", target="a") == 3 + 1 + 4
    assert value(m["turnout_ledger_queue_depth"], "turnout_ledger_queue_depth") == 3
    from prometheus_client import multiprocess

    for live in mp_dir.glob("gauge_livesum_*.db"):
        multiprocess.mark_process_dead(int(live.stem.rsplit("_", 1)[1]), str(mp_dir))  # type: ignore[no-untyped-call]
    text = worker([(1, 2)], "render")
    m = {f.name: f.samples for f in text_string_to_metric_families(text)}
    assert value(m["turnout_target_in_flight"], "turnout_target_in_flight", target="a") == 2  # only the live one
    assert value(m["turnout_ledger_written"], "turnout_ledger_written_total") == 12 + 30 + 4 + 1  # counters stay


async def test_gateways_do_not_share_a_registry(runtime: Runtime) -> None:
    one, two = metrics_of(runtime), metrics_of(runtime)
    one.observe(row())
    assert value(scrape(one)["turnout_requests"], "turnout_requests_total") == 1
    assert value(scrape(two)["turnout_requests"], "turnout_requests_total") == 0


async def test_metrics_route_serves_the_gateways_metrics(make_app: AppFactory) -> None:
    app = await make_app(
        raw_config(), {"primary": ScriptedProvider("primary"), "secondary": ScriptedProvider("secondary")}
    )
    headers = {"authorization": f"Bearer {KEY}", "x-turnout-user": EMAIL}
    body = {"model": "chat", "messages": [{"role": "user", "content": EMAIL}]}
    for stream in (False, True):
        assert (await request(app, "POST", "/v1/chat/completions", {**body, "stream": stream}, headers)).status == 200
    resp = await request(app, "GET", "/metrics")
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/plain")
    assert EMAIL.encode() not in resp.body
    m = {f.name: f.samples for f in text_string_to_metric_families(resp.body.decode())}
    for phase in ("request_duration", "generation_duration"):
        name = f"turnout_{phase}_seconds"
        assert value(m[name], f"{name}_count", task="chat", target="primary") == 2
    ttft = m["turnout_time_to_first_token_seconds"]
    assert value(ttft, "turnout_time_to_first_token_seconds_count", target="primary") == 1
    assert value(m["turnout_breaker_state"], "turnout_breaker_state", target="primary") == 0
    assert "turnout_ledger_queue_depth" in m
    assert (await request(app, "POST", "/metrics")).status == 405


async def test_a_metrics_key_closes_metrics_to_whoever_lacks_it(make_app: AppFactory) -> None:
    """Its figures name every tenant and task with their spend: with ``metrics_key`` set, only
    that key (or the admin key) reads them; a tenant's key does not."""
    raw = raw_config()
    raw["observability"] = {"metrics_key": "scrape-0123456789abcdef"}
    raw["server"] = {"admin_key": "admin-0123456789abcdef"}
    app = await make_app(raw, {"primary": ScriptedProvider("primary"), "secondary": ScriptedProvider("secondary")})
    for authorization in (None, f"Bearer {KEY}", "Bearer scrape-0123456789abcdeX", "Basic eDp5"):
        headers = {"authorization": authorization} if authorization else {}
        refused = await request(app, "GET", "/metrics", headers=headers)
        assert refused.status == 401 and b"turnout_" not in refused.body, authorization
    for key in ("scrape-0123456789abcdef", "admin-0123456789abcdef"):
        resp = await request(app, "GET", "/metrics", headers={"authorization": f"Bearer {key}"})
        assert resp.status == 200 and b"turnout_breaker_state" in resp.body
    with pytest.raises(ConfigError, match=r"observability\.metrics_key"):
        validate({**raw, "observability": {"metrics_key": "short"}})


async def test_metrics_route_is_absent_when_metrics_are_off(make_app: AppFactory) -> None:
    app = await make_app({**raw_config(), "observability": {"metrics": False}})
    assert app.runtime.metrics is None
    assert (await request(app, "GET", "/metrics")).status == 404


def test_an_open_vocabulary_admits_only_whole_safe_names() -> None:
    from turnout.observe.metrics import OTHER, Vocabulary

    classes = Vocabulary((), open_limit=8)
    assert classes("rate_limited") == "rate_limited"
    # `$` alone also matches before a final line break: such a value would reach the exposition
    assert classes("rate_limited\n") == OTHER
