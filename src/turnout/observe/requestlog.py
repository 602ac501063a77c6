"""Log lines from the finished request's ledger row: metadata only, never text.

* the access log (``server.access_log``, off by default): one INFO line per API request on
  the ``turnout.access`` logger: request id, task, tenant, target, status, latency;
* a WARN line when a request fell back from one target to another (task, from, to, and the
  error class that made it leave), and one when the answer is a 5xx (request id, task, target,
  status, error class), on ``turnout.requests``. During an outage every request would say so:
  each (task, from, to) of fallbacks and each (task, target, status) of 5xx answers is
  throttled to ``WARN_BURST`` lines and then one per ``1 / WARN_PER_S`` seconds, and the next
  line out says how many it stands for.

Strings a client chose (an unknown task's name) are cut to ``MAX_CHARS`` and, in the text of
the message, quoted when they hold anything but printable characters, so a line never splits.
The log handler redacts what is left (``turnout.observe.logs``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from turnout._support.throttle import Throttles
from turnout.ledger.record import AttemptRecord, LedgerRow
from turnout.observe.logs import ACCESS

access = logging.getLogger(ACCESS)
log = logging.getLogger("turnout.requests")

MAX_CHARS = 100
WARN_BURST = 10  # lines at once for one kind of fallback (or 5xx) ...
WARN_PER_S = 0.2  # ... then one per 5 s while it goes on


class RequestLog:
    __slots__ = ("_errors", "_fallbacks", "access_log")

    def __init__(self, access_log: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self.access_log = access_log
        self._fallbacks = Throttles(WARN_PER_S, WARN_BURST, clock=clock)
        self._errors = Throttles(WARN_PER_S, WARN_BURST, clock=clock)

    def observe(self, row: LedgerRow) -> None:
        """Called once per request, on the event loop, as it is accounted."""
        if self.access_log:
            _access(row)
        attempts = row.attempts
        if attempts and attempts[0].target != attempts[-1].target:
            self._fallback(row, attempts)
        if row.status >= 500:
            self._server_error(row)

    def _fallback(self, row: LedgerRow, attempts: list[AttemptRecord]) -> None:
        first, to = attempts[0].target, attempts[-1].target
        throttle = self._fallbacks[row.task, first, to]
        if not throttle.allow():
            return
        cause = next((b.error_class for a, b in zip(attempts[1:], attempts, strict=False) if a.target != first), None)
        route = _route(attempts)
        how = "answered" if row.target == to else "failed too"
        log.warning(
            "fallback: request %s (task %s) went from %s to %s after %s; %s%s",
            row.request_id,
            _text(row.task),
            first,
            " → ".join(route[1:]),
            cause,
            how,
            throttle.note(),
            extra={
                "fields": {
                    "request_id": row.request_id,
                    "task": _cut(row.task),
                    "from_target": first,
                    "to_target": to,
                    "error_class": cause,
                    "status": row.status,
                }
            },
        )

    def _server_error(self, row: LedgerRow) -> None:
        target = row.target or (row.attempts[-1].target if row.attempts else None)
        throttle = self._errors[row.task, target, row.status]
        if not throttle.allow():
            return
        log.warning(
            "request %s answered %d (%s): task %s, target %s%s",
            row.request_id,
            row.status,
            row.error_class,
            _text(row.task),
            target or "none",
            throttle.note(),
            extra={
                "fields": {
                    "request_id": row.request_id,
                    "task": _cut(row.task),
                    "target": target,
                    "replica": row.replica,
                    "status": row.status,
                    "error_class": row.error_class,
                }
            },
        )


def _access(row: LedgerRow) -> None:
    if not access.isEnabledFor(logging.INFO):
        return
    latency = round(row.latency_ms, 1)
    args = (row.request_id, _text(row.task), row.tenant or "-", row.target or "-", row.status, latency)
    fields = {
        "request_id": row.request_id,
        "task": _cut(row.task),
        "tenant": row.tenant or None,
        "target": row.target,
        "status": row.status,
        "latency_ms": latency,
        "error_class": row.error_class,
    }
    # Made and handled directly: what ``access.info`` would do, less the search of the stack for
    # the caller (no format prints it), on a line the event loop pays for on every request.
    access.handle(access.makeRecord(ACCESS, logging.INFO, "", 0, _ACCESS_LINE, args, None, extra={"fields": fields}))


_ACCESS_LINE = "request_id=%s task=%s tenant=%s target=%s status=%d latency_ms=%.1f"


def _route(attempts: list[AttemptRecord]) -> list[str]:
    """The targets tried, in order, each once."""
    out: list[str] = []
    for a in attempts:
        if not out or out[-1] != a.target:
            out.append(a.target)
    return out


def _cut(value: str) -> str:
    return value if len(value) <= MAX_CHARS else value[:MAX_CHARS] + "…"


def _text(value: str) -> str:
    """For the message: cut, and quoted unless plain (no spaces, no control characters)."""
    value = _cut(value)
    if value and value.isprintable() and " " not in value and "=" not in value:
        return value
    return repr(value)
