"""The shared cache: Redis, one key per answer with its own TTL, every value sealed (AES-GCM,
``turnout.cache.seal``) with its key as associated data. Keys are
``<prefix>:cache:<scope>:<task>:<version>:<digest>``, each part quoted
(``turnout.cache.key``: no part holds a colon), so a purge scans the prefix's keys and picks a
tenant's or a task's answers by comparing each key's parts.

A purge first sets its *purge mark* to a new random token, kept a day
(``<prefix>:cache-purged:all`` for every answer, ``…:s:<scope>`` for a tenant's,
``…:k:<task>`` for a task's, ``…:sk:<scope>:<task>`` for both), then deletes. A lookup reads
the four marks that can name its address with the entry itself (one MGET: no round trip
more), and its answer is stored by a script only if they are still as it read them: an answer
asked for before a purge (in flight on any replica when it came) is not kept after it, while
the purges of other tenants and tasks change nothing for it.

A Redis that fails or is slow (``socket_timeout``) is a miss, never a failed request; the first
failure of a streak is logged as a warning, the rest at debug level. After a timeout or a
refused connection Redis is left alone for ``REST_S`` (every lookup a miss at once), then one
lookup asks it again while the others stay misses until it is answered: a Redis that hangs
costs one request a second its timeout, not every request, however many come at once. A Redis
that refuses writes (out of memory under ``noeviction``) still serves what it holds; the answers
are not kept meanwhile, which is logged once, not at every miss.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from turnout.cache.key import TENANT, Address, quote
from turnout.cache.seal import Sealer, Unsealable

log = logging.getLogger("turnout.cache")

SCAN_COUNT = 1000
PARTS = 4  # after the prefix: scope, task, version, digest (each quoted: no colon)
REST_S = 1.0  # after Redis timed out or refused, gets and puts skip it this long
MARK_TTL_S = 86_400  # a purge's mark outlives every answer in flight when it came
UNREAD = b""  # the mark of a lookup that could not read Redis: nothing is stored with it

# Store the answer only if no purge naming it came since its lookup read the marks (ARGV[3]).
_PUT = """
local seen = {}
for i = 2, #KEYS do seen[i - 1] = redis.call('GET', KEYS[i]) or '' end
if table.concat(seen, '|') ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


