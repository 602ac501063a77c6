"""``turnout serve --workers N``: N worker processes answering on one listening socket.

The parent binds the socket once and starts each worker with ``multiprocessing``'s spawn (a
fresh interpreter: its own event loop, runtime, connection pools and limiter client); the
kernel hands each new connection to whichever worker accepts it first. The parent only
supervises:

* a worker that exits after it has served is started again (after a pause when it lived under
  a second). One that exits before it serves, however it ends (its start-up refused, an import
  that fails, a model whose loading kills it), has failed to start: a worker of the first start
  that does means the server cannot start at all: the parent stops every worker and exits 1. A
  replacement that does (a store it opens is down for a while) is tried again, after 2, 4, 8 …
  up to 30 s, as long as another worker still serves; with none left the parent exits 1. A
  worker says it serves over its pipe to the parent, once uvicorn has started;
* SIGTERM or SIGINT → the parent closes its copy of the listening socket and sends SIGTERM to
  every worker, each of which drains as a single process does (``server.shutdown_grace_s``):
  new connections are refused at once, as they are by one process; a second SIGINT (Ctrl-C)
  meanwhile is passed on, and each worker quits at once, as one process does; one still
  running after the grace and the settle time is killed. Workers have their own process
  group, so a terminal's Ctrl-C reaches the parent only and each worker gets what the parent
  passes on; a worker whose parent is gone stops itself;
* SIGHUP (to the parent or to any worker) or ``POST /admin/reload`` on any worker → the parent
  reads the config file once, validates it, and has every worker swap it in, or none
  (``serving/rounds.py``, over a pipe to each worker: ``serving/channel.py``); the workers it
  starts later get it too.

Console: the parent hands every worker one secret for sessions and CSRF tokens, and a directory
of logged-out sessions and failed logins (``console/access.py``, ``console/throttle.py``), so a
login holds, and a guess counts, on whichever worker answers.

Metrics: the parent points ``PROMETHEUS_MULTIPROC_DIR`` at a directory it creates and removes
(unless one is set already), so every worker's counters, calls in flight and ledger counts
are summed at ``/metrics``; breaker states and probe results are the answering worker's own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import allow_connection_pickling, connection, get_context
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from typing import Any

from turnout.errors import CannotListen
from turnout.serving.rounds import Conductor

log = logging.getLogger("turnout")

METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONSOLE_SECRET_ENV = "TURNOUT_CONSOLE_SECRET"  # noqa: S105 - a variable's name: the console's shared secret
CONSOLE_REVOKED_ENV = "TURNOUT_CONSOLE_REVOKED"  # the console's logged-out sessions and failed logins, shared
STARTUP_FAILURE = 3  # uvicorn's exit code when the lifespan start-up fails
QUICK_EXIT_S = 1.0  # a worker that lived less than this is restarted after this long
KILL_AFTER_S = 10.0  # past the grace and the settle time: a stuck worker is killed
TICK_S = 0.5
RETRY_MAX_S = 30.0  # the longest pause before another try at a replacement whose start-up failed
MAX_WORKERS_PER_CORE = 4  # --workers above this many per usable core is refused

allow_connection_pickling()  # the listening socket travels to each spawned worker
_spawn = get_context("spawn")


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_count(value: str) -> int:
    """``--workers``: a number from 1 to ``MAX_WORKERS_PER_CORE`` per usable core, or ``auto``
    for one per core. Each worker is a whole interpreter with its own model, pools and stores'
    connections: past a few per core they only compete for the CPU, and a slip of the keyboard
    (``--workers 1000``) would start a thousand processes."""
    cores = usable_cores()
    if value == "auto":
        return cores
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"--workers: {value!r} is neither a number nor 'auto'") from None
    if n < 1:
        raise ValueError(f"--workers: {n} must be at least 1")
    if n > (most := MAX_WORKERS_PER_CORE * cores):
        raise ValueError(
            f"--workers: {n} is more than {most} ({MAX_WORKERS_PER_CORE} per core, {cores} core(s) here); "
            "'auto' gives one per core"
        )
    return n


_early_hup = threading.Event()


def hold_hup() -> Any:
    """A SIGHUP that comes while the server starts is kept for later (by default it would end
    the process, without a word); the handler before (for a caller to restore)."""
    return signal.signal(signal.SIGHUP, lambda signum, frame: _early_hup.set())


def become_worker() -> None:
    """In a worker, first: out of the terminal's process group, gone with its parent, and a
    SIGHUP that comes while it starts kept for later (``hold_hup``)."""
    os.setpgrp()
    hold_hup()
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        log.warning("the supervisor (pid %d) is gone: stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="turnout-orphan-watch", daemon=True).start()


def hup_pending() -> bool:
    """Whether a SIGHUP came while this worker started (it may have read the file before)."""
    return _early_hup.is_set()


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, for one process or many: ``CannotListen`` (the address in use, not
    this machine's, a port the user may not bind) before anything else has started."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(4096)
    except OSError as exc:
        sock.close()
        raise CannotListen(host, port, exc) from exc
    sock.set_inheritable(True)
    return sock


@dataclass
class Supervisor:
    """Runs ``target(*args, [sock], pipe)`` in ``n`` spawned workers until told to stop:
    ``pipe``, each worker's end of a pipe to the parent, over which it says ``("up",)`` once it
    serves. With ``reloads``, ``args[0]`` is the config and a reload is a round of ``reloads``
    (a worker started later gets its config); without, a SIGHUP only says there is nothing to
    reload."""

    n: int
    target: Callable[..., None]
    args: tuple[Any, ...]
    stop_after_s: float  # how long a stopping worker may take before it is killed
    reloads: Conductor | None = None
    workers: dict[int, tuple[SpawnProcess, float]] = field(default_factory=dict)  # slot → (process, started)
    pipes: dict[int, Connection] = field(default_factory=dict)  # slot → the parent's end of its pipe
    up: set[int] = field(default_factory=set)  # slots whose worker said it serves, and takes rounds
    served: set[int] = field(default_factory=set)  # slots whose worker said it serves (draining or not)
    signals: list[int] = field(default_factory=list)
    replaced: set[int] = field(default_factory=set)  # slots whose worker is a replacement
    failed: dict[int, int] = field(default_factory=dict)  # slot → its replacements' failed start-ups in a row
    pending: dict[int, float] = field(default_factory=dict)  # slot → when to try its replacement again

    def run(self, host: str, port: int) -> int:
        """Serve until SIGTERM/SIGINT; the exit code."""
        sock = bind(host, port)
        owned = self._metrics_dir()
        console = _console_state()
        previous = {s: signal.signal(s, self._note) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            log.info("supervisor %d: %d workers on %s:%d", os.getpid(), self.n, host, sock.getsockname()[1])
            for slot in range(self.n):
                self._start(slot, sock)
            return self._loop(sock)
        finally:
            # This copy of the socket goes first: once the draining workers have closed theirs,
            # a new connection is refused (a load balancer moves on) instead of waiting in the
            # kernel's backlog, which no worker reads any more, until the last worker exits.
            sock.close()
            self._stop()
            for s, handler in previous.items():
                signal.signal(s, handler)
            if owned is not None:
                shutil.rmtree(owned, ignore_errors=True)
            shutil.rmtree(console, ignore_errors=True)

    def _note(self, signum: int, frame: object) -> None:
        self.signals.append(signum)

    def _metrics_dir(self) -> str | None:
        """The directory for the workers' metric files: ours (created here, removed at exit)
        unless the environment names one."""
        if os.environ.get(METRICS_ENV):
            return None
        owned = tempfile.mkdtemp(prefix="turnout-metrics-")
        os.environ[METRICS_ENV] = owned
        return owned

    def _start(self, slot: int, sock: socket.socket) -> None:
        args = self.args
        if self.reloads is not None:
            args = (self.reloads.config, *args[1:])
            self.reloads.started(slot)
        self.pipes[slot], child = _spawn.Pipe()
        self.served.discard(slot)
        process = _spawn.Process(target=self.target, args=(*args, [sock], child), name=f"turnout-worker-{slot}")
        process.start()
        child.close()  # the worker's copy is the one that counts: its exit ends the pipe
        self.workers[slot] = (process, time.monotonic())
        log.info("worker %d started (pid %s)", slot, process.pid)

    def _loop(self, sock: socket.socket) -> int:
        wake, woken = socket.socketpair()  # a signal wakes the wait below at once
        wake.setblocking(False)
        woken.setblocking(False)
        main = threading.current_thread() is threading.main_thread()  # else: polled every tick
        previous = signal.set_wakeup_fd(wake.fileno(), warn_on_full_buffer=False) if main else -1
        try:
            return self._watch(sock, woken)
        finally:
            if main:
                signal.set_wakeup_fd(previous)
            wake.close()
            woken.close()

    def _watch(self, sock: socket.socket, woken: socket.socket) -> int:
        while True:
            while self.signals:
                signum = self.signals.pop(0)
                if signum != signal.SIGHUP:
                    return 0
                if self.reloads is None:
                    log.warning("SIGHUP: this server was started without a config file: nothing to reload")
                else:
                    log.info("SIGHUP: reloading the config on every worker")
                    self.reloads.ask(None, self)
            sentinels = {p.sentinel: slot for slot, (p, _) in self.workers.items()}
            pipes = {pipe: slot for slot, pipe in self.pipes.items()}
            for ready in connection.wait([woken, *sentinels, *pipes], TICK_S):
                if ready is woken:
                    with contextlib.suppress(BlockingIOError):
                        woken.recv(4096)
                elif isinstance(ready, Connection):
                    self._hear(pipes[ready], ready)
                elif isinstance(ready, int) and not self._replace(sentinels[ready], sock):
                    return 1
            if self.reloads is not None:
                self.reloads.tick(self)
            now = time.monotonic()
            for slot, due in list(self.pending.items()):
                if now >= due:
                    del self.pending[slot]
                    self._start(slot, sock)

    def _hear(self, slot: int, pipe: Connection) -> None:
        """A message from a worker (``serving/rounds.py``)."""
        if self.pipes.get(slot) is not pipe:
            return  # the pipe of a worker already replaced
        try:
            message = pipe.recv()
        except (EOFError, OSError):  # the worker is gone: its sentinel says so too
            self._forget_pipe(slot)
            return
        if message[0] == "up":
            self.up.add(slot)
            self.served.add(slot)
            log.info("worker %d serving (pid %s)", slot, self.workers[slot][0].pid if slot in self.workers else "?")
            if self.reloads is not None:
                self.reloads.up(slot, self)
        elif self.reloads is None:  # a SIGHUP to the worker: asks for a reload
            log.warning("SIGHUP: this server was started without a config file: nothing to reload")
        elif message[0] == "reload":
            self.reloads.ask((slot, message[1]), self)
        else:
            self.reloads.heard(slot, message, self)

    def serving(self) -> dict[int, int]:
        return {
            slot: process.pid
            for slot, (process, _) in self.workers.items()
            if slot in self.up and slot in self.pipes and process.pid is not None
        }

    def send(self, slot: int, message: tuple[Any, ...]) -> bool:
        pipe = self.pipes.get(slot)
        if pipe is None:
            return False
        try:
            pipe.send(message)
        except OSError:  # it exited meanwhile
            return False
        return True

    def restart(self, slot: int) -> None:
        self.up.discard(slot)  # draining: in no round
        process, _ = self.workers[slot]
        if process.pid is not None and process.is_alive():
            os.kill(process.pid, signal.SIGTERM)

    def _forget_pipe(self, slot: int) -> None:
        self.up.discard(slot)
        pipe = self.pipes.pop(slot, None)
        if pipe is not None:
            pipe.close()
        if self.reloads is not None:
            self.reloads.gone(slot, self)

    def _replace(self, slot: int, sock: socket.socket) -> bool:
        """Start a worker again in place of the one that exited; False: the server cannot
        serve (a worker of the first start failed its start-up, or a replacement did and no
        other worker is left)."""
        process, started = self.workers.pop(slot)
        process.join()
        served = self._served(slot)
        _forget_metrics(process.pid)
        self._forget_pipe(slot)
        ended = _ended(process.exitcode)
        if not served:  # a crash before serving: restarted at once, it would only crash again
            if slot not in self.replaced:
                log.error("worker %d (pid %s) failed to start (%s): stopping every worker", slot, process.pid, ended)
                return False
            if not any(p.is_alive() for p, _ in self.workers.values()):
                log.error(
                    "worker %d (pid %s) failed to start (%s) and no worker is left: stopping", slot, process.pid, ended
                )
                return False
            self.failed[slot] = tries = self.failed.get(slot, 0) + 1
            pause = min(RETRY_MAX_S, 2.0**tries)
            log.error(
                "worker %d (pid %s) failed to start (%s; %d in a row); the other workers serve; trying again in %.0f s",
                slot,
                process.pid,
                ended,
                tries,
                pause,
            )
            self.pending[slot] = time.monotonic() + pause
            return True
        self.failed.pop(slot, None)
        log.warning("worker %d (pid %s) %s: starting another", slot, process.pid, ended)
        if time.monotonic() - started < QUICK_EXIT_S:
            time.sleep(QUICK_EXIT_S)
        self.replaced.add(slot)
        self._start(slot, sock)
        return True

    def _served(self, slot: int) -> bool:
        """Whether the exited worker of ``slot`` said it serves: its pipe's last messages too (its
        exit and its "up" may be seen in either order); nothing else they say counts now."""
        pipe = self.pipes.get(slot)
        with contextlib.suppress(OSError, EOFError):
            while slot not in self.served and pipe is not None and pipe.poll():
                if pipe.recv()[0] == "up":
                    self.served.add(slot)
        return slot in self.served

    def _signal_all(self, signum: int) -> None:
        for process, _ in self.workers.values():
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    def _stop(self) -> None:
        """SIGTERM to every worker; wait for them to drain; kill what is left. A SIGINT while
        they drain (a second Ctrl-C) reaches each of them: they quit at once, as one process
        does, cutting what still runs and writing its rows."""
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_after_s + KILL_AFTER_S
        forced = False
        for slot, (process, _) in list(self.workers.items()):
            while process.is_alive() and (left := deadline - time.monotonic()) > 0:
                process.join(min(TICK_S, left))
                if not forced and signal.SIGINT in self.signals:
                    forced = True
                    log.warning("SIGINT again: every worker quits now, cutting what still runs")
                    self._signal_all(signal.SIGINT)
            if process.is_alive():
                log.warning("worker %d (pid %s) did not stop in time: killed", slot, process.pid)
                process.kill()
                process.join()
            _forget_metrics(process.pid)
        for pipe in self.pipes.values():
            pipe.close()
        self.pipes.clear()
        self.workers.clear()
        self.pending.clear()


def _console_state() -> str:
    """What every worker's console shares, so a session works whichever worker answers: the
    secret that signs sessions and CSRF tokens, and the directory of logged-out sessions (and,
    under it, the failed logins of each client)."""
    os.environ[CONSOLE_SECRET_ENV] = secrets.token_hex(32)
    where = tempfile.mkdtemp(prefix="turnout-console-")
    os.environ[CONSOLE_REVOKED_ENV] = where
    return where


def _ended(exitcode: int | None) -> str:
    """How a worker ended, as the log says it."""
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit status {exitcode}"


def _forget_metrics(pid: int | None) -> None:
    """A dead worker's live-gauge files go; its counters stay in the sums (as they should)."""
    where = os.environ.get(METRICS_ENV)
    if where and pid is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, where)  # type: ignore[no-untyped-call]
