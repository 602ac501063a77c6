"""Where cached answers live: one small async interface, one backend per module.

    CacheStore (Protocol)
    ├── MemoryCache   turnout.cache.memory   in this process, an LRU per task bounded by bytes
    └── RedisCache    turnout.cache.redis    shared by replicas, sealed (AES-GCM), a TTL per entry

Both pass the contract suite in ``tests/test_cache_store.py``: ``get`` answers what ``put``
stored until its TTL ends; ``purge`` by tenant touches that tenant's scope only (answers shared
by every tenant belong to none), by task every scope of that task, with neither everything;
``purge_release`` drops a task's answers of every version (``Address.version``) but ``keep``. A backend that
fails answers a miss (``get``) or stores nothing (``put``): the cache never fails a request.
"""

from __future__ import annotations

from typing import Protocol

from turnout.cache.key import Address


class CacheStore(Protocol):
    async def get(self, address: Address) -> bytes | None: ...

    async def read(self, address: Address) -> tuple[bytes | None, bytes | None]:
        """``get``, and a mark of the purges that name ``address`` as they stood when it was read
        (in the same round trip), for ``put``."""
        ...

    async def put(self, address: Address, value: bytes, ttl_s: float, mark: bytes | None = None) -> bool:
        """False: not stored (larger than the task's bound, the backend failed, or, given the
        ``mark`` of a ``read``, a purge naming ``address`` came since: the answer was asked for
        before it)."""
        ...

    async def purge(self, tenant: str | None = None, task: str | None = None) -> int:
        """Entries deleted (where the backend can count them)."""
        ...

    async def purge_release(self, task: str, keep: frozenset[str]) -> int: ...

    def bound(self, limits: dict[str, int]) -> None:
        """Each task's bound in bytes anew (a reload's ``max_mb``, a task newly cached)."""
        ...

    async def sweep(self) -> int:
        """Drop expired entries now (the memory backend; Redis expires its own): how many."""
        ...

    async def aclose(self) -> None: ...