def _mark(scope: str | None, task: str | None) -> str:
    """The name of the purge mark of a purge of ``scope`` and ``task`` (each quoted; None: any)."""
    if scope is None:
        return "all" if task is None else f"k:{task}"
    return f"s:{scope}" if task is None else f"sk:{scope}:{task}"


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis SCAN pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisCache:
    def __init__(
        self,
        url: str,
        key_prefix: str,
        encryption_key: str,
        *,
        limits: dict[str, int] | None = None,
        socket_timeout: float = 0.5,
    ) -> None:
        self.prefix = f"{key_prefix}:cache:"
        self._sealer = Sealer(encryption_key)
        self._limits = limits or {}
        self.client: Redis = Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout)
        self._marks = f"{key_prefix}:cache-purged:"  # not under the cache's prefix: no purge scans them
        self._put = self.client.register_script(_PUT)
        self._failing = False  # a streak of failed calls, logged once
        self._down = False  # timed out or refused a connection: asked by one lookup a REST_S
        self._rest_until = 0.0
        self._refusing = False  # writes refused (out of memory): answers are not kept

    def key(self, address: Address) -> bytes:
        return (self.prefix + address.text()).encode()

    async def get(self, address: Address) -> bytes | None:
        return (await self.read(address))[0]

    async def read(self, address: Address) -> tuple[bytes | None, bytes | None]:
        if self._resting():
            return None, UNREAD
        key = self.key(address)
        try:
            sealed, *marks = await self.client.mget(key, *self._marks_of(address))
        except RedisError as exc:
            self._failed("read", exc)
            return None, UNREAD
        self._ok()
        mark = b"|".join(m.encode() if isinstance(m, str) else m or b"" for m in marks)
        if sealed is None:
            return None, mark
        try:
            return self._sealer.open(bytes(sealed, "latin-1") if isinstance(sealed, str) else sealed, key), mark
        except Unsealable:  # sealed under an earlier key: gone for good
            log.debug("cache: an entry of task %s does not open under the current key; dropped", address.task)
            await self._quietly_delete(key)
            return None, mark

    async def put(self, address: Address, value: bytes, ttl_s: float, mark: bytes | None = None) -> bool:
        limit = self._limits.get(address.task)
        if (limit is not None and len(value) > limit) or self._resting() or mark == UNREAD:
            return False
        key = self.key(address)
        sealed, px = self._sealer.seal(value, key), max(1, int(ttl_s * 1000))
        try:
            if mark is None:
                await self.client.set(key, sealed, px=px)
            elif not await self._put(keys=[key, *self._marks_of(address)], args=[sealed, px, mark]):
                return False  # purged since its lookup
        except ResponseError as exc:  # it answered, and keeps nothing for now: reads still serve
            if not self._refusing:
                log.warning(
                    "cache: Redis refuses to keep answers (%s); they are not kept meanwhile", type(exc).__name__
                )
            self._refusing = True
            return False
        except RedisError as exc:
            self._failed("write", exc)
            return False
        self._ok()
        if self._refusing:
            log.warning("cache: Redis keeps answers again")
            self._refusing = False
        return True

    def _marks_of(self, address: Address) -> tuple[str, str, str, str]:
        """The purge marks that can name ``address``: every answer's, its scope's, its task's, both's."""
        scope, task = quote(address.scope), quote(address.task)
        m = self._marks
        return m + _mark(None, None), m + _mark(scope, None), m + _mark(None, task), m + _mark(scope, task)

    def bound(self, limits: dict[str, int]) -> None:
        self._limits = limits

    async def purge(self, tenant: str | None = None, task: str | None = None) -> int:
        quoted = None if tenant is None else quote(TENANT + tenant), None if task is None else quote(task)
        # First the mark: an answer in flight now, on any replica, is not stored after the delete.
        await self.client.set(self._marks + _mark(*quoted), secrets.token_hex(8), ex=MARK_TTL_S)
        scope, name = (None if part is None else part.encode() for part in quoted)
        return await self._delete_matching(
            lambda parts: (scope is None or parts[0] == scope) and (name is None or parts[1] == name)
        )

    async def purge_release(self, task: str, keep: frozenset[str]) -> int:
        kept = {quote(v).encode() for v in keep}
        name = quote(task).encode()
        return await self._delete_matching(lambda parts: parts[1] == name and parts[2] not in kept)

    async def sweep(self) -> int:
        return 0  # every key carries its TTL

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _delete_matching(self, chosen: Callable[[list[bytes]], bool]) -> int:
        """Delete the cache's keys whose parts (scope, task, version, digest) ``chosen`` picks.
        SCAN's pattern only narrows to this prefix's cache (its glob characters escaped): a
        ``*`` there would also match across parts (``*:none:*`` finds the task ``none`` and
        every answer of release version ``none``), so each key's parts are compared here."""
        deleted = 0
        batch: list[bytes] = []
        prefix = self.prefix.encode()
        async for key in self.client.scan_iter(match=_glob_escape(self.prefix) + "*", count=SCAN_COUNT):
            parts = key[len(prefix) :].split(b":") if key.startswith(prefix) else []
            if len(parts) == PARTS and chosen(parts):
                batch.append(key)
            if len(batch) >= SCAN_COUNT:
                deleted += await self.client.unlink(*batch)
                batch = []
        if batch:
            deleted += await self.client.unlink(*batch)
        return deleted

    async def _quietly_delete(self, key: bytes) -> None:
        try:
            await self.client.unlink(key)
        except RedisError as exc:
            self._failed("delete", exc)

    def _resting(self) -> bool:
        """Whether to leave Redis alone now: for ``REST_S`` after a timeout or a refused
        connection; then this caller asks it, and the rest starts anew for the others until its
        answer ends it (``_ok``) or a failure does (a caller that never hears, cancelled, holds
        it ``REST_S`` at most)."""
        if not self._down:
            return False
        now = time.monotonic()
        if now < self._rest_until:
            return True
        self._rest_until = now + REST_S
        return False

    def _failed(self, what: str, exc: RedisError) -> None:
        level = logging.DEBUG if self._failing else logging.WARNING
        log.log(level, "cache: Redis %s failed (%s); answering as a miss", what, type(exc).__name__)
        self._failing = True
        if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):  # not one odd key (WRONGTYPE)
            self._down = True
            self._rest_until = time.monotonic() + REST_S

    def _ok(self) -> None:
        if self._failing:
            log.warning("cache: Redis answers again")
        self._failing = self._down = False
