"""Pipelining for ``RedisLimiter``: every script call goes through one ``Batcher``, which writes
the calls queued during an event-loop turn as one pipeline on its own connection and hands each
caller its own reply or error.

Why: redis-py spends far more gateway CPU per round trip (pool checkout, a timeout task per
write, a timeout per read, response callbacks) than Redis spends running the script. Batching
keeps each call its own EVALSHA, so each is still atomic on its own; only the socket writes
and reads are shared.

* ``call`` (acquire, usage) wakes the writer at once; the caller awaits its reply.
* ``post`` (settle, release) is queued for the next write, which goes out with the next
  ``call`` or after ``linger_s`` at the latest, or at once past ``max_queued`` calls. Calls
  go out in the order they were queued, so a replica's settle always reaches Redis before its
  next acquire.
* One write is in flight at a time; what arrives meanwhile makes up the next one.
* NOSCRIPT (Redis restarted or flushed its script cache): the calls refused are sent again,
  once, behind a SCRIPT LOAD of their scripts, in one more round trip.
* A dropped connection is dialled again once for the calls not yet answered (a stale socket;
  a call Redis ran before the drop runs twice: the acquire script notices, by its member, and
  the finish script by its marker);
  a timeout is not retried, since the scripts may have run, and the calls queued while it was
  out fail with it, unsent (none waits more than about one timeout). Callers get the redis-py error
  (``ConnectionError``, ``TimeoutError``); a posted call's failure goes to ``on_failure``.
* ``aclose`` sends everything queued, then closes the connection: no settle is lost on a
  graceful shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable, Iterable
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def bulks(values: Iterable[str | int | float]) -> bytes:
    """Arguments as redis-py would send them (str as UTF-8, numbers as ``repr``), RESP-encoded."""
    out = []
    for v in values:
        out.append(bulk(v.encode() if isinstance(v, str) else repr(v).encode()))
    return b"".join(out)


class Script:
    """A Lua script known by its SHA1, which Redis computes the same way."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest().encode()

    def load(self) -> bytes:
        return b"*3\r\n$6\r\nSCRIPT\r\n$4\r\nLOAD\r\n" + bulk(self.source.encode())


class Call:
    """One EVALSHA: ``body`` is its ``argc`` RESP bulk strings after the SHA (numkeys, keys,
    arguments); ``reply`` is None when nobody waits for the answer."""

    __slots__ = ("argc", "body", "reply", "script")

    def __init__(self, script: Script, argc: int, body: bytes, reply: asyncio.Future[Any] | None) -> None:
        self.script = script
        self.argc = argc
        self.body = body
        self.reply = reply

    def packed(self) -> bytes:
        sha = self.script.sha
        return b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%b\r\n%b" % (self.argc + 2, len(sha), sha, self.body)


class Batcher:
    """Owns the connection the scripts travel on and the task that writes to it."""

    def __init__(
        self,
        connection: AbstractConnection,
        timeout: float,
        on_failure: Callable[[BaseException, Call], None],
        *,
        linger_s: float = 0.002,
        max_queued: int = 256,
    ) -> None:
        self.connection = connection  # dedicated: nothing else reads from it
        self.timeout = timeout  # for a whole round trip (write, and every reply read)
        self.on_failure = on_failure
        self.linger_s = linger_s
        self.max_queued = max_queued
        self._queue: list[Call] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def call(self, call: Call) -> asyncio.Future[Any]:
        """Queue ``call`` (whose ``reply`` is set) for the next write, now."""
        assert call.reply is not None
        if self._enqueue(call):
            self._wake.set()
        return call.reply

    def post(self, call: Call) -> None:
        """Queue ``call`` without waiting for its answer."""
        if not self._enqueue(call):
            return
        if len(self._queue) >= self.max_queued:
            self._wake.set()
        elif self._timer is None and not self._wake.is_set():
            self._timer = asyncio.get_running_loop().call_later(self.linger_s, self._wake.set)

    async def flush(self) -> None:
        """Return once everything queued so far has been answered (or has failed)."""
        if self._queue:
            self._wake.set()
        await self._idle.wait()

    async def aclose(self) -> None:
        self._closing = True
        self._wake.set()
        task = self._task
        if task is not None and not task.done():
            try:
                await task
            except BaseException:
                task.cancel()
                raise
        await self.connection.disconnect()

    # -- the writer ---------------------------------------------------------------------------

    def _enqueue(self, call: Call) -> bool:
        running = self._task is not None and not self._task.done()
        if self._closing and not running:
            self._fail([call], RedisConnectionError("the quota limiter is closed"))
            return False
        self._queue.append(call)
        self._idle.clear()
        if not running:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="turnout-quota-redis")
        return True

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            batch, self._queue = self._queue, []
            try:
                await self._send([c for c in batch if c.reply is None or not c.reply.done()])
            except Exception as exc:  # a bug: fail this batch, keep serving the next ones
                self._fail(batch, exc)
                await self.connection.disconnect(nowait=True)
            except BaseException as exc:  # cancelled: nobody may wait forever
                self._fail(batch + self._queue, exc)
                self._queue = []
                self._idle.set()
                raise
            if self._queue:
                if self._closing:
                    self._wake.set()
                continue
            self._idle.set()
            if self._closing:
                return

    async def _send(self, calls: list[Call]) -> None:
        """Send ``calls`` in one round trip (two after a NOSCRIPT or a dropped connection) and
        settle every one of them: a reply, or an error."""
        load: list[Script] = []  # SCRIPT LOADs sent ahead of the calls
        redialled = False
        while calls:
            answered = 0
            refused: list[Call] = []  # NOSCRIPT in the first round: sent again behind a load
            try:
                async with asyncio.timeout(self.timeout):
                    conn = self.connection
                    await conn.send_packed_command([*(s.load() for s in load), *(c.packed() for c in calls)], False)
                    load_error: ResponseError | None = None
                    for _ in load:
                        try:
                            await conn.read_response()
                        except ResponseError as exc:
                            load_error = exc
                    for call in calls:
                        try:
                            reply = await conn.read_response()
                        except NoScriptError as exc:
                            if load:  # loaded a moment ago and still unknown: give up
                                self._fail([call], load_error or exc)
                            else:
                                refused.append(call)
                        except ResponseError as exc:
                            self._fail([call], exc)
                        else:
                            if call.reply is not None and not call.reply.done():
                                call.reply.set_result(reply)
                        answered += 1
            except RedisConnectionError as exc:
                await self.connection.disconnect(nowait=True)
                if redialled:
                    self._fail(refused + calls[answered:], exc)
                    return
                redialled = True
                calls, load = refused + calls[answered:], load or _scripts(refused)
                continue
            except (TimeoutError, RedisTimeoutError) as exc:
                await self.connection.disconnect(nowait=True)
                if not isinstance(exc, RedisTimeoutError):  # ours, from asyncio.timeout
                    exc = RedisTimeoutError(f"no answer from Redis within {self.timeout}s")
                # What queued meanwhile fails too, unsent: it would wait for a Redis that has
                # just not answered, a whole timeout more after part of one already.
                queued, self._queue = self._queue, []
                self._fail(refused + calls[answered:] + queued, exc)
                return
            if load or not refused:
                return
            calls, load = refused, _scripts(refused)

    def _fail(self, calls: list[Call], exc: BaseException) -> None:
        for call in calls:
            if call.reply is None:
                with contextlib.suppress(Exception):
                    self.on_failure(exc, call)
            elif not call.reply.done():
                call.reply.set_exception(exc)


def _scripts(calls: list[Call]) -> list[Script]:
    return list({id(c.script): c.script for c in calls}.values())
