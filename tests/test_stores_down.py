"""Routes that read or write a store directly (feedback, tickets, the review queue) while the
store does not answer: a replica started while PostgreSQL was down (``serving/waiting.py``), or
PostgreSQL gone since. Each is a 503 in OpenAI's shape with Retry-After, never a 500."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests import test_console as console
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


def app_over(proxy: FaultProxy, schema: str, tmp_path: Path, *, shared: bool = True, released: bool = False) -> App:
    """The ledger on PostgreSQL behind ``proxy``; with ``shared``, the review queue and capture too
    (else none: nothing is written beside the working directory); with ``released``, the release
    store as well, task chat's release v1 in it."""
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
    if released:
        folder = tmp_path / "releases" / "chat"
        folder.mkdir(parents=True)
        (folder / "v1.yaml").write_text("target: up\nmodel_version: v1\nprompt:\n  user: 'Say hi'\n")
        raw["releases"] = {"path": str(tmp_path / "releases")}
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


async def test_the_console_over_a_gone_postgresql_says_so_without_its_address(
    proxy: FaultProxy, schema: str, tmp_path: Path
) -> None:
    """The releases page is a 503 (it was the release store's 409 "release_conflict", naming the
    server), and a rollback's message says the store does not answer, not libpq's words."""
    app = app_over(proxy, schema, tmp_path, released=True)
    await app.runtime.start()
    try:
        assert app.runtime.release_store is not None
        cookie = await console.login(app, ADMIN)
        page = await console.get(app, "/ui/releases", cookie)
        assert page.status == 200
        proxy.cut()
        gone = await console.get(app, "/ui/releases", cookie)  # the console's own error page
        assert gone.status == 503 and str(proxy.port) not in gone.body.decode()
        form = f"csrf={console.csrf(page)}&why=outage"
        assert (await console.post(app, "/ui/releases/chat/rollback", form, cookie)).status == 303
        session = app.console.sessions.get(cookie.partition("=")[2], time.time())
        assert session is not None
        flash = app.console.sessions.take_flash(session, console.FLASHES.pop(cookie).encode())
        assert flash is not None and flash[0] == "error"
        assert "release store does not answer" in flash[1] and str(proxy.port) not in flash[1]
    finally:
        proxy.restore()
        await app.runtime.aclose()
