"""The config's sections as typed, frozen models (pydantic at the edge): ``Config`` and every
section under it, each field's default and bounds, and the checks one section can make alone.
Checks across sections are ``turnout.config.checks``'; reading a file is ``turnout.config.load``'s."""

from __future__ import annotations

import functools
import ipaddress
import re
import typing
import urllib.parse
from collections.abc import Callable
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from yarl import URL

from turnout._support.places import PgPlace, Place

DATA_CLASSES = ("public", "internal", "confidential", "restricted")
DataClass = Literal["public", "internal", "confidential", "restricted"]


class _Strict(BaseModel):
    # Numbers are finite: ``.inf`` or ``1e400`` for "unlimited" would pass start-up and then
    # fail every request that reaches them (an infinite budget, price or timeout).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        """YAML reads ``on``, ``yes`` and ``true`` as a boolean, which pydantic would take as 1
        for a number: ``ledger_days: on`` would keep rows one day. A boolean is refused there."""
        if isinstance(data, dict):
            numbers = _number_fields(cls)
            for name, value in data.items():
                if type(value) is bool and name in numbers:
                    raise ValueError(f"{name!r} must be a number, not {str(value).lower()}")
        return data


def _redis_url(url: str) -> str:
    """What redis-py's ``from_url`` takes: ``redis://``, ``rediss://`` or ``unix://``, and a
    database number as the path; anything else is refused here, not at the first request."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"must start with redis://, rediss:// or unix:// (got {parts.scheme or 'no'} scheme)")
    if parts.scheme != "unix":
        if not parts.hostname:
            raise ValueError("names no host (redis://HOST:PORT/DB)")
        database = parts.path.strip("/")
        if database and not database.isdigit():
            raise ValueError(f"the database must be a number (redis://HOST:PORT/0), not {database!r}")
        try:
            parts.port  # noqa: B018 - parsed for its ValueError
        except ValueError as exc:
            raise ValueError(f"bad port ({exc})") from None
    return url


RedisUrl = Annotated[str, AfterValidator(_redis_url)]
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # in a header value: every control character but tab


def _one_line(text: str) -> str:
    """A key or name that travels in an HTTP header: no control character. A secret file's
    trailing line break (``${KEY}`` from a mounted Secret) made the HTTP client refuse the
    upstream's key at start-up, a bearer key no client can present, or a model name that broke
    every answer's X-Turnout-Model-Version header (an empty reply)."""
    if _CONTROL.search(text):
        raise ValueError("holds a control character (a trailing line break from a secret file?)")
    return text


OneLine = Annotated[str, AfterValidator(_one_line)]

# A URL's user information (``user:password@``, to the last ``@``: a password may hold ``@``,
# ``/`` or ``?``) and its query and fragment (``?api_key=…``).
_URL_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)?.*@", re.DOTALL)
_URL_QUERY = re.compile(r"[?#].*", re.DOTALL)


def shown_url(url: str) -> str:
    """``url`` as a config error may print it: what may carry a credential (``user:password@``,
    the query string, a "port" that is no number: ``user:password`` without its ``@host``)
    masked, the rest kept so the typo can be found."""
    shown = _URL_QUERY.sub("?…", _URL_USERINFO.sub(r"\1…@", url, count=1), count=1)
    scheme, sep, rest = shown.partition("://")
    authority, slash, path = rest.partition("/")
    host, colon, port = authority.rpartition(":")
    if sep and colon and not port.isdigit() and "]" not in port:
        return f"{scheme}://{host}:…{slash}{path}"
    return shown


_BLANK_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")


