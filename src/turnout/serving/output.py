"""The output stage of the request path, shared by every door: check the answer, repair it,
escalate it (``turnout.safety.output`` holds the checks themselves)::

    attempt → check ─ pass ──────────────────────────────────────────────→ the door responds
                    └ fail → re-ask the same target with the failure appended (repair_attempts)
                           → escalate.to: <target> (policy permitting) → check → pass | 502
                           → escalate.to: human → 202 with a ticket; the request, redacted, in
                             the review queue (reason ``escalated``) for a person to answer
                             (a client that cannot read a ticket, a stream or an SDK's own
                             shape: 502 ``escalated_to_human`` naming it, not to be retried)
                           → no escalation: 502 ``output_invalid`` (fail closed)

Every answer generated is paid for: a rejected answer's attempt carries its own cost (its usage,
or turnout's count where the upstream reported none) and is marked ``output_invalid``; the row
counts the repairs, where it escalated and the reasons (``schema``, ``json``, ``max_chars``,
``secrets``, ``pii``), never text. A checked task's stream is answered whole: the target is
called without streaming, the answer checked, then relayed as server-sent events (time to first
token is then the whole answer's time; no unchecked byte ever reaches the caller).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import orjson

from turnout.config import HUMAN
from turnout.control.tokens import generated_by_answer
from turnout.errors import AllTargetsFailed, AnswerRefused, PolicyDenied
from turnout.ledger.record import AttemptRecord
from turnout.providers.base import Completion, Stream, Usage
from turnout.releases.review import ReviewError
from turnout.routing import policy
from turnout.routing.attempts import Check, Result, Target, Turned, execute
from turnout.safety.output import BESIDE, Checks, Outputs, Problem, Rules, content_text
from turnout.serving import respond, turned
from turnout.serving.asgi import Send, send_json
from turnout.serving.door import Admission, Answered
from turnout.serving.runtime import Runtime

log = logging.getLogger("turnout")

REJECTED = "output_invalid"  # the error class of an attempt whose answer failed its checks
REPAIR_SUFFIX = " Reply with the corrected answer only."


NO_RETRY = (b"x-should-retry", b"false")  # the OpenAI and Anthropic SDKs' header: asking again cannot help


class OutputRejected(AnswerRefused):
    """The answer failed the task's output checks, repairs and escalation included: 502. The
    SDKs are told not to retry: the same checks would run on another paid answer."""

    code = REJECTED
    error_class = REJECTED

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [NO_RETRY]


class Escalated(AnswerRefused):
    """Escalated to a person where the client reads no ticket (a stream, whose SDK reads events;
    the Messages and Responses APIs, whose SDKs read their own shapes): an error naming the
    ticket, so the caller learns where its answer will be."""

    code = "escalated_to_human"
    error_class = "escalated_to_human"

    def __init__(self, message: str, url: str) -> None:
        super().__init__(message)
        self.url = url

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [NO_RETRY, (b"location", self.url.encode())]


@dataclass(slots=True)
class Checked:
    """What the output stage came to: the answer to send (``result``), or a refusal or a
    ticket; and what it cost on the way."""

    result: Result
    attempts: list[AttemptRecord]  # every attempt of the request, in order
    t0: float  # perf_counter of the first attempt's start (offsets count from it)
    repairs: int = 0
    escalated_to: str | None = None
    failed: list[str] = field(default_factory=list)  # each rejected answer's reason
    spent: Usage | None = None  # the rejected answers' tokens
    spent_estimated: bool = False
    problem: Problem | None = None  # the last failure
    refusal: AnswerRefused | None = None
    ticket: bool = False
    unanswered: bool = False  # a re-ask got no answer from the target (it failed, or was blocked)

    @property
    def passed(self) -> bool:
        return self.refusal is None and not self.ticket

    @property
    def record(self) -> str | None:
        """The ledger's ``output_check``: the rejected answers' reasons; None: none failed."""
        return " ".join(self.failed) or None

    def spend(self, usage: Usage, estimated: bool) -> None:
        self.spent = usage if self.spent is None else turned.add(self.spent, usage)
        self.spent_estimated |= estimated

    def with_spent(self, answered: Answered) -> Answered:
        """The door's answer with the rejected answers' tokens added: the quota and the row
        count every token generated, not only the last answer's."""
        spent, usage = self.spent, answered.usage
        if spent is None or usage is None:
            return answered
        total = turned.add(usage, spent)
        return answered._replace(usage=total, usage_estimated=answered.usage_estimated or self.spent_estimated)


