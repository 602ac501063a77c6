"""A replica started while its PostgreSQL does not answer (a fleet coming up in any order, a
failover), on a real ``turnout serve`` reaching real PostgreSQL through a TCP proxy that is cut
before it starts: it starts unready (``/healthz`` 200, ``/readyz`` 503 naming what it waits
for), keeps its rows in the spill journal, and is ready once PostgreSQL answers, each row
written once. It exited 1 (3 as a worker) at the first refused connection."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.fakes.tcp_proxy import FaultProxy
from tests.serving import Process, free_port, wait_http
from tests.test_ledger_store import POSTGRES_DSN, drop_schema, needs_postgres, postgres_sql, unique_schema

pytestmark = [pytest.mark.slow, needs_postgres]

KEY = "sk-nopg-acme-0123456789abcdef"
BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
READY_S = 120.0  # how long PostgreSQL's return may take to be noticed: generous, never asserted on


def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def chat(port: int) -> tuple[int, dict[str, Any], str]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json.dumps(BODY).encode(),
        {"content-type": "application/json", "authorization": f"Bearer {KEY}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback test URL
            return resp.status, json.loads(resp.read()), resp.headers["x-turnout-request-id"]
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers["x-turnout-request-id"]


@contextmanager
def gateway_without_postgres(tmp_path: Path, *, shared_state: bool) -> Iterator[tuple[int, FaultProxy, str]]:
    """``turnout serve`` whose PostgreSQL (ledger, and with ``shared_state`` releases and the
    rest) is behind a proxy cut before it starts; its port, the proxy and the schema."""
    url = urlsplit(POSTGRES_DSN)
    schema = unique_schema()
    upstream = Process("tests.fakes.upstream", ready_path="/v1/models")
    (tmp_path / "releases").mkdir()
    try:
        with FaultProxy(url.port or 5432, url.hostname or "127.0.0.1") as proxy:
            proxy.cut()
            dsn = urlunsplit(url._replace(netloc=f"{url.username or 'postgres'}@127.0.0.1:{proxy.port}"))
            config: dict[str, Any] = {
                "store": {"kind": "postgres", "dsn": dsn, "pg_schema": schema, "flush_interval_ms": 10},
                "releases": {"path": str(tmp_path / "releases"), "store_path": str(tmp_path / "releases.db")},
                "targets": {"up": {"provider": "openai", "base_url": upstream.url + "/v1", "model": "m"}},
                "tenants": {"acme": {"keys": [KEY]}},
                "tasks": {"chat": {"route": ["up"]}},
            }
            if shared_state:
                config["state"] = {"kind": "postgres"}
            path = tmp_path / "turnout.yaml"
            path.write_text(json.dumps(config))
            port = free_port()
            with (tmp_path / "turnout.log").open("wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "turnout", "serve", "--config", str(path), "--port", str(port)],
                    cwd=tmp_path,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            try:
                wait_http(f"http://127.0.0.1:{port}/healthz", 60, proc)
                yield port, proxy, schema
            finally:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn ends by its signal
    finally:
        upstream.stop()
        asyncio.run(drop_schema(schema))


def wait_ready(port: int) -> dict[str, Any]:
    deadline = time.monotonic() + READY_S
    while True:
        status, body = get(port, "/readyz")
        if status == 200 or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def rows(schema: str, ids: list[str]) -> dict[str, int]:
    """Each id's row count in the ledger, once all are there (or the deadline passed)."""
    deadline = time.monotonic() + READY_S
    while True:
        found = asyncio.run(
            postgres_sql(schema, "SELECT request_id, count(*) FROM requests WHERE request_id = ANY($1) GROUP BY 1", ids)
        )
        counts = {str(r[0]): int(r[1]) for r in found}
        if len(counts) == len(ids) or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


def test_shared_state_on_postgres_starts_unready_and_refuses_until_it_answers(tmp_path: Path) -> None:
    with gateway_without_postgres(tmp_path, shared_state=True) as (port, proxy, schema):
        status, body = get(port, "/readyz")
        assert status == 503
        waiting = {"config": "ok", "ledger": "unreachable", "state": "unreachable"}
        assert body == {"status": "unready", "checks": waiting}
        refused, answer, early = chat(port)
        assert refused == 503 and answer["error"]["code"] == "not_ready", answer  # never served without its releases
        proxy.restore()
        assert wait_ready(port) == {"status": "ready", "checks": {"config": "ok", "ledger": "ok", "state": "ok"}}
        served, answer, later = chat(port)
        assert served == 200, answer
        assert rows(schema, [early, later]) == {early: 1, later: 1}  # the refusal's row, through the journal
    log = (tmp_path / "turnout.log").read_text()
    assert "the shared state opened after" in log and "Traceback" not in log


def test_a_ledger_on_postgres_serves_meanwhile_and_replays_its_rows(tmp_path: Path) -> None:
    """Releases on this machine, the ledger alone on PostgreSQL: requests are answered while it
    is down, their rows kept in the spill journal, and each lands once when it answers."""
    with gateway_without_postgres(tmp_path, shared_state=False) as (port, proxy, schema):
        status, body = get(port, "/readyz")
        assert status == 503 and body["checks"] == {"config": "ok", "ledger": "unreachable"}
        answered = []
        for _ in range(5):
            code, answer, request_id = chat(port)
            assert code == 200, answer
            answered.append(request_id)
        proxy.restore()
        assert wait_ready(port)["status"] == "ready"
        assert rows(schema, answered) == dict.fromkeys(answered, 1)
