"""Limits and budgets shared by every replica, kept in Redis.

Each ``acquire``, ``settle``, ``release`` and ``usage`` is one EVALSHA of a Lua script
(``turnout.control.quota.redis_script``, which also draws the key layout): the script checks every
scope and limit and debits only if all pass, so concurrent requests from any number of
replicas never overshoot and a refused request takes nothing.

The EVALSHAs travel through a ``turnout.control.quota.redis_batch.Batcher``: those queued in one
event-loop turn share one socket write and read, each still its own atomic script. ``acquire``
and ``usage`` wait for their reply; ``settle`` and ``release`` come after the answer, so they
only queue theirs, which goes out with the next write (within ``linger_s``); ``usage`` and
later acquires of this replica are sent behind them, and ``aclose`` sends what is left. The
arguments of a request's scopes are encoded once per scope set and day, not per call.

Time: the caller's ``ask.now`` drives refills and expiries by default (tests pass a fake clock;
NTP keeps replicas within milliseconds, and a bucket is never refilled backwards, so a lagging
clock mints nothing and a leading one at most its skew's worth of tokens). With
``server_time=True`` the scripts read Redis ``TIME`` instead, for fleets whose clocks cannot be
trusted; budget windows (which UTC day and month) still follow the caller's clock.

Replicas: each limiter is one replica, with a random id. Its slots and reservations are tagged
with that id (see ``redis_script``), and it keeps a heartbeat key (``P:replica:<id>``, TTL
``heartbeat_ttl_s``) alive in the background, refreshed every fifth of the TTL through the same
pipeline (the first beat rides with the first acquire, so it reaches Redis before any member it
covers). ``aclose`` sends the settles still queued, then deletes the key: whatever the replica
still holds (a request whose release never got out) is dead at once. A replica that dies
without closing (SIGKILL, a lost host) stops beating: its key expires within
``heartbeat_ttl_s``. The other replicas drop a dead replica's slots and reservations when a
limit would refuse because of them (each sweeps a set at most every fifth of its own TTL) or an
``/admin/usage`` reads them: seconds, instead of ``max_request_s``.
A dropped reservation is given back, not charged, exactly as one that expires after
``max_request_s`` always was: what the dead replica's requests cost upstream is priced by
nobody either way, so reclaiming early changes when the budget is freed, not how far spend can
pass it (by at most the reservations the dead replica held, each its request's worst case). A
live replica whose beats stop reaching Redis for longer than the TTL (a partition, an event
loop stalled for seconds) looks dead: its slots may be given to others meanwhile, and its
later settles still charge the real cost.

Redis unreachable (connection refused, timeout) or refusing (an error reply: out of memory under
``noeviction``, a read-only replica, an ACL without the scripts): ``stats().backend_errors`` counts
it, a warning is logged at most every ``WARN_EVERY_S``, and ``acquire`` either raises
``BackendUnavailable`` (``on_backend_error="closed"``) or admits with a grant already marked done,
so its settle and release do nothing (``"open"``). An acquire that got no answer may still run (a
stalled Redis runs what it had read when it wakes): what it may hold is released after the next
heartbeat Redis answers, not left to ``max_request_s``. A failed settle or release is logged and
counted, never raised (it fails in the background): the answer has gone out. One that failed
because Redis was unreachable is sent again after the next heartbeat Redis answers, so a blip does
not hold the tenant's concurrency slots and reservations for ``max_request_s`` (locking it out) nor
lose the cost it settles; so is one Redis refused for now (out of memory under ``noeviction``,
which refuses the settle's first write while an acquire, whose first write frees memory, still goes
through: every slot taken meanwhile would be held). Should the first send have reached a stalled
Redis and run, the second finds the grant's finished marker and changes nothing
(``redis_script.FINISH``); the marker lives ``max_request_s``, so only a settle held back longer
than that by an outage may be charged twice (spend over-counted, never under). What is still unsent
when the replica closes or dies is dropped with it; the slot and reservation expire after
``max_request_s`` at the latest.
Heartbeats that fail are not counted (the requests' own calls are); the next one tries again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from turnout._support.periodic import Periodic
from turnout.config import LimitsConfig
from turnout.control.quota import redis_script
from turnout.control.quota.base import (
    BACKEND_TIMEOUT_S,
    MICRO_USD,
    Ask,
    BackendUnavailable,
    Grant,
    LimiterStats,
    Limits,
    Period,
    QuotaExceeded,
    Scope,
    budget_periods,
    budget_usage,
    distinct_scopes,
    to_micro,
)
from turnout.control.quota.redis_batch import Batcher, Call, Script, bulk, bulks

log = logging.getLogger("turnout.quota")

WARN_EVERY_S = 10.0
BEATS_PER_TTL = 5  # a heartbeat every fifth of its TTL: four in a row may be late or lost
_BUDGET_MARGIN_S = 3600  # budget keys outlive their window by this plus max_request_s
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError)
_REFUSING = (OutOfMemoryError, ReadOnlyError)  # and the error replies named in ``_for_now``
_MAX_ENCODED = 4096  # (scopes, day) encodings kept
_MAX_DOUBTFUL = 10_000  # unanswered acquires remembered for release (each a few hundred bytes)


def _opt(value: float | None) -> float:
    return -1 if value is None else value


class RedisLimiter:
    """The shared ``Limiter``; see ``turnout.control.quota.base`` for the semantics."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        key_prefix: str = "turnout",
        max_request_s: float = 600.0,
        on_backend_error: Literal["closed", "open"] = "closed",
        *,
        server_time: bool = False,
        socket_timeout: float = BACKEND_TIMEOUT_S,
        max_connections: int = 32,
        pool_timeout: float = 2.0,
        linger_s: float = 0.002,
        heartbeat_ttl_s: float = 5.0,
    ) -> None:
        if heartbeat_ttl_s <= 0:
            raise ValueError("heartbeat_ttl_s must be positive")
        self.key_prefix = key_prefix
        self.max_request_s = max_request_s
        self.replica = secrets.token_hex(8)  # this process's slots and reservations carry it
        self.heartbeat_key = f"{key_prefix}:replica:{self.replica}"
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.on_backend_error = on_backend_error
        self.server_time = server_time
        self.ping_timeout_s = socket_timeout
        self._backend_errors = 0
        self._next_warning = 0.0
        # The pooled client is for callers that inspect the keys (admin, tests); the scripts
        # go through the batcher's own connection. One immediate retry on a dropped connection
        # only (a stale socket): a timeout is not retried, since the script may have run.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self.client: Redis = Redis.from_pool(pool)
        # No socket timeout of its own (redis-py would start a task per write and a timer per
        # reply): the batcher times each round trip as a whole. It dials again itself.
        opts = {**pool.connection_kwargs, "socket_timeout": None, "retry": Retry(NoBackoff(), 0)}
        self.batcher = Batcher(pool.connection_class(**opts), socket_timeout, self._lost, linger_s=linger_s)
        self._acquire = Script(redis_script.ACQUIRE)
        self._finish = Script(redis_script.FINISH)
        self._usage = Script(redis_script.USAGE)
        self._heartbeat_script = Script(redis_script.HEARTBEAT)
        self._heartbeat: Periodic | None = None  # started by the first acquire
        self._closed = False
        # Per request only its own numbers are encoded; the rest is encoded once.
        self._member_prefix = f"{self.replica}/".encode()
        heartbeats = f"{key_prefix}:replica:"
        sweep_ms = max(1, round(heartbeat_ttl_s * 1000 / BEATS_PER_TTL))
        self._acquire_fixed = (
            bulks([int(server_time), max_request_s, heartbeats, sweep_ms]),
            bulks([math.ceil(max_request_s) + 1]),
        )
        self._heartbeats = heartbeats
        # A grant's finished marker: a FINISH sent again within max_request_s of the first runs once.
        self._finish_fixed = bulks([f"{key_prefix}:finished:", max(1, round(max_request_s * 1000))])
        beat = f"{socket.gethostname()} {os.getpid()}"  # for an operator listing replicas
        self._beat_body = bulks([1, self.heartbeat_key, beat, max(1, round(heartbeat_ttl_s * 1000))])
        self._encoded: dict[tuple[tuple[Scope, ...], str], _Encoded] = {}
        self._doubtful: dict[str, Ask] = {}  # acquires that got no answer: freed by the next beat
        self._unsent: list[Call] = []  # settles and releases Redis did not take: sent again after the next beat

    @classmethod
    def from_config(cls, cfg: LimitsConfig) -> RedisLimiter:
        return cls(
            cfg.redis_url, cfg.key_prefix, cfg.max_request_s, cfg.on_backend_error, heartbeat_ttl_s=cfg.heartbeat_ttl_s
        )

    # -- the Limiter protocol -------------------------------------------------------------

    async def acquire(self, ask: Ask) -> Grant:
        if self._heartbeat is None and not self._closed:
            self._start_heartbeat()
        day, month = budget_periods(ask.now)
        enc = self._encoding(ask.scopes, day, month)
        between, slot_ttl = self._acquire_fixed
        body = b"".join(
            (
                enc.keys,
                bulk(repr(ask.now).encode()),
                between,
                bulk(self._member_prefix + ask.request_id.encode()),
                bulk(b"%d" % ask.tokens),
                bulk(b"%d" % to_micro(ask.cost_usd)),
                slot_ttl,
                bulk(b"%d" % self._budget_ttl(day, ask.now)),
                bulk(b"%d" % self._budget_ttl(month, ask.now)),
                enc.acquire_limits,
            )
        )
        call = Call(self._acquire, enc.acquire_argc, body, asyncio.get_running_loop().create_future())
        try:
            result = await self._call(call)
        except BackendUnavailable as exc:
            # No answer is not "not taken": a stalled Redis runs the script when it wakes, after
            # the caller has given up. Freed once Redis answers again (``_tick``). A refusal
            # (an error reply) was an answer: the script did not take its slot.
            if isinstance(exc.__cause__, _UNREACHABLE):
                self._doubt(ask)
            if self.on_backend_error == "open":
                return Grant(ask, done=True)  # admitted blind: nothing to give back later
            raise
        if result[0] == 1:
            return Grant(ask, holder=self.replica)
        scope, limit = enc.scopes[int(result[1])].name, result[2].decode()
        if limit == "usd_per_day" or limit == "usd_per_month":
            period = day if limit == "usd_per_day" else month
            remaining = float(result[4]) / MICRO_USD
            raise QuotaExceeded(scope, limit, period.end - ask.now, remaining_usd=remaining)
        raise QuotaExceeded(scope, limit, float(result[3]))

    async def settle(self, grant: Grant, tokens: int, cost_usd: float) -> None:
        self._finish_grant(grant, tokens - grant.ask.tokens, b"%d" % to_micro(cost_usd))

    async def release(self, grant: Grant) -> None:
        self._finish_grant(grant, -grant.ask.tokens, b"")

    async def usage(self, scope: Scope, now: float) -> dict[str, Any]:
        day, month = budget_periods(now)
        lim = scope.limits
        keys = self._keys(scope.ident, day, month)
        limits = [_opt(lim.rpm), _opt(lim.tpm), _opt(lim.concurrency), *_budgets_micro(lim)]
        args: list[str | int | float] = [now, int(self.server_time), *limits, self._heartbeats]
        body = bulks([len(keys), *keys, *args])
        # Queued behind this replica's pending settles, so it reads what they wrote.
        call = Call(self._usage, 1 + len(keys) + len(args), body, asyncio.get_running_loop().create_future())
        raw = [v.decode() for v in await self._call(call)]
        out: dict[str, Any] = {"scope": scope.name}
        if lim.rpm is not None:
            out["rpm"] = {"limit": lim.rpm, "available": float(raw[0])}
        if lim.tpm is not None:
            out["tpm"] = {"limit": lim.tpm, "available": float(raw[1])}
        if lim.concurrency is not None:
            out["concurrency"] = {"limit": lim.concurrency, "in_use": int(raw[2])}
        if lim.usd_per_day is not None:
            out["usd_per_day"] = budget_usage(lim.usd_per_day, day, int(raw[3]), int(raw[4]), now)
        if lim.usd_per_month is not None:
            out["usd_per_month"] = budget_usage(lim.usd_per_month, month, int(raw[5]), int(raw[6]), now)
        return out

    async def flush(self) -> None:
        """Wait until every settle and release made so far has reached Redis (or failed)."""
        await self.batcher.flush()

    def stats(self) -> LimiterStats:
        return LimiterStats(self._backend_errors)

    async def ping(self) -> bool:
        """One PING on the pooled client within ``ping_timeout_s``. Not counted in
        ``backend_errors``: those count the requests' own calls."""
        try:
            async with asyncio.timeout(self.ping_timeout_s):
                return bool(await self.client.ping())
        except (RedisError, TimeoutError, OSError):
            return False

    async def aclose(self) -> None:
        self._closed = True
        try:
            heartbeat, self._heartbeat = self._heartbeat, None
            if heartbeat is not None:
                await heartbeat.aclose()
                unsent, self._unsent = self._unsent, []
                for call in unsent:  # settles an outage held back: a last try, with the final write
                    self.batcher.post(call)
                try:  # behind the settles still queued: what they did not free, the others now may
                    await self._beat(retire=True)
                except Exception as exc:
                    self._lost(exc)
            await self.batcher.aclose()  # sends whatever is still queued
        finally:
            await self.client.aclose()  # and its pool (from_pool hands the pool to the client)

    # -- heartbeat --------------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        """Queue the first beat ahead of the acquire that calls this, then beat in the background."""
        first = self._beat(retire=False)
        first.add_done_callback(_quiet)  # the acquire behind it reports an outage
        interval = self.heartbeat_ttl_s / BEATS_PER_TTL
        self._heartbeat = Periodic("turnout-quota-heartbeat", self._tick, interval, first="later", logger=log)
        self._heartbeat.start()

    def _beat(self, *, retire: bool) -> asyncio.Future[Any]:
        body = self._beat_body if not retire else bulks([1, self.heartbeat_key, "", 0])
        return self.batcher.call(Call(self._heartbeat_script, 4, body, asyncio.get_running_loop().create_future()))

    async def _tick(self) -> None:
        try:
            await self._beat(retire=False)
        except RedisError as exc:  # counted by the requests' own calls; the next beat tries again
            if not _for_now(exc):
                raise
            log.debug("quota heartbeat did not reach Redis (%s)", type(exc).__name__)
            return
        if self._unsent:
            unsent, self._unsent = self._unsent, []
            for call in unsent:  # one that fails again comes back through _lost
                self.batcher.post(call)
        if self._doubtful:
            await self._free_doubtful()

    # -- acquires that got no answer --------------------------------------------------------

    def _doubt(self, ask: Ask) -> None:
        """An acquire that got no answer may still run in Redis (queued on a stalled server, or
        run and its reply lost): its slot and reservation would be held, by a live replica, for
        ``max_request_s``. Remembered, to be freed once Redis answers a heartbeat again."""
        if len(self._doubtful) < _MAX_DOUBTFUL:  # past that, max_request_s frees them
            self._doubtful[ask.request_id] = ask

    async def _free_doubtful(self) -> None:
        """Free what the acquires in doubt may hold: the heartbeat just answered, so Redis has
        already run whatever of theirs it had read (its replies go out after the reads of a
        turn), and a FINISH of a member that is not there changes nothing. Their buckets are
        not refunded: it is not known whether they were debited (so, fail closed)."""
        doubtful, self._doubtful = self._doubtful, {}
        loop = asyncio.get_running_loop()
        calls = {rid: self._finish_call(Grant(ask), 0, b"", loop.create_future()) for rid, ask in doubtful.items()}
        replies = await asyncio.gather(*(self.batcher.call(c) for c in calls.values()), return_exceptions=True)
        for rid, reply in zip(calls, replies, strict=True):
            if isinstance(reply, BaseException):
                if not _for_now(reply):
                    log.warning("quota release of an unanswered acquire failed: %s", type(reply).__name__)
                    continue
                self._doubt(doubtful[rid])  # the next beat tries again

    # -- steps ----------------------------------------------------------------------------

    def _finish_grant(self, grant: Grant, tpm_debit: int, real_micro: bytes) -> None:
        """Queue the FINISH script: it goes out with the next write, after the answer."""
        if grant.done:
            return
        grant.done = True
        # A failure is counted and logged by _lost, which keeps it to send again once Redis answers.
        self.batcher.post(self._finish_call(grant, tpm_debit, real_micro, None))

    def _finish_call(self, grant: Grant, tpm_debit: int, real_micro: bytes, reply: asyncio.Future[Any] | None) -> Call:
        """The FINISH script for ``grant``: ``real_micro`` charged (b'': released), TPM corrected
        by ``tpm_debit``."""
        ask = grant.ask
        day, month = budget_periods(ask.now)
        enc = self._encoding(ask.scopes, day, month)
        body = b"".join(
            (
                enc.keys,
                bulk(f"{grant.holder or self.replica}/{ask.request_id}".encode()),
                bulk(b"%d" % tpm_debit),
                bulk(real_micro),
                bulk(repr(ask.now).encode()),
                bulk(b"%d" % self._budget_ttl(day, ask.now)),
                bulk(b"%d" % self._budget_ttl(month, ask.now)),
                self._finish_fixed,
                enc.finish_limits,
            )
        )
        return Call(self._finish, enc.finish_argc, body, reply)

    def _encoding(self, scopes: tuple[Scope, ...], day: Period, month: Period) -> _Encoded:
        """The keys and limits of these scopes in this day's windows, RESP-encoded once."""
        enc = self._encoded.get((scopes, day.key))
        if enc is not None:
            return enc
        if len(self._encoded) >= _MAX_ENCODED:
            self._encoded.clear()  # past days, or a config reloaded many times over
        distinct = distinct_scopes(scopes)
        keys = [k for s in distinct for k in self._keys(s.ident, day, month)]
        acquire = [v for s in distinct for v in (_opt(s.limits.rpm), *_finish_limits(s.limits))]
        finish = [v for s in distinct for v in _finish_limits(s.limits)]
        enc = _Encoded(
            scopes=distinct,
            keys=bulks([len(keys), *keys]),
            acquire_limits=bulks(acquire),
            acquire_argc=1 + len(keys) + 11 + len(acquire),
            finish_limits=bulks(finish),
            finish_argc=1 + len(keys) + 8 + len(finish),
        )
        self._encoded[(scopes, day.key)] = enc
        return enc

    def _keys(self, scope: str, day: Period, month: Period) -> list[str]:
        base = f"{self.key_prefix}:q:{scope}"
        d, m = f"{base}:usd:d:{day.key}", f"{base}:usd:m:{month.key}"
        return [f"{base}:rpm", f"{base}:tpm", f"{base}:slots", d, f"{d}:exp", m, f"{m}:exp"]

    def _budget_ttl(self, period: Period, now: float) -> int:
        return math.ceil(period.end - now + self.max_request_s) + _BUDGET_MARGIN_S

    async def _call(self, call: Call) -> Any:
        try:
            return await self.batcher.call(call)
        except _UNREACHABLE as exc:
            self._unreachable(exc)
            raise BackendUnavailable("the quota backend (Redis) cannot be reached") from exc
        except ResponseError as exc:  # out of memory (noeviction), read-only, no permission, ...
            self._unreachable(exc)
            raise BackendUnavailable("the quota backend (Redis) refused the call") from exc

    def _lost(self, exc: BaseException, call: Call | None = None) -> None:
        """A settle or release failed: the answer has gone out, so log and count; one that did
        not reach Redis, or that Redis refused for now (out of memory), is kept for the next
        heartbeat it takes (``_tick``)."""
        if _for_now(exc):
            self._unreachable(exc)
            if call is not None and not self._closed and len(self._unsent) < _MAX_DOUBTFUL:
                self._unsent.append(call)
        else:
            log.warning("quota settle failed: %s", type(exc).__name__)

    def _unreachable(self, exc: BaseException) -> None:
        self._backend_errors += 1
        now = time.monotonic()
        if now >= self._next_warning:
            self._next_warning = now + WARN_EVERY_S
            log.warning(
                "quota backend %s (%s: %s); failing %s, %d errors so far",
                "unreachable" if isinstance(exc, _UNREACHABLE) else "refused a call",
                type(exc).__name__,
                exc,
                self.on_backend_error,
                self._backend_errors,
            )


