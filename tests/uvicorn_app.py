"""The App behind a real uvicorn in the test's event loop, with the official openai SDK pointed
at it, and the ledger once its writer has caught up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai
import uvicorn

from tests.conftest import AppFactory
from tests.serving import free_port
from turnout.ledger.record import LedgerRow
from turnout.serving.app import App


@asynccontextmanager
async def gateway(make_app: AppFactory, raw: dict[str, Any], key: str) -> AsyncIterator[tuple[App, openai.AsyncOpenAI]]:
    """The App behind a real uvicorn on a free port, and the official SDK pointed at it."""
    app = await make_app(raw)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn has a flag, no event
        await asyncio.sleep(0.01)
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
    try:
        yield app, client
    finally:
        await client.close()
        server.should_exit = True
        await task


async def rows(app: App, count: int) -> list[LedgerRow]:
    store = app.runtime.store
    assert store is not None
    for _ in range(2000):
        if await store.count() >= count:
            break
        await asyncio.sleep(0.005)
    return await store.recent(1000)
