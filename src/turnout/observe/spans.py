"""The OTLP request for a batch of finished ledger rows, built on the export thread: each row's
spans straight into the protobuf messages the exporter sends (``opentelemetry-proto``), without
the SDK's spans, span processor or encoder, which cost several times as much a span. What is
built is what the SDK sent for the same rows (``tests/test_tracing_export.py`` holds it to the
spans the SDK exported): the resource and scope come from the SDK's own encoder, once; the
sampler and the ids are the SDK's.

    chat {task}                     SERVER   the request as the caller saw it
    ├── chat {target model}         CLIENT   attempt 1 at a target
    └── chat {target model}         CLIENT   attempt 2 (retry or fallback) ...
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, SpanFlags, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import Decision, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind

from turnout.config import TargetConfig
from turnout.ledger.record import AttemptRecord, LedgerRow

# gen_ai.provider.name well-known values; llama.cpp has none, so it is named as itself.
PROVIDER_NAMES = {"openai": "openai", "bedrock": "aws.bedrock", "local": "llama.cpp"}
UNKNOWN_TASK = "other"
SCOPE = "turnout"  # the instrumentation scope, as the SDK's tracer was named
# As the SDK's encoder writes them: a span's parent is never remote here.
FLAGS = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
SERVER, CLIENT = Span.SpanKind.SPAN_KIND_SERVER, Span.SpanKind.SPAN_KIND_CLIENT
ERROR = Status.StatusCode.STATUS_CODE_ERROR
# An attribute's value field by its type (exact: a bool is not written as an int).
VALUE_FIELD = {str: "string_value", bool: "bool_value", int: "int_value", float: "double_value"}


@dataclass(frozen=True, slots=True)
class TargetInfo:
    provider: str  # gen_ai.provider.name
    model: str | None  # the model the target is asked for (gen_ai.request.model)


def target_info(cfg: TargetConfig) -> TargetInfo:
    model = getattr(cfg, "model", None) or cfg.model_version
    return TargetInfo(PROVIDER_NAMES.get(cfg.provider, cfg.provider), model)


class SpanBuilder:
    """Builds the OTLP request of a batch of rows. Used by one thread at a time."""

    def __init__(
        self, resource: Resource, sampler: Sampler, ids: IdGenerator, targets: Mapping[str, TargetInfo]
    ) -> None:
        self.sampler = sampler
        self.ids = ids
        self.targets = targets
        # The resource and scope as the SDK encodes them, taken from a request of one span.
        context = SpanContext(1, 1, is_remote=False)
        scope = InstrumentationScope(SCOPE)
        self.template = encode_spans([ReadableSpan("", context, resource=resource, instrumentation_scope=scope)])
        self.template.resource_spans[0].scope_spans[0].ClearField("spans")

    def request(self, rows: Iterable[tuple[LedgerRow, frozenset[str]]]) -> ExportTraceServiceRequest | None:
        """The request for these rows (each with the tasks configured when it was recorded), or
        None when the sampler left every one out."""
        export = ExportTraceServiceRequest()
        export.CopyFrom(self.template)
        spans = export.resource_spans[0].scope_spans[0].spans
        for row, tasks in rows:
            self.add(spans, row, tasks)
        return export if len(spans) else None

    def add(self, spans: Any, row: LedgerRow, tasks: frozenset[str]) -> None:
        """One row's spans, in the order the SDK queued them: each attempt's as it ended, then the
        request's."""
        start = int(row.started_at * 1e9)
        task = row.task if row.task in tasks else UNKNOWN_TASK
        name = f"chat {task}"
        usage = _usage(row)
        attrs = self.request_attrs(row, task, usage)
        trace_id = self.ids.generate_trace_id()
        decision = self.sampler.should_sample(None, trace_id, name, SpanKind.SERVER, attrs).decision
        if decision is not Decision.RECORD_AND_SAMPLE:  # as is_sampled(); RECORD_ONLY was not exported either
            return  # and no children: they follow their parent (or, unparented, the same trace id)
        trace = trace_id.to_bytes(16, "big")
        parent = self.ids.generate_span_id().to_bytes(8, "big")
        answered = max((i for i, a in enumerate(row.attempts) if a.error_class is None), default=-1)
        for i, attempt in enumerate(row.attempts):
            info = self.targets.get(attempt.target)
            a_attrs = _attempt_attrs(i, attempt, info)
            if i == answered:
                a_attrs.update(usage)
                if row.model_version:
                    a_attrs["gen_ai.response.model"] = row.model_version
            a_start = start + int(attempt.offset_ms * 1e6)
            _span(
                spans.add(),
                trace,
                self.ids.generate_span_id().to_bytes(8, "big"),
                parent,
                f"chat {info.model}" if info is not None and info.model else "chat",
                CLIENT,
                (a_start, a_start + int(attempt.latency_ms * 1e6)),
                a_attrs,
                error=attempt.error_class is not None,
            )
        # A server span is an error when the gateway failed (5xx); a refusal (4xx) is not.
        end = start + int(row.latency_ms * 1e6)
        _span(spans.add(), trace, parent, b"", name, SERVER, (start, end), attrs, error=row.status >= 500)

    def request_attrs(self, row: LedgerRow, task: str, usage: dict[str, int]) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": task,
            "http.response.status_code": row.status,
            "turnout.request_id": row.request_id,
            "turnout.task": task,
            "turnout.tenant": row.tenant,
            "turnout.data_class": row.data_class,
            "turnout.stream": row.stream,
            "turnout.attempts": len(row.attempts),
            "turnout.fallback": row.fallback,
            **usage,
        }
        info = self.targets.get(row.target) if row.target else None
        if info is not None:
            attrs["gen_ai.provider.name"] = info.provider
        for key, value in (
            ("turnout.target", row.target),
            ("turnout.replica", row.replica),
            ("gen_ai.response.model", row.model_version),
            ("turnout.cost_usd", row.cost_usd),
            ("turnout.queue_ms", row.queue_ms),
            ("turnout.ttft_ms", row.ttft_ms),
            ("turnout.generation_ms", row.generation_ms),
            ("turnout.fallback_ms", row.fallback_ms),
        ):
            if value is not None and value != "":
                attrs[key] = value
        if row.status != 200:
            attrs["error.type"] = row.error_class or "_OTHER"
        return attrs


