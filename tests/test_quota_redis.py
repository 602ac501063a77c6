"""What only the Redis limiter has to prove: one EVALSHA per call, with the calls of a burst and
the settles queued after their answers sharing socket writes; settles never lost (flushed by the
writer, drained on close); NOSCRIPT and dropped connections recovered; a TTL on every key; no
overshoot when many tasks and two replicas race for one budget; Redis ``TIME`` when asked; and
the configured behaviour when Redis cannot be reached or does not answer. Runs against
127.0.0.1:6379 with a fresh key prefix per test, deleted afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

pytest.importorskip("redis")

from redis.exceptions import ResponseError

from tests.fakes.tcp_proxy import FaultProxy
from tests.test_quota_contract import (
    DAY_END,
    MONTH_END,
    REDIS_URL,
    T0,
    drop_prefix,
    needs_redis,
    unique_prefix,
)
from turnout.control.quota import redis_script
from turnout.control.quota.base import Ask, BackendUnavailable, Grant, Limits, QuotaExceeded, Scope
from turnout.control.quota.redis import RedisLimiter
from turnout.control.quota.redis_batch import Call, Script, bulks

pytestmark = needs_redis

MAX_REQ = 300.0
EVERYTHING = Limits(rpm=100, tpm=100_000, concurrency=10, usd_per_day=10.0, usd_per_month=100.0)
TENANT = Scope("acme", EVERYTHING)
TASK = Scope("acme/support-reply", EVERYTHING)
ROOMY = Scope("acme", Limits(rpm=10_000, tpm=10**9, concurrency=1000, usd_per_day=1000.0, usd_per_month=10_000.0))

LimiterFactory = Callable[..., RedisLimiter]


@pytest.fixture
async def make_limiter() -> AsyncIterator[LimiterFactory]:
    """RedisLimiters sharing one fresh prefix (several make "replicas"); keys dropped after."""
    prefix = unique_prefix()
    made: list[RedisLimiter] = []

    def factory(**opts: Any) -> RedisLimiter:
        opts = {"url": REDIS_URL, "key_prefix": prefix, "max_request_s": MAX_REQ, **opts}
        made.append(RedisLimiter(**opts))
        return made[-1]

    yield factory
    if made:
        await drop_prefix(made[0])
    for limiter in made:
        await limiter.aclose()


def ask(n: int, *scopes: Scope, now: float = T0, tokens: int = 100, cost: float = 0.1) -> Ask:
    return Ask(f"req-{n}", scopes or (TENANT, TASK), tokens, cost, now)


def count_writes(limiter: RedisLimiter) -> list[list[str]]:
    """Record every socket write of the limiter's scripts: per write, the commands it carries
    (redis-py's own handshake on a new connection left out)."""
    writes: list[list[str]] = []
    conn = limiter.batcher.connection
    real: Callable[..., Awaitable[None]] = conn.send_packed_command

    async def counting(command: Any, check_health: bool = True) -> None:
        names = [_name(chunk) for chunk in command]
        if names[0] in ("EVALSHA", "SCRIPT LOAD"):
            writes.append(names)
        await real(command, check_health)

    conn.send_packed_command = counting  # type: ignore[method-assign]
    return writes


def _name(packed: bytes) -> str:
    parts = packed.split(b"\r\n")
    return "SCRIPT LOAD" if parts[2] == b"SCRIPT" else parts[2].decode(errors="replace")


def evalshas(writes: list[list[str]]) -> int:
    return sum(w.count("EVALSHA") for w in writes)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- round trips and batching ---------------------------------------------------------------------


async def test_each_call_is_one_evalsha_and_settles_ride_with_the_next_write(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter()
    await limiter.release(await limiter.acquire(ask(0)))  # loads the scripts if Redis lacks them
    await limiter.usage(TENANT, T0)
    writes = count_writes(limiter)
    grant = await limiter.acquire(ask(1))
    assert writes == [["EVALSHA"]]
    await limiter.settle(grant, 50, 0.05)  # after the answer: queued, not sent
    assert writes == [["EVALSHA"]]
    await limiter.release(await limiter.acquire(ask(2)))  # the settle goes first, in the same write
    assert writes[1:] == [["EVALSHA", "EVALSHA"]]
    with pytest.raises(QuotaExceeded):
        await limiter.acquire(ask(3, cost=1000.0))
    assert writes[2:] == [["EVALSHA", "EVALSHA"]]
    await limiter.usage(TASK, T0)
    assert writes[3:] == [["EVALSHA"]]
    await limiter.settle(grant, 50, 0.05)  # a repeat does not even reach Redis
    await limiter.flush()
    assert len(writes) == 4
    assert evalshas(writes) == 6  # three acquires, two finishes, one usage


async def test_a_burst_of_acquires_shares_round_trips(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter()
    await limiter.acquire(ask(0, ROOMY))
    writes = count_writes(limiter)
    results = await asyncio.gather(*(limiter.acquire(ask(n, ROOMY)) for n in range(1, 101)))
    assert [g.ask.request_id for g in results] == [f"req-{n}" for n in range(1, 101)]
    assert evalshas(writes) == 100  # each its own script: atomic per request as before
    assert len(writes) < 10
    assert (await limiter.usage(ROOMY, T0))["concurrency"]["in_use"] == 101
    await asyncio.gather(*(limiter.settle(g, 100, 0.01) for g in results))
    await limiter.flush()
    assert evalshas(writes) == 200 + 1
    assert (await limiter.usage(ROOMY, T0))["concurrency"]["in_use"] == 1
    assert len(writes) < 20


async def test_a_mixed_burst_gives_every_caller_its_own_answer(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter()
    budget = Scope("acme", Limits(rpm=1000, usd_per_day=1.0))
    asks = [ask(n, budget, cost=0.3 if n % 2 else 0.1) for n in range(12)]  # $0.1 ones fit until $1 is gone
    results = await asyncio.gather(*(limiter.acquire(a) for a in asks), return_exceptions=True)
    expected_spent = 0.0
    for a, result in zip(asks, results, strict=True):
        if expected_spent + a.cost_usd <= 1.0 + 1e-9:  # served in order: the first that fit are admitted
            expected_spent += a.cost_usd
            assert isinstance(result, Grant) and result.ask is a
        else:
            assert isinstance(result, QuotaExceeded) and result.limit == "usd_per_day"
            assert result.remaining_usd == pytest.approx(1.0 - expected_spent)
    assert (await limiter.usage(budget, T0))["usd_per_day"]["reserved"] == pytest.approx(expected_spent)


async def test_script_errors_go_to_their_own_callers(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter()
    echo = Script("return ARGV[1]")
    boom = Script("return redis.error_reply('boom ' .. ARGV[1])")
    loop = asyncio.get_running_loop()
    for script in (echo, boom):  # loaded first, so that the burst is one write
        with contextlib.suppress(ResponseError):
            await limiter.batcher.call(Call(script, 2, bulks([0, "warm"]), loop.create_future()))
    writes = count_writes(limiter)
    futures = [
        limiter.batcher.call(Call(boom if n % 3 == 0 else echo, 2, bulks([0, f"n{n}"]), loop.create_future()))
        for n in range(9)
    ]
    results = await asyncio.gather(*futures, return_exceptions=True)
    for n, result in enumerate(results):
        if n % 3 == 0:
            assert isinstance(result, ResponseError) and str(result) == f"boom n{n}"
        else:
            assert result == f"n{n}".encode()
    assert writes == [["EVALSHA"] * 9]
    await limiter.acquire(ask(1))  # the connection is still in step after the errors


async def test_a_script_redis_lacks_is_loaded_and_the_batch_sent_again(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter()
    await limiter.release(await limiter.acquire(ask(100, ROOMY)))  # its first heartbeat rides with this
    await limiter.flush()
    # As if Redis had restarted without its script cache: a script it has never seen.
    limiter._acquire = Script(redis_script.ACQUIRE + f"\n-- {uuid.uuid4().hex}")
    writes = count_writes(limiter)
    grants = await asyncio.gather(*(limiter.acquire(ask(n)) for n in range(5)))
    assert writes == [["EVALSHA"] * 5, ["SCRIPT LOAD"] + ["EVALSHA"] * 5]
    assert (await limiter.usage(TENANT, T0))["concurrency"]["in_use"] == 5  # each admitted once
    await limiter.acquire(ask(5))
    assert writes[3] in (["EVALSHA"], ["EVALSHA", "EVALSHA"])  # a heartbeat may ride along
    assert len(grants) == 5


async def test_a_lone_settle_is_sent_by_the_writer(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter()
    grant = await limiter.acquire(ask(1, TENANT, cost=0.25))
    writes = count_writes(limiter)
    await limiter.settle(grant, 0, 0.2)
    day = f"{limiter.key_prefix}:q:acme:usd:d:2026-03-14"

    async def spent() -> None:
        while await limiter.client.hget(day, "spent") is None:  # noqa: ASYNC110 — polling Redis, not an event
            await asyncio.sleep(0.001)

    await asyncio.wait_for(spent(), 10)  # no other call: the writer sends it on its own
    assert writes == [["EVALSHA"]]


async def test_close_sends_every_settle_still_queued(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter(linger_s=3600.0)  # nothing but close will send them
    grants = [await limiter.acquire(ask(n, ROOMY, cost=0.02)) for n in range(20)]
    for n, g in enumerate(grants):
        await (limiter.settle(g, 10, 0.01) if n % 2 else limiter.release(g))
    await limiter.aclose()
    other = make_limiter()
    usage = await other.usage(ROOMY, T0)
    assert usage["concurrency"]["in_use"] == 0
    assert (usage["usd_per_day"]["spent"], usage["usd_per_day"]["reserved"]) == (pytest.approx(0.1), 0.0)
    assert limiter.stats().backend_errors == 0


async def test_calls_after_close_fail_as_unreachable(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter()
    grant = await limiter.acquire(ask(1))
    await limiter.aclose()
    with pytest.raises(BackendUnavailable):
        await limiter.acquire(ask(2))
    await limiter.settle(grant, 10, 0.01)  # logged and counted, not raised
    assert limiter.stats().backend_errors == 2


async def test_a_caller_gone_before_the_write_takes_nothing(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter()
    s = Scope("acme", Limits(rpm=10, concurrency=5))
    task = asyncio.create_task(limiter.acquire(ask(1, s)))
    await asyncio.sleep(0)  # it has queued its call; the writer has not run yet
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    usage = await limiter.usage(s, T0)
    assert (usage["rpm"]["available"], usage["concurrency"]["in_use"]) == (10.0, 0)


async def test_a_dropped_connection_is_dialled_again_once(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter()
    await limiter.acquire(ask(1))
    conn = limiter.batcher.connection
    await conn.send_command("CLIENT", "ID")
    client_id = await conn.read_response()
    assert await limiter.client.client_kill_filter(_id=client_id) == 1  # a stale socket
    writes = count_writes(limiter)
    await limiter.acquire(ask(2))
    assert writes == [["EVALSHA"], ["EVALSHA"]]
    assert limiter.stats().backend_errors == 0
    assert (await limiter.usage(TENANT, T0))["concurrency"]["in_use"] == 2


# -- keys and TTLs ---------------------------------------------------------------------------------


async def test_every_key_expires(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter()
    await limiter.settle(await limiter.acquire(ask(1)), 500, 0.05)
    await limiter.acquire(ask(2))  # still open: its slot and reservation stay
    await limiter.release(await limiter.acquire(ask(3)))
    await limiter.flush()
    r = limiter.client
    p = limiter.key_prefix
    keys = sorted([k.decode() async for k in r.scan_iter(match=f"{p}:*")])
    expected = []
    for scope in ("acme", "acme/support-reply"):
        base = f"{p}:q:{scope}"
        expected += [f"{base}:rpm", f"{base}:tpm", f"{base}:slots"]
        for window in ("usd:d:2026-03-14", "usd:m:2026-03"):
            expected += [f"{base}:{window}", f"{base}:{window}:exp"]
    expected.append(limiter.heartbeat_key)
    expected += [f"{p}:finished:{limiter.replica}/req-{n}" for n in (1, 3)]  # settled, released
    assert keys == sorted(expected)
    for key in keys:
        ttl = await r.ttl(key)
        assert ttl > 0, key
        if key == limiter.heartbeat_key:
            assert ttl <= limiter.heartbeat_ttl_s
        elif ":finished:" in key:
            assert ttl <= MAX_REQ
        elif key.endswith(("rpm", "tpm")):
            assert ttl <= 180
        elif key.endswith("slots"):
            assert ttl <= math.ceil(MAX_REQ) + 1
        elif ":usd:d:" in key:
            assert DAY_END - T0 < ttl <= DAY_END - T0 + MAX_REQ + 3601
        else:
            assert MONTH_END - T0 < ttl <= MONTH_END - T0 + MAX_REQ + 3601


async def test_budget_hash_layout_in_micro_dollars(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter()
    a = await limiter.acquire(ask(1, TENANT, cost=0.25))
    await limiter.acquire(ask(2, TENANT, cost=0.125))
    await limiter.settle(a, 0, 0.2)
    await limiter.flush()
    day = f"{limiter.key_prefix}:q:acme:usd:d:2026-03-14"
    held = f"{limiter.replica}/req-2".encode()  # members name the replica that holds them
    assert await limiter.client.hgetall(day) == {b"spent": b"200000", b"reserved": b"125000", b"r:" + held: b"125000"}
    assert await limiter.client.zrange(f"{day}:exp", 0, -1, withscores=True) == [(held, T0 + MAX_REQ)]
    await limiter.acquire(ask(3, TENANT, cost=0.0, now=T0 + MAX_REQ))  # purges the expired reservation
    fresh = f"r:{limiter.replica}/req-3".encode()
    assert await limiter.client.hgetall(day) == {b"spent": b"200000", b"reserved": b"0", fresh: b"0"}


async def test_a_late_settle_after_the_budget_key_expired_still_sets_a_ttl(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter()
    grant = await limiter.acquire(ask(1, TENANT))
    day = f"{limiter.key_prefix}:q:acme:usd:d:2026-03-14"
    await limiter.client.delete(day, f"{day}:exp")  # as if both had expired
    await limiter.settle(grant, 100, 0.05)
    await limiter.flush()
    assert await limiter.client.hget(day, "spent") == b"50000"
    assert await limiter.client.ttl(day) > 0


# -- races -------------------------------------------------------------------------------------------


async def test_two_replicas_racing_for_one_budget_admit_exactly_what_fits(make_limiter: LimiterFactory) -> None:
    replicas = [make_limiter(), make_limiter()]
    budget = Scope("acme", Limits(usd_per_day=1.0))  # 50 worst cases of $0.02
    asks = [ask(n, budget, cost=0.02) for n in range(200)]
    results = await asyncio.gather(*(replicas[n % 2].acquire(a) for n, a in enumerate(asks)), return_exceptions=True)
    grants = [g for g in results if isinstance(g, Grant)]
    refusals = [e for e in results if isinstance(e, QuotaExceeded)]
    assert (len(grants), len(refusals)) == (50, 150)
    assert {(e.limit, e.remaining_usd) for e in refusals} == {("usd_per_day", 0.0)}
    assert (await replicas[0].usage(budget, T0))["usd_per_day"]["reserved"] == 1.0
    await asyncio.gather(*(replicas[n % 2].settle(g, 10, 0.01) for n, g in enumerate(grants)))
    await asyncio.gather(*(r.flush() for r in replicas))  # each replica's settles go out with its next write
    day = (await replicas[1].usage(budget, T0))["usd_per_day"]
    assert (day["spent"], day["reserved"], day["remaining"]) == (0.5, 0.0, 0.5)


async def test_racing_tasks_never_overshoot_slots_or_buckets(make_limiter: LimiterFactory) -> None:
    replicas = [make_limiter(), make_limiter()]
    tenant = Scope("acme", Limits(rpm=30))
    task = Scope("acme/chat", Limits(concurrency=7))
    results = await asyncio.gather(
        *(replicas[n % 2].acquire(ask(n, tenant, task)) for n in range(200)), return_exceptions=True
    )
    admitted = [g for g in results if isinstance(g, Grant)]
    assert len(admitted) == 7
    assert {e.limit for e in results if isinstance(e, QuotaExceeded)} == {"concurrency"}
    assert (await replicas[0].usage(tenant, T0))["rpm"]["available"] == pytest.approx(23.0)
    await asyncio.gather(*(replicas[1].release(g) for g in admitted))
    results = await asyncio.gather(
        *(replicas[n % 2].acquire(ask(1000 + n, tenant)) for n in range(200)), return_exceptions=True
    )
    assert sum(isinstance(g, Grant) for g in results) == 23


# -- time -------------------------------------------------------------------------------------------


async def test_server_time_ignores_the_callers_clock(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter(server_time=True)
    s = Scope("acme", Limits(rpm=2, concurrency=5))
    await limiter.acquire(ask(1, s, now=T0))
    await limiter.acquire(ask(2, s, now=T0 + 3600))  # a replica an hour ahead mints nothing
    refusal = await _refusal(limiter.acquire(ask(3, s, now=T0 + 7200)))
    assert refusal.limit == "rpm"
    assert 0 < refusal.retry_after <= 30
    # slots are scored by Redis time too: not expired, whatever the caller's clock says
    assert (await limiter.usage(s, T0 + 10 * MAX_REQ))["concurrency"]["in_use"] == 2


async def _refusal(call: Any) -> QuotaExceeded:
    with pytest.raises(QuotaExceeded) as info:
        await call
    return info.value


# -- Redis unreachable ----------------------------------------------------------------------------


async def test_unreachable_redis_fails_closed(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RedisLimiter(f"redis://127.0.0.1:{closed_port()}/0", "t", MAX_REQ, "closed")
    try:
        with caplog.at_level(logging.WARNING, logger="turnout.quota"):
            for n in range(3):
                with pytest.raises(BackendUnavailable) as info:
                    await limiter.acquire(ask(n))
                assert (info.value.status, info.value.code) == (503, "quota_backend_unavailable")
            with pytest.raises(BackendUnavailable):
                await limiter.usage(TENANT, T0)
            await limiter.settle(Grant(ask(9)), 10, 0.01)  # after the answer: logged, not raised
            await limiter.flush()
        assert limiter.stats().backend_errors == 5
        warnings = [r for r in caplog.records if r.name == "turnout.quota"]
        assert len(warnings) == 1  # rate-limited
        assert "unreachable" in warnings[0].getMessage()
    finally:
        await limiter.aclose()


async def test_unreachable_redis_fails_open() -> None:
    limiter = RedisLimiter(f"redis://127.0.0.1:{closed_port()}/0", "t", MAX_REQ, "open")
    try:
        grant = await limiter.acquire(ask(1))
        assert grant.done  # admitted blind: settle and release have nothing to give back
        await limiter.settle(grant, 10, 0.01)
        await limiter.release(grant)
        await limiter.acquire(ask(2))
        assert limiter.stats().backend_errors == 2
    finally:
        await limiter.aclose()


async def test_no_answer_in_time_is_unreachable_and_not_sent_again() -> None:
    """A Redis that takes the scripts and never answers: the call times out, counts as
    unreachable, and is not sent a second time (the script may have run)."""
    acquires_seen: list[int] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            handshake = data.count(b"CLIENT") + data.count(b"SELECT")  # each answered OK
            replies = b"%1\r\n+proto\r\n:3\r\n" * data.count(b"HELLO") + b"+OK\r\n" * handshake
            writer.write(replies)
            acquires_seen.append(data.count(limiter._acquire.sha))  # the first heartbeat rides along too
            print(data[:300])
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    limiter = RedisLimiter(f"redis://127.0.0.1:{port}/0", "t", MAX_REQ, "closed", socket_timeout=0.05)
    try:
        with pytest.raises(BackendUnavailable):
            await limiter.acquire(ask(1))
        assert sum(acquires_seen) == 1
        assert limiter.stats().backend_errors == 1
    finally:
        await limiter.aclose()
        server.close()
        await server.wait_closed()


async def test_a_call_queued_behind_a_round_trip_redis_does_not_answer_fails_with_it(
    own_redis: tuple[subprocess.Popen[bytes], int],
) -> None:
    """Seen: with Redis stopped (SIGSTOP), an acquire that came while another's round trip was
    out waited for that one to time out, then for its own: twice the timeout (1 s, not 0.5)
    before its 503, or before an open limiter admitted it, for every request of the gateway.
    What queued behind a round trip that got no answer fails with it, unsent."""
    redis, port = own_redis
    limiter = RedisLimiter(f"redis://127.0.0.1:{port}/0", "t", MAX_REQ, "closed")
    try:
        await limiter.acquire(ask(0))  # connected
        redis.send_signal(signal.SIGSTOP)
        first = asyncio.ensure_future(limiter.acquire(ask(1)))
        await asyncio.sleep(0.1)  # its round trip is out
        second = asyncio.ensure_future(limiter.acquire(ask(2)))
        with pytest.raises(BackendUnavailable):
            await first
        assert second.done()
        with pytest.raises(BackendUnavailable):
            await second
    finally:
        redis.send_signal(signal.SIGCONT)
        await limiter.aclose()


class StallingProxy:
    """A TCP proxy to the test Redis that, while ``stalled``, holds what clients send and
    forwards it once resumed, even for a client that has hung up meanwhile: a Redis that stops
    answering for a while (a fork, a long command, SIGSTOP) and then runs what it had read.
    With ``cut_replies`` it drops that many replies, each with its connection: Redis ran the
    command, the client never hears of it."""

    def __init__(self) -> None:
        self.stalled = False
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.cut_replies = 0  # replies to drop, each with its connection

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    def stall(self) -> None:
        self._resumed.clear()

    def resume(self) -> None:
        self._resumed.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 6379)
        self._writers += [writer, up_writer]

        async def upward() -> None:
            while data := await reader.read(65536):
                await self._resumed.wait()
                up_writer.write(data)
                await up_writer.drain()
            await self._resumed.wait()
            up_writer.close()

        async def downward() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await up_reader.read(65536):
                    if self.cut_replies:  # Redis ran it; the connection drops before its reply
                        self.cut_replies -= 1
                        writer.transport.abort()
                        break
                    writer.write(data)
                    await writer.drain()
            writer.close()

        for job in (upward(), downward()):
            task = asyncio.create_task(job)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        self.resume()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_an_acquire_redis_runs_after_the_caller_gave_up_is_freed_when_redis_answers_again() -> None:
    """Redis stalls: the acquire times out (503), but Redis runs it when it wakes. The slot and
    reservation it took belong to nobody; the replica is alive, so only ``max_request_s`` would
    free them. They are freed at the next heartbeat that Redis answers."""
    proxy = StallingProxy()
    port = await proxy.start()
    prefix = unique_prefix()
    one = Scope("acme", Limits(concurrency=1, usd_per_day=1.0))
    limiter = RedisLimiter(
        f"redis://127.0.0.1:{port}/0", prefix, MAX_REQ, "closed", socket_timeout=0.2, heartbeat_ttl_s=5.0
    )
    try:
        await limiter.release(await limiter.acquire(ask(0, one, cost=0.5)))  # connected, beating
        proxy.stall()
        with pytest.raises(BackendUnavailable):
            await limiter.acquire(ask(1, one, cost=0.5))
        proxy.resume()  # Redis runs the acquire now: a slot and $0.50 held by nobody
        await asyncio.sleep(0.05)  # the first heartbeat after the stall is due 1 s after the first acquire
        assert await limiter.client.zcard(f"{prefix}:q:acme:slots") == 1  # taken, by nobody
        for _ in range(60):  # a heartbeat or two (every second), not MAX_REQ
            if not await limiter.client.zcard(f"{prefix}:q:acme:slots"):
                break
            await asyncio.sleep(0.05)
        grant = await limiter.acquire(ask(2, one, cost=0.9))  # the slot and the whole budget are back
        await limiter.release(grant)
        usage = await limiter.usage(one, T0)
        assert usage["usd_per_day"]["reserved"] == 0 and usage["concurrency"]["in_use"] == 0
    finally:
        await drop_prefix(limiter)
        await limiter.aclose()
        await proxy.aclose()


async def test_an_acquire_sent_again_after_its_reply_was_lost_takes_its_reservation_once() -> None:
    """The connection drops after Redis ran an acquire, before its reply: the batcher dials again
    and sends it again. The second run must not reserve a second time: the release gives back
    one reservation, and a doubled one would stay counted to the end of the day."""
    proxy = StallingProxy()
    port = await proxy.start()
    prefix = unique_prefix()
    one = Scope("acme", Limits(concurrency=5, usd_per_day=1.0, usd_per_month=10.0))
    limiter = RedisLimiter(f"redis://127.0.0.1:{port}/0", prefix, MAX_REQ, "closed", heartbeat_ttl_s=60.0)
    try:
        await limiter.release(await limiter.acquire(ask(0, one, cost=0.25)))  # connected
        proxy.cut_replies = 1
        grant = await limiter.acquire(ask(1, one, cost=0.25))  # run twice, answered once
        usage = await limiter.usage(one, T0)
        assert usage["usd_per_day"]["reserved"] == 0.25
        assert usage["usd_per_month"]["reserved"] == 0.25
        assert usage["concurrency"]["in_use"] == 1
        await limiter.release(grant)
        usage = await limiter.usage(one, T0)
        assert usage["usd_per_day"]["reserved"] == 0 and usage["usd_per_month"]["reserved"] == 0
        assert usage["usd_per_day"]["remaining"] == 1.0
    finally:
        await drop_prefix(limiter)
        await limiter.aclose()
        await proxy.aclose()


async def test_a_settle_redis_did_not_take_is_sent_again_once_it_answers() -> None:
    """Redis unreachable for a moment while a request ends: its settle fails. Sent again after
    the next heartbeat Redis answers, it frees the slot (else the tenant stayed locked out of its
    concurrency for ``max_request_s``) and charges the cost (else that spend was never counted)."""
    prefix = unique_prefix()
    one = Scope("acme", Limits(concurrency=1, usd_per_day=1.0))
    with FaultProxy(6379) as proxy:
        limiter = RedisLimiter(
            f"redis://127.0.0.1:{proxy.port}/0", prefix, MAX_REQ, "closed", socket_timeout=0.5, heartbeat_ttl_s=5.0
        )
        try:
            grant = await limiter.acquire(ask(1, one, cost=0.5))  # connected, beating
            await asyncio.to_thread(proxy.cut)
            await limiter.settle(grant, 100, 0.25)
            await limiter.batcher.flush()  # sent, and failed: Redis is not there
            assert limiter.stats().backend_errors >= 1
            await asyncio.to_thread(proxy.restore)
            for _ in range(80):  # a heartbeat or two (every second), not MAX_REQ
                if not await limiter.client.zcard(f"{prefix}:q:acme:slots"):
                    break
                await asyncio.sleep(0.05)
            usage = await limiter.usage(one, T0)
            assert usage["concurrency"]["in_use"] == 0
            assert usage["usd_per_day"] == {**usage["usd_per_day"], "reserved": 0, "spent": pytest.approx(0.25)}
            await limiter.release(await limiter.acquire(ask(2, one, cost=0.5)))  # the slot is free again
        finally:
            await drop_prefix(limiter)
            await limiter.aclose()


async def test_a_settle_held_back_by_an_outage_is_sent_when_the_limiter_closes() -> None:
    """Closed before the next heartbeat (a shutdown right after Redis came back): the settle is
    sent with the last write, not dropped with the replica."""
    prefix = unique_prefix()
    one = Scope("acme", Limits(concurrency=1, usd_per_day=1.0))
    with FaultProxy(6379) as proxy:
        limiter = RedisLimiter(
            f"redis://127.0.0.1:{proxy.port}/0", prefix, MAX_REQ, "closed", socket_timeout=0.5, heartbeat_ttl_s=60.0
        )
        grant = await limiter.acquire(ask(1, one, cost=0.5))
        await asyncio.to_thread(proxy.cut)
        await limiter.settle(grant, 100, 0.25)
        await limiter.batcher.flush()  # failed: Redis is not there
        await asyncio.to_thread(proxy.restore)
        await limiter.aclose()  # long before the next beat (every 12 s here)
    reader = RedisLimiter(REDIS_URL, prefix, MAX_REQ)
    try:
        usage = await reader.usage(one, T0)
        assert usage["usd_per_day"]["spent"] == pytest.approx(0.25) and usage["usd_per_day"]["reserved"] == 0
    finally:
        await drop_prefix(reader)
        await reader.aclose()


async def test_a_settle_sent_again_after_its_reply_was_lost_charges_once() -> None:
    """The connection drops after Redis ran a settle, before its reply: the batcher dials again
    and sends it again. The second run must change nothing: the cost charged once, the TPM
    bucket corrected once."""
    proxy = StallingProxy()
    port = await proxy.start()
    prefix = unique_prefix()
    one = Scope("acme", Limits(tpm=10_000, concurrency=5, usd_per_day=1.0, usd_per_month=10.0))
    limiter = RedisLimiter(f"redis://127.0.0.1:{port}/0", prefix, MAX_REQ, "closed", heartbeat_ttl_s=60.0)
    try:
        grant = await limiter.acquire(ask(1, one, tokens=1000, cost=0.5))  # connected
        proxy.cut_replies = 1
        await limiter.settle(grant, 4000, 0.25)  # run twice, answered once
        await limiter.flush()
        usage = await limiter.usage(one, T0)
        assert usage["usd_per_day"]["spent"] == pytest.approx(0.25)
        assert usage["usd_per_month"]["spent"] == pytest.approx(0.25)
        assert usage["usd_per_day"]["reserved"] == 0 and usage["concurrency"]["in_use"] == 0
        assert usage["tpm"]["available"] == pytest.approx(6000)  # 4000 used, not 7000
    finally:
        await drop_prefix(limiter)
        await limiter.aclose()
        await proxy.aclose()


async def test_a_settle_redis_ran_after_it_timed_out_charges_once_when_sent_again() -> None:
    """Redis stalls while a settle is sent: it times out, and is kept to be sent again after the
    next heartbeat Redis answers; but Redis ran the first one when it woke. Charged once."""
    proxy = StallingProxy()
    port = await proxy.start()
    prefix = unique_prefix()
    one = Scope("acme", Limits(usd_per_day=1.0))
    limiter = RedisLimiter(
        f"redis://127.0.0.1:{port}/0", prefix, MAX_REQ, "closed", socket_timeout=0.2, heartbeat_ttl_s=5.0
    )
    try:
        grant = await limiter.acquire(ask(1, one, cost=0.5))  # connected, beating
        proxy.stall()
        await limiter.settle(grant, 100, 0.25)
        await limiter.flush()  # timed out: kept to be sent again
        assert limiter.stats().backend_errors == 1 and len(limiter._unsent) == 1
        proxy.resume()  # Redis runs the first settle now
        for _ in range(60):  # the next heartbeat (every second) sends it again
            if not limiter._unsent:
                break
            await asyncio.sleep(0.05)
        await limiter.flush()
        usage = await limiter.usage(one, T0)
        assert usage["usd_per_day"]["spent"] == pytest.approx(0.25) and usage["usd_per_day"]["reserved"] == 0
    finally:
        await drop_prefix(limiter)
        await limiter.aclose()
        await proxy.aclose()
