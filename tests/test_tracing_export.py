"""What reaches the collector, span for span: the spans of a set of rows, decoded from the OTLP
request, equal those the OpenTelemetry SDK's tracer and exporter sent for the same rows before
the spans were built on the export thread (``tests/data/tracing_oracle.json``, captured from
that code; trace and span ids, random, are replaced by their order of appearance)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.test_tracing import TARGETS, Sink, attributes, exported_spans, failed_row, fallback_row, raw_config
from turnout.config import validate
from turnout.errors import ConfigError
from turnout.ledger.record import AttemptRecord, LedgerRow
from turnout.observe.tracing import ExporterSender, TargetInfo, Tracing

ORACLE = Path(__file__).parent / "data" / "tracing_oracle.json"
ORACLE_TARGETS = {**TARGETS, "llama": TargetInfo("llama.cpp", None)}
VARIES = {"telemetry.sdk.version", "service.instance.id"}  # the SDK's version; random at each start


def oracle_rows() -> list[LedgerRow]:
    """Rows that take every branch of the span building: an answer after a fallback, every
    target failing, a refusal with no attempt, an unknown model, a target without a model and
    one the configuration does not know, a client that left (499), optional fields unset."""
    return [
        fallback_row(),
        failed_row(request_id="failed"),
        fallback_row(
            request_id="refused", target=None, status=429, error_class="rate_limited", attempts=[], latency_ms=1.0
        ),
        fallback_row(request_id="unknown", task="gpt-4 for someone", status=404, error_class=None, attempts=[]),
        fallback_row(
            request_id="local",
            started_at=1_700_000_123.000_001,
            stream=False,
            target="llama",
            replica="gpu-0",
            model_version=None,
            attempts=[AttemptRecord("llama", "gpu-0", None, 12.5, 0.25), AttemptRecord("gone", "", None, 1.0, 13.0)],
            fallback=False,
            prompt_tokens=0,
            completion_tokens=None,
            cost_usd=0.0,
            queue_ms=0.5,
            ttft_ms=None,
            generation_ms=None,
            fallback_ms=None,
            latency_ms=14.0,
        ),
        fallback_row(request_id="left", status=499, error_class="client_disconnected", tenant="", data_class="public"),
        fallback_row(request_id="none", status=500, error_class=None, target="gone", attempts=[], started_at=0.5),
    ]


def normalized(bodies: list[bytes]) -> dict[str, Any]:
    """The collector's requests as one comparable value: their resources, scopes and spans as
    protobuf's JSON mapping, ids by order of appearance, the values that vary from run to run left out."""
    ids: dict[str, str] = {}

    def named(value: str, prefix: str) -> str:
        return ids.setdefault(value, f"{prefix}{sum(1 for v in ids.values() if v.startswith(prefix))}")

    resources, scopes, spans = [], [], []
    for body in bodies:
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        for resource_spans in MessageToDict(export, preserving_proto_field_name=True)["resource_spans"]:
            resource = resource_spans.pop("resource")
            for attribute in resource["attributes"]:
                if attribute["key"] in VARIES:
                    attribute["value"] = "varies"
            resources.append(resource)
            for scope_spans in resource_spans.pop("scope_spans"):
                for span in scope_spans.pop("spans"):
                    span["trace_id"] = named(span["trace_id"], "trace")
                    span["span_id"] = named(span["span_id"], "span")
                    if "parent_span_id" in span:
                        span["parent_span_id"] = named(span["parent_span_id"], "span")
                    spans.append(span)
                scopes.append(scope_spans)
            assert not resource_spans.keys() - {"schema_url"}, resource_spans
    return {"resources": resources, "scopes": scopes, "spans": spans}


async def test_the_exported_spans_are_those_the_sdk_exported(collector: tuple[str, list[tuple[str, bytes]]]) -> None:
    endpoint, received = collector
    raw = raw_config(otlp_endpoint=endpoint, service_name="turnout-oracle")
    raw["targets"]["llama"] = {"provider": "local"}
    tracing = Tracing.from_config(validate(raw))
    assert tracing is not None
    assert tracing.targets == ORACLE_TARGETS
    for row in oracle_rows():
        tracing.record(row)
    await asyncio.to_thread(tracing.shutdown)
    assert {content_type for content_type, _ in received} == {"application/x-protobuf"}
    assert normalized([body for _, body in received]) == json.loads(ORACLE.read_text())


