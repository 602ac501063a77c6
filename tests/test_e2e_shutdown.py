"""SIGTERM under load: every request that got an answer has its ledger row after the drain."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.serving import Process, sdk_client, turnout_serve

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


def test_a_forced_quit_still_cuts_what_runs_and_writes_every_row(tmp_path: Path) -> None:
    """A second Ctrl-C while draining: uvicorn stops waiting and would skip the runtime's close,
    losing the rows in flight and in the ledger's queue. Forced, the stream still running is cut
    (503 ``shutting_down``) and every row is written before the process exits."""
    upstream = Process("tests.fakes.upstream", ready_path="/v1/models")
    try:
        upstream.post("/_reply", {"text": [f"w{i} " for i in range(40)]})
        upstream.post("/_fault", {"mode": "ok", "chunk_delay": 0.25})
        config = {
            "server": {"shutdown_grace_s": 60},
            "store": {"batch_size": 64, "flush_interval_ms": 60_000},  # rows wait in the queue
            "targets": {"up": {"provider": "openai", "base_url": upstream.url + "/v1", "model": "m"}},
            "tasks": {"chat": {"route": ["up"]}},
        }
        path = tmp_path / "turnout.yaml"
        path.write_text(json.dumps(config))
        messages: list[Any] = [{"role": "user", "content": "hi"}]
        with turnout_serve(tmp_path, path) as served:
            client = sdk_client(served.base_url, "anonymous")
            stream = client.chat.completions.create(model="chat", messages=messages, stream=True)
            first = next(iter(stream))
            served.proc.send_signal(signal.SIGINT)
            time.sleep(0.5)
            served.proc.send_signal(signal.SIGINT)  # "CTRL+C to force quit"
            with pytest.raises(openai.APIError, match="shutting down"):
                for _ in stream:
                    pass
            served.proc.wait(15)  # it exits, well within the grace
            log = served.log.read_text()
        with sqlite3.connect(tmp_path / ".turnout" / "turnout.db") as conn:
            rows = dict(conn.execute("SELECT request_id, status FROM requests").fetchall())
        assert rows == {first.id.removeprefix("chatcmpl-"): 503}
        assert "Exception in 'lifespan' protocol" not in log
    finally:
        upstream.stop()
