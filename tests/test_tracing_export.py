"""What reaches the collector, span for span: the spans of a set of rows, decoded from the OTLP
request, equal those the OpenTelemetry SDK's tracer and exporter sent for the same rows before
the spans were built on the export thread (``tests/data/tracing_oracle.json``, captured from
that code; trace and span ids, random, are replaced by their order of appearance)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.test_tracing import TARGETS, fallback_row, raw_config
from turnout.config import validate
from turnout.ledger.record import AttemptRecord, LedgerRow
from turnout.observe.tracing import TargetInfo, Tracing

ORACLE = Path(__file__).parent / "data" / "tracing_oracle.json"
ORACLE_TARGETS = {**TARGETS, "llama": TargetInfo("llama.cpp", None)}
VARIES = {"telemetry.sdk.version", "service.instance.id"}  # the SDK's version; random at each start


def oracle_rows() -> list[LedgerRow]:
    """Rows that take every branch of the span building: an answer after a fallback, every
    target failing, a refusal with no attempt, an unknown model, a target without a model and
    one the configuration does not know, a client that left (499), optional fields unset."""
    return [
        fallback_row(),
        fallback_row(
            request_id="failed",
            target=None,
            model_version=None,
            status=502,
            error_class="all_targets_failed",
            attempts=[
                AttemptRecord("primary", "r0", "connect", 3.0),
                AttemptRecord("secondary", "", "http_503", 80.0, 4.0),
            ],
            fallback=False,
            prompt_tokens=None,
            completion_tokens=None,
            cost_usd=None,
            ttft_ms=None,
            generation_ms=None,
            fallback_ms=None,
            latency_ms=90.0,
        ),
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
