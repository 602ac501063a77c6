"""`turnout serve --config` in front of two fake upstream processes, driven by the official
openai SDK: with the primary failing, requests succeed through the fallback; the primary's
breaker opens, then recovers through half-open once the primary heals. A restricted request
never leaves its allowed set. Keys and prompt text never reach the ledger or the logs."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.serving import Served, free_port, sdk_client, turnout_serve, wait_http

pytestmark = pytest.mark.slow
KEY = "sk-e2e-tenant-key-5d1e"
ADMIN_KEY = "adm-e2e-resilience-3f9a"
SECRET = "SENTINEL-e2e-prompt-9b7c"


class Upstream:
    def __init__(self, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"

    def fault(self, **fault: Any) -> None:
        _post(f"{self.url}/_fault", fault)

    def requests(self) -> list[Any]:
        with urllib.request.urlopen(f"{self.url}/_requests", timeout=5) as resp:  # noqa: S310 - loopback
            result: list[Any] = json.loads(resp.read())
            return result


def _post(url: str, payload: Any) -> None:
    req = urllib.request.Request(  # noqa: S310 - loopback test URL
        url, json.dumps(payload).encode(), {"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=5):  # noqa: S310 - loopback test URL
        pass


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, Upstream]]:
    procs: dict[str, Upstream] = {}
    try:
        for name in ("primary", "secondary", "onprem"):
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.fakes.upstream", "--port", str(port), "--model", f"{name}-model"]
            )
            procs[name] = Upstream(port, proc)
            wait_http(f"http://127.0.0.1:{port}/v1/models", 20, proc)
        yield procs
    finally:
        for up in procs.values():
            up.proc.terminate()
            up.proc.wait(10)


@pytest.fixture(scope="module")
def served(upstreams: dict[str, Upstream], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    cwd = tmp_path_factory.mktemp("serve")
    targets = {
        name: {
            "provider": "openai",
            "base_url": f"{up.url}/v1",
            "model": f"{name}-model",
            "api_key": "${UPSTREAM_KEY:-sk-upstream-secret-77}",
            "retry": {"attempts": 1},
            "breaker": {"failures": 3, "cooldown_s": 1.0},
            "timeouts": {"connect": 1, "ttft": 2, "total": 5},
        }
        for name, up in upstreams.items()
    }
    config = {
        "server": {"admin_key": ADMIN_KEY},
        "targets": targets,
        "tenants": {"acme": {"keys": [KEY], "data_classes": ["internal", "restricted"]}},
        "policy": {"restricted": {"targets": ["onprem"]}},
        "tasks": {"support": {"route": ["primary", "secondary", "onprem"]}},
    }
    path = cwd / "turnout.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    with turnout_serve(cwd, path) as s:
        yield s


def client(served: Served) -> openai.OpenAI:
    return sdk_client(served.base_url, KEY)


def ask(served: Served, **kw: Any) -> Any:
    return client(served).chat.completions.with_raw_response.create(
        model="support", messages=[{"role": "user", "content": f"help {SECRET}"}], max_tokens=8, **kw
    )


def breaker_state(served: Served, target: str) -> str:
    req = urllib.request.Request(
        f"http://127.0.0.1:{served.port}/admin/targets", headers={"authorization": f"Bearer {ADMIN_KEY}"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - loopback test URL
        state: str = next(t["breaker"] for t in json.loads(resp.read())["data"] if t["name"] == target)
        return state


def test_primary_serves_when_healthy(served: Served, upstreams: dict[str, Upstream]) -> None:
    resp = ask(served)
    assert resp.headers["x-turnout-target"] == "primary"
    assert resp.parse().choices[0].message.content == "Hello, world"
    sent = upstreams["primary"].requests()[-1]
    assert sent["body"]["model"] == "primary-model"
    assert sent["headers"]["Authorization"] == "Bearer sk-upstream-secret-77"


def test_unauthenticated_is_refused(served: Served) -> None:
    bad = sdk_client(served.base_url, "sk-wrong-key-000")
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="support", messages=[{"role": "user", "content": "x"}])


def test_fallback_then_breaker_opens_then_recovers(served: Served, upstreams: dict[str, Upstream]) -> None:
    primary = upstreams["primary"]
    primary.fault(mode="status", status=500)
    for _ in range(3):
        resp = ask(served)
        assert resp.headers["x-turnout-target"] == "secondary"
        assert resp.headers["x-turnout-fallback"] == "true"
    assert breaker_state(served, "primary") == "open"
    seen = len(primary.requests())
    resp = ask(served, stream=True)  # streams fall back too, before their first byte
    assert resp.headers["x-turnout-target"] == "secondary"
    assert "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices) == "Hello, world"
    assert len(primary.requests()) == seen  # open: not even tried
    primary.fault(mode="ok")
    time.sleep(1.1)
    resp = ask(served)  # the half-open probe reaches the healed primary
    assert resp.headers["x-turnout-target"] == "primary"
    assert breaker_state(served, "primary") == "closed"


def test_hanging_primary_times_out_and_falls_back(served: Served, upstreams: dict[str, Upstream]) -> None:
    upstreams["primary"].fault(mode="hang", times=1)
    resp = ask(served)
    assert resp.headers["x-turnout-target"] == "secondary"


def test_restricted_stays_inside_its_allowed_set(served: Served, upstreams: dict[str, Upstream]) -> None:
    for up in upstreams.values():
        up.fault(mode="status", status=503)
    seen = {n: len(u.requests()) for n, u in upstreams.items()}
    with pytest.raises(openai.InternalServerError) as err:
        ask(served, extra_headers={"X-Turnout-Data-Class": "restricted"})
    assert err.value.status_code == 503
    assert "onprem" in str(err.value) and "primary" not in str(err.value)
    assert len(upstreams["primary"].requests()) == seen["primary"]
    assert len(upstreams["secondary"].requests()) == seen["secondary"]
    for up in upstreams.values():
        up.fault(mode="ok")


def test_zz_ledger_and_logs_hold_no_secrets(served: Served) -> None:
    served.stop()
    cwd = served.log.parent
    rows = (
        sqlite3.connect(cwd / ".turnout" / "turnout.db")
        .execute("SELECT tenant, task, target, status, fallback, attempts FROM requests")
        .fetchall()
    )
    assert len(rows) >= 8
    assert {r[0] for r in rows} == {"acme"}  # the unauthenticated request is counted, not written
    assert any(r[4] for r in rows)  # fallbacks are recorded
    for path in cwd.rglob("*"):
        if path.is_file() and path.suffix != ".yaml":
            data = path.read_bytes()
            for secret in (SECRET, KEY, "sk-upstream-secret-77"):
                assert secret.encode() not in data, f"{secret} leaked into {path}"