class OutputStage:
    """The tasks' output rules, resolved at start, and the repair and escalation loop."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.outputs = Outputs(runtime.config)
        self.active = self.outputs.active  # False: no task checks its answers

    def checks(self, task: str, body: dict[str, Any], *, fenced: bool) -> tuple[Rules, Checks] | None:
        """The request's checks; None when its task checks nothing (one dict lookup)."""
        rules = self.outputs.get(task)
        if rules is None:
            return None
        checks = rules.checks(body, fenced=fenced)
        return None if checks is None else (rules, checks)

    async def run(
        self,
        checking: tuple[Rules, Checks],
        first: Result,
        body: dict[str, Any],
        admission: Admission,
        *,
        stream: bool,
        request_id: str,
        started_at: float,
        guard: Check | None,
    ) -> Checked:
        """Check ``first`` (a whole answer); repair and escalate as the rules say."""
        rules, checks = checking
        last = first.attempts[-1]
        t0 = time.perf_counter() - (last.offset_ms + last.latency_ms) / 1000
        checked = Checked(first, first.attempts, t0)
        run = _Run(self.rt, checked, checks, request_id, started_at, guard)
        result: Result | None = first
        sent = body
        while result is not None:
            problem = checks.verify(_completion(result).body)
            if problem is None:
                checked.result = run.answered(result)
                if stream:
                    checked.result.answer = replay(_completion(result))
                return checked
            await run.reject(result, problem, sent)
            if checked.repairs >= rules.repair_attempts:
                break
            checked.repairs += 1
            sent = repair_body(body, _completion(result), problem)
            result = await run.attempt(result.target, sent)
            checked.unanswered = result is None
        await self._escalate(run, rules, body, admission, stream)
        return checked

    async def _escalate(
        self, run: _Run, rules: Rules, body: dict[str, Any], admission: Admission, stream: bool
    ) -> None:
        checked = run.checked
        to = rules.escalate_to
        if to is None:
            run.refuse("")
            return
        if to == HUMAN:
            checked.escalated_to, checked.ticket = HUMAN, True
            return
        try:
            policy.decide(
                task=admission.task,
                route=[to],
                data_class=admission.data_class,
                tenant_classes=admission.tenant.data_classes,
                policy=self.rt.policy,
            )
        except PolicyDenied:
            run.refuse(f"; escalation to {to!r} is not allowed for {admission.data_class} data")
            return
        checked.escalated_to = to
        result = await run.attempt(self.rt.targets[to], body)
        if result is None:
            run.refuse(f"; the escalation to {to!r} failed too")
            return
        problem = run.checks.verify(_completion(result).body)
        if problem is not None:
            await run.reject(result, problem, body)
            run.refuse(f"; the answer of {to!r}, where it was escalated, failed too")
            return
        checked.result = run.answered(result)
        if stream:
            checked.result.answer = replay(_completion(result))

    # --- answers that are not the door's: a refusal, a ticket ---------------------------------

    async def answer(
        self,
        checked: Checked,
        send: Send,
        request_id: str,
        admission: Admission,
        body: dict[str, Any],
        *,
        started_at: float,
        prompt: bool,
        endpoint: str = "",
        ticket_body: bool = True,
    ) -> Answered:
        """Write the refusal (502, in the door's error shape: ``endpoint``) or the ticket (202;
        as a 502 ``escalated_to_human`` where the client cannot read one, ``ticket_body``
        false: ``Escalated``);
        what it came to, for the row and quota."""
        priced = self.rt.prices.price_attempts(checked.attempts, None, started_at)
        url = ticket_url(admission.task, request_id)
        if checked.ticket and not await self._queue(checked, request_id, admission, body):
            checked.ticket = False
            checked.refusal = OutputRejected(
                f"the answer failed the task's output checks ({_detail(checked)}) and the review "
                f"queue could not take the escalation (request {request_id})"
            )
        elif checked.ticket and not ticket_body:
            checked.refusal = Escalated(
                f"the answer failed the task's output checks ({_detail(checked)}) and went to a "
                f"person: poll GET {url} for the answer",
                url,
            )
        if checked.refusal is not None:
            await respond.error(send, checked.refusal, request_id, endpoint)
            return Answered(
                checked.refusal.status,
                checked.spent,
                priced,
                None,
                error_class=checked.refusal.code or REJECTED,
                usage_estimated=checked.spent_estimated,
            )
        result = checked.result
        release = admission.release
        model_version = (release.model_version if release else None) or _completion(result).model_version
        headers = respond.turnout_headers(request_id, admission.task, result, release, model_version, prompt=prompt)
        headers += [*respond.cost_header(priced.total), (b"location", url.encode())]
        payload = {
            "id": request_id,
            "object": "turnout.ticket",
            "task": admission.task,
            "status": "pending",
            "reason": "escalated",
            "detail": _detail(checked),
            "url": url,
        }
        await send_json(send, 202, payload, headers)
        return Answered(202, checked.spent, priced, None, usage_estimated=checked.spent_estimated)

    async def _queue(self, checked: Checked, request_id: str, admission: Admission, body: dict[str, Any]) -> bool:
        reviews = self.rt.reviews
        if reviews is None:  # the runtime opens it for a task that escalates to a person
            return False
        release = admission.release
        text = ticket_text(body, _completion(checked.result), checked.problem)
        try:
            await reviews.enqueue_ticket(
                admission.task, release.name if release else None, request_id, admission.tenant.name, text
            )
        except ReviewError as exc:
            log.warning("escalation: request %s not queued: %s", request_id, exc.message)
            return False
        return True


