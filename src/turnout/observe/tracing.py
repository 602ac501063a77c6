"""OpenTelemetry traces, built after the fact from the finished ledger row.

Nothing is traced while the request runs: when it is accounted, its row already holds every
time (start, total latency, each attempt's offset and latency), so ``Tracing.record`` builds
the spans with explicit start and end times and hands them to a ``BatchSpanProcessor``, whose
thread exports them (OTLP/HTTP, protobuf). Off unless ``observability.otlp_endpoint`` is set.

    chat {task}                     SERVER   the request as the caller saw it
    ├── chat {target model}         CLIENT   attempt 1 at a target
    └── chat {target model}         CLIENT   attempt 2 (retry or fallback) ...

Attributes follow the OpenTelemetry GenAI semantic conventions where they exist
(``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model``,
``gen_ai.response.model``, ``gen_ai.usage.*``, ``error.type``), plus ``turnout.*`` for the rest.
No span carries prompt or completion text, the caller's user, or a task name that is not in
the configuration (an unknown "model" from a caller is arbitrary text).

A collector that is down, slow or refusing costs a request nothing: ``record`` only queues, the
export thread waits on the collector (each export at most ``EXPORT_S``) and the queue drops what
it cannot hold. At shutdown what is queued gets ``SHUTDOWN_S`` to leave, then is dropped.

The standard ``OTEL_*`` variables still apply: ``OTEL_TRACES_SAMPLER`` to sample,
``OTEL_EXPORTER_OTLP_TRACES_HEADERS`` for a collector's credentials,
``OTEL_RESOURCE_ATTRIBUTES`` for more resource attributes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from turnout.config import Config, TargetConfig
from turnout.ledger.record import AttemptRecord, LedgerRow

# gen_ai.provider.name well-known values; llama.cpp has none, so it is named as itself.
PROVIDER_NAMES = {"openai": "openai", "bedrock": "aws.bedrock", "local": "llama.cpp"}
UNKNOWN_TASK = "other"
EXPORT_S = 5.0  # one export to the collector, its retries included
ANSWER_BYTES = 65_536  # of the collector's answer to an export, what is read at most
SHUTDOWN_S = 3.0  # at shutdown, how long what is queued may take to reach the collector

log = logging.getLogger("turnout")


class _HeaderUnshown(logging.Filter):
    """The SDK logs a header of ``OTEL_EXPORTER_OTLP_(TRACES_)HEADERS`` that it cannot parse
    whole: ``x-honeycomb-team: KEY`` (a colon for the ``=``) put the collector's key in the log.
    The line says what is wrong and shows none of the header."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS or OTEL_EXPORTER_OTLP_HEADERS: a header is not name=value "
                "(name=value,name=value; not 'Name: value'), so it is not sent; not shown: it may hold a credential"
            )
            record.args = ()
        return True


logging.getLogger("opentelemetry.util.re").addFilter(_HeaderUnshown())


@dataclass(frozen=True, slots=True)
class TargetInfo:
    provider: str  # gen_ai.provider.name
    model: str | None  # the model the target is asked for (gen_ai.request.model)


def target_info(cfg: TargetConfig) -> TargetInfo:
    model = getattr(cfg, "model", None) or cfg.model_version
    return TargetInfo(PROVIDER_NAMES.get(cfg.provider, cfg.provider), model)


