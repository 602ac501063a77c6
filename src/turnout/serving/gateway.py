"""The gateway at run time: configured targets, tenants and ledger, and the request path.

    authenticate → parse → task → classify → policy → quota → attempt (retry / fallback)
    → respond → account → settle the quota

``Gateway.chat`` reads top to bottom in that order. HTTP plumbing lives in ``turnout.serving.app``;
``turnout.serving.respond`` turns results into ASGI messages.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import random
import time
import traceback
from typing import TYPE_CHECKING, Any

import orjson

from turnout.config import Config
from turnout.control.auth import Authenticator
from turnout.control.catalog import context_window
from turnout.control.keys.factory import open_key_store
from turnout.control.quota.base import Grant
from turnout.control.quota.factory import open_limiter
from turnout.control.quota.gate import QuotaGate
from turnout.errors import AllTargetsFailed, TurnoutError, UnknownTask
from turnout.ledger.record import LedgerRow
from turnout.ledger.store import LedgerStore, open_store
from turnout.ledger.writer import LedgerWriter
from turnout.observe import open_tracing
from turnout.observe.metrics import Metrics
from turnout.privacy.capture import Capture, SecretsOnly, capture_path
from turnout.privacy.capture.model import Decision
from turnout.privacy.redact import Redactor
from turnout.providers.base import Provider, Stream, Timeouts, Usage
from turnout.providers.registry import create
from turnout.releases.base import Release, ReleaseRegistry, choose
from turnout.releases.canary import CanaryController
from turnout.releases.registry import StoreRegistry, open_registry
from turnout.releases.review import ReviewError, ReviewQueue
from turnout.releases.store import ReleaseStore
from turnout.routing import policy
from turnout.routing.attempts import Result, Target, execute
from turnout.routing.breaker import Breaker
from turnout.serving import respond
from turnout.serving.asgi import Receive, Send, header, read_body
from turnout.serving.chat import ChatRequest, check_episode_id, parse

if TYPE_CHECKING:
    from turnout.observe.tracing import Tracing

log = logging.getLogger("turnout")


class Gateway:
    def __init__(self, config: Config, providers: dict[str, Provider] | None = None) -> None:
        """``providers`` replaces the provider of the named targets (tests inject fakes here)."""
        self.config = config
        self._injected = providers or {}
        self.auth = Authenticator(config)
        self.quota = QuotaGate(config, None)
        self.targets: dict[str, Target] = {}
        self.policy: dict[str, frozenset[str]] = {cls: frozenset(p.targets) for cls, p in config.policy.items()}
        self.store: LedgerStore | None = None
        self.ledger: LedgerWriter | None = None
        self.metrics: Metrics | None = Metrics(self) if config.observability.metrics else None
        self.capture: Capture | None = None
        self.secret = redaction_key(config)
        self.releases: ReleaseRegistry | None = None
        self.registry: StoreRegistry | None = None
        self.release_store: ReleaseStore | None = None
        self.reviews: ReviewQueue | None = None  # sampled answers awaiting a human label
        self.canary: CanaryController | None = None
        self._review_rng = random.Random()
        self.tracing: Tracing | None = None

    async def start(self) -> None:
        """Open what the config asks for — ledger, traces, capture, issued keys, limiter — build
        every provider and warm each up (a local model loads here), then the review queue, the
        release registry and, with a ledger, the canary controller."""
        cfg = self.config
        if cfg.store.kind != "none":
            self.store = open_store(cfg.store)
            await self.store.open()
            self.ledger = LedgerWriter.from_config(self.store, cfg.store)
            self.ledger.start()
        self.tracing = open_tracing(cfg)
        if capture_wanted(cfg):
            self.capture = open_capture(cfg, self.secret)
            await self.capture.start()
        if cfg.tenants:  # issued keys live beside the limits (SQLite, or Redis when shared)
            keys = open_key_store(cfg.limits)
            await keys.open()
            self.auth = Authenticator(cfg, keys)
        if self.quota.needed():
            self.quota = QuotaGate(cfg, open_limiter(cfg.limits))
        for name, t in cfg.targets.items():
            timeouts = Timeouts(t.timeouts.connect, t.timeouts.ttft, t.timeouts.total)
            provider = self._injected.get(name) or create(name, t)
            self.targets[name] = Target(name, provider, Breaker(t.breaker), t.retry, timeouts, context_window(t))
        results = await asyncio.gather(*(t.provider.health() for t in self.targets.values()))
        for target, health in zip(self.targets.values(), results, strict=True):
            if not health.ok:
                log.warning("target %s is not healthy at start-up: %s", target.name, health.detail)
        if any(t.review_rate > 0 for t in cfg.tasks.values()) and self.capture is not None:
            redactor = Redactor(self.secret)  # review text is redacted like captured text
            self.reviews = ReviewQueue(cfg.releases.store_path, redactor=redactor, secrets=SecretsOnly(redactor))
            await self.reviews.open()
        if await asyncio.to_thread(os.path.isdir, cfg.releases.path):  # releases/<task>/<release>.yaml
            self.registry = await open_registry(cfg)
            self.releases, self.release_store = self.registry, self.registry.store
        if self.release_store is not None and self.store is not None:  # canaries need a ledger
            self.canary = CanaryController(cfg, self.release_store, self.store)
            self.canary.start()

    async def aclose(self) -> None:
        """After the server has stopped taking requests: flush the ledger, close providers."""
        if self.canary is not None:  # first: it reads the ledger and writes the release store
            await self.canary.aclose()
        if self.reviews is not None:
            await self.reviews.aclose()
        if self.registry is not None:
            await self.registry.aclose()
        if self.ledger is not None:
            await self.ledger.aclose()
        if self.capture is not None:
            await self.capture.aclose()
        if self.tracing is not None:  # exports what is queued: blocking network I/O
            await asyncio.to_thread(self.tracing.shutdown)
        await asyncio.gather(*(t.provider.aclose() for t in self.targets.values()), return_exceptions=True)
        if self.quota.limiter is not None:
            await self.quota.limiter.aclose()
        if self.auth.keys is not None:
            await self.auth.keys.aclose()
        if self.store is not None:
            await self.store.aclose()

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        checks = await asyncio.gather(*(t.provider.health() for t in self.targets.values()))
        detail = {
            t.name: {
                "ok": h.ok,
                "breaker": t.breaker.state.value,
                **({"detail": h.detail} if h.detail else {}),
            }
            for t, h in zip(self.targets.values(), checks, strict=True)
        }
        ok = all(any(detail[n]["ok"] for n in task.route) for task in self.config.tasks.values())
        return ok, detail

    async def models(self, authorization: bytes | None) -> dict[str, Any]:
        tenant = await self.auth.identify(authorization, time.time())
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "turnout"}
                for name in self.config.tasks
                if tenant.may_use(name)
            ],
        }

    async def chat(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        request_id = os.urandom(12).hex()
        t0 = time.perf_counter()
        row = LedgerRow(request_id, time.time(), "", "", "", False)
        try:
            req, result, grant, release = await self._route(scope, receive, row)
        except Exception as exc:
            await self.fail(row, exc, send, t0)
            return
        row.attempts, row.fallback = result.attempts, result.fallback
        row.target, row.replica = result.target.name, result.answer.replica
        row.queue_ms = result.answer.queue_ms
        row.model_version = (release.model_version if release else None) or result.answer.model_version
        row.fallback_ms = result.fallback_ms if row.fallback else None
        headers = respond.turnout_headers(request_id, req.task, result, release, prompt=False)
        decision = self.capture.decide(row.tenant, req.task) if self.capture is not None else None
        row.capture_mode = decision.used if decision is not None else "metadata"
        review = self._review_rate(req.task, decision)
        collected: list[str] | None = [] if decision is not None and (decision.capture or review) else None
        if isinstance(result.answer, Stream):
            usage = await self._stream(req, result.answer, headers, row, t0, receive, send, collected)
        else:
            usage = result.answer.usage
            if usage is not None:
                row.prompt_tokens, row.completion_tokens = usage.prompt_tokens, usage.completion_tokens
            row.cost_usd = self.quota.attempts_cost(row.attempts, usage, row.started_at)
            if row.cost_usd is not None:
                headers.append((b"x-turnout-cost-usd", f"{row.cost_usd:.8f}".encode()))
            row.generation_ms = result.attempts[-1].latency_ms
            row.status = 200
            await respond.completion(send, result.answer.body, request_id, req.task, headers)
            if collected is not None:
                collected.append(respond.answer_text(result.answer.body))
        self._account(row, t0)
        if collected is not None and self.capture is not None and decision is not None and decision.capture:
            prompt = orjson.dumps(req.body.get("messages")).decode()
            self.capture.submit(request_id, row.tenant, req.task, decision, prompt, "".join(collected))
        if review and collected is not None and decision is not None and row.status == 200:
            await self._review(row, decision.mode, req.body.get("messages"), "".join(collected), review)
        if row.status == 200:  # after the answer is out: quota bookkeeping is not on its path
            await self.quota.settle(grant, usage, row.cost_usd)
        else:
            await self.quota.release(grant)

    async def _route(
        self, scope: dict[str, Any], receive: Receive, row: LedgerRow
    ) -> tuple[ChatRequest, Result, Grant | None, Release | None]:
        """authenticate → parse → task → classify → policy → quota → attempt; fills ``row``."""
        tenant = await self.auth.identify(header(scope, b"authorization"), row.started_at)
        row.tenant = tenant.name
        req = parse(await read_body(receive, scope, self.config.server.max_body_bytes))
        row.task, row.stream = req.task, req.stream
        user = header_str(scope, b"x-turnout-user") or req.user
        # End-user ids are often emails: the ledger keeps a keyed pseudonym, stable per key.
        row.user = pseudonym(self.secret, user) if user else None
        row.episode_id = (
            check_episode_id(header_str(scope, b"x-turnout-episode"), "X-Turnout-Episode") or req.episode_id
        )
        task = self.config.tasks.get(req.task)
        serving = self.releases.serving(req.task) if self.releases is not None and task is not None else None
        release = choose(serving, req.task, user or row.request_id) if serving is not None else None
        forced = scope.get("turnout.release")  # set in-process by `turnout eval`, never by a client
        if isinstance(forced, Release):
            release = forced
        route = task.route if task is not None else []
        body = req.body
        if release is not None:  # its targets and parameters apply; the caller's messages stay
            row.release = release.name
            route = [t for t in release.route if t in route]
            body = {**release.params, **req.body}
        if task is None or not tenant.may_use(req.task):
            raise UnknownTask(f"the task {req.task!r} does not exist or is not open to you", param="model")
        row.data_class = policy.parse_data_class(header_str(scope, b"x-turnout-data-class") or req.data_class)
        allowed = policy.decide(
            task=req.task,
            route=route,
            data_class=row.data_class,
            tenant_classes=tenant.data_classes,
            policy=self.policy,
        )
        allowed, grant = await self.quota.admit(tenant.name, req.task, body, allowed, row.request_id)
        try:
            targets = [self.targets[n] for n in allowed]
            result = await execute(targets, body, stream=req.stream, request_id=row.request_id)
        except BaseException:
            await self.quota.release(grant)
            raise
        return req, result, grant, release

    async def _stream(
        self,
        req: ChatRequest,
        stream: Stream,
        headers: list[tuple[bytes, bytes]],
        row: LedgerRow,
        t0: float,
        receive: Receive,
        send: Send,
        collected: list[str] | None,
    ) -> Usage | None:
        row.ttft_ms = (time.perf_counter() - t0) * 1000
        outcome = await respond.stream(send, receive, stream, req, row.request_id, headers, collected)
        row.status = outcome.status
        row.error_class = outcome.error_class
        if outcome.usage is not None:
            row.prompt_tokens = outcome.usage.prompt_tokens
            row.completion_tokens = outcome.usage.completion_tokens
        # The answering replica is busy from its attempt's start to the stream's end.
        answer_s = time.perf_counter() - t0 - row.attempts[-1].offset_ms / 1000
        row.cost_usd = self.quota.attempts_cost(row.attempts, outcome.usage, row.started_at, answer_s)
        row.generation_ms = (time.perf_counter() - t0) * 1000 - row.ttft_ms
        return outcome.usage

    def _review_rate(self, task: str, decision: Decision | None) -> float:
        """The share of this task's answers to queue for review: only where capture allows text."""
        if self.reviews is None or decision is None or decision.mode == "metadata":
            return 0.0
        found = self.config.tasks.get(task)
        return found.review_rate if found is not None else 0.0

    async def _review(self, row: LedgerRow, mode: str, messages: Any, answer: str, rate: float) -> None:
        """After the answer is out; a failing queue costs the sample, never the request."""
        assert self.reviews is not None
        text = f"{orjson.dumps(messages).decode()}\n\n--- answer ---\n{answer}"
        try:
            await self.reviews.maybe_enqueue(
                row.task,
                row.release,
                row.request_id,
                text,
                rate,
                self._review_rng,
                mode="full" if mode == "full" else "redacted",
            )
        except ReviewError as exc:
            log.warning("review: request %s not queued: %s", row.request_id, exc.message)

    async def fail(self, row: LedgerRow, exc: Exception, send: Send, t0: float) -> None:
        """A request that ends before an answer: its error in OpenAI's shape, and its row (with
        the cost of the attempts it made). A non-turnout exception is a bug: a 500 that logs
        only the exception's type and place, never request content."""
        if isinstance(exc, TurnoutError):
            err = exc
            if isinstance(err, AllTargetsFailed):
                row.attempts = err.records
                row.cost_usd = self.quota.attempts_cost(row.attempts, None, row.started_at)
            row.status, row.error_class = err.status, err.code or err.type
        else:
            log.error("internal error in request %s: %s", row.request_id, describe(exc))
            err = TurnoutError("internal error")
            row.status, row.error_class = 500, "internal"
        await respond.error(send, err, row.request_id)
        self._account(row, t0)

    def _account(self, row: LedgerRow, t0: float) -> None:
        row.latency_ms = (time.perf_counter() - t0) * 1000
        if self.ledger is not None:
            self.ledger.submit(row)
        if self.metrics is not None:
            self.metrics.observe(row)
        if self.tracing is not None:
            self.tracing.record(row)

    def user_pseudonym(self, user: str) -> str:
        return pseudonym(self.secret, user)


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


def open_capture(config: Config, key: bytes) -> Capture:
    redactor = Redactor(key)
    path = ":memory:" if config.store.kind in ("memory", "none") else capture_path(config.store)
    return Capture(config.capture, path, redactor, secrets=SecretsOnly(redactor))


def describe(exc: BaseException) -> str:
    """An exception's type and where it was raised, without its message (which may quote
    request content)."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}{where}"


def header_str(scope: dict[str, Any], name: bytes) -> str | None:
    value = header(scope, name)
    return value.decode("latin-1") if value else None
