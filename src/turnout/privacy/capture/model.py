"""The nouns of capture: a grant, an audit event, a captured record, a decision.

Plain frozen dataclasses; the request path builds a ``Decision`` per request and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from turnout.errors import TurnoutError

Mode = Literal["metadata", "redacted", "full"]
Event = Literal["granted", "used", "expired", "revoked", "purged"]
GrantStatus = Literal["active", "pending", "expired", "revoked"]

SYSTEM_ACTOR = "turnout"  # the actor of events no person caused: expiry, use, a scheduled purge


class CaptureStoreError(TurnoutError):
    """The capture store cannot be used: its schema is newer than this code, it is closed, or
    SQLite refused a statement (an attempt to change the audit trail included)."""


@dataclass(frozen=True, slots=True)
class Grant:
    """Full capture for one tenant and task, from ``starts_at`` until ``ends_at`` (epoch
    seconds) unless revoked first."""

    id: str  # "grt_" + 16 hex digits: what `capture list` shows and `capture revoke` takes
    tenant: str
    task: str
    starts_at: float
    ends_at: float
    reason: str
    granted_by: str
    revoked_at: float | None = None
    revoked_by: str | None = None

    def live(self, now: float) -> bool:
        return self.revoked_at is None and self.starts_at <= now < self.ends_at

    def status(self, now: float) -> GrantStatus:
        if self.revoked_at is not None:
            return "revoked"
        if now >= self.ends_at:
            return "expired"
        return "active" if now >= self.starts_at else "pending"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    id: int
    at: float
    event: Event
    grant_id: str | None
    tenant: str | None
    task: str | None
    request_id: str | None
    actor: str
    detail: str


@dataclass(frozen=True, slots=True)
class CaptureRow:
    """What reaches the ``captures`` table: text already redacted (or, in ``full`` mode,
    scrubbed of secrets)."""

    request_id: str
    tenant: str
    task: str
    mode: Literal["redacted", "full"]
    grant_id: str | None
    captured_at: float
    expires_at: float
    prompt_text: str
    completion_text: str | None


@dataclass(frozen=True, slots=True)
class Decision:
    """What to keep of one request's text.

    ``mode`` is what the winning rule allows right now (``full`` only under a live grant,
    named by ``grant_id``); ``sampled`` is whether this request drew under ``sample_rate``.
    """

    mode: Mode
    grant_id: str | None = None
    sampled: bool = False

    @property
    def capture(self) -> bool:
        """Whether this request's text is to be stored at all."""
        return self.sampled and self.mode != "metadata"

    @property
    def used(self) -> Mode:
        """The mode this request's text was actually kept in: the ledger's "capture mode"."""
        return self.mode if self.capture else "metadata"


METADATA = Decision("metadata")


class Redaction(Protocol):
    @property
    def text(self) -> str: ...


class TextRedactor(Protocol):
    """What the capture writer needs of ``turnout.privacy.redact.Redactor``."""

    def redact(self, text: str) -> Redaction: ...
