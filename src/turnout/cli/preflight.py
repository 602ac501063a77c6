"""What the gateway's start-up would refuse, found without starting it: ``turnout check`` and
``turnout serve`` (before it binds) both run ``preflight``, so a config that passes the one
starts the other.

The config's own rules (key lengths, known names, the price book, the PostgreSQL DSN, URL
credentials) are checked when it loads (``turnout.config``). What is left depends on this
machine, and is checked here with the functions start-up itself calls, under the conditions
it calls them (``turnout.serving.runtime``):

* ``TURNOUT_REDACTION_KEY``, read when ``capture.redaction_key`` is unset: the log filter
  keys its redactor with it on every start;
* ``FORWARDED_ALLOW_IPS``, read when ``server.forwarded_allow_ips`` is unset: addresses,
  networks or ``*``, as the config's own;
* ``TURNOUT_ADMIN_KEY`` and ``TURNOUT_VIEWER_KEY``, read when ``server.admin_key`` or
  ``viewer_key`` is unset: as long as the config's own (``MIN_ADMIN_KEY`` characters);
* ``AWS_BEARER_TOKEN_BEDROCK``, with a Bedrock target: one line, as a header must be;
* the optional drivers each chosen backend needs (ledger store, shared state, key store,
  limiter, every target's provider, tracing) and the Redis URL, parsed as the limiter parses it;
* each local target's model file;
* each ``targets.X.tokenizer``: the ``tokenizers`` package, and the file loaded with it;
* the release files under ``releases.path``, loaded and checked against the config;
* every SQLite file start-up opens (ledger; capture, also the retention purge's audit; keys;
  releases, also for the review queue; the shadow store and the cache purge log beside them;
  with ``state.kind: postgres`` capture and releases are not files): its directory must be
  one that can be created and written; so must the ledger's spill journal directory;
* ``PROMETHEUS_MULTIPROC_DIR``, with metrics on: a directory;
* with ``--workers`` above 1 (``shared_state``): no state that each worker would hold on its
  own while the product promises one (limits, issued keys' store, the ledger, the cache).

Every problem names the key path (or the environment variable, or the release file).
Reachability (PostgreSQL, Redis, upstreams) is not checked (``check --probe`` contacts the
upstreams): a check may run where the stores are out of reach. Start-up waits for no upstream;
a store that refuses it ends it, exit 1, with one log line; one that does not answer
(PostgreSQL, Redis for issued keys) is opened in the background while the gateway is unready.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from turnout._support.backends import Backend, load
from turnout.cache.factory import wanted as cache_wanted
from turnout.cache.purges import purge_log_path
from turnout.config import MIN_ADMIN_KEY, Config, LocalTarget, ServerConfig, redaction_key_problem
from turnout.control.keys.factory import KEY_STORES
from turnout.control.pricing import PriceBook
from turnout.control.quota.factory import LIMITERS
from turnout.control.quota.gate import QuotaGate
from turnout.control.tokens import Tokens
from turnout.errors import ConfigError
from turnout.ledger.store import BACKENDS
from turnout.ledger.writer import spill_dir
from turnout.privacy.capture import capture_path
from turnout.privacy.retention.rules import Rules
from turnout.providers.registry import PROVIDERS
from turnout.releases.files import load_all
from turnout.releases.shadowstore import shadow_path
from turnout.serving.runtime import capture_wanted, reviews_wanted
from turnout.serving.scoring import build as live_scorers

TRACING = {"otlp": Backend("turnout.observe.tracing:Tracing", ("opentelemetry",), "observability")}
STATE = {"postgres": Backend("turnout._support.pgworker:PostgresWorker", ("psycopg",), "postgres")}
MEMORY = ":memory:"


def preflight(config: Config, env: Mapping[str, str] | None = None) -> list[str]:
    """Every problem that would stop the gateway from starting on ``config`` here; ``env``
    defaults to this process's environment."""
    env = os.environ if env is None else env
    problems = _redaction_key(config, env) + _admin_keys(config, env) + _metrics_dir(config, env)
    problems += _forwarded(config, env) + _bedrock_token(config, env)
    problems += _backends(config)
    problems += _collect(load_all, config)
    problems += _collect(Tokens.from_config, config)  # each targets.X.tokenizer: the package, the file
    problems += _collect(live_scorers, config)  # each tasks.T.scoring scorer's arguments
    problems += _sqlite_files(config)
    problems += _spill_dir(config)
    return problems


