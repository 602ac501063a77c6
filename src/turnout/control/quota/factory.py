"""Pick the ``Limiter`` the config names. The Redis backend is imported only when chosen, so
the ``redis`` package stays an optional extra."""

from __future__ import annotations

from turnout.config import LimitsConfig
from turnout.control.quota.base import Limiter
from turnout.control.quota.memory import MemoryLimiter
from turnout.errors import ConfigError


def open_limiter(cfg: LimitsConfig) -> Limiter:
    if cfg.backend == "memory":
        return MemoryLimiter(cfg.max_request_s)
    try:
        from turnout.control.quota.redis import RedisLimiter
    except ImportError as exc:
        if exc.name is None or exc.name.split(".")[0] != "redis":
            raise
        raise ConfigError(["limits.backend: redis needs the redis package: pip install 'turnout[redis]'"]) from exc
    return RedisLimiter(cfg.redis_url, cfg.key_prefix, cfg.max_request_s, cfg.on_backend_error)
