"""Tenant identity comes only from the API key. Keys are looked up as SHA-256 digests; issued keys
exist only as digests, in the key store."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from turnout._support.throttle import Throttle
from turnout.config import DATA_CLASSES, Config
from turnout.control.keys.base import IssuedKey, KeyStore, KeyStoreError
from turnout.errors import AuthError

log = logging.getLogger("turnout")

STORE_DOWN_EVERY_S = 10.0  # a key store that fails is logged at most this often (each request fails)


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
    """Config keys (bootstrap) are held in memory as digests; issued keys are looked up in the
    key store by digest on every request, so a revocation holds at once on every replica."""

    def __init__(self, config: Config, keys: KeyStore | None = None) -> None:
        self.anonymous = not config.tenants
        self.keys = keys
        self._by_digest: dict[bytes, Tenant] = {}
        # Authorization headers that carried a config key, as sent: the config holds these keys
        # in clear already, so remembering the header costs no secrecy and saves a hash per
        # request. Issued keys are never remembered (a revocation must hold at once).
        self._seen: dict[bytes, Tenant] = {}
        self._store_down = Throttle(1 / STORE_DOWN_EVERY_S, 1)
        self.tenants: dict[str, Tenant] = {}
        for name, t in config.tenants.items():
            tenant = Tenant(name, frozenset(t.data_classes), frozenset(t.tasks) if t.tasks is not None else None)
            self.tenants[name] = tenant
            for key in t.keys:
                self._by_digest[digest(key)] = tenant

    def authenticate(self, authorization: bytes | None) -> Tenant:
        """Config keys only, without I/O. ``authorization`` is the raw header (``Bearer <key>``)."""
        if self.anonymous:
            return ANONYMOUS
        tenant = self._by_digest.get(digest(bearer(authorization)))
        if tenant is None:
            raise AuthError("invalid API key")
        return tenant

    async def identify(self, authorization: bytes | None, now: float) -> Tenant:
        """Config keys, then issued keys; revoked and expired keys are refused."""
        if self.anonymous:
            return ANONYMOUS
        if authorization is not None and (seen := self._seen.get(authorization)) is not None:
            return seen
        key_digest = digest(bearer(authorization))
        tenant = self._by_digest.get(key_digest)
        if tenant is not None:
            if authorization is not None and len(self._seen) < _SEEN_MAX:
                self._seen[authorization] = tenant
            return tenant
        issued = await self._lookup(key_digest) if self.keys is not None else None
        if issued is not None:
            if issued.revoked_at is not None:
                raise AuthError("this API key was revoked", code="revoked_api_key")
            if not issued.live(now):
                raise AuthError("this API key has expired", code="expired_api_key")
            tenant = self.tenants.get(issued.tenant)
            if tenant is not None:
                return tenant
        raise AuthError("invalid API key")

    async def _lookup(self, key_digest: bytes) -> IssuedKey | None:
        """The issued key; the store's failure is logged, and told to the caller (anyone who
        sends a key) without what names the store: its host and port, its file."""
        assert self.keys is not None
        try:
            return await self.keys.lookup(key_digest)
        except KeyStoreError as exc:
            if self._store_down.allow():
                log.warning("issued keys cannot be checked: %s%s", exc, self._store_down.note())
            raise KeyStoreError("the key store cannot be reached; try again shortly") from exc


_SEEN_MAX = 1024  # spellings of config keys remembered (a header may vary in case and spaces)


def bearer(authorization: bytes | None) -> str:
    if not authorization:
        raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
    scheme, _, key = authorization.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthError("malformed Authorization header: expected 'Bearer <key>'")
    return key.strip()
