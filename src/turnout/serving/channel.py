"""A worker's end of its pipe to the supervisor (``serving/rounds.py``): the reload rounds it
takes part in, and the reloads it asks for.

A thread reads the pipe and hands each message to the event loop, where one task handles them
in order: a round's ``prepare`` is finished before its ``commit`` or ``abort`` is looked at.
The worker reloads only in a round: ``POST /admin/reload`` asks the supervisor and answers
with the whole fleet's outcome; a SIGHUP to the worker asks the supervisor too.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from multiprocessing.connection import Connection
from typing import Any, Protocol

from turnout._support.failures import describe
from turnout.errors import RequestError, TurnoutError
from turnout.serving import reload, rounds
from turnout.serving.waiting import start_up_problem

log = logging.getLogger("turnout")

ANSWER_S = rounds.PREPARE_S + rounds.COMMIT_S + 10.0  # a round's phases and some room


class Swapper(Protocol):
    """What a round does with the app (``App``): build the new runtime, swap it in, or close it."""

    async def prepare(self, plan: reload.Plan) -> Any: ...

    def commit(self, prepared: Any) -> dict[str, Any]: ...

    async def abandon(self, prepared: Any) -> None: ...


class ReloadUnanswered(RequestError):
    """The supervisor did not say in time how the fleet's reload ended."""

    status = 503
    code = "reload_unanswered"


class Channel:
    def __init__(self, pipe: Connection) -> None:
        self.pipe = pipe
        self._ids = itertools.count(1)
        self._asked: dict[int, asyncio.Future[tuple[bool, Any]]] = {}
        self._held: dict[int, Any] = {}  # round → what it prepared, until its commit or abort
        self._task: asyncio.Task[None] | None = None
        self._send_lock = threading.Lock()

    def start(self, app: Swapper) -> None:
        """Serving: take part in rounds from now on (in the running loop)."""
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._task = loop.create_task(self._serve(app, inbox), name="turnout-reload-rounds")
        threading.Thread(target=self._read, args=(loop, inbox), name="turnout-supervisor-pipe", daemon=True).start()
        self._send(("up",))

    async def aclose(self, app: Swapper) -> None:
        """Shutting down: a round prepared and never committed closes what it built."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for prepared in self._held.values():
            await app.abandon(prepared)
        self._held.clear()

    async def ask(self) -> dict[str, Any]:
        """Ask the supervisor for a reload of every worker and wait for how it ended: the
        answer when all swapped it in, ReloadRefused with the problems when none did."""
        request = next(self._ids)
        answer: asyncio.Future[tuple[bool, Any]] = asyncio.get_running_loop().create_future()
        self._asked[request] = answer
        try:
            self._send(("reload", request))
            async with asyncio.timeout(ANSWER_S):
                ok, payload = await answer
        except TimeoutError:
            raise ReloadUnanswered(
                f"the supervisor did not say within {ANSWER_S:.0f} s whether every worker reloaded; see its log"
            ) from None
        finally:
            self._asked.pop(request, None)
        if not ok:
            raise reload.ReloadRefused(payload)
        return dict(payload)

    def forward(self) -> None:
        """A SIGHUP to this worker: a reload of every worker, nobody to answer."""
        log.info("SIGHUP: asking the supervisor to reload the config on every worker")
        self._send(("reload", rounds.NO_ANSWER))

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            try:
                self.pipe.send(message)
            except OSError as exc:  # the supervisor is gone: this worker stops (become_worker)
                log.warning("cannot reach the supervisor: %s", describe(exc))

    def _read(self, loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue[tuple[Any, ...]]) -> None:
        while True:
            try:
                message = self.pipe.recv()
                loop.call_soon_threadsafe(inbox.put_nowait, message)
            except (EOFError, OSError, RuntimeError):  # the supervisor gone, or this loop closed
                return

    async def _serve(self, app: Swapper, inbox: asyncio.Queue[tuple[Any, ...]]) -> None:
        while True:
            message = await inbox.get()
            kind, number = message[0], message[1]
            if kind == "prepare":
                await self._prepare(app, number, message[2])
            elif kind == "commit":
                await self._commit(app, number)
            elif kind == "abort":
                prepared = self._held.pop(number, None)
                if prepared is not None:
                    await app.abandon(prepared)
            elif kind == "answer":
                answer = self._asked.get(number)
                if answer is not None and not answer.done():
                    answer.set_result((message[2], message[3]))

    async def _prepare(self, app: Swapper, number: int, plan: reload.Plan) -> None:
        try:
            self._held[number] = await app.prepare(plan)
        except reload.ReloadRefused as exc:
            self._send(("prepared", number, exc.problems))
        except (TurnoutError, OSError) as exc:  # a store it would open did not: the fleet keeps its config
            self._send(("prepared", number, [start_up_problem(exc)]))
        except Exception as exc:
            log.exception("config reload failed on this worker; the running config is kept")
            self._send(("prepared", number, [f"unexpected {describe(exc)}: see this worker's log"]))
        else:
            self._send(("prepared", number, []))

    async def _commit(self, app: Swapper, number: int) -> None:
        prepared = self._held.pop(number, None)
        if prepared is None:
            return  # not prepared here: the supervisor restarts this worker
        try:
            answer = app.commit(prepared)
        except Exception:  # unconfirmed: the supervisor restarts this worker on the fleet's config
            log.exception("config reload failed on this worker while swapping it in")
            await app.abandon(prepared)
            return
        self._send(("committed", number, answer))
