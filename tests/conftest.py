from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serving import close_sdk_clients
from turnout.config import validate
from turnout.providers.base import Provider
from turnout.serving.app import App

AppFactory = Callable[..., Awaitable[App]]


@pytest.fixture(autouse=True, scope="module")
def _close_sdk_clients() -> Iterator[None]:
    yield
    close_sdk_clients()


@pytest.fixture
async def make_app(tmp_path: Path) -> AsyncIterator[AppFactory]:
    """Build and start an App from a config mapping, with fake providers injected by target
    name and the ledger in memory unless the config says otherwise."""
    apps: list[App] = []

    async def factory(raw: dict[str, Any], providers: dict[str, Provider] | None = None) -> App:
        limits = {"keys_path": str(tmp_path / "keys.db"), **raw.get("limits", {})}
        # State (releases, reviews, the cache's purge log) in the test's own directory.
        releases = {"store_path": str(tmp_path / "releases.db"), **raw.get("releases", {})}
        raw = {"store": {"kind": "memory", "flush_interval_ms": 10}, **raw, "limits": limits, "releases": releases}
        app = App(validate(raw), providers)
        await app.runtime.start()
        app.ready = True
        apps.append(app)
        return app

    yield factory
    for app in apps:
        await app.runtime.aclose()
