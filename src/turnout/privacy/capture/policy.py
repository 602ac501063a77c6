"""Which capture mode a request gets: config rules plus live grants, decided in memory.

``decide`` runs on the request path, so it only reads two dicts and maybe draws one random
number; it never touches SQLite. Live grants are cached: a background task (``start`` /
``aclose``) polls the store's ``version`` (``PRAGMA data_version``: shared memory, no disk)
every ``refresh_interval_s`` and reloads the grants when anything committed, so a grant or a
revocation made by ``turnout capture`` takes effect within that interval. Time bounds are
checked on every call against the grant's own start and end, so a grant stops on time even if
the cache is behind; the same task writes each passed grant's ``expired`` audit event.

Precedence: the first rule naming both tenant and task, else the first naming the task, else
the first naming the tenant, else a rule naming neither, else the section's ``mode`` and
``sample_rate``. ``full`` is strict: without a live grant for that tenant and task it degrades
to ``metadata`` (not ``redacted``: a lapsed grant must not start keeping text that the rule
never asked to keep in redacted form). A grant where the rule does not say ``full`` changes
nothing; `turnout capture grant` refuses to create one.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable

from turnout._support.periodic import Periodic
from turnout.config import CaptureConfig
from turnout.privacy.capture.model import METADATA, Decision, Grant, Mode
from turnout.privacy.capture.store import CaptureStore

log = logging.getLogger(__name__)

_Key = tuple[str | None, str | None]


def rule_for(config: CaptureConfig, tenant: str, task: str) -> tuple[Mode, float]:
    """The winning (mode, sample_rate) for a tenant and task, before grants."""
    return _Rules(config).get(tenant, task)


class _Rules:
    def __init__(self, config: CaptureConfig) -> None:
        self.default: tuple[Mode, float] = (config.mode, config.sample_rate)
        self.table: dict[_Key, tuple[Mode, float]] = {}
        for rule in config.rules:
            self.table.setdefault((rule.tenant, rule.task), (rule.mode, rule.sample_rate))
        self.keeps_text = any(mode != "metadata" for mode, _ in (self.default, *self.table.values()))

    def get(self, tenant: str, task: str) -> tuple[Mode, float]:
        table = self.table
        if not table:
            return self.default
        for key in ((tenant, task), (None, task), (tenant, None), (None, None)):
            found = table.get(key)
            if found is not None:
                return found
        return self.default


class CapturePolicy:
    def __init__(
        self,
        config: CaptureConfig,
        store: CaptureStore | None = None,
        rng: random.Random | None = None,
        *,
        refresh_interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if refresh_interval_s <= 0:
            raise ValueError("refresh_interval_s must be positive")
        self.store = store
        self.refresh_interval_s = refresh_interval_s
        self._rules = _Rules(config)
        self._rng = rng or random.Random()  # sampling, not security
        self._clock = clock
        self._grants: dict[tuple[str, str], tuple[Grant, ...]] = {}
        self._version: tuple[int, int] | None = None
        self._loop = Periodic("turnout-capture-grants", self.tick, refresh_interval_s, first="later", logger=log)

    @classmethod
    def rules_only(cls, config: CaptureConfig, rng: random.Random | None = None) -> CapturePolicy:
        """A policy without a store: ``full`` always degrades to ``metadata``."""
        return cls(config, None, rng)

    # --- the request path ------------------------------------------------------------------

    def decide(self, tenant: str, task: str, now: float | None = None) -> Decision:
        mode, rate = self._rules.get(tenant, task)
        if mode == "metadata":
            return METADATA
        grant_id = None
        if mode == "full":
            grant = self.live_grant(tenant, task, self._clock() if now is None else now)
            if grant is None:
                return METADATA
            grant_id = grant.id
        sampled = rate >= 1.0 or (rate > 0.0 and self._rng.random() < rate)
        return Decision(mode, grant_id, sampled)

    def live_grant(self, tenant: str, task: str, now: float) -> Grant | None:
        """The cached grant live for this tenant and task at ``now`` (the one ending last)."""
        best = None
        for grant in self._grants.get((tenant, task), ()):
            if grant.live(now) and (best is None or grant.ends_at > best.ends_at):
                best = grant
        return best

    # --- the cache -------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Reload live grants from the store now."""
        if self.store is None:
            return
        version = self.store.version()  # before the rows: a commit in between reloads again
        self._grants = _by_pair(await self.store.live_grants(self._clock()))
        self._version = version

    async def start(self) -> None:
        """Load the grants, then keep them fresh in a background task until ``aclose``."""
        if self._loop.running:
            raise RuntimeError("the capture policy was already started")
        if self.store is None:
            return
        await self.refresh()
        self._loop.start()

    async def aclose(self) -> None:
        await self._loop.aclose()

    async def tick(self) -> None:
        """One round of the background task: record grants that ended, reload on change."""
        store = self.store
        if store is None:
            return
        now = self._clock()
        if any(g.ends_at <= now for grants in self._grants.values() for g in grants):
            for grant in await store.expire_grants(now):
                log.info("capture: grant %s (%s/%s) expired", grant.id, grant.tenant, grant.task)
        if store.version() != self._version:
            await self.refresh()


def _by_pair(grants: Iterable[Grant]) -> dict[tuple[str, str], tuple[Grant, ...]]:
    out: dict[tuple[str, str], tuple[Grant, ...]] = {}
    for grant in grants:
        out[grant.tenant, grant.task] = (*out.get((grant.tenant, grant.task), ()), grant)
    return out
