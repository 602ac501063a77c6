"""Everything the gateway holds while it runs, opened in one place and closed in reverse.

``start`` opens what the config asks for, each resource pushed on one ``AsyncExitStack`` as
soon as it is open: the ledger (store, then its writer), traces, issued keys, the limiter,
every provider (each warmed up by its health check: a local model loads here), then the shared
state: capture, the review queue, the release registry, the cache and, with a ledger, the
canary controller. ``aclose`` unwinds the stack, so the close order is the reverse of the open
order by construction, and a start that fails half-way closes what it had opened before it
raises. Except where PostgreSQL does not answer: the ledger store, or the shared state as a
whole, is then opened in the background (``serving/waiting.py``) and the gateway starts unready.

The request path (``turnout.serving.pipeline``) reads these resources; it owns none of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from turnout._support.periodic import Periodic
from turnout._support.places import Place, unreachable
from turnout.cache import factory as cache_factory
from turnout.cache.purges import POLL_S, Follower, PurgeLog, purge_log_place
from turnout.cache.stage import CacheStage, TaskCache
from turnout.config import HUMAN, Config
from turnout.control.auth import Authenticator
from turnout.control.catalog import context_window
from turnout.control.keys.base import KeyStore
from turnout.control.keys.factory import open_key_store
from turnout.control.pricing import PriceBook
from turnout.control.quota.factory import open_limiter
from turnout.control.quota.gate import QuotaGate
from turnout.control.tokens import Tokens
from turnout.ledger.store import LedgerStore, open_store
from turnout.ledger.writer import LedgerWriter
from turnout.observe import open_tracing
from turnout.observe.metrics import SYNC_S, LedgerCounts, LiveState, Metrics, TargetState
from turnout.observe.requestlog import RequestLog
from turnout.privacy.capture import Capture, SecretsOnly, capture_path
from turnout.privacy.capture.store import CaptureStore
from turnout.privacy.redact import Redactor
from turnout.privacy.retention.purge import RetentionPurge
from turnout.privacy.retention.rules import Rules
from turnout.providers.base import Provider, Timeouts
from turnout.providers.embeddings import batched
from turnout.providers.registry import create
from turnout.releases.base import ReleaseRegistry
from turnout.releases.canary import CanaryController
from turnout.releases.registry import open_registry
from turnout.releases.review import ReviewQueue
from turnout.releases.shadowstore import ShadowStore, shadow_path
from turnout.releases.store import ReleaseStore
from turnout.routing.attempts import Target
from turnout.routing.breaker import Breaker
from turnout.serving.probes import Probes, scrub, secrets_of
from turnout.serving.scoring import LiveScoring
from turnout.serving.shadow import Mirror
from turnout.serving.waiting import Waiting

if TYPE_CHECKING:
    from turnout.observe.tracing import Tracing

log = logging.getLogger("turnout")

# What a reload's runtime takes over as it is (``successor``): what start-up opened, and what
# the restart-only sections built.
SHARED = (
    *("secret", "targets", "probes", "metrics", "request_log", "store", "ledger", "tracing", "capture"),
    *("reviews", "releases", "release_store", "canary", "cache", "cache_sweep", "keys", "tokens", "shadows"),
    "waiting",
)

# What ``_open_shared`` sets: left unset by a failed try.
STATE = ("capture", "reviews", "releases", "release_store", "shadows", "cache", "cache_sweep", "canary")


class Runtime:
    def __init__(self, config: Config, providers: dict[str, Provider] | None = None, *, offline: bool = False) -> None:
        """``providers`` replaces the provider of the named targets (tests inject fakes here).
        ``offline``: a command's runtime (``turnout eval``), never a gateway's: it runs no
        canary controller and no retention purge, which belong to the gateways alone."""
        self.offline = offline
        self.config = config
        self._injected = providers or {}
        self.secret = redaction_key(config)
        self.prices = PriceBook(config)
        self.tokens = Tokens.from_config(config)  # each target's tokenizer, else UTF-8 bytes
        self.auth = Authenticator(config)
        self.quota = QuotaGate(config, None, self.prices, self.tokens)
        self.policy: dict[str, frozenset[str]] = {cls: frozenset(p.targets) for cls, p in config.policy.items()}
        self.targets: dict[str, Target] = {}
        self.probes = Probes(self.targets)  # upstream health: the admin view and /metrics
        self.metrics: Metrics | None = Metrics(config, self.live) if config.observability.metrics else None
        self.request_log = RequestLog(config.server.access_log)  # access log, fallback and 5xx warnings
        self.store: LedgerStore | None = None
        self.ledger: LedgerWriter | None = None
        self.tracing: Tracing | None = None
        self.capture: Capture | None = None
        self.reviews: ReviewQueue | None = None  # sampled answers awaiting a human label
        # Live scoring of sampled answers (tasks.T.scoring); None: no task scores.
        self.scoring = LiveScoring(config) if any(t.scoring for t in config.tasks.values()) else None
        self.releases: ReleaseRegistry | None = None  # what serves each task, read per request
        self.release_store: ReleaseStore | None = None  # the registry's store: canaries and evals write it
        self.canary: CanaryController | None = None
        self.shadows: Mirror | None = None  # copies of requests for shadow releases
        self.cache: CacheStage | None = None  # the response cache, where a task opted in
        self.cache_sweep: cache_factory.Sweeper | None = None  # its answers of versions no longer serving
        self.keys: KeyStore | None = None  # issued keys (with tenants)
        self._stack: AsyncExitStack | None = None
        self.waiting: list[Waiting] = []  # what start-up opens in the background (PostgreSQL was down)
        self._opened: AsyncExitStack | None = None  # a successor's own openings, until adopted
        self._cache_tasks: dict[str, TaskCache] | None = None  # a successor's cache settings, applied when adopted

    async def start(self) -> None:
        if self._stack is not None:
            raise RuntimeError("the runtime is already started")
        stack = AsyncExitStack()
        try:
            await self._open(stack)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack

    async def aclose(self) -> None:
        """After the server has stopped taking requests: everything, newest first."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def _open(self, stack: AsyncExitStack) -> None:
        cfg = self.config
        # Opened first, so closed last: the ledger drains before the traces wait on a collector.
        self.tracing = open_tracing(cfg)
        if self.tracing is not None:  # exports what is queued: blocking network I/O, bounded
            stack.push_async_callback(asyncio.to_thread, self.tracing.shutdown)
        if cfg.store.kind != "none":
            store = self.store = open_store(cfg.store)
            stack.push_async_callback(store.aclose)  # a no-op while it has not opened
            await self._open_or_wait(stack, "the ledger store", store.open)  # meanwhile: the spill journal
            self.ledger = LedgerWriter.from_config(store, cfg.store)
            self.ledger.start()
            stack.push_async_callback(self.ledger.aclose)  # flushed before its store closes
        if cfg.tenants:  # issued keys live beside the limits (SQLite, or Redis when shared)
            keys = open_key_store(cfg.limits)
            await keys.open(serving=True)
            stack.push_async_callback(keys.aclose)
            self.auth, self.keys = Authenticator(cfg, keys), keys
        if self.quota.needed():
            limiter = open_limiter(cfg.limits)
            stack.push_async_callback(limiter.aclose)
            self.quota = QuotaGate(cfg, limiter, self.prices, self.tokens)
        stack.push_async_callback(self._close_providers)  # before any is built: a failed build closes the rest
        stack.push_async_callback(self.probes.aclose)  # a probe still running goes before its providers
        await self._open_targets()
        if self.metrics is not None and self.metrics.summed is not None:  # workers: live counts summed
            metrics = self.metrics

            async def sync() -> None:
                metrics.sync()

            syncing = Periodic("turnout-metrics-sync", sync, SYNC_S, first="now")
            syncing.start()
            stack.push_async_callback(syncing.aclose)
        await self._open_or_wait(stack, "the shared state", lambda: self._open_shared(stack))

    async def _open_or_wait(self, stack: AsyncExitStack, what: str, attempt: Callable[[], Awaitable[None]]) -> None:
        """``attempt()``; where it fails because PostgreSQL does not answer, a gateway starts
        anyway, unready, and tries again in the background (``serving/waiting.py``)."""
        try:
            await attempt()
        except Exception as exc:
            if self.offline or not unreachable(exc):
                raise
            waiting = Waiting(what, attempt, exc)
            waiting.start()
            stack.push_async_callback(waiting.aclose)
            self.waiting.append(waiting)

    @property
    def state_missing(self) -> bool:
        """Whether start-up still waits for the shared state: requests that need it are refused."""
        return any(w.waiting and w.what == "the shared state" for w in self.waiting)

    async def _open_shared(self, stack: AsyncExitStack) -> None:
        """What reads or writes the state a fleet may share (capture, the review queue, releases
        and shadows, the cache and its purge log, the retention purge, canaries), on a stack of
        its own: a failure closes what it opened and leaves none of it set, to be tried again."""
        shared = AsyncExitStack()
        try:
            await self._open_state(shared)
        except BaseException:
            await shared.aclose()
            for name in STATE:
                setattr(self, name, None)
            raise
        stack.push_async_callback(shared.aclose)

    async def _open_state(self, stack: AsyncExitStack) -> None:
        cfg = self.config
        if capture_wanted(cfg):
            capture = open_capture(cfg, self.secret)
            await capture.start()
            stack.push_async_callback(capture.aclose)
            self.capture = capture
        if reviews_wanted(cfg, self.capture is not None):
            await self._open_reviews(stack)
        if await asyncio.to_thread(os.path.isdir, cfg.releases.path):  # releases/<task>/<release>.yaml
            await self._open_releases(stack)
        if cache_factory.wanted(cfg):
            await self._open_cache(stack)
        if self.store is not None and cfg.store.kind != "memory" and Rules(cfg).purges and not self.offline:
            await self._open_retention(stack, self.store)
        self._open_canary(stack)

    async def _open_reviews(self, stack: AsyncExitStack) -> None:
        cfg = self.config
        redactor = Redactor(self.secret)  # review text is redacted like captured text
        reviews = ReviewQueue(cfg.state_at(cfg.releases.store_path), redactor=redactor, secrets=SecretsOnly(redactor))
        await reviews.open()
        stack.push_async_callback(reviews.aclose)
        self.reviews = reviews

    async def _open_releases(self, stack: AsyncExitStack) -> None:
        registry = await open_registry(self.config)
        stack.push_async_callback(registry.aclose)
        self.releases, self.release_store = registry, registry.store
        await self._open_shadows(stack)

    def _open_canary(self, stack: AsyncExitStack) -> None:
        if self.release_store is not None and self.store is not None and not self.offline:  # canaries need a ledger
            self.canary = CanaryController(self.config, self.release_store, self.store)
            self.canary.start()
            stack.push_async_callback(self.canary.aclose)  # first to close: it reads the ledger

    async def successor(self, config: Config) -> Runtime:
        """A runtime over ``config`` (a reload's: ``serving/reload.py`` kept its restart-only
        sections) sharing everything this one opened. What reads the live sections (auth, quota
        scopes, prices, policy) is built again; what the old config did not need (the key store,
        the limiter, the release registry and its canary controller, the cache, the review queue)
        is opened now, on a stack of its own. Nothing this one runs is touched: ``adopt`` swaps
        the new one in, or ``abandon`` closes what it opened, so a reload that fails part-way
        leaves exactly the old runtime running."""
        if self._stack is None:
            raise RuntimeError("the runtime is not started")
        new = Runtime(config, self._injected, offline=self.offline)
        for name in SHARED:
            setattr(new, name, getattr(self, name))
        new._cache_tasks = CacheStage(config, self.cache.store).tasks if self.cache is not None else None
        opened = AsyncExitStack()
        try:
            await new._open_missing(opened)
        except BaseException:
            await opened.aclose()
            raise
        new._opened = opened
        return new

    async def _open_missing(self, stack: AsyncExitStack) -> None:
        """``successor``'s openings: what ``self.config`` needs and the running runtime lacks."""
        config = self.config
        if config.tenants and self.keys is None:
            keys = open_key_store(config.limits)
            await keys.open(serving=True)
            stack.push_async_callback(keys.aclose)
            self.keys = keys
        if config.tenants:
            self.auth = Authenticator(config, self.keys)
        limiter = self.quota.limiter
        if limiter is None and self.quota.needed():
            limiter = open_limiter(config.limits)
            stack.push_async_callback(limiter.aclose)
        self.quota = QuotaGate(config, limiter, self.prices, self.tokens)
        if self.releases is None and await asyncio.to_thread(os.path.isdir, config.releases.path):
            # the releases folder was made after start-up: its registry opens now, not at a restart
            await self._open_releases(stack)
            self._open_canary(stack)
        if self.cache is None and cache_factory.wanted(config):  # the first task to ask for the cache
            await self._open_cache(stack)
        if self.reviews is None and reviews_wanted(config, self.capture is not None):  # a review_rate, an escalation
            await self._open_reviews(stack)

    async def abandon(self) -> None:
        """A successor that will not be swapped in: close what it opened, and nothing else."""
        opened, self._opened = self._opened, None
        if opened is not None:
            await opened.aclose()

    def adopt(self, predecessor: Runtime) -> None:
        """Swap in: take over what ``predecessor`` opened (its ``aclose`` is now this one's, and
        closes first what this one opened), and point what both share at the new config: the
        canary controller, the shadow mirror, the cache's tasks and sweep, ``/metrics``, the
        traces. Nothing here can fail half-way."""
        stack = predecessor._stack
        if stack is None:
            raise RuntimeError("the runtime being replaced is closed")
        opened, self._opened = self._opened, None
        if opened is not None:
            stack.push_async_callback(opened.aclose)
        self._stack, predecessor._stack = stack, None
        config = self.config
        if self.canary is not None and self.canary is predecessor.canary:  # the same loop, the new tasks
            self.canary.follow(config)
        if self.shadows is not None and self.shadows is predecessor.shadows:
            self.shadows.follow(config, self.policy, self.prices, self.scoring)
        if self.cache is not None and self.cache is predecessor.cache and self._cache_tasks is not None:
            self.cache.tasks = self._cache_tasks  # tasks' cache settings are live; the store and its key stay
            self.cache.store.bound(cache_factory.limits(config))  # and each task's max_mb
        if self.cache_sweep is not None and self.releases is not predecessor.releases:
            self.cache_sweep.registry = self.releases  # the open cache's answers now carry release versions
        if self.metrics is not None:  # its counters carry on; labels follow the new names
            self.metrics.follow(config, self.live)
        if self.tracing is not None:  # spans name the new tasks
            self.tracing.follow(config)

    async def _open_shadows(self, stack: AsyncExitStack) -> None:
        """The shadow store and the mirror that feeds it (``turnout.serving.shadow``)."""
        cfg = self.config
        store = ShadowStore(cfg.state_at(shadow_path(cfg.releases.store_path)))
        await store.open()
        stack.push_async_callback(store.aclose)
        metrics = self.metrics
        mirror = Mirror(
            cfg,
            store,
            targets=self.targets,
            class_policy=self.policy,
            prices=self.prices,
            tokens=self.tokens,
            scoring=self.scoring,
            capture=self.capture,
            count=metrics.shadowed if metrics is not None else None,
        )
        await mirror.start()
        stack.push_async_callback(mirror.aclose)  # its calls cancelled, its pairs written, before the store
        self.shadows = mirror

    async def _open_cache(self, stack: AsyncExitStack) -> None:
        """The store, the stage, and the sweep of answers of releases that no longer serve."""
        store = cache_factory.open_cache_store(self.config)
        stack.push_async_callback(store.aclose)
        self.cache = CacheStage(self.config, store)
        self.cache_sweep = cache_factory.Sweeper(self.cache, self.releases)
        sweeper = Periodic("turnout-cache-sweep", self.cache_sweep, 30.0, first="now")
        sweeper.start()
        stack.push_async_callback(sweeper.aclose)
        if self.config.cache.backend == "memory":  # out of the CLI's reach: it asks through the purge log
            await self._follow_purges(stack, self.cache)

    async def _follow_purges(self, stack: AsyncExitStack, cache: CacheStage) -> None:
        """``turnout cache purge`` on the in-process cache: applied from the purge log
        (``turnout.cache.purges``) within about ``POLL_S``."""
        purges = PurgeLog(purge_log_place(self.config))
        await purges.open()
        stack.push_async_callback(purges.aclose)
        follower = Follower(purges, cache.store.purge)  # flights under way keep no answer it names
        await follower.start()
        poller = Periodic("turnout-cache-purges", follower, POLL_S, first="later")
        poller.start()
        stack.push_async_callback(poller.aclose)

    async def _open_retention(self, stack: AsyncExitStack, store: LedgerStore) -> None:
        """The retention purge of the ledger and the review queue, its runs audited beside
        captured text; each interval's run is claimed there, so one worker or replica runs it."""
        audit = self.capture.store if self.capture is not None else None
        if audit is None:
            audit = CaptureStore(self.config.state_at(capture_path(self.config.store)))
            await audit.open()
            stack.push_async_callback(audit.aclose)
        shadows = self.shadows.store if self.shadows is not None else None
        purge = RetentionPurge(self.config, store, audit, reviews=self.reviews, shadows=shadows)
        job = Periodic("turnout-retention", purge.tick, self.config.retention.purge_interval_s, first="now")
        stack.push_async_callback(purge.aclose)  # after the job has stopped: its claim goes back
        job.start()
        stack.push_async_callback(job.aclose)

    async def _open_targets(self) -> None:
        for name, t in self.config.targets.items():
            timeouts = Timeouts(t.timeouts.connect, t.timeouts.ttft, t.timeouts.total)
            provider = self._injected.get(name) or create(name, t)
            if t.embedding_space is not None:  # its calls embed whole requests, in batches
                provider = batched(name, provider, t.embedding_batch, t.embedding_parallel)
            breaker = Breaker(t.breaker, target=name)
            self.targets[name] = Target(name, provider, breaker, t.retry, timeouts, context_window(t))
        for name, probe in (await self.probes.start_up()).items():  # warms providers up
            if not probe.health.ok:
                detail = scrub(probe.health.detail, secrets_of(self.config.targets[name]))
                log.warning("target %s is not healthy at start-up: %s", name, detail)

    async def _close_providers(self) -> None:
        await asyncio.gather(*(t.provider.aclose() for t in self.targets.values()), return_exceptions=True)

    def ledger_detail(self) -> dict[str, Any] | None:
        """The ledger's backlog, for ``/readyz`` asked with the admin key. Spilling is no reason
        to be unready (the journal is there for it); a full journal is (``Readiness``)."""
        ledger = self.ledger
        if ledger is None:
            return None
        return {
            "queued": ledger.queued,
            "spilling": ledger.spilling,
            "journal_bytes": ledger.journal_bytes,
            "dropped": ledger.dropped,
        }

    def live(self) -> LiveState:
        """What ``/metrics`` reads at scrape time (and, with workers, each worker's sync):
        cheap snapshots, no I/O."""
        ledger = self.ledger
        limiter = self.quota.limiter
        probes = self.probes
        return LiveState(
            targets=tuple(
                TargetState(n, t.breaker.state, t.provider.load(), probes.up(n)) for n, t in self.targets.items()
            ),
            ledger=None
            if ledger is None
            else LedgerCounts(
                ledger.queued, ledger.written, ledger.dropped, ledger.failed, ledger.spilled, ledger.journal_bytes
            ),
            limiter=None if limiter is None else limiter.stats(),
        )


