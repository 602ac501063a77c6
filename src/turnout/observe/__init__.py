"""Observability built from the ledger row: Prometheus metrics (``metrics``) and OpenTelemetry
traces (``tracing``). Both read the finished ``LedgerRow`` once, when the request is
accounted; neither adds work between the request's arrival and its answer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from turnout.config import Config
from turnout.errors import ConfigError

if TYPE_CHECKING:
    from turnout.observe.tracing import Tracing


def open_tracing(config: Config) -> Tracing | None:
    """The configured tracing, or None when ``observability.otlp_endpoint`` is unset. The
    OpenTelemetry SDK (the ``observability`` extra) is imported only when tracing is on."""
    if not config.observability.otlp_endpoint:
        return None
    try:
        from turnout.observe.tracing import Tracing
    except ImportError as exc:
        raise ConfigError(
            ["observability.otlp_endpoint: tracing needs the OpenTelemetry SDK: pip install 'turnout[observability]'"]
        ) from exc
    return Tracing.from_config(config)
