"""Serving the app with uvicorn (chosen by measurement over granian: see bench/README.md).

Shutdown order on SIGTERM/SIGINT: stop accepting → let in-flight requests finish (up to
``server.shutdown_grace_s``) → lifespan shutdown: flush the ledger, close providers.
"""

from __future__ import annotations

import logging
import math

import uvicorn

from turnout.config import Config
from turnout.privacy.redact import RedactingFilter, Redactor
from turnout.serving.app import App
from turnout.serving.runtime import redaction_key


def run(config: Config) -> None:
    logging.basicConfig(level=config.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = uvicorn.Server(uvicorn_config(config))  # configures uvicorn's own log handlers
    redact_logs(config)
    server.run()


def redact_logs(config: Config) -> None:
    """Every handler that writes turnout's or uvicorn's records redacts them first: secrets and
    PII in a message (a key in an upstream's error, an email in an exception) never reach a log."""
    log_filter = RedactingFilter(Redactor(redaction_key(config)))
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access", "turnout"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(log_filter)


def uvicorn_config(config: Config) -> uvicorn.Config:
    return uvicorn.Config(
        App(config),
        host=config.server.host,
        port=config.server.port,
        loop="uvloop",
        http="httptools",
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
