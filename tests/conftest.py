from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.serving import close_sdk_clients, free_port
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


@pytest.fixture
def own_redis() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A redis-server of this test's own, to stop, freeze or fill (never the shared one), and its port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield proc, port
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()


@asynccontextmanager
async def otlp_collector(traces: Callable[[Any], Awaitable[Any]]) -> AsyncIterator[str]:
    """An OTLP/HTTP collector whose ``POST /v1/traces`` is ``traces`` (an aiohttp handler); its
    base URL, for ``observability.otlp_endpoint``."""
    from aiohttp import web

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def collector() -> AsyncIterator[tuple[str, list[tuple[str, bytes]]]]:
    """A tiny OTLP/HTTP collector: records each POST to /v1/traces (its content type, its body)."""
    from aiohttp import web
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received: list[tuple[str, bytes]] = []

    async def traces(request: web.Request) -> web.Response:
        received.append((request.content_type, await request.read()))
        return web.Response(body=ExportTraceServiceRequest().SerializeToString(), content_type="application/x-protobuf")

    async with otlp_collector(traces) as url:
        yield url, received
