"""Failed console logins: at most ``FAILURES_ALLOWED`` per client within ``FAILURE_WINDOW_S``,
then 429 until the oldest of them leaves the window.

A client is its address, an IPv6 one by its /64: a host is routinely handed a whole /64, and
counted by full address it would get ten guesses per address, without end. The count lives
in this process, or, with ``--workers``, in the directory the supervisor shares with every
worker (``Failures(folder)``): one file per client, one line per failure appended with
``O_APPEND`` (an atomic write), so ten guesses are ten whichever workers the kernel hands them
to. Two workers checking at the same instant may each let one more guess through; never more.
Files of clients with no failure left in the window are removed as new failures come in.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import time
from collections import deque
from pathlib import Path

FAILURES_ALLOWED = 10
FAILURE_WINDOW_S = 300.0
MAX_CLIENTS_TRACKED = 10_000  # in memory: the oldest client is forgotten past this
SWEEP_S = 60.0  # at most this often, a worker removes the files of clients with no recent failure
_LINE = 24  # bytes a failure's line may take; past 4 windows' worth, the file is rewritten


def client_key(address: str) -> str:
    """What a client's failures are counted by: its IPv4 address, or its IPv6 /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # "unknown", a unix socket's path: counted as given
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Failures:
    def __init__(self, folder: Path | None = None) -> None:
        """``folder``: in the workers' shared directory (created at the first failure); None:
        counted in this process."""
        self._folder = folder
        self._seen: dict[str, deque[float]] = {}
        self._swept = 0.0

    def throttled(self, client: str, now: float) -> bool:
        return len(self._recent(client_key(client), now)) >= FAILURES_ALLOWED

    def failed(self, client: str, now: float) -> None:
        key = client_key(client)
        if self._folder is None:
            if key not in self._seen and len(self._seen) >= MAX_CLIENTS_TRACKED:
                self._seen.pop(next(iter(self._seen)))
            self._seen.setdefault(key, deque(maxlen=FAILURES_ALLOWED)).append(now)
            return
        path = self._folder / _file_name(key)
        with contextlib.suppress(OSError):  # the supervisor's directory is gone: this worker is stopping
            self._folder.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, f"{now:.3f}\n".encode())
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if size > 4 * FAILURES_ALLOWED * _LINE:
                self._rewrite(path, now)
        if now - self._swept >= SWEEP_S:
            self._sweep(now)

    def _recent(self, key: str, now: float) -> list[float]:
        if self._folder is None:
            seen = self._seen.get(key)
            if seen is None:
                return []
            while seen and seen[0] <= now - FAILURE_WINDOW_S:
                seen.popleft()
            return list(seen)
        try:
            text = (self._folder / _file_name(key)).read_text("ascii", "replace")
        except OSError:
            return []
        return [t for t in _times(text) if t > now - FAILURE_WINDOW_S]

    def _rewrite(self, path: Path, now: float) -> None:
        """Only the failures still in the window are kept (a failure appended by another worker
        during the rewrite may be lost: one guess, not a reset)."""
        kept = [t for t in _times(path.read_text("ascii", "replace")) if t > now - FAILURE_WINDOW_S]
        spare = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        spare.write_text("".join(f"{t:.3f}\n" for t in kept[-FAILURES_ALLOWED:]), "ascii")
        os.replace(spare, path)

    def _sweep(self, now: float) -> None:
        self._swept = now
        assert self._folder is not None
        with contextlib.suppress(OSError):
            for entry in os.scandir(self._folder):
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime < time.time() - FAILURE_WINDOW_S - SWEEP_S:
                        os.unlink(entry.path)


def _file_name(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def _times(text: str) -> list[float]:
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            out.append(float(line))
    return out
