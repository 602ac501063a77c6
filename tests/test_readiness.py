"""``/readyz`` answers for this process (config, ledger writer, limiter backend), never for its
upstreams, and shows nothing but a status and named checks; upstream health is the admin's
(``GET /admin/targets``) and the metrics' (``turnout_target_up``). In-process through
``tests/asgi.py``, with real upstream sockets (a fake server, a closed port, a name that does not
resolve), real SQLite and real Redis behind a TCP proxy that can be cut."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.asgi import Response, request
from tests.conftest import AppFactory
from tests.fakes.scripted import ScriptedProvider
from tests.fakes.tcp_proxy import FaultProxy
from tests.fakes.upstream import FakeUpstream
from tests.serving import Process, free_port, turnout_serve
from tests.test_quota_contract import drop_prefix, needs_redis, unique_prefix
from turnout.config import validate
from turnout.control.quota.redis import RedisLimiter
from turnout.ledger.record import LedgerRow
from turnout.providers.base import Health
from turnout.serving.app import App

ADMIN = "adm-readiness-key-8c1e"
KEY = "sk-acme-readiness-0001"
AUTH = {"authorization": f"Bearer {KEY}"}
ADMIN_AUTH = {"authorization": f"Bearer {ADMIN}"}
MESSAGES = [{"role": "user", "content": "hi"}]

# What a target's config holds that no caller, not even the admin, may read back.
DEAD_USER, DEAD_PASSWORD = "gw-admin", "pa55-9f2e-secret"
ODD_HOST, ODD_PORT = "upstream-7f3a.invalid", 8443
API_KEY, HEADER_SECRET = "sk-up-secret-31c4", "hdr-secret-5d2a"


def upstream_config(alive_url: str, dead_port: int, **extra: Any) -> dict[str, Any]:
    """``alive``: a fake server that answers; ``dead``: its only replica refuses connections (a
    closed port, credentials in the URL) and another does not resolve; ``mixed``: one replica
    of each, with an API key and a secret header."""
    raw: dict[str, Any] = {
        "server": {"admin_key": ADMIN},
        "targets": {
            "alive": {"provider": "openai", "base_url": alive_url, "model": "m"},
            "dead": {
                "provider": "openai",
                "base_urls": [
                    f"http://{DEAD_USER}:{DEAD_PASSWORD}@127.0.0.1:{dead_port}/v1",
                    f"http://{ODD_HOST}:{ODD_PORT}/v1",
                ],
                "model": "m",
                "retry": {"attempts": 1},
                "timeouts": {"connect": 1, "ttft": 2, "total": 3},
            },
            "mixed": {
                "provider": "openai",
                "base_urls": [alive_url, f"https://{ODD_HOST}:{ODD_PORT}/v1"],
                "model": "m",
                "api_key": API_KEY,
                "headers": {"X-Upstream-Token": HEADER_SECRET},
            },
        },
        "tenants": {"acme": {"keys": [KEY]}},
        "tasks": {"open": {"route": ["alive"]}, "doomed": {"route": ["dead"]}, "half": {"route": ["mixed"]}},
    }
    raw.update(extra)
    return raw


def leaks(text: str, *ports: int) -> list[str]:
    """Whatever of a target's address or credentials ``text`` shows."""
    needles = [DEAD_USER, DEAD_PASSWORD, ODD_HOST, str(ODD_PORT), API_KEY, HEADER_SECRET, "127.0.0.1", "://"]
    needles += [f":{p}" for p in ports]
    return [n for n in needles if n in text]


async def readyz(app: App, headers: dict[str, str] | None = None) -> Response:
    return await request(app, "GET", "/readyz", headers=headers)


async def targets(app: App, headers: dict[str, str] | None = None) -> Response:
    return await request(app, "GET", "/admin/targets", headers=ADMIN_AUTH if headers is None else headers)


async def eventually(check: Callable[[], bool | Awaitable[bool]], within_s: float = 20.0) -> None:
    """Polls ``check`` until it holds; the deadline only keeps a broken build from hanging."""
    async with asyncio.timeout(within_s):
        while True:
            held = check()
            if held is True or (inspect.isawaitable(held) and await held):
                return
            await asyncio.sleep(0.02)


