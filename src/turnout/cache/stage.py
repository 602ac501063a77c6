"""The pipeline's cache stage: after policy, before quota (a hit takes no quota: no RPM, TPM,
concurrency or budget, since nothing upstream is used), for every door.

    lookup   which requests may be cached (the task opted in for the data class; a deterministic
             request unless ``allow_sampled``; no ``Cache-Control: no-cache`` nor
             ``X-Turnout-Cache: bypass``), then the store: ``HIT`` with an entry, ``MISS``
             (the first of concurrent identical misses leads; the others wait for its answer:
             single flight, per replica; when the leader gets no answer, the first of them
             leads anew), or ``BYPASS``
    fill     the leader's answer, once whole and passed, into the store and to its followers
    done     always, in the pipeline's ``finally``: frees the flight (followers of a leader that
             got no answer call the upstream themselves)

A task without ``cache`` costs one dict lookup (``lookup`` answers None).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from turnout.cache.entry import Entry, decode
from turnout.cache.key import Address, deterministic, digest, scope_of
from turnout.cache.memory import MemoryCache
from turnout.cache.seal import derive
from turnout.cache.store import CacheStore
from turnout.config import Config, TaskConfig, TenantConfig
from turnout.privacy.retention.rules import Rules
from turnout.releases.base import Release

HEADER = b"x-turnout-cache"
HIT, MISS, BYPASS = b"hit", b"miss", b"bypass"
NO_VERSION = "none"  # a task served without releases: "none.<what serves it>"
# What of a target shapes its answers; its URLs, keys, timeouts, limits and prices do not.
ANSWERING = frozenset(
    {
        "provider",
        "model",
        "model_path",
        "model_version",
        "additional_fields",
        "guardrail",
        "embedding_space",
        "continue_final_message",  # a prefill continued, or answered as a new turn
    }
)
# How long a follower waits for its flight's leader before asking for itself: a leader's answer
# is shared once its client has taken all of it, which a slow client can hold back for as long
# as it likes.
FOLLOW_S = 30.0


@dataclass(frozen=True, slots=True)
class TaskCache:
    ttl_s: float
    classes: frozenset[str]
    shared: bool
    allow_sampled: bool
    checks: str = ""  # the task's answer checks, fingerprinted: their change is a new key
    # The same for each tenant with tool allowlists of its own (they override the task's).
    tenant_checks: Mapping[str, str] = field(default_factory=dict)
    # What serves the task, for the address's version: without releases, ``unreleased`` (its
    # route in order and what of each target shapes an answer); a release's version is taken
    # with the same of its targets on that route (``version_of``), once per release object.
    unreleased: str = NO_VERSION
    route: tuple[str, ...] = ()
    answering: Mapping[str, Any] = field(default_factory=dict)  # target → what shapes its answers
    versions: dict[int, tuple[Release, str]] = field(default_factory=dict)


def answered_by(route: Iterable[str], answering: Mapping[str, Any]) -> str:
    """A short fingerprint of who answers along ``route`` (in order, fallbacks included): each
    target's name, provider and model (``ANSWERING``). A config that routes the task elsewhere,
    or gives a target another model, never serves the answers of the one before it (with Redis
    they outlive a restart)."""
    raw = orjson.dumps([[name, answering.get(name)] for name in route], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


def version_of(cfg: TaskCache, release: Release | None) -> str:
    """The address's version: the serving release's content version (a new release never serves
    an old answer) and who answers on its targets (a release names its targets, not their
    models, which the config may change under it); without releases, ``cfg.unreleased``. A dict
    lookup per request: a release's is worked out once per release object and config."""
    if release is None:
        return cfg.unreleased
    found = cfg.versions.get(id(release))
    if found is None or found[0] is not release:
        if len(cfg.versions) > 1024:  # releases come and go: keep it bounded
            cfg.versions.clear()
        route = [t for t in release.route if t in cfg.route]  # as the pipeline cuts it
        found = cfg.versions[id(release)] = (release, f"{release.version}.{answered_by(route, cfg.answering)}")
    return found[1]


