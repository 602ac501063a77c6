"""The key store a config names: issued keys live beside the limits."""

from __future__ import annotations

from turnout.config import LimitsConfig
from turnout.control.keys.base import KeyStore, KeyStoreError

REDIS_MISSING = "limits.backend is redis but the redis client is not installed: pip install 'turnout[redis]'"


def open_key_store(cfg: LimitsConfig) -> KeyStore:
    """The ``memory`` backend keeps keys in a SQLite file at ``keys_path`` (one replica);
    ``redis`` keeps them in Redis for every replica. Not yet open: ``await store.open()``."""
    if cfg.backend == "redis":
        try:
            # Imported here so a deployment without the redis extra never needs the driver.
            from turnout.control.keys.redis import RedisKeyStore
        except ImportError as exc:
            if exc.name is not None and exc.name.split(".")[0] in ("redis", "hiredis"):
                raise KeyStoreError(REDIS_MISSING) from exc
            raise
        return RedisKeyStore(cfg.redis_url, cfg.key_prefix)
    from turnout.control.keys.sqlite import SQLiteKeyStore

    return SQLiteKeyStore(cfg.keys_path)