def _span(
    span: Span,
    trace: bytes,
    span_id: bytes,
    parent: bytes,
    name: str,
    kind: Span.SpanKind.ValueType,
    times: tuple[int, int],
    attrs: dict[str, Any],
    *,
    error: bool,
) -> None:
    span.trace_id = trace
    span.span_id = span_id
    if parent:
        span.parent_span_id = parent
    span.name = name
    span.kind = kind
    span.start_time_unix_nano, span.end_time_unix_nano = times
    span.flags = FLAGS
    add = span.attributes.add
    for key, value in attrs.items():
        field = VALUE_FIELD.get(type(value)) or _value_field(value)
        if field is not None:
            setattr(add(key=key).value, field, value)
    if error:
        span.status.code = ERROR
    else:
        span.status.SetInParent()  # unset, but present: as the SDK's encoder wrote it


def _value_field(value: Any) -> str | None:
    """A subclass's field, as the SDK's encoder chose it; None: not a value an attribute holds."""
    return next((field for kind, field in VALUE_FIELD.items() if isinstance(value, kind)), None)


def _attempt_attrs(i: int, attempt: AttemptRecord, info: TargetInfo | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "turnout.target": attempt.target,
        "turnout.attempt": i + 1,
    }
    if info is not None:
        attrs["gen_ai.provider.name"] = info.provider
        if info.model:
            attrs["gen_ai.request.model"] = info.model
    if attempt.replica:
        attrs["turnout.replica"] = attempt.replica
    if attempt.error_class is not None:
        attrs["error.type"] = attempt.error_class
    return attrs


def _usage(row: LedgerRow) -> dict[str, int]:
    usage: dict[str, int] = {}
    if row.prompt_tokens is not None:
        usage["gen_ai.usage.input_tokens"] = row.prompt_tokens
    if row.completion_tokens is not None:
        usage["gen_ai.usage.output_tokens"] = row.completion_tokens
    return usage
