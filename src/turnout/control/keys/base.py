"""Issued API keys: created by `turnout keys create` (or POST /admin/keys), shown once, stored
only as a SHA-256 digest. Keys are 256 random bits, so a fast hash is as safe as a slow one
here: there is nothing to guess from the digest.

    KeyStore (Protocol)
    ├── SQLiteKeyStore  turnout.control.keys.sqlite   the memory limits backend (one replica)
    └── RedisKeyStore   turnout.control.keys.redis    the redis limits backend (every replica sees a
                                              revocation on its next request)
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any, Protocol

from turnout._support.times import iso
from turnout.errors import TurnoutError

SECRET_PREFIX = "tk-"  # noqa: S105 - a prefix, not a secret
HINT_CHARS = len(SECRET_PREFIX) + 3  # "tk-Ab3…": 18 random bits, enough to recognise, useless to guess


MAX_KEY_TTL_S = 100 * 365 * 86_400  # the longest an issued key may live: the admin API and the CLI


@dataclass(frozen=True, slots=True)
class IssuedKey:
    id: str  # public: shown by `keys list`, used by `keys revoke` (e.g. "key_3f9c…")
    tenant: str
    name: str
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    hint: str = ""  # the secret's first characters, to recognise it ("tk-Ab3…"), never enough to use

    def live(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def status(self, now: float) -> str:
        """live, expired or revoked."""
        if self.revoked_at is not None:
            return "revoked"
        return "live" if self.live(now) else "expired"

    def to_json(self, now: float) -> dict[str, Any]:
        """The one JSON shape of a key, for ``turnout keys list --format json`` and the admin API:
        never its secret or digest; times in ISO 8601 UTC."""
        return {
            "id": self.id,
            "tenant": self.tenant,
            "name": self.name,
            "hint": self.hint,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "revoked_at": iso(self.revoked_at),
            "status": self.status(now),
        }


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_key(tenant: str, name: str, expires_at: float | None, now: float) -> tuple[IssuedKey, str]:
    """A fresh record and its secret, for a backend to store under ``digest(secret)``."""
    secret = new_secret()
    key = IssuedKey(
        id="key_" + secrets.token_hex(8),
        tenant=tenant,
        name=name,
        created_at=now,
        expires_at=expires_at,
        hint=secret[:HINT_CHARS] + "…",
    )
    return key, secret


class KeyStoreError(TurnoutError):
    """The key store cannot be used: it is not open, its schema is newer than this code, or its
    backend (the SQLite file, Redis) failed. On the request path the key cannot be checked: 503."""

    status = 503
    type = "service_unavailable"
    code = "key_store_unavailable"


class KeyStore(Protocol):
    async def open(self, *, serving: bool = False) -> None:
        """``serving``: a gateway starting up, for which a shared backend that is down for now
        (Redis) is no reason not to start: its calls fail (503) until it answers. A command
        (``turnout keys``) wants to know at once."""
        ...

    async def create(self, tenant: str, name: str, expires_at: float | None, now: float) -> tuple[IssuedKey, str]:
        """A new key for ``tenant``; returns its record and the secret (the only time it exists)."""
        ...

    async def lookup(self, key_digest: bytes) -> IssuedKey | None:
        """On the request path: the key with this digest, revoked and expired ones included
        (the caller decides with ``live``). Must see revocations made by other processes."""
        ...

    async def list(self, tenant: str | None = None) -> list[IssuedKey]: ...

    async def revoke(self, key_id: str, now: float) -> IssuedKey | None:
        """Revoke by public id; None if there is no such key. Revoking twice keeps the first time."""
        ...

    async def aclose(self) -> None: ...
