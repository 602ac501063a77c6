"""Tenant identity from the API key; keys held only as SHA-256 digests."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from turnout.config import DATA_CLASSES, validate
from turnout.control.auth import ANONYMOUS, Authenticator, digest
from turnout.control.keys.base import IssuedKey, KeyStoreError
from turnout.errors import AuthError

KEY = "sk-acme-0123456789"
KEY2 = "sk-acme-second-key"
OTHER_KEY = "sk-other-0123456789"


def config(tenants: dict[str, Any] | None = None) -> Any:
    raw: dict[str, Any] = {
        "targets": {"vllm": {"provider": "openai", "base_url": "http://vllm/v1", "model": "m"}},
        "tasks": {"chat": {"route": ["vllm"]}, "private": {"route": ["vllm"]}},
    }
    if tenants is not None:
        raw["tenants"] = tenants
    return validate(raw)


def auth() -> Authenticator:
    return Authenticator(
        config(
            {
                "acme": {"keys": [KEY, KEY2], "data_classes": ["public", "internal", "restricted"]},
                "other": {"keys": [OTHER_KEY], "tasks": ["chat"]},
            }
        )
    )


def test_digest_is_sha256() -> None:
    assert digest(KEY) == hashlib.sha256(KEY.encode()).digest()


def test_keys_are_held_only_as_digests() -> None:
    a = auth()
    held = vars(a) if hasattr(a, "__dict__") else {}
    assert KEY not in repr(held)
    assert set(a._by_digest) == {digest(KEY), digest(KEY2), digest(OTHER_KEY)}


def test_a_key_names_its_tenant() -> None:
    a = auth()
    tenant = a.authenticate(f"Bearer {KEY}".encode())
    assert tenant.name == "acme"
    assert tenant.data_classes == {"public", "internal", "restricted"}
    assert tenant.tasks is None
    assert tenant.may_use("anything")
    assert a.authenticate(f"Bearer {KEY2}".encode()) == tenant


def test_a_tenant_limited_to_tasks() -> None:
    tenant = auth().authenticate(f"Bearer {OTHER_KEY}".encode())
    assert tenant.name == "other"
    assert tenant.data_classes == {"public", "internal"}  # the config's default
    assert tenant.may_use("chat")
    assert not tenant.may_use("private")


@pytest.mark.parametrize("header", [f"bearer {KEY}", f"BEARER {KEY}", f"Bearer  {KEY} "])
def test_scheme_case_and_surrounding_spaces_are_tolerated(header: str) -> None:
    assert auth().authenticate(header.encode()).name == "acme"


@pytest.mark.parametrize("header", [None, b""])
def test_a_missing_key_is_refused(header: bytes | None) -> None:
    with pytest.raises(AuthError) as info:
        auth().authenticate(header)
    assert info.value.status == 401
    assert info.value.type == "authentication_error"
    assert "missing API key" in info.value.message


@pytest.mark.parametrize(
    "header", [KEY.encode(), b"Basic dXNlcjpwYXNz", b"Bearer", b"Bearer    ", b"Token " + KEY.encode()]
)
def test_a_malformed_header_is_refused(header: bytes) -> None:
    with pytest.raises(AuthError) as info:
        auth().authenticate(header)
    assert "malformed" in info.value.message


@pytest.mark.parametrize("key", ["sk-wrong-0123456789", KEY[:-1], KEY + "x", KEY.upper()])
def test_a_wrong_key_is_refused_without_echoing_it(key: str) -> None:
    with pytest.raises(AuthError) as info:
        auth().authenticate(f"Bearer {key}".encode())
    assert info.value.message == "invalid API key"
    assert key not in str(info.value)


def test_non_ascii_header_bytes_do_not_crash() -> None:
    with pytest.raises(AuthError):
        auth().authenticate(b"Bearer \xff\xfe")


def test_without_tenants_everyone_is_anonymous() -> None:
    a = Authenticator(config())
    assert a.anonymous
    for header in (None, b"", b"Bearer whatever", b"garbage"):
        assert a.authenticate(header) is ANONYMOUS
    assert ANONYMOUS.data_classes == frozenset(DATA_CLASSES)
    assert ANONYMOUS.may_use("anything")


def test_with_tenants_nobody_is_anonymous() -> None:
    assert not auth().anonymous


class _Issued:
    """A key store with one issued key that the test revokes."""

    def __init__(self, key: str) -> None:
        self.digest = digest(key)
        self.revoked_at: float | None = None

    async def lookup(self, key_digest: bytes) -> Any:
        if key_digest != self.digest:
            return None
        return IssuedKey(id="k1", tenant="acme", name="ci", created_at=0.0, revoked_at=self.revoked_at)


async def test_a_config_key_is_recognised_again_without_hashing_it() -> None:
    a = auth()
    header = f"Bearer {KEY}".encode()
    assert (await a.identify(header, 0.0)).name == "acme"
    assert a._seen == {header: a.tenants["acme"]}
    assert (await a.identify(header, 0.0)).name == "acme"
    with pytest.raises(AuthError):
        await a.identify(b"Bearer sk-wrong", 0.0)
    assert len(a._seen) == 1  # wrong keys are never remembered


async def test_an_issued_key_is_looked_up_every_time_so_a_revocation_holds_at_once() -> None:
    store = _Issued("sk-issued-123")
    a = Authenticator(config({"acme": {"keys": [KEY]}}), store)  # type: ignore[arg-type]
    header = b"Bearer sk-issued-123"
    assert (await a.identify(header, 0.0)).name == "acme"
    assert a._seen == {}
    store.revoked_at = 1.0
    with pytest.raises(AuthError, match="revoked"):
        await a.identify(header, 2.0)


async def test_the_remembered_spellings_are_bounded() -> None:
    a = auth()
    for n in range(1100):
        await a.identify(b"Bearer " + KEY.encode() + b" " * n, 0.0)
    assert len(a._seen) == 1024


class _Down:
    """A key store that cannot be reached, its error naming where it is."""

    calls = 0

    async def lookup(self, key_digest: bytes) -> Any:
        self.calls += 1
        raise KeyStoreError("Redis key store: ConnectionError: Error 111 connecting to redis.internal:6390.")


async def test_a_key_store_that_fails_is_a_503_that_does_not_say_where_it_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _Down()
    a = Authenticator(config({"acme": {"keys": [KEY]}}), store)  # type: ignore[arg-type]
    for _ in range(5):
        with pytest.raises(KeyStoreError) as caught:
            await a.identify(b"Bearer anything-at-all", 0.0)  # anyone may send a key
        assert caught.value.status == 503
        assert "redis.internal" not in str(caught.value) and "6390" not in str(caught.value)
    assert store.calls == 5
    logged = [r.getMessage() for r in caplog.records if "issued keys cannot be checked" in r.getMessage()]
    assert len(logged) == 1 and "redis.internal:6390" in logged[0]  # the operator's, once in a while
