"""Pick the ``Limiter`` the config names. The Redis backend is imported only when chosen, so
the ``redis`` package stays an optional extra."""

from __future__ import annotations

from turnout._support.backends import Backend, load
from turnout.config import LimitsConfig
from turnout.control.quota.base import Limiter

LIMITERS: dict[str, Backend] = {
    "memory": Backend("turnout.control.quota.memory:MemoryLimiter"),
    "redis": Backend("turnout.control.quota.redis:RedisLimiter", ("redis", "hiredis"), "redis"),
}


def open_limiter(cfg: LimitsConfig) -> Limiter:
    cls = load(LIMITERS, cfg.backend, "limits.backend")
    if cfg.backend == "memory":
        limiter: Limiter = cls(cfg.max_request_s)
    else:
        limiter = cls(cfg.redis_url, cfg.key_prefix, cfg.max_request_s, cfg.on_backend_error)
    return limiter
