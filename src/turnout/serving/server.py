"""Serving the app with uvicorn (chosen by measurement over granian: see bench/README.md).

Shutdown order on SIGTERM/SIGINT: stop accepting → let in-flight requests finish (up to
``server.shutdown_grace_s``) → lifespan shutdown: flush the ledger, close providers.

At start the soft open-file limit is raised to the hard limit (a default of 1,024 runs out
under a few hundred slow clients), and uvicorn's httptools protocol gets header, body and
idle timeouts and a connection cap (``serving/connections.py``).

SIGHUP reloads the config file (``serving/reload.py``). ``workers`` > 1: the parent binds the
socket and supervises that many worker processes (``serving/supervisor.py``), each running
``run`` on the socket it was handed; a reload is then the parent's, on every worker or none
(``serving/rounds.py``). One process binds its socket the same way, first of all:
an address it cannot have fails start-up before anything starts (``CannotListen``).

Logs (``turnout.observe.logs``): every record goes through a queue to a listener thread that
redacts, formats (``server.log_format``: text or JSON lines) and writes it to stderr; uvicorn's
own records too.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection

import uvicorn

from turnout.config import Config
from turnout.observe import logs
from turnout.privacy.redact import RedactingFilter, Redactor
from turnout.serving import reload, rounds, supervisor
from turnout.serving.app import FINISH_S, App
from turnout.serving.channel import Channel
from turnout.serving.connections import Limits, protocol_class
from turnout.serving.runtime import redaction_key
from turnout.serving.summary import address

try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]


log = logging.getLogger("turnout")

# Descriptors kept for everything but client connections: the listener, ledger and release
# databases, logs, Redis. Half of the rest go to clients, since each request being answered
# may hold one upstream connection too.
RESERVED_FDS = 64
SWITCH_INTERVAL_S = 0.0005  # how long a thread waits for the GIL at most (``share_the_gil``)
UNLIMITED_FDS_CAP = 65_536  # the default cap when the open-file limit is unlimited


def run(
    config: Config,
    source: str | None = None,
    loader: reload.Loader | None = None,
    sockets: list[socket.socket] | None = None,
    fleet: Channel | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM. ``source``: the config file's path, for the start-up summary;
    ``loader``: reads it again on SIGHUP and ``POST /admin/reload`` (a worker's ``fleet``: asks
    its supervisor to, instead); ``sockets``: already bound
    (a worker's), else ``server.host:port`` is bound here first of all: an address in use is
    ``CannotListen`` before a line is logged or the runtime starts (uvicorn binds only after
    the lifespan start-up, whose summary says "listening", and then exits 3). A start-up that
    fails (a store that does not answer) exits 1, its reason logged."""
    srv = config.server
    listening = sockets if sockets is not None else [supervisor.bind(srv.host, srv.port)]
    redaction = RedactingFilter(Redactor(redaction_key(config)), fields=srv.log_format == "json")
    listener = logs.configure(srv.log_level, srv.log_format, redaction, access_log=srv.access_log)
    held = supervisor.hold_hup()  # a SIGHUP while starting: a reload once started, not the end
    try:
        share_the_gil()
        fd_limit = raise_open_file_limit()
        uv = uvicorn_config(config, fd_limit, source, loader, fleet)
        server = _Server(uv, listener.stop, announce=sockets is None)  # its loggers propagate to ours
        redact_logs(config)
        server.run(listening)
    except SystemExit as exc:
        # uvicorn exits 3 when the lifespan start-up fails (its reason logged). A worker keeps
        # that code for its supervisor; one process is the CLI's "the command failed", 1.
        if sockets is None and exc.code == supervisor.STARTUP_FAILURE:
            raise SystemExit(1) from None
        raise
    finally:
        signal.signal(signal.SIGHUP, held)
        listener.stop()  # writes what is queued
        if sockets is None:
            listening[0].close()  # a no-op once uvicorn has closed it


