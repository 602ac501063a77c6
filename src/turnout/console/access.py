"""Who may use the console, and the proof a form came from one of its pages.

    POST /ui/login (key) → admin key: an admin session; viewer key: a read-only one;
                           a tenant key: 403; anything else: 401 (failures are throttled:
                           ``console.throttle``, shared by every worker)
    session cookie       a signed token: role, name, expiry and a random nonce, with
                         HMAC-SHA256(secret, those); HttpOnly, SameSite=Strict, Path=/ui,
                         Secure when served over TLS
    CSRF token           HMAC-SHA256(secret, session token): every state-changing form
                         carries it, checked with ``hmac.compare_digest``
    flash cookie         what became of a form, for the next page: signed and bound to the
                         session (any worker shows it), cleared once shown, 60 s at most

The secret is the process's own (random: a restart logs everyone out), or, with ``--workers``,
the one the supervisor hands every worker (``CONSOLE_SECRET_ENV``), so a session and its forms work
whichever worker the kernel gives a connection to. Log out revokes the token in this process
and, with workers, in a directory they share (``CONSOLE_REVOKED_ENV``: one empty file per token;
failed logins are counted under it too).
Replicas behind one address need sticky sessions (or a login on each). The keys themselves
never leave the login request; they are compared as SHA-256 digests with ``compare_digest``:
no timing leak of their length or content.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from turnout.console.throttle import Failures
from turnout.serving.supervisor import CONSOLE_REVOKED_ENV, CONSOLE_SECRET_ENV

Role = Literal["admin", "viewer"]

COOKIE = "turnout_console"
SESSION_S = 12 * 3600.0  # a working day: then log in again
MAX_REVOKED = 10_000  # revoked tokens remembered in memory (each until it would have expired)
ROLES: tuple[Role, ...] = ("admin", "viewer")
MAX_NAME = 80
FAILURES_DIR = "failed-logins"  # under the workers' shared directory: one file per client
FLASH_COOKIE = "turnout_console_flash"  # what became of the last form, for the next page
FLASH_S = 60
MAX_FLASH_BYTES = 2_000  # of a message's UTF-8: the cookie, base64 and signed, stays under 4 kB
Flash = Literal["ok", "error"]


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
    def __init__(
        self,
        admin_key: str | None,
        viewer_key: str | None,
        *,
        ttl_s: float = SESSION_S,
        secret: bytes | None = None,
        revoked_dir: str | None = None,
    ) -> None:
        """``secret`` and ``revoked_dir`` default to the supervisor's (``CONSOLE_SECRET_ENV``,
        ``CONSOLE_REVOKED_ENV``), else a random secret and revocations in memory only."""
        self.admin_key = admin_key
        self.viewer_key = viewer_key
        self.ttl_s = ttl_s
        shared = os.environ.get(CONSOLE_SECRET_ENV)
        self._secret = secret or (bytes.fromhex(shared) if shared else os.urandom(32))
        where = revoked_dir or (os.environ.get(CONSOLE_REVOKED_ENV) if secret is None else None)
        self._revoked_dir = Path(where) if where else None
        self._revoked: dict[str, float] = {}  # token digest → when it would have expired
        # failed logins (console.throttle): counted with every worker, beside their revocations
        self.failures = Failures(self._revoked_dir / FAILURES_DIR if self._revoked_dir else None)

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
        clean = " ".join("".join(c if c.isprintable() else " " for c in name).split())[:MAX_NAME] or "console"
        expires_at = int(now + self.ttl_s)
        payload = "\x1f".join((role, str(expires_at), secrets.token_urlsafe(16), clean)).encode()
        token = self._seal(b"session\x00", payload)
        return Session(token, role, clean, float(expires_at), self._csrf(token))

    def get(self, sid: str | None, now: float) -> Session | None:
        """The session ``sid`` names: signed by this secret, not expired, not revoked."""
        if not sid or len(sid) > 1024:
            return None
        payload = self._unseal(b"session\x00", sid)
        if payload is None:
            return None
        role, expires, _nonce, name = payload.decode("utf-8", "replace").split("\x1f", 3)
        if role not in ROLES or not expires.isdigit() or int(expires) <= now or self._is_revoked(sid):
            return None
        return Session(sid, role, name, float(expires), self._csrf(sid))

    def end(self, sid: str) -> None:
        """Log out: the token is refused from now on, by every worker."""
        digest = _token_digest(sid)
        session = self.get(sid, time.time())
        if session is None:
            return
        self._sweep(time.time())
        if len(self._revoked) >= MAX_REVOKED:
            self._revoked.pop(next(iter(self._revoked)))
        self._revoked[digest] = session.expires_at
        if self._revoked_dir is not None:
            with contextlib.suppress(OSError):  # the supervisor's directory is gone: this worker is stopping
                (self._revoked_dir / digest).touch()

    def flash(self, session: Session, kind: Flash, text: str, *, secure: bool) -> bytes:
        """The ``Set-Cookie`` that carries a message to the session's next page (what became of
        its last form): signed and bound to the session, so whichever worker serves that page
        shows it; gone after ``FLASH_S``."""
        raw = text.encode()
        if len(raw) > MAX_FLASH_BYTES:  # a cookie holds about 4 kB: the message's start
            text = raw[: MAX_FLASH_BYTES - 3].decode("utf-8", "ignore") + "…"
        payload = f"{kind}\x1f{text}".encode()
        value = self._seal(b"flash\x00" + session.id.encode() + b"\x00", payload)
        return _set_cookie(FLASH_COOKIE, value, FLASH_S, secure)

    def take_flash(self, session: Session, header: bytes | None) -> tuple[Flash, str] | None:
        """The message a ``Cookie`` header carries for ``session``, if its signature holds."""
        found = read_cookie(header, FLASH_COOKIE)
        if found is None or len(found) > 2 * MAX_FLASH_BYTES:
            return None
        payload = self._unseal(b"flash\x00" + session.id.encode() + b"\x00", found)
        if payload is None:
            return None
        kind, _, text = payload.decode("utf-8", "replace").partition("\x1f")
        return ("ok" if kind == "ok" else "error"), text

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self._csrf(session.id).encode())

    # --- inside ----------------------------------------------------------------------------

    def _seal(self, purpose: bytes, payload: bytes) -> str:
        """``payload`` and its signature for ``purpose``, as a cookie's value."""
        return _b64(payload) + "." + _b64(self._sign(purpose + payload))

    def _unseal(self, purpose: bytes, value: str) -> bytes | None:
        """The payload of a value ``_seal`` made for ``purpose`` with this secret; None otherwise."""
        body, dot, mac = value.rpartition(".")
        if not dot:
            return None
        try:
            payload, signature = _unb64(body), _unb64(mac)
        except (binascii.Error, ValueError):
            return None
        return payload if hmac.compare_digest(signature, self._sign(purpose + payload)) else None

    def _sign(self, data: bytes) -> bytes:
        return hmac.new(self._secret, data, hashlib.sha256).digest()

    def _csrf(self, sid: str) -> str:
        return hmac.new(self._secret, b"csrf\x00" + sid.encode(), hashlib.sha256).hexdigest()

    def _is_revoked(self, sid: str) -> bool:
        digest = _token_digest(sid)
        if digest in self._revoked:
            return True
        return self._revoked_dir is not None and (self._revoked_dir / digest).exists()

    def _sweep(self, now: float) -> None:
        for digest in [d for d, until in self._revoked.items() if until <= now]:
            del self._revoked[digest]


def cookie(session: Session | None, *, secure: bool, now: float | None = None) -> bytes:
    """The ``Set-Cookie`` value that stores ``session``, or (None) clears it."""
    if session is None:
        return _set_cookie(COOKIE, "", 0, secure)
    return _set_cookie(COOKIE, session.id, int(session.expires_at - (time.time() if now is None else now)), secure)


def no_flash(*, secure: bool) -> bytes:
    """The ``Set-Cookie`` that clears a message once its page has shown it."""
    return _set_cookie(FLASH_COOKIE, "", 0, secure)


def read_cookie(header: bytes | None, name: str = COOKIE) -> str | None:
    """The value of cookie ``name`` (the session's by default) in a ``Cookie`` header (the
    first of that name), else None."""
    if not header:
        return None
    for part in header.decode("latin-1").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value or None
    return None


def _set_cookie(name: str, value: str, age: int, secure: bool) -> bytes:
    attrs = [f"{name}={value}", "Path=/ui", f"Max-Age={max(0, age)}", "HttpOnly", "SameSite=Strict"]
    if secure:
        attrs.append("Secure")
    return "; ".join(attrs).encode()


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def _token_digest(token: str) -> str:
    """A token as kept on disk and in memory: never the token itself."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
