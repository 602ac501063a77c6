"""Checks across sections, on the raw mapping before the models are built: unknown or
duplicate names (with "did you mean"), unsafe exposure, credentials in URLs, a price book's
dates, embedding routes of one kind. Reported with the per-field problems, all at once."""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import TypeAdapter, ValidationError

from turnout._support.suggest import nearest
from turnout.config.model import HUMAN, host_problem


def cross_problems(raw: dict[str, Any]) -> list[str]:
    """Problems between sections (unknown names, duplicates, unsafe exposure), checked on the
    raw mapping so they are reported together with the per-field problems."""
    problems: list[str] = []
    targets = _mapping(raw.get("targets"))
    tasks = _mapping(raw.get("tasks"))
    for section in ("targets", "tasks", "tenants"):  # names go out in X-Turnout-* headers and logs
        for name in _mapping(raw.get(section)):
            if isinstance(name, str) and not name.isprintable():
                problems.append(f"{section}: the name {name!r} holds a control character or an unusual space")
            elif name == "":  # a task no request can name (model: "" is refused), a blank in every header
                problems.append(f"{section}: a name is empty")
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
    rules = _mapping(raw.get("capture")).get("rules")
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        rule = _mapping(rule)
        task, tenant = rule.get("task"), rule.get("tenant")
        if any(v is not None and not isinstance(v, str) for v in (tenant, task)):
            continue  # the field check reports the type
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
    server = _mapping(raw.get("server"))
    # A tenant holding the admin or viewer key would be that too: the admin API compares it first.
    owner: dict[str, str] = {
        key: f"server.{field}" for field in ("viewer_key", "admin_key") if isinstance(key := server.get(field), str)
    }
    tenants = _mapping(raw.get("tenants"))
    for tname, tenant in tenants.items():
        keys = _mapping(tenant).get("keys")
        for i, key in enumerate(keys if isinstance(keys, list) else []):
            if not isinstance(key, str):
                continue
            if len(key) < 8:
                problems.append(f"tenants.{tname}.keys[{i}]: key is shorter than 8 characters")
            if key in owner and owner[key].startswith("server."):
                problems.append(f"tenants.{tname}.keys[{i}]: key is also {owner[key]}: a tenant key must be its own")
            elif key in owner:
                problems.append(f"tenants.{tname}.keys[{i}]: key also belongs to tenant {owner[key]!r}")
            owner[key] = str(tname)
        allowed = _mapping(tenant).get("tasks")
        for i, task in enumerate(allowed if isinstance(allowed, list) else []):
            if isinstance(task, str) and task not in tasks:
                problems.append(f"tenants.{tname}.tasks[{i}]: unknown task {task!r}{nearest(task, tasks)}")
        for field in ("task_limits", "task_safety", "task_tools", "task_classify"):
            for task in _mapping(_mapping(tenant).get(field)):
                if isinstance(task, str) and task not in tasks:
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
    exposed = not tenants and not _flag(server.get("allow_anonymous", False))
    if exposed and not _is_loopback(host) and not host_problem(host):  # a bad host: the field check says why
        problems.append(
            f"server.host: {host!r} is not loopback and no tenants are configured; "
            "add tenants with keys or set server.allow_anonymous: true"
        )
    return problems


def _judge_problems(tasks: dict[str, Any], tenants: dict[str, Any], targets: dict[str, Any]) -> list[str]:
    """Each ``safety.judge.target`` (a task's, a tenant's, a tenant's per task) and each
    ``shadow.judge.target`` must be a target."""
    places = [(f"tasks.{n}.safety", _mapping(t).get("safety")) for n, t in tasks.items()]
    for tname, tenant in tenants.items():
        places.append((f"tenants.{tname}.safety", _mapping(tenant).get("safety")))
        for task, each in _mapping(_mapping(tenant).get("task_safety")).items():
            places.append((f"tenants.{tname}.task_safety.{task}", each))
    places += [(f"tasks.{n}.shadow", _mapping(t).get("shadow")) for n, t in tasks.items()]
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
        if any(v is not None and not isinstance(v, str) for v in (tenant, task)):
            continue  # the field check reports the type
        if task is not None and task not in tasks:
            problems.append(f"retention.rules[{i}].task: unknown task {task!r}{nearest(task, tasks)}")
        if tenant is not None and tenant not in tenants:
            problems.append(f"retention.rules[{i}].tenant: unknown tenant {tenant!r}{nearest(tenant, tenants)}")
        pair = (tenant, task)
        if pair in seen:
            scope = " and ".join(f"{k} {v!r}" for k, v in (("tenant", tenant), ("task", task)) if v is not None)
            problems.append(f"retention.rules[{i}]: a second rule for {scope or 'every tenant and task (the default)'}")
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
    problem = _dsn_problem(dsn) if isinstance(dsn, str) else None
    return [f"store.dsn: {problem}"] if problem else []


def _state_problems(state: dict[str, Any], store: dict[str, Any]) -> list[str]:
    if state.get("kind") != "postgres":
        return []
    dsn = state.get("dsn") or (store.get("dsn") if store.get("kind") == "postgres" else None)
    if not dsn:
        return ["state.dsn: required when state.kind is postgres and the ledger is not in PostgreSQL"]
    problem = _dsn_problem(dsn) if isinstance(dsn, str) else None
    return [f"state.dsn: {problem}"] if problem else []


# One host of a DSN's comma-separated list, as asyncpg splits it: [IPv6] or a name (a socket
# directory percent-encoded), then an optional :port.
_PG_HOST = re.compile(r"(?:\[[^\]]+\]|[^:\[\]]+)(?::(\d*))?")


def _dsn_problem(dsn: str) -> str | None:
    """Why the drivers could not read ``dsn``'s hosts and ports, or None: asyncpg failed the
    start-up with a traceback on a port that is no number, an unclosed ``[`` or an empty host,
    after ``check`` passed it. Never quotes the DSN: it holds a password."""
    if not re.match(r"^postgres(ql)?://", dsn):
        return "must start with postgresql:// or postgres://, e.g. postgresql://user@host:5432/db"
    if re.search(r"[\x00-\x1f\x7f]", dsn):
        return "holds a control character (a trailing line break from a secret file?)"
    try:
        hosts = urlsplit(dsn).netloc.rpartition("@")[2]
    except ValueError:
        return "has an unclosed [ (an IPv6 address goes in [...])"
    for spec in hosts.split(",") if hosts else ():
        match = _PG_HOST.fullmatch(spec)
        if match is None or not 0 < int(match.group(1) or 5432) < 65536:
            return "names a host or port the drivers cannot read (host:port, port 1-65535; several: a,b:5433)"
    return None


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
