"""Which replica of a self-hosted target takes a call, and the scraper that tells us how busy
each one is.

A replica's score is the calls turnout has in flight there plus its ``pressure``: what the
server itself last reported (``turnout.providers.promtext``), ``QUEUE_WEIGHT`` per queued request
and up to ``KV_WEIGHT`` for a full KV cache. Without a ``load`` scraper (or while a replica's
reading is missing or stale) the pressure is 0, so ``least_loaded`` is exactly fewest in flight.
The server's running count is not scored: it includes our own calls, which ``in_flight`` knows
sooner than any scrape.
Only replicas whose breaker lets a call through are candidates.

* ``least_loaded``: the lowest score; ties rotate.
* ``prefix_affinity``: the conversation's key (a hash of its leading messages: system prompts
  and the first user message, each cut at ``LEAD_CHARS``) picks a home replica by rendezvous
  hashing, so every gateway process agrees and adding a replica moves only its share. The home
  keeps the call while its score is within ``slack`` of the lowest; past that it is overloaded
  and the call goes to the least loaded. A request without messages is balanced by load.

Choosing is one pass over the replicas (``least_loaded`` allocates nothing); the prefix key costs
one BLAKE2b over at most a few KiB. The scraper is a ``Periodic`` loop owned by the provider: every
interval it reads all replicas at once, each bounded by ``timeout_s``; a failed read keeps the
last good one until it is ``stale_s`` old, then drops it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from hashlib import blake2b
from typing import Any, TypeVar

from yarl import URL

from turnout._support.periodic import Periodic
from turnout.config import LoadScrapeConfig
from turnout.providers.promtext import MAX_BYTES, Gauges, parse
from turnout.providers.transport import TRANSPORT_ERRORS, Client, describe
from turnout.routing.breaker import Breaker

QUEUE_WEIGHT = 2.0  # a queued request means the server is full: ours would wait behind it
KV_WEIGHT = 4.0  # a full KV cache: the server is about to preempt running requests or queue new ones
LEAD_CHARS = 4096  # of each leading message: prefix caches match from the start anyway
_LEAD_MESSAGES = 8  # looked at for the first user message
_LEAD_PARTS = 16  # content parts of one message
_M64 = (1 << 64) - 1


class Candidate:
    """What choosing needs of a replica. ``gauges``: its last reading, None when it has none or
    that one went stale; ``pressure`` follows it."""

    __slots__ = ("breaker", "detail", "gauges", "in_flight", "label", "metrics_url", "pressure", "read_at", "seed")

    def __init__(self, label: str, base_url: str, breaker: Breaker, metrics_path: str) -> None:
        self.label = label
        self.breaker = breaker
        self.in_flight = 0
        self.metrics_url = URL(base_url).with_path(metrics_path)
        # From the URL, not the position: reordering base_urls keeps conversations where they were.
        self.seed = int.from_bytes(blake2b(base_url.encode(), digest_size=8).digest())
        self.gauges: Gauges | None = None
        self.pressure = 0.0
        self.read_at = 0.0
        self.detail = ""  # why the last read failed, for the admin view


C = TypeVar("C", bound=Candidate)


def pressure(gauges: Gauges) -> float:
    return QUEUE_WEIGHT * gauges.waiting + KV_WEIGHT * (gauges.kv_cache or 0.0)


def least_loaded(replicas: Sequence[C], start: int) -> C | None:
    """The lowest score among available replicas, looking from ``start`` (ties rotate)."""
    n = len(replicas)
    best: C | None = None
    best_score = float("inf")
    for i in range(n):
        r = replicas[(start + i) % n]
        score = r.in_flight + r.pressure
        if score < best_score and r.breaker.available():
            best, best_score = r, score
    return best


def with_affinity(replicas: Sequence[C], key: int, start: int, slack: float) -> C | None:
    """The key's home replica (the highest rendezvous weight among available replicas) unless
    its score is more than ``slack`` above the lowest; then the least loaded."""
    n = len(replicas)
    best: C | None = None
    best_score = float("inf")
    home: C | None = None
    home_weight = -1
    home_score = 0.0
    for i in range(n):
        r = replicas[(start + i) % n]
        if not r.breaker.available():
            continue
        score = r.in_flight + r.pressure
        if score < best_score:
            best, best_score = r, score
        weight = _mix(key ^ r.seed)
        if weight > home_weight:
            home, home_weight, home_score = r, weight, score
    if home is not None and home_score <= best_score + slack:
        return home
    return best


def prefix_key(body: Mapping[str, Any]) -> int | None:
    """A stable hash of the leading messages (system and developer ones, then the first user
    message); None when there are none to hash."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    h = blake2b(digest_size=8)
    for message in messages[:_LEAD_MESSAGES]:
        if not isinstance(message, dict):
            break
        role = message.get("role")
        h.update(role.encode("utf-8", "replace")[:32] if isinstance(role, str) else b"?")
        h.update(b"\x00")
        _feed(h, message.get("content"))
        if role == "user":
            break
    return int.from_bytes(h.digest())


