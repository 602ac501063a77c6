"""The request path, shared by every door (``turnout.serving.door``), top to bottom::

    authenticate → parse (door) → admit: task, release, classify → screen → body (door)
    → tools (allowlist) → classify (PII, secrets) → policy → cache (a hit skips to respond)
    → the caller's limits (``turnout.routing.constraints``) → quota
    → attempt (retry / fallback, within the latency limit; each answer's tool calls checked)
    → output checks (repair, escalation; ``turnout.serving.output``) → respond (door)
    → settle the quota → account → capture, review → mirror to a shadow release

Each stage returns a small value (``Tenant``, the door's request, ``Admission``, ``Screened``,
the body, the allowed targets and the quota grant, ``Result``, ``Answered``); the ledger row is built once,
at the end, from them. A request that fails before its answer gets its error in OpenAI's shape
and a row all the same. What follows the answer runs in ``finally``: whatever happens, the
quota grant is settled or released and the request is accounted. A bug (any exception that is
not a ``TurnoutError``) is re-raised after that, for the error boundary to answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from typing import Any, NamedTuple

import orjson

from turnout._support.printable import MAX_CHARS, printable
from turnout.cache import replay
from turnout.cache.entry import Recording
from turnout.cache.stage import HIT, MISS, Lookup, bypassed
from turnout.config import HUMAN, embedding_tasks
from turnout.control.auth import Tenant
from turnout.control.pricing import Priced
from turnout.control.quota.base import Grant
from turnout.control.quota.plan import max_output_tokens, sets_output_bound
from turnout.errors import (
    AllTargetsFailed,
    AnswerRefused,
    NotReady,
    PolicyDenied,
    RequestError,
    ShuttingDown,
    TurnoutError,
    UnknownTask,
)
from turnout.ledger.record import LedgerRow
from turnout.privacy.capture.model import Decision
from turnout.privacy.redact import masked
from turnout.providers.base import Usage
from turnout.releases.base import Release, Serving, choose
from turnout.releases.review import ReviewError
from turnout.routing import constraints, policy
from turnout.routing.attempts import Result, Target, execute
from turnout.routing.constraints import Constraints, Skip
from turnout.routing.latency import LatencyWindow
from turnout.safety import policy as safety
from turnout.safety.classify import Classifiers, Raised
from turnout.safety.tools import Allowlists, Guard
from turnout.serving import respond, turned
from turnout.serving.asgi import CLIENT_LEFT, Receive, Send, credential, headers, read_body
from turnout.serving.door import EMBEDDINGS, Admission, Answered, Door, Inbound, R, Reply, check_episode_id
from turnout.serving.judge import Judge
from turnout.serving.output import Checked, OutputStage
from turnout.serving.runtime import Runtime, pseudonym
from turnout.serving.scoring import TaskScorers
from turnout.serving.shadow import Served
from turnout.serving.stops import answer_fields

log = logging.getLogger("turnout")
_MAX_LATENCY = constraints.HEADERS[constraints.LATENCY].lower().encode()  # as ASGI spells them
_MAX_COST = constraints.HEADERS[constraints.COST].lower().encode()


class Failure(NamedTuple):
    """A request that ended before its answer: its error, the attempts it made and what the
    answers it turned down used (``turned``: generated, so paid for)."""

    status: int
    error_class: str
    priced: Priced | None
    usage: Usage | None = None
    usage_estimated: bool = False


class Keep(NamedTuple):
    """What may be kept of the answer's text: the capture decision and the review rate."""

    decision: Decision
    review_rate: float

    @property
    def collect(self) -> bool:
        return self.decision.capture or self.review_rate > 0


