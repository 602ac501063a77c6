"""Executing a request along its allowed targets: retries at one target, then fallback.

The policy has already cut the route down to the allowed targets; this module only walks that
list. Per target: skip it while its breaker is open; try up to ``retry.attempts`` times with
jittered backoff (Retry-After honoured, or fall back at once when it asks for too long); a
non-retryable failure (the target said the request itself is bad) ends the walk. Streams fall
back only until their first chunk exists; after that a failure belongs to the stream.

What the target's breaker hears from each outcome (``turnout.routing.breaker``):

* **success**: an answer, a request the target refused as the caller's fault (a 4xx), a prompt
  too long for its window: it works;
* **failure**: a fault of the target (connect, timeout, 5xx, malformed answer, a model that
  failed, every replica's breaker open), retried or not;
* **no verdict**: the target was *busy* (``UpstreamError.busy``: the embedded model's full
  queue, an upstream's 429, Bedrock's throttling). It is healthy, only loaded, and will take
  calls again as soon as its queue drains; opening its breaker would refuse it for a whole
  cool-down after it is idle. A full local queue falls back at once (``Overloaded``: a retry
  would most likely find it full still); a 429 is retried as its Retry-After allows. A target
  with no credentials to call it with (``CredentialsMissing``) gives no verdict either: it was
  never called, and an open breaker would hide that configuration problem behind "circuit
  open" (each request finds the credentials missing again, at the cost of a lookup). A
  cancelled call (the client left) gives no verdict. "No verdict" hands back a half-open probe.

``check`` (a blocked tool call, ``turnout.safety.tools``) sees each answer before it is
returned and may hand back another (a stream whose tool calls it holds back) or refuse it:
``AnswerRejected`` sends the walk to the next target, ``AnswerRefused`` ends the request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from turnout.config import RetryConfig
from turnout.errors import (
    AllTargetsFailed,
    AnswerRefused,
    BreakerOpen,
    ContextWindowExceeded,
    CredentialsMissing,
    UpstreamError,
)
from turnout.ledger.record import AttemptRecord
from turnout.providers.base import Call, Chunks, Completion, Provider, Stream, Timeouts
from turnout.routing.backoff import delay
from turnout.routing.breaker import Breaker


@dataclass(slots=True)
class Target:
    """A configured target at run time: its provider, breaker and attempt settings."""

    name: str
    provider: Provider
    breaker: Breaker
    retry: RetryConfig
    timeouts: Timeouts
    context_window: int | None = None


@dataclass(slots=True)
class Turned:
    """An answer the check turned down (a blocked tool call): generated, so paid for. Its
    attempt is priced from the answer's usage, or from what it generated, by the caller."""

    attempt: AttemptRecord
    answer: Completion | Stream


@dataclass(slots=True)
class Result:
    target: Target
    answer: Completion | Stream
    attempts: list[AttemptRecord] = field(default_factory=list)
    fallback_ms: float = 0.0  # time spent on failed attempts before the one that answered
    turned: list[Turned] = field(default_factory=list)  # answers turned down before this one

    @property
    def fallback(self) -> bool:
        return self.attempts[0].target != self.target.name if self.attempts else False


Check = Callable[[Completion | Stream], Awaitable[Completion | Stream]]