def _feed(h: Any, content: Any) -> None:
    if isinstance(content, str):
        h.update(content[:LEAD_CHARS].encode("utf-8", "replace"))
    elif isinstance(content, list):
        for part in content[:_LEAD_PARTS]:
            text = part.get("text") if isinstance(part, dict) else None
            if isinstance(text, str):
                h.update(text[:LEAD_CHARS].encode("utf-8", "replace"))
            h.update(b"\x01")
    h.update(b"\x00")


def _mix(x: int) -> int:
    """SplitMix64's finalizer: spreads the key ⊕ seed over 64 bits (rendezvous weights)."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


class Scraper:
    """Reads each replica's Prometheus page every ``interval_s`` over ``client`` (its own, closed
    with it); owned by the provider, which starts it (inside the event loop) and closes it in
    ``aclose``."""

    def __init__(self, name: str, replicas: Sequence[Candidate], client: Client, cfg: LoadScrapeConfig) -> None:
        # A client of its own: a pool that calls have filled must not starve the reading that
        # says how full the replicas are.
        self.replicas = replicas
        self._client = client
        self._timeout_s = cfg.timeout_s
        self._stale_s = cfg.stale_s if cfg.stale_s is not None else 3 * cfg.interval_s
        self.loop = Periodic(f"turnout-load-{name}", self.scrape, cfg.interval_s, first="now")

    def start(self) -> None:
        self.loop.start()

    async def aclose(self) -> None:
        await self.loop.aclose()
        await self._client.aclose()

    async def scrape(self) -> None:
        """One round: every replica read at once, each within ``timeout_s``. A read fails only by
        a bug (transport errors are a replica's detail); the round still finishes the others,
        then raises for ``Periodic`` to log."""
        results = await asyncio.gather(*(self._read(r) for r in self.replicas), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _read(self, replica: Candidate) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):  # connect, head and body together
                gauges, why = await self._fetch(replica.metrics_url)
        except TimeoutError:
            gauges, why = None, "timeout"
        except TRANSPORT_ERRORS as exc:
            gauges, why = None, describe(exc)
        now = time.monotonic()
        replica.detail = why
        if gauges is not None:
            replica.gauges, replica.pressure, replica.read_at = gauges, pressure(gauges), now
        elif replica.gauges is not None and now - replica.read_at > self._stale_s:
            replica.gauges, replica.pressure = None, 0.0

    async def _fetch(self, url: URL) -> tuple[Gauges | None, str]:
        async with self._client.session().get(url, allow_redirects=False) as resp:
            if resp.status != 200:
                return None, f"HTTP {resp.status}"
            body = bytearray()
            while len(body) <= MAX_BYTES and (chunk := await resp.content.read(64 * 1024)):
                body += chunk
        gauges = parse(bytes(body))
        return gauges, "" if gauges is not None else "no load metrics"