def by_name(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in body["data"]}


# --- upstreams are not readiness --------------------------------------------------------------


async def test_a_task_whose_only_target_is_down_leaves_the_replica_ready(make_app: AppFactory) -> None:
    dead_port = free_port()
    async with FakeUpstream() as fake:
        app = await make_app(upstream_config(fake.base_url, dead_port))
        ready = await readyz(app)
        assert ready.status == 200
        assert ready.json() == {"status": "ready", "checks": {"config": "ok", "ledger": "ok"}}
        # The dead task fails in OpenAI's shape; the others answer; the replica stays ready.
        dead = await request(app, "POST", "/v1/chat/completions", {"model": "doomed", "messages": MESSAGES}, AUTH)
        assert dead.status >= 500 and dead.json()["error"]["type"]
        assert leaks(dead.body.decode(), dead_port, fake.port) == []
        ok = await request(app, "POST", "/v1/chat/completions", {"model": "open", "messages": MESSAGES}, AUTH)
        assert ok.status == 200
        assert (await readyz(app)).status == 200

        view = await targets(app)
        assert view.status == 200
        body = view.json()
        found = by_name(body)
        assert found["alive"]["health"] == "up" and found["dead"]["health"] == "down"
        assert [(r["name"], r["health"]) for r in found["dead"]["replicas"]] == [("r0", "down"), ("r1", "down")]
        assert [(r["name"], r["health"]) for r in found["mixed"]["replicas"]] == [("r0", "up"), ("r1", "down")]
        assert found["mixed"]["health"] == "up"  # one replica answering is enough to serve
        assert "cannot connect" in found["dead"]["replicas"][0]["detail"]
        assert found["dead"]["replicas"][1]["detail"] == "DNS lookup failed"
        for t in found.values():
            assert t["provider"] == "openai" and t["breaker"] in ("closed", "open", "half_open")
            assert isinstance(t["in_flight"], int)
            assert all(isinstance(r["in_flight"], int) and r["breaker"] for r in t["replicas"])
        assert body["tasks"]["doomed"] == {"route": ["dead"], "up": False}
        assert body["tasks"]["open"]["up"] and body["tasks"]["half"]["up"]


async def test_readyz_and_the_admin_view_show_no_address_or_credential(make_app: AppFactory) -> None:
    dead_port = free_port()
    async with FakeUpstream() as fake:
        app = await make_app(upstream_config(fake.base_url, dead_port))
        await request(app, "POST", "/v1/chat/completions", {"model": "doomed", "messages": MESSAGES}, AUTH)
        for headers in (None, AUTH, ADMIN_AUTH, {"authorization": "Bearer wrong"}):
            text = (await readyz(app, headers)).body.decode()
            assert leaks(text, dead_port, fake.port) == [], text
        text = (await targets(app)).body.decode()
        assert leaks(text, dead_port, fake.port) == [], text
        assert "r0" in text and "r1" in text  # replicas by label


async def test_readyz_shows_status_and_checks_only_and_the_ledger_figures_to_the_admin(
    make_app: AppFactory,
) -> None:
    app = await make_app(upstream_config("http://127.0.0.1:9/v1", free_port()), {"alive": ScriptedProvider("alive")})
    for headers in (None, AUTH, {"authorization": "Bearer wrong"}, {"authorization": "Basic eHl6"}):
        resp = await readyz(app, headers)
        assert resp.status == 200 and set(resp.json()) == {"status", "checks"}
    detail = (await readyz(app, ADMIN_AUTH)).json()
    assert detail["checks"] == {"config": "ok", "ledger": "ok"}
    assert detail["ledger"] == {"queued": 0, "spilling": False, "journal_bytes": 0, "dropped": 0}