def run_workers(config: Config, workers: int, source: str | None = None, loader: reload.Loader | None = None) -> int:
    """Serve with ``workers`` processes on one socket until SIGINT/SIGTERM; the exit code."""
    srv = config.server
    redaction = RedactingFilter(Redactor(redaction_key(config)), fields=srv.log_format == "json")
    listener = logs.configure(srv.log_level, srv.log_format, redaction, access_log=False)
    try:
        redact_logs(config)
        grace = math.ceil(srv.shutdown_grace_s) + FINISH_S
        reloads = None if loader is None else rounds.Conductor(config, loader, source)
        parent = supervisor.Supervisor(workers, run_worker, (config, source, loader), grace, reloads)
        return parent.run(srv.host, srv.port)
    finally:
        listener.stop()


def run_worker(
    config: Config,
    source: str | None,
    loader: reload.Loader | None,
    sockets: list[socket.socket],
    pipe: Connection,
) -> None:
    """A worker process's body (spawned by ``supervisor.Supervisor``): ``pipe``, to the
    supervisor, which hears from it when it serves, and through which every reload goes
    (``serving/rounds.py``)."""
    supervisor.become_worker()
    run(config, source, loader, sockets, Channel(pipe))


class _Server(uvicorn.Server):
    """uvicorn's server, writing out the queued log lines before it exits: having shut down
    after a signal, uvicorn raises that signal again, and the process ends there. SIGHUP
    reloads the app's config. ``announce``: the socket is ``run``'s own, and uvicorn, handed
    a socket, leaves its "running on" line to whoever bound it: said here once serving."""

    def __init__(self, config: uvicorn.Config, before_exit: Callable[[], None], *, announce: bool = False) -> None:
        super().__init__(config)
        self._before_exit = before_exit
        self._announce = announce
        self._reloads: set[asyncio.Task[None]] = set()  # held until done

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self._announce and sockets:
            where = address(self.config.host, sockets[0].getsockname()[1])
            logging.getLogger("uvicorn.error").info("Uvicorn running on %s (Press CTRL+C to quit)", where)
        freeze_heap()
        app = self.config.app
        if isinstance(app, App) and app.fleet is not None:  # a worker: every reload is the fleet's
            app.fleet.start(app)
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, app.fleet.forward)
            if supervisor.hup_pending():
                app.fleet.forward()
        elif isinstance(app, App) and app.loader is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._reload, app)
            if supervisor.hup_pending():
                self._reload(app)
        else:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, _no_reload)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's, and a forced quit (a second Ctrl-C while draining) still closes the
        runtime: uvicorn would stop waiting for requests in flight and skip the lifespan
        shutdown, so their rows and every row still queued for the ledger were lost, and
        the limiter's slots held until its heartbeat ran out. Forced, the requests still
        running are cancelled now, as at the end of the grace: each ends as 503
        ``shutting_down``, settling its quota and writing its row, then the runtime closes."""
        await super().shutdown(sockets)
        if not self.force_exit:
            return
        for task in self.server_state.tasks:
            task.cancel(msg="forced quit")
        await self.lifespan.shutdown()

    def _reload(self, app: App) -> None:
        task = asyncio.create_task(_reload(app))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._before_exit()


def share_the_gil(interval_s: float = SWITCH_INTERVAL_S) -> float:
    """The event loop's thread lets the stores' threads (the SQLite ledger, its spill journal)
    have the GIL within ``interval_s`` of their asking, instead of Python's 5 ms: a store write
    asks for it again after each statement, so under a loop that is never idle a batch took
    5 ms a statement and the writer fell behind (rows to the journal, whose thread starved the
    same way, then dropped from a full queue: 20,721 of 32,000 in one run of cache hits, none
    with 0.5 ms). No cost while only one thread runs Python. The interval before."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(interval_s)
    return before


