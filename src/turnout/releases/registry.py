"""``StoreRegistry``: which release serves each task, answered from memory on the request path
and kept fresh from the release store.

A poller owned by the registry reads ``PRAGMA data_version`` every ``interval`` (0.5 s by
default; the read costs a few µs and touches no disk) and, only when the number changed, reloads
the serving rows and registered releases on the store's thread. So a promotion, canary step or
rollback made by the CLI, the canary controller or another replica is served within about half a
second, and a request never waits on SQLite. ``refresh()`` reloads at once when the caller knows
something changed.

The registered spec in the store is what serves, never the file: a file edited after its
release was registered is reported as drift (``drift()``, and a warning at start) and ignored
until it is registered under a new name.
"""

from __future__ import annotations

import asyncio
import logging

from turnout._support.periodic import Periodic
from turnout.config import Config
from turnout.releases.base import Release, Serving
from turnout.releases.files import load_all
from turnout.releases.store import ReleaseStore, Snapshot

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.5


class StoreRegistry:
    def __init__(
        self,
        store: ReleaseStore,
        releases: dict[str, dict[str, Release]] | None = None,
        *,
        interval: float = POLL_INTERVAL_S,
        owns_store: bool = False,
    ) -> None:
        """``releases``: the release files (``files.load_all``), for ``get`` of a release not yet
        registered (an eval candidate) and for drift warnings. ``owns_store``: ``aclose``
        closes the store too."""
        self.store = store
        self.files = releases or {}
        self.interval = interval
        self._owns_store = owns_store
        self._snapshot = Snapshot(serving={}, releases={})
        self._version = -1
        self._lock = asyncio.Lock()
        self._poller = Periodic("turnout-releases-poll", self._refresh, interval, first="later", logger=log)

    async def start(self) -> None:
        await self.refresh(force=True)
        for problem in self.drift():
            log.warning("releases: %s", problem)
        self._poller.start()

    async def aclose(self) -> None:
        await self._poller.aclose()
        if self._owns_store:
            await self.store.aclose()

    # --- base.ReleaseRegistry: from memory -------------------------------------------------

    def serving(self, task: str) -> Serving | None:
        return self._snapshot.serving.get(task)

    def get(self, task: str, name: str) -> Release | None:
        """The registered release, else the file of that name (not yet registered), else None."""
        registered = self._snapshot.releases.get(task, {}).get(name)
        return registered if registered is not None else self.files.get(task, {}).get(name)

    def registered(self, task: str) -> dict[str, Release]:
        return dict(self._snapshot.releases.get(task, {}))

    def drift(self) -> list[str]:
        """Files whose content no longer matches the release registered under their name."""
        out = []
        for task, by_name in sorted(self.files.items()):
            for name, release in sorted(by_name.items()):
                registered = self._snapshot.releases.get(task, {}).get(name)
                if registered is not None and registered.version != release.version:
                    out.append(
                        f"release {name!r} of task {task!r}: the file (version {release.version}) differs from "
                        f"what is registered ({registered.version}); the registered one serves. "
                        "Give the changed release a new name."
                    )
        return out

    # --- freshness -------------------------------------------------------------------------

    async def refresh(self, *, force: bool = False) -> bool:
        """Reload if anyone committed since the last load (or ``force``); True if it did."""
        async with self._lock:
            version = self.store.data_version()
            if version == self._version and not force:
                return False
            # The version before the rows: a commit in between only causes one more reload.
            self._snapshot = await self.store.snapshot()
            self._version = version
            return True

    async def _refresh(self) -> None:
        """One poll; a failure (a transient SQLite error) keeps serving the last known state."""
        await self.refresh()


async def open_registry(config: Config, *, interval: float = POLL_INTERVAL_S) -> StoreRegistry:
    """The gateway's start-up: read and check the release files (ConfigError on a problem),
    open the release store (``Config.state_at``) and start a registry that owns it."""
    files = load_all(config)
    store = ReleaseStore(config.state_at(config.releases.store_path))
    await store.open()
    registry = StoreRegistry(store, files, interval=interval, owns_store=True)
    try:
        await registry.start()
    except BaseException:
        await registry.aclose()
        raise
    return registry