@dataclass(slots=True)
class _Run:
    """One request's way through the stage: its attempts, priced as they are rejected."""

    rt: Runtime
    checked: Checked
    checks: Checks
    request_id: str
    started_at: float
    guard: Check | None

    async def attempt(self, target: Target, body: dict[str, Any]) -> Result | None:
        """One more answer from ``target`` (its retries included); None when it gave none."""
        shift_ms = (time.perf_counter() - self.checked.t0) * 1000
        try:
            result = await execute([target], body, stream=False, request_id=self.request_id, check=self.guard)
        except (AllTargetsFailed, AnswerRefused) as exc:
            await self._spend(exc.turned, body)
            self._add(exc.records, shift_ms)
            return None
        await self._spend(result.turned, body)
        self._add(result.attempts, shift_ms)
        return result

    async def _spend(self, answers: list[Turned], body: dict[str, Any]) -> None:
        """A re-ask's answers turned down by the tool allowlist are paid for as rejected ones."""
        if answers:
            usage, estimated = await turned.price(self.rt, answers, body, self.started_at)
            if usage is not None:
                self.checked.spend(usage, estimated)

    def _add(self, records: list[AttemptRecord], shift_ms: float) -> None:
        for record in records:
            record.offset_ms += shift_ms
        if records is not self.checked.attempts:
            self.checked.attempts.extend(records)

    async def reject(self, result: Result, problem: Problem, sent: dict[str, Any]) -> None:
        """Mark the answer's attempt rejected, with the cost of what it generated."""
        answer = _completion(result)
        usage, estimated = answer.usage, answer.usage is None
        if usage is None:
            usage = await self.rt.tokens.usage(sent, generated_by_answer(answer.body)[0], result.target.name)
        attempt = result.attempts[-1]
        attempt.error_class = REJECTED
        attempt.cost_usd = self.rt.prices.request_cost(
            result.target.name, usage, attempt.latency_ms / 1000, self.started_at
        )
        self.checked.spend(usage, estimated)
        self.checked.failed.append(problem.reason)
        self.checked.problem = problem
        self.checked.result = result

    def answered(self, result: Result) -> Result:
        """The passing answer, with every attempt of the request."""
        attempts = self.checked.attempts
        fallback_ms = attempts[-1].offset_ms if attempts[0].target != result.target.name else result.fallback_ms
        return Result(result.target, result.answer, attempts, fallback_ms)

    def refuse(self, note: str) -> None:
        checked = self.checked
        repairs = f" after {checked.repairs} repair attempt(s)" if checked.repairs else ""
        if checked.unanswered:
            note = f"; the last repair attempt got no answer{note}"
        message = f"the model's answer failed the task's output checks{repairs}: {_detail(checked)}{note}"
        checked.refusal = OutputRejected(message)
        checked.result = self.answered(checked.result)


