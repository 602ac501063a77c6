"""With several workers (``PROMETHEUS_MULTIPROC_DIR``), the live state each worker holds alone,
written to the shared files so that a scrape of any worker shows every worker's sum.

A worker's ledger counts, its quota backend errors and its calls in flight live in that
process. Read at scrape time, as a single process does, they would be the answering worker's
own: counters going up and down from one scrape to the next, and an autoscaler reading a
fraction of the calls in flight. Here each worker moves shared counters by what changed since
its last ``sync`` and sets its share of ``livesum`` gauges (a dead worker's share leaves with
it: the supervisor marks it dead). Every worker syncs each ``SYNC_S`` and before it renders.
Breaker states and probe results stay the answering worker's (a sum of those means nothing).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from turnout.observe.live import HELP, LiveState

SYNC_S = 1.0


class Summed:
    def __init__(self) -> None:
        # registry=None: in multiprocess mode the values live in this process's files, which
        # the collector of whichever worker is scraped reads
        self.counters = {name: Counter(name, HELP[name], registry=None) for name in COUNTERS}
        self.gauges = {name: Gauge(name, HELP[name], registry=None, multiprocess_mode="livesum") for name in GAUGES}
        self.targets = {
            name: Gauge(name, HELP[name], ("target",), registry=None, multiprocess_mode="livesum")
            for name in TARGET_GAUGES
        }
        self._seen: dict[str, float] = {}

    def sync(self, state: LiveState) -> None:
        ledger = state.ledger
        if ledger is not None:
            self._add("turnout_ledger_written", ledger.written)
            self._add("turnout_ledger_dropped", ledger.dropped)
            self._add("turnout_ledger_failed", ledger.failed)
            self._add("turnout_ledger_spilled", ledger.spilled)
            self.gauges["turnout_ledger_queue_depth"].set(ledger.queued)
            self.gauges["turnout_ledger_journal_bytes"].set(ledger.journal_bytes)
        if state.limiter is not None:
            self._add("turnout_quota_backend_errors", state.limiter.backend_errors)
        in_flight, waiting = self.targets["turnout_target_in_flight"], self.targets["turnout_target_waiting"]
        for target in state.targets:
            if target.load.in_flight is not None:
                in_flight.labels(target.name).set(target.load.in_flight)
            if target.load.queued is not None:
                waiting.labels(target.name).set(target.load.queued)

    def _add(self, name: str, value: float) -> None:
        """Move the shared counter by what this worker's own count gained since the last sync
        (a count that went down was started again: all of it is new)."""
        last = self._seen.get(name, 0.0)
        gained = value - last if value >= last else value
        if gained > 0:
            self.counters[name].inc(gained)
        self._seen[name] = value


COUNTERS = (
    "turnout_ledger_written",
    "turnout_ledger_dropped",
    "turnout_ledger_failed",
    "turnout_ledger_spilled",
    "turnout_quota_backend_errors",
)
GAUGES = ("turnout_ledger_queue_depth", "turnout_ledger_journal_bytes")
TARGET_GAUGES = ("turnout_target_in_flight", "turnout_target_waiting")
