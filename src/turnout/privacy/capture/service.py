"""``Capture``: the store, policy, writer and purge job, wired together for the gateway."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

from turnout._support.places import Place
from turnout.config import CaptureConfig
from turnout.privacy.capture.model import TextRedactor
from turnout.privacy.capture.policy import CapturePolicy
from turnout.privacy.capture.purge import Purger
from turnout.privacy.capture.store import CaptureStore
from turnout.privacy.capture.writer import CaptureWriter


class Capture:
    """Owns one capture store and its three users. ``start`` opens the store, loads grants and
    starts the background tasks, each pushed on one ``AsyncExitStack`` as it starts; ``aclose``
    unwinds it: the writer drains, the purge job and the grant refresher stop, and then the
    store they all use closes. A start that fails half-way closes what it had opened."""

    def __init__(
        self,
        config: CaptureConfig,
        path: Place | Path,
        redactor: TextRedactor,
        *,
        secrets: TextRedactor | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        refresh_interval_s: float = 1.0,
        ttl_days_for: Callable[[str, str], float] | None = None,
    ) -> None:
        """``ttl_days_for``: how long a tenant's captures of a task are kept (the retention
        rules); None: ``config.ttl_days`` for every one."""
        self.store = CaptureStore(path)
        self.policy = CapturePolicy(config, self.store, rng, refresh_interval_s=refresh_interval_s, clock=clock)
        self.writer = CaptureWriter(
            self.store, redactor, secrets=secrets, ttl_days=config.ttl_days, ttl_days_for=ttl_days_for, clock=clock
        )
        self.purger = Purger(self.store, config.purge_interval_s, clock=clock)
        self._stack = AsyncExitStack()
        # The request path's two calls, handed straight to their owners (no extra frame).
        self.decide = self.policy.decide
        self.submit = self.writer.submit

    async def start(self) -> None:
        async with AsyncExitStack() as stack:
            await self.store.open()
            stack.push_async_callback(self.store.aclose)
            await self.policy.start()
            stack.push_async_callback(self.policy.aclose)
            self.purger.start()
            stack.push_async_callback(self.purger.aclose)
            self.writer.start()
            stack.push_async_callback(self.writer.aclose)
            self._stack = stack.pop_all()  # started: kept open until ``aclose``

    async def aclose(self) -> None:
        """Safe to call twice, or after a failed start."""
        await self._stack.aclose()
