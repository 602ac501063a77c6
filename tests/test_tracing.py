"""Traces built from the finished ledger row: one request span, one child per attempt, with the
row's own times; GenAI attributes; exported over OTLP/HTTP to a collector on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sqlite3
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.asgi import request
from tests.conftest import AppFactory, otlp_collector
from tests.fakes.scripted import ScriptedProvider
from turnout.cli.serve import Reloader
from turnout.config import load_config, validate
from turnout.errors import ConfigError
from turnout.ledger.record import AttemptRecord, LedgerRow
from turnout.observe import open_tracing
from turnout.observe.tracing import TargetInfo, Tracing, target_info, traces_url
from turnout.serving.app import App

EMAIL = "jane.doe+sentinel@example.com"
ADMIN = "adm-tracing-0123456789abcdef"
START = 1_700_000_000.25
TARGETS = {
    "primary": TargetInfo("openai", "m1"),
    "secondary": TargetInfo("aws.bedrock", "anthropic.claude-3-haiku"),
}


def raw_config(**observability: Any) -> dict[str, Any]:
    return {
        "store": {"kind": "none"},
        "observability": observability,
        "targets": {
            "primary": {"provider": "openai", "base_url": "http://primary.invalid/v1", "model": "m1"},
            "secondary": {"provider": "bedrock", "region": "us-east-1", "model": "anthropic.claude-3-haiku"},
        },
        "tasks": {"chat": {"route": ["primary", "secondary"]}},
    }


SERVER, CLIENT = Span.SpanKind.SPAN_KIND_SERVER, Span.SpanKind.SPAN_KIND_CLIENT
UNSET, ERROR = Status.StatusCode.STATUS_CODE_UNSET, Status.StatusCode.STATUS_CODE_ERROR


class Sink:
    """Where a ``Tracing`` sends its OTLP requests here: kept as sent."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.shut = False

    def export(self, body: bytes) -> bool:
        self.bodies.append(body)
        return True

    def shutdown(self) -> None:
        self.shut = True

    def spans(self, service: str = "turnout-test") -> list[Span]:
        return exported_spans([("application/x-protobuf", body) for body in self.bodies], service)


@pytest.fixture
def memory() -> Iterator[tuple[Tracing, Sink]]:
    sink = Sink()
    tracing = Tracing(sink, service_name="turnout-test", tasks=frozenset({"chat"}), targets=TARGETS)
    yield tracing, sink
    tracing.shutdown()


def attributes(span: Span) -> dict[str, Any]:
    return {a.key: getattr(a.value, a.value.WhichOneof("value") or "string_value") for a in span.attributes}


def fallback_row(**kw: Any) -> LedgerRow:
    base: dict[str, Any] = {
        "request_id": "0123456789abcdef01234567",
        "started_at": START,
        "tenant": "acme",
        "task": "chat",
        "data_class": "internal",
        "stream": True,
        "user": EMAIL,
        "target": "secondary",
        "replica": "",
        "model_version": "claude-3-haiku-20240307",
        "status": 200,
        "attempts": [
            AttemptRecord("primary", "r0", "timeout_ttft", 30.0, 1.0),
            AttemptRecord("secondary", "", None, 250.0, 35.0),
        ],
        "fallback": True,
        "prompt_tokens": 12,
        "completion_tokens": 40,
        "cost_usd": 0.0002,
        "latency_ms": 900.0,
        "ttft_ms": 290.0,
        "generation_ms": 610.0,
        "fallback_ms": 35.0,
    }
    return LedgerRow(**{**base, **kw})


def failed_row(**kw: Any) -> LedgerRow:
    """Every target failed: the first could not connect, the second answered 503."""
    failed = [AttemptRecord("primary", "r0", "connect", 3.0), AttemptRecord("secondary", "", "http_503", 80.0, 4.0)]
    unset = dict.fromkeys(("target", "model_version", "prompt_tokens", "completion_tokens", "cost_usd"))
    unset |= dict.fromkeys(("ttft_ms", "generation_ms", "fallback_ms"))
    return fallback_row(
        **unset, status=502, error_class="all_targets_failed", attempts=failed, fallback=False, latency_ms=90.0, **kw
    )


