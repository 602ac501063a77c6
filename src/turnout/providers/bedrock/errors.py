"""Bedrock's typed errors → turnout's, before a stream (HTTP status + ``x-amzn-ErrorType``) and
inside one (event-stream ``exception`` messages named in lowerCamel case).

    ThrottlingException, ModelNotReadyException (429)                  busy: retried here, then
                                                                       fallback; no breaker verdict
    ServiceUnavailableException (503), InternalServerException (500)   retried here, then fallback
    ModelTimeoutException (408), ModelErrorException (424),
    ModelStreamErrorException (424)                                    fallback, not retried here
    AccessDeniedException (403), ResourceNotFoundException (404),
    ServiceQuotaExceededException,                                     fallback, not retried: the
    UnrecognizedClientException, InvalidSignatureException,            target is misconfigured
    ExpiredTokenException, ... (403, AWS's auth errors)
    ValidationException (400)                                          the request's fault: stop
    ValidationException about the context window                       ContextWindowExceeded
"""

from __future__ import annotations

import re
from typing import NamedTuple

from turnout.errors import ContextWindowExceeded, UpstreamError, UpstreamStatusError


class Kind(NamedTuple):
    status: int
    retryable: bool
    fallback: bool
    hint: str = ""


_AUTH_HINT = "not retried: check the target's AWS credentials (key, secret, session token) or Bedrock API key"

KINDS: dict[str, Kind] = {
    "ThrottlingException": Kind(429, True, True),
    "ModelNotReadyException": Kind(429, True, True),
    "ServiceUnavailableException": Kind(503, True, True),
    "InternalServerException": Kind(500, True, True),
    "ModelTimeoutException": Kind(408, False, True, "the model timed out; not retried on this target"),
    "ModelErrorException": Kind(424, False, True, "the model failed; not retried on this target"),
    "ModelStreamErrorException": Kind(424, False, True, "the model's stream failed; not retried on this target"),
    "AccessDeniedException": Kind(
        403, False, True, "not retried: check the credentials' bedrock:InvokeModel permission and model access"
    ),
    "ResourceNotFoundException": Kind(404, False, True, "not retried: check the model id and region"),
    "ServiceQuotaExceededException": Kind(400, False, True, "not retried: a service quota is exhausted"),
    "ValidationException": Kind(400, False, False, "not retried: Bedrock rejected the request"),
    # AWS's common auth errors: the target's credentials are at fault, not the request.
    "UnrecognizedClientException": Kind(403, False, True, _AUTH_HINT),
    "InvalidSignatureException": Kind(403, False, True, _AUTH_HINT),
    "IncompleteSignatureException": Kind(400, False, True, _AUTH_HINT),
    "MissingAuthenticationTokenException": Kind(403, False, True, _AUTH_HINT),
    "ExpiredTokenException": Kind(403, False, True, _AUTH_HINT),
}
# How Bedrock's models word "the prompt does not fit" inside a ValidationException.
_TOO_LONG = re.compile(
    r"too long|too many (input )?tokens|context (window|length)|maximum context|exceeds? the max", re.IGNORECASE
)


def error_name(raw: str) -> str:
    """``x-amzn-ErrorType`` carries ``Name:namespace`` or ``ns#Name``; the name is what counts."""
    name = raw.split(":", 1)[0]
    return name.rsplit("#", 1)[-1].strip()


def translate(name: str, status: int | None, message: str, target: str) -> UpstreamError:
    """The turnout error for a Bedrock error ``name`` (PascalCase or the stream's lowerCamel)."""
    name = name[:1].upper() + name[1:]
    kind = KINDS.get(name)
    text = f"{target}: Bedrock {name or 'error'}: {message}" if message else f"{target}: Bedrock {name or 'error'}"
    if name == "ValidationException" and _TOO_LONG.search(message):
        return ContextWindowExceeded(text)
    if kind is None:
        return UpstreamStatusError(status or 502, text, error_class=_snake(name) if name else None)
    detail = f"{text} ({kind.hint})" if kind.hint else text
    return UpstreamStatusError(
        status or kind.status, detail, retryable=kind.retryable, fallback=kind.fallback, error_class=_snake(name)
    )


def _snake(name: str) -> str:
    """ThrottlingException → bedrock_throttling (the ledger's error class)."""
    stem = name.removesuffix("Exception")
    return "bedrock_" + re.sub(r"(?<!^)(?=[A-Z])", "_", stem).lower()
