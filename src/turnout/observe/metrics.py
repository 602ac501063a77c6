"""Prometheus metrics for ``/metrics``: one ``observe(row)`` per request, live state read at scrape.

Per request (``Metrics.observe``, called once the ledger row is complete)::

    turnout_requests_total{tenant,task,target,status,stream}
    turnout_request_duration_seconds{task,target}        histogram, the whole request
    turnout_queue_wait_seconds{task,target}              histogram, waiting for a local worker
    turnout_time_to_first_token_seconds{task,target}     histogram, streams only
    turnout_generation_duration_seconds{task,target}     histogram
    turnout_fallback_duration_seconds{task,target}       histogram, failed attempts before the answer
    turnout_tokens_total{tenant,task,target,kind}        kind: prompt | completion (not a cache hit's)
    turnout_cost_usd_total{tenant,task,target}
    turnout_attempts_total{task,target,outcome}          outcome: ok | the attempt's error class
                                                         (a cache hit makes none)
    turnout_fallbacks_total{task}
    turnout_errors_total{task,error_class}
    turnout_safety_detections_total{task,channel,reason,action}   injection screening: per channel
                                                   over its threshold, one per reason; action:
                                                   blocked | flagged
    turnout_tool_violations_total{task,tool,reason}   blocked tool calls and refused declarations;
                                                   tool: an allowlisted name, else other
    turnout_data_class_raised_total{task,declared,effective}   classification raised the class
    turnout_output_checks_failed_total{task,reason}   answers rejected by the task's output checks;
                                                   reason: schema | json | max_chars | secrets | pii
    turnout_repairs_total{task}                    re-asks after a rejected answer
    turnout_escalations_total{task,to}             to: a configured target, or human
    turnout_cache_lookups_total{task,result}       result: hit | miss (a bypass is neither)
    turnout_cache_saved_usd_total{task}            what the hits' answers cost when generated
    turnout_safety_judge_total{task,verdict}       the screening judge on borderline texts; verdict:
                                                   injection | clean | unclear | error | not_allowed
    turnout_live_scores_total{task,release,result}   live scoring (tasks.T.scoring); result: pass | fail
    turnout_shadow_total{task,release,result}      requests drawn for a shadow release; result: agree |
                                                   disagree | unjudged (compare: judge gave no verdict) |
                                                   error | capped (its daily spend reached) | busy |
                                                   not_allowed
    turnout_shadow_cost_usd_total{task,release}    what the shadow calls cost
    turnout_constraint_skips_total{task,target,constraint}   targets left out by a caller's limit;
                                                   constraint: max_latency_ms | max_cost_usd

At scrape time, from a ``LiveState`` snapshot the owner's callable returns (``observe/live.py``)::

    turnout_breaker_state{target}                  0 closed, 1 half-open, 2 open
    turnout_replica_breaker_state{target,replica}  the same, per replica of an OpenAI-compatible target
    turnout_target_in_flight{target}               calls running at the target (where known)
    turnout_target_waiting{target}                 calls queued for a local worker
    turnout_target_up{target}                      the last health probe: 1 up, 0 down (probed at
                                                   most every few seconds, in the background)
    turnout_ledger_queue_depth, turnout_ledger_{written,dropped,failed,spilled}_total
    turnout_ledger_journal_bytes                   spill journal bytes waiting for the store
    turnout_quota_backend_errors_total

Labels are bounded: task, target and tenant only take names from the configuration (anything
else, such as a caller's unknown model name, becomes ``other``); error classes are turnout's
own short identifiers, capped in number. No label ever carries a user, a request id, an
upstream model name or any request text.

Several workers: when ``PROMETHEUS_MULTIPROC_DIR`` is set (before ``prometheus_client`` is first
imported, as that library requires), request metrics are written to per-process files there and
``render`` merges every worker's files. Of the live state, what sums (calls in flight and
waiting, the ledger's counts and queue, quota backend errors) is written there too by each
worker every ``SYNC_S`` (``observe/summed.py``), so every scrape shows the whole; breaker
states, probe results and replica readings are the answering worker's. Clear the directory
when the server starts, as the library's documentation says.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector

from turnout.config import DATA_CLASSES, HUMAN, Config
from turnout.ledger.record import LedgerRow
from turnout.observe.live import LedgerCounts, Live, LiveState, TargetState
from turnout.observe.summed import SYNC_S, Summed

__all__ = ["SYNC_S", "LedgerCounts", "LiveState", "Metrics", "TargetState"]
from turnout.observe.tally import Direct, Tally
from turnout.routing.constraints import COST, LATENCY, skipped_in
from turnout.safety.output import REASONS as OUTPUT_REASONS
from turnout.safety.policy import parse_record
from turnout.safety.screen import CHANNELS, REASONS
from turnout.safety.tools import REASONS as TOOL_REASONS
from turnout.safety.tools import named
from turnout.safety.tools import parse_record as tool_record

OTHER = "other"  # a value outside the bounded vocabulary
BATCH = 256  # rows counted together at most (``Metrics.observe``)
NONE = "none"  # no value (a request that reached no target, a caller not identified)

# Seconds. LLM calls span four orders of magnitude: a queue wait is usually milliseconds, a
# first token tens of milliseconds to seconds, a whole generation up to minutes.
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0)
FALLBACK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_CLASS = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


class Vocabulary:
    """Maps a raw value to a bounded label value. Known values map to themselves; an open
    vocabulary also admits new values of a safe shape until ``limit`` distinct ones exist."""

    __slots__ = ("_known", "_limit", "_open")

    def __init__(self, known: Iterable[str], *, open_limit: int = 0) -> None:
        self._known = {k: k for k in known}
        self._open = open_limit > 0
        self._limit = len(self._known) + open_limit

    def __call__(self, value: str | None) -> str:
        if not value:
            return NONE
        label = self._known.get(value)
        if label is not None:
            return label
        if self._open and len(self._known) < self._limit and _CLASS.fullmatch(value):
            self._known[value] = value
            return value
        return OTHER


@dataclass(slots=True)
class _Series:
    """The labelled children one kind of request touches, looked up once and cached."""

    requests: Any
    total: Any
    generation: Any
    prompt_tokens: Any
    completion_tokens: Any
    cost: Any
    queue: Any = None
    ttft: Any = None
    fallback: Any = None


class Metrics:
    def __init__(
        self, config: Config, live: Callable[[], LiveState] = LiveState, *, multiprocess_dir: str | None = None
    ) -> None:
        """``live`` returns the state the scrape reads (called once per scrape).
        ``multiprocess_dir`` defaults to ``PROMETHEUS_MULTIPROC_DIR``; unset, this process's
        own registry is rendered."""
        cfg = config
        self.multiprocess_dir = multiprocess_dir or os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self.tasks = Vocabulary(cfg.tasks)
        self.targets = Vocabulary(cfg.targets)
        self.tenants = Vocabulary([*cfg.tenants, "anonymous"])
        self.classes = Vocabulary((), open_limit=64)
        self.registry = CollectorRegistry()
        if self.multiprocess_dir:
            if not getattr(values.ValueClass, "_multiprocess", False):
                raise RuntimeError("PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client is first imported")
            # Request metrics live in the per-process files; the registry reads all of them.
            MultiProcessCollector(self.registry, self.multiprocess_dir)  # type: ignore[no-untyped-call]
            own: CollectorRegistry | None = None
        else:
            own = self.registry
            ProcessCollector(registry=own)
            PlatformCollector(registry=own)
            if GC_COLLECTOR is not None:
                GCCollector(registry=own)
        self._live = Live(live, summed=own is None)
        self.registry.register(self._live)
        # With workers, what each holds alone is summed through the shared files (``sync``).
        self.summed = Summed() if own is None else None

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, ("task", "target"), registry=own, buckets=buckets)

        self.requests = Counter(
            "turnout_requests", "Requests answered.", ("tenant", "task", "target", "status", "stream"), registry=own
        )
        self.total = hist("turnout_request_duration_seconds", "Whole request, seconds.", DURATION_BUCKETS)
        self.queue = hist("turnout_queue_wait_seconds", "Wait for a local worker, seconds.", QUEUE_BUCKETS)
        self.ttft = hist("turnout_time_to_first_token_seconds", "Time to first token (streams).", TTFT_BUCKETS)
        self.generation = hist("turnout_generation_duration_seconds", "Generation, seconds.", DURATION_BUCKETS)
        self.fallback = hist(
            "turnout_fallback_duration_seconds", "Failed attempts before the answer.", FALLBACK_BUCKETS
        )
        self.tokens = Counter("turnout_tokens", "Tokens used.", ("tenant", "task", "target", "kind"), registry=own)
        self.cost = Counter("turnout_cost_usd", "Cost in USD.", ("tenant", "task", "target"), registry=own)
        self.attempts = Counter("turnout_attempts", "Attempts at targets.", ("task", "target", "outcome"), registry=own)
        self.fallbacks = Counter("turnout_fallbacks", "Requests answered by a fallback.", ("task",), registry=own)
        self.errors = Counter("turnout_errors", "Requests that failed.", ("task", "error_class"), registry=own)
        self.safety = Counter(
            "turnout_safety_detections",
            "Injection screening: channels over their threshold, by reason.",
            ("task", "channel", "reason", "action"),
            registry=own,
        )
        self.channels = Vocabulary(CHANNELS)
        self.reasons = Vocabulary(REASONS)
        self.actions = Vocabulary(("blocked", "flagged"))
        self.tool_violations = Counter(
            "turnout_tool_violations",
            "Tool calls blocked (and tools refused), by tool and reason.",
            ("task", "tool", "reason"),
            registry=own,
        )
        self.tools = Vocabulary(named(cfg))
        self.tool_reasons = Vocabulary(TOOL_REASONS)
        self.raised = Counter(
            "turnout_data_class_raised",
            "Requests whose data class classification raised.",
            ("task", "declared", "effective"),
            registry=own,
        )
        self.data_classes = Vocabulary(DATA_CLASSES)
        self.output_failed = Counter(
            "turnout_output_checks_failed",
            "Answers rejected by the task's output checks, by reason.",
            ("task", "reason"),
            registry=own,
        )
        self.output_reasons = Vocabulary(OUTPUT_REASONS)
        self.repairs = Counter("turnout_repairs", "Re-asks after an answer failed its checks.", ("task",), registry=own)
        self.escalations = Counter(
            "turnout_escalations", "Answers escalated: to a target, or human.", ("task", "to"), registry=own
        )
        self.escalated_to = Vocabulary([*cfg.targets, HUMAN])
        self.cache = Counter(
            "turnout_cache_lookups", "Cached tasks' requests: hit or miss.", ("task", "result"), registry=own
        )
        self.judge = Counter(
            "turnout_safety_judge",
            "The screening judge's verdicts on borderline texts.",
            ("task", "verdict"),
            registry=own,
        )
        self.live_scores = Counter(
            "turnout_live_scores",
            "Live answers scored by their task's scorers (tasks.T.scoring): pass or fail.",
            ("task", "release", "result"),
            registry=own,
        )
        self.shadow = Counter(
            "turnout_shadow",
            "Requests drawn for a shadow release, by what came of the mirrored call.",
            ("task", "release", "result"),
            registry=own,
        )
        self.shadow_cost = Counter(
            "turnout_shadow_cost_usd", "What shadow calls cost.", ("task", "release"), registry=own
        )
        self.cache_saved = Counter(
            "turnout_cache_saved_usd",
            "What cache hits' answers cost when they were generated.",
            ("task",),
            registry=own,
        )
        self.skips = Counter(
            "turnout_constraint_skips",
            "Targets skipped before any attempt: a caller's max_latency_ms or max_cost_usd would not fit.",
            ("task", "target", "constraint"),
            registry=own,
        )
        self.constraints = Vocabulary((LATENCY, COST))
        self._series: dict[tuple[str, str, str, int, bool], _Series] = {}
        # Labelled children of the per-request counters, made on first use (label values are
        # bounded by the vocabularies above).
        self._attempts = _Children(self.attempts)
        self._fallbacks = _Children(self.fallbacks)
        self._errors = _Children(self.errors)
        self._lookups = _Children(self.cache)
        self._saved = _Children(self.cache_saved)
        # Rows waiting to be counted (``observe``); None: counted at once (multiprocess).
        self._pending: list[LedgerRow] | None = None if self.multiprocess_dir else []

    def observe(self, row: LedgerRow) -> None:
        """Count one finished request. In one process the row waits in a short list and is
        counted with the others at the next scrape (``render``) or every ``BATCH`` rows
        (``turnout.observe.tally``): each counter's lock is then taken once per batch, not once
        per request. With ``PROMETHEUS_MULTIPROC_DIR`` another process may render, so rows are
        counted at once."""
        pending = self._pending
        if pending is None:
            self._count(row, Direct)
            return
        pending.append(row)
        if len(pending) >= BATCH:
            self.flush()

    def flush(self) -> None:
        """Count the waiting rows: each counter moved once by their sum, each histogram once
        by their observations."""
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        tally = Tally()
        for row in rows:
            self._count(row, tally)
        tally.apply()

    def _count(self, row: LedgerRow, tally: Tally | type[Direct]) -> None:
        """One row into the metrics, the hot counters and histograms through ``tally``. Label
        values are mapped through dicts and the labelled children cached per label set."""
        inc, observe = tally.inc, tally.observe
        task = self.tasks(row.task)
        target = self.targets(row.target)
        key = (self.tenants(row.tenant), task, target, row.status, row.stream)
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = self._make(key)
        inc(s.requests)
        observe(s.total, row.latency_ms / 1000)
        # Phase histograms a label set never uses (TTFT without streams, queue wait without a
        # local worker) are created on first use, not up front: each costs ~17 series.
        if row.queue_ms is not None:
            if s.queue is None:
                s.queue = self.queue.labels(task, target)
            observe(s.queue, row.queue_ms / 1000)
        if row.ttft_ms is not None:
            if s.ttft is None:
                s.ttft = self.ttft.labels(task, target)
            observe(s.ttft, row.ttft_ms / 1000)
        if row.generation_ms is not None:
            observe(s.generation, row.generation_ms / 1000)
        # A cache hit's row keeps its answer's usage (the client is told it), but no target
        # generated it and no attempt reached one: tokens and attempts are the targets' load.
        hit = row.cache_hit
        if row.prompt_tokens and not hit:
            inc(s.prompt_tokens, row.prompt_tokens)
        if row.completion_tokens and not hit:
            inc(s.completion_tokens, row.completion_tokens)
        if row.cost_usd:
            inc(s.cost, row.cost_usd)
        if row.fallback:
            if row.fallback_ms is not None:
                if s.fallback is None:
                    s.fallback = self.fallback.labels(task, target)
                observe(s.fallback, row.fallback_ms / 1000)
            inc(self._fallbacks[(task,)])
        for attempt in () if hit else row.attempts:
            inc(self._attempts[(task, self.targets(attempt.target), self.classes(attempt.error_class or "ok"))])
        if row.status != 200:
            inc(self._errors[(task, self.classes(row.error_class))])
        if row.safety is not None:
            self._screened(task, row.safety)
        if row.tool_violations is not None:
            for name, reason in tool_record(row.tool_violations):
                self.tool_violations.labels(task, self.tools(name), self.tool_reasons(reason)).inc()
        if row.declared_class is not None and row.declared_class != row.data_class:
            self.raised.labels(task, self.data_classes(row.declared_class), self.data_classes(row.data_class)).inc()
        if row.output_check is not None or row.escalated_to is not None:
            self._output(task, row)
        if row.cache_hit is not None:
            inc(self._lookups[(task, "hit" if row.cache_hit else "miss")])
            if row.cost_saved_usd:
                inc(self._saved[(task,)], row.cost_saved_usd)
        if row.live_pass is not None:  # release names are the operator's, few per task
            self.live_scores.labels(task, row.release or "none", "pass" if row.live_pass else "fail").inc()
        if row.constraints is not None:
            for name, limit in skipped_in(row.constraints):
                self.skips.labels(task, self.targets(name), self.constraints(limit)).inc()

    def shadowed(self, task: str, release: str, result: str, cost_usd: float | None = None) -> None:
        """One request drawn for a shadow release (``turnout.serving.shadow``)."""
        task = self.tasks(task)
        self.shadow.labels(task, release, result).inc()
        if cost_usd:
            self.shadow_cost.labels(task, release).inc(cost_usd)

    def judged(self, task: str, verdict: str) -> None:
        """One judge verdict: injection | clean | unclear | error | not_allowed."""
        self.judge.labels(self.tasks(task), verdict).inc()

    def _output(self, task: str, row: LedgerRow) -> None:
        for reason in (row.output_check or "").split():
            self.output_failed.labels(task, self.output_reasons(reason)).inc()
        if row.repairs:
            self.repairs.labels(task).inc(row.repairs)
        if row.escalated_to is not None:
            self.escalations.labels(task, self.escalated_to(row.escalated_to)).inc()

    def _screened(self, task: str, record: str) -> None:
        action, channels = parse_record(record)
        for channel, reasons in channels:
            for reason in reasons or ["none"]:
                labels = (task, self.channels(channel), self.reasons(reason), self.actions(action))
                self.safety.labels(*labels).inc()

    def _make(self, key: tuple[str, str, str, int, bool]) -> _Series:
        tenant, task, target, status, stream = key
        return _Series(
            requests=self.requests.labels(tenant, task, target, str(status), "true" if stream else "false"),
            total=self.total.labels(task, target),
            generation=self.generation.labels(task, target),
            prompt_tokens=self.tokens.labels(tenant, task, target, "prompt"),
            completion_tokens=self.tokens.labels(tenant, task, target, "completion"),
            cost=self.cost.labels(tenant, task, target),
        )

    def follow(self, config: Config, live: Callable[[], LiveState]) -> None:
        """After a config reload: label the new tasks and tenants, read the new runtime's state;
        the counters carry on."""
        self.flush()  # the waiting rows under the labels they were served with
        self.tasks = Vocabulary(config.tasks)
        self.tenants = Vocabulary([*config.tenants, "anonymous"])
        self._live.live = live

    def sync(self) -> None:
        """With workers: this one's live counts into the shared files (``observe/summed.py``),
        every ``SYNC_S`` and before a scrape; a no-op in one process."""
        if self.summed is not None:
            self.summed.sync(self._live.live())

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type, for ``GET /metrics``."""
        self.flush()
        self.sync()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Children(dict[tuple[str, ...], Any]):
    """A labelled metric's children by label values, each made on its first lookup (a dict
    hit after that: no ``labels`` call per request)."""

    def __init__(self, metric: Counter) -> None:
        super().__init__()
        self.metric = metric

    def __missing__(self, key: tuple[str, ...]) -> Any:
        child = self[key] = self.metric.labels(*key)
        return child
