"""A fleet on shared state, end to end on this machine: nginx in front of three ``turnout serve``
replicas (the third with ``--workers 2``), each in a home of its own (no file is shared: what
they agree on is in Redis and PostgreSQL, ``state.kind: postgres``), under load.

One test walks the whole story, because each act leans on the one before:
1. a canary started from the CLI is walked to promotion by the replicas' controllers, each step
   taken exactly once (one ``turnout-canary`` transition per step, one claim per step);
2. one replica is SIGKILLed under load: the requests that were not in flight on it all succeed
   (nginx moves on to the others), and every answered request has a ledger row, save at most
   those the dead replica answered in its last flush window;
3. ``turnout release rollback`` from the CLI is served by both survivors within one second;
4. a tenant's RPM and daily budget hold across the two survivors.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import json
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.serving import Process, Served, free_port, turnout_cli, turnout_serve
from tests.test_deploy_fleet import nginx, psql
from turnout._support.places import PgPlace
from turnout.releases.store import ReleaseStore

pytestmark = pytest.mark.slow

PG = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"
KEY = "sk-fleet-acme-0123456789abcdef"
TIGHT_KEY = "sk-fleet-tight-0123456789abcdef"
CAPPED_KEY = "sk-fleet-capped-0123456789abcde"
TIGHT_RPM = 5
CAPPED_USD = 0.002  # a day's budget for the capped tenant: a few requests' worth
TASK = "summarise"


def release_file(target: str) -> str:
    return (
        f"target: {target}\nmodel_version: weights-{target}\n"
        "prompt:\n  user: 'Summarise: {{ text }}'\n  variables: {text: str}\n"
        "params: {max_tokens: 16}\n"
    )


def fleet_config(root: Path, upstreams: dict[str, Process], schema: str) -> Path:
    targets = {
        name: {
            "provider": "openai",
            "base_url": up.url + "/v1",
            "model": "fake-model",
            "retry": {"attempts": 1},
            "price": {"input_per_mtok": 10.0, "output_per_mtok": 40.0},
        }
        for name, up in upstreams.items()
    }
    canary = {
        "steps": [20, 60, 100],
        "interval_s": 0.3,
        "min_requests": 10,
        "max_error_rate_delta": 0.2,
        "max_p95_ratio": 100,
        "max_cost_ratio": 100,
    }
    config = {
        "server": {"shutdown_grace_s": 5},
        "store": {"kind": "postgres", "dsn": PG, "pg_schema": schema, "flush_interval_ms": 10},
        "state": {"kind": "postgres"},
        "limits": {"backend": "redis", "redis_url": REDIS, "key_prefix": f"fleet-{schema}", "default_max_tokens": 16},
        "releases": {"path": str(root / "releases")},
        "capture": {"mode": "redacted", "redaction_key": "fleet-redaction-key-0123456789abcdef"},
        "targets": targets,
        "tenants": {
            "acme": {"keys": [KEY], "limits": {"rpm": 1_000_000}},
            "tight": {"keys": [TIGHT_KEY], "limits": {"rpm": TIGHT_RPM}},
            "capped": {"keys": [CAPPED_KEY], "limits": {"usd_per_day": CAPPED_USD}},
        },
        "tasks": {TASK: {"route": ["stable", "fresh"], "canary": canary, "review_rate": 0.05}},
    }
    path = root / "turnout.yaml"
    path.write_text(yaml.safe_dump(config))
    folder = root / "releases" / TASK
    folder.mkdir(parents=True)
    for name, target in (("v1", "stable"), ("v2", "fresh")):
        (folder / f"{name}.yaml").write_text(release_file(target))
    return path


def nginx_conf(tmp: Path, listen: int, ports: list[int]) -> Path:
    """deploy/compose/nginx.conf's proxy rules, for three local replicas."""
    servers = "\n".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;" for p in ports)
    own = " ".join(f"{kind}_temp_path {tmp}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    path = tmp / "nginx.conf"
    path.write_text(
        f"pid {tmp}/nginx.pid;\nerror_log {tmp}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off; {own}\n  upstream turnout {{\n{servers}\n    keepalive 32;\n  }}\n"
        f"  server {{\n    listen 127.0.0.1:{listen};\n    location / {{\n      proxy_pass http://turnout;\n"
        '      proxy_http_version 1.1;\n      proxy_set_header Connection "";\n'
        "      proxy_next_upstream error timeout http_502 http_503;\n      proxy_next_upstream_tries 3;\n"
        "    }\n  }\n}\n"
    )
    return path


@dataclass
class Outcome:
    status: int
    request_id: str | None
    release: str | None
    at: float  # when the answer (or the failure) came back


@dataclass
class Load:
    """Threads sending task requests through nginx until stopped; every outcome kept."""

    base: str
    key: str = KEY
    outcomes: list[Outcome] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    sent: int = 0

    def one(self, user: str) -> Outcome:
        body = json.dumps({"variables": {"text": "the quarterly report"}}).encode()
        req = urllib.request.Request(  # noqa: S310 - loopback
            f"{self.base}/v1/tasks/{TASK}",
            body,
            {"content-type": "application/json", "authorization": f"Bearer {self.key}", "x-turnout-user": user},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
                resp.read()
                found = Outcome(resp.status, resp.headers["x-turnout-request-id"], resp.headers["x-turnout-release"], 0)
        except urllib.error.HTTPError as exc:
            exc.read()
            found = Outcome(exc.code, exc.headers.get("x-turnout-request-id"), None, 0)
        except (OSError, http.client.HTTPException):  # refused, reset, or a response cut off mid-way
            found = Outcome(0, None, None, 0)
        found.at = time.monotonic()
        return found

    def run(self, threads: int) -> list[threading.Thread]:
        def loop() -> None:
            while not self.stop.is_set():
                self.sent += 1
                self.outcomes.append(self.one(f"user-{uuid.uuid4().hex[:8]}"))
                time.sleep(0.005)

        started = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
        for t in started:
            t.start()
        return started


def serving_now(schema: str) -> tuple[str, str]:
    return tuple(psql(f"SELECT coalesce(active, ''), coalesce(canary, '') FROM {schema}.serving").split("|"))  # type: ignore[return-value]  # noqa: S608


def wait_for(condition: Any, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Path, str, list[Served], str]]:
    if shutil.which("nginx") is None or shutil.which("psql") is None:
        pytest.skip("needs nginx and psql (Debian: apt-get install nginx postgresql-client)")
    pytest.importorskip("psycopg")
    schema = f"fleet_{uuid.uuid4().hex[:8]}"
    upstreams = {name: Process("tests.fakes.upstream", "--model", "fake-model") for name in ("stable", "fresh")}
    try:
        config = fleet_config(tmp_path, upstreams, schema)
        turnout_cli(tmp_path, "release", "register", TASK, "--all", "--by", "ci")
        turnout_cli(tmp_path, "release", "promote", TASK, "v1", "--by", "ci", "--why", "first release")
        asyncio.run(_evaluated(schema, "v2"))
        turnout_cli(tmp_path, "release", "canary", TASK, "v2", "--percent", "20", "--by", "ci", "--why", "try v2")
        with ExitStack() as stack:
            served = []
            for i in range(3):
                home = tmp_path / f"replica-{i}"  # each its own working directory: nothing on disk shared
                home.mkdir()
                workers = ("--workers", "2") if i == 2 else ()  # one replica runs two worker processes
                served.append(stack.enter_context(turnout_serve(home, config, extra=workers)))
            listen = free_port()
            front = stack.enter_context(nginx(nginx_conf(tmp_path, listen, [s.port for s in served]), listen))
            yield tmp_path, front, served, schema
    finally:
        for up in upstreams.values():
            up.stop()
        psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


async def _evaluated(schema: str, name: str) -> None:
    """As ``turnout eval`` leaves a candidate that passed its gates."""
    async with ReleaseStore(PgPlace(PG, schema)) as store:
        await store.mark_evaluated(TASK, name, "ci", "golden set passed (test)")


def test_a_fleet_on_shared_state(fleet: tuple[Path, str, list[Served], str]) -> None:
    root, front, served, schema = fleet

    # 1. The canary walks its steps under load, each step taken by exactly one replica.
    load = Load(front)
    threads = load.run(6)
    try:
        wait_for(lambda: serving_now(schema) == ("v2", ""), 120, "the canary's promotion")
    finally:
        load.stop.set()
        for t in threads:
            t.join(30)
    moves = psql(
        f"SELECT to_state || ':' || coalesce(percent::text, '') FROM {schema}.transitions "  # noqa: S608
        "WHERE by = 'turnout-canary' AND release = 'v2' ORDER BY id"
    ).split()
    assert moves == ["canary:60", "active:100"], moves  # 20 → 60, then the last step (100) promotes
    assert psql(f"SELECT count(*) FROM {schema}.canary_claims") == "2"  # noqa: S608
    assert {o.status for o in load.outcomes} == {200}
    # Captured text and review samples went to the shared database, not to any replica's disk.
    wait_for(lambda: int(psql(f"SELECT count(*) FROM {schema}.captures")) > 0, 30, "captures")  # noqa: S608
    wait_for(lambda: int(psql(f"SELECT count(*) FROM {schema}.review_items")) > 0, 30, "review items")  # noqa: S608
    homes = [s.log.parent for s in served]
    assert not [p for home in homes for p in home.rglob("*.db")], "no SQLite state on any replica"

    # 2. SIGKILL one replica under load.
    load = Load(front)
    threads = load.run(6)
    time.sleep(2.0)
    victim = served[0]
    killed_at = time.monotonic()
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(10)
    time.sleep(3.0)
    load.stop.set()
    for t in threads:
        t.join(30)
    failed = [o for o in load.outcomes if o.status != 200]
    assert len(failed) <= 6, f"{len(failed)} failed; at most the 6 in flight may"  # one per client thread
    assert all(o.at < killed_at + 1.0 for o in failed), "requests after the kill must all succeed"
    answered = [o for o in load.outcomes if o.status == 200]
    assert len(answered) > 100
    ids = {o.request_id for o in answered}
    missing = ids - ledger_ids(schema, len(ids))
    # Only the dead replica's last flush window (10 ms, plus a batch in flight) may be lost.
    late = {o.request_id for o in answered if killed_at - 0.5 <= o.at <= killed_at + 0.1}
    assert missing <= late, f"{len(missing)} answered requests have no ledger row"

    # 3. A rollback from the CLI reaches both survivors within one second.
    survivors = served[1:]
    turnout_cli(root, "release", "rollback", TASK, "--by", "ops", "--why", "v2 regressed")
    done_at = time.monotonic()
    seen = dict.fromkeys(range(len(survivors)), 0.0)
    while not all(seen.values()) and time.monotonic() - done_at < 5.0:
        for i, s in enumerate(survivors):
            if not seen[i] and Load(f"http://127.0.0.1:{s.port}").one("u-rollback").release == "v1":
                seen[i] = time.monotonic() - done_at
        time.sleep(0.02)
    assert all(0 < t <= 1.0 for t in seen.values()), f"seconds until each survivor served v1: {seen}"
    lost = f"{len(answered)} answered, {len(failed)} failed at the kill, {len(missing)} rows lost"
    print(f"fleet: {lost}; rollback seen after {seen}")  # shown with pytest -rP

    # 4. RPM and budget hold across the survivors (nginx alternates between them).
    tight = [Load(front, key=TIGHT_KEY).one(f"t-{i}").status for i in range(TIGHT_RPM * 3)]
    assert tight.count(200) == TIGHT_RPM and set(tight) == {200, 429}, tight
    capped = Load(front, key=CAPPED_KEY)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: capped.one(f"c-{i}").status, range(60)))
    assert 200 in statuses and 429 in statuses, statuses
    spent = ledger_spend(schema, "capped", statuses.count(200))
    assert spent <= CAPPED_USD + 1e-9, f"the capped tenant spent {spent} of {CAPPED_USD}"


def ledger_ids(schema: str, at_least: int, deadline_s: float = 30.0) -> set[str]:
    end = time.monotonic() + deadline_s
    while True:
        found = set(psql(f"SELECT request_id FROM {schema}.requests").split())  # noqa: S608
        if len(found) >= at_least or time.monotonic() > end:
            return found
        time.sleep(0.2)


def ledger_spend(schema: str, tenant: str, answered: int, deadline_s: float = 30.0) -> float:
    end = time.monotonic() + deadline_s
    where = f"tenant = '{tenant}' AND status = 200"
    sql = f"SELECT count(*), coalesce(sum(cost_usd), 0) FROM {schema}.requests WHERE {where}"  # noqa: S608
    while True:
        rows, spent = psql(sql).split("|")
        if int(rows) >= answered or time.monotonic() > end:
            return float(spent)
        time.sleep(0.2)
