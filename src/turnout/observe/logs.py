"""Where ``turnout serve``'s log lines go, and in what shape.

Every record (turnout's, uvicorn's, the access log's) is handed to a queue on the thread that
logs it (``Handoff``, a ``QueueHandler``); a listener thread (``Listener``, a
``QueueListener``) redacts it (``RedactingFilter``: secrets and PII never reach a log), formats
it and writes it to stderr. A slow terminal or a full pipe then stalls that thread, never the
event loop. The listener wakes once per batch, not per line: after a quiet spell it lingers
``LINGER_S`` for the lines that follow, handles all that queued, and writes them in one call
(a thread woken per line costs the event loop more than the line itself: bench/access_log.py).
``Listener.stop`` writes out what is queued (``turnout serve`` calls it before uvicorn ends the
process); a SIGKILL loses the lines of the last few milliseconds.

``server.log_format``: ``text`` (one line: time, level, logger, message) or ``json`` (one JSON
object a line, for log shippers: ``time``, ``level``, ``logger``, ``message``, and the record's
structured ``fields`` when it has them: the access log's and the warnings' request id, task,
target, status). A record carries its fields as ``extra={"fields": {...}}``; the message says
the same in words, so the text format loses nothing.
"""

from __future__ import annotations

import logging
import queue
import sys
import time
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener
from typing import IO, Any, Literal

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS = "turnout.access"  # the access log's logger
# What the JSON line's own keys are; a field of the same name does not replace them.
_OWN = ("time", "level", "logger", "message", "exception", "stack")
LINGER_S = 0.005  # after a quiet spell, how long the listener waits for a batch to gather
MAX_BATCH = 1000  # lines written in one call at most


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in a message or traceback are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                if key not in _OWN and value is not None:
                    out[str(key)] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return orjson.dumps(out, default=str).decode()


def formatter(kind: Literal["text", "json"]) -> logging.Formatter:
    return JsonFormatter() if kind == "json" else logging.Formatter(TEXT_FORMAT)


class Handoff(QueueHandler):
    """Hands a record to the listener's thread. Only the message's arguments are rendered here
    (they may change once the call returns); redaction, the traceback's text, formatting and
    the write happen on the listener's thread."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        original = record  # other handlers (a test's capture) may see it: hand on a copy
        record = original.__class__.__new__(original.__class__)
        record.__dict__.update(original.__dict__)
        try:
            record.msg = record.getMessage()
        except (TypeError, ValueError):  # bad arguments: keep what there is, redacted later
            record.msg = f"{record.msg!s} {record.args!r}"
        record.args = None
        return record


class BatchWriter(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that keeps its lines until ``flush``: one write for a batch."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self.direct = False  # True: each line written at once (after the listener has stopped)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record) + self.terminator)
        except Exception:  # a formatter's failure: logging's own way of saying so
            self.handleError(record)
        if self.direct or len(self._lines) >= MAX_BATCH:
            self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            lines, self._lines = self._lines, []
            try:
                if lines:
                    self.stream.write("".join(lines))
                self.stream.flush()
            except (OSError, ValueError):  # stderr closed or broken: the lines are lost, not the gateway
                pass


class Listener(QueueListener):
    """Handles every record that queued since it last woke, then writes them in one call."""

    def __init__(self, records: queue.SimpleQueue[Any], writer: BatchWriter, handoff: Handoff) -> None:
        super().__init__(records, writer)
        self.records = records
        self.writer = writer
        self.handoff = handoff

    def dequeue(self, block: bool) -> logging.LogRecord:
        try:
            record: logging.LogRecord | None = self.records.get_nowait()
        except queue.Empty:
            self.writer.flush()  # drained: out with the batch, then sleep until the next line
            record = self.records.get(block)
            if record is not None:
                time.sleep(LINGER_S)  # the lines that follow join this one's batch
        if record is None:  # stop() asks the thread to end: out with what is left first
            self.writer.flush()
        return record  # type: ignore[return-value]

    def stop(self) -> None:
        """Write out what is queued and end the thread. A line logged afterwards (the last words
        of a shutdown) is written at once, on the thread that logs it."""
        if self._thread is None:
            return
        super().stop()
        self.writer.direct = True
        self.writer.flush()
        root = logging.getLogger()
        if self.handoff in root.handlers:
            root.removeHandler(self.handoff)
            root.addHandler(self.writer)


def configure(
    level: str,
    kind: Literal["text", "json"],
    redaction: logging.Filter,
    *,
    access_log: bool = False,
    stream: IO[str] | None = None,
) -> Listener:
    """Route every record through a queue to one handler on a listener thread; the listener is
    started here, and must be stopped (it writes what is queued first). Replaces the root
    logger's handlers: the process belongs to ``turnout serve``."""
    handler = BatchWriter(sys.stderr if stream is None else stream)
    handler.setFormatter(formatter(kind))
    handler.addFilter(redaction)
    records: queue.SimpleQueue[Any] = queue.SimpleQueue()
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    handoff = Handoff(records)
    root.addHandler(handoff)
    root.setLevel(level.upper())
    # No format prints the thread's or process's name: not looking them up saves ~2 µs a record.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    # The access log speaks at INFO whatever server.log_level says; off, it says nothing.
    logging.getLogger(ACCESS).setLevel(logging.INFO if access_log else logging.CRITICAL + 1)
    listener = Listener(records, handler, handoff)
    listener.start()
    return listener
