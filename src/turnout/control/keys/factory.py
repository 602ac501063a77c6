"""The key store a config names: issued keys live beside the limits."""

from __future__ import annotations

from turnout._support.backends import Backend, load
from turnout.config import LimitsConfig
from turnout.control.keys.base import KeyStore

# By the limits backend: ``memory`` keeps keys in a SQLite file (one replica), ``redis`` in
# Redis (every replica). Each store builds itself from the limits section (``from_config``).
KEY_STORES: dict[str, Backend] = {
    "memory": Backend("turnout.control.keys.sqlite:SQLiteKeyStore"),
    "redis": Backend("turnout.control.keys.redis:RedisKeyStore", ("redis", "hiredis"), "redis"),
}


def open_key_store(cfg: LimitsConfig) -> KeyStore:
    """Not yet open: ``await store.open()``."""
    store: KeyStore = load(KEY_STORES, cfg.backend, "limits.backend").from_config(cfg)
    return store
