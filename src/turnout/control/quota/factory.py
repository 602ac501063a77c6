"""Pick the ``Limiter`` the config names. The Redis backend is imported only when chosen, so
the ``redis`` package stays an optional extra."""

from __future__ import annotations

from turnout._support.backends import Backend, load
from turnout.config import LimitsConfig
from turnout.control.quota.base import Limiter

# Each backend builds itself from the limits section (``from_config``).
LIMITERS: dict[str, Backend] = {
    "memory": Backend("turnout.control.quota.memory:MemoryLimiter"),
    "redis": Backend("turnout.control.quota.redis:RedisLimiter", ("redis", "hiredis"), "redis"),
}


def open_limiter(cfg: LimitsConfig) -> Limiter:
    limiter: Limiter = load(LIMITERS, cfg.backend, "limits.backend").from_config(cfg)
    return limiter