async def execute(
    targets: list[Target], body: dict[str, Any], *, stream: bool, request_id: str, check: Check | None = None
) -> Result:
    attempts: list[AttemptRecord] = []
    failures: list[tuple[str, UpstreamError]] = []
    turned: list[Turned] = []
    started = time.perf_counter()
    too_long_for: int | None = None  # the largest window the prompt is known not to fit
    for target in targets:
        if too_long_for is not None and target.context_window is not None and target.context_window <= too_long_for:
            why = f"skipped: its context window of {target.context_window} tokens is no larger than {too_long_for}"
            skipped = ContextWindowExceeded(why, window=target.context_window)
            attempts.append(AttemptRecord(target.name, "", skipped.error_class, 0.0, _ms(started)))
            failures.append((target.name, skipped))
            continue
        for n in range(1, target.retry.attempts + 1):
            if not target.breaker.allow():
                wait_s = target.breaker.retry_after()
                err: UpstreamError = BreakerOpen("circuit open", retry_after=wait_s, window=target.context_window)
                attempts.append(AttemptRecord(target.name, "", err.error_class, 0.0, _ms(started)))
                failures.append((target.name, err))
                break
            t0 = time.perf_counter()
            call = Call(body, stream, target.timeouts, request_id)
            try:
                answer = await (target.provider.stream(call) if stream else target.provider.complete(call))
            except UpstreamError as exc:
                err = exc
                attempts.append(AttemptRecord(target.name, "", err.error_class, _ms(t0), (t0 - started) * 1000))
                failures.append((target.name, err))
                if err.spent is not None:  # it used tokens before it failed (embedding batches)
                    turned.append(Turned(attempts[-1], Completion({}, err.spent, "")))
                if isinstance(err, ContextWindowExceeded):
                    target.breaker.success()  # the target works; this prompt is too long for it
                    err.window = window = err.window or target.context_window  # Bedrock's does not say
                    too_long_for = max(too_long_for or 0, window) if window is not None else too_long_for
                    break
                if not err.fallback:
                    target.breaker.success()  # it answered: the request was at fault, not the target
                    raise _failed(failures, attempts, turned) from err
                if err.busy or isinstance(err, CredentialsMissing):
                    target.breaker.release()  # loaded, or never called (configuration): no verdict
                else:
                    target.breaker.failure()
                if not err.retryable:
                    break  # wrong for this target (its model timed out, access denied): next one
                wait = delay(target.retry, n, err.retry_after) if n < target.retry.attempts else None
                if wait is None:
                    break
                await asyncio.sleep(wait)
                continue
            except BaseException:
                target.breaker.release()  # cancelled (client gone) or a bug: no verdict
                raise
            attempts.append(AttemptRecord(target.name, answer.replica, None, _ms(t0), (t0 - started) * 1000))
            if isinstance(answer, Stream):
                answer.chunks = _Watched(answer.chunks, target.breaker)
            else:
                target.breaker.success()
            if check is not None:
                try:
                    answer = await check(answer)
                except AnswerRefused as exc:
                    attempts[-1].error_class = exc.error_class
                    turned.append(Turned(attempts[-1], answer))
                    exc.records, exc.turned = attempts, turned
                    raise
                except UpstreamError as exc:  # rejected, or a stream that failed while checked
                    attempts[-1].error_class = exc.error_class
                    turned.append(Turned(attempts[-1], answer))
                    failures.append((target.name, exc))
                    if not exc.fallback:
                        raise _failed(failures, attempts, turned) from exc
                    break  # the next target; this one answered, it would likely answer alike
            return Result(target, answer, attempts, (t0 - started) * 1000, turned)
    raise _failed(failures, attempts, turned)


def _failed(
    failures: list[tuple[str, UpstreamError]], attempts: list[AttemptRecord], turned: list[Turned]
) -> AllTargetsFailed:
    exc = AllTargetsFailed(failures)
    exc.records, exc.turned = attempts, turned
    # Every target refused the same way (each call it made was blocked): that code, not ours.
    codes = {err.code for _, err in failures}
    only = codes.pop() if len(codes) == 1 else None
    if exc.code == AllTargetsFailed.code and only is not None:
        exc.code = only
    return exc


class _Watched:
    """Chunks passed through unchanged; the target's breaker hears, once, how the stream
    ended: success at its end, failure on an upstream error (none when it says the target is
    busy), no verdict when abandoned."""

    __slots__ = ("_breaker", "_chunks", "_done")

    def __init__(self, chunks: Chunks, breaker: Breaker) -> None:
        self._chunks = chunks
        self._breaker = breaker
        self._done = False

    def __aiter__(self) -> _Watched:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            self._settle(self._breaker.success)
            raise
        except UpstreamError as exc:
            self._settle(self._breaker.release if exc.busy else self._breaker.failure)
            raise
        except BaseException:
            self._settle(self._breaker.release)
            raise

    async def aclose(self) -> None:
        self._settle(self._breaker.release)
        await self._chunks.aclose()

    def _settle(self, verdict: Callable[[], None]) -> None:
        if not self._done:
            self._done = True
            verdict()


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000
