"""What start-up could not open because PostgreSQL did not answer, opened in the background.

A replica started while its database is down (a fleet coming up in any order, a failover)
starts anyway: ``Runtime.start`` hands the opening that failed to a ``Waiting``, which tries
it again after 0.5, 1, 2 … up to 30 s until it succeeds. Meanwhile ``/readyz`` names it
(``serving/readiness.py``), so a load balancer sends the replica nothing; ``/healthz`` answers.
Only a failure to reach the database is waited out (``places.unreachable``): a wrong password,
a missing database or a schema newer than this code ends start-up as before.

The hot path never looks here: the ledger's rows go to its spill journal until its store
opens (``ledger/writer.py`` replays them), and a request that needs the shared state while it
is missing is refused once, at the door (``Pipeline.run``: 503 ``not_ready``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from turnout._support.failures import describe
from turnout._support.places import unreachable
from turnout.errors import TurnoutError

log = logging.getLogger("turnout")

FIRST_S = 0.5
MOST_S = 30.0


class Waiting:
    """``attempt`` tried again in the background until it succeeds; ``what`` names it in logs."""

    def __init__(self, what: str, attempt: Callable[[], Awaitable[None]], first: BaseException) -> None:
        self.what = what
        self.attempt = attempt
        self.waiting = True
        self._since = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        log.warning(
            "start-up: %s cannot be opened yet (%s); serving unready, trying again in the background",
            what,
            _said(first),
        )

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"turnout-waiting-{self.what}")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        pause = FIRST_S
        told = ""
        while True:
            await asyncio.sleep(pause)
            try:
                await self.attempt()
            except Exception as exc:
                reason = _said(exc)
                if not unreachable(exc):  # it answered, and said no: the operator must act
                    log.error("start-up: %s cannot be opened: %s; trying again in %.0f s", self.what, reason, pause)
                elif reason != told:
                    log.warning("start-up: %s still cannot be opened (%s); trying again", self.what, reason)
                told = reason
                pause = min(MOST_S, pause * 2)
                continue
            self.waiting = False
            log.warning("start-up: %s opened after %.0f s", self.what, time.monotonic() - self._since)
            return


def _said(exc: BaseException) -> str:
    return start_up_problem(exc) if isinstance(exc, (TurnoutError, OSError)) else describe(exc)


def start_up_problem(exc: TurnoutError | OSError) -> str:
    """What a start-up failure of turnout's own (a store, a file) says, on one line."""
    if isinstance(exc, TurnoutError):
        said = exc.message
    else:
        reason = exc.strerror or str(exc) or type(exc).__name__
        said = f"{exc.filename}: {reason}" if exc.filename else reason
    return " ".join(said.split())  # a driver's message may run over lines (libpq's hint does)
