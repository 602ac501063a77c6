"""Which process runs a purge job this interval, when several share one store.

Every worker of ``turnout serve --workers N``, and every replica of a fleet sharing its state
(``state.kind: postgres``, or several gateways on the same SQLite files), starts the same
purge jobs. Before a scheduled run each claims it in the shared store, where the runs' audit
events go (``purge_runs`` in the capture store, ``CaptureStore.claim_run``): one
``INSERT … ON CONFLICT DO UPDATE … WHERE`` statement, as canary steps are claimed, so of two
processes ticking at once exactly one runs and the others skip the interval.

A claim lasts ``LEASE`` intervals, so the process holding it, whose next tick comes one
interval after its run ends, claims again before it runs out (its own claim it may always
renew) and keeps the job; the others take it over only once the holder stops ticking: a
holder that died mid-run holds up the job for at most that long. A run that outlasts a
quarter of the interval renews its claim as it goes (``keep``), so nobody starts a second run
beside it. A process that stops hands its claim back (``release``), so a restarted gateway
runs at once, as it did alone. Times are each process's clock: replicas on several machines
need their clocks in step to within a fraction of the interval (NTP is far closer).

    claim = RunClaim(capture_store, "retention", interval_s)
    if await claim.claim(): ...run, calling await claim.keep() now and then...
    await claim.release()
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Protocol

from turnout.errors import TurnoutError

log = logging.getLogger("turnout")
LEASE = 1.5  # intervals a claim lasts


class RunClaims(Protocol):
    """The shared store's side (``turnout.privacy.capture.store.CaptureStore``)."""

    async def claim_run(self, name: str, owner: str, now: float, until: float) -> bool: ...

    async def renew_run(self, name: str, owner: str, until: float) -> bool: ...


class RunClaim:
    def __init__(
        self,
        store: RunClaims,
        name: str,
        interval_s: float,
        *,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.name = name
        self.lease_s = interval_s * LEASE
        self.owner = owner or f"{os.uname().nodename}:{os.getpid()}:{id(self):x}"
        self._clock = clock
        self._renewed: float | None = None  # when the claim held was last set; None: none held

    @property
    def held(self) -> bool:
        return self._renewed is not None

    async def claim(self) -> bool:
        """Whether this process runs the job now."""
        now = self._clock()
        won = await self.store.claim_run(self.name, self.owner, now, now + self.lease_s)
        self._renewed = now if won else None
        return won

    async def keep(self) -> None:
        """During a run: push the claim's end out again once a sixth of it (a quarter of the
        interval) has passed since it was last set. Cheap to call often: a clock read."""
        if self._renewed is None:
            return
        now = self._clock()
        if now - self._renewed < self.lease_s / 6:
            return
        self._renewed = now if await self.store.renew_run(self.name, self.owner, now + self.lease_s) else None

    async def release(self) -> None:
        """Hand the claim back (the process stops): the next process to tick may run at once.
        A courtesy: where the store does not answer (PostgreSQL gone), the claim lapses on its
        own within the lease, and the process closes all the same."""
        if self._renewed is None:
            return
        self._renewed = None
        try:
            await self.store.renew_run(self.name, self.owner, self._clock())
        except TurnoutError as exc:  # the store's own error; its message may name the server
            log.warning(
                "%s: could not hand back this process's run claim (%s); it lapses within %.0f s",
                self.name,
                type(exc).__name__,
                self.lease_s,
            )
