"""Shadow traffic: a task's release in ``shadow`` (``turnout release shadow TASK NAME --percent
P``) is sent a copy of a sampled share of the requests its active release serves, after their
answers went out. Its answers are compared with the served ones and scored, never served.

    draw      at admission: the shadow release for this request, or None (no shadow, not drawn,
              a canary or forced release served it, an embedding task); a drawn request
              collects its answer's text
    mirror    after the answer and its ledger row, in the request's ``finally``: checks the
              task's caps (``tasks.T.shadow``: at most ``max_concurrency`` calls at once and
              ``usd_per_day`` of spend a UTC day, per replica) and starts the call as a
              background task the request never waits for
    the call  the door renders the request for the shadow release (its prompt, parameters and
              targets), policy cuts its route by the request's data class exactly as for
              served traffic, the attempt loop calls it (never streamed), its answer is scored
              with the task's live scorers and its release's output schema, compared with
              the served answer (``agree``; with ``compare: judge`` by a judge target, where the
              request's data class may reach it, its calls priced apart), priced, and its pair
              (no text) goes to the shadow store through a bounded batch queue; where the
              capture policy keeps the served request's text, the shadow answer is captured
              too (``<request id>:shadow``)

Every outcome is counted in ``turnout_shadow_total{task,release,result}``. A replica that
starts counts the day's spend already in the store (every replica's, on shared state) as its
own, so a restart never resets a cap; the cap can be passed by at most the calls in flight
when it is reached (each bounded by its ``max_tokens``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, NamedTuple

import orjson
from referencing.exceptions import Unresolvable

from turnout._support.batching import BatchQueue
from turnout._support.depth import too_deep
from turnout.config import Config, ShadowConfig, ShadowJudgeConfig, embedding_tasks
from turnout.control.pricing import PriceBook
from turnout.control.quota.plan import sets_output_bound
from turnout.control.tokens import Tokens, generated_by_answer
from turnout.errors import AllTargetsFailed, AnswerRefused, PolicyDenied, TurnoutError
from turnout.privacy.capture import Capture
from turnout.privacy.capture.model import Decision
from turnout.providers.base import Completion
from turnout.releases.base import Release, Serving
from turnout.releases.shadowstore import Pair, ShadowStore
from turnout.routing import policy
from turnout.routing.attempts import Target, execute
from turnout.safety.output import strip_fence
from turnout.serving import respond
from turnout.serving.asgi import MAX_DEPTH
from turnout.serving.door import Admission, Door, Inbound
from turnout.serving.judge import ask, question_body, yes_no
from turnout.serving.scoring import LiveScoring
from turnout.serving.tasks import release_validator

log = logging.getLogger(__name__)

DAY_S = 86_400
_SPACE = re.compile(r"\s+")


class Served(NamedTuple):
    """What the served answer came to, from its ledger row."""

    request_id: str
    text: str
    latency_ms: float
    cost_usd: float | None
    decision: Decision | None  # the capture decision: the shadow answer is kept where it was


class Mirror:
    def __init__(
        self,
        config: Config,
        store: ShadowStore,
        *,
        targets: dict[str, Target],
        class_policy: Mapping[str, Collection[str]],
        prices: PriceBook,
        tokens: Tokens,
        scoring: LiveScoring | None = None,
        capture: Capture | None = None,
        count: Callable[[str, str, str, float | None], None] | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.targets = targets
        self.prices = prices
        self.tokens = tokens
        self.scoring = scoring
        self.capture = capture
        self._count = count
        self._clock = clock
        self._rng = rng or random.Random()
        self.embedding_tasks = embedding_tasks(config)
        self.policy = class_policy  # the runtime's: data class → targets
        self.writer: BatchQueue[Pair] = BatchQueue(
            "shadow", self._write, batch_size=256, flush_interval_s=0.5, queue_size=10_000, logger=log, noun="pairs"
        )
        self.busy: dict[str, int] = {}  # calls in flight per task
        self.spent: dict[str, float] = {}  # per task, this UTC day
        self._day = self._today()
        self._running: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.writer.start()
        try:
            self.spent = await self.store.spent(self._day * DAY_S)
        except TurnoutError as exc:  # the caps start from zero; said once
            log.warning("shadow: the day's spend could not be read (%s); caps count from now", exc.message)

    async def aclose(self) -> None:
        """Cancel the calls still running (their pairs are lost: nothing was served from them),
        then write what is queued."""
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        await self.writer.aclose()

    def follow(
        self,
        config: Config,
        class_policy: Mapping[str, Collection[str]],
        prices: PriceBook,
        scoring: LiveScoring | None,
    ) -> None:
        """After a config reload: the new runtime's config (the tasks' caps and comparison),
        policy, prices and scorers, which served traffic switches to as well."""
        self.config, self.policy, self.prices, self.scoring = config, class_policy, prices, scoring
        self.embedding_tasks = embedding_tasks(config)

    # --- the request path ------------------------------------------------------------------

    def draw(self, serving: Serving | None, admission: Admission) -> Release | None:
        """The shadow release this request is mirrored to, or None."""
        if serving is None or serving.shadow is None or admission.release is None:
            return None
        if admission.release is not serving.active or admission.task in self.embedding_tasks:
            return None  # a canary's or a forced release's answers are not the baseline
        if self._rng.random() * 100 >= serving.shadow_percent:
            return None
        return serving.shadow

    def mirror(self, door: Door[Any], request: Inbound, admission: Admission, shadow: Release, served: Served) -> None:
        """Start the shadow call, within the task's caps; never waits."""
        task = admission.task
        caps = self._caps(task)
        if caps is None:
            return
        day = self._today()
        if day != self._day:
            self._day, self.spent = day, {}
        if self.spent.get(task, 0.0) >= caps.usd_per_day:
            self._counted(task, shadow.name, "capped")
            return
        if self.busy.get(task, 0) >= caps.max_concurrency:
            self._counted(task, shadow.name, "busy")
            return
        self.busy[task] = self.busy.get(task, 0) + 1
        call = asyncio.create_task(self._call(door, request, admission, shadow, served, caps))
        self._running.add(call)
        call.add_done_callback(lambda done: self._finished(task, done))

    def _finished(self, task: str, call: asyncio.Task[None]) -> None:
        self._running.discard(call)
        self.busy[task] = max(0, self.busy.get(task, 1) - 1)

    # --- the call --------------------------------------------------------------------------

    async def _call(
        self,
        door: Door[Any],
        request: Inbound,
        admission: Admission,
        shadow: Release,
        served: Served,
        caps: ShadowConfig,
    ) -> None:
        task, started_at, t0 = admission.task, self._clock(), time.perf_counter()
        target: str | None = None
        text: str | None = None
        status, error_class, cost, prompt_tokens, completion_tokens = 200, None, None, None, None
        try:
            body = door.body(request, shadow)
            if not sets_output_bound(body):  # every call's cost bounded, as the quota bounds served ones
                body["max_tokens"] = self.config.limits.default_max_tokens
            allowed = self._allowed(task, shadow, admission)
            result = await execute(
                [self.targets[n] for n in allowed], body, stream=False, request_id=served.request_id + ":shadow"
            )
            target = result.target.name
            answer = result.answer
            assert isinstance(answer, Completion)  # never streamed
            usage = answer.usage or await self.tokens.usage(body, generated_by_answer(answer.body)[0], target)
            priced = self.prices.price_attempts(result.attempts, usage, started_at)
            cost, prompt_tokens, completion_tokens = priced.total, usage.prompt_tokens, usage.completion_tokens
            text = respond.answer_text(answer.body)
        except PolicyDenied:
            self._counted(task, shadow.name, "not_allowed")
            return
        except TurnoutError as exc:
            status, error_class = exc.status, exc.code or exc.type
            if isinstance(exc, (AllTargetsFailed, AnswerRefused)) and exc.records:
                cost = self.prices.price_attempts(exc.records, None, started_at).total
        except Exception as exc:  # a bug costs the pair, never the gateway; its type, never text
            log.warning("shadow call for task %s failed: %s", task, type(exc).__name__)
            status, error_class = 500, "internal"
        latency_ms = (time.perf_counter() - t0) * 1000
        agree: bool | None = None
        judge_cost: float | None = None
        if text is not None and caps.judge is not None:
            agree, judge_cost = await self._judged(caps.judge, admission, body, served, text)
        elif text is not None:
            agree = agrees(served.text, text, caps.compare)
        spent = (cost or 0.0) + (judge_cost or 0.0)
        if spent:
            self.spent[task] = self.spent.get(task, 0.0) + spent
        pair = Pair(
            served.request_id,
            started_at,
            admission.tenant.name,
            task,
            admission.release.name if admission.release is not None else None,
            shadow.name,
            target,
            status,
            error_class,
            agree,
            await self._passes(task, admission.release, served.text),
            None if text is None else await self._passes(task, shadow, text),
            served.latency_ms,
            latency_ms,
            served.cost_usd,
            cost,
            prompt_tokens,
            completion_tokens,
            judge_cost,
        )
        self.writer.submit(pair)
        result_label = "error" if text is None else "unjudged" if agree is None else "agree" if agree else "disagree"
        self._counted(task, shadow.name, result_label, cost)
        if text is not None and served.decision is not None and self.capture is not None:
            prompt = orjson.dumps(body.get("messages")).decode()
            self.capture.submit(
                served.request_id + ":shadow", admission.tenant.name, task, served.decision, prompt, text
            )

    async def _judged(
        self, judge: ShadowJudgeConfig, admission: Admission, body: dict[str, Any], served: Served, text: str
    ) -> tuple[bool | None, float | None]:
        """The judge's verdict on the two answers (None: not allowed, failed, unclear) and what
        asking cost. Shown only where the request's data class may reach the judge's target."""
        target = self.targets.get(judge.target)
        if target is None or not policy.allowed_targets([judge.target], admission.data_class, self.policy):
            return None, None
        question = question_body(judge_question(judge.rubric, body, served.text, text))
        started_at, t0 = self._clock(), time.perf_counter()
        try:
            answer = await ask(target.provider, question, judge.timeout_s, served.request_id + ":judge")
        except Exception as exc:  # no verdict; its type, never the text
            log.warning("shadow judge %s failed: %s", judge.target, type(exc).__name__)
            return None, None
        if answer is None:
            return None, None
        usage = answer.usage or await self.tokens.usage(question, generated_by_answer(answer.body)[0], judge.target)
        cost = self.prices.request_cost(judge.target, usage, time.perf_counter() - t0, started_at)
        return yes_no(answer), cost

    def _allowed(self, task: str, shadow: Release, admission: Admission) -> list[str]:
        """The shadow release's targets on the task's route, cut by the request's data class as
        served traffic is (``PolicyDenied`` when none may take it)."""
        route = [t for t in shadow.route if t in self.config.tasks[task].route and t in self.targets]
        return policy.decide(
            task=task,
            route=route,
            data_class=admission.data_class,
            tenant_classes=admission.tenant.data_classes,
            policy=self.policy,
        )

    async def _passes(self, task: str, release: Release | None, text: str) -> bool | None:
        """The task's live scorers and the release's output schema on ``text``; None where
        neither exists."""
        verdict: bool | None = None
        scorers = self.scoring.tasks.get(task) if self.scoring is not None else None
        if scorers is not None:
            verdict = await scorers.passes(text)
            if not verdict:
                return False
        if release is not None and release.output_schema is not None:
            verdict = _fits(release, text)
        return verdict

    async def _write(self, pairs: list[Pair]) -> list[Pair]:
        await self.store.write_pairs(pairs)
        return []

    def _caps(self, task: str) -> ShadowConfig | None:
        found = self.config.tasks.get(task)
        return None if found is None else found.shadow

    def _counted(self, task: str, release: str, result: str, cost: float | None = None) -> None:
        if self._count is not None:
            self._count(task, release, result, cost)

    def _today(self) -> int:
        return int(self._clock() // DAY_S)


JUDGE_QUESTION = (
    "You compare two answers to the same request. ANSWER A was given; ANSWER B is a candidate. "
    "Does ANSWER B say the same as ANSWER A, and as well (the same facts, values and decisions; "
    "wording and order may differ)?{rubric} Answer with one word: YES or NO.\n\n"
    "REQUEST:\n<<<\n{request}\n>>>\n\nANSWER A:\n<<<\n{served}\n>>>\n\nANSWER B:\n<<<\n{shadow}\n>>>"
)
MAX_JUDGED = 8000  # characters of each part shown to the judge


def judge_question(rubric: str, body: dict[str, Any], served: str, shadow: str) -> str:
    request = orjson.dumps(body.get("messages")).decode()
    return JUDGE_QUESTION.format(
        rubric=f" Judge by this rubric: {rubric}" if rubric.strip() else "",
        request=request[:MAX_JUDGED],
        served=served[:MAX_JUDGED],
        shadow=shadow[:MAX_JUDGED],
    )


def _fits(release: Release, text: str) -> bool:
    """Whether ``text`` passes the release's output schema, as the task API checks an answer
    (its validator compiled once; a ``$ref`` to another document never fetched, and one that
    resolves nowhere or recurses past the stack fails the answer)."""
    try:
        parsed = orjson.loads(strip_fence(text))
        return not too_deep(parsed, MAX_DEPTH) and release_validator(release).is_valid(parsed)
    except (orjson.JSONDecodeError, Unresolvable, RecursionError):
        return False


def agrees(served: str, shadow: str, how: str = "auto") -> bool:
    """Do two answers say the same? ``json``: equal once parsed (key order and spacing aside; a
    text that does not parse is compared as text); ``text``: equal with case and runs of
    whitespace ignored; ``exact``: byte for byte; ``auto``: ``json`` when both parse, else
    ``text``."""
    if how == "exact":
        return served == shadow
    if how in ("json", "auto"):
        a, b = _json(served), _json(shadow)
        if a is not _NOT_JSON and b is not _NOT_JSON:
            return bool(a == b)
    return _SPACE.sub(" ", served).strip().casefold() == _SPACE.sub(" ", shadow).strip().casefold()


_NOT_JSON = object()


def _json(text: str) -> Any:
    stripped = strip_fence(text)
    if not stripped or stripped[0] not in "{[":
        return _NOT_JSON
    try:
        return orjson.loads(stripped)
    except orjson.JSONDecodeError:
        return _NOT_JSON