class HeldSink(Sink):
    """A collector that takes each request only once let go; says when one is waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()
        self.go = threading.Event()

    def export(self, body: bytes) -> bool:
        self.waiting.set()
        self.go.wait(10)
        return super().export(body)


def roots(sink: Sink) -> list[str]:
    return [attributes(s)["turnout.request_id"] for s in sink.spans() if not s.parent_span_id]


async def test_a_full_queue_drops_the_oldest_rows_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """While the collector holds an export, rows wait in the queue of OTEL_BSP_MAX_QUEUE_SIZE
    spans: the newest are kept, the oldest dropped (as the SDK's queue did), one warning line
    for them; ``record`` returns at once all along."""
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "30")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "9")
    caplog.set_level(logging.WARNING, "turnout")
    sink = HeldSink()
    tracing = Tracing(sink, service_name="turnout-test", tasks=frozenset({"chat"}), targets=TARGETS)
    for i in range(3):  # 9 spans: one batch, which the collector holds
        tracing.record(fallback_row(request_id=f"first-{i}"))
    assert await asyncio.to_thread(sink.waiting.wait, 10)
    for i in range(20):  # 60 spans for a queue of 30
        tracing.record(fallback_row(request_id=f"then-{i:02}"))
    assert tracing.queued == 30
    sink.go.set()
    await asyncio.to_thread(tracing.shutdown)

    assert roots(sink) == [f"first-{i}" for i in range(3)] + [f"then-{i:02}" for i in range(10, 20)]
    assert all(len(exported_spans([("", body)], "turnout-test")) <= 9 for body in sink.bodies)
    full = [r.getMessage() for r in caplog.records if "queue is full" in r.getMessage()]
    assert len(full) == 1 and "the oldest are dropped: 3 spans since the last such line" in full[0]


async def test_each_row_is_traced_with_the_tasks_configured_when_it_was_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows wait in the queue; a reload while they wait renames none of them."""
    sink = Sink()
    tracing = Tracing(sink, service_name="turnout-test", tasks=frozenset({"chat"}), targets=TARGETS)
    tracing.record(fallback_row(request_id="before"))
    tracing.tasks = frozenset({"summarize"})  # what ``follow`` does after a reload
    tracing.record(fallback_row(request_id="after"))
    await asyncio.to_thread(tracing.shutdown)
    names = {attributes(s)["turnout.request_id"]: s.name for s in sink.spans() if not s.parent_span_id}
    assert names == {"before": "chat chat", "after": "chat other"}


async def test_a_failing_export_loses_its_batch_only(caplog: pytest.LogCaptureFixture) -> None:
    class Flaky(Sink):
        failed = False

        def export(self, body: bytes) -> bool:
            if not self.failed:
                self.failed = True
                raise ConnectionError("the collector went away")
            return super().export(body)

    sink = Flaky()
    tracing = Tracing(sink, service_name="turnout-test", tasks=frozenset({"chat"}), targets=TARGETS)
    tracing.record(fallback_row(request_id="lost"))
    assert tracing.force_flush()
    tracing.record(fallback_row(request_id="kept"))
    await asyncio.to_thread(tracing.shutdown)
    assert roots(sink) == ["kept"]
    assert sink.shut
    assert any("could not be exported" in r.getMessage() for r in caplog.records)
    tracing.record(fallback_row(request_id="late"))  # after shutdown: ignored
    assert not tracing.force_flush()
    assert roots(sink) == ["kept"]


def test_sdk_disabled_is_no_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert Tracing.from_config(validate(raw_config(otlp_endpoint="http://127.0.0.1:9"))) is None


def test_an_exporter_without_the_http_client_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match=r"opentelemetry-exporter-otlp-proto-http>=1\.45"):
        ExporterSender(object())


async def test_a_ratio_sampler_keeps_or_leaves_each_request_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_TRACES_SAMPLER decides per request, on the request span: a child follows it."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
    sink = Sink()
    tracing = Tracing(sink, service_name="turnout-test", tasks=frozenset({"chat"}), targets=TARGETS)
    for i in range(200):
        tracing.record(fallback_row(request_id=f"r{i}"))
    await asyncio.to_thread(tracing.shutdown)
    spans = sink.spans()
    kept = {s.span_id for s in spans if not s.parent_span_id}
    assert 0 < len(kept) < 200  # each request a coin flip: all or none of 200 is 2**-199
    assert sorted(s.parent_span_id for s in spans if s.parent_span_id) == sorted([*kept, *kept])
