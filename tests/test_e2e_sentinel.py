"""The sentinel suite: prompts (and answers) carrying an email, a card number, an AWS key and a
password go through `turnout serve` in every capture mode, with the ledger in SQLite or in
PostgreSQL, metrics scraped and traces exported. Under `metadata` and `redacted` none of those
strings appears in any table, log line, metric or span; under `full`, with an audited grant,
the text is kept but its secrets are still scrubbed."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.serving import Process, free_port, sdk_client, turnout_serve

pytestmark = pytest.mark.slow

EMAIL = "sentinel.person@example.com"
CARD = "4111 1111 1111 1111"
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
PASSWORD = "Hunter2-Sentinel!"
SECRETS = (AWS_KEY, PASSWORD)
PII = (EMAIL, CARD)
PROMPT = f"My email is {EMAIL}, card {CARD}. Our key is {AWS_KEY} and password: {PASSWORD} — help?"
PG = "postgresql://postgres@127.0.0.1:5432/test"


class Collector(ThreadingHTTPServer):
    """An OTLP/HTTP endpoint that keeps the raw bodies it receives."""

    bodies: list[bytes]


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        assert isinstance(self.server, Collector)
        self.server.bodies.append(self.rfile.read(length))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    server = Collector(("127.0.0.1", free_port()), _Handler)
    server.bodies = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Process]:
    fake = Process("tests.fakes.upstream", ready_path="/v1/models")
    # A model that echoes what it was told: the answer carries the same strings.
    fake.post("/_reply", {"text": [f"Noted: {EMAIL}, {CARD}, {AWS_KEY}, ", f"password: {PASSWORD}"]})
    yield fake
    fake.stop()


def psql(sql: str) -> str:
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-At", "-c", sql],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


def pg_dump(schema: str) -> bytes:
    return subprocess.run(
        ["pg_dump", "-h", "127.0.0.1", "-U", "postgres", "-n", schema, "test"], capture_output=True, check=True
    ).stdout


def serve_and_ask(cwd: Path, config: dict[str, Any], grant: bool = False) -> tuple[bytes, Any]:
    """Run turnout with ``config``, send the sentinel prompt plain and streamed, scrape
    /metrics, stop it (SIGTERM drains everything); return the metrics text and the served."""
    path = cwd / "turnout.yaml"
    path.write_text(json.dumps(config))
    if grant:
        granted = subprocess.run(
            [sys.executable, "-m", "turnout", "capture", "grant", "--config", str(path), "--tenant", "acme",
             "--task", "support", "--minutes", "5", "--reason", "incident 42 debugging", "--by", "alice"],
            cwd=cwd, capture_output=True, text=True,
        )  # fmt: skip
        assert granted.returncode == 0, granted.stderr
    with turnout_serve(cwd, path, env={"TURNOUT_REDACTION_KEY": "sentinel-suite-key-0123456789"}) as served:
        client = sdk_client(served.base_url, "sk-acme-sentinel-01")
        messages: Any = [{"role": "user", "content": PROMPT}]
        client.chat.completions.create(model="support", messages=messages, user=EMAIL)
        for _ in client.chat.completions.create(model="support", messages=messages, stream=True):
            pass
        with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/metrics", timeout=5) as resp:
            metrics = resp.read()
        served.stop()
    return metrics, served


def config(upstream: Process, collector: Collector, mode: str, store: dict[str, Any]) -> dict[str, Any]:
    return {
        "server": {"log_level": "debug"},
        "store": store,
        "capture": {"rules": [{"tenant": "acme", "task": "support", "mode": mode}]},
        "observability": {"otlp_endpoint": f"http://127.0.0.1:{collector.server_address[1]}"},
        "targets": {"up": {"provider": "openai", "base_url": upstream.url + "/v1", "model": "m"}},
        "tenants": {"acme": {"keys": ["sk-acme-sentinel-01"], "data_classes": ["internal", "confidential"]}},
        "tasks": {"support": {"route": ["up"]}},
    }


def files_bytes(cwd: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in cwd.rglob("*") if p.is_file() and p.name != "turnout.yaml"}


def captured(cwd: Path) -> list[tuple[str, str, str]]:
    db = cwd / ".turnout" / "capture.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return [tuple(r) for r in conn.execute("SELECT mode, prompt_text, completion_text FROM captures")]


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
@pytest.mark.parametrize("mode", ["metadata", "redacted"])
def test_no_sentinel_anywhere(tmp_path: Path, upstream: Process, collector: Collector, store: str, mode: str) -> None:
    schema = f"sentinel_{uuid.uuid4().hex[:8]}"
    store_cfg: dict[str, Any] = (
        {"kind": "sqlite"} if store == "sqlite" else {"kind": "postgres", "dsn": PG, "pg_schema": schema}
    )
    collector.bodies.clear()
    try:
        metrics, _ = serve_and_ask(tmp_path, config(upstream, collector, mode, store_cfg))
        places: dict[str, bytes] = {str(p): data for p, data in files_bytes(tmp_path).items()}
        places["/metrics"] = metrics
        places["spans"] = b"".join(collector.bodies)
        assert collector.bodies, "no spans were exported"
        if store == "postgres":
            places["pg_dump"] = pg_dump(schema)
            assert b"support" in places["pg_dump"]  # the rows are there, without the text
        for where, data in places.items():
            for value in (*SECRETS, *PII):
                assert value.encode() not in data, f"{value!r} reached {where}"
        rows = captured(tmp_path)
        if mode == "metadata":
            assert rows == []
        else:
            assert len(rows) == 2 and all(r[0] == "redacted" for r in rows)
            assert "[EMAIL_" in rows[0][1] and "[AWS_ACCESS_KEY_" in rows[0][1] and "[CARD_" in rows[0][2]
    finally:
        if store == "postgres":
            psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_full_capture_needs_a_grant_keeps_pii_and_scrubs_secrets(
    tmp_path: Path, upstream: Process, collector: Collector
) -> None:
    raw = config(upstream, collector, "full", {"kind": "sqlite"})
    without = tmp_path / "without"
    without.mkdir()
    serve_and_ask(without, raw)
    assert captured(without) == []  # full without a grant keeps nothing
    granted = tmp_path / "granted"
    granted.mkdir()
    serve_and_ask(granted, raw, grant=True)
    rows = captured(granted)
    assert len(rows) == 2 and all(r[0] == "full" for r in rows)
    prompt, answer = rows[0][1], rows[0][2]
    assert EMAIL in prompt and EMAIL in answer  # PII is what the grant was for
    for secret in SECRETS:
        for data in files_bytes(granted).values():
            assert secret.encode() not in data
    with sqlite3.connect(granted / ".turnout" / "capture.db") as conn:
        events = [r[0] for r in conn.execute("SELECT event FROM audit ORDER BY id")]
        by = conn.execute("SELECT actor FROM audit WHERE event = 'granted'").fetchone()[0]
    assert events[0] == "granted" and events.count("used") == 2 and by == "alice"
    logs = (granted / "turnout.log").read_bytes()
    for value in (*SECRETS, *PII):
        assert value.encode() not in logs