def checks_of(name: str, task: TaskConfig, tenant: TenantConfig | None = None) -> str:
    """A fingerprint of what an answer of task ``name`` must pass (its output checks and tool
    allowlist, and ``tenant``'s own allowlists, ``tools`` and ``task_tools``, which override the
    task's): an answer is cached once it passed them, and a hit is not checked again, so a
    reload that adds or changes a check must not find the answers kept before it. Empty where
    there are none (the keys are as they were)."""
    checks = {"output": task.output, "tools": task.tools}
    if tenant is not None:
        checks |= {"tenant_tools": tenant.tools, "tenant_task_tools": tenant.task_tools.get(name)}
    given = {k: v.model_dump(mode="json") for k, v in checks.items() if v is not None}
    if not given:
        return ""
    raw = orjson.dumps(given, option=orjson.OPT_SORT_KEYS)
    return ":" + hashlib.blake2b(raw, digest_size=8).hexdigest()


def _tenant_checks(config: Config, name: str, task: TaskConfig) -> dict[str, str]:
    return {
        tenant: checks_of(name, task, t)
        for tenant, t in config.tenants.items()
        if t.tools is not None or name in t.task_tools
    }


@dataclass(slots=True)
class Lookup:
    state: bytes  # HIT, MISS or BYPASS: the X-Turnout-Cache header
    address: Address | None = None
    ttl_s: float = 0.0
    entry: Entry | None = None  # a hit's answer
    leading: asyncio.Future[bytes | None] | None = None  # a miss that leads its flight
    mark: bytes | None = None  # the store's purge mark when it was read (``CacheStore.read``), for its fill

    @property
    def header(self) -> tuple[bytes, bytes]:
        return (HEADER, self.state)


