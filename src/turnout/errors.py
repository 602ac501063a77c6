"""turnout's one error tree. Each class carries its HTTP status and OpenAI error ``type``.

    TurnoutError                      500 api_error
    ├── ConfigError                   (load time; not an HTTP error)
    ├── CannotListen                  (start-up: the address cannot be bound; not an HTTP error)
    ├── RequestError                  400 invalid_request_error
    │   ├── BodyTooLarge              413
    │   ├── NotFound                  404 (unknown route)
    │   ├── UnknownTask               404
    │   ├── MethodNotAllowed          405
    │   └── Conflict                  409 (a change the resource's state refuses)
    ├── AuthError                     401 authentication_error
    ├── PolicyDenied                  403 permission_denied
    ├── UpstreamError                 502 upstream_error   (one attempt at one target)
    │   ├── UpstreamConnectError      connect refused / reset / DNS    retryable
    │   ├── UpstreamTimeout           a phase deadline passed           retryable
    │   ├── UpstreamStatusError       non-2xx: 429 and 5xx retryable, other 4xx not; 429 busy
    │   ├── ContextWindowExceeded     the prompt is too long here: fall back, don't retry
    │   ├── UpstreamProtocolError     malformed JSON / SSE              retryable
    │   ├── BreakerOpen               target or every replica open      retryable
    │   ├── Overloaded                local queue full: fall back, don't retry; busy
    │   ├── CredentialsMissing        none to call with: fall back at once, never retried
    │   └── AnswerRejected            a check refused the answer (a blocked tool call): fall back
    ├── AllTargetsFailed              502 / 503 / 504, one line per target and reason;
    │                                 400 context_length_exceeded: the prompt fits no target;
    │                                 503 when each was too small or busy, one busy
    ├── AnswerRefused                 502: a check refused the answer and ends the request
    ├── StreamInterrupted             failure after the first byte reached the client
    └── TryAgain                      503 with Retry-After: gone in a moment
        ├── ShuttingDown              cut by a shutdown past its grace period
        ├── NotReady                  start-up still waits for the shared state (PostgreSQL)
        └── StoreUnavailable          a store the request reads or writes does not answer

``busy``: the target shed load (its queue is full, it answered 429): it is healthy, so its
breaker hears no verdict either way (``turnout.routing.attempts``).

Vendor exceptions (aiohttp, llama.cpp) are translated into these at the provider edge and
re-raised ``from exc``. Messages never carry secrets: providers name targets, never URLs with
credentials or keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class TurnoutError(Exception):
    status: int = 500
    type: str = "api_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_openai(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> list[tuple[bytes, bytes]]:
        return []


class ConfigError(TurnoutError):
    """The configuration failed to load; ``problems`` holds one ``key.path: message`` per issue."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))
        self.problems = problems


class CannotListen(TurnoutError):
    """The gateway cannot bind its address (in use, not this machine's, a privileged port):
    ``cannot listen on HOST:PORT: reason``, said before anything else is logged."""

    def __init__(self, host: str, port: int, exc: OSError) -> None:
        reason = exc.strerror or str(exc) or type(exc).__name__
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        super().__init__(f"cannot listen on {where}: {reason[:1].lower()}{reason[1:]}")


class RequestError(TurnoutError):
    status = 400
    type = "invalid_request_error"


def refuse_unknown(
    value: Mapping[str, Any], fields: Sequence[str], what: str, *, prefix: str = "", code: str | None = None
) -> None:
    """A field of ``value`` not in ``fields`` is a 400 naming it (``param``: ``prefix`` and the
    name), never dropped: a typo would otherwise lose what it meant silently. ``what`` takes
    ``fields``, listed in the order given."""
    unknown = sorted(set(value).difference(fields))
    if unknown:
        name = prefix + unknown[0]
        raise RequestError(f"unknown field {name!r}; {what} takes {', '.join(fields)}", param=name, code=code)


class UnsupportedEncoding(RequestError):
    """A body under a ``Content-Encoding`` the gateway does not decode (only identity)."""

    status = 415
    code = "unsupported_content_encoding"


class BodyTooLarge(RequestError):
    status = 413
    code = "body_too_large"


class NotFound(RequestError):
    status = 404
    code = "not_found"


class UnknownTask(RequestError):
    status = 404
    code = "model_not_found"


class MethodNotAllowed(RequestError):
    """A route called with a method it does not take; its answer's ``Allow`` names those it does
    (HTTP requires it on a 405)."""

    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, *, allow: str) -> None:
        super().__init__(message)
        self.allow = allow

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"allow", self.allow.encode())]


class Conflict(RequestError):
    status = 409
    code = "conflict"