@dataclass(frozen=True, slots=True)
class _Encoded:
    scopes: list[Scope]  # distinct, in the scripts' order
    keys: bytes  # numkeys, then the keys
    acquire_limits: bytes  # per scope: rpm, tpm, concurrency, day budget, month budget
    acquire_argc: int
    finish_limits: bytes  # per scope: tpm, concurrency, day budget, month budget
    finish_argc: int


def _for_now(exc: BaseException) -> bool:
    """Redis did not take the call but will once it recovers: unreachable, or refusing every
    write for the state it is in (out of memory under ``noeviction``, a read-only replica after a
    failover, a disk it cannot save to, a script running long)."""
    if isinstance(exc, (*_UNREACHABLE, *_REFUSING)):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(("MISCONF", "BUSY", "MASTERDOWN"))


def _quiet(future: asyncio.Future[Any]) -> None:
    """Retrieve a future's error so that nobody is told it went unheard."""
    if not future.cancelled():
        future.exception()


def _finish_limits(limits: Limits) -> tuple[float, float, int, int]:
    return (_opt(limits.tpm), _opt(limits.concurrency), *_budgets_micro(limits))


def _budgets_micro(limits: Limits) -> tuple[int, int]:
    day, month = limits.usd_per_day, limits.usd_per_month
    return (-1 if day is None else to_micro(day), -1 if month is None else to_micro(month))