def http_url_problem(url: str) -> str | None:
    """Why ``url`` is no base the HTTP clients can call (parsed by yarl, as they parse it), or
    None. A bad port or an unclosed ``[`` passed ``check`` and then ended ``serve``'s start-up
    in a traceback (or failed every request); a query or a fragment swallowed the paths
    appended to it. Never quotes the URL: it may hold a password."""
    if not re.match(r"^https?://[^/]", url):
        return "must start with http:// or https://"
    if _BLANK_OR_CONTROL.search(url):
        return "holds a space or a control character (a trailing line break from a secret file?)"
    try:
        parsed = URL(url)
        port = parsed.port
    except ValueError:
        return "has a host or port no HTTP client takes (a port is 1-65535; an IPv6 address goes in [...])"
    if not parsed.host:
        return "names no host"
    if port == 0:
        return "has port 0 (a port is 1-65535)"
    if "?" in url or "#" in url:
        return "has a query or a fragment, which the API's paths would be appended after"
    return None


def _refusing(problem_of: Callable[[str], str | None]) -> AfterValidator:
    """A field's check: the value, unless ``problem_of`` finds a problem in it (the message)."""

    def check(value: str) -> str:
        problem = problem_of(value)
        if problem:
            raise ValueError(problem)
        return value

    return AfterValidator(check)


HttpUrl = Annotated[str, _refusing(http_url_problem)]


def _otlp_url(url: str) -> str:
    """The collector's OTLP/HTTP endpoint. Its gRPC form (``collector:4317``) or a bare host was
    taken, and at export every span was dropped, with a line in the log and nothing said by
    ``turnout check``. Empty (an unset variable substituted) is no tracing, as unset is."""
    problem = http_url_problem(url) if url else None
    if problem:
        raise ValueError(f"{problem} (OTLP over HTTP, e.g. http://collector:4318): {shown_url(url)!r}")
    return url


def _proxy(entry: str) -> str:
    """A trusted proxy: ``*``, an address or a network. uvicorn takes anything else as a name
    that no TCP peer has: a typo (``10.0.0.0/33``) would trust no proxy, and say nothing."""
    if entry.strip() != "*":
        try:
            ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{entry!r} is not an address, a network (10.0.0.0/8) or '*'") from None
    return entry


_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")  # a host name's label (underscores: as resolvers take them)


def host_problem(host: str) -> str | None:
    """Why ``host`` is no address ``serve`` can listen on (an IP address or a host name), or
    None. A line break from a secret file, a URL or ``host:port`` failed only at bind ("name or
    service not known") after ``check`` passed it; an empty one bound every interface."""
    if not host:
        return "is empty: give an address to listen on (127.0.0.1; 0.0.0.0 for every interface)"
    if _BLANK_OR_CONTROL.search(host):
        return "holds a space or a control character (a trailing line break from a secret file?)"
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if host.startswith("["):
        return "an IPv6 address goes without brackets (::1, not [::1])"
    if "/" in host:
        return "is a URL or a path; give an address or a host name (the port is server.port)"
    if ":" in host:
        return "is neither an IPv6 address nor a host name (a port goes in server.port)"
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return "is not an IP address or a host name (letters, digits, '-' and '.')"
    if labels[-1].isdigit():
        return "is not an IPv4 address (four numbers 0-255: 127.0.0.1)"
    return None


CACHE_TTL_MAX_S = 10 * 365 * 86_400  # ten years; Redis's expiry in ms and its clock take that
MIN_ADMIN_KEY = 16  # characters of server.admin_key and viewer_key (and their environment variables)
AdminKey = Annotated[str, StringConstraints(min_length=MIN_ADMIN_KEY), AfterValidator(_one_line)]


@functools.cache
def _number_fields(model: type[BaseModel]) -> frozenset[str]:
    """The fields of ``model`` that take only numbers (int, float, or either or None)."""
    numeric = {int, float, type(None)}
    found = set()
    for name, info in model.model_fields.items():
        kinds = set(typing.get_args(info.annotation)) or {info.annotation}
        if kinds <= numeric and kinds - {type(None)}:
            found.add(name)
    return frozenset(found)