def reviews_wanted(config: Config, capturing: bool) -> bool:
    """The review queue: for sampled answers (a ``review_rate``, where capture keeps text) and for
    answers escalated to a person (``output.escalate.to: human``: always redacted)."""
    if any(t.review_rate > 0 for t in config.tasks.values()) and capturing:
        return True
    return any(
        t.output is not None and t.output.escalate is not None and t.output.escalate.to == HUMAN
        for t in config.tasks.values()
    )


def capture_wanted(config: Config) -> bool:
    """Text capture needs its store only when some rule could keep text."""
    return config.capture.mode != "metadata" or any(r.mode != "metadata" for r in config.capture.rules)


def redaction_key(config: Config) -> bytes:
    """Keys redaction placeholders and user pseudonyms. Set it (``capture.redaction_key`` or
    TURNOUT_REDACTION_KEY) for pseudonyms that agree across replicas and restarts."""
    key = config.capture.redaction_key or os.environ.get("TURNOUT_REDACTION_KEY")
    return key.encode() if key else os.urandom(32)


def pseudonym(key: bytes, value: str) -> str:
    return "u_" + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:20]


def capture_place(config: Config) -> Place:
    """Where the gateway keeps capture (grants, audit, text): the fleet's PostgreSQL, else
    ``capture.db`` beside the ledger, else (a ledger in memory, or none) in memory, out of
    ``turnout capture``'s reach."""
    if config.state.kind == "postgres":
        return config.state_at("")
    return ":memory:" if config.store.kind in ("memory", "none") else capture_path(config.store)


def open_capture(config: Config, key: bytes) -> Capture:
    redactor = Redactor(key)
    rules = Rules(config)
    return Capture(
        config.capture,
        capture_place(config),
        redactor,
        secrets=SecretsOnly(redactor),
        ttl_days_for=lambda tenant, task: rules.get(tenant, task).capture_days,
    )