def spans_of(tracing: Tracing, sink: Sink) -> tuple[Span, list[Span]]:
    assert tracing.force_flush()
    spans = sink.spans()
    roots = [s for s in spans if not s.parent_span_id]
    assert len(roots) == 1
    children = sorted((s for s in spans if s.parent_span_id), key=lambda s: s.start_time_unix_nano)
    return roots[0], children


def ns(seconds: float) -> int:
    return int(seconds * 1e9)


def test_one_request_span_and_one_child_per_attempt_with_the_rows_times(
    memory: tuple[Tracing, Sink],
) -> None:
    tracing, sink = memory
    tracing.record(fallback_row())
    root, children = spans_of(tracing, sink)

    assert root.name == "chat chat"
    assert root.kind == SERVER
    assert root.start_time_unix_nano == ns(START)
    assert root.end_time_unix_nano == ns(START) + 900_000_000
    assert root.status.code == UNSET  # and the service, turnout-test: checked by sink.spans()
    assert [c.name for c in children] == ["chat m1", "chat anthropic.claude-3-haiku"]
    for child in children:
        assert child.kind == CLIENT
        assert child.parent_span_id == root.span_id
        assert child.trace_id == root.trace_id
    first, second = children
    assert first.start_time_unix_nano == ns(START) + 1_000_000
    assert first.end_time_unix_nano == ns(START) + 31_000_000
    assert second.start_time_unix_nano == ns(START) + 35_000_000
    assert second.end_time_unix_nano == ns(START) + 285_000_000
    assert first.status.code == ERROR
    assert second.status.code == UNSET


def test_attributes_follow_the_genai_conventions(memory: tuple[Tracing, Sink]) -> None:
    tracing, sink = memory
    tracing.record(fallback_row())
    root, (first, second) = spans_of(tracing, sink)
    assert attributes(root) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "chat",
        "gen_ai.response.model": "claude-3-haiku-20240307",
        "gen_ai.provider.name": "aws.bedrock",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 40,
        "http.response.status_code": 200,
        "turnout.request_id": "0123456789abcdef01234567",
        "turnout.task": "chat",
        "turnout.target": "secondary",
        "turnout.tenant": "acme",
        "turnout.data_class": "internal",
        "turnout.stream": True,
        "turnout.attempts": 2,
        "turnout.fallback": True,
        "turnout.cost_usd": 0.0002,
        "turnout.ttft_ms": 290.0,
        "turnout.generation_ms": 610.0,
        "turnout.fallback_ms": 35.0,
    }
    assert attributes(first) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "m1",
        "error.type": "timeout_ttft",
        "turnout.target": "primary",
        "turnout.replica": "r0",
        "turnout.attempt": 1,
    }
    attrs = attributes(second)
    assert attrs["gen_ai.provider.name"] == "aws.bedrock"
    assert attrs["gen_ai.usage.output_tokens"] == 40  # the answering attempt carries the usage
    assert attrs["gen_ai.response.model"] == "claude-3-haiku-20240307"
    assert "error.type" not in attrs


def test_a_failed_request_is_an_error_span(memory: tuple[Tracing, Sink]) -> None:
    tracing, sink = memory
    tracing.record(failed_row())
    root, children = spans_of(tracing, sink)
    assert root.status.code == ERROR
    attrs = attributes(root)
    assert attrs["error.type"] == "all_targets_failed"
    assert attrs["http.response.status_code"] == 502
    assert "turnout.target" not in attrs and "gen_ai.provider.name" not in attrs
    assert "gen_ai.usage.input_tokens" not in attrs
    assert [c.status.code for c in children] == [ERROR, ERROR]
    assert [attributes(c)["error.type"] for c in children] == ["connect", "http_503"]


def test_a_refused_request_names_its_error_but_is_not_a_server_error(
    memory: tuple[Tracing, Sink],
) -> None:
    tracing, sink = memory
    tracing.record(fallback_row(target=None, status=429, error_class="rate_limited", attempts=[], latency_ms=1.0))
    root, children = spans_of(tracing, sink)
    assert children == []
    assert root.status.code == UNSET
    assert attributes(root)["error.type"] == "rate_limited"