class ServerConfig(_Strict):
    host: Annotated[str, _refusing(host_problem)] = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(1_048_576, gt=0)
    # Without tenants there is no authentication; that is allowed on loopback only unless the
    # operator says so explicitly.
    allow_anonymous: bool = False
    shutdown_grace_s: float = Field(15.0, ge=0)
    # Slow and idle clients (turnout.serving.connections): the headers must arrive within
    # header_timeout_s of the request's first byte (or of the connection's start), the whole body
    # within body_timeout_s after them; an idle keep-alive connection closes after
    # keepalive_timeout_s; a client that takes none of its answer (a stream it stopped reading)
    # for send_timeout_s is dropped, its request ending as one the client left (499).
    # max_connections: open client connections at most (None: half the open-file limit, which
    # ``serve`` raises to its hard limit).
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(30.0, gt=0)
    keepalive_timeout_s: float = Field(5.0, gt=0)
    send_timeout_s: float = Field(30.0, gt=0)
    max_connections: int | None = Field(None, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Logs (turnout.observe.logs): text lines, or JSON lines for log shippers. access_log: one
    # line per API request (id, task, tenant, target, status, latency; never text), at INFO.
    log_format: Literal["text", "json"] = "text"
    access_log: bool = False
    # The proxies whose X-Forwarded-For and X-Forwarded-Proto are believed (addresses or
    # networks; "*": any peer). The client's address then comes from the header: the console's
    # failed-login throttle counts per client, not per proxy. Unset: FORWARDED_ALLOW_IPS, else
    # 127.0.0.1 (uvicorn's default).
    forwarded_allow_ips: list[Annotated[str, AfterValidator(_proxy)]] | None = None
    # Guards /admin/*; also read from TURNOUT_ADMIN_KEY. Unset: /admin/* is closed. At least
    # MIN_ADMIN_KEY characters: it guards every tenant's keys, releases and review queue.
    admin_key: AdminKey | None = None
    # The console (/ui) read-only: sees every page, changes nothing. Also TURNOUT_VIEWER_KEY.
    viewer_key: AdminKey | None = None


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
    # Set: /metrics asks for it (or the admin key) as a bearer token, for its figures name every
    # tenant and task with their spend. Unset: open to whoever reaches the port.
    metrics_key: AdminKey | None = None
    otlp_endpoint: Annotated[str, AfterValidator(_otlp_url)] | None = None  # traces: OTLP/HTTP; unset: none
    service_name: str = "turnout"


class LimitsConfig(_Strict):
    """Where limits, budgets and issued keys live. ``memory``: this process (one replica; keys in
    a SQLite file). ``redis``: shared by every replica (keys in Redis too)."""

    backend: Literal["memory", "redis"] = "memory"
    redis_url: RedisUrl = "redis://127.0.0.1:6379/0"
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
    """A target's own price: per token. A GPU fleet's price is a price-book entry (``prices``)."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cached_input_per_mtok: float | None = Field(None, ge=0)  # default: the input price
    cache_write_per_mtok: float | None = Field(None, ge=0)  # default: the input price

    @model_validator(mode="before")
    @classmethod
    def _per_token(cls, value: Any) -> Any:
        hosted = [k for k in _SELF_HOSTED if isinstance(value, dict) and k in value]
        if hosted:
            raise ValueError(
                f"{', '.join(hosted)}: a target's price is per token (input_per_mtok, output_per_mtok); "
                "price a GPU fleet in the price book: prices: [{effective: DATE, targets: {NAME: {gpu_hour_usd: …}}}]"
            )
        return value


_MANAGED = ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok", "cache_write_per_mtok")
_SELF_HOSTED = ("gpu_hour_usd", "gpus", "replicas", "schedule", "allocation", "tokens_per_s", "max_concurrency")
_HOURS = re.compile(r"^\s*(\d{1,2})\s*(?:-\s*(\d{1,2})\s*)?$")


class PriceEntry(_Strict):
    """One target's price in a price-book version: managed (USD per 1M tokens) or self-hosted
    (a fleet of replicas billed by the GPU-hour). See ``turnout.control.pricing`` for the arithmetic."""

    input_per_mtok: float | None = Field(None, ge=0)
    output_per_mtok: float | None = Field(None, ge=0)
    cached_input_per_mtok: float | None = Field(None, ge=0)
    cache_write_per_mtok: float | None = Field(None, ge=0)
    gpu_hour_usd: float | None = Field(None, ge=0)
    gpus: int = Field(1, gt=0, description="GPUs per replica")
    replicas: int = Field(1, ge=0, description="replicas up in the hours the schedule does not list")
    schedule: dict[str, int] = Field({}, description='replicas by UTC hour of day: {"0-7": 1, "8-19": 3}')
    allocation: Literal["busy_seconds", "tokens"] = "busy_seconds"
    tokens_per_s: float | None = Field(None, gt=0, description="prompt+completion tokens/s one replica serves")
    max_concurrency: int = Field(1, gt=0, description="requests one replica serves at once (busy_seconds)")

    @field_validator("schedule", mode="before")
    @classmethod
    def _hours_as_text(cls, value: Any) -> Any:
        # YAML reads a bare hour (`8: 3`) as a number; the schedule's keys are text ("8", "0-7").
        if isinstance(value, dict):
            return {str(k) if type(k) is int else k: v for k, v in value.items()}
        return value

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
    model_version: OneLine | None = None  # sent back in X-Turnout-Model-Version
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


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP header name (RFC 9110's token)


class OpenAITarget(_TargetBase):
    provider: Literal["openai"]
    base_url: str | None = None
    base_urls: list[str] | None = None
    model: OneLine
    api_key: OneLine | None = None
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
    # The server is vLLM or SGLang: a conversation that ends with an assistant message (a
    # prefill, as Anthropic's Messages API continues it) is sent with continue_final_message and
    # without a generation prompt, so the answer goes on from that message instead of starting a
    # new turn. Off by default: OpenAI and other servers refuse or ignore the fields.
    continue_final_message: bool = False

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
            problem = http_url_problem(url)
            if problem:
                raise ValueError(f"base URL {problem}: {shown_url(url)!r}")
        return self

    @field_validator("headers")
    @classmethod
    def _http_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        # The HTTP client refuses these when the target is built: a start-up that crashed.
        for name, value in headers.items():
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"{name!r} is not an HTTP header name (letters, digits, - and the like)")
            if _CONTROL.search(value):
                raise ValueError(f"the value of {name!r} holds a control character (a line break?)")
        return headers

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
    model: OneLine = Field(min_length=1, description="model id, inference profile (us./eu./global.) or ARN")
    endpoint_url: HttpUrl | None = None
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
    unless ``allow_sampled``. ``max_mb``: the in-process backend holds at most this much memory
    for the task's answers, their keys and bookkeeping counted (least recently used go first);
    no answer larger than it is stored."""

    ttl_s: float = Field(gt=0, le=CACHE_TTL_MAX_S)
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
    keys: list[OneLine] = []  # bootstrap keys; issue more with `turnout keys create`
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
    # At 100% the active release serves nobody: the canary is compared with the active release's
    # rows of this many seconds before the step began (fewer than min_requests: with none, i.e.
    # its own error rate must stay within max_error_rate_delta).
    baseline_s: float = Field(3600.0, gt=0)
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


class ShadowJudgeConfig(_Strict):
    """``compare: judge``: a model (``target``) is shown the request, the served answer and the
    shadow's, with ``rubric``, and asked whether the shadow's says the same as well; its YES is
    agreement. Asked only where the request's data class may reach ``target``; a judge that
    fails, is slower than ``timeout_s`` or answers neither YES nor NO leaves the pair unjudged.
    Its calls count toward ``usd_per_day``, apart from the shadow's own cost."""

    target: str
    rubric: str = Field("", max_length=4000)
    timeout_s: float = Field(10.0, gt=0)


class ShadowConfig(_Strict):
    """How a task's shadow release (``turnout release shadow``) is fed, per gateway replica: at
    most ``max_concurrency`` mirrored calls at once (a request drawn while they are all busy is
    not mirrored) and at most ``usd_per_day`` of shadow spend a UTC day (reached: mirroring
    stops until the next day). ``compare``: how a shadow answer is matched with the served one
    (``auto``: as JSON when both parse, else as text with case and runs of whitespace
    ignored; ``judge``: by a model, ``judge``). ``min_pairs`` and ``min_agreement``: what the
    shadow sample must show, besides the task's ``gates``, before the release may go to canary."""

    max_concurrency: int = Field(4, gt=0)
    usd_per_day: float = Field(1.0, ge=0)
    compare: Literal["auto", "json", "text", "exact", "judge"] = "auto"
    judge: ShadowJudgeConfig | None = None
    min_pairs: int = Field(50, gt=0)
    min_agreement: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _judged(self) -> ShadowConfig:
        if (self.compare == "judge") != (self.judge is not None):
            raise ValueError("compare: judge and a judge: {target, rubric} go together")
        return self


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
    redis_url: RedisUrl | None = None  # None: limits.redis_url
    key_prefix: str = Field("turnout", min_length=1)  # keys: <prefix>:cache:...
    encryption_key: str | None = None  # e.g. ${TURNOUT_CACHE_KEY}; `openssl rand -hex 32`
    max_mb: float = Field(64.0, gt=0)  # per task in process, unless the task sets its own

    @model_validator(mode="after")
    def _sealed(self) -> CacheConfig:
        if self.backend == "redis" and not self.encryption_key:
            raise ValueError("encryption_key: required with backend redis (cached answers are prompt-derived text)")
        if self.encryption_key is not None and not self.encryption_key.strip():
            raise ValueError("encryption_key: blank (an unset variable, spaces): use `openssl rand -hex 32`")
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
    cache_ttl_s: float | None = Field(None, gt=0, le=CACHE_TTL_MAX_S)  # caps tasks.T.cache.ttl_s


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


def embedding_tasks(config: Config) -> frozenset[str]:
    """The tasks whose route embeds (checked at load to keep to one kind): the embeddings door's."""
    return frozenset(
        name for name, task in config.tasks.items() if config.targets[task.route[0]].embedding_space is not None
    )


__all__ = [
    "DATA_CLASSES",
    "HUMAN",
    "LIVE_SCORERS",
    "MIN_ADMIN_KEY",
    "MIN_CACHE_KEY_BYTES",
    "PROVIDERS",
    "BedrockTarget",
    "BreakerConfig",
    "CacheConfig",
    "CanaryConfig",
    "CaptureConfig",
    "CaptureRule",
    "ClassPolicy",
    "ClassifyConfig",
    "Config",
    "DataClass",
    "EscalateConfig",
    "EvalsConfig",
    "Gates",
    "GuardrailConfig",
    "HealthCheckConfig",
    "Limit",
    "LimitsConfig",
    "LiveScoringConfig",
    "LoadScrapeConfig",
    "LocalTarget",
    "ObservabilityConfig",
    "OpenAITarget",
    "OutputConfig",
    "Price",
    "PriceEntry",
    "PriceVersion",
    "ReleasesConfig",
    "RetentionConfig",
    "RetentionRule",
    "RetryConfig",
    "SafetyConfig",
    "SafetyJudgeConfig",
    "SafetyMode",
    "SafetyThresholds",
    "Score",
    "ScreenModes",
    "ServerConfig",
    "ShadowConfig",
    "ShadowJudgeConfig",
    "StateConfig",
    "StoreConfig",
    "TargetConfig",
    "TaskCacheConfig",
    "TaskConfig",
    "TenantConfig",
    "TimeoutsConfig",
    "ToolsConfig",
    "embedding_tasks",
    "redaction_key_problem",
]