def freeze_heap() -> int:
    """Started: what start-up built (modules, config, the runtime) lives as long as the process,
    so the cyclic garbage collector stops walking it (``gc.freeze``). Its full collections then
    walk only what requests made since: measured under load here, one took 63 ms before (a
    pause every request in flight waits out) and under 1 ms after. The number of objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _no_reload() -> None:
    log.warning("SIGHUP: this server was started without a config file: nothing to reload")


async def _reload(app: App) -> None:
    """A SIGHUP's reload: a refusal is logged by the app; anything else is logged here."""
    try:
        await app.reload()
    except reload.ReloadRefused:
        pass
    except Exception:
        log.exception("config reload failed; the running config is kept")


def raise_open_file_limit() -> int | None:
    """Raise the soft RLIMIT_NOFILE to the hard one, saying so; the soft limit in force (None:
    unlimited or unknown)."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:  # e.g. macOS, where the kernel caps it lower anyway
        target = max(soft, UNLIMITED_FDS_CAP) if soft != resource.RLIM_INFINITY else soft
    if target != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("open-file limit stays at %d: raising it to %d failed (%s)", soft, target, exc)
            return soft
        log.info("open-file limit raised from %d to %d (hard limit: %s)", soft, target, _fds(hard))
        soft = target
    else:
        log.info("open-file limit: %s (already the hard limit)", _fds(soft))
    return None if soft == resource.RLIM_INFINITY else soft


def _fds(limit: int) -> str:
    return "unlimited" if resource is not None and limit == resource.RLIM_INFINITY else str(limit)


def connection_cap(configured: int | None, fd_limit: int | None) -> int:
    """``server.max_connections``, at most (and by default) half the descriptors left after
    ``RESERVED_FDS``: a cap past that is lowered, with a warning."""
    if fd_limit is None:
        return configured or UNLIMITED_FDS_CAP
    most = max(1, (fd_limit - RESERVED_FDS) // 2)
    if configured is None:
        return most
    if configured > most:
        log.warning(
            "server.max_connections %d is more than the open-file limit %d allows "
            "(a connection being answered may hold an upstream one too); using %d",
            configured,
            fd_limit,
            most,
        )
        return most
    return configured


def redact_logs(config: Config) -> None:
    """Every handler that writes turnout's or uvicorn's records redacts them first: secrets and
    PII in a message (a key in an upstream's error, an email in an exception) never reach a log.
    The queue's handler hands records on unredacted: its listener's handler redacts them, on
    its thread (``turnout.observe.logs``)."""
    log_filter = RedactingFilter(Redactor(redaction_key(config)), fields=config.server.log_format == "json")
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access", "turnout", logs.ACCESS):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logs.Handoff):
                continue
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(log_filter)


def uvicorn_config(
    config: Config,
    fd_limit: int | None = None,
    source: str | None = None,
    loader: reload.Loader | None = None,
    fleet: Channel | None = None,
) -> uvicorn.Config:
    srv = config.server
    cap = connection_cap(srv.max_connections, fd_limit)
    log.info(
        "client connections: at most %d; timeouts: headers %gs, body %gs, idle keep-alive %gs, answer not taken %gs",
        cap,
        srv.header_timeout_s,
        srv.body_timeout_s,
        srv.keepalive_timeout_s,
        srv.send_timeout_s,
    )
    limits = Limits(srv.header_timeout_s, srv.body_timeout_s, srv.keepalive_timeout_s, cap, srv.send_timeout_s)
    return uvicorn.Config(
        App(config, source=source, loader=loader, fleet=fleet),
        host=config.server.host,
        port=config.server.port,
        loop="uvloop",
        http=protocol_class(limits),
        ws="none",  # turnout serves no WebSockets: an upgrade request is answered as plain HTTP
        lifespan="on",
        # uvicorn's access log is off: turnout's own (server.access_log) says more, off the
        # event loop. No logging config of its own: its records go to turnout's handler.
        access_log=False,
        log_config=None,
        log_level=config.server.log_level,
        timeout_graceful_shutdown=math.ceil(config.server.shutdown_grace_s),
        server_header=False,
        date_header=False,
        limit_concurrency=None,
        backlog=4096,
        forwarded_allow_ips=config.server.forwarded_allow_ips,  # None: FORWARDED_ALLOW_IPS or 127.0.0.1
    )
