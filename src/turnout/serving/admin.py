"""The admin API (``/admin/*``), guarded by the admin key (``server.admin_key`` or
``TURNOUT_ADMIN_KEY``). A tenant key gets 403 here: tenants never see other tenants, keys or
usage through this API. A filter given twice (``?tenant=a&tenant=b``) or one the route does not
read (``?tenat=a``) is a 400 naming it.

    GET    /admin/tenants                 tenants, their data classes, tasks and limits
    GET    /admin/keys[?tenant=T]         issued keys (never secrets or digests); 404: no tenant T
    POST   /admin/keys                    {"tenant", "name"?, "expires_in_s"?} → the secret, once
    DELETE /admin/keys/{id}               revoke
    GET    /admin/usage[?tenant=T]        per scope: bucket levels, slots, spent and reserved
    GET    /admin/targets                 each target and replica: a fresh health probe, breaker
                                          state, calls in flight and queued (labels, never URLs),
                                          each replica's own queue, running and KV use (``load``);
                                          each task: whether some target of its route is up
    GET    /admin/review[?task=T&status=S&release=R]   sampled answers (status: pending, the
                                          default, accept, reject, escalate or all), newest
                                          first, and the task's (release's) label counts
    POST   /admin/review/{id}             {"label": accept|reject|escalate, "note"?, "by",
                                          "answer"?: the corrected answer an escalated item's
                                          caller receives (required to accept one)}
    POST   /admin/reload                  read the config file again and swap its live sections
                                          in (``serving/reload.py``): what changed, what needs a
                                          restart; 422 with the problems, the old config kept.
                                          With --workers, on every worker or none
                                          (``serving/rounds.py``); ``workers``: how many did
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, cast
from urllib.parse import parse_qs

import orjson

from turnout._support.printable import printable
from turnout.control.auth import bearer
from turnout.control.keys.base import MAX_KEY_TTL_S
from turnout.errors import (
    AuthError,
    MethodNotAllowed,
    NotFound,
    NotReady,
    PolicyDenied,
    RequestError,
    refuse_unknown,
)
from turnout.providers.base import Health
from turnout.releases.review import MAX_ANSWER, ReviewQueue, Status
from turnout.serving import tickets
from turnout.serving.asgi import Receive, Send, expect_method, header, read_body, send_json
from turnout.serving.probes import scrub, secrets_of
from turnout.serving.runtime import Runtime

MAX_ROW_ID = 2**63 - 1
MAX_KEY_NAME = 200
MAX_BY = 200  # who labelled a review item, as the audit trail and the CLI print it
KEY_FIELDS = frozenset({"tenant", "name", "expires_in_s"})
# What the routes that filter read from their query; a name they do not read is refused.
QUERY_FIELDS = {"/admin/keys": ("tenant",), "/admin/usage": ("tenant",), "/admin/review": ("release", "status", "task")}
LABEL_FIELDS = frozenset({"label", "note", "by", "answer"})
# A label's body: its note and an escalation's answer, each character JSON-escaped at worst.
LABEL_BYTES = 64_000 + 6 * MAX_ANSWER


def _query(scope: dict[str, Any], fields: tuple[str, ...]) -> dict[str, str]:
    """The query's parameters, each given once. Raw bytes past ASCII may reach here undecoded:
    replaced, never a 500. Blank values kept: ``?tenant=`` (a script's unset variable) names no
    tenant, a 404, where dropped it listed every tenant's keys. ``?tenant=a&tenant=b`` was read as
    ``a`` alone, and ``?tenat=a`` (a typo) as no filter: every tenant's keys, ready for the next
    command to revoke; either is a 400 naming the parameter. ``fields``: what a filtering route
    reads (a route that reads none ignores its query)."""
    raw = scope.get("query_string", b"").decode("utf-8", "replace")
    query: dict[str, str] = {}
    for name, values in parse_qs(raw, keep_blank_values=True).items():
        if len(values) > 1:
            raise RequestError(f"the query gives {name!r} {len(values)} times; give it once", param=printable(name))
        if fields and name not in fields:
            raise RequestError(
                f"unknown query parameter {printable(name)!r}; this route takes {', '.join(fields)}",
                param=printable(name),
            )
        query[name] = values[0]
    return query


class Admin:
    def __init__(self, runtime: Runtime, reload: Callable[[], Awaitable[dict[str, Any]]] | None = None) -> None:
        """``reload``: the app's config reload (None: ``/admin/reload`` answers 404)."""
        self.runtime = runtime
        self.reload = reload
        self.key = runtime.config.server.admin_key or os.environ.get("TURNOUT_ADMIN_KEY") or None

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await self._authorize(header(scope, b"authorization"))
        path, method = scope["path"].rstrip("/"), scope["method"]
        query = _query(scope, QUERY_FIELDS.get(path, ()))
        if path == "/admin/tenants":
            expect_method(method, "GET")
            await send_json(send, 200, {"data": self.tenants()})
        elif path == "/admin/keys" and method in ("GET", "HEAD"):
            await send_json(send, 200, {"data": await self.keys(query.get("tenant"))})
        elif path == "/admin/keys" and method == "POST":
            await send_json(send, 201, await self._create_key(await read_body(receive, scope, 64_000)))
        elif path == "/admin/keys":
            raise MethodNotAllowed("use GET or POST for this route", allow="GET, HEAD, POST")
        elif path.startswith("/admin/keys/"):
            expect_method(method, "DELETE")
            await send_json(send, 200, await self._revoke(path.removeprefix("/admin/keys/")))
        elif path == "/admin/usage":
            expect_method(method, "GET")
            await send_json(send, 200, {"data": await self.usage(query.get("tenant"))})
        elif path == "/admin/targets":
            expect_method(method, "GET")
            await send_json(send, 200, await self.targets())
        elif path == "/admin/review":
            expect_method(method, "GET")
            await send_json(send, 200, await self._reviews({k: v for k, v in query.items() if v}))  # blank: unset
        elif path.startswith("/admin/review/"):
            expect_method(method, "POST")
            item = path.removeprefix("/admin/review/")
            await send_json(send, 200, await self._label(item, await read_body(receive, scope, LABEL_BYTES)))
        elif path == "/admin/reload" and self.reload is not None:
            expect_method(method, "POST")
            await send_json(send, 200, await self.reload())  # with --workers: every worker's outcome
        else:
            raise NotFound(f"no admin route for {method} {path}")

    def is_admin(self, authorization: bytes | None) -> bool:
        """Whether ``authorization`` carries the admin key (never raises: for optional detail)."""
        if self.key is None or not authorization:
            return False
        try:
            presented = bearer(authorization)
        except AuthError:
            return False
        return hmac.compare_digest(presented.encode(), self.key.encode())

    async def _authorize(self, authorization: bytes | None) -> None:
        if self.key is None:
            raise PolicyDenied("the admin API is closed: set server.admin_key or TURNOUT_ADMIN_KEY")
        presented = bearer(authorization)
        if hmac.compare_digest(presented.encode(), self.key.encode()):
            return
        if self.runtime.auth.anonymous:  # no tenant keys exist: any other key is a wrong admin key
            raise AuthError("invalid admin key")
        try:
            await self.runtime.auth.identify(authorization, time.time())
        except AuthError:
            raise AuthError("invalid admin key") from None
        raise PolicyDenied("a tenant key cannot use the admin API")

    def tenants(self) -> list[dict[str, Any]]:
        out = []
        for name, t in self.runtime.config.tenants.items():
            out.append(
                {
                    "name": name,
                    "data_classes": t.data_classes,
                    "tasks": t.tasks,
                    "limits": t.limits.model_dump(exclude_none=True),
                    "task_limits": {k: v.model_dump(exclude_none=True) for k, v in t.task_limits.items()},
                    "config_keys": len(t.keys),
                }
            )
        return out

    async def keys(self, tenant: str | None) -> list[dict[str, Any]]:
        if tenant is not None and tenant not in self.runtime.config.tenants:  # as usage, and `turnout keys list`
            raise NotFound(f"no tenant {tenant!r}")
        store = self.runtime.auth.keys
        if store is None:
            return []
        now = time.time()
        return [k.to_json(now) for k in await store.list(tenant)]

    async def _create_key(self, raw: bytes) -> dict[str, Any]:
        store = self.runtime.auth.keys
        try:
            spec = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError as exc:
            raise RequestError("the body is not valid JSON", code="invalid_json") from exc
        if not isinstance(spec, dict):
            raise RequestError("the body must be a JSON object", code="invalid_json")
        refuse_unknown(spec, sorted(KEY_FIELDS), "a key")  # a typo ("expires_at"): a key that never expires
        tenant = spec.get("tenant")
        if store is None or not isinstance(tenant, str) or tenant not in self.runtime.config.tenants:
            raise RequestError(f"unknown tenant {tenant!r}", param="tenant")
        ttl = spec.get("expires_in_s")
        if ttl is not None and (
            not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not 0 < ttl <= MAX_KEY_TTL_S
        ):
            raise RequestError(
                f"'expires_in_s' must be a positive number of seconds, at most {MAX_KEY_TTL_S} (100 years); "
                "omit it for a key that never expires",
                param="expires_in_s",
            )
        name = spec.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > MAX_KEY_NAME or not name.isprintable()):
            raise RequestError(f"'name' must be a printable string of at most {MAX_KEY_NAME} characters", param="name")
        now = time.time()
        record, secret = await store.create(tenant, name or "", now + ttl if ttl else None, now)
        return {**record.to_json(now), "secret": secret, "note": "the secret is shown once; store it now"}

    async def _revoke(self, key_id: str) -> dict[str, Any]:
        store = self.runtime.auth.keys
        now = time.time()
        record = await store.revoke(key_id, now) if store is not None else None
        if record is None:
            raise NotFound(f"no key {key_id!r}")
        return record.to_json(now)

    async def usage(self, tenant: str | None) -> list[dict[str, Any]]:
        limiter = self.runtime.quota.limiter
        if tenant is not None and tenant not in self.runtime.config.tenants:
            raise NotFound(f"no tenant {tenant!r}")
        seen: dict[str, Any] = {}
        for (name, _task), scopes in self.runtime.quota.scopes.items():
            if tenant is not None and name != tenant:
                continue
            for s in scopes:
                seen.setdefault(s.ident, s)
        now = time.time()
        out = []
        for s in seen.values():
            used = await limiter.usage(s, now) if limiter is not None else {}
            out.append({"scope": s.name, "limits": asdict(s.limits), "usage": used})
        return out

    async def targets(self) -> dict[str, Any]:
        runtime = self.runtime
        probes = await runtime.probes.probe()
        data = []
        for name, target in runtime.targets.items():
            probe = probes.get(name)
            health = probe.health if probe is not None else Health(False, "not probed")
            hidden = secrets_of(runtime.config.targets[name])
            by_label = {r.name: r for r in health.replicas}
            load = target.provider.load()
            replicas = []
            for r in load.replicas:
                seen = by_label.get(r.name)
                replicas.append(
                    {
                        "name": r.name,
                        "health": "unknown" if seen is None else "up" if seen.ok else "down",
                        "detail": "" if seen is None else scrub(seen.detail, hidden),
                        "breaker": r.breaker.value,
                        "in_flight": r.in_flight,
                        # What the server's own /metrics said (a target with ``load``); null: unknown.
                        "waiting": r.waiting,
                        "running": r.running,
                        "kv_cache": r.kv_cache,
                    }
                )
            data.append(
                {
                    "name": name,
                    "provider": runtime.config.targets[name].provider,
                    "health": "up" if health.ok else "down",
                    "detail": scrub(health.detail, hidden),
                    "breaker": target.breaker.state.value,
                    "in_flight": load.in_flight,
                    "queued": load.queued,
                    "replicas": replicas,
                }
            )
        up = {t["name"] for t in data if t["health"] == "up"}
        tasks = {
            name: {"route": list(task.route), "up": any(n in up for n in task.route)}
            for name, task in runtime.config.tasks.items()
        }
        return {"data": data, "tasks": tasks}

    def _review_queue(self) -> ReviewQueue:
        if self.runtime.reviews is None and self.runtime.state_missing:
            raise NotReady("the review queue is not open yet: its PostgreSQL does not answer")
        if self.runtime.reviews is None:
            raise NotFound("the review queue is off: no task has a review_rate or escalates to a human")
        return self.runtime.reviews

    async def _reviews(self, query: dict[str, str]) -> dict[str, Any]:
        queue = self._review_queue()
        task, release, status = query.get("task"), query.get("release"), query.get("status", "pending")
        items = await queue.list(task, None if status == "all" else cast(Status, status))
        out: dict[str, Any] = {"data": [item.to_json() for item in items]}
        if task is not None:
            out["quality"] = (await queue.quality(task, release)).to_json()
        return out

    async def _label(self, item_id: str, raw: bytes) -> dict[str, Any]:
        queue = self._review_queue()
        try:
            spec = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError as exc:
            raise RequestError("the body is not valid JSON", code="invalid_json") from exc
        if not isinstance(spec, dict):
            raise RequestError("the body must be a JSON object", code="invalid_json")
        refuse_unknown(spec, sorted(LABEL_FIELDS), "a label")  # a typo ("notes"): the reviewer's words lost
        label, note, by, answer = spec.get("label"), spec.get("note"), spec.get("by"), spec.get("answer")
        if not isinstance(label, str):
            raise RequestError("'label' is required and must be a string", param="label")
        if not isinstance(by, str) or len(by) > MAX_BY or not by.isprintable():
            raise RequestError(f"'by' is required: a printable string of at most {MAX_BY} characters", param="by")
        if not (note is None or isinstance(note, str)):
            raise RequestError("'note' must be a string or null", param="note")
        if not (answer is None or isinstance(answer, str)):
            raise RequestError("'answer' must be a string or null", param="answer")
        if _row_id(item_id):
            await tickets.check_answer(self.runtime, int(item_id), label, answer)
        item = await queue.label(int(item_id), label, note, by, answer) if _row_id(item_id) else None
        if item is None:
            raise NotFound(f"no review item {item_id!r}")
        return item.to_json()


def _row_id(text: str) -> bool:
    """A review item id as SQLite can hold it: ASCII digits ("²" is a digit to str.isdigit, not
    to int) of at most 2**63 - 1 (a larger one overflows the driver). Anything else names no item."""
    return text.isascii() and text.isdigit() and len(text) <= 19 and int(text) <= MAX_ROW_ID
