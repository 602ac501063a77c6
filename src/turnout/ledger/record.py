"""One ledger row per request: metadata only, never prompt or completion text."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class AttemptRecord:
    target: str
    replica: str
    error_class: str | None  # None when the attempt succeeded
    latency_ms: float
    offset_ms: float = 0.0  # when it started, after the request's start (for traces)


@dataclass(slots=True)
class LedgerRow:
    request_id: str
    started_at: float  # unix seconds
    tenant: str
    task: str
    data_class: str
    stream: bool
    user: str | None = None
    release: str | None = None
    prompt_version: str | None = None
    target: str | None = None
    replica: str | None = None
    model_version: str | None = None
    status: int = 0
    error_class: str | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    fallback: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    latency_ms: float = 0.0
    queue_ms: float | None = None
    ttft_ms: float | None = None
    generation_ms: float | None = None
    fallback_ms: float | None = None
    outcome: str | None = None  # filled later by feedback
