"""Live-state metrics: gauges and counters read from a snapshot when ``/metrics`` is scraped,
so the request path never updates them (breakers, calls in flight and waiting per target,
replica load, the ledger writer's counts, quota backend errors).

With several workers, what can be summed (``SUMMED``) comes from the shared files instead
(``turnout.observe.summed``); what cannot (breaker states, probe results, replica readings) is
the answering worker's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from turnout.control.quota.base import LimiterStats
from turnout.providers.base import Load, ReplicaLoad
from turnout.routing.breaker import State

BREAKER_VALUE = {State.CLOSED: 0.0, State.HALF_OPEN: 1.0, State.OPEN: 2.0}

HELP = {
    "turnout_target_in_flight": "Calls running at the target.",
    "turnout_target_waiting": "Calls waiting for a local worker.",
    "turnout_ledger_queue_depth": "Ledger rows not yet written.",
    "turnout_ledger_written": "Ledger rows written.",
    "turnout_ledger_dropped": "Ledger rows dropped: queue or spill journal full.",
    "turnout_ledger_failed": "Ledger rows whose write failed.",
    "turnout_ledger_spilled": "Ledger rows kept in the spill journal for the store.",
    "turnout_ledger_journal_bytes": "Spill journal bytes waiting for the store.",
    "turnout_quota_backend_errors": "Quota backend (Redis) unreachable.",
}


@dataclass(frozen=True, slots=True)
class TargetState:
    name: str
    breaker: State
    load: Load
    up: bool | None = None  # the last health probe; None: not probed yet


@dataclass(frozen=True, slots=True)
class LedgerCounts:
    queued: int
    written: int
    dropped: int
    failed: int
    spilled: int = 0  # rows appended to the spill journal
    journal_bytes: int = 0  # waiting there for the store


@dataclass(frozen=True, slots=True)
class LiveState:
    """What the scrape reads: targets, the ledger writer (None: no ledger), the limiter's
    counters (None: no limits)."""

    targets: tuple[TargetState, ...] = ()
    ledger: LedgerCounts | None = None
    limiter: LimiterStats | None = None


class _ReplicaGauges:
    """What each replica's server last reported of its own load (a target with ``load``,
    ``turnout.providers.balance``); a replica without a reading is absent."""

    def __init__(self) -> None:
        labels = ("target", "replica")
        self.waiting = GaugeMetricFamily("turnout_replica_waiting", "Requests queued at the replica.", labels=labels)
        self.running = GaugeMetricFamily("turnout_replica_running", "Requests the replica runs.", labels=labels)
        self.kv_cache = GaugeMetricFamily(
            "turnout_replica_kv_cache_usage", "The replica's KV cache in use, 0 to 1.", labels=labels
        )
        self.families = (self.waiting, self.running, self.kv_cache)

    def add(self, target: str, replica: ReplicaLoad) -> None:
        for family, value in zip(self.families, (replica.waiting, replica.running, replica.kv_cache), strict=True):
            if value is not None:
                family.add_metric((target, replica.name), value)


class Live:
    """The collector. ``summed``: the summable families come from the workers' shared files,
    so this one leaves them out."""

    def __init__(self, live: Callable[[], LiveState], *, summed: bool = False) -> None:
        self.live = live
        self.summed = summed

    def collect(self) -> Iterator[Metric]:
        state = self.live()
        breaker = GaugeMetricFamily(
            "turnout_breaker_state", "Target breaker: 0 closed, 1 half-open, 2 open.", labels=("target",)
        )
        replicas = GaugeMetricFamily(
            "turnout_replica_breaker_state",
            "Replica breaker: 0 closed, 1 half-open, 2 open.",
            labels=("target", "replica"),
        )
        in_flight = GaugeMetricFamily("turnout_target_in_flight", HELP["turnout_target_in_flight"], labels=("target",))
        waiting = GaugeMetricFamily("turnout_target_waiting", HELP["turnout_target_waiting"], labels=("target",))
        up = GaugeMetricFamily("turnout_target_up", "Last health probe: 1 up, 0 down.", labels=("target",))
        gauges = _ReplicaGauges()
        for target in state.targets:
            name, load = target.name, target.load
            breaker.add_metric((name,), BREAKER_VALUE[target.breaker])
            if load.in_flight is not None:
                in_flight.add_metric((name,), load.in_flight)
            if load.queued is not None:
                waiting.add_metric((name,), load.queued)
            if target.up is not None:
                up.add_metric((name,), 1.0 if target.up else 0.0)
            for replica in load.replicas:
                replicas.add_metric((name, replica.name), BREAKER_VALUE[replica.breaker])
                gauges.add(name, replica)
        yield from (breaker, replicas, up, *gauges.families)
        if self.summed:
            return
        yield from (in_flight, waiting)
        ledger = state.ledger
        if ledger is not None:
            yield GaugeMetricFamily("turnout_ledger_queue_depth", HELP["turnout_ledger_queue_depth"], ledger.queued)
            yield _counter("turnout_ledger_written", ledger.written)
            yield _counter("turnout_ledger_dropped", ledger.dropped)
            yield _counter("turnout_ledger_failed", ledger.failed)
            yield _counter("turnout_ledger_spilled", ledger.spilled)
            yield GaugeMetricFamily(
                "turnout_ledger_journal_bytes", HELP["turnout_ledger_journal_bytes"], ledger.journal_bytes
            )
        if state.limiter is not None:
            yield _counter("turnout_quota_backend_errors", state.limiter.backend_errors)


def _counter(name: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, HELP[name], value=value)