class AuthError(TurnoutError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PolicyDenied(TurnoutError):
    status = 403
    type = "permission_denied"
    code = "policy_denied"


class UpstreamError(TurnoutError):
    """One attempt at one target failed. ``retryable``: another try at the same target may
    succeed. ``fallback``: another target may succeed (true whenever ``retryable`` is; also
    for a target that is wrong for this request, such as one whose model timed out). ``busy``:
    the target turned the call away for load, not for a fault: no breaker verdict."""

    status = 502
    type = "upstream_error"
    retryable = True
    busy = False
    error_class = "upstream"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.spent: Any = None  # a ``Usage`` the call had used when it failed (batches answered): paid for

    @property
    def fallback(self) -> bool:
        return self.retryable or getattr(self, "_fallback", False)


class UpstreamConnectError(UpstreamError):
    error_class = "connect"


class UpstreamTimeout(UpstreamError):
    error_class = "timeout"

    def __init__(self, phase: str, seconds: float) -> None:
        super().__init__(f"{phase} timeout after {seconds:g}s")
        self.phase = phase
        self.error_class = f"timeout_{phase}"


MISCONFIGURED = frozenset({401, 403, 404, 407})  # an upstream's answer about the gateway's own call


class UpstreamStatusError(UpstreamError):
    """A non-2xx answer. By default 408, 429 and 5xx are retryable; 401, 403, 404 and 407 are
    the target's configuration (the server refused the gateway's own credentials, or has no
    such model or path: the caller chose neither), not retried but sent to the next target, and
    counted against the target's breaker; so is a 3xx (a redirect, a 304: the gateway follows
    none, and the caller sent nothing that asks for one: a ``base_url`` that moved); other 4xx
    are the request's fault (neither retried nor sent elsewhere, passed on with their status).
    A provider that knows better (Bedrock's typed errors) says so with ``retryable``/``fallback``
    and names the ``error_class``. A 429 (Bedrock's throttling too)
    is ``busy``: rate limited, not broken; so is a 503 its provider reads as load shed
    (``busy``: a queue full, with Retry-After or saying so)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        retry_after: float | None = None,
        retryable: bool | None = None,
        fallback: bool | None = None,
        error_class: str | None = None,
        busy: bool | None = None,
    ) -> None:
        super().__init__(f"HTTP {status}: {detail}", retry_after=retry_after)
        self.upstream_status = status
        self.retryable = (status == 429 or status >= 500 or status == 408) if retryable is None else retryable
        self._fallback = (status in MISCONFIGURED or status < 400) if fallback is None else fallback
        self.busy = status == 429 if busy is None else busy
        self.error_class = error_class or f"http_{status}"


class ContextWindowExceeded(UpstreamError):
    """The prompt does not fit this target's context window: not retried here, but a target
    with a larger window (or an unknown one) further along the route may take it."""

    retryable = False
    _fallback = True
    error_class = "context_window_exceeded"

    def __init__(self, message: str, *, window: int | None = None) -> None:
        super().__init__(message)
        self.window = window


class UpstreamProtocolError(UpstreamError):
    error_class = "protocol"


class BreakerOpen(UpstreamError):
    """The target (or every replica) is open. ``window``: the target's context window where
    known, so that a prompt too long elsewhere is blamed only when it would not fit here either."""

    error_class = "breaker_open"

    def __init__(self, message: str, *, retry_after: float | None = None, window: int | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.window = window


class Overloaded(UpstreamError):
    """The embedded model's queue is full. A try a moment later would most likely find it full
    still, so the walk moves on to the next target at once; the target is busy, not broken."""

    retryable = False
    _fallback = True
    busy = True
    error_class = "overloaded"


class CredentialsMissing(UpstreamError):
    """The target has no credentials to call with (none found, a profile that does not exist,
    some parts of a key missing): a configuration failure that is the same on every try, so it
    is never retried and the next target is tried at once. It gives the target's breaker no
    verdict: the target was never called, and every request says again that the credentials
    are missing (never "circuit open"), so they are picked up as soon as they appear. The
    message says what is missing, never a value."""

    retryable = False
    _fallback = True
    error_class = "credentials_missing"


class AnswerRejected(UpstreamError):
    """The target answered, but a check of the answer (``turnout.routing.attempts``' ``check``)
    refused it: not retried here, another target may answer acceptably."""

    retryable = False
    _fallback = True
    error_class = "answer_rejected"


class AnswerRefused(TurnoutError):
    """A check of the answer refused it and the request ends there (no fallback): 502.
    ``records``: the attempts made, set by the attempt loop, so the row prices them."""

    status = 502
    type = "upstream_error"
    code = "answer_refused"
    error_class = "answer_refused"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.records: list[Any] = []
        self.turned: list[Any] = []  # the answers turned down (this one among them): paid for


DEFAULT_RETRY_AFTER_S = 1.0  # a 503's Retry-After where no upstream said


class AllTargetsFailed(TurnoutError):
    """Every allowed target was tried (or skipped); the message names each target once per
    reason (``local: the queue is full ...``; a reason repeated by retries is counted).

    When the prompt's length is the only reason (every target too small for it, or open and
    no larger), the answer is OpenAI's: 400 ``context_length_exceeded``; the door names its
    prompt's ``param``. When each target was too small or busy (``UpstreamError.busy``: a full
    queue, a 429) and one was busy, the answer is the all-busy one, 503 with Retry-After: the
    busy one may take the prompt once it has room.
    """

    type = "upstream_error"
    code = "all_targets_failed"

    def __init__(self, attempts: list[tuple[str, UpstreamError]]) -> None:
        errors = [err for _, err in attempts]
        too_long = _too_long(errors)
        heading = "the prompt does not fit the context window of any target" if too_long else "all targets failed"
        super().__init__(f"{heading} ({_reasons(attempts)})" if attempts else "no target could be tried")
        self.attempts = attempts
        self.records: list[Any] = []  # the ledger's per-attempt records, set by the attempt loop
        self.turned: list[Any] = []  # answers the attempt loop's check turned down: paid for
        if errors and all(isinstance(e, UpstreamTimeout) for e in errors):
            self.status = 504
        elif errors and (all(_unavailable(e) for e in errors) or _busy_or_too_long(errors)):
            self.status = 503
            hints = [e.retry_after for e in errors if e.retry_after is not None]
            # Every 503 says when to come back: the upstreams' soonest hint, else a second.
            self.retry_after: float | None = min(hints) if hints else DEFAULT_RETRY_AFTER_S
        else:
            self.status = 502
        if not hasattr(self, "retry_after"):
            self.retry_after = None
        # A caller's own mistake (4xx other than 429) is passed on with its own status.
        client = [e for e in errors if isinstance(e, UpstreamStatusError) and not e.fallback]
        if client and len(client) == len(errors):
            self.status = client[0].upstream_status
            self.type = "invalid_request_error"
            self.code = "upstream_rejected"
        elif too_long:
            self.status = 400
            self.type = "invalid_request_error"
            self.code = "context_length_exceeded"

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self.retry_after is None:
            return []
        return [(b"retry-after", str(max(1, round(self.retry_after))).encode())]


def _too_long(errors: list[UpstreamError]) -> bool:
    """The prompt's length is the only reason: each target too small for it, or open with a
    window known to be no larger than one it did not fit. An open target that might have taken
    it (its window unknown or larger) makes the failure the gateway's, not the prompt's."""
    windows = [e.window for e in errors if isinstance(e, ContextWindowExceeded)]
    if not windows:
        return False
    largest = max((w for w in windows if w is not None), default=None)
    return all(
        isinstance(e, ContextWindowExceeded)
        or (isinstance(e, BreakerOpen) and e.window is not None and largest is not None and e.window <= largest)
        for e in errors
    )


def _busy_or_too_long(errors: list[UpstreamError]) -> bool:
    """Each target was too small for the prompt or busy, and one was busy: a try once it has
    room may succeed, so it is answered as busy, not as the prompt's fault nor a failure."""
    return any(e.busy for e in errors) and all(e.busy or isinstance(e, ContextWindowExceeded) for e in errors)