def test_sentinel_no_user_text_in_any_span(memory: tuple[Tracing, Sink]) -> None:
    """The caller's user and an unknown model name (arbitrary caller text) reach no span."""
    tracing, sink = memory
    tracing.record(fallback_row())
    tracing.record(fallback_row(task=f"gpt-4 for {EMAIL}", status=404, error_class="model_not_found", attempts=[]))
    assert tracing.force_flush()
    spans = sink.spans()
    assert len(spans) == 4
    for span in spans:
        assert EMAIL not in span.name
        for key, value in attributes(span).items():
            assert EMAIL not in key and EMAIL not in str(value), (span.name, key)
    unknown = [s for s in spans if attributes(s).get("http.response.status_code") == 404]
    assert unknown[0].name == "chat other"


def test_sampled_out_requests_make_no_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    sink = Sink()
    tracing = Tracing(sink, tasks=frozenset({"chat"}), targets=TARGETS)
    tracing.record(fallback_row())
    assert tracing.force_flush()
    tracing.shutdown()
    assert sink.bodies == []


def test_off_unless_an_endpoint_is_configured() -> None:
    assert Tracing.from_config(validate(raw_config())) is None


def test_targets_name_their_provider_and_model() -> None:
    config = validate(raw_config())
    assert target_info(config.targets["primary"]) == TargetInfo("openai", "m1")
    assert target_info(config.targets["secondary"]) == TargetInfo("aws.bedrock", "anthropic.claude-3-haiku")
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_url("https://otel.example/v1/traces") == "https://otel.example/v1/traces"


def exported_spans(received: list[tuple[str, bytes]], service: str = "turnout") -> list[Any]:
    """The spans of the collector's requests, each from ``service``."""
    spans = []
    for _, body in received:
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        for resource_spans in export.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            assert attributes["service.name"] == service
            for scope_spans in resource_spans.scope_spans:
                spans.extend(scope_spans.spans)
    return spans


async def test_spans_are_posted_to_the_otlp_endpoint_on_shutdown(
    collector: tuple[str, list[tuple[str, bytes]]],
) -> None:
    endpoint, received = collector
    tracing = Tracing.from_config(validate(raw_config(otlp_endpoint=endpoint, service_name="gw-a")))
    assert tracing is not None
    tracing.record(fallback_row())
    tracing.record(fallback_row(request_id="ffffffffffffffffffffffff"))
    await asyncio.to_thread(tracing.shutdown)  # blocking export: off the event loop, as the gateway does

    assert received, "nothing was exported"
    assert {content_type for content_type, _ in received} == {"application/x-protobuf"}
    spans = exported_spans(received, service="gw-a")
    assert sorted(s.name for s in spans) == sorted(["chat chat", "chat m1", "chat anthropic.claude-3-haiku"] * 2)
    assert all(EMAIL.encode() not in body for _, body in received)
    roots = [s for s in spans if not s.parent_span_id]
    assert len(roots) == 2
    assert {s.start_time_unix_nano for s in roots} == {ns(START)}


def test_open_tracing_is_none_without_an_endpoint_and_explains_a_missing_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    assert open_tracing(validate(raw_config())) is None
    monkeypatch.setitem(sys.modules, "turnout.observe.tracing", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"turnout\[observability\]"):
        open_tracing(validate(raw_config(otlp_endpoint="http://127.0.0.1:4318")))