def repair_body(body: dict[str, Any], answer: Completion, problem: Problem) -> dict[str, Any]:
    """``body`` asked again, with the failure appended: the rejected answer (unless it leaks or
    is too long to send back) and what was wrong with it."""
    turns: list[dict[str, Any]] = []
    if problem.echo:
        content = _content(answer.body)
        if content:
            turns.append({"role": "assistant", "content": content})
    turns.append({"role": "user", "content": problem.hint + REPAIR_SUFFIX})
    return {**body, "messages": [*body["messages"], *turns]}


def replay(answer: Completion) -> Stream:
    """A whole answer as the stream the caller asked for: per choice its message, then its finish
    reason, then the usage (which the door passes on only where the caller asked for it)."""
    return Stream(_chunks(answer.body), answer.model_version, answer.replica, answer.queue_ms)


async def _chunks(body: dict[str, Any]) -> AsyncGenerator[dict[str, Any]]:
    base = {"id": body.get("id", ""), "object": "chat.completion.chunk", "created": body.get("created", 0)}
    base["model"] = body.get("model", "")
    choices = body.get("choices")
    for i, choice in enumerate(choices if isinstance(choices, list) else ()):
        message = choice.get("message") if isinstance(choice, dict) else None
        message = message if isinstance(message, dict) else {}
        index = choice.get("index", i) if isinstance(choice, dict) else i
        delta: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
        for name in BESIDE:  # the reasoning (and a refusal) reach a stream's caller as the whole answer's
            said = message.get(name)
            if isinstance(said, str) and said:
                delta[name] = said
        calls = message.get("tool_calls")
        if isinstance(calls, list) and calls:
            delta["tool_calls"] = [{"index": n, **c} for n, c in enumerate(calls) if isinstance(c, dict)]
        yield {**base, "choices": [{"index": index, "delta": delta, "finish_reason": None}]}
        finish = choice.get("finish_reason") if isinstance(choice, dict) else None
        yield {**base, "choices": [{"index": index, "delta": {}, "finish_reason": finish or "stop"}]}
    if isinstance(body.get("usage"), dict):
        yield {**base, "choices": [], "usage": body["usage"]}


def ticket_url(task: str, request_id: str) -> str:
    return f"/v1/tasks/{task}/tickets/{request_id}"


def ticket_text(body: dict[str, Any], answer: Completion, problem: Problem | None) -> str:
    """What the reviewer reads (the review queue redacts it before it is stored): the request's
    messages, the last rejected answer and why it was rejected."""
    prompt = orjson.dumps(body.get("messages")).decode()
    why = f"{problem.reason}: {problem.detail}" if problem is not None else "rejected"
    return f"{prompt}\n\n--- rejected answer ({why}) ---\n{_content(answer.body)}"


def _detail(checked: Checked) -> str:
    return checked.problem.detail if checked.problem is not None else "rejected"


def _content(body: dict[str, Any]) -> str:
    choices = body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = first.get("message")
    return content_text(message.get("content")) if isinstance(message, dict) else ""


def _completion(result: Result) -> Completion:
    answer = result.answer
    assert isinstance(answer, Completion)  # the stage asks without streaming
    return answer