async def test_readyz_is_503_until_start_up_completes(tmp_path: Path) -> None:
    raw = upstream_config("http://127.0.0.1:9/v1", free_port(), store={"kind": "memory"})
    app = App(validate({**raw, "limits": {"keys_path": str(tmp_path / "keys.db")}}))
    resp = await readyz(app)
    assert resp.status == 503 and resp.json() == {"status": "starting", "checks": {"config": "starting"}}
    assert (await request(app, "GET", "/healthz")).json() == {"status": "ok"}  # alive all the same


async def test_a_target_going_down_shows_in_the_admin_view_at_once_not_in_readyz(make_app: AppFactory) -> None:
    fake = ScriptedProvider("alive")
    app = await make_app(upstream_config("http://127.0.0.1:9/v1", free_port()), {"alive": fake})
    assert by_name((await targets(app)).json())["alive"]["health"] == "up"
    fake.healthy = False
    alive = by_name((await targets(app)).json())["alive"]
    assert alive["health"] == "down" and alive["detail"] == "scripted down"
    assert alive["replicas"] == []  # one endpoint, no replicas to list
    assert (await readyz(app)).status == 200


# --- the admin view is the admin's -------------------------------------------------------------


async def test_admin_targets_needs_the_admin_key(make_app: AppFactory) -> None:
    app = await make_app(upstream_config("http://127.0.0.1:9/v1", free_port()), {"alive": ScriptedProvider("alive")})
    for headers, status in (
        ({}, 401),
        ({"authorization": "Bearer not-the-admin-key"}, 401),
        ({"authorization": ADMIN}, 401),  # no scheme
        (AUTH, 403),  # a tenant key
    ):
        resp = await targets(app, headers)
        assert resp.status == status, headers
        error = resp.json()["error"]
        assert error["message"] and error["type"]
        assert "data" not in resp.json()
    assert (await request(app, "POST", "/admin/targets", {}, ADMIN_AUTH)).status == 405
    assert (await targets(app)).status == 200