@pytest.fixture
def silent_collector() -> Iterator[tuple[str, list[socket.socket]]]:
    """A collector that accepts each connection and never answers (hung, or a black hole
    behind a proxy): the connections it holds."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", held
    done.set()
    thread.join()
    server.close()
    for conn in held:
        conn.close()


def test_shutdown_does_not_wait_out_a_collector_that_never_answers(
    silent_collector: tuple[str, list[socket.socket]],
) -> None:
    """Three batches queued for a collector that never answers: the SDK's shutdown sent each in
    turn, waiting out every export's timeout (and up to 30 s in all), while the gateway's
    shutdown, its ledger still to drain, waited too. It gives up after the first."""
    endpoint, held = silent_collector
    tracing = Tracing.from_config(validate(raw_config(otlp_endpoint=endpoint)))
    assert tracing is not None
    for _ in range(400):  # 1,200 spans: batches of 512
        tracing.record(fallback_row())
    tracing.shutdown()
    assert len(held) == 1  # the first export, still unanswered: no other batch was waited for


async def test_the_ledger_is_written_before_the_traces_wait_on_the_collector(
    make_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At shutdown the ledger drains first: a collector that is slow to take the last spans
    holds back no row (rows wait for the close: a long flush interval)."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # spans too leave only at shutdown
    db = tmp_path / "ledger.db"
    seen: list[int] = []  # at each export: the rows the ledger holds

    async def traces(request: web.Request) -> web.Response:
        await request.read()
        with sqlite3.connect(db) as conn:
            seen.append(conn.execute("SELECT count(*) FROM requests").fetchone()[0])
        return web.Response(body=ExportTraceServiceRequest().SerializeToString(), content_type="application/x-protobuf")

    async with otlp_collector(traces) as url:
        raw = raw_config(otlp_endpoint=url)
        raw["store"] = {"kind": "sqlite", "path": str(db), "flush_interval_ms": 600_000}
        app = await make_app(raw, {"primary": ScriptedProvider("primary")})
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
        assert (await request(app, "POST", "/v1/chat/completions", body)).status == 200
        await app.runtime.aclose()
    assert seen == [1]


async def test_a_collector_answering_without_end_is_read_no_further_than_a_bound() -> None:
    """requests read the whole answer into memory before the exporter saw its status: an
    endpoint answering with an endless body grew the gateway without end. The exporter hangs
    up once it has a bounded prefix (here: long before the 64 MiB this endpoint would send)."""
    sent: list[int] = [0]

    async def traces(request: web.Request) -> web.StreamResponse:
        await request.read()
        answer = web.StreamResponse()
        await answer.prepare(request)
        with contextlib.suppress(ConnectionError):
            while sent[0] < 64 * 2**20:
                await answer.write(b"x" * 65_536)
                sent[0] += 65_536
        return answer

    async with otlp_collector(traces) as url:
        tracing = Tracing.from_config(validate(raw_config(otlp_endpoint=url)))
        assert tracing is not None
        tracing.record(fallback_row())
        await asyncio.to_thread(tracing.force_flush)
        await asyncio.to_thread(tracing.shutdown)
    assert 0 < sent[0] < 64 * 2**20


async def test_a_task_added_by_a_reload_is_named_in_its_spans(
    collector: tuple[str, list[tuple[str, bytes]]], tmp_path: Path
) -> None:
    """Tasks change live; the traces kept the names of the tasks at start-up, so a task added by
    a reload was traced as ``other``."""
    endpoint, received = collector
    raw = raw_config(otlp_endpoint=endpoint)
    raw["server"] = {"admin_key": ADMIN}
    raw["limits"] = {"keys_path": str(tmp_path / "keys.db")}
    path = tmp_path / "turnout.yaml"
    path.write_text(json.dumps(raw))
    app = App(load_config(path), {"primary": ScriptedProvider("primary")}, loader=Reloader(str(path), None, None))
    await app.runtime.start()
    app.ready = True
    try:
        raw["tasks"]["summarize"] = {"route": ["primary"]}
        path.write_text(json.dumps(raw))
        assert (await request(app, "POST", "/admin/reload", headers={"authorization": f"Bearer {ADMIN}"})).status == 200
        body = {"model": "summarize", "messages": [{"role": "user", "content": "hi"}]}
        assert (await request(app, "POST", "/v1/chat/completions", body)).status == 200
    finally:
        await app.runtime.aclose()
    roots = [span for span in exported_spans(received) if not span.parent_span_id]
    assert [span.name for span in roots] == ["chat summarize"]


def test_a_malformed_collector_header_is_not_logged_with_its_credential(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The SDK logged a header it could not parse whole (a colon for the ``=``), the collector's
    key with it."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-honeycomb-team: hc-CANARY-key,api-key=ok CANARY ; x")
    caplog.set_level(logging.WARNING)
    tracing = Tracing.from_config(validate(raw_config(otlp_endpoint="http://127.0.0.1:9")))
    assert tracing is not None
    tracing.shutdown(timeout_s=0)
    said = [record.getMessage() for record in caplog.records]
    assert any("a header is not name=value" in line for line in said), said
    assert not any("CANARY" in line for line in said), said
