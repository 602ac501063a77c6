"""Issued keys in Redis: the ``redis`` limits backend, shared by every gateway replica.

Two hashes under the configured prefix:

    {prefix}:keys    digest (hex) → the record as JSON   (lookup: one HGET on the request path)
    {prefix}:keyids  id           → digest (hex)          (revoke by the public id)

Nothing is cached, so a revocation holds on every replica from its next request. Each call
waits at most ``BACKEND_TIMEOUT_S``, as the limiter's do: a stalled Redis fails the request
(503) that soon. Redis down when a gateway starts does not stop it from starting (as it does
not stop one already running): ``open(serving=True)`` warns, and each lookup fails (503) until
Redis answers, the client reconnecting by itself; ``/readyz`` says so where
``limits.on_backend_error`` is ``closed``. Create and revoke each run as one small Lua script,
atomic on the server. Both touch two keys: on Redis Cluster give a prefix with a hash tag, e.g.
``{turnout}``, so they share a slot.
"""

from __future__ import annotations

import logging

import orjson
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from turnout.config import LimitsConfig
from turnout.control.keys.base import IssuedKey, KeyStoreError, digest, new_key
from turnout.control.quota.base import BACKEND_TIMEOUT_S

log = logging.getLogger(__name__)

# Refuse rather than overwrite: a digest or id already taken (never, with 256 and 64 random
# bits, but a store must not silently replace a key).
_CREATE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 or redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
return 1
"""

# Splices the time into the JSON as text rather than decoding and re-encoding it: Lua's cjson
# writes numbers with 14 significant digits and would round the other timestamps. The record is
# ours (``revoked_at`` first, compact orjson), and a quote inside a string value is escaped, so
# the pattern can only match the real field. An already revoked key keeps its first time.
_NOT_REVOKED = '"revoked_at":null'
_REVOKE = f"""
local hex = redis.call('HGET', KEYS[2], ARGV[1])
if not hex then return false end
local record = redis.call('HGET', KEYS[1], hex)
if not record then return false end
local at = string.find(record, '{_NOT_REVOKED}', 1, true)
if at then
  record = string.sub(record, 1, at - 1) .. '"revoked_at":' .. ARGV[2] .. string.sub(record, at + {len(_NOT_REVOKED)})
  redis.call('HSET', KEYS[1], hex, record)
end
return record
"""


class RedisKeyStore:
    def __init__(self, url: str, key_prefix: str = "turnout", *, timeout_s: float = BACKEND_TIMEOUT_S) -> None:
        self.url = url  # may hold a password: never put it in a message
        self.keys_key = f"{key_prefix}:keys"
        self.ids_key = f"{key_prefix}:keyids"
        self._timeout_s = timeout_s
        self._client: aioredis.Redis | None = None

    @classmethod
    def from_config(cls, cfg: LimitsConfig) -> RedisKeyStore:
        return cls(cfg.redis_url, cfg.key_prefix)

    async def open(self, *, serving: bool = False) -> None:
        if self._client is not None:
            raise KeyStoreError("the Redis key store is already open")
        # Bounded as the limiter's calls are, so that a stalled Redis fails a request (503) as
        # soon as the limiter would, instead of holding it for seconds.
        client = aioredis.Redis.from_url(
            self.url, socket_timeout=self._timeout_s, socket_connect_timeout=self._timeout_s
        )
        try:
            await client.ping()
        except (AuthenticationError, AuthorizationError) as exc:  # it answered, and said no: the config's
            await client.aclose()
            raise _error(exc) from exc
        except (RedisConnectionError, RedisTimeoutError) as exc:
            if not serving:
                await client.aclose()
                raise _error(exc) from exc
            log.warning("%s; issued keys are refused (503) until it answers", _error(exc))  # calls reconnect
        except RedisError as exc:
            await client.aclose()
            raise _error(exc) from exc
        self._client = client
        self._create = client.register_script(_CREATE)
        self._revoke = client.register_script(_REVOKE)

    async def create(self, tenant: str, name: str, expires_at: float | None, now: float) -> tuple[IssuedKey, str]:
        key, secret = new_key(tenant, name, expires_at, now)
        self._open()
        try:
            created = await self._create(
                keys=[self.keys_key, self.ids_key], args=[digest(secret).hex(), key.id, _encode(key)]
            )
        except RedisError as exc:
            raise _error(exc) from exc
        if created != 1:
            raise KeyStoreError("the Redis key store already holds this key's id or digest; try again")
        return key, secret

    async def lookup(self, key_digest: bytes) -> IssuedKey | None:
        client = self._open()
        try:
            found = await client.hget(self.keys_key, key_digest.hex())
        except RedisError as exc:
            raise _error(exc) from exc
        return None if found is None else _decode(found)

    async def list(self, tenant: str | None = None) -> list[IssuedKey]:
        client = self._open()
        try:
            found = await client.hgetall(self.keys_key)
        except RedisError as exc:
            raise _error(exc) from exc
        keys = (_decode(record) for record in found.values())
        return sorted((k for k in keys if tenant is None or k.tenant == tenant), key=lambda k: (k.created_at, k.id))

    async def revoke(self, key_id: str, now: float) -> IssuedKey | None:
        self._open()
        try:
            found = await self._revoke(keys=[self.keys_key, self.ids_key], args=[key_id, repr(float(now))])
        except RedisError as exc:
            raise _error(exc) from exc
        return None if found is None else _decode(found)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _open(self) -> aioredis.Redis:
        if self._client is None:
            raise KeyStoreError("the Redis key store is not open")
        return self._client


def _encode(key: IssuedKey) -> bytes:
    # revoked_at first: the revoke script finds it by text (see _REVOKE).
    return orjson.dumps(
        {
            "revoked_at": key.revoked_at,
            "id": key.id,
            "tenant": key.tenant,
            "name": key.name,
            "hint": key.hint,
            "created_at": key.created_at,
            "expires_at": key.expires_at,
        }
    )


def _decode(record: bytes | str) -> IssuedKey:
    fields = orjson.loads(record)
    return IssuedKey(
        id=fields["id"],
        tenant=fields["tenant"],
        name=fields["name"],
        created_at=fields["created_at"],
        expires_at=fields["expires_at"],
        revoked_at=fields["revoked_at"],
        hint=fields["hint"],
    )


def _error(exc: RedisError) -> KeyStoreError:
    # redis-py names host and port, never the password in the URL.
    return KeyStoreError(f"Redis key store: {type(exc).__name__}: {exc}")