def traces_url(endpoint: str) -> str:
    """An OTLP/HTTP base (``http://collector:4318``) gains the traces path; a full URL is kept."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


class Tracing:
    def __init__(
        self,
        exporter: SpanExporter,
        *,
        service_name: str = "turnout",
        tasks: frozenset[str] = frozenset(),
        targets: Mapping[str, TargetInfo] | None = None,
    ) -> None:
        self.tasks = tasks
        self.targets = dict(targets or {})
        # A provider of our own, not the global one: several gateways (tests) stay apart.
        # Shut down by ``shutdown`` only: the SDK's own at exit waits up to 30 s on a dead collector.
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}), shutdown_on_exit=False)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("turnout")

    @classmethod
    def from_config(cls, config: Config) -> Tracing | None:
        endpoint = config.observability.otlp_endpoint
        if not endpoint:
            return None
        # Imported here: the exporter (and its HTTP client) only loads when tracing is on.
        import requests
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        session = requests.Session()
        session.hooks["response"].append(read_bounded)
        return cls(
            OTLPSpanExporter(endpoint=traces_url(endpoint), timeout=EXPORT_S, session=session),
            service_name=config.observability.service_name,
            tasks=frozenset(config.tasks),
            targets={name: target_info(t) for name, t in config.targets.items()},
        )

    def follow(self, config: Config) -> None:
        """After a config reload: spans name the tasks it has (tasks change live; targets wait
        for a restart)."""
        self.tasks = frozenset(config.tasks)

    def record(self, row: LedgerRow) -> None:
        """Queue the spans of one finished request for export. Never blocks: when the export
        queue is full the processor drops spans."""
        start = int(row.started_at * 1e9)
        task = row.task if row.task in self.tasks else UNKNOWN_TASK
        usage = _usage(row)
        span = self.tracer.start_span(
            f"chat {task}", kind=SpanKind.SERVER, attributes=self._request_attrs(row, task, usage), start_time=start
        )
        if span.is_recording():  # else sampled out: no children either
            parent = trace.set_span_in_context(span)
            answered = max((i for i, a in enumerate(row.attempts) if a.error_class is None), default=-1)
            for i, attempt in enumerate(row.attempts):
                info = self.targets.get(attempt.target)
                attrs = _attempt_attrs(i, attempt, info)
                if i == answered:
                    attrs.update(usage)
                    if row.model_version:
                        attrs["gen_ai.response.model"] = row.model_version
                a_start = start + int(attempt.offset_ms * 1e6)
                name = f"chat {info.model}" if info is not None and info.model else "chat"
                child = self.tracer.start_span(
                    name, context=parent, kind=SpanKind.CLIENT, attributes=attrs, start_time=a_start
                )
                if attempt.error_class is not None:
                    child.set_status(Status(StatusCode.ERROR))
                child.end(end_time=a_start + int(attempt.latency_ms * 1e6))
            # A server span is an error when the gateway failed (5xx); a refusal (4xx) is not.
            if row.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=start + int(row.latency_ms * 1e6))

    def _request_attrs(self, row: LedgerRow, task: str, usage: dict[str, int]) -> dict[str, Any]:
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

    def force_flush(self, timeout_s: float = 5.0) -> bool:
        return self.provider.force_flush(int(timeout_s * 1000))

    def shutdown(self, timeout_s: float = SHUTDOWN_S) -> None:
        """Export what is queued and stop the export thread, waiting ``timeout_s`` at most: the
        SDK's shutdown exports every queued batch in turn, each up to ``EXPORT_S``, and waits
        30 s for them (older SDKs, without end), which a collector that is down or never
        answers made the gateway's shutdown wait out, its ledger still to drain. What is left
        is dropped with the process (a daemon thread). Blocks: from async code, run it in a
        thread."""
        stopping = threading.Thread(target=self.provider.shutdown, name="turnout-traces-shutdown", daemon=True)
        stopping.start()
        stopping.join(timeout_s)
        if stopping.is_alive():
            log.warning("traces: the collector took no more within %g s of shutdown; the rest is dropped", timeout_s)


def read_bounded(response: Any, *args: Any, **kwargs: Any) -> Any:
    """A ``requests`` hook on the exporter's session: of the collector's answer, at most
    ``ANSWER_BYTES`` are read, the connection dropped past that. requests reads a body whole,
    whatever its size, before the exporter looks at the status: an endpoint answering with an
    endless body (not a collector, or a hostile one) grew the gateway's memory without end."""
    body = bytearray()
    for chunk in response.iter_content(ANSWER_BYTES):
        body += chunk
        if len(body) > ANSWER_BYTES:
            response.close()
            break
    response._content = bytes(body[:ANSWER_BYTES])  # what .content and .text answer from now on
    return response


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
