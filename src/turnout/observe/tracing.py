"""OpenTelemetry traces, built after the fact from the finished ledger row.

Nothing is traced while the request runs: when it is accounted, its row already holds every
time (start, total latency, each attempt's offset and latency). ``Tracing.record`` only puts the
row on a bounded queue; the export thread takes it in batches, builds each row's spans with
those times straight into the OTLP request (``spans.py``: one request span, one child per
attempt) and sends it (OTLP/HTTP, protobuf) through the SDK's exporter. Off unless
``observability.otlp_endpoint`` is set.

Attributes follow the OpenTelemetry GenAI semantic conventions where they exist
(``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model``,
``gen_ai.response.model``, ``gen_ai.usage.*``, ``error.type``), plus ``turnout.*`` for the rest.
No span carries prompt or completion text, the caller's user, or a task name that is not in
the configuration (an unknown "model" from a caller is arbitrary text).

A collector that is down, slow or refusing costs a request nothing: ``record`` only queues, the
export thread waits on the collector (each export at most ``EXPORT_S``) and the queue, of
``OTEL_BSP_MAX_QUEUE_SIZE`` spans, drops the oldest rows when full. Batches of
``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` spans leave when that many are queued, or every
``OTEL_BSP_SCHEDULE_DELAY`` ms. At shutdown what is queued gets ``SHUTDOWN_S`` to leave, then is
dropped.

The standard ``OTEL_*`` variables still apply: ``OTEL_TRACES_SAMPLER`` to sample,
``OTEL_EXPORTER_OTLP_TRACES_HEADERS`` for a collector's credentials,
``OTEL_RESOURCE_ATTRIBUTES`` for more resource attributes, ``OTEL_SDK_DISABLED`` to turn
tracing off. The span limits (``OTEL_*ATTRIBUTE*_LIMIT``) do not: a span has at most 22
attributes, none of them long.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, Protocol

from opentelemetry.sdk.environment_variables import (
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
    OTEL_BSP_MAX_QUEUE_SIZE,
    OTEL_BSP_SCHEDULE_DELAY,
    OTEL_SDK_DISABLED,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from turnout.config import Config
from turnout.errors import ConfigError
from turnout.ledger.record import LedgerRow
from turnout.observe.spans import PROVIDER_NAMES, UNKNOWN_TASK, SpanBuilder, TargetInfo, target_info

__all__ = ["PROVIDER_NAMES", "UNKNOWN_TASK", "TargetInfo", "Tracing", "read_bounded", "target_info", "traces_url"]

EXPORT_S = 5.0  # one export to the collector, its retries included
ANSWER_BYTES = 65_536  # of the collector's answer to an export, what is read at most
SHUTDOWN_S = 3.0  # at shutdown, how long what is queued may take to reach the collector
DROPS_LOGGED_S = 60.0  # a full queue is logged at most this often, with what it dropped since

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


class Sender(Protocol):
    """Where the export thread sends each batch: one OTLP/HTTP request."""

    def export(self, body: bytes) -> bool:  # True: the collector took it
        ...

    def shutdown(self) -> None: ...


class ExporterSender:
    """The SDK's OTLP/HTTP span exporter, given the request already encoded: its HTTP client
    does the rest as it does for the spans it encodes itself (endpoint, the ``OTEL_EXPORTER_OTLP_*``
    headers, compression and certificates, retries within the timeout). The client is the
    exporter's own (``_client``: opentelemetry-exporter-otlp-proto-http 1.45 on), checked at
    start-up."""

    def __init__(self, exporter: Any) -> None:
        client: Any = getattr(exporter, "_client", None)
        if not callable(getattr(client, "export", None)):
            raise ConfigError(
                [
                    "observability.otlp_endpoint: tracing needs opentelemetry-exporter-otlp-proto-http>=1.45: "
                    "pip install -U 'turnout[observability]'"
                ]
            )
        self.exporter = exporter
        self.client = client

    def export(self, body: bytes) -> bool:
        return bool(self.client.export(body).success)

    def shutdown(self) -> None:
        self.exporter.shutdown()


def traces_url(endpoint: str) -> str:
    """An OTLP/HTTP base (``http://collector:4318``) gains the traces path; a full URL is kept."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


class Tracing:
    def __init__(
        self,
        sender: Sender,
        *,
        service_name: str = "turnout",
        tasks: frozenset[str] = frozenset(),
        targets: Mapping[str, TargetInfo] | None = None,
    ) -> None:
        self.tasks = tasks
        self.targets = dict(targets or {})
        self.sender = sender
        # Never given a span: what the SDK derives from the environment (the sampler, the ids).
        # Shut down by nothing: the SDK's own at exit would wait on a processor it does not have.
        sdk = TracerProvider(resource=Resource.create({"service.name": service_name}), shutdown_on_exit=False)
        self.spans = SpanBuilder(sdk.resource, sdk.sampler, sdk.id_generator, self.targets)
        self.max_queue = max(1, _env_int(OTEL_BSP_MAX_QUEUE_SIZE, 2048))
        self.batch = min(max(1, _env_int(OTEL_BSP_MAX_EXPORT_BATCH_SIZE, 512)), self.max_queue)
        self.delay_s = max(1, _env_int(OTEL_BSP_SCHEDULE_DELAY, 5000)) / 1000  # 0 would spin
        self.queue: deque[tuple[LedgerRow, frozenset[str]]] = deque()
        self.queued = 0  # spans: a row is one, and one an attempt
        self.dropped = 0  # spans dropped since the last line said so
        self.dropped_logged = -DROPS_LOGGED_S
        self.lock = threading.Lock()  # the queue and its counts, between the loop and the export
        self.exporting = threading.Lock()  # one export at a time: the worker's, or force_flush's
        self.wake = threading.Event()
        self.closing = False
        self.abandoned = False  # shutdown stopped waiting: the worker exports nothing more
        self.worker = threading.Thread(target=self.work, name="turnout-traces", daemon=True)
        self.worker.start()

    @classmethod
    def from_config(cls, config: Config) -> Tracing | None:
        endpoint = config.observability.otlp_endpoint
        if not endpoint or os.environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true":
            return None
        # Imported here: the exporter (and its HTTP client) only loads when tracing is on.
        import requests
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        session = requests.Session()
        session.hooks["response"].append(read_bounded)
        return cls(
            ExporterSender(OTLPSpanExporter(endpoint=traces_url(endpoint), timeout=EXPORT_S, session=session)),
            service_name=config.observability.service_name,
            tasks=frozenset(config.tasks),
            targets={name: target_info(t) for name, t in config.targets.items()},
        )

    def follow(self, config: Config) -> None:
        """After a config reload: spans name the tasks it has (tasks change live; targets wait
        for a restart)."""
        self.tasks = frozenset(config.tasks)

    def record(self, row: LedgerRow) -> None:
        """Queue the spans of one finished request for export, with the tasks configured now.
        Never blocks: when the queue is full, the oldest rows' spans are dropped."""
        if self.closing:
            return
        with self.lock:
            self.queue.append((row, self.tasks))
            self.queued += len(row.attempts) + 1
            while self.queued > self.max_queue and len(self.queue) > 1:
                old, _ = self.queue.popleft()
                self.queued -= len(old.attempts) + 1
                self.dropped += len(old.attempts) + 1
            full = self.queued >= self.batch
        if full and not self.wake.is_set():
            self.wake.set()
        if self.dropped and (now := time.monotonic()) - self.dropped_logged >= DROPS_LOGGED_S:
            log.warning(
                "traces: the export queue is full (%d spans), the oldest are dropped: %d spans since the last such "
                "line (one a minute at most)",
                self.max_queue,
                self.dropped,
            )
            self.dropped, self.dropped_logged = 0, now

    def work(self) -> None:
        """The export thread: a batch whenever one is full, everything queued every
        ``delay_s``, and at shutdown; then the exporter is shut down."""
        while not self.closing:
            timed_out = not self.wake.wait(self.delay_s)
            self.wake.clear()
            if not self.closing:
                self.export(everything=timed_out)
        self.export(everything=True)
        self.sender.shutdown()

    def export(self, *, everything: bool) -> None:
        """Full batches, and with ``everything`` the last one that is not, one request each."""
        with self.exporting:
            while not self.abandoned:
                with self.lock:
                    if not self.queue or (self.queued < self.batch and not everything):
                        return
                    batch: list[tuple[LedgerRow, frozenset[str]]] = []
                    spans = 0
                    while self.queue and (not batch or spans + len(self.queue[0][0].attempts) + 1 <= self.batch):
                        row, tasks = self.queue.popleft()
                        batch.append((row, tasks))
                        spans += len(row.attempts) + 1
                    self.queued -= spans
                try:
                    request = self.spans.request(batch)
                    if request is not None:
                        self.sender.export(request.SerializeToString())
                except Exception:  # a row the spans could not be built from, or the exporter failing
                    log.exception("traces: a batch of %d spans could not be exported", spans)

    def force_flush(self, timeout_s: float = 5.0) -> bool:
        """Export what is queued now, on this thread (blocking; ``timeout_s`` is not enforced,
        as it was not by the SDK). False after shutdown."""
        if self.closing:
            return False
        self.export(everything=True)
        return True

    def shutdown(self, timeout_s: float = SHUTDOWN_S) -> None:
        """Export what is queued and stop the export thread, waiting ``timeout_s`` at most: a
        collector that is down or never answers must not hold the gateway's shutdown, its
        ledger still to drain. What is left is dropped with the process (a daemon thread); the
        export under way ends at its own timeout and is the last. Blocks: from async code, run it
        in a thread."""
        self.closing = True
        self.wake.set()
        self.worker.join(timeout_s)
        if self.worker.is_alive():
            self.abandoned = True
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


def _env_int(name: str, default: int) -> int:
    """An integer ``OTEL_BSP_*`` setting; one that is not an integer is logged and the default used."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        log.warning("traces: %s=%r is not an integer; %d is used", name, raw, default)
        return default