async def test_admin_targets_is_closed_without_an_admin_key(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TURNOUT_ADMIN_KEY", raising=False)
    raw = upstream_config("http://127.0.0.1:9/v1", free_port(), server={})
    app = await make_app(raw, {"alive": ScriptedProvider("alive")})
    assert (await targets(app)).status == 403
    assert set((await readyz(app, ADMIN_AUTH)).json()) == {"status", "checks"}


# --- metrics ------------------------------------------------------------------------------------


class CountingProvider(ScriptedProvider):
    """Counts its probes; a probe can be held open with ``gate``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.probes = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def health(self) -> Health:
        self.probes += 1
        await self.gate.wait()
        return await super().health()


def target_up(app: App) -> dict[str, float]:
    assert app.runtime.metrics is not None
    text = app.runtime.metrics.render()[0].decode()
    return {
        s.labels["target"]: s.value
        for f in text_string_to_metric_families(text)
        if f.name == "turnout_target_up"
        for s in f.samples
    }


async def test_target_up_follows_the_last_probe_and_scrapes_probe_at_most_once_per_interval(
    make_app: AppFactory,
) -> None:
    dead_port = free_port()
    fake = CountingProvider("alive")
    app = await make_app(upstream_config("http://127.0.0.1:9/v1", dead_port), {"alive": fake})
    probes = app.runtime.probes
    assert fake.probes == 1  # start-up
    probes.every_s = 3600.0
    for _ in range(20):
        assert (await request(app, "GET", "/metrics")).status == 200
    assert fake.probes == 1  # scrapes read the last probe
    assert target_up(app) == {"alive": 1.0, "dead": 0.0, "mixed": 0.0}

    # Stale: the next scrape starts one probe in the background; scrapes meanwhile start none.
    probes.every_s = 0.0
    fake.gate.clear()
    fake.healthy = False
    assert (await request(app, "GET", "/metrics")).status == 200
    await eventually(lambda: fake.probes == 2)
    for _ in range(10):
        body = (await request(app, "GET", "/metrics")).body.decode()
        assert leaks(body, dead_port) == []
        await asyncio.sleep(0)
    assert fake.probes == 2
    assert target_up(app)["alive"] == 1.0  # still the last finished probe
    fake.gate.set()
    await eventually(lambda: target_up(app).get("alive") == 0.0)


# --- the ledger ---------------------------------------------------------------------------------


async def test_a_dead_ledger_writer_makes_the_replica_unready(make_app: AppFactory) -> None:
    app = await make_app(upstream_config("http://127.0.0.1:9/v1", free_port()), {"alive": ScriptedProvider("alive")})
    writer = app.runtime.ledger
    assert writer is not None and writer.alive
    task = writer.queue._task
    assert task is not None
    task.cancel()
    await asyncio.wait((task,))
    resp = await readyz(app)
    assert resp.status == 503
    assert resp.json() == {"status": "unready", "checks": {"config": "ok", "ledger": "stopped"}}
    with contextlib.suppress(asyncio.CancelledError):  # closing awaits the cancelled task
        await app.runtime.aclose()


async def test_a_dead_journal_replayer_makes_the_replica_unready(make_app: AppFactory, tmp_path: Path) -> None:
    store = {"kind": "sqlite", "path": str(tmp_path / "ledger.db"), "flush_interval_ms": 10}
    raw = upstream_config("http://127.0.0.1:9/v1", free_port(), store=store)
    app = await make_app(raw, {"alive": ScriptedProvider("alive")})
    writer = app.runtime.ledger
    assert writer is not None and writer._replayer is not None
    assert (await readyz(app)).status == 200
    writer._replayer.cancel()
    await asyncio.wait((writer._replayer,))
    resp = await readyz(app)
    assert resp.status == 503 and resp.json()["checks"]["ledger"] == "stopped"
    with contextlib.suppress(asyncio.CancelledError):
        await app.runtime.aclose()


async def test_a_spill_journal_past_its_limit_makes_the_replica_unready_until_rows_flow_again(
    make_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = {
        "kind": "sqlite",
        "path": str(tmp_path / "ledger.db"),
        "flush_interval_ms": 10,
        "spill_dir": str(tmp_path / "spill"),
        "spill_max_mb": 0.003,  # 3 KiB: a few rows (a row is about 1 KiB in the journal)
    }
    raw = upstream_config("http://127.0.0.1:9/v1", free_port(), store=store)
    app = await make_app(raw, {"alive": ScriptedProvider("alive")})
    writer, db = app.runtime.ledger, app.runtime.store
    assert writer is not None and db is not None
    real_write = db.write_batch

    async def refuse(rows: list[LedgerRow]) -> None:
        raise OSError(111, "Connection refused")  # the store is down

    monkeypatch.setattr(db, "write_batch", refuse)
    body = {"model": "open", "messages": MESSAGES}

    async def dropping() -> bool:  # spilled until the journal is full, then dropped
        assert (await request(app, "POST", "/v1/chat/completions", body, AUTH)).status == 200
        return writer.dropped > 0

    await eventually(dropping)
    assert writer.spilled > 0  # the journal took rows before it filled up
    resp = await readyz(app)
    assert resp.status == 503
    assert resp.json() == {"status": "unready", "checks": {"config": "ok", "ledger": "full"}}
    assert (await readyz(app, ADMIN_AUTH)).json()["ledger"]["dropped"] >= 1

    monkeypatch.setattr(db, "write_batch", real_write)  # the store is back: the journal drains

    async def ready_again() -> bool:
        await request(app, "POST", "/v1/chat/completions", body, AUTH)
        return (await readyz(app)).status == 200

    await eventually(ready_again)
    assert (await readyz(app)).json()["checks"]["ledger"] == "ok"


async def test_a_journal_at_its_limit_is_unready_without_waiting_for_a_refused_row(
    make_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = {"kind": "sqlite", "path": str(tmp_path / "ledger.db"), "flush_interval_ms": 10}
    raw = upstream_config("http://127.0.0.1:9/v1", free_port(), store=store)
    app = await make_app(raw, {"alive": ScriptedProvider("alive")})
    writer, db = app.runtime.ledger, app.runtime.store
    assert writer is not None and writer.journal is not None and db is not None
    real_write = db.write_batch

    async def refuse(rows: list[LedgerRow]) -> None:
        raise OSError(111, "Connection refused")

    monkeypatch.setattr(db, "write_batch", refuse)
    await request(app, "POST", "/v1/chat/completions", {"model": "open", "messages": MESSAGES}, AUTH)
    await eventually(lambda: writer.spilled == 1)
    assert (await readyz(app)).status == 200
    writer.journal.max_bytes = writer.journal.bytes  # as if spill_max_mb were just this
    resp = await readyz(app)
    assert resp.status == 503 and resp.json()["checks"]["ledger"] == "full"
    monkeypatch.setattr(db, "write_batch", real_write)  # replayed: the journal empties
    await eventually(lambda: status_is(app, 200))
    assert writer.journal_bytes == 0 and writer.dropped == 0


async def test_spilling_within_the_limit_keeps_the_replica_ready(
    make_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = {"kind": "sqlite", "path": str(tmp_path / "ledger.db"), "flush_interval_ms": 10}
    app = await make_app(
        upstream_config("http://127.0.0.1:9/v1", free_port(), store=store), {"alive": ScriptedProvider("alive")}
    )
    writer, db = app.runtime.ledger, app.runtime.store
    assert writer is not None and db is not None

    async def refuse(rows: list[LedgerRow]) -> None:
        raise OSError(111, "Connection refused")

    monkeypatch.setattr(db, "write_batch", refuse)
    for _ in range(5):
        await request(app, "POST", "/v1/chat/completions", {"model": "open", "messages": MESSAGES}, AUTH)
    await eventually(lambda: writer.spilled == 5)
    resp = await readyz(app)
    assert resp.status == 200 and resp.json()["checks"]["ledger"] == "ok"
    assert (await readyz(app, ADMIN_AUTH)).json()["ledger"]["spilling"] is True


# --- the limiter backend ------------------------------------------------------------------------


def redis_config(port: int, on_backend_error: str, prefix: str) -> dict[str, Any]:
    raw = upstream_config("http://127.0.0.1:9/v1", free_port())
    raw["limits"] = {
        "backend": "redis",
        "redis_url": f"redis://127.0.0.1:{port}/0",
        "key_prefix": prefix,
        "on_backend_error": on_backend_error,
    }
    raw["tenants"]["acme"]["limits"] = {"rpm": 1000}
    return raw


@needs_redis
@pytest.mark.parametrize("on_backend_error", ["closed", "open"])
async def test_redis_unreachable_is_unready_only_when_failing_closed(
    make_app: AppFactory, on_backend_error: str
) -> None:
    with FaultProxy(6379) as proxy:
        app = await make_app(
            redis_config(proxy.port, on_backend_error, unique_prefix()), {"alive": ScriptedProvider("alive")}
        )
        resp = await readyz(app)
        assert resp.status == 200
        closed = on_backend_error == "closed"
        assert resp.json()["checks"] == {"config": "ok", "ledger": "ok", **({"limiter": "ok"} if closed else {})}
        await asyncio.to_thread(proxy.cut)
        if closed:
            await eventually(lambda: status_is(app, 503))
            resp = await readyz(app)
            assert resp.json() == {
                "status": "unready",
                "checks": {"config": "ok", "ledger": "ok", "limiter": "unreachable"},
            }
            assert leaks(resp.body.decode(), proxy.port) == []
            # Requests are refused meanwhile, as the config says.
            chat = await request(app, "POST", "/v1/chat/completions", {"model": "open", "messages": MESSAGES}, AUTH)
            assert chat.status == 503
        else:
            for _ in range(3):  # across the cache interval too
                assert (await readyz(app)).status == 200
                await asyncio.sleep(0.6)
            chat = await request(app, "POST", "/v1/chat/completions", {"model": "open", "messages": MESSAGES}, AUTH)
            assert chat.status == 200  # admitted without limits, as the config says
        await asyncio.to_thread(proxy.restore)
        await eventually(lambda: status_is(app, 200))
        await drop_prefix(app.runtime.quota.limiter)


@needs_redis
@pytest.mark.parametrize("on_backend_error", ["closed", "open"])
async def test_a_gateway_started_while_redis_is_down_starts_and_serves_once_it_returns(
    make_app: AppFactory, on_backend_error: str
) -> None:
    """As one already running rides out an outage: unready meanwhile only when failing closed."""
    with FaultProxy(6379) as proxy:
        await asyncio.to_thread(proxy.cut)
        app = await make_app(
            redis_config(proxy.port, on_backend_error, unique_prefix()), {"alive": ScriptedProvider("alive")}
        )
        resp = await readyz(app)
        if on_backend_error == "closed":
            assert resp.status == 503 and resp.json()["checks"]["limiter"] == "unreachable"
        else:
            assert resp.status == 200
        await asyncio.to_thread(proxy.restore)
        await eventually(lambda: status_is(app, 200))
        chat = await request(app, "POST", "/v1/chat/completions", {"model": "open", "messages": MESSAGES}, AUTH)
        assert chat.status == 200
        await drop_prefix(app.runtime.quota.limiter)


async def status_is(app: App, status: int) -> bool:
    return (await readyz(app)).status == status


@needs_redis
async def test_readyz_polled_hard_pings_redis_about_once_a_second(make_app: AppFactory) -> None:
    app = await make_app(redis_config(6379, "closed", unique_prefix()), {"alive": ScriptedProvider("alive")})
    limiter = app.runtime.quota.limiter
    assert isinstance(limiter, RedisLimiter)
    pings = 0
    real_ping = limiter.ping

    async def counted() -> bool:
        nonlocal pings
        pings += 1
        return await real_ping()

    limiter.ping = counted  # type: ignore[method-assign]
    answers = await asyncio.gather(*(readyz(app) for _ in range(200)))
    assert {a.status for a in answers} == {200}
    assert 1 <= pings < 20  # 200 probes at once share a PING or a few, not one each
    await drop_prefix(limiter)


@needs_redis
async def test_redis_limiter_ping() -> None:
    up = RedisLimiter("redis://127.0.0.1:6379/0", unique_prefix())
    down = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0", unique_prefix())
    try:
        assert await up.ping() is True
        assert await down.ping() is False
        assert down.stats().backend_errors == 0  # readiness is not a request
    finally:
        await up.aclose()
        await down.aclose()


# --- end to end ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_served_gateway_with_a_dead_only_target_is_ready_and_tells_the_admin(tmp_path: Path) -> None:
    upstream = Process("tests.fakes.upstream", ready_path="/v1/models")
    dead_port = free_port()
    try:
        config = upstream_config(upstream.url + "/v1", dead_port)
        config["server"] = {}  # the admin key comes from the environment
        path = tmp_path / "turnout.yaml"
        path.write_text(json.dumps(config))
        # turnout_serve waits for /readyz to answer 200: a dead upstream does not hold it back.
        with turnout_serve(tmp_path, path, env={"TURNOUT_ADMIN_KEY": ADMIN}) as served:
            base = f"http://127.0.0.1:{served.port}"
            ready = get(base + "/readyz")
            assert ready == {"status": "ready", "checks": {"config": "ok", "ledger": "ok"}}
            view = get(base + "/admin/targets", ADMIN)
            assert by_name(view)["dead"]["health"] == "down" and not view["tasks"]["doomed"]["up"]
            with pytest.raises(urllib.error.HTTPError) as refused:
                get(base + "/admin/targets")
            assert refused.value.code == 401
            refused.value.close()
            with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:  # noqa: S310 - loopback
                metrics = resp.read().decode()
            assert 'turnout_target_up{target="dead"} 0.0' in metrics
            assert 'turnout_target_up{target="alive"} 1.0' in metrics
            for text in (json.dumps(ready), json.dumps(view), metrics):
                assert leaks(text, dead_port, upstream.port) == []
    finally:
        upstream.stop()


def get(url: str, key: str | None = None) -> Any:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    req = urllib.request.Request(url, headers=headers)  # noqa: S310 - loopback test URL
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback test URL
        return json.loads(resp.read())
