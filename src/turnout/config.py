"""One typed configuration, loaded from one YAML file (or the built-in default) and validated
at load: every problem is reported with its key path, and a config that loads can be trusted.
"""

from __future__ import annotations

import ipaddress
import os
import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from turnout._support.places import PgPlace, Place
from turnout._support.suggest import keys_at, nearest
from turnout.errors import ConfigError

DATA_CLASSES = ("public", "internal", "confidential", "restricted")
DataClass = Literal["public", "internal", "confidential", "restricted"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(1_048_576, gt=0)
    # Without tenants there is no authentication; that is allowed on loopback only unless the
    # operator says so explicitly.
    allow_anonymous: bool = False
    shutdown_grace_s: float = Field(15.0, ge=0)
    # Slow and idle clients (turnout.serving.connections): the headers must arrive within
    # header_timeout_s of the request's first byte (or of the connection's start), the whole body
    # within body_timeout_s after them; an idle keep-alive connection closes after
    # keepalive_timeout_s. max_connections: open client connections at most (None: half the
    # open-file limit, which ``serve`` raises to its hard limit).
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(30.0, gt=0)
    keepalive_timeout_s: float = Field(5.0, gt=0)
    max_connections: int | None = Field(None, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Logs (turnout.observe.logs): text lines, or JSON lines for log shippers. access_log: one
    # line per API request (id, task, tenant, target, status, latency; never text), at INFO.
    log_format: Literal["text", "json"] = "text"
    access_log: bool = False
    # Guards /admin/*; also read from TURNOUT_ADMIN_KEY. Unset: /admin/* is closed.
    admin_key: str | None = None
    # The console (/ui) read-only: sees every page, changes nothing. Also TURNOUT_VIEWER_KEY.
    viewer_key: str | None = None


class StoreConfig(_Strict):
    kind: Literal["sqlite", "postgres", "memory", "none"] = "sqlite"  # none: no ledger at all
    path: str = "./.turnout/turnout.db"
    dsn: str | None = None  # postgres: e.g. postgresql://user@127.0.0.1:5432/test
    pg_schema: str | None = Field(None, pattern=r"^[a-z_][a-z0-9_]{0,62}$")  # postgres: tables in this schema
    batch_size: int = Field(256, gt=0)
    # Rows reach the store or the spill journal within about this plus one store write: what a
    # SIGKILL can lose.
    flush_interval_ms: int = Field(10, gt=0)
    queue_size: int = Field(10_000, gt=0)
    # The spill journal (turnout.ledger.journal): rows the store cannot take yet, on local disk.
    # None: beside the SQLite file (<path>.spill), or ./.turnout/ledger.spill for PostgreSQL.
    spill_dir: str | None = None
    spill_max_mb: float = Field(256.0, ge=0)  # 0: no journal (a failed batch is lost, counted)


class StateConfig(_Strict):
    """Where releases (states, transitions, canary claims), the review queue and capture
    (grants, audit, captured text) live. ``sqlite``: files on this machine
    (``releases.store_path``; ``capture.db`` beside ``store.path``). ``postgres``: one database
    that every replica and the CLI share, which a fleet on several machines needs."""

    kind: Literal["sqlite", "postgres"] = "sqlite"
    dsn: str | None = None  # postgres; default: store.dsn
    pg_schema: str | None = Field(None, pattern=r"^[a-z_][a-z0-9_]{0,62}$")  # default: store.pg_schema


class CaptureRule(_Strict):
    tenant: str | None = None  # None: every tenant
    task: str | None = None  # None: every task
    mode: Literal["metadata", "redacted", "full"]
    sample_rate: float = Field(1.0, ge=0, le=1)


class CaptureConfig(_Strict):
    """Whether prompt and completion text is kept. ``metadata``: never (the default).
    ``redacted``: only after secrets and PII are replaced. ``full``: only while a capture grant
    (``turnout capture grant``) is active for the tenant and task, and secrets are still scrubbed.
    The most specific rule wins (tenant+task, then task, then tenant, then the default)."""

    mode: Literal["metadata", "redacted", "full"] = "metadata"
    sample_rate: float = Field(1.0, ge=0, le=1)
    ttl_days: float = Field(30.0, gt=0)  # captured text is purged after this
    purge_interval_s: float = Field(3600.0, gt=0)
    rules: list[CaptureRule] = []
    # Keys the HMAC pseudonyms of redacted values; from TURNOUT_REDACTION_KEY if unset, else
    # random per process (placeholders then differ between replicas and restarts).
    redaction_key: str | None = None

    @field_validator("redaction_key")
    @classmethod
    def _long_enough(cls, key: str | None) -> str | None:
        problem = redaction_key_problem(key) if key else None  # empty: unset, as the gateway reads it
        if problem:
            raise ValueError(problem)
        return key


def redaction_key_problem(key: str) -> str | None:
    """Why the redactor would refuse ``key`` at start-up (too short, not UTF-8), or None."""
    # Imported only when a key is given: the engine compiles its patterns at import.
    from turnout.privacy.redact.engine import MIN_KEY_BYTES

    try:
        size = len(key.encode())
    except UnicodeEncodeError:
        return "is not valid UTF-8 text"
    if size < MIN_KEY_BYTES:
        return f"needs at least {MIN_KEY_BYTES} bytes, got {size} (e.g. the output of `openssl rand -hex 32`)"
    return None


class ReleasesConfig(_Strict):
    path: str = "./releases"  # releases/<task>/<release>.yaml
    evals_path: str = "./evals"  # evals/<task>.jsonl (golden sets)
    store_path: str = "./.turnout/releases.db"  # registered releases, states, transitions, reviews


class EvalsConfig(_Strict):
    # python_test runs scored code in a bubblewrap jail; without a working bubblewrap it refuses,
    # unless this is true: then the code runs as a plain child process (only for code you trust).
    allow_unsandboxed_code: bool = False


class ObservabilityConfig(_Strict):
    metrics: bool = True  # /metrics in Prometheus text format
    otlp_endpoint: str | None = None  # traces: OTLP/HTTP endpoint; unset: no tracing
    service_name: str = "turnout"


class LimitsConfig(_Strict):
    """Where limits, budgets and issued keys live. ``memory``: this process (one replica; keys in
    a SQLite file). ``redis``: shared by every replica (keys in Redis too)."""

    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = Field("turnout", min_length=1)
    on_backend_error: Literal["closed", "open"] = "closed"  # Redis unreachable: refuse (503) or admit
    max_request_s: float = Field(600.0, gt=0)  # a slot or reservation never settled expires then
    # redis: each replica's heartbeat key lives this long unrefreshed; once it is gone (a crash),
    # the other replicas free that replica's slots and reservations
    heartbeat_ttl_s: float = Field(5.0, ge=0.5)
    default_max_tokens: int = Field(1024, gt=0)  # worst-case output when a request sets no max_tokens
    keys_path: str = "./.turnout/keys.db"  # issued keys with the memory backend


class Limit(_Strict):
    rpm: int | None = Field(None, gt=0)
    tpm: int | None = Field(None, gt=0)
    concurrency: int | None = Field(None, gt=0)
    usd_per_day: float | None = Field(None, gt=0)
    usd_per_month: float | None = Field(None, gt=0)


class Price(_Strict):
    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cached_input_per_mtok: float | None = Field(None, ge=0)  # default: the input price


_MANAGED = ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok")
_SELF_HOSTED = ("gpu_hour_usd", "gpus", "replicas", "schedule", "allocation", "tokens_per_s", "max_concurrency")
_HOURS = re.compile(r"^\s*(\d{1,2})\s*(?:-\s*(\d{1,2})\s*)?$")


class PriceEntry(_Strict):
    """One target's price in a price-book version: managed (USD per 1M tokens) or self-hosted
    (a fleet of replicas billed by the GPU-hour). See ``turnout.control.pricing`` for the arithmetic."""

    input_per_mtok: float | None = Field(None, ge=0)
    output_per_mtok: float | None = Field(None, ge=0)
    cached_input_per_mtok: float | None = Field(None, ge=0)
    gpu_hour_usd: float | None = Field(None, ge=0)
    gpus: int = Field(1, gt=0, description="GPUs per replica")
    replicas: int = Field(1, ge=0, description="replicas up in the hours the schedule does not list")
    schedule: dict[str, int] = Field({}, description='replicas by UTC hour of day: {"0-7": 1, "8-19": 3}')
    allocation: Literal["busy_seconds", "tokens"] = "busy_seconds"
    tokens_per_s: float | None = Field(None, gt=0, description="prompt+completion tokens/s one replica serves")
    max_concurrency: int = Field(1, gt=0, description="requests one replica serves at once (busy_seconds)")

    @model_validator(mode="after")
    def _one_form(self) -> PriceEntry:
        given = self.model_fields_set
        managed = [k for k in _MANAGED if k in given]
        hosted = [k for k in _SELF_HOSTED if k in given]
        if managed and hosted:
            raise ValueError(
                f"give a managed price ({', '.join(managed)}) or a self-hosted one ({', '.join(hosted)}), not both"
            )
        if not hosted:
            missing = [k for k in _MANAGED[:2] if getattr(self, k) is None]
            if missing:
                raise ValueError(
                    f"missing {' and '.join(missing)} (managed), or give gpu_hour_usd, gpus, replicas (self-hosted)"
                )
            return self
        if self.gpu_hour_usd is None:
            raise ValueError("a self-hosted price needs gpu_hour_usd")
        if self.allocation == "tokens" and self.tokens_per_s is None:
            raise ValueError("allocation 'tokens' needs tokens_per_s (per replica)")
        self.hourly_replicas()  # raises on a bad schedule
        return self

    def hourly_replicas(self) -> tuple[int, ...]:
        """Replicas up in each UTC hour 0..23: the schedule where it says, else ``replicas``."""
        hours: list[int | None] = [None] * 24
        for key, count in self.schedule.items():
            m = _HOURS.match(str(key))
            lo, hi = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (-1, -1)
            if not m or not 0 <= lo <= hi <= 23:
                raise ValueError(f"schedule: {key!r} is not an hour or a range 0-23 (split one that wraps midnight)")
            if count < 0:
                raise ValueError(f"schedule: {key!r} has a negative replica count")
            for h in range(lo, hi + 1):
                if hours[h] is not None:
                    raise ValueError(f"schedule: hour {h} is listed twice")
                hours[h] = count
        return tuple(self.replicas if n is None else n for n in hours)


class PriceVersion(_Strict):
    effective: date  # from 00:00 UTC that day, until the next version that names the target
    targets: dict[str, PriceEntry]


class TimeoutsConfig(_Strict):
    connect: float = Field(5.0, gt=0)
    ttft: float = Field(30.0, gt=0)
    total: float = Field(120.0, gt=0)


class BreakerConfig(_Strict):
    failures: int = Field(5, gt=0, description="consecutive failures that open the breaker")
    failure_rate: float = Field(0.5, gt=0, le=1, description="or this failure rate over the window")
    window: int = Field(20, gt=0, description="calls in the rate window")
    min_calls: int = Field(10, gt=0, description="calls before the rate counts")
    cooldown_s: float = Field(10.0, gt=0)


class RetryConfig(_Strict):
    attempts: int = Field(2, ge=1, description="tries at one target before falling back")
    backoff_ms: float = Field(50.0, ge=0)
    max_backoff_ms: float = Field(2000.0, ge=0)


class _TargetBase(_Strict):
    timeouts: TimeoutsConfig = TimeoutsConfig()
    retry: RetryConfig = RetryConfig()
    breaker: BreakerConfig = BreakerConfig()
    model_version: str | None = None
    # Tokens the model takes in one request. A prompt too long for one target falls back only
    # to targets whose window is larger or unknown. Default: n_ctx (local), the catalog (bedrock).
    context_window: int | None = Field(None, gt=0)
    # USD per 1M tokens. The price book (``prices:``) wins from its effective date; without
    # either, the catalog (bedrock; local is free), else unpriced. See turnout.control.pricing.
    price: Price | None = None
    # The model's tokenizer.json (Hugging Face tokenizers format): budget reservations and
    # answers without usage count tokens with it, else as UTF-8 bytes. See turnout.control.tokens.
    tokenizer: str | None = Field(None, min_length=1)
    # An embedding target (POST /v1/embeddings; turnout.providers.embeddings): its vectors compare
    # only with vectors of the same space, so a task's route (fallbacks included) keeps to one
    # space. Unset: a text target. ``embedding_batch``: inputs per upstream call (default per
    # provider); ``embedding_parallel``: one request's calls in flight at once.
    embedding_space: str | None = Field(None, min_length=1)
    embedding_batch: int | None = Field(None, gt=0)
    embedding_parallel: int = Field(4, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _embeddings_have_no_output(cls, raw: Any) -> Any:
        # An embedding model generates nothing: its price needs only input_per_mtok.
        if isinstance(raw, dict) and raw.get("embedding_space") and isinstance(raw.get("price"), dict):
            return {**raw, "price": {"output_per_mtok": 0, **raw["price"]}}
        return raw


class LoadScrapeConfig(_Strict):
    """Reading each replica's own load from its Prometheus page (turnout.providers.balance)."""

    interval_s: float = Field(2.0, gt=0)
    timeout_s: float = Field(1.0, gt=0)
    path: str = Field("/metrics", pattern=r"^/[^\s?#]*$", description="on each base URL's host and port")
    stale_s: float | None = Field(None, gt=0, description="a reading older than this is dropped; default 3 intervals")


class HealthCheckConfig(_Strict):
    """Active health checks of each replica (turnout.providers.healthcheck): a cheap GET, never
    a completion; a failing replica's breaker opens before live traffic finds it."""

    interval_s: float = Field(5.0, gt=0)
    timeout_s: float = Field(2.0, gt=0)
    path: str = Field("/health", pattern=r"^/[^\s?#]*$", description="on each base URL's host and port")


class OpenAITarget(_TargetBase):
    provider: Literal["openai"]
    base_url: str | None = None
    base_urls: list[str] | None = None
    model: str
    api_key: str | None = None
    headers: dict[str, str] = {}
    max_connections: int = Field(256, gt=0)
    # How a call picks among base_urls (turnout.providers.balance): ``least_loaded`` by calls in
    # flight plus, with ``load``, the replica's own queue and KV-cache use; ``prefix_affinity``
    # keeps a conversation on one replica (its prefix cache) while that one is at most
    # ``affinity_slack`` busier than the least loaded.
    balance: Literal["least_loaded", "prefix_affinity"] = "least_loaded"
    affinity_slack: float = Field(8.0, ge=0, description="calls in flight (or their equivalent in load)")
    load: LoadScrapeConfig | None = None
    health: HealthCheckConfig | None = None  # none: passive failures alone open a replica's breaker

    @model_validator(mode="after")
    def _one_url_form(self) -> OpenAITarget:
        if (self.base_url is None) == (self.base_urls is None):
            raise ValueError("give exactly one of base_url or base_urls")
        if self.base_urls is not None:
            if not self.base_urls:
                raise ValueError("base_urls is empty")
            if len(set(self.base_urls)) != len(self.base_urls):
                raise ValueError("base_urls has duplicates")
        for url in self.urls:
            if not re.match(r"^https?://[^/]", url):
                raise ValueError(f"base URL must start with http:// or https://: {url!r}")
        return self

    @property
    def urls(self) -> list[str]:
        return [u.rstrip("/") for u in (self.base_urls or [self.base_url or ""])]


class LocalTarget(_TargetBase):
    provider: Literal["local"]
    model_path: str | None = None
    n_ctx: int = Field(2048, gt=0)
    threads: int | None = Field(None, gt=0)
    concurrency: int = Field(1, gt=0, description="generations running at once")
    queue_size: int = Field(32, ge=0, description="requests waiting beyond those running")
    timeouts: TimeoutsConfig = TimeoutsConfig(ttft=60.0, total=300.0)
    retry: RetryConfig = RetryConfig(attempts=1)


class GuardrailConfig(_Strict):
    id: str = Field(min_length=1, description="guardrail identifier or ARN")
    version: str = Field(min_length=1)
    trace: Literal["enabled", "disabled", "enabled_full"] | None = None
    stream_mode: Literal["sync", "async"] | None = None  # ConverseStream's streamProcessingMode


class BedrockTarget(_TargetBase):
    provider: Literal["bedrock"]
    region: str = Field(pattern=r"^[a-z]{2}(-gov)?-[a-z]+-\d+$")
    model: str = Field(min_length=1, description="model id, inference profile (us./eu./global.) or ARN")
    endpoint_url: str | None = Field(None, pattern=r"^https?://[^/]")
    profile: str | None = None  # a named AWS profile; default: the standard credential chain
    guardrail: GuardrailConfig | None = None
    additional_fields: dict[str, Any] = {}  # additionalModelRequestFields, merged under the caller's
    max_connections: int = Field(256, gt=0)


PROVIDERS = ("openai", "local", "bedrock")
TargetConfig = Annotated[OpenAITarget | LocalTarget | BedrockTarget, Field(discriminator="provider")]


SafetyMode = Literal["block", "flag", "off"]
Score = Annotated[float, Field(gt=0, le=1)]


class ScreenModes(_Strict):
    """Per channel: ``block`` (400 ``prompt_injection``), ``flag`` (served, marked in the header
    and the ledger) or ``off``. Unset: inherited (tenant×task → tenant → task), else off."""

    user: SafetyMode | None = None  # the caller's user messages (chat), variables (task API)
    documents: SafetyMode | None = None  # the task API's documents
    tool_output: SafetyMode | None = None  # tool (and function) messages

    @field_validator("user", "documents", "tool_output", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false: it means off here, not a type error.
        return "off" if value is False else value


class SafetyThresholds(_Strict):
    user: Score | None = None
    documents: Score | None = None
    tool_output: Score | None = None


class SafetyJudgeConfig(_Strict):
    """The optional second stage of injection screening: a text scoring within ``borderline``
    below its channel's threshold is shown to a model (``target``, e.g. the embedded one), whose
    YES makes it an injection (reason ``judge``). Only targets the request's data class may reach
    are asked; a judge that fails or is too slow leaves the screener's verdict as it was."""

    target: str
    borderline: float = Field(0.15, gt=0, le=1)
    timeout_s: float = Field(5.0, gt=0)


class SafetyConfig(_Strict):
    """Injection screening (``turnout.safety``): a score at or above the threshold is an
    injection. ``threshold``: one score for every channel or one per channel; unset, the
    screener's defaults (``turnout.safety.screen.THRESHOLDS``)."""

    screen: ScreenModes = ScreenModes()
    threshold: SafetyThresholds | None = None
    judge: SafetyJudgeConfig | None = None  # a second opinion on borderline scores; None: none

    @field_validator("threshold", mode="before")
    @classmethod
    def _one_for_all(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return {"user": value, "documents": value, "tool_output": value}
        return value


class ToolsConfig(_Strict):
    """Tool allowlists (``turnout.safety.tools``): the tools a request may declare and the model
    may call. A request declaring another tool is refused (400 ``tool_not_allowed``); a model's
    call to a tool not allowed, not declared by the request, or whose arguments fail the declared
    JSON schema is blocked, never passed on: ``refuse`` (502 ``tool_call_blocked``), ``fallback``
    (the next allowed target), ``escalate`` (refused like ``refuse``: not wired to ``output.escalate``).
    ``strict``: objects in the schema admit no property they do not list. Unset fields are
    inherited (tenant×task → tenant → task); defaults: allow nothing, strict, refuse."""

    allow: list[Annotated[str, Field(min_length=1)]] | None = None
    strict: bool | None = None
    on_violation: Literal["refuse", "fallback", "escalate"] | None = None


class ClassifyConfig(_Strict):
    """Data classification before policy (``turnout.safety.classify``): a request declared below
    ``raise_to`` whose text holds what ``detect`` names (the redaction engine's PII or secrets)
    is treated as ``raise_to``, so it only reaches the targets that class may use. The most
    specific block wins whole (tenant×task → tenant → task); ``detect: []`` turns it off."""

    detect: list[Literal["pii", "secrets"]] = ["pii", "secrets"]
    raise_to: Literal["internal", "confidential", "restricted"] = "confidential"


HUMAN = "human"  # escalate.to: the review queue, where a person answers


class EscalateConfig(_Strict):
    """Where an answer goes once its repairs are spent: a stronger target (by name) or a person
    (``human``: 202 with a ticket, the request redacted in the review queue)."""

    to: str = Field(min_length=1)


class OutputConfig(_Strict):
    """Output checks (``turnout.safety.output``) on every answer of the task, both doors: the
    task's ``schema``, the request's own ``response_format`` (json_schema or json_object; the
    task API's release schema comes that way), ``max_chars`` and ``must_not_contain`` (the
    redaction engine's secrets or PII). A failed answer is re-asked of the same target up to
    ``repair_attempts`` times with the failure appended, then escalated, else refused (502
    ``output_invalid``). Streams are answered whole: generated, checked, then relayed."""

    # ``schema`` would shadow a BaseModel attribute; by name too, so a dumped config reloads.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    response_format: bool = True
    max_chars: int | None = Field(None, gt=0)
    must_not_contain: list[Literal["secrets", "pii"]] = []
    repair_attempts: int = Field(0, ge=0, le=5)
    escalate: EscalateConfig | None = None

    @field_validator("json_schema")
    @classmethod
    def _a_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None:
            from jsonschema import SchemaError, validators  # only for tasks that have a schema

            try:
                validators.validator_for(schema).check_schema(schema)
            except SchemaError as exc:
                where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
                raise ValueError(f"not a valid JSON Schema at {where}: {exc.message}") from None
        return schema


class TaskCacheConfig(_Strict):
    """An exact-match response cache for one task (``turnout.cache``), opt-in per data class.
    ``scope: tenant``: an answer serves its own tenant only; ``shared``: every tenant, for
    ``public`` data only. Only deterministic requests (temperature 0 or a ``seed``) are cached
    unless ``allow_sampled``. ``max_mb``: the in-process backend keeps at most this much of the
    task's answers (least recently used go first); no answer larger than it is stored."""

    ttl_s: float = Field(gt=0)
    classes: list[DataClass] = Field(min_length=1)
    scope: Literal["tenant", "shared"] = "tenant"
    allow_sampled: bool = False
    max_mb: float | None = Field(None, gt=0)  # None: cache.max_mb

    @model_validator(mode="after")
    def _privacy(self) -> TaskCacheConfig:
        if "restricted" in self.classes:
            raise ValueError("classes: 'restricted' answers are never cached")
        if self.scope == "shared" and set(self.classes) != {"public"}:
            raise ValueError("scope: 'shared' is only allowed with classes: [public]")
        return self


class TenantConfig(_Strict):
    keys: list[str] = []  # bootstrap keys; issue more with `turnout keys create`
    data_classes: list[DataClass] = ["public", "internal"]
    tasks: list[str] | None = None
    limits: Limit = Limit()  # for the tenant as a whole
    task_limits: dict[str, Limit] = {}  # for the tenant's use of one task
    safety: SafetyConfig | None = None  # overrides every task's, where it sets a value
    task_safety: dict[str, SafetyConfig] = {}  # overrides one task's (and the tenant's)
    tools: ToolsConfig | None = None  # overrides every task's, where it sets a value
    task_tools: dict[str, ToolsConfig] = {}  # overrides one task's (and the tenant's)
    classify: ClassifyConfig | None = None  # replaces every task's
    task_classify: dict[str, ClassifyConfig] = {}  # replaces one task's (and the tenant's)


class ClassPolicy(_Strict):
    targets: list[str]


class Gates(_Strict):
    """What a candidate release must show on the golden set before it may take traffic."""

    min_pass_rate: float = Field(0.0, ge=0, le=1)  # the candidate's pass rate (point estimate)
    max_regression: float = Field(0.05, ge=0, le=1)  # baseline − candidate pass rate, at most
    max_p95_ms: float | None = Field(None, gt=0)  # candidate p95 latency at the eval's concurrency
    max_cost_per_pass_ratio: float | None = Field(None, gt=0)  # candidate ÷ baseline cost per passed case
    # (model spend + review_cost_usd × runs + escalation_cost_usd × failed runs) ÷ passed runs, in $
    max_cost_per_completed_task: float | None = Field(None, gt=0)


class CanaryConfig(_Strict):
    """How a canary is watched on live traffic and moved along its steps."""

    steps: list[float] = Field([5.0, 25.0, 50.0, 100.0], min_length=1)  # percent of traffic per step
    interval_s: float = Field(60.0, gt=0)  # one check per interval
    min_requests: int = Field(50, gt=0)  # per side and step before a verdict; fewer: the step waits
    max_error_rate_delta: float = Field(0.02, ge=0)  # canary − active error rate
    max_p95_ratio: float = Field(1.5, gt=0)  # canary ÷ active p95 latency
    max_cost_ratio: float = Field(1.5, gt=0)  # canary ÷ active cost per request
    max_success_drop: float = Field(0.05, ge=0)  # active − canary outcome success rate, once feedback exists
    provider_error_budget: float = Field(0.2, ge=0, le=1)  # upstream failures: counted apart; past this the step waits
    # Live scoring (tasks.T.scoring): the canary's pass rate must be at least this, once it has
    # min_requests scored answers; None: not checked.
    min_live_pass_rate: float | None = Field(None, ge=0, le=1)


LIVE_SCORERS = ("equals", "contains", "regex", "json_schema", "required_fields", "number_close")


class LiveScoringConfig(_Strict):
    """Score a share of live answers with reference-free scorers (the golden sets' own, e.g.
    ``{scorer: json_schema, schema: {...}}``): the verdict goes to the ledger (``live_pass``), the
    pass rate by release to ``turnout report quality``, ``/metrics`` and the canary's
    ``min_live_pass_rate``. Scored after the answer has gone out."""

    rate: float = Field(gt=0, le=1)
    scorers: list[dict[str, Any]] = Field(min_length=1)

    @field_validator("scorers")
    @classmethod
    def _reference_free(cls, scorers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for each in scorers:
            name = each.get("scorer")
            if name not in LIVE_SCORERS:
                raise ValueError(
                    f"scorer {name!r} cannot score live answers; one of {', '.join(LIVE_SCORERS)} "
                    "(judge and python_test are for golden sets: `turnout eval`)"
                )
        return scorers


class ShadowConfig(_Strict):
    """How a task's shadow release (``turnout release shadow``) is fed, per gateway replica: at
    most ``max_concurrency`` mirrored calls at once (a request drawn while they are all busy is
    not mirrored) and at most ``usd_per_day`` of shadow spend a UTC day (reached: mirroring
    stops until the next day). ``compare``: how a shadow answer is matched with the served one
    (``auto``: as JSON when both parse, else as text with case and runs of whitespace
    ignored). ``min_pairs`` and ``min_agreement``: what the shadow sample must show, besides the
    task's ``gates``, before the release may go to canary."""

    max_concurrency: int = Field(4, gt=0)
    usd_per_day: float = Field(1.0, ge=0)
    compare: Literal["auto", "json", "text", "exact"] = "auto"
    min_pairs: int = Field(50, gt=0)
    min_agreement: float | None = Field(None, ge=0, le=1)


class TaskConfig(_Strict):
    route: list[str] = Field(min_length=1)
    description: str = ""
    gates: Gates = Gates()
    canary: CanaryConfig = CanaryConfig()
    review_rate: float = Field(0.0, ge=0, le=1)  # share of responses sent to the review queue
    review_cost_usd: float | None = Field(None, ge=0)  # a person reviewing one answer; None: not counted
    escalation_cost_usd: float | None = Field(None, ge=0)  # a person finishing one failed task; None: not counted
    # Over budget: refuse (429 budget_exceeded), or keep only the targets whose worst case fits.
    on_budget_exceeded: Literal["refuse", "cheaper"] = "refuse"
    safety: SafetyConfig = SafetyConfig()  # injection screening: off on every channel by default
    tools: ToolsConfig | None = None  # tool allowlist; None: tool calls are not checked
    classify: ClassifyConfig | None = None  # raise the data class of requests carrying PII or secrets
    output: OutputConfig | None = None  # output checks, repair and escalation; None: answers pass as they are
    cache: TaskCacheConfig | None = None  # the response cache (turnout.cache); None: never cached
    scoring: LiveScoringConfig | None = None  # live scoring of sampled answers; None: off
    shadow: ShadowConfig = ShadowConfig()  # the caps and comparison of a shadow release


MIN_CACHE_KEY_BYTES = 32


class CacheConfig(_Strict):
    """Where cached answers live (``turnout.cache``); tasks opt in with ``tasks.T.cache``.
    ``memory``: in each gateway process, bounded by bytes. ``redis``: shared by the replicas,
    each answer sealed with AES-GCM under ``encryption_key`` (required there) and expiring with
    its TTL."""

    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None  # None: limits.redis_url
    key_prefix: str = Field("turnout", min_length=1)  # keys: <prefix>:cache:...
    encryption_key: str | None = None  # e.g. ${TURNOUT_CACHE_KEY}; `openssl rand -hex 32`
    max_mb: float = Field(64.0, gt=0)  # per task in process, unless the task sets its own

    @model_validator(mode="after")
    def _sealed(self) -> CacheConfig:
        if self.backend == "redis" and not self.encryption_key:
            raise ValueError("encryption_key: required with backend redis (cached answers are prompt-derived text)")
        if self.encryption_key and len(self.encryption_key.encode()) < MIN_CACHE_KEY_BYTES:
            raise ValueError(f"encryption_key: needs at least {MIN_CACHE_KEY_BYTES} bytes (`openssl rand -hex 32`)")
        return self


class RetentionRule(_Strict):
    """How long each kind of record is kept for a tenant and task (None: every one). Unset
    fields fall through to the next rule: tenant+task, then task, then tenant, then the
    default (the rule naming neither)."""

    tenant: str | None = None
    task: str | None = None
    ledger_days: float | None = Field(None, gt=0)  # metadata rows; unset everywhere: kept
    capture_days: float | None = Field(None, gt=0)  # captured text; unset everywhere: capture.ttl_days
    review_days: float | None = Field(None, gt=0)  # review queue items; unset everywhere: kept
    cache_ttl_s: float | None = Field(None, gt=0)  # caps tasks.T.cache.ttl_s


class RetentionConfig(_Strict):
    """Rules by tenant × task, enforced by a background purge (``turnout.privacy.retention``)
    in batches of ``batch_size`` rows, each run recorded in the audit trail with its counts."""

    purge_interval_s: float = Field(3600.0, gt=0)
    batch_size: int = Field(1000, gt=0)
    rules: list[RetentionRule] = []


class Config(_Strict):
    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    state: StateConfig = StateConfig()
    limits: LimitsConfig = LimitsConfig()
    capture: CaptureConfig = CaptureConfig()
    releases: ReleasesConfig = ReleasesConfig()
    evals: EvalsConfig = EvalsConfig()
    observability: ObservabilityConfig = ObservabilityConfig()
    targets: dict[str, TargetConfig]
    tenants: dict[str, TenantConfig] = {}
    policy: dict[DataClass, ClassPolicy] = {}
    tasks: dict[str, TaskConfig]
    cache: CacheConfig = CacheConfig()
    retention: RetentionConfig = RetentionConfig()
    # The price book, by effective date (sorted at load); see turnout.control.pricing.
    prices: list[PriceVersion] = []

    @model_validator(mode="after")
    def _sort_prices(self) -> Config:
        self.prices.sort(key=lambda v: v.effective)
        return self

    def state_at(self, path: str) -> Place:
        """Where a store of shared state opens: ``path`` with ``state.kind: sqlite``, else the
        PostgreSQL database (``state.dsn``, else the ledger's) and schema (``state.pg_schema``,
        else the ledger's when the database is the ledger's)."""
        if self.state.kind == "sqlite":
            return path
        if self.state.dsn:
            return PgPlace(self.state.dsn, self.state.pg_schema)
        assert self.store.dsn is not None  # cross_problems requires one
        return PgPlace(self.store.dsn, self.state.pg_schema or self.store.pg_schema)


def cross_problems(raw: dict[str, Any]) -> list[str]:
    """Problems between sections (unknown names, duplicates, unsafe exposure), checked on the
    raw mapping so they are reported together with the per-field problems."""
    problems: list[str] = []
    targets = _mapping(raw.get("targets"))
    tasks = _mapping(raw.get("tasks"))
    for name, task in tasks.items():
        seen: set[str] = set()
        route = _mapping(task).get("route")
        for i, target in enumerate(route if isinstance(route, list) else []):
            if not isinstance(target, str):
                continue  # the field check reports the type
            if target not in targets:
                problems.append(f"tasks.{name}.route[{i}]: unknown target {target!r}{nearest(target, targets)}")
            elif target in seen:
                problems.append(f"tasks.{name}.route[{i}]: target {target!r} listed twice")
            seen.add(target)
    for i, rule in enumerate(_mapping(raw.get("capture")).get("rules") or []):
        rule = _mapping(rule)
        task, tenant = rule.get("task"), rule.get("tenant")
        if task is not None and task not in tasks:
            problems.append(f"capture.rules[{i}].task: unknown task {task!r}{nearest(task, tasks)}")
        known = _mapping(raw.get("tenants"))
        if tenant is not None and tenant not in known:
            problems.append(f"capture.rules[{i}].tenant: unknown tenant {tenant!r}{nearest(tenant, known)}")
    for cls, pol in _mapping(raw.get("policy")).items():
        listed = _mapping(pol).get("targets")
        for i, target in enumerate(listed if isinstance(listed, list) else []):
            if isinstance(target, str) and target not in targets:
                problems.append(f"policy.{cls}.targets[{i}]: unknown target {target!r}{nearest(target, targets)}")
    owner: dict[str, str] = {}
    tenants = _mapping(raw.get("tenants"))
    for tname, tenant in tenants.items():
        keys = _mapping(tenant).get("keys")
        for i, key in enumerate(keys if isinstance(keys, list) else []):
            if not isinstance(key, str):
                continue
            if len(key) < 8:
                problems.append(f"tenants.{tname}.keys[{i}]: key is shorter than 8 characters")
            if key in owner:
                problems.append(f"tenants.{tname}.keys[{i}]: key also belongs to tenant {owner[key]!r}")
            owner[key] = str(tname)
        allowed = _mapping(tenant).get("tasks")
        for i, task in enumerate(allowed if isinstance(allowed, list) else []):
            if isinstance(task, str) and task not in tasks:
                problems.append(f"tenants.{tname}.tasks[{i}]: unknown task {task!r}{nearest(task, tasks)}")
        for field in ("task_limits", "task_safety", "task_tools", "task_classify"):
            for task in _mapping(_mapping(tenant).get(field)):
                if task not in tasks:
                    problems.append(f"tenants.{tname}.{field}.{task}: unknown task {task!r}{nearest(task, tasks)}")
    problems += _escalation_problems(tasks, targets)
    problems += _retention_problems(_mapping(raw.get("retention")).get("rules"), tasks, _mapping(raw.get("tenants")))
    problems += _judge_problems(tasks, tenants, targets)
    problems += _embedding_problems(tasks, targets)
    problems += _price_book_problems(raw.get("prices"), targets)
    problems += _credential_problems(targets)
    problems += _store_problems(_mapping(raw.get("store")))
    problems += _state_problems(_mapping(raw.get("state")), _mapping(raw.get("store")))
    server = _mapping(raw.get("server"))
    host = str(server.get("host", "127.0.0.1"))
    if not tenants and not _flag(server.get("allow_anonymous", False)) and not _is_loopback(host):
        problems.append(
            f"server.host: {host!r} is not loopback and no tenants are configured; "
            "add tenants with keys or set server.allow_anonymous: true"
        )
    return problems


def _judge_problems(tasks: dict[str, Any], tenants: dict[str, Any], targets: dict[str, Any]) -> list[str]:
    """Each ``safety.judge.target`` (a task's, a tenant's, a tenant's per task) must be a target."""
    places = [(f"tasks.{n}.safety", _mapping(t).get("safety")) for n, t in tasks.items()]
    for tname, tenant in tenants.items():
        places.append((f"tenants.{tname}.safety", _mapping(tenant).get("safety")))
        for task, each in _mapping(_mapping(tenant).get("task_safety")).items():
            places.append((f"tenants.{tname}.task_safety.{task}", each))
    problems = []
    for where, safety in places:
        target = _mapping(_mapping(safety).get("judge")).get("target")
        if isinstance(target, str) and target not in targets:
            problems.append(f"{where}.judge.target: unknown target {target!r}{nearest(target, targets)}")
    return problems


def _retention_problems(rules: Any, tasks: dict[str, Any], tenants: dict[str, Any]) -> list[str]:
    """Retention rules name known tenants and tasks, each (tenant, task) pair once."""
    problems: list[str] = []
    seen: set[tuple[Any, Any]] = set()
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        rule = _mapping(rule)
        tenant, task = rule.get("tenant"), rule.get("task")
        if task is not None and task not in tasks:
            problems.append(f"retention.rules[{i}].task: unknown task {task!r}{nearest(task, tasks)}")
        if tenant is not None and tenant not in tenants:
            problems.append(f"retention.rules[{i}].tenant: unknown tenant {tenant!r}{nearest(tenant, tenants)}")
        pair = (str(tenant) if tenant is not None else None, str(task) if task is not None else None)
        if pair in seen:
            problems.append(f"retention.rules[{i}]: a second rule for tenant {tenant!r} and task {task!r}")
        seen.add(pair)
    return problems


def _escalation_problems(tasks: dict[str, Any], targets: dict[str, Any]) -> list[str]:
    """``output.escalate.to`` names a target or ``human``, never both at once."""
    problems: list[str] = []
    for name, task in tasks.items():
        escalate = _mapping(_mapping(_mapping(task).get("output")).get("escalate"))
        to = escalate.get("to")
        if not isinstance(to, str) or not to:
            continue  # the field check reports it
        where = f"tasks.{name}.output.escalate.to"
        if to == HUMAN and HUMAN in targets:
            problems.append(f"{where}: {HUMAN!r} is ambiguous: a target has that name; rename the target")
        elif to != HUMAN and to not in targets:
            problems.append(f"{where}: unknown target {to!r} (a target's name, or {HUMAN!r})")
    return problems


# The Bedrock embedding models turnout can call (InvokeModel bodies: turnout.providers.bedrock.embed).
_BEDROCK_EMBEDDERS = re.compile(r"(^|[./])(amazon\.titan-embed-text-v2|cohere\.embed-(english|multilingual)-v3)")


def _embedding_problems(tasks: dict[str, Any], targets: dict[str, Any]) -> list[str]:
    """A route keeps to one kind (text or embedding) and one embedding space: a fallback to
    another space would write vectors an index cannot compare. Output checks read text."""
    problems: list[str] = []
    for name, target in targets.items():
        target = _mapping(target)
        model = target.get("model")
        bedrock = target.get("embedding_space") and target.get("provider") == "bedrock"
        if bedrock and isinstance(model, str) and not _BEDROCK_EMBEDDERS.search(model):
            problems.append(
                f"targets.{name}.model: {model!r} is not a Bedrock embedding model turnout calls "
                "(amazon.titan-embed-text-v2:0, cohere.embed-english-v3, cohere.embed-multilingual-v3)"
            )
    for name, task in tasks.items():
        route = _mapping(task).get("route")
        steps = enumerate(route if isinstance(route, list) else [])
        listed = [(i, t) for i, t in steps if isinstance(t, str) and t in targets]
        if not listed:
            continue
        first = listed[0][1]
        space = _mapping(targets[first]).get("embedding_space")
        for i, target in listed[1:]:
            other = _mapping(targets[target]).get("embedding_space")
            if (other is None) != (space is None):
                embeds, text = (target, first) if other is not None else (first, target)
                problems.append(
                    f"tasks.{name}.route[{i}]: {embeds!r} embeds and {text!r} does not: "
                    "a route holds text targets or embedding targets, not both"
                )
            elif other != space:
                problems.append(
                    f"tasks.{name}.route[{i}]: {target!r} is in embedding space {other!r}, {first!r} in {space!r}: "
                    "a fallback across spaces would corrupt an index"
                )
        if space is not None and _mapping(task).get("output") is not None:
            problems.append(f"tasks.{name}.output: output checks read text answers; this task embeds")
        to = _mapping(_mapping(_mapping(task).get("output")).get("escalate")).get("to")
        if isinstance(to, str) and to in targets and _mapping(targets[to]).get("embedding_space"):
            problems.append(f"tasks.{name}.output.escalate.to: {to!r} embeds; escalate to a text target")
    return problems


def embedding_tasks(config: Config) -> frozenset[str]:
    """The tasks whose route embeds (checked at load to keep to one kind): the embeddings door's."""
    return frozenset(
        name for name, task in config.tasks.items() if config.targets[task.route[0]].embedding_space is not None
    )


def _price_book_problems(book: Any, targets: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    seen: dict[str, int] = {}
    for i, version in enumerate(book if isinstance(book, list) else []):
        version = _mapping(version)
        for name in _mapping(version.get("targets")):
            if name not in targets:
                problems.append(f"prices[{i}].targets.{name}: unknown target {name!r}")
        when = str(version.get("effective"))
        if when in seen:
            problems.append(f"prices[{i}].effective: {when} is also the date of prices[{seen[when]}]")
        seen.setdefault(when, i)
    return problems


def _credential_problems(targets: dict[str, Any]) -> list[str]:
    """An OpenAI-compatible target with credentials in a base URL and an api_key: the HTTP
    client sends URL credentials as Basic auth and refuses them next to a Bearer key."""
    problems: list[str] = []
    for name, target in targets.items():
        target = _mapping(target)
        if target.get("provider") != "openai" or not target.get("api_key"):
            continue
        listed = target.get("base_urls")
        urls = listed if isinstance(listed, list) else [target.get("base_url")]
        if any(isinstance(url, str) and _url_user(url) for url in urls):
            problems.append(f"targets.{name}.api_key: give credentials in base_url or as api_key, not both")
    return problems


def _url_user(url: str) -> str | None:
    try:
        return urlsplit(url).username
    except ValueError:
        return None  # the URL's own check reports it


def _store_problems(store: dict[str, Any]) -> list[str]:
    if store.get("kind") != "postgres":
        return []
    dsn = store.get("dsn")
    if not dsn:
        return ["store.dsn: required when store.kind is postgres, e.g. postgresql://user@host:5432/db"]
    if isinstance(dsn, str) and not re.match(r"^postgres(ql)?://", dsn):
        return ["store.dsn: must start with postgresql:// or postgres://, e.g. postgresql://user@host:5432/db"]
    return []


def _state_problems(state: dict[str, Any], store: dict[str, Any]) -> list[str]:
    if state.get("kind") != "postgres":
        return []
    dsn = state.get("dsn") or (store.get("dsn") if store.get("kind") == "postgres" else None)
    if not dsn:
        return ["state.dsn: required when state.kind is postgres and the ledger is not in PostgreSQL"]
    if isinstance(dsn, str) and not re.match(r"^postgres(ql)?://", dsn):
        return ["state.dsn: must start with postgresql:// or postgres://, e.g. postgresql://user@host:5432/db"]
    return []


def _mapping(node: Any) -> dict[str, Any]:
    return node if isinstance(node, dict) else {}


def _flag(value: Any) -> bool:
    # Read a boolean as the model will ("false" is False), so the check cannot fail open.
    try:
        return TypeAdapter(bool).validate_python(value)
    except ValidationError:
        return False


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


DEFAULT = {
    "targets": {"local": {"provider": "local"}},
    "tasks": {"default": {"route": ["local"], "description": "the embedded SmolLM2 model"}},
}


def default_config() -> Config:
    return validate(DEFAULT)


def load_config(path: str | Path | None, env: dict[str, str] | None = None) -> Config:
    """Load, substitute ``${VAR}`` / ``${VAR:-default}`` and validate; raise ConfigError with
    every problem found."""
    if path is None:
        return default_config()
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from exc
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: the top level must be a mapping"])
    problems: list[str] = []
    raw = _substitute(raw, "", os.environ if env is None else env, problems)
    if problems:
        raise ConfigError(problems)
    return validate(raw)


def validate(raw: dict[str, Any]) -> Config:
    problems = cross_problems(raw)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_problems(exc) + problems) from exc
    if problems:
        raise ConfigError(problems)
    return config


def _problems(exc: ValidationError) -> list[str]:
    out: list[str] = []
    for err in exc.errors():
        loc = _path(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + nearest(err["loc"][-1], keys_at(Config, err["loc"]))
        elif err["type"] == "union_tag_invalid":
            msg = f"unknown provider {err.get('input', {}).get('provider')!r} (expected {', '.join(PROVIDERS)})"
        elif err["type"] == "union_tag_not_found":
            msg = f"missing 'provider' ({', '.join(PROVIDERS)})"
        out.append(f"{loc}: {msg}" if loc else msg)
    return out


def _path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for i, item in enumerate(loc):
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif i == 2 and loc[0] == "targets" and item in PROVIDERS:
            continue  # the discriminator's branch name is not a key the user wrote
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def _substitute(node: Any, where: str, env: Any, problems: list[str]) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, f"{where}.{k}" if where else str(k), env, problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, f"{where}[{i}]", env, problems) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:

        def repl(m: re.Match[str]) -> str:
            value = env.get(m.group(1))
            if m.group(2) is not None and not value:
                return m.group(2)  # as in the shell, ":-" also covers a variable set but empty
            if value is None:
                problems.append(f"{where}: environment variable {m.group(1)} is not set")
                return ""
            return str(value)

        return _VAR.sub(repl, node)
    return node


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys instead of keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