def shared_state(config: Config, workers: int) -> list[str]:
    """What ``workers`` processes could not share: each would count its own limits, keep its
    own ledger or cache. SQLite files are shared (WAL, a busy timeout: ``_support/sqlite``)."""
    if workers < 2:
        return []
    why = f"with --workers {workers}, each worker would hold its own"
    problems = []
    if config.limits.backend == "memory" and _limited(config):
        problems.append(f"limits.backend: memory: {why} limits (a tenant would get {workers}x its RPM); use redis")
    if config.store.kind == "memory":
        problems.append(f"store.kind: memory: {why} ledger; use sqlite or postgres")
    if cache_wanted(config) and config.cache.backend == "memory":
        problems.append(f"cache.backend: memory: {why} cache; use redis")
    return problems


def _collect(step: Callable[..., object], *args: Any) -> list[str]:
    """``step(*args)``'s ConfigError as its problems; none if it returns."""
    try:
        step(*args)
    except ConfigError as exc:
        return exc.problems
    return []


def _redaction_key(config: Config, env: Mapping[str, str]) -> list[str]:
    if config.capture.redaction_key:
        return []  # checked at load
    key = env.get("TURNOUT_REDACTION_KEY")
    problem = redaction_key_problem(key) if key else None
    return [f"TURNOUT_REDACTION_KEY (capture.redaction_key is unset): {problem}"] if problem else []


def _admin_keys(config: Config, env: Mapping[str, str]) -> list[str]:
    problems = []
    for field, name in (("admin_key", "TURNOUT_ADMIN_KEY"), ("viewer_key", "TURNOUT_VIEWER_KEY")):
        key = env.get(name)
        if getattr(config.server, field) is not None or not key:
            continue
        if len(key) < MIN_ADMIN_KEY:
            problems.append(
                f"{name} (server.{field} is unset): needs at least {MIN_ADMIN_KEY} characters, got {len(key)}"
            )
        if not key.isprintable():  # no client can present it: /admin/* and the console stay shut
            problems.append(f"{name} (server.{field} is unset): holds a control character (a trailing line break?)")
        owners = [t for t, tenant in config.tenants.items() if key in tenant.keys]
        if owners:
            problems.append(f"{name}: is also a key of tenant {owners[0]!r}: a tenant key must be its own")
    return problems


def _bedrock_token(config: Config, env: Mapping[str, str]) -> list[str]:
    """``AWS_BEARER_TOKEN_BEDROCK``, read by every Bedrock target: with a secret file's trailing
    line break, the HTTP client refused the header and every request was a 500."""
    token = env.get("AWS_BEARER_TOKEN_BEDROCK")
    bedrock = [name for name, target in config.targets.items() if target.provider == "bedrock"]
    if not token or not bedrock or token.isprintable():
        return []
    reads = f"AWS_BEARER_TOKEN_BEDROCK (targets.{bedrock[0]} is bedrock)"
    return [f"{reads}: holds a control character (a trailing line break?)"]


