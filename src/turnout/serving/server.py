"""Serving the app with uvicorn (chosen by measurement over granian: see bench/README.md).

Shutdown order on SIGTERM/SIGINT: stop accepting → let in-flight requests finish (up to
``server.shutdown_grace_s``) → lifespan shutdown: flush the ledger, close providers.

At start the soft open-file limit is raised to the hard limit (a default of 1,024 runs out
under a few hundred slow clients), and uvicorn's httptools protocol gets header, body and
idle timeouts and a connection cap (``serving/connections.py``).
"""

from __future__ import annotations

import logging
import math

import uvicorn

from turnout.config import Config
from turnout.privacy.redact import RedactingFilter, Redactor
from turnout.serving.app import App
from turnout.serving.connections import Limits, protocol_class
from turnout.serving.runtime import redaction_key

try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]


log = logging.getLogger("turnout")

# Descriptors kept for everything but client connections: the listener, ledger and release
# databases, logs, Redis. Half of the rest go to clients, since each request being answered
# may hold one upstream connection too.
RESERVED_FDS = 64
UNLIMITED_FDS_CAP = 65_536  # the default cap when the open-file limit is unlimited


def run(config: Config) -> None:
    logging.basicConfig(level=config.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fd_limit = raise_open_file_limit()
    server = uvicorn.Server(uvicorn_config(config, fd_limit))  # configures uvicorn's own log handlers
    redact_logs(config)
    server.run()


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
    PII in a message (a key in an upstream's error, an email in an exception) never reach a log."""
    log_filter = RedactingFilter(Redactor(redaction_key(config)))
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access", "turnout"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(log_filter)


def uvicorn_config(config: Config, fd_limit: int | None = None) -> uvicorn.Config:
    srv = config.server
    cap = connection_cap(srv.max_connections, fd_limit)
    log.info(
        "client connections: at most %d; timeouts: headers %gs, body %gs, idle keep-alive %gs",
        cap,
        srv.header_timeout_s,
        srv.body_timeout_s,
        srv.keepalive_timeout_s,
    )
    limits = Limits(srv.header_timeout_s, srv.body_timeout_s, srv.keepalive_timeout_s, cap)
    return uvicorn.Config(
        App(config),
        host=config.server.host,
        port=config.server.port,
        loop="uvloop",
        http=protocol_class(limits),
        ws="none",  # turnout serves no WebSockets: an upgrade request is answered as plain HTTP
        lifespan="on",
        # Access logs are off: a log line per request is disk I/O on the hot path, and the
        # ledger already records every request (without its text).
        access_log=False,
        log_level=config.server.log_level,
        timeout_graceful_shutdown=math.ceil(config.server.shutdown_grace_s),
        server_header=False,
        date_header=False,
        limit_concurrency=None,
        backlog=4096,
    )
