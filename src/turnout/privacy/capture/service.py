"""``Capture``: the store, policy, writer and purge job, wired together for the gateway."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

from turnout.config import CaptureConfig
from turnout.privacy.capture.model import Decision, TextRedactor
from turnout.privacy.capture.policy import CapturePolicy
from turnout.privacy.capture.purge import Purger
from turnout.privacy.capture.store import CaptureStore
from turnout.privacy.capture.writer import CaptureWriter


class Capture:
    """Owns one capture store and its three users. ``start`` opens the store, loads grants and
    starts the background tasks; ``aclose`` stops them in order (drain the writer, stop the
    purge job and the grant refresher, close the store)."""

    def __init__(
        self,
        config: CaptureConfig,
        path: str | Path,
        redactor: TextRedactor,
        *,
        secrets: TextRedactor | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        refresh_interval_s: float = 1.0,
    ) -> None:
        self.store = CaptureStore(path)
        self.policy = CapturePolicy(config, self.store, rng, refresh_interval_s=refresh_interval_s, clock=clock)
        self.writer = CaptureWriter(self.store, redactor, secrets=secrets, ttl_days=config.ttl_days, clock=clock)
        self.purger = Purger(self.store, config.purge_interval_s, clock=clock)

    async def start(self) -> None:
        await self.store.open()
        try:
            await self.policy.start()
            self.writer.start()
            self.purger.start()
        except BaseException:
            await self.aclose()
            raise

    def decide(self, tenant: str, task: str, now: float | None = None) -> Decision:
        return self.policy.decide(tenant, task, now)

    def submit(
        self,
        request_id: str,
        tenant: str,
        task: str,
        decision: Decision,
        prompt_text: str,
        completion_text: str | None,
    ) -> bool:
        return self.writer.submit(request_id, tenant, task, decision, prompt_text, completion_text)

    async def aclose(self) -> None:
        try:
            await self.writer.aclose()
        finally:
            try:
                await self.purger.aclose()
                await self.policy.aclose()
            finally:
                await self.store.aclose()
