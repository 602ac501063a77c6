"""Routes that read or write a store directly (feedback, tickets, the review queue) while the
store does not answer: a replica started while PostgreSQL was down (``serving/waiting.py``), or
PostgreSQL gone since. Each is a 503 in OpenAI's shape with Retry-After, never a 500."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.asgi import request
from tests.fakes.scripted import ScriptedProvider
from tests.fakes.tcp_proxy import FaultProxy
from tests.test_ledger_store import POSTGRES_DSN, drop_schema, needs_postgres, unique_schema
from turnout.config import validate
from turnout.serving.app import App

pytestmark = needs_postgres

KEY = "sk-acme-storesdown-0123456789"
ADMIN = "adm-storesdown-0123456789abcdef"
FEEDBACK = {"request_id": "chatcmpl-0123456789abcdef", "outcome": "success"}


def app_over(proxy: FaultProxy, schema: str, tmp_path: Path, *, shared: bool = True) -> App:
    """The ledger on PostgreSQL behind ``proxy``; with ``shared``, the review queue and capture too
    (else none: nothing is written beside the working directory)."""
    url = urlsplit(POSTGRES_DSN)
    dsn = urlunsplit(url._replace(netloc=f"{url.username or 'postgres'}@127.0.0.1:{proxy.port}"))
    raw: dict[str, Any] = {
        "server": {"admin_key": ADMIN},
        "store": {"kind": "postgres", "dsn": dsn, "pg_schema": schema, "spill_dir": str(tmp_path / "spill")},
        "limits": {"keys_path": str(tmp_path / "keys.db")},
        "targets": {"up": {"provider": "openai", "base_url": "http://up.invalid/v1", "model": "m"}},
        "tenants": {"acme": {"keys": [KEY]}},
        "tasks": {"chat": {"route": ["up"]}},
    }
    if shared:  # the review queue and capture on PostgreSQL too
        raw |= {"state": {"kind": "postgres"}, "capture": {"mode": "full"}}
        raw["tasks"]["chat"]["review_rate"] = 1.0
    return App(validate(raw), {"up": ScriptedProvider("up")})


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    url = urlsplit(POSTGRES_DSN)
    with FaultProxy(url.port or 5432, url.hostname or "127.0.0.1") as fault:
        yield fault


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    name = unique_schema()
    yield name
    await drop_schema(name)


def assert_unavailable(resp: Any) -> None:
    assert resp.status == 503, resp.json()
    assert int(resp.headers["retry-after"]) >= 1
    error = resp.json()["error"]
    assert error["type"] == "api_error" and error["code"] in {"store_unavailable", "not_ready"}
    assert "5432" not in error["message"] and "Errno" not in error["message"]  # no topology for tenants


async def test_feedback_while_the_ledger_has_never_opened_is_503(
    proxy: FaultProxy, schema: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proxy.cut()
    app = app_over(proxy, schema, tmp_path)
    await app.runtime.start()  # unready: the ledger and the shared state wait for PostgreSQL
    try:
        with caplog.at_level(logging.WARNING, "turnout"):
            resp = await request(app, "POST", "/v1/feedback", FEEDBACK, {"authorization": f"Bearer {KEY}"})
        assert_unavailable(resp)
        assert not any("internal error" in m for m in caplog.messages)
        admin = {"authorization": f"Bearer {ADMIN}"}
        assert_unavailable(await request(app, "GET", "/admin/review", headers=admin))
        assert_unavailable(await request(app, "POST", "/admin/review/1", {"label": "accept", "by": "me"}, admin))
        assert_unavailable(
            await request(app, "GET", "/v1/tasks/chat/tickets/abc", headers={"authorization": f"Bearer {KEY}"})
        )
    finally:
        await app.runtime.aclose()


async def test_feedback_once_postgresql_has_gone_is_503(
    proxy: FaultProxy, schema: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = app_over(proxy, schema, tmp_path, shared=False)
    await app.runtime.start()
    try:
        assert not app.runtime.waiting
        proxy.cut()
        await asyncio.sleep(0)
        with caplog.at_level(logging.WARNING, "turnout"):
            resp = await request(app, "POST", "/v1/feedback", FEEDBACK, {"authorization": f"Bearer {KEY}"})
        assert_unavailable(resp)
        assert not any("internal error" in m for m in caplog.messages)
    finally:
        proxy.restore()
        await app.runtime.aclose()


async def test_a_gateway_closes_cleanly_once_postgresql_has_gone(
    proxy: FaultProxy, schema: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A shutdown while PostgreSQL is gone: the purge jobs cannot hand their run claims back
    (they lapse on their own), which is a warning, not an exception out of the runtime's close
    that left what it had not closed yet open."""
    app = app_over(proxy, schema, tmp_path)
    await app.runtime.start()
    assert not app.runtime.waiting
    proxy.cut()
    with caplog.at_level(logging.WARNING, "turnout"):
        await app.runtime.aclose()
    claims = [m for m in caplog.messages if "run claim" in m]
    assert claims and all("lapses within" in m and str(proxy.port) not in m for m in claims)  # no topology
