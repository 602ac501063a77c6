"""The start-up summary: a few INFO lines, once the runtime has started, that say what this
gateway is: its config file, address, tasks, targets, stores and limits.

Names, providers and counts only: never a key, a password or a URL (a base URL or a DSN may
carry credentials, in its userinfo or its query), so a store or Redis is named by host, port
and database at most. The log handler redacts the lines too, as it does every line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from urllib.parse import urlsplit

from turnout.config import LocalTarget, OpenAITarget, TargetConfig
from turnout.ledger.writer import spill_dir
from turnout.serving.runtime import Runtime

log = logging.getLogger("turnout")

MAX_ITEMS = 12  # names listed on one line; the rest are counted


def log_summary(runtime: Runtime, source: str | None) -> None:
    cfg = runtime.config
    fields = {
        "config": config_name(source),
        "address": address(cfg.server.host, cfg.server.port),
        "tasks": len(cfg.tasks),
        "targets": len(cfg.targets),
    }
    for line in lines(runtime, source):
        log.info("%s", line, extra={"fields": fields})


def lines(runtime: Runtime, source: str | None) -> list[str]:
    cfg = runtime.config
    srv = cfg.server
    tenants = f"{len(cfg.tenants)} tenant(s)" if cfg.tenants else "no tenants (anonymous access)"
    return [
        f"turnout started: config {config_name(source)}; listening on {address(srv.host, srv.port)}; {tenants}; "
        f"log format {srv.log_format}, access log {'on' if srv.access_log else 'off'}",
        "tasks: " + _listed((f"{name} → {', '.join(task.route)}" for name, task in cfg.tasks.items()), "; "),
        "targets: " + _listed(f"{name} ({target_kind(t)})" for name, t in cfg.targets.items()),
        "stores: " + "; ".join(stores(runtime)),
    ]


def config_name(source: str | None) -> str:
    return os.path.abspath(source) if source else "built-in"


def address(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def target_kind(target: TargetConfig) -> str:
    """The provider, and how many replicas: never a URL, a model path or a key."""
    if isinstance(target, OpenAITarget):
        n = len(target.urls)
        kind = f"openai, {n} replica{'s' if n > 1 else ''}"
        if target.balance != "least_loaded":
            kind += f", {target.balance}"
        if target.load is not None:  # the replicas' own /metrics, read in the background
            kind += f", load read every {target.load.interval_s:g}s"
        return kind
    if isinstance(target, LocalTarget):
        return "local, embedded llama.cpp"
    return f"bedrock, {target.region}"


def stores(runtime: Runtime) -> list[str]:
    cfg = runtime.config
    st = cfg.store
    if st.kind == "none":
        ledger = "ledger off"
    elif st.kind == "memory":
        ledger = "ledger in memory"
    elif st.kind == "sqlite":
        ledger = f"ledger sqlite {st.path}"
    else:
        ledger = f"ledger postgres {dsn_place(st.dsn)}" + (f" schema {st.pg_schema}" if st.pg_schema else "")
    spill = spill_dir(st)
    if spill is not None:
        ledger += f" (spill journal {spill})"
    out = [ledger]
    if runtime.releases is not None:
        place = cfg.state_at(cfg.releases.store_path)
        out.append(f"releases {place if isinstance(place, str) else 'postgres ' + place.shown}")
    lim = cfg.limits
    if lim.backend == "redis":
        out.append(f"limits and keys redis {url_place(lim.redis_url)}")
    else:
        out.append(f"limits in memory, issued keys {lim.keys_path}" if cfg.tenants else "limits in memory")
    if runtime.capture is not None:
        out.append(f"text capture on ({cfg.capture.mode} by default)")
    return out


def url_place(url: str) -> str:
    """``host:port/path`` of a URL: no scheme's userinfo, no query, no fragment."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "(an unreadable URL)"
    if not host:
        return parts.path or "(no host)"  # e.g. unix:///run/redis.sock
    place = f"[{host}]" if ":" in host else host
    return f"{place}:{port}{parts.path}" if port else f"{place}{parts.path}"


def dsn_place(dsn: str | None) -> str:
    """Where a PostgreSQL DSN points, as ``host:port/dbname``: a URL's or a keyword string's."""
    if not dsn:
        return "(libpq defaults)"
    if "://" in dsn:
        return url_place(dsn)
    words = dict(w.split("=", 1) for w in dsn.split() if "=" in w)
    host = words.get("host", "localhost")
    port = f":{words['port']}" if "port" in words else ""
    return f"{host}{port}/{words.get('dbname', '')}"


def _listed(items: Iterable[str], sep: str = ", ") -> str:
    names = list(items)
    if not names:
        return "none"
    more = f" and {len(names) - MAX_ITEMS} more" if len(names) > MAX_ITEMS else ""
    return sep.join(names[:MAX_ITEMS]) + more
