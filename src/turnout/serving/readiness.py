"""``GET /readyz``: whether this process can serve, never whether its upstreams can.

A load balancer takes an unready replica out of service. Upstream health would take every
replica out at once when one model server dies (they all share it), while the attempt loop
already routes around it (breakers, fallback); so upstreams are not checked here: they are in
``GET /admin/targets`` and ``/metrics``. What is checked, each ``"ok"`` or a word naming what
is wrong:

    config   start-up complete (the config loaded, everything opened)     "starting"
    ledger   (with a ledger) its store has opened: PostgreSQL answered    "unreachable"
             at start-up, or since (rows wait in the spill journal)
             its writer's background tasks run                           "stopped"
             and it is not refusing rows: the spill journal is past       "full"
             ``store.spill_max_mb`` or its queue is full
    state    (``state.kind: postgres``) the shared state has opened:     "unreachable"
             PostgreSQL answered at start-up, or since; until then
             requests are refused (503 ``not_ready``)
    limiter  (a shared limiter with ``limits.on_backend_error: closed``)  "unreachable"
             the backend answers a PING within a short timeout; the answer is reused for
             ``LIMITER_CACHE_S``, so the probe can be polled hard. With ``open`` a Redis
             outage admits requests, so it is no reason to be unready and is not checked.

The body holds the status and the checks only: no address, count or message, since anyone may
call it. The ledger's figures are for the admin (``App.readyz`` adds them for the admin key).
"""

from __future__ import annotations

import asyncio
from typing import Any

from turnout.serving.runtime import Runtime

LIMITER_CACHE_S = 1.0  # how long a PING's answer stands for


class Readiness:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._limiter_ok = False
        self._limiter_at = -float("inf")  # loop time of the last PING's answer
        self._pinging = asyncio.Lock()  # callers that overlap share one PING

    async def check(self, started: bool) -> tuple[bool, dict[str, Any]]:
        """(ready, the body): ``{"status": ..., "checks": {name: "ok" | what is wrong}}``."""
        if not started:
            return False, {"status": "starting", "checks": {"config": "starting"}}
        checks = {"config": "ok"}
        ledger = self._ledger()
        if ledger is not None:
            checks["ledger"] = ledger
        if self.runtime.config.state.kind == "postgres":
            checks["state"] = "unreachable" if self.runtime.state_missing else "ok"
        if self._limiter_checked():
            checks["limiter"] = "ok" if await self._limiter_answers() else "unreachable"
        ok = all(v == "ok" for v in checks.values())
        return ok, {"status": "ready" if ok else "unready", "checks": checks}

    def _ledger(self) -> str | None:
        writer = self.runtime.ledger
        if writer is None:
            return None
        if any(w.waiting and w.what == "the ledger store" for w in self.runtime.waiting):
            return "unreachable"
        if not writer.alive:
            return "stopped"
        if writer.over_limit or writer.queued >= writer.queue_size:
            return "full"
        return "ok"

    def _limiter_checked(self) -> bool:
        return self.runtime.quota.limiter is not None and self.runtime.config.limits.on_backend_error == "closed"

    async def _limiter_answers(self) -> bool:
        limiter = self.runtime.quota.limiter
        assert limiter is not None
        loop = asyncio.get_running_loop()
        if loop.time() - self._limiter_at < LIMITER_CACHE_S:
            return self._limiter_ok
        async with self._pinging:
            if loop.time() - self._limiter_at >= LIMITER_CACHE_S:  # not answered while we waited
                self._limiter_ok = await limiter.ping()
                self._limiter_at = loop.time()
        return self._limiter_ok
