"""SIGTERM under load: every request that got an answer has its ledger row after the drain."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from tests.serving import Process, turnout_serve

pytestmark = pytest.mark.slow


def test_every_answered_request_has_its_row_after_sigterm(tmp_path: Path) -> None:
    upstream = Process("tests.fakes.upstream", ready_path="/v1/models")
    try:
        # Each answer takes a little while, so many are in flight when the signal lands.
        upstream.post("/_fault", {"mode": "ok", "head_delay": 0.05})
        config = {
            "store": {"batch_size": 64, "flush_interval_ms": 5000},  # rows wait in the queue
            "targets": {"up": {"provider": "openai", "base_url": upstream.url + "/v1", "model": "m"}},
            "tasks": {"chat": {"route": ["up"]}},
        }
        path = tmp_path / "turnout.yaml"
        path.write_text(json.dumps(config))
        with turnout_serve(tmp_path, path) as served:
            answered = asyncio.run(_load_then_sigterm(served.base_url, served.proc.pid))
            served.proc.wait(30)
        assert len(answered) >= 50  # the load was real
        db = tmp_path / ".turnout" / "turnout.db"
        with sqlite3.connect(db) as conn:
            stored = {r[0] for r in conn.execute("SELECT request_id FROM requests")}
        missing = answered - stored
        assert not missing, f"{len(missing)} answered requests have no ledger row"
    finally:
        upstream.stop()


async def _load_then_sigterm(base_url: str, pid: int) -> set[str]:
    answered: set[str] = set()
    busy = asyncio.Event()  # set once 100 requests were answered: load is well under way
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}

    async def client(http: aiohttp.ClientSession) -> None:
        for _ in range(40):
            try:
                async with http.post(base_url + "/chat/completions", json=body) as resp:
                    await resp.read()
                    if "x-turnout-request-id" in resp.headers:
                        answered.add(resp.headers["x-turnout-request-id"])
                        if len(answered) >= 100:
                            busy.set()
            except aiohttp.ClientError:
                return  # the server stopped accepting: this client is done

    async with aiohttp.ClientSession() as http:
        clients = [asyncio.create_task(client(http)) for _ in range(32)]
        await busy.wait()
        os.kill(pid, signal.SIGTERM)
        await asyncio.gather(*clients)
    return answered