class CacheStage:
    def __init__(self, config: Config, store: CacheStore, rules: Rules | None = None) -> None:
        self.store = store
        # An in-process store is read without a coroutine (a hit's lookup awaits nothing); a
        # subclass may override ``get``, so only the class itself.
        self._get_now = store.get_now if type(store) is MemoryCache else None
        self._mark_now = store.mark if type(store) is MemoryCache else None  # read where it misses
        answering = {name: t.model_dump(mode="json", include=set(ANSWERING)) for name, t in config.targets.items()}
        self.tasks: dict[str, TaskCache] = {
            name: TaskCache(
                t.cache.ttl_s,
                frozenset(t.cache.classes),
                t.cache.scope == "shared",
                t.cache.allow_sampled,
                checks_of(name, t),
                _tenant_checks(config, name, t),
                f"{NO_VERSION}.{answered_by(t.route, answering)}",
                tuple(t.route),
                answering,
            )
            for name, t in config.tasks.items()
            if t.cache is not None
        }
        # The digest key: from the shared secret, so replicas agree; else this process's own.
        secret = config.cache.encryption_key
        self._secret = derive(secret, b"digest") if secret else os.urandom(32)
        self._rules = rules or Rules(config)
        self._flights: dict[str, asyncio.Future[bytes | None]] = {}
        self.hits = self.misses = self.bypasses = 0

    async def lookup(
        self, task: str, tenant: str, data_class: str, release: Release | None, body: dict[str, Any], bypass: bool
    ) -> Lookup | None:
        """None: the task has no cache (no header either)."""
        cfg = self.tasks.get(task)
        if cfg is None:
            return None
        if bypass or data_class not in cfg.classes or not (cfg.allow_sampled or deterministic(body)):
            self.bypasses += 1
            return Lookup(BYPASS)
        address = Address(
            scope_of(tenant, cfg.shared),
            task,
            version_of(cfg, release),
            digest(self._secret, data_class + cfg.tenant_checks.get(tenant, cfg.checks), body),
        )
        ttl_s = self._rules.get(tenant, task).cache_ttl(cfg.ttl_s)
        get_now = self._get_now
        mark = None
        if get_now is not None:
            raw = get_now(address)
        else:
            raw, mark = await self.store.read(address)
        found = None if raw is None else decode(raw)
        if found is not None and not found.fresh(ttl_s, time.time()):  # kept under a longer TTL
            found = None
        if found is None:
            flight = self._flights.get(address.text())
            if flight is None:
                self.misses += 1
                return Lookup(
                    MISS, address, ttl_s, leading=self._lead(address.text()), mark=self._missed(address, mark)
                )
            try:
                raw = await asyncio.wait_for(asyncio.shield(flight), FOLLOW_S)
            except TimeoutError:  # a leader still answering (a long stream, a slow client): not waited for
                raw = None
            found = None if raw is None else decode(raw)
            if found is None:  # the leader got no answer to share: this one asks for itself
                self.misses += 1
                # The first follower to wake leads anew, so an answer is kept after all (the
                # others ask at once, beside it: none waits out a second failure).
                key = address.text()
                leading = None if key in self._flights else self._lead(key)
                return Lookup(MISS, address, ttl_s, leading=leading, mark=self._missed(address, mark))
        self.hits += 1
        return Lookup(HIT, address, ttl_s, entry=found, mark=mark)

    def refused(self, lookup: Lookup) -> None:
        """A hit the request may not take (its target is no longer allowed to it): a miss, which
        leads a flight when none is under way, so its answer replaces the entry (else a policy
        change left every such request a miss until the old entry's TTL ran out)."""
        lookup.state, lookup.entry = MISS, None
        self.hits -= 1
        self.misses += 1
        if lookup.address is not None and lookup.address.text() not in self._flights:
            lookup.leading = self._lead(lookup.address.text())
            lookup.mark = self._missed(lookup.address, lookup.mark)

    def _missed(self, address: Address, mark: bytes | None) -> bytes | None:
        """The purge mark a miss fills with: read with its entry, or (in process) now."""
        return mark if self._mark_now is None else self._mark_now(address)

    def _lead(self, key: str) -> asyncio.Future[bytes | None]:
        """A new flight for ``key``: the future its followers wait on."""
        leading = self._flights[key] = asyncio.get_running_loop().create_future()
        return leading

    async def fill(self, lookup: Lookup, value: bytes) -> None:
        """The leader's answer: to its followers at once (they asked before any purge since),
        then into the store, unless a purge naming it came while it was generated (the store
        compares the ``mark`` its miss read)."""
        assert lookup.address is not None
        self._finish(lookup, value)
        await self.store.put(lookup.address, value, lookup.ttl_s, lookup.mark)

    def done(self, lookup: Lookup | None) -> None:
        """Ends the flight a leader left without an answer to share."""
        if lookup is not None and lookup.leading is not None:
            self._finish(lookup, None)

    def version(self, task: str, release: Release | None) -> str | None:
        """The version of ``task``'s answers served by ``release`` (``version_of``) under the
        config now; None for a task that is not cached (any more: a reload took it out)."""
        cfg = self.tasks.get(task)
        return None if cfg is None else version_of(cfg, release)

    def _finish(self, lookup: Lookup, value: bytes | None) -> None:
        leading, lookup.leading = lookup.leading, None
        if leading is None:
            return
        assert lookup.address is not None
        key = lookup.address.text()
        if self._flights.get(key) is leading:
            del self._flights[key]
        if not leading.done():
            leading.set_result(value)


def bypassed(cache_control: bytes | None, turnout_cache: bytes | None) -> bool:
    """``Cache-Control: no-cache`` (or ``no-store``) or ``X-Turnout-Cache: bypass``; each a
    comma-separated list (a header sent on several lines, joined)."""
    if turnout_cache is not None and BYPASS in {v.strip() for v in turnout_cache.lower().split(b",")}:
        return True
    if cache_control is None:
        return False
    directives = {d.strip().split(b"=")[0] for d in cache_control.lower().split(b",")}
    return b"no-cache" in directives or b"no-store" in directives