def _reasons(attempts: list[tuple[str, UpstreamError]]) -> str:
    """``target: reason; ...`` in order. Providers name their target in their own messages
    (they are logged alone too), so that name is not said twice; a reason repeated by retries
    is said once and counted."""
    lines: list[str] = []
    times: list[int] = []
    for target, err in attempts:
        line = f"{target}: {err.message.removeprefix(f'{target}: ')}"
        if lines and lines[-1] == line:
            times[-1] += 1
        else:
            lines.append(line)
            times.append(1)
    return "; ".join(line if n == 1 else f"{line} ({n} tries)" for line, n in zip(lines, times, strict=True))


def _unavailable(err: UpstreamError) -> bool:
    if isinstance(err, (BreakerOpen, Overloaded)):
        return True
    return isinstance(err, UpstreamStatusError) and err.upstream_status in (429, 503)


class StreamInterrupted(TurnoutError):
    """A stream failed after its first byte was sent; the client gets an error event."""

    type = "upstream_error"
    code = "stream_interrupted"


class TryAgain(TurnoutError):
    """A 503 of the gateway's own, gone in a moment: ``Retry-After`` says when to ask again."""

    status = 503
    type = "api_error"
    retry_after_s = 1

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", str(self.retry_after_s).encode())]


class ShuttingDown(TryAgain):
    """The gateway stopped the request: a shutdown outlasted ``server.shutdown_grace_s``."""

    code = "shutting_down"


class NotReady(TryAgain):
    """Start-up has not opened the shared state yet (PostgreSQL did not answer): the replica is
    unready (``/readyz``) and takes no request that would need it."""

    code = "not_ready"


class StoreUnavailable(TryAgain):
    """A store the request reads or writes directly (the ledger for feedback, the review queue,
    issued keys, releases) does not answer: not open yet (PostgreSQL was down at start-up,
    ``serving/waiting.py``), or its connection lost since. Try again: 503 with Retry-After.
    The error boundary answers with this for any failure to reach a store (``places.unreachable``)."""

    code = "store_unavailable"
    retry_after_s = 5  # a store coming back is retried every 0.5 to 30 s (``serving/waiting.py``)