def _forwarded(config: Config, env: Mapping[str, str]) -> list[str]:
    """``FORWARDED_ALLOW_IPS``, read when ``server.forwarded_allow_ips`` is unset: each entry
    as the config's own are checked (a typo would trust no proxy, silently)."""
    listed = env.get("FORWARDED_ALLOW_IPS")
    if config.server.forwarded_allow_ips is not None or not listed:
        return []
    try:
        ServerConfig(forwarded_allow_ips=[e.strip() for e in listed.split(",")])
    except ValidationError as exc:
        return [
            f"FORWARDED_ALLOW_IPS (server.forwarded_allow_ips is unset): {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        ]
    return []


def _metrics_dir(config: Config, env: Mapping[str, str]) -> list[str]:
    where = env.get("PROMETHEUS_MULTIPROC_DIR")
    if not config.observability.metrics or not where or os.path.isdir(where):
        return []
    return [f"PROMETHEUS_MULTIPROC_DIR (observability.metrics is on): {where} is not a directory"]


def _backends(config: Config) -> list[str]:
    """Load each backend start-up loads (a missing driver is a ConfigError), then what the
    loaded ones read from the config: the Redis URL, local model files."""
    problems: list[str] = []
    if config.store.kind != "none":
        problems += _collect(load, BACKENDS, config.store.kind, "store.kind")
    if config.state.kind == "postgres":
        problems += _collect(load, STATE, "postgres", "state.kind")
    if config.observability.otlp_endpoint:
        problems += _collect(load, TRACING, "otlp", "observability.otlp_endpoint")
    limits = config.limits.backend  # issued keys (with tenants) and the limiter (with limits)
    shared = [table for table, used in ((KEY_STORES, bool(config.tenants)), (LIMITERS, _limited(config))) if used]
    missing = sorted({p for table in shared for p in _collect(load, table, limits, "limits.backend")})
    problems += missing
    if shared and not missing and limits == "redis":
        problems += _redis_url(config.limits.redis_url)
    for name, target in config.targets.items():
        failed = _collect(load, PROVIDERS, target.provider, f"targets.{name}.provider")
        if not failed and isinstance(target, LocalTarget):
            from turnout.providers.local.provider import model_path  # its driver is there: loaded above

            failed = _collect(model_path, name, target.model_path)
        problems += failed
    return problems


def _limited(config: Config) -> bool:
    """Whether start-up opens a limiter: some tenant has a limit."""
    return QuotaGate(config, None, PriceBook(config)).needed()


def _redis_url(url: str) -> list[str]:
    from redis.connection import parse_url  # the parser the limiter and the key store use

    try:
        parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        return [f"limits.redis_url: {exc}"]
    return []


def _sqlite_files(config: Config) -> list[str]:
    """The SQLite files start-up opens (it creates their directories) under the same
    conditions, each with the key that places it."""
    files: list[tuple[str, str]] = []
    if config.store.kind == "sqlite":
        files.append((config.store.path, "store.path"))
    shared = config.state.kind == "sqlite"  # else the state lives in PostgreSQL
    capturing = capture_wanted(config)
    ledger = config.store.kind in ("sqlite", "postgres")
    if shared and ledger and (capturing or Rules(config).purges):  # the purge audits its runs there
        files.append((capture_path(config.store), "store.path (the capture store beside the ledger)"))
    if config.tenants and config.limits.backend == "memory":
        files.append((config.limits.keys_path, "limits.keys_path"))
    releases = config.releases.store_path
    if shared and (reviews_wanted(config, capturing) or os.path.isdir(config.releases.path)):
        files.append((releases, "releases.store_path"))
    if shared and os.path.isdir(config.releases.path):
        files.append((shadow_path(releases), "releases.store_path (the shadow store beside it)"))
    if shared and cache_wanted(config) and config.cache.backend == "memory":
        files.append((purge_log_path(releases), "releases.store_path (the cache purge log beside it)"))
    return [f"{key}: {problem}" for path, key in files if path != MEMORY and (problem := _unwritable(Path(path)))]


def _spill_dir(config: Config) -> list[str]:
    """The ledger's spill journal: a directory start-up creates (owner-only) and appends to."""
    where = spill_dir(config.store)
    if where is None:
        return []
    if where.exists():
        if not where.is_dir():
            return [f"store.spill_dir: {where} is not a directory"]
        return [] if os.access(where, os.W_OK | os.X_OK) else [f"store.spill_dir: {where} is not writable"]
    problem = _unwritable(where)
    return [f"store.spill_dir: {problem}"] if problem else []


def _unwritable(path: Path) -> str | None:
    """Why SQLite could not create or open ``path`` for writing, or None."""
    if path.exists():
        if path.is_dir():
            return f"{path} is a directory, not a database file"
        return None if os.access(path, os.R_OK | os.W_OK) else f"{path} is not writable"
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot create {path}: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create {path}: {parent} is not writable"
    return None
