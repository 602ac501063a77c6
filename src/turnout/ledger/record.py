"""One ledger row per request: metadata only, never prompt or completion text.

Fields are only ever appended (with defaults), so rows built positionally keep working and the
stores' columns stay in field order; each addition is a new schema migration in every backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field


# Not slotted, unlike LedgerRow: orjson writes a dataclass from its __dict__ in one pass but
# reads a slotted one field by field (0.53 against 1.22 us for a one-attempt list, measured),
# and the stores write every row's attempts as JSON. (LedgerRow, read by attrgetter, is faster
# slotted: 45 fields are past the inline-values layout.)
@dataclass
class AttemptRecord:
    target: str
    replica: str
    error_class: str | None  # None when the attempt succeeded
    latency_ms: float
    offset_ms: float = 0.0  # when it started, after the request's start (for traces)
    cost_usd: float | None = None  # None: unpriced (turnout.control.pricing); kept in the attempts JSON


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
    outcome: str | None = None  # filled later by feedback (set_outcome), like the fields below
    # Schema v2.
    cache_hit: bool | None = None  # None: no cache consulted
    capture_mode: str | None = None  # the mode applied: metadata | redacted | full
    human_review: bool | None = None
    escalated: bool | None = None
    outcome_value: float | None = None  # e.g. revenue, a score: whatever the feedback measures
    outcome_at: float | None = None  # unix seconds of the last feedback
    episode_id: str | None = None  # groups requests of one conversation or agent run
    # Schema v4.
    labels: list[str] | None = None  # the caller's tags from feedback; None: never labelled
    # Schema v5.
    usage_estimated: bool | None = None  # True: the upstream reported no usage, turnout counted it; None: no answer
    # Schema v7.
    # Injection screening's verdict (turnout.safety): "flagged user=0.82:instruction_override";
    # None: clean, or not screened.
    safety: str | None = None
    # Schema v8.
    tool_violations: str | None = None  # blocked tool calls, "name:reason ..." (never arguments); None: none
    declared_class: str | None = None  # the data class as declared; data_class is the effective one
    # Schema v9: output checks (turnout.serving.output).
    repairs: int | None = None  # answers re-asked after failing the output checks; None: none failed
    escalated_to: str | None = None  # where a failed answer was escalated: a target, or "human"
    output_check: str | None = None  # the rejected answers' reasons, "schema max_chars ..." (never text)
    # Schema v10: the API the request came through ("chat.completions", "tasks", "embeddings", ...).
    endpoint: str | None = None  # None: rows older than the column
    # Schema v11: the response cache (turnout.cache). A hit costs 0 (``cost_usd``); this is what
    # the answer cost when it was generated. None: not a hit.
    cost_saved_usd: float | None = None
    # Schema v12: why the answer stopped (the upstream's finish_reason: "stop", "length",
    # "tool_calls", ...; None: a stream, a failure or no reason given), and the task API's
    # documents attached to the request (None: another API).
    finish_reason: str | None = None
    documents: int | None = None
    # Schema v13: the caller's max_latency_ms / max_cost_usd and the targets they left out,
    # "max_latency_ms=800 skipped=slow:max_latency_ms" (turnout.routing.constraints); None: none set.
    constraints: str | None = None
    # Schema v14: live scoring (``tasks.T.scoring``): whether the sampled answer passed the task's
    # reference-free scorers. None: not sampled, or no answer to score.
    live_pass: bool | None = None
    # Schema v15: True: ``turnout eval`` asked it (a golden case, as a forced release), whichever
    # tenant it ran as; left out of canary judging. None: live traffic. No HTTP request can set it.
    evaluation: bool | None = None
