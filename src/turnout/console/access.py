"""Who may use the console, and the proof a form came from one of its pages.

    POST /ui/login (key) → admin key: an admin session; viewer key: a read-only one;
                           a tenant key: 403; anything else: 401 (failures are throttled)
    session cookie       an opaque random id (``secrets.token_urlsafe``) mapped in this
                         process's memory to its role, name and expiry: HttpOnly,
                         SameSite=Strict, Path=/ui, Secure when served over TLS
    CSRF token           HMAC-SHA256(per-process secret, session id): every state-changing
                         form carries it, checked with ``hmac.compare_digest``

Sessions live in memory, so a restart logs everyone out and several replicas behind one
address need sticky routing (or a login on each); the keys themselves never leave the login
request. Keys are compared as SHA-256 digests with ``compare_digest``: no timing leak of
their length or content.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal

Role = Literal["admin", "viewer"]

COOKIE = "turnout_console"
SESSION_S = 12 * 3600.0  # a working day: then log in again
MAX_SESSIONS = 1000  # past this, the oldest session goes
MAX_NAME = 80
# Failed logins: at most FAILURES_ALLOWED per client within FAILURE_WINDOW_S, then 429.
FAILURES_ALLOWED = 10
FAILURE_WINDOW_S = 300.0
MAX_CLIENTS_TRACKED = 10_000


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    role: Role
    name: str  # who, for the audit trail of what this session changes
    expires_at: float
    csrf: str

    @property
    def can_change(self) -> bool:
        return self.role == "admin"


class Sessions:
    def __init__(self, admin_key: str | None, viewer_key: str | None, *, ttl_s: float = SESSION_S) -> None:
        self.admin_key = admin_key
        self.viewer_key = viewer_key
        self.ttl_s = ttl_s
        self._secret = os.urandom(32)  # per process: a restart invalidates every token
        self._live: dict[str, Session] = {}
        self._flash: dict[str, tuple[str, str]] = {}  # session id → (ok | error, text) for its next page
        self._failures: dict[str, deque[float]] = {}

    @property
    def open(self) -> bool:
        """Whether anyone can log in at all."""
        return bool(self.admin_key or self.viewer_key)

    def role_of(self, key: str) -> Role | None:
        """The role ``key`` logs in as; the admin key wins when both keys are equal."""
        presented = _digest(key)
        if self.admin_key and hmac.compare_digest(presented, _digest(self.admin_key)):
            return "admin"
        if self.viewer_key and hmac.compare_digest(presented, _digest(self.viewer_key)):
            return "viewer"
        return None

    def start(self, role: Role, name: str, now: float) -> Session:
        """A new session (never one the browser brought along: no fixation)."""
        self._sweep(now)
        while len(self._live) >= MAX_SESSIONS:
            self.end(next(iter(self._live)))  # the oldest: dicts keep insertion order
        sid = secrets.token_urlsafe(32)
        clean = " ".join("".join(c if c.isprintable() else " " for c in name).split())[:MAX_NAME] or "console"
        session = Session(sid, role, clean, now + self.ttl_s, self._csrf(sid))
        self._live[sid] = session
        return session

    def get(self, sid: str | None, now: float) -> Session | None:
        if not sid:
            return None
        session = self._live.get(sid)
        if session is None:
            return None
        if session.expires_at <= now:
            self.end(sid)
            return None
        return session

    def end(self, sid: str) -> None:
        self._live.pop(sid, None)
        self._flash.pop(sid, None)

    def flash(self, session: Session, kind: str, text: str) -> None:
        """A message for the session's next page (what became of its last form)."""
        if session.id in self._live:
            self._flash[session.id] = (kind, text)

    def take_flash(self, session: Session) -> tuple[str, str] | None:
        return self._flash.pop(session.id, None)

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self._csrf(session.id).encode())

    # --- failed logins ---------------------------------------------------------------------

    def throttled(self, client: str, now: float) -> bool:
        seen = self._failures.get(client)
        if seen is None:
            return False
        while seen and seen[0] <= now - FAILURE_WINDOW_S:
            seen.popleft()
        return len(seen) >= FAILURES_ALLOWED

    def failed(self, client: str, now: float) -> None:
        if client not in self._failures and len(self._failures) >= MAX_CLIENTS_TRACKED:
            self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(client, deque(maxlen=FAILURES_ALLOWED)).append(now)

    # --- inside ----------------------------------------------------------------------------

    def _csrf(self, sid: str) -> str:
        return hmac.new(self._secret, b"csrf\x00" + sid.encode(), hashlib.sha256).hexdigest()

    def _sweep(self, now: float) -> None:
        for sid in [sid for sid, s in self._live.items() if s.expires_at <= now]:
            self.end(sid)


def cookie(session: Session | None, *, secure: bool, now: float | None = None) -> bytes:
    """The ``Set-Cookie`` value that stores ``session``, or (None) clears it."""
    if session is None:
        value, age = "", 0
    else:
        value, age = session.id, max(0, int(session.expires_at - (time.time() if now is None else now)))
    attrs = [f"{COOKIE}={value}", "Path=/ui", f"Max-Age={age}", "HttpOnly", "SameSite=Strict"]
    if secure:
        attrs.append("Secure")
    return "; ".join(attrs).encode()


def read_cookie(header: bytes | None) -> str | None:
    """The session id from a ``Cookie`` header (the first of that name), else None."""
    if not header:
        return None
    for part in header.decode("latin-1").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value or None
    return None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