class Pipeline:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.tasks = runtime.config.tasks
        self.max_body = runtime.config.server.max_body_bytes
        self.safety = safety.Gates(runtime.config)
        self.allowlists = Allowlists(runtime.config)
        self.classifiers = Classifiers(runtime.config)
        self.output = OutputStage(runtime)
        metrics = runtime.metrics
        self.judge = Judge(
            lambda name: runtime.targets[name].provider if name in runtime.targets else None,
            runtime.policy,
            metrics.judged if metrics is not None else None,
        )
        self._review_rng = random.Random()
        self.embedding_tasks = embedding_tasks(runtime.config)  # served by the embeddings door only
        self.free = replay.FreeBook(runtime.config)  # a cache hit's prices
        self.latency = LatencyWindow()  # each target's recent latency, for max_latency_ms
        self.default_max_tokens = runtime.config.limits.default_max_tokens
        # Targets whose generation the gateway runs itself: a client that leaves stops it.
        self.embedded = frozenset(n for n, t in runtime.config.targets.items() if t.provider == "local")

    async def run(
        self,
        door: Door[R],
        scope: dict[str, Any],
        receive: Receive,
        send: Send,
        request_id: str,
        *,
        task: str | None = None,
        release: Release | None = None,
        tenant: Tenant | None = None,
    ) -> None:
        """One request through ``door``. ``task``: named by the path (the task API).
        ``release``: serve as this release, whatever serves now; ``tenant``: act as this tenant
        without a key. Both for ``turnout eval`` in-process, never a client's choice: a request
        with a forced release is an eval's, and its row says ``evaluation`` (left out of canary
        judging, whichever tenant it ran as)."""
        rt = self.rt
        started_at, t0 = time.time(), time.perf_counter()
        identity = tenant
        tenant = None
        raw: bytes | None = None
        request: R | None = None
        admission: Admission | None = None
        screened: safety.Screened | None = None
        guard: Guard | None = None
        body: dict[str, Any] = {}
        grant: Grant | None = None
        result: Result | None = None
        keep: Keep | None = None
        live: TaskScorers | None = None
        shadow: Release | None = None
        answered: Answered | None = None
        failure: Failure | None = None
        checked: Checked | None = None
        lookup: Lookup | None = None
        recording: Recording | None = None
        limits: Constraints | None = None
        skipped: list[Skip] = []
        watch: respond.ClientWatch | None = None  # the client, until the answer is relayed (``embedded``)
        asked = False  # the attempt loop began: a target may have been called (and may bill)
        spent: tuple[Usage | None, bool] = (None, False)  # answers the attempt loop turned down
        try:
            tenant = identity or await rt.auth.identify(credential(scope), started_at)
            if rt.waiting and rt.state_missing:  # started while PostgreSQL was down (serving/waiting.py)
                raise NotReady("the gateway is starting: its shared state (PostgreSQL) does not answer yet")
            raw = await read_body(receive, scope, self.max_body)
            request = door.parse(raw, task)
            admission = self.admit(door, request, tenant, scope, request_id, release)
            limits = self.limits(scope, request)
            near: list[safety.Near] = []  # borderline texts for the judge, where there is one
            screened = self.screen(door, request, admission, near)
            if screened is not None and screened.blocked:
                raise screened.refusal()
            body = door.body(request, admission.release)
            guard = self.tool_guard(admission, body)
            if guard is not None and guard.refusal is not None:
                raise guard.refusal
            checking = self.output.checks(admission.task, body, fenced=door.fenced_json) if self.output.active else None
            admission, raised = self.classify(admission, body)
            if near:  # asked with the effective data class: the text goes nowhere the request could not
                screened = await self.second_opinion(admission, near, screened, request_id)
                if screened is not None and screened.blocked:  # the row keeps the verdict
                    raise screened.refusal()
            allowed = self.allowed(admission, raised, _declared_in(scope, request))
            if rt.cache is not None:  # a hit takes no quota; it was checked when it was generated
                lookup = await rt.cache.lookup(
                    admission.task, tenant.name, admission.data_class, admission.release, body, _bypass(scope)
                )
                result = self.hit(lookup, allowed, t0)
            if result is not None:
                checking = None
            else:
                if limits is not None:
                    allowed = await self.constrain(limits, admission, body, allowed, skipped)
                allowed, grant = await rt.quota.admit(
                    tenant.name,
                    admission.task,
                    body,
                    allowed,
                    request_id,
                    checked=checking is not None,
                    output_param=door.output_param,
                )
                targets = [rt.targets[n] for n in allowed]
                # A checked answer is asked for whole, even for a stream: no unchecked byte goes out.
                stream = request.stream and checking is None
                # A stream's client that leaves before its first chunk stops the attempts; so does
                # any client of the embedded model, whose few workers a generation holds.
                if request.stream or not self.embedded.isdisjoint(allowed):
                    watch = respond.ClientWatch(receive)
                asked = True
                result = await self.attempt(targets, body, stream, request_id, guard, limits, t0)
                if result.turned:
                    spent = await turned.price(rt, result.turned, body, started_at)
            if checking is not None:
                checked = await self.output.run(
                    checking,
                    result,
                    body,
                    admission,
                    stream=request.stream,
                    request_id=request_id,
                    started_at=started_at,
                    guard=guard,
                )
                result = checked.result
            if watch is not None:
                watch.close()  # the relay watches from here on
            keep = self.keep(admission)
            live = rt.scoring.draw(admission.task) if rt.scoring is not None else None
            # Never for a forced release (an eval), nor for a cache hit: it replays an answer
            # compared (when drawn) as it was generated, at no cost and in a millisecond, which
            # would make the shadow look dearer and slower than the model it replaces.
            if rt.shadows is not None and release is None and (lookup is None or lookup.state != HIT):
                shadow = rt.shadows.draw(self.serving_of(admission.task), admission)
            if checked is not None and not checked.passed:  # refused (502) or escalated to a person (202)
                answered = await self.output.answer(
                    checked,
                    send,
                    request_id,
                    admission,
                    body,
                    started_at=started_at,
                    prompt=door.release_prompt,
                    endpoint=door.endpoint,
                    ticket_body=door.ticket_body and not request.stream,
                )
                answered = _with_spent(answered, spent)
            else:
                if lookup is not None and lookup.leading is not None and rt.cache is not None:
                    # Too large to keep: its followers go ask for themselves at once, instead of
                    # waiting until this stream's client has read it all.
                    recording = replay.record(result, self.max_body, functools.partial(rt.cache.done, lookup))
                answered = await door.respond(
                    self.reply(
                        door,
                        request_id,
                        request,
                        admission,
                        result,
                        keep,
                        started_at,
                        t0,
                        screened,
                        lookup,
                        live is not None or shadow is not None,
                    ),
                    send,
                    receive,
                )
                if checked is not None:
                    answered = checked.with_spent(answered)
                answered = _with_spent(answered, spent)
                if lookup is not None and lookup.leading is not None and answered.status == 200:
                    await self.fill(lookup, result, recording, answered)
                if answered.status < 400 and scope.get(CLIENT_LEFT):  # answered, paid for, never received
                    answered = answered._replace(status=499, error_class="client_disconnected")
        except Exception as exc:
            if isinstance(exc, (AllTargetsFailed, AnswerRefused)) and exc.turned:
                spent = await turned.price(rt, exc.turned, body, started_at)
            failure = self.failure(exc, result, started_at, asked)._replace(usage=spent[0], usage_estimated=spent[1])
            if not isinstance(exc, TurnoutError):
                raise  # a bug: the boundary answers and logs it, after the finally below
            if isinstance(exc, AllTargetsFailed):  # upstreams' own words: some echo the prompt back
                exc.message = masked(exc.message)
                if exc.code == "context_length_exceeded":
                    exc.param = door.prompt_param
            await respond.error(send, exc, request_id, door.endpoint)
        except asyncio.CancelledError:
            if watch is not None and watch.left():
                # A stream's client left before its first chunk: the attempts stop, the
                # reservation and slot are freed now, and the row says 499.
                failure = Failure(499, "client_disconnected", None)
            else:
                # A shutdown past its grace period: the request still settles its quota and gets
                # its row (the runtime waits for that before closing them). Not re-raised: the
                # request ends here, answered 503 if nothing was sent yet.
                cut = ShuttingDown("the gateway is shutting down; the request was cut")
                failure = self.failure(cut, result, started_at, asked)
                if answered is None and result is None:
                    await _error_quietly(send, cut, request_id, door.endpoint)
        finally:
            if watch is not None:
                watch.close()
            if lookup is not None and rt.cache is not None:  # frees a flight its leader left unfilled
                rt.cache.done(lookup)
            try:
                if grant is not None:
                    await self.settle(grant, answered, failure)
            finally:
                if answered is not None or failure is not None:
                    latency_ms = (time.perf_counter() - t0) * 1000
                    trail = Trail(
                        request_id,
                        started_at,
                        task if request is not None else self.named_task(door, task, raw),
                        tenant,
                        request,
                        admission,
                        result,
                        keep,
                        screened,
                        guard,
                        checked,
                    )
                    row = ledger_row(
                        trail,
                        answered,
                        failure,
                        latency_ms,
                        door.release_prompt,
                    )
                    row.endpoint = door.endpoint
                    if release is not None:  # a forced release: turnout eval's golden case, never live traffic
                        row.evaluation = True
                    if limits is not None:
                        row.constraints = limits.record(skipped)
                    answer_fields(row, request, result)
                    if lookup is not None:
                        _cache_fields(row, lookup)
                    if live is not None and answered is not None and answered.status == 200 and answered.text:
                        row.live_pass = await live.passes(answered.text)  # the answer is out: no delay
                    self.account(row, identified=tenant is not None)
                    if answered is not None and keep is not None:
                        await self.keep_text(row, keep, body, answered)
                    if shadow is not None and answered is not None and answered.status == 200 and answered.text:
                        assert request is not None and admission is not None  # drawn after both
                        self.mirror(door, request, admission, shadow, row, answered.text, keep)

    def named_task(self, door: Door[R], task: str | None, raw: bytes | None) -> str | None:
        """The task of a request its door could not parse (a 400 for its messages): the path's,
        else the body's ``task_param`` where that names a configured task. Read again only on
        this failure's path; a name the gateway does not know is left out (a client chose it)."""
        if task is not None or not raw:
            return task
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        named = body.get(door.task_param) if isinstance(body, dict) else None
        return named if isinstance(named, str) and named in self.tasks else None

    # --- stages ----------------------------------------------------------------------------

    def admit(
        self, door: Door[R], request: R, tenant: Tenant, scope: dict[str, Any], request_id: str, forced: Release | None
    ) -> Admission:
        """task → release (sticky per end user) → classify."""
        task = request.task
        if task not in self.tasks or not tenant.may_use(task):
            raise UnknownTask(
                f"the task {printable(task)!r} does not exist or is not open to you", param=door.task_param
            )
        if (task in self.embedding_tasks) != (door.endpoint == EMBEDDINGS):
            raise _wrong_endpoint(task, door)
        sent = headers(scope)
        user = _text(sent.get(b"x-turnout-user")) or request.user
        release = forced if forced is not None else self.serving(task, str(user or request_id))
        if release is None and door.needs_release:
            raise UnknownTask(f"the task {task!r} has no active release", param=door.task_param, code="no_release")
        episode_id = check_episode_id(_text(sent.get(b"x-turnout-episode")), "X-Turnout-Episode")
        data_class = _data_class(scope, sent.get(b"x-turnout-data-class"), request.data_class)
        # End-user ids are often emails: the ledger keeps a keyed pseudonym, stable per key.
        user_id = pseudonym(self.rt.secret, str(user)) if user else None
        return Admission(tenant, task, release, data_class, user_id, episode_id or request.episode_id, data_class)

    def screen(
        self, door: Door[R], request: R, admission: Admission, near: list[safety.Near] | None = None
    ) -> safety.Screened | None:
        """Injection screening (``turnout.safety``) of the request's untrusted texts, on the
        channels its tenant and task screen; None when none does or nothing is over threshold.
        ``near`` collects the borderline texts when the gate has a judge."""
        gate = self.safety.get(admission.tenant.name, admission.task)
        return None if gate is None else gate.screen(door.untrusted(request), near)

    async def second_opinion(
        self, admission: Admission, near: list[safety.Near], screened: safety.Screened | None, request_id: str
    ) -> safety.Screened | None:
        """The judge's verdict on the borderline texts merged in."""
        gate = self.safety.get(admission.tenant.name, admission.task)
        assert gate is not None and gate.judge is not None
        judged = await self.judge.confirm(gate.judge, admission.task, admission.data_class, near, request_id)
        return safety.confirmed(screened, judged)

    def hit(self, lookup: Lookup | None, allowed: list[str], t0: float) -> Result | None:
        """The cache stage's answer (``turnout.cache``): a hit's as a ``Result``; None for a
        miss, a bypass or a task without cache."""
        if lookup is None or lookup.entry is None:
            return None
        result = replay.hit_result(lookup.entry, self.rt.targets, allowed, t0)
        if result is None and self.rt.cache is not None:  # its target no longer allowed: asked anew, kept
            self.rt.cache.refused(lookup)
        return result

    async def fill(self, lookup: Lookup, result: Result, recording: Recording | None, answered: Answered) -> None:
        """A leading miss's whole answer into the cache, and to the requests waiting on it."""
        cache = self.rt.cache
        assert cache is not None
        value = replay.entry_bytes(result, recording, answered.priced.total, answered.usage)
        if value is not None:
            await cache.fill(lookup, value)

    def serving(self, task: str, sticky_key: str) -> Release | None:
        serving = self.serving_of(task)
        return choose(serving, task, sticky_key) if serving is not None else None

    def serving_of(self, task: str) -> Serving | None:
        registry = self.rt.releases
        return registry.serving(task) if registry is not None else None

    def tool_guard(self, admission: Admission, body: dict[str, Any]) -> Guard | None:
        """The tool allowlist (``turnout.safety.tools``): 400 for a declared tool it lacks; the
        guard checks the model's tool calls in the attempt loop. None: tools are not checked."""
        rules = self.allowlists.get(admission.tenant.name, admission.task)
        return None if rules is None else rules.admit(body)

    def classify(self, admission: Admission, body: dict[str, Any]) -> tuple[Admission, Raised | None]:
        """PII or secrets in a request declared below its ``classify.raise_to`` raise its class
        (``turnout.safety.classify``), before policy reads it."""
        classifier = self.classifiers.get(admission.tenant.name, admission.task)
        raised = None if classifier is None else classifier.classify(admission.data_class, body)
        return (admission, None) if raised is None else (admission._replace(data_class=raised.effective), raised)

    def allowed(
        self, admission: Admission, raised: Raised | None = None, declared_in: str = policy.DATA_CLASS_HEADER
    ) -> list[str]:
        """The task's route (cut to the release's targets) filtered by the data class;
        ``declared_in`` names where the request declared it, for a refusal's ``param``."""
        route = self.tasks[admission.task].route
        release = admission.release
        if release is not None:
            route = [t for t in release.route if t in route]
        try:
            return policy.decide(
                task=admission.task,
                route=route,
                data_class=admission.data_class,
                tenant_classes=admission.tenant.data_classes,
                policy=self.rt.policy,
                declared_in=declared_in,
            )
        except PolicyDenied as exc:
            if raised is None:
                raise
            raise PolicyDenied(f"{exc.message} ({raised.note()})", param=exc.param) from exc

    def limits(self, scope: dict[str, Any], request: Inbound) -> Constraints | None:
        """The caller's max_latency_ms / max_cost_usd: headers on every door, or the
        metadata of a door that reads them there; 400 naming the field for a bad value."""
        sent = headers(scope)
        latency, cost = _text(sent.get(_MAX_LATENCY)), _text(sent.get(_MAX_COST))
        meta = getattr(request, "constraints", None)  # the doors whose metadata may carry them
        if latency is None and cost is None and meta is None:
            return None  # most requests: two header scans, no parsing
        return constraints.parse({_MAX_LATENCY.decode(): latency, _MAX_COST.decode(): cost}, meta)

    async def constrain(
        self, limits: Constraints, admission: Admission, body: dict[str, Any], allowed: list[str], skipped: list[Skip]
    ) -> list[str]:
        """The targets whose recent p95 and worst-case cost fit the caller's limits, before
        any attempt; those left out go to ``skipped`` (for the row, a 422 included). A cost
        limit bounds the answer as the quota's reservation does: without ``max_tokens`` the
        default bound is told upstream, so the worst case holds."""
        worst: dict[str, float] = {}
        if limits.max_cost_usd is not None:
            embeds = admission.task in self.embedding_tasks
            if not embeds and not sets_output_bound(body):
                body["max_tokens"] = self.default_max_tokens
            prompts = await self.rt.tokens.prompts(body, allowed)
            output = 0 if embeds else max_output_tokens(body, self.default_max_tokens)
            now = time.time()
            worst = {name: self.rt.prices.worst_case(name, prompts[name], output, now) for name in allowed}
        try:
            kept, skips = constraints.fit(allowed, limits, self.latency.p95, worst)
        except constraints.ConstraintUnsatisfiable as exc:
            skipped.extend(exc.skipped)
            raise
        skipped.extend(skips)
        return kept

    async def attempt(
        self,
        targets: list[Target],
        body: dict[str, Any],
        stream: bool,
        request_id: str,
        guard: Guard | None,
        limits: Constraints | None,
        t0: float,
    ) -> Result:
        """The attempt loop; under ``max_latency_ms`` what is left of it is the deadline of
        every retry and fallback together (a stream's: until its first chunk)."""
        if limits is None or limits.max_latency_ms is None:
            return await execute(targets, body, stream=stream, request_id=request_id, check=guard)
        return await constraints.within(
            limits, t0, lambda: execute(targets, body, stream=stream, request_id=request_id, check=guard)
        )

    def keep(self, admission: Admission) -> Keep | None:
        """None: text capture is off (and for embeddings: no answer text to keep). Review samples
        only where capture allows text."""
        capture = self.rt.capture
        if capture is None or admission.task in self.embedding_tasks:
            return None
        decision = capture.decide(admission.tenant.name, admission.task)
        rate = 0.0
        if self.rt.reviews is not None and decision.mode != "metadata":
            rate = self.tasks[admission.task].review_rate
        return Keep(decision, rate)

    def reply(
        self,
        door: Door[R],
        request_id: str,
        request: R,
        admission: Admission,
        result: Result,
        keep: Keep | None,
        started_at: float,
        t0: float,
        screened: safety.Screened | None = None,
        lookup: Lookup | None = None,
        collect: bool = False,
    ) -> Reply[R]:
        """``collect``: keep the answer's text (live scoring or a shadow reads it) even where
        capture does not."""
        release = admission.release
        model_version = (release.model_version if release else None) or result.answer.model_version
        headers = respond.turnout_headers(
            request_id, admission.task, result, release, model_version, prompt=door.release_prompt
        )
        if screened is not None:  # flagged: a blocked request never gets here
            headers.append((safety.HEADER, b"flagged"))
        prices = self.rt.prices
        if lookup is not None:
            headers.append(lookup.header)
            if lookup.state == HIT:
                prices = self.free
        collect = collect or (keep is not None and keep.collect)
        return Reply(
            request_id,
            request,
            admission,
            result,
            headers,
            collect,
            model_version,
            started_at,
            t0,
            prices,
            self.rt.tokens,
        )

    def failure(self, exc: Exception, result: Result | None, started_at: float, asked: bool = True) -> Failure:
        """``asked``: the attempt loop began. A request refused before it (a 400, a 403 by policy, a
        429 by quota, a 422 by the caller's limits) reached no target: it cost exactly $0, not an
        unknown amount. One cut in the loop with no attempt on record (a bug, a shutdown) may
        have been billed: unknown (None)."""
        if not isinstance(exc, TurnoutError):
            return Failure(500, "internal", None if asked else Priced([], 0.0))
        attempts: list[Any] | None
        if isinstance(exc, (AllTargetsFailed, AnswerRefused)):  # the attempts made before it
            attempts = exc.records
        else:
            attempts = result.attempts if result else None
        if attempts:
            priced: Priced | None = self.rt.prices.price_attempts(attempts, None, started_at)
        else:
            priced = None if asked else Priced([], 0.0)  # its own list: a row's attempts are its own
        return Failure(exc.status, exc.code or exc.type, priced)

    # --- after the answer ------------------------------------------------------------------

    async def settle(self, grant: Grant, answered: Answered | None, failure: Failure | None = None) -> None:
        """An answer is paid for, whole or cut (the client left, the stream broke, the
        shutdown cut it): its usage is the upstream's or, where none came, the door's count of
        what was generated; so are the answers a failed request turned down, and failed attempts
        that cost money without an answer (a self-hosted replica's busy seconds, priced in the
        row). Nothing generated and nothing priced: the reservation is released."""
        if answered is not None and answered.usage is not None:
            await self.rt.quota.settle(grant, answered.usage, answered.priced.total)
        elif answered is None and failure is not None and failure.priced is not None:
            cost = failure.priced.total
            if failure.usage is not None:
                await self.rt.quota.settle(grant, failure.usage, cost)
            elif cost:  # no tokens generated: the token bucket gets its estimate back
                await self.rt.quota.settle(grant, Usage(0, 0), cost)
            else:
                await self.rt.quota.release(grant)
        else:
            await self.rt.quota.release(grant)

    def account(self, row: LedgerRow, *, identified: bool = True) -> None:
        """The row to the ledger, metrics, traces and logs. A caller never identified (a missing or
        wrong key) is counted in metrics only: a fuzzer or a scanner must not fill the ledger."""
        rt = self.rt
        if not row.cache_hit:
            self.observe_latency(row)
        if rt.ledger is not None and identified:
            rt.ledger.submit(row)
        if rt.metrics is not None:
            rt.metrics.observe(row)
        if rt.tracing is not None:
            rt.tracing.record(row)
        rt.request_log.observe(row)  # the access log; fallback and 5xx warnings

    def observe_latency(self, row: LedgerRow) -> None:
        """Answered attempts (a stream's: to its first chunk) and timed-out ones, which show
        the target is at least that slow, feed each target's latency window."""
        for attempt in row.attempts:
            error = attempt.error_class
            if error is None or error.startswith("timeout"):
                self.latency.observe(attempt.target, attempt.latency_ms)

    async def keep_text(self, row: LedgerRow, keep: Keep, body: dict[str, Any], answered: Answered) -> None:
        """Text capture and review sampling, where the capture decision allows text."""
        capture, text = self.rt.capture, answered.text
        if capture is None or text is None:
            return
        messages = body.get("messages")
        prompt = orjson.dumps(messages).decode()
        if keep.decision.capture:
            capture.submit(row.request_id, row.tenant, row.task, keep.decision, prompt, text)
        if keep.review_rate > 0 and answered.status == 200:
            await self.review(row, keep.decision.mode, f"{prompt}\n\n--- answer ---\n{text}", keep.review_rate)

    def mirror(
        self,
        door: Door[R],
        request: R,
        admission: Admission,
        shadow: Release,
        row: LedgerRow,
        text: str,
        keep: Keep | None,
    ) -> None:
        """A copy of the request to the task's shadow release (``turnout.serving.shadow``), after
        its answer and row: the request never waits for it."""
        mirror = self.rt.shadows
        assert mirror is not None
        decision = keep.decision if keep is not None and keep.decision.capture else None
        mirror.mirror(
            door, request, admission, shadow, Served(row.request_id, text, row.latency_ms, row.cost_usd, decision)
        )

    async def review(self, row: LedgerRow, mode: str, text: str, rate: float) -> None:
        """A failing queue costs the sample, never the request."""
        reviews = self.rt.reviews
        assert reviews is not None
        try:
            await reviews.maybe_enqueue(
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


class Trail(NamedTuple):
    """How far a request got: each stage's value, None where it did not get there."""

    request_id: str
    started_at: float
    task: str | None  # named by the path, or by a body its door could not parse (``Pipeline.named_task``)
    tenant: Tenant | None
    request: Inbound | None
    admission: Admission | None
    result: Result | None
    keep: Keep | None
    screened: safety.Screened | None = None
    guard: Guard | None = None  # the tool checks, where the task has an allowlist
    checked: Checked | None = None  # the output checks, where the task has them


def ledger_row(
    trail: Trail, answered: Answered | None, failure: Failure | None, latency_ms: float, release_prompt: bool
) -> LedgerRow:
    """The request's one row, from the stages it passed (a refusal passes few)."""
    request_id, started_at, task, tenant, request, admission, result, keep, screened, guard, checked = trail
    priced: Priced | None
    if answered is not None:
        status, error_class, priced, usage = answered.status, answered.error_class, answered.priced, answered.usage
    else:
        assert failure is not None
        status, error_class, priced, usage = failure.status, failure.error_class, failure.priced, failure.usage
    release = admission.release if admission is not None else None
    if request is not None:
        task = request.task if admission is not None else _unknown(request.task)
    else:
        task = _unknown(task or "")
    answer = result.answer if result is not None else None
    fallback = result.fallback if result is not None else False
    # Positional, in field order: the request path builds one of these per request.
    row = LedgerRow(
        request_id,
        started_at,
        tenant.name if tenant is not None else "",
        task,
        admission.data_class if admission is not None else "",
        request.stream if request is not None else False,
        admission.user if admission is not None else None,
        release.name if release is not None else None,
        release.prompt_version if release is not None and release_prompt else None,
        result.target.name if result is not None else None,
        answer.replica if answer is not None else None,
        ((release.model_version if release else None) or answer.model_version) if answer is not None else None,
        status,
        error_class,
        priced.attempts if priced is not None else [],
        fallback,
        usage.prompt_tokens if usage is not None else None,
        usage.completion_tokens if usage is not None else None,
        priced.total if priced is not None else None,
        latency_ms,
        answer.queue_ms if answer is not None else None,
        answered.ttft_ms if answered is not None else None,
        answered.generation_ms if answered is not None else None,
        result.fallback_ms if result is not None and fallback else None,
        capture_mode=(keep.decision.used if keep is not None else "metadata") if answered is not None else None,
        episode_id=admission.episode_id if admission is not None else None,
        usage_estimated=(
            answered.usage_estimated if answered is not None else failure is not None and failure.usage_estimated
        )
        if usage is not None
        else None,
        safety=screened.record if screened is not None else None,
        tool_violations=guard.record if guard is not None else None,
        declared_class=admission.declared_class if admission is not None else None,
    )
    if checked is not None:
        _output_fields(row, checked)
    return row


def _unknown(task: str) -> str:
    """A task name the gateway does not know, as the ledger keeps it: a client chose it (it may
    hold a pasted key or prompt words), so printable, short and with secrets and PII masked."""
    return task if task.isidentifier() and len(task) <= MAX_CHARS else printable(masked(task[: 2 * MAX_CHARS]))


def _cache_fields(row: LedgerRow, lookup: Lookup) -> None:
    """``cache_hit``: True (a hit), False (a miss); None where the cache was bypassed. A hit's
    ``cost_saved_usd`` is what its answer cost when it was generated."""
    if lookup.state == HIT:
        row.cache_hit = True
        row.cost_saved_usd = lookup.entry.cost_usd if lookup.entry is not None else None
    elif lookup.state == MISS:
        row.cache_hit = False


def _output_fields(row: LedgerRow, checked: Checked) -> None:
    """The row's output-check fields; an escalation is also the row's ``escalated`` (and, to a
    person, ``human_review``), as feedback would say it."""
    if checked.failed:
        row.repairs = checked.repairs
        row.output_check = checked.record
    if checked.escalated_to is not None:
        row.escalated_to = checked.escalated_to
        row.escalated = True
        row.human_review = True if checked.escalated_to == HUMAN else None


async def _error_quietly(send: Send, err: TurnoutError, request_id: str, endpoint: str) -> None:
    """At shutdown the connection may already be gone, or its answer begun."""
    with contextlib.suppress(Exception):  # nothing more to tell the client
        await respond.error(send, err, request_id, endpoint)


def _wrong_endpoint(task: str, door: Door[Any]) -> RequestError:
    """A task that embeds asked for text, or a text task asked for embeddings."""
    if door.endpoint == EMBEDDINGS:
        message = f"the task {task!r} does not embed (its targets declare no embedding_space)"
    else:
        message = f"the task {task!r} embeds: call POST /v1/embeddings"
    return RequestError(message, param=door.task_param, code="wrong_endpoint")


def _bypass(scope: dict[str, Any]) -> bool:
    """The caller asked past the cache (``Cache-Control: no-cache``, ``X-Turnout-Cache: bypass``).
    A header sent on several lines is one comma-separated list (RFC 9110), so every line is read:
    ``no-cache`` on a second ``Cache-Control`` line is as binding as on the first."""
    sent = headers(scope)
    control, turnout = sent.get(b"cache-control"), sent.get(b"x-turnout-cache")
    if control is None and turnout is None:
        return False  # most requests: two lookups
    lines: dict[bytes, list[bytes]] = {b"cache-control": [], b"x-turnout-cache": []}
    for name, value in scope["headers"]:
        found = lines.get(bytes(name).lower())
        if found is not None:
            found.append(bytes(value))
    return bypassed(b",".join(lines[b"cache-control"]) or None, b",".join(lines[b"x-turnout-cache"]) or None)


def _data_class(scope: dict[str, Any], header: bytes | None, body: str | None) -> str:
    """The declared class: the header's or the body's; where both, or the header repeats or
    lists several, the strictest (``policy.strictest_class``)."""
    if header is None:
        return policy.parse_data_class(body)
    sent = [v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"x-turnout-data-class"]
    if len(sent) == 1 and b"," not in header and not body:
        return policy.parse_data_class(sent[0])
    return policy.strictest_class([*sent, body])


def _declared_in(scope: dict[str, Any], request: Inbound) -> str:
    """Where the request declared its data class: the header (also where to declare one when
    neither did), or the body's ``metadata.data_class``."""
    if request.data_class and headers(scope).get(b"x-turnout-data-class") is None:
        return "metadata.data_class"
    return policy.DATA_CLASS_HEADER


def _with_spent(answered: Answered, spent: tuple[Usage | None, bool]) -> Answered:
    """The answer's usage with the turned-down answers' added (their cost is in its priced
    attempts already): the quota is settled with every token generated."""
    usage, estimated = spent
    if usage is None or answered.usage is None:
        return answered if usage is None else answered._replace(usage=usage, usage_estimated=estimated)
    return answered._replace(
        usage=turned.add(answered.usage, usage), usage_estimated=answered.usage_estimated or estimated
    )


def _text(value: bytes | None) -> str | None:
    """A header's value as text; None when absent or empty. Clients send UTF-8 (curl, every SDK):
    read as Latin-1, the header's old default, ``café-42`` became ``cafÃ©-42`` and matched the
    same id sent in a JSON body nowhere. Bytes that are not UTF-8 are read as Latin-1."""
    if not value:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")
