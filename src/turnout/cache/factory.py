"""The configured cache: its store (``cache.backend``), the stage, and the background job that
drops the answers of releases (or, without releases, of routes and models) that no longer serve
and, in process, expired ones."""

from __future__ import annotations

from turnout.cache.memory import MemoryCache
from turnout.cache.redis import RedisCache
from turnout.cache.stage import CacheStage
from turnout.cache.store import CacheStore
from turnout.config import Config
from turnout.releases.base import Release, ReleaseRegistry

MB = 1024 * 1024


def wanted(config: Config) -> bool:
    return any(t.cache is not None for t in config.tasks.values())


def limits(config: Config) -> dict[str, int]:
    """Bytes per task: its own ``max_mb``, else ``cache.max_mb``."""
    return {
        name: int((t.cache.max_mb or config.cache.max_mb) * MB)
        for name, t in config.tasks.items()
        if t.cache is not None
    }


def open_cache_store(config: Config) -> CacheStore:
    cfg = config.cache
    if cfg.backend == "redis":
        assert cfg.encryption_key is not None  # the config requires it
        url = cfg.redis_url or config.limits.redis_url
        return RedisCache(url, cfg.key_prefix, cfg.encryption_key, limits=limits(config))
    return MemoryCache(limits(config), default_limit=int(cfg.max_mb * MB))


class Sweeper:
    """One run: for each cached task whose serving versions (its releases, or without releases
    its route and models) changed since the last run (every task on the first), delete its
    answers of any other version; then expired entries."""

    def __init__(self, stage: CacheStage, registry: ReleaseRegistry | None) -> None:
        self._stage = stage
        self.registry = registry  # set anew by a reload that opens the registry
        self._kept: dict[str, frozenset[str]] = {}
        self.purged = 0

    async def __call__(self) -> None:
        for task in list(self._stage.tasks):  # a reload may swap the tasks between two awaits
            keep = self.serving_versions(task)
            if keep and self._kept.get(task) != keep:
                self.purged += await self._stage.store.purge_release(task, keep)
                self._kept[task] = keep
        self.purged += await self._stage.store.sweep()

    def serving_versions(self, task: str) -> frozenset[str]:
        """The versions of the task's answers that may still be served (``stage.version_of``:
        the release and who answers it, or the route and its models without releases); empty
        for a task no longer cached."""
        serving = self.registry.serving(task) if self.registry is not None else None
        releases: list[Release | None] = [None]  # no active release: answered without one
        if serving is not None:
            releases = [serving.active] if serving.canary is None else [serving.active, serving.canary]
        versions = {self._stage.version(task, r) for r in releases}
        return frozenset(v for v in versions if v is not None)
