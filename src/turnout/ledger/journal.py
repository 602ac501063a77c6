"""The ledger's spill journal: rows the store could not take yet, kept on local disk until it can.

Append-only segment files in one directory (``store.spill_dir``), one JSON row per line,
named so that their names sort in the order they were started::

    <spill_dir>/<unix ns, 20 digits>-<pid>.jsonl

The writing process holds an exclusive ``flock`` on its open segment, so a replayer (this
process or another sharing the directory) only ever claims segments nobody is appending to: a
sealed one, or one left by a process that died (the kernel drops a dead process's locks).
Appends are plain ``write`` calls: the bytes are in the kernel's page cache when the call
returns, so they survive the process being killed (SIGKILL, OOM); only a power loss can take
the last seconds, and a torn last line is skipped when read (counted in ``corrupt``).

Bounded by ``max_bytes`` across all segments: a batch that would pass it is refused whole and
the caller counts its rows as dropped. Every method is blocking file I/O: call them from one
thread off the event loop (``LedgerWriter`` does, on its own).
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from turnout.ledger.record import AttemptRecord, LedgerRow

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"
SEGMENT_BYTES = 8 << 20  # a new segment past this, so replay frees space in steps
_FIELDS = frozenset(f.name for f in dataclasses.fields(LedgerRow))
_ATTEMPT_FIELDS = frozenset(f.name for f in dataclasses.fields(AttemptRecord))


class Segment:
    """A claimed segment: locked by this process until ``release`` or ``remove``."""

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.path = path
        self.fd = fd
        self.size = size

    def read(self) -> tuple[list[LedgerRow], int]:
        """Its rows, and how many lines could not be read (a torn last write)."""
        data = b""
        with os.fdopen(os.dup(self.fd), "rb") as f:
            data = f.read()
        rows: list[LedgerRow] = []
        corrupt = 0
        for line in data.splitlines():
            if not line:
                continue
            try:
                rows.append(decode(line))
            except (ValueError, TypeError):
                corrupt += 1
        return rows, corrupt


class SpillJournal:
    def __init__(self, directory: str | Path, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.bytes = 0  # on disk across segments, as far as this process knows
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self.rows_in_open = 0  # rows appended to the open segment since it was opened

    def open(self) -> None:
        """Create the directory (owner-only) and take stock of segments already there."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.bytes = sum(p.stat().st_size for p in self._paths())

    def pending(self) -> bool:
        """Whether any segment (this process's open one included) holds rows."""
        return self.rows_in_open > 0 or any(p != self._path for p in self._paths())

    def append(self, rows: Sequence[LedgerRow]) -> bool:
        """Append ``rows``; False when the journal is full (nothing written)."""
        data = b"".join(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE) for row in rows)
        if self.bytes + len(data) > self.max_bytes:
            return False
        if self._fd is None or self._size >= SEGMENT_BYTES:
            self.seal()
            self._start()
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(data)
        self.bytes += len(data)
        self.rows_in_open += len(rows)
        return True

    def seal(self) -> None:
        """Close the open segment (its lock goes with it): it can now be replayed."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd, self._path, self._size, self.rows_in_open = None, None, 0, 0

    def claim(self) -> Segment | None:
        """The oldest sealed segment nobody else holds, locked for replay; None: none left."""
        for path in self._paths():
            if path == self._path:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:  # replayed by another process meanwhile
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another process appends to it or replays it
                os.close(fd)
                continue
            if not path.exists():  # removed between listing and locking
                os.close(fd)
                continue
            return Segment(path, fd, os.fstat(fd).st_size)
        return None

    def remove(self, segment: Segment) -> None:
        """The segment's rows are in the store: delete it (then unlock)."""
        segment.path.unlink(missing_ok=True)
        os.close(segment.fd)
        self.bytes = max(0, self.bytes - segment.size)

    @staticmethod
    def release(segment: Segment) -> None:
        """Replay failed: unlock, to be claimed again later."""
        os.close(segment.fd)

    def close(self) -> None:
        self.seal()

    def _start(self) -> None:
        path = self.directory / f"{time.time_ns():020d}-{os.getpid()}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd, self._path, self._size, self.rows_in_open = fd, path, 0, 0

    def _paths(self) -> list[Path]:
        return sorted(self.directory.glob(f"*{SUFFIX}"))


def decode(line: bytes) -> LedgerRow:
    """One journal line back into a row; fields this version does not know are left out."""
    values: dict[str, Any] = orjson.loads(line)
    if not isinstance(values, dict):
        raise ValueError("not a row")
    values = {k: v for k, v in values.items() if k in _FIELDS}
    values["attempts"] = [
        AttemptRecord(**{k: v for k, v in a.items() if k in _ATTEMPT_FIELDS}) for a in values.get("attempts") or ()
    ]
    return LedgerRow(**values)
