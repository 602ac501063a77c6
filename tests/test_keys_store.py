"""One contract for every issued-key store (SQLite, Redis), then what only one backend has to
prove (SQLite: files, modes, migrations, the data_version check; Redis: layout, exact times), and
the factory. Redis is the real one at TURNOUT_TEST_REDIS_URL (default 127.0.0.1:6379, db 0),
each test under its own key prefix, deleted afterwards."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from turnout.config import LimitsConfig
from turnout.control.keys.base import SECRET_PREFIX, IssuedKey, KeyStore, KeyStoreError, digest
from turnout.control.keys.factory import open_key_store
from turnout.control.keys.redis import RedisKeyStore
from turnout.control.keys.sqlite import MIGRATIONS, SQLiteKeyStore
from turnout.control.quota.redis import RedisLimiter
from turnout.errors import ConfigError

REDIS_URL = os.environ.get("TURNOUT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
NOW = 1_700_000_000.123456


@dataclass
class Backend:
    kind: str
    open: Callable[[], Awaitable[KeyStore]]  # another instance on the same data: another "process"
    at_rest: Callable[[], Awaitable[bytes]]  # everything the backend has stored, raw


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except RedisError as exc:
        await client.aclose()
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    yield client
    await client.aclose()


@pytest.fixture
async def redis_prefix(redis_client: aioredis.Redis) -> AsyncIterator[str]:
    prefix = f"turnout-test-{uuid.uuid4().hex}"
    yield prefix
    await redis_client.delete(f"{prefix}:keys", f"{prefix}:keyids")


@pytest.fixture(params=["sqlite", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    stores: list[KeyStore] = []

    async def opened(store: KeyStore) -> KeyStore:
        await store.open()
        stores.append(store)
        return store

    if request.param == "sqlite":
        path = tmp_path / "keys.db"

        async def at_rest_sqlite() -> bytes:
            # The main file and, while a store is open, its write-ahead log.
            return b"".join(p.read_bytes() for p in await asyncio.to_thread(files, tmp_path, "keys.db*"))

        yield Backend("sqlite", lambda: opened(SQLiteKeyStore(path)), at_rest_sqlite)
    else:
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            await client.ping()
        except RedisError as exc:
            await client.aclose()
            pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
        prefix = f"turnout-test-{uuid.uuid4().hex}"

        async def at_rest_redis() -> bytes:
            out = b""
            for name in await client.keys(f"{prefix}*"):
                out += as_bytes(name)
                for field, value in (await client.hgetall(name)).items():
                    out += as_bytes(field) + as_bytes(value)
            return out

        yield Backend("redis", lambda: opened(RedisKeyStore(REDIS_URL, prefix)), at_rest_redis)
        await client.delete(f"{prefix}:keys", f"{prefix}:keyids")
        await client.aclose()
    for store in stores:
        await store.aclose()


def files(directory: Path, pattern: str) -> list[Path]:
    return sorted(directory.glob(pattern))


def modes(paths: list[Path]) -> dict[Path, int]:
    return {p: stat.S_IMODE(p.stat().st_mode) for p in paths}


def as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


# --- the contract ---------------------------------------------------------------------------


async def test_create_returns_a_secret_whose_digest_finds_the_record(backend: Backend) -> None:
    store = await backend.open()
    key, secret = await store.create("acme", "ci", NOW + 3600, NOW)
    assert secret.startswith(SECRET_PREFIX)
    assert len(secret) > 40
    assert key.id.startswith("key_")
    assert (key.tenant, key.name, key.created_at, key.expires_at, key.revoked_at) == (
        "acme",
        "ci",
        NOW,
        NOW + 3600,
        None,
    )
    assert key.hint == secret[:6] + "…"
    assert await store.lookup(digest(secret)) == key
    assert await store.lookup(digest(secret + "x")) is None
    assert await store.lookup(b"\0" * 32) is None


async def test_every_key_is_different(backend: Backend) -> None:
    store = await backend.open()
    made = await asyncio.gather(*(store.create("acme", f"k{i}", None, NOW + i) for i in range(20)))
    assert len({key.id for key, _ in made}) == len({secret for _, secret in made}) == 20
    for key, secret in made:
        assert await store.lookup(digest(secret)) == key


async def test_only_the_digest_is_stored(backend: Backend) -> None:
    store = await backend.open()
    _, secret = await store.create("acme", "ci", None, NOW)
    stored = await backend.at_rest()
    body = secret.removeprefix(SECRET_PREFIX)
    assert body.encode() not in stored
    assert body[:16].encode() not in stored
    # The scan does see what is stored: the digest is there (raw in SQLite, hex in Redis).
    assert digest(secret) in stored or digest(secret).hex().encode() in stored


async def test_list_filters_by_tenant_oldest_first(backend: Backend) -> None:
    store = await backend.open()
    a2, _ = await store.create("acme", "second", None, NOW + 2)
    b1, _ = await store.create("bravo", "", None, NOW + 1)
    a1, _ = await store.create("acme", "first", None, NOW + 1)
    assert await store.list("acme") == [a1, a2]
    assert await store.list("bravo") == [b1]
    assert await store.list("nobody") == []
    assert {k.id for k in await store.list()} == {a1.id, a2.id, b1.id}
    assert len(await store.list(None)) == 3


async def test_a_revoked_key_is_still_found_but_not_live(backend: Backend) -> None:
    store = await backend.open()
    key, secret = await store.create("acme", "ci", None, NOW)
    assert key.live(NOW + 1)
    revoked = await store.revoke(key.id, NOW + 10)
    assert revoked is not None
    assert revoked.revoked_at == NOW + 10
    assert (revoked.id, revoked.tenant, revoked.name, revoked.hint) == (key.id, key.tenant, key.name, key.hint)
    found = await store.lookup(digest(secret))
    assert found == revoked
    assert not found.live(NOW + 11)
    assert await store.list("acme") == [revoked]


async def test_revoking_twice_keeps_the_first_time(backend: Backend) -> None:
    store = await backend.open()
    key, secret = await store.create("acme", "ci", None, NOW)
    await store.revoke(key.id, NOW + 10)
    again = await store.revoke(key.id, NOW + 20)
    assert again is not None
    assert again.revoked_at == NOW + 10
    found = await store.lookup(digest(secret))
    assert found is not None
    assert found.revoked_at == NOW + 10


async def test_revoking_one_key_leaves_the_others(backend: Backend) -> None:
    store = await backend.open()
    key, _ = await store.create("acme", "a", None, NOW)
    other, other_secret = await store.create("acme", "b", None, NOW)
    await store.revoke(key.id, NOW + 1)
    assert await store.lookup(digest(other_secret)) == other


async def test_revoking_an_unknown_id_returns_none(backend: Backend) -> None:
    store = await backend.open()
    await store.create("acme", "ci", None, NOW)
    assert await store.revoke("key_0000000000000000", NOW) is None
    assert await store.revoke("", NOW) is None


async def test_expiry_is_judged_by_live(backend: Backend) -> None:
    store = await backend.open()
    key, secret = await store.create("acme", "ci", NOW + 60, NOW)
    found = await store.lookup(digest(secret))
    assert found == key
    assert found.expires_at == NOW + 60
    assert found.live(NOW + 59.9)
    assert not found.live(NOW + 60)
    assert found.revoked_at is None  # expired is not revoked


async def test_another_instance_sees_creation_and_revocation_at_once(backend: Backend) -> None:
    cli, gateway = await backend.open(), await backend.open()
    _, early = await cli.create("acme", "early", None, NOW)
    assert await gateway.lookup(digest(early)) is not None  # loaded (SQLite) or read (Redis)
    key, secret = await cli.create("acme", "ci", None, NOW)
    assert await gateway.lookup(digest(secret)) == key
    await cli.revoke(key.id, NOW + 5)
    found = await gateway.lookup(digest(secret))
    assert found is not None
    assert not found.live(NOW + 6)
    # ... and the other way round: a key revoked through the second is refused by the first.
    early_key = await gateway.lookup(digest(early))
    assert early_key is not None
    await gateway.revoke(early_key.id, NOW + 7)
    refound = await cli.lookup(digest(early))
    assert refound is not None
    assert refound.revoked_at == NOW + 7


async def test_names_round_trip_whatever_they_hold(backend: Backend) -> None:
    store = await backend.open()
    awkward = 'ci "prod" \\ "revoked_at":null, ünïcødé ✓\n'
    key, secret = await store.create("acme", awkward, None, NOW)
    revoked = await store.revoke(key.id, NOW + 1)
    assert revoked is not None
    assert revoked.name == awkward
    assert revoked.revoked_at == NOW + 1
    assert await store.lookup(digest(secret)) == revoked


async def test_a_closed_store_refuses_calls_and_closes_twice(backend: Backend) -> None:
    store = await backend.open()
    _, secret = await store.create("acme", "ci", None, NOW)
    await store.aclose()
    with pytest.raises(KeyStoreError, match="not open"):
        await store.lookup(digest(secret))
    with pytest.raises(KeyStoreError, match="not open"):
        await store.create("acme", "ci", None, NOW)
    await store.aclose()


async def test_data_outlives_the_store(backend: Backend) -> None:
    first = await backend.open()
    key, secret = await first.create("acme", "ci", NOW + 60, NOW)
    await first.aclose()
    second = await backend.open()
    assert await second.lookup(digest(secret)) == key
    assert await second.list() == [key]


# --- SQLite only ------------------------------------------------------------------------------


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteKeyStore]:
    store = SQLiteKeyStore(tmp_path / "keys.db")
    await store.open()
    yield store
    await store.aclose()


async def test_sqlite_creates_the_directory_and_owner_only_files(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "keys.db"
    store = SQLiteKeyStore(path)
    await store.open()
    try:
        await store.create("acme", "ci", None, NOW)
        found = files(tmp_path, "deep/er/keys.db*")
        assert path in found
        assert modes(found) == {p: 0o600 for p in found}  # the -wal and -shm files too
    finally:
        await store.aclose()


async def test_sqlite_schema_is_migrated_once_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    for _ in range(2):
        store = SQLiteKeyStore(path)
        await store.open()
        await store.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_migrations").fetchall() == [(1,)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        columns = [row[1] for row in conn.execute("PRAGMA table_info(api_keys)")]
    conn.close()
    assert columns == ["id", "tenant", "name", "digest", "hint", "created_at", "expires_at", "revoked_at"]
    assert len(MIGRATIONS) == 1


async def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    store = SQLiteKeyStore(path)
    await store.open()
    await store.aclose()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (99, 0)")
    conn.close()
    store = SQLiteKeyStore(path)
    with pytest.raises(KeyStoreError, match="schema version 99"):
        await store.open()
    await store.aclose()  # harmless after a failed open


async def test_sqlite_refuses_a_second_open(sqlite_store: SQLiteKeyStore) -> None:
    with pytest.raises(KeyStoreError, match="already open"):
        await sqlite_store.open()


async def test_sqlite_stores_the_digest_as_a_unique_blob(sqlite_store: SQLiteKeyStore, tmp_path: Path) -> None:
    _, secret = await sqlite_store.create("acme", "ci", None, NOW)
    with sqlite3.connect(tmp_path / "keys.db") as conn:
        [(stored,)] = conn.execute("SELECT digest FROM api_keys").fetchall()
        assert stored == digest(secret)
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO api_keys VALUES ('key_x', 'acme', '', ?, '', 0, NULL, NULL)", (digest(secret),))
    conn.close()


async def test_sqlite_lookups_reload_only_after_a_commit(tmp_path: Path, sqlite_store: SQLiteKeyStore) -> None:
    _, secret = await sqlite_store.create("acme", "ci", None, NOW)
    assert await sqlite_store.lookup(digest(secret)) is not None
    loaded = sqlite_store._keys
    for _ in range(100):
        await sqlite_store.lookup(digest(secret))
    assert sqlite_store._keys is loaded  # nothing changed: no reload
    other = SQLiteKeyStore(tmp_path / "keys.db")
    await other.open()
    try:
        await other.create("acme", "other", None, NOW)
    finally:
        await other.aclose()
    await sqlite_store.lookup(digest(secret))
    assert sqlite_store._keys is not loaded


async def test_sqlite_lookup_stays_cheap(sqlite_store: SQLiteKeyStore) -> None:
    """On the event loop: a dict hit plus PRAGMA data_version, a few microseconds. The bound is
    loose (CI machines are slow and shared); a regression to real I/O would be ~100x."""
    for i in range(200):
        _, secret = await sqlite_store.create("acme", f"k{i}", None, NOW)
    key_digest = digest(secret)
    await sqlite_store.lookup(key_digest)
    n = 5000
    started = time.perf_counter()
    for _ in range(n):
        await sqlite_store.lookup(key_digest)
    per_lookup = (time.perf_counter() - started) / n
    assert per_lookup < 100e-6, f"{per_lookup * 1e6:.1f} µs per lookup"


async def test_sqlite_sees_a_key_made_by_another_process(tmp_path: Path, sqlite_store: SQLiteKeyStore) -> None:
    script = (
        "import asyncio, sys\n"
        "from turnout.control.keys.sqlite import SQLiteKeyStore\n"
        "async def main():\n"
        "    store = SQLiteKeyStore(sys.argv[1])\n"
        "    await store.open()\n"
        "    key, secret = await store.create('acme', 'cli', None, 1.0)\n"
        "    await store.aclose()\n"
        "    print(secret)\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(tmp_path / "keys.db"), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    found = await sqlite_store.lookup(digest(out.decode().strip()))
    assert found is not None
    assert found.name == "cli"


# --- Redis only -------------------------------------------------------------------------------


async def test_redis_layout_is_two_hashes(redis_client: aioredis.Redis, redis_prefix: str) -> None:
    store = RedisKeyStore(REDIS_URL, redis_prefix)
    await store.open()
    try:
        key, secret = await store.create("acme", "ci", None, NOW)
    finally:
        await store.aclose()
    hexdigest = digest(secret).hex().encode()
    assert await redis_client.hgetall(f"{redis_prefix}:keyids") == {key.id.encode(): hexdigest}
    [(field, record)] = (await redis_client.hgetall(f"{redis_prefix}:keys")).items()
    assert field == hexdigest
    assert orjson.loads(record)["tenant"] == "acme"


async def test_redis_revocation_keeps_times_exact(redis_prefix: str, redis_client: aioredis.Redis) -> None:
    store = RedisKeyStore(REDIS_URL, redis_prefix)
    await store.open()
    try:
        created, expires, revoked_at = 1_747_000_000.123456789, 1_747_086_400.987654321, 1_747_000_123.000001
        key, secret = await store.create("acme", "ci", expires, created)
        revoked = await store.revoke(key.id, revoked_at)
        found = await store.lookup(digest(secret))
    finally:
        await store.aclose()
    assert revoked == found
    assert found is not None
    assert (found.created_at, found.expires_at, found.revoked_at) == (created, expires, revoked_at)


async def test_redis_unreachable_is_a_key_store_error_without_the_password(caplog: pytest.LogCaptureFixture) -> None:
    store = RedisKeyStore("redis://:hunter2@127.0.0.1:1/0", "x", timeout_s=1.0)
    with pytest.raises(KeyStoreError) as caught:
        await store.open()  # a command: at once
    assert "hunter2" not in str(caught.value)
    await store.open(serving=True)  # a gateway starting: a warning, not a gateway that cannot start
    assert "issued keys are refused" in caplog.text
    with pytest.raises(KeyStoreError) as caught:
        await store.lookup(digest("tk-anything"))
    assert "hunter2" not in str(caught.value) and "hunter2" not in caplog.text
    assert caught.value.status == 503
    await store.aclose()


async def test_redis_waits_for_a_stalled_redis_no_longer_than_the_limiter(redis_prefix: str) -> None:
    """A stalled Redis fails a request's key check (503) as soon as its quota check would, not
    after seconds of a request hanging: one bound for both, from the same limits section."""
    cfg = LimitsConfig(backend="redis", redis_url=REDIS_URL, key_prefix=redis_prefix)
    store, limiter = RedisKeyStore.from_config(cfg), RedisLimiter.from_config(cfg)
    await store.open()
    try:
        kwargs = store._open().connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == limiter.batcher.timeout
        assert limiter.ping_timeout_s == limiter.batcher.timeout
    finally:
        await store.aclose()
        await limiter.aclose()


# --- the factory ------------------------------------------------------------------------------


def test_the_memory_backend_keeps_keys_in_sqlite_at_keys_path(tmp_path: Path) -> None:
    store = open_key_store(LimitsConfig(keys_path=str(tmp_path / "k.db")))
    assert isinstance(store, SQLiteKeyStore)
    assert store.path == str(tmp_path / "k.db")


def test_the_redis_backend_keeps_keys_in_redis() -> None:
    store = open_key_store(LimitsConfig(backend="redis", redis_url="redis://r:6379/2", key_prefix="gw"))
    assert isinstance(store, RedisKeyStore)
    assert (store.url, store.keys_key, store.ids_key) == ("redis://r:6379/2", "gw:keys", "gw:keyids")


def test_the_redis_backend_without_the_driver_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "turnout.control.keys.redis")
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ConfigError, match=r"limits.backend: redis needs redis: pip install 'turnout\[redis\]'"):
        open_key_store(LimitsConfig(backend="redis"))


def test_issued_key_is_frozen() -> None:
    key = IssuedKey(id="key_1", tenant="acme", name="", created_at=NOW)
    with pytest.raises(AttributeError):
        key.tenant = "bravo"  # type: ignore[misc]
