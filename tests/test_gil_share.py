"""A loop that is never idle must not starve the ledger's thread (``serving.server.share_the_gil``).

Cache hits answered in process never wait on a socket: the loop's thread holds the GIL from one
request to the next. With Python's 5 ms switch interval the SQLite writer, which asks for the
GIL again after every statement, fell behind: its writes ran past 100 ms, rows went to the spill
journal (whose thread starved the same way) and then the 10,000-row queue dropped them (20,721
of 32,000 rows in one run here). With the interval ``turnout serve`` sets, every row is written."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.asgi import request
from tests.conftest import AppFactory
from tests.fakes.scripted import ScriptedProvider
from turnout.config import validate
from turnout.observe import logs
from turnout.serving import server
from turnout.serving.server import SWITCH_INTERVAL_S, share_the_gil

HITS = 20_000
BODY = {"model": "chat", "messages": [{"role": "user", "content": "Where is my order?"}], "temperature": 0}


async def test_hits_on_a_loop_that_is_never_idle_lose_no_ledger_row(make_app: AppFactory, tmp_path: Path) -> None:
    ledger_db = tmp_path / "ledger.db"
    before = share_the_gil()
    try:
        assert sys.getswitchinterval() == SWITCH_INTERVAL_S
        app = await make_app(
            {
                "store": {"kind": "sqlite", "path": str(ledger_db), "flush_interval_ms": 10},
                "targets": {"up": {"provider": "openai", "base_url": "http://up.invalid/v1", "model": "m"}},
                "tasks": {"chat": {"route": ["up"], "cache": {"ttl_s": 3600, "classes": ["public", "internal"]}}},
            },
            {"up": ScriptedProvider("up")},
        )
        first = await request(app, "POST", "/v1/chat/completions", BODY)
        assert first.headers["x-turnout-cache"] == "miss"
        for i in range(HITS):  # no request here waits on anything: only this yields the loop
            answer = await request(app, "POST", "/v1/chat/completions", BODY)
            assert answer.status == 200
            if i % 32 == 0:
                await asyncio.sleep(0)
        assert answer.headers["x-turnout-cache"] == "hit"
        ledger = app.runtime.ledger
        assert ledger is not None
        assert ledger.dropped == 0
        for _ in range(200):  # the writer catches up (and replays anything it spilled)
            if ledger.queued == 0 and not ledger.spilling:
                break
            await asyncio.sleep(0.05)
        assert ledger.dropped == 0 and ledger.written == HITS + 1
    finally:
        sys.setswitchinterval(before)
    with sqlite3.connect(ledger_db) as conn:
        hits, rows = conn.execute("SELECT SUM(cache_hit), COUNT(*) FROM requests").fetchone()
    assert (hits, rows) == (HITS, HITS + 1)


def test_turnout_serve_shares_the_gil_before_it_serves(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[float] = []
    monkeypatch.setattr(server._Server, "run", lambda self, sockets=None: seen.append(sys.getswitchinterval()))
    # The process's logging is left as the other tests have it: no listener, no redacting filters.
    monkeypatch.setattr(logs, "configure", lambda *args, **kwargs: SimpleNamespace(stop=lambda: None))
    monkeypatch.setattr(server, "redact_logs", lambda config: None)
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        server.run(
            validate(
                {
                    "store": {"kind": "memory"},
                    "releases": {"store_path": str(tmp_path / "r.db")},
                    "targets": {"up": {"provider": "openai", "base_url": "http://up.invalid/v1", "model": "m"}},
                    "tasks": {"chat": {"route": ["up"]}},
                }
            )
        )
    finally:
        sys.setswitchinterval(before)
    assert seen == [SWITCH_INTERVAL_S]
