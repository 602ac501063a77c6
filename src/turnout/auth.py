"""Tenant identity comes only from the API key. Keys are held as SHA-256 digests, never in clear."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from turnout.config import DATA_CLASSES, Config
from turnout.errors import AuthError


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    data_classes: frozenset[str]
    tasks: frozenset[str] | None  # None: every task

    def may_use(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks


ANONYMOUS = Tenant("anonymous", frozenset(DATA_CLASSES), None)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class Authenticator:
    def __init__(self, config: Config) -> None:
        self.anonymous = not config.tenants
        self._by_digest: dict[bytes, Tenant] = {}
        for name, t in config.tenants.items():
            tenant = Tenant(name, frozenset(t.data_classes), frozenset(t.tasks) if t.tasks is not None else None)
            for key in t.keys:
                self._by_digest[digest(key)] = tenant

    def authenticate(self, authorization: bytes | None) -> Tenant:
        """``authorization`` is the raw header value (``Bearer <key>``)."""
        if self.anonymous:
            return ANONYMOUS
        if not authorization:
            raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, key = authorization.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthError("malformed Authorization header: expected 'Bearer <key>'")
        tenant = self._by_digest.get(digest(key.strip()))
        if tenant is None:
            raise AuthError("invalid API key")
        return tenant
