"""The in-process cache: one LRU per task, bounded by the memory its entries hold (``max_mb``:
each value, its key and what Python spends to hold them, ``cost``),
entries expiring with their TTL (checked on read and by ``sweep``). Nothing is shared between
processes: each gateway replica fills its own.

Purges are counted by what they name (tenant scope, task, both, all), as the Redis store keeps
its purge marks: ``mark`` is those counts for an address, read when a request misses, and a
``put`` with a mark that has changed since (a purge naming the answer came while it was being
generated) stores nothing."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from turnout.cache.key import TENANT, Address

DEFAULT_LIMIT = 64 * 1024 * 1024
# What an entry holds beside its value's bytes, measured with tracemalloc (the test holds it to
# that): the key twice (the dict's and the address's digest and scope), the slot, the address
# tuple, the expiry and the ordered dict's link. Without it a cache of short answers held five
# times its ``max_mb``.
SLOT_BYTES = 288


def cost(key: str, value: bytes) -> int:
    """The bytes an entry counts against its task's bound."""
    return len(value) + 2 * len(key) + SLOT_BYTES


@dataclass(slots=True)
class _Slot:
    address: Address
    value: bytes
    expires: float
    size: int  # ``cost``


class _Lru:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.slots: OrderedDict[str, _Slot] = OrderedDict()

    def drop(self, key: str) -> None:
        slot = self.slots.pop(key, None)
        if slot is not None:
            self.size -= slot.size

    def shrink(self) -> None:
        while self.size > self.limit:  # least recently used first
            self.drop(next(iter(self.slots)))

    def drop_where(self, keep: Callable[[_Slot], bool]) -> int:
        gone = [key for key, slot in self.slots.items() if not keep(slot)]
        for key in gone:
            self.drop(key)
        return len(gone)


class MemoryCache:
    def __init__(
        self,
        limits: dict[str, int] | None = None,
        *,
        default_limit: int = DEFAULT_LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``limits``: bytes per task; other tasks get ``default_limit``."""
        self._limits = limits or {}
        self._default = default_limit
        self._clock = clock
        self._tasks: dict[str, _Lru] = {}
        self._purges: dict[tuple[str | None, str | None], int] = {}  # by (scope, task) they named

    @property
    def size(self) -> int:
        return sum(lru.size for lru in self._tasks.values())

    def __len__(self) -> int:
        return sum(len(lru.slots) for lru in self._tasks.values())

    async def get(self, address: Address) -> bytes | None:
        return self.get_now(address)

    async def read(self, address: Address) -> tuple[bytes | None, bytes | None]:
        return self.get_now(address), self.mark(address)

    def mark(self, address: Address) -> bytes:
        """The counts of the purges that name ``address``: every answer's, its scope's, its
        task's, both's."""
        count, scope, task = self._purges.get, address.scope, address.task
        return b"%d|%d|%d|%d" % (
            count((None, None), 0),
            count((scope, None), 0),
            count((None, task), 0),
            count((scope, task), 0),
        )

    def get_now(self, address: Address) -> bytes | None:
        """``get`` without a coroutine: the cache stage reads an in-process store this way."""
        lru = self._tasks.get(address.task)
        if lru is None:
            return None
        key = address.text()
        slot = lru.slots.get(key)
        if slot is None:
            return None
        if slot.expires <= self._clock():
            lru.drop(key)
            return None
        lru.slots.move_to_end(key)
        return slot.value

    async def put(self, address: Address, value: bytes, ttl_s: float, mark: bytes | None = None) -> bool:
        lru = self._tasks.get(address.task)
        if lru is None:
            lru = self._tasks[address.task] = _Lru(self._limits.get(address.task, self._default))
        key = address.text()
        size = cost(key, value)
        if size > lru.limit or (mark is not None and mark != self.mark(address)):
            return False
        lru.drop(key)
        lru.slots[key] = _Slot(address, value, self._clock() + ttl_s, size)
        lru.size += size
        lru.shrink()
        return True

    def bound(self, limits: dict[str, int]) -> None:
        self._limits = limits
        for task, lru in self._tasks.items():
            lru.limit = limits.get(task, self._default)
            lru.shrink()

    async def purge(self, tenant: str | None = None, task: str | None = None) -> int:
        lrus = list(self._tasks.values()) if task is None else [lru for t, lru in self._tasks.items() if t == task]
        scope = None if tenant is None else TENANT + tenant
        self._purges[scope, task] = self._purges.get((scope, task), 0) + 1
        return sum(lru.drop_where(lambda s: scope is not None and s.address.scope != scope) for lru in lrus)

    async def purge_release(self, task: str, keep: frozenset[str]) -> int:
        lru = self._tasks.get(task)
        return 0 if lru is None else lru.drop_where(lambda s: s.address.version in keep)

    async def sweep(self) -> int:
        now = self._clock()
        return sum(lru.drop_where(lambda s: s.expires > now) for lru in self._tasks.values())

    async def aclose(self) -> None:
        self._tasks.clear()
