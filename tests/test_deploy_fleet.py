"""deploy/compose.yaml's laptop fleet without Docker: the same nginx.conf and turnout config,
their service names pointed at processes on this machine — nginx in front of two real
``turnout serve`` replicas sharing Redis and PostgreSQL, answering from the fake upstream the
compose file runs. A replica is SIGKILLed and nginx keeps every later request answered."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from tests.deployfiles import DEPLOY, compose
from tests.serving import Process, Served, free_port, turnout_serve, wait_http

pytestmark = pytest.mark.slow

PG = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"
TIGHT_KEY = "sk-fleet-tight-0123456789"
TIGHT_RPM = 3


def psql(sql: str) -> str:
    done = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-At", "-c", sql],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def gateway_services() -> dict[str, Any]:
    return {name: s for name, s in compose()["services"].items() if s.get("image") == "turnout:gateway"}


def local_config(upstream: str, schema: str, prefix: str) -> dict[str, Any]:
    """The compose turnout config, its service names replaced by this machine's addresses, in
    a schema and key prefix of its own; one tenant more with a tight RPM (the fleet's shared one)."""
    raw: dict[str, Any] = yaml.safe_load((DEPLOY / "compose" / "turnout.yaml").read_text())
    assert raw["targets"]["fake"]["base_url"] == "http://upstream:8001/v1"
    raw["targets"]["fake"]["base_url"] = f"{upstream}/v1"
    raw["store"] = {**raw["store"], "dsn": PG, "pg_schema": schema}
    raw["limits"] = {**raw["limits"], "redis_url": REDIS, "key_prefix": prefix}
    raw["tenants"]["tight"] = {"keys": [TIGHT_KEY], "limits": {"rpm": TIGHT_RPM}}
    return raw


def local_nginx(tmp: Path, listen: int, replicas: dict[str, int]) -> Path:
    """deploy/compose/nginx.conf with each compose gateway's name at its local port, and the
    server's own files under ``tmp`` (nginx here is not the container's)."""
    conf = (DEPLOY / "compose" / "nginx.conf").read_text()
    for name, port in replicas.items():
        conf, n = re.subn(rf"\bserver {re.escape(name)}:8080\b", f"server 127.0.0.1:{port}", conf)
        assert n == 1, name
    conf, n = re.subn(r"\blisten 8080;", f"listen 127.0.0.1:{listen};", conf)
    assert n == 1
    own = " ".join(f"{kind}_temp_path {tmp}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = conf.replace("http {", f"http {{\n  access_log off; {own}", 1)
    path = tmp / "nginx.conf"
    path.write_text(f"pid {tmp}/nginx.pid;\nerror_log {tmp}/error.log;\n{conf}")
    return path


@contextmanager
def nginx(conf: Path, port: int) -> Iterator[str]:
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-g", "daemon off;"])
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 20, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGQUIT)
        proc.wait(20)


def worker(base: str) -> str:
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as resp:  # noqa: S310 - loopback
        return str(resp.headers["x-turnout-worker"])


def ask(client: openai.OpenAI) -> str:
    answer = client.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}])
    assert answer.model == "default"
    return answer.id


def wait_rows(schema: str, count: int, deadline_s: float = 30.0) -> int:
    """Rows in the schema's ledger once there are ``count`` (or the deadline passed)."""
    end = time.monotonic() + deadline_s
    rows = 0
    while time.monotonic() < end:
        rows = int(psql(f"SELECT count(*) FROM {schema}.requests"))  # noqa: S608 - the test's own schema name
        if rows >= count:
            break
        time.sleep(0.1)
    return rows


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[str, list[Served], str]]:
    if shutil.which("nginx") is None or shutil.which("psql") is None:
        pytest.skip("needs nginx and psql (Debian: apt-get install nginx postgresql-client)")
    schema = f"fleet_{uuid.uuid4().hex[:8]}"
    upstream = Process("tests.fakes.upstream", "--model", "fake-model")
    try:  # the fake upstream stops whatever fails after it started
        config = tmp_path / "turnout.yaml"
        config.write_text(yaml.safe_dump(local_config(upstream.url, schema, f"fleet-{schema}")))
        with ExitStack() as stack:
            served = []
            for name, service in gateway_services().items():
                home = tmp_path / name
                home.mkdir()
                served.append(stack.enter_context(turnout_serve(home, config, env=service["environment"])))
            listen = free_port()
            names = list(gateway_services())
            conf = local_nginx(tmp_path, listen, {n: s.port for n, s in zip(names, served, strict=True)})
            front = stack.enter_context(nginx(conf, listen))
            yield front, served, schema
    finally:
        upstream.stop()
        psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_the_compose_fleet_survives_a_killed_replica(fleet: tuple[str, list[Served], str]) -> None:
    front, (first, second), schema = fleet
    key = next(iter(gateway_services().values()))["environment"]["TURNOUT_KEY_ACME"]
    client = openai.OpenAI(base_url=f"{front}/v1", api_key=key, max_retries=0)
    try:
        # nginx spreads requests over both replicas.
        assert {worker(front) for _ in range(4)} == {str(first.proc.pid), str(second.proc.pid)}
        before = [ask(client) for _ in range(6)]
        assert wait_rows(schema, len(before)) == len(before)  # both replicas write one ledger

        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        after = [ask(client) for _ in range(10)]  # connection refused: nginx tries the survivor
        assert len(set(before + after)) == len(before) + len(after)
        assert {worker(front) for _ in range(3)} == {str(second.proc.pid)}
    finally:
        client.close()
    assert second.stop() in (0, -15)  # SIGTERM drains its ledger queue (uvicorn re-raises it)
    assert wait_rows(schema, len(before) + len(after)) == len(before) + len(after)


def test_the_compose_fleet_shares_one_rpm_limit(fleet: tuple[str, list[Served], str]) -> None:
    """Redis holds the tenant's limit for the fleet: alternating replicas, it admits RPM in all."""
    front, _, _ = fleet
    client = openai.OpenAI(base_url=f"{front}/v1", api_key=TIGHT_KEY, max_retries=0)
    answered = refused = 0
    try:
        for _ in range(2 * TIGHT_RPM):
            try:
                ask(client)
                answered += 1
            except openai.RateLimitError:  # 429, in OpenAI's shape
                refused += 1
    finally:
        client.close()
    assert (answered, refused) == (TIGHT_RPM, TIGHT_RPM)
