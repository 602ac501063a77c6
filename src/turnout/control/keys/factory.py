"""The key store a config names: issued keys live beside the limits."""

from __future__ import annotations

from turnout._support.backends import Backend, load
from turnout.config import LimitsConfig
from turnout.control.keys.base import KeyStore

# By the limits backend: ``memory`` keeps keys in a SQLite file (one replica), ``redis`` in
# Redis (every replica).
KEY_STORES: dict[str, Backend] = {
    "memory": Backend("turnout.control.keys.sqlite:SQLiteKeyStore"),
    "redis": Backend("turnout.control.keys.redis:RedisKeyStore", ("redis", "hiredis"), "redis"),
}


def open_key_store(cfg: LimitsConfig) -> KeyStore:
    """Not yet open: ``await store.open()``."""
    cls = load(KEY_STORES, cfg.backend, "limits.backend")
    store: KeyStore = cls(cfg.keys_path) if cfg.backend == "memory" else cls(cfg.redis_url, cfg.key_prefix)
    return store
