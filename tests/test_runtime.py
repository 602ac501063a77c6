"""The runtime opens every resource on one exit stack: closed newest first, and a start that
fails half-way closes what it had opened and leaves nothing running (no task, no thread)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

import turnout.serving.runtime as runtime_module
from tests.fakes.scripted import ScriptedProvider
from tests.serving import turnout_serve
from tests.test_ledger_store import POSTGRES_DSN, postgres_reachable
from turnout.config import validate
from turnout.errors import ConfigError
from turnout.ledger.record import LedgerRow
from turnout.providers.base import Health
from turnout.serving.runtime import Runtime

KEY = "sk-acme-0123456789"


def config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    """Every resource on: SQLite ledger, capture, issued keys, a limiter, reviews, releases."""
    return {
        "store": {"kind": "sqlite", "path": str(tmp_path / "turnout.db"), "flush_interval_ms": 10},
        "capture": {"mode": "redacted"},
        "limits": {"keys_path": str(tmp_path / "keys.db")},
        "releases": {"path": str(tmp_path / "releases"), "store_path": str(tmp_path / "releases.db")},
        "targets": {
            "one": {"provider": "openai", "base_url": "http://one.invalid/v1", "model": "m"},
            "two": {"provider": "openai", "base_url": "http://two.invalid/v1", "model": "m"},
        },
        "tenants": {"acme": {"keys": [KEY], "limits": {"concurrency": 2}}},
        "tasks": {"chat": {"route": ["one", "two"], "review_rate": 0.5}},
        **extra,
    }


class Opened:
    """Records, in order, each resource the runtime builds and each one it closes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.opened: list[str] = []
        self.closed: list[str] = []
        for name in ("open_store", "open_key_store", "open_limiter", "open_capture", "open_registry"):
            self._spy(monkeypatch, name)

    def _spy(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        real = getattr(runtime_module, name)
        what = name.removeprefix("open_")

        def watch(resource: Any) -> Any:
            self.opened.append(what)
            close = resource.aclose

            async def aclose() -> None:
                self.closed.append(what)
                await close()

            resource.aclose = aclose
            return resource

        if asyncio.iscoroutinefunction(real):

            async def opened_async(*args: Any, **kwargs: Any) -> Any:
                return watch(await real(*args, **kwargs))

            monkeypatch.setattr(runtime_module, name, opened_async)
        else:
            monkeypatch.setattr(runtime_module, name, lambda *args, **kwargs: watch(real(*args, **kwargs)))


class Provider(ScriptedProvider):
    def __init__(self, name: str, *, health_raises: bool = False) -> None:
        super().__init__(name)
        self.health_raises = health_raises
        self.closed = False

    async def health(self) -> Health:
        if self.health_raises:
            raise RuntimeError("the health check itself broke")
        return await super().health()

    async def aclose(self) -> None:
        self.closed = True


def own_threads() -> list[str]:
    """Threads other than the event loop's default executor (which the loop owns and reuses)."""
    return sorted(t.name for t in threading.enumerate() if not t.name.startswith("asyncio_"))


def nothing_left_running(threads_before: list[str]) -> None:
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert own_threads() == threads_before


def row() -> LedgerRow:
    return LedgerRow("id", 0.0, "acme", "chat", "internal", False)


async def test_a_provider_that_breaks_at_start_closes_everything_opened_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = own_threads()
    opened = Opened(monkeypatch)
    providers = {"one": Provider("one"), "two": Provider("two", health_raises=True)}
    runtime = Runtime(validate(config(tmp_path)), dict(providers))
    with pytest.raises(RuntimeError, match="health check"):
        await runtime.start()
    assert opened.opened == ["store", "key_store", "limiter"]  # the providers came next, the shared state after
    assert opened.closed == ["limiter", "key_store", "store"]
    assert all(p.closed for p in providers.values())
    assert runtime.ledger is not None and not runtime.ledger.submit(row())  # the writer stopped
    nothing_left_running(threads)


async def test_release_files_that_fail_to_load_close_everything_including_the_providers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "releases" / "ghost").mkdir(parents=True)  # not a configured task: a ConfigError
    threads = own_threads()
    opened = Opened(monkeypatch)
    providers = {"one": Provider("one"), "two": Provider("two")}
    runtime = Runtime(validate(config(tmp_path)), dict(providers))
    with pytest.raises(ConfigError, match="ghost"):
        await runtime.start()
    assert opened.closed == list(reversed(opened.opened))
    assert all(p.closed for p in providers.values())
    assert runtime.reviews is None and runtime.capture is None  # the shared state: closed and unset
    nothing_left_running(threads)


async def test_close_order_is_the_reverse_of_open_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "releases").mkdir()
    threads = own_threads()
    opened = Opened(monkeypatch)
    runtime = Runtime(validate(config(tmp_path)), {"one": Provider("one"), "two": Provider("two")})
    await runtime.start()
    assert runtime.canary is not None and runtime.release_store is not None  # everything is on
    assert opened.opened == ["store", "key_store", "limiter", "capture", "registry"]  # the shared state last
    await runtime.aclose()
    assert opened.closed == ["registry", "capture", "limiter", "key_store", "store"]
    nothing_left_running(threads)
    await runtime.aclose()  # a second close is a no-op


def test_a_served_gateway_whose_start_fails_exits_without_leaving_work_behind(tmp_path: Path) -> None:
    """The real process: uvicorn reports the failed start and exits; the ledger writer that
    had started was stopped, not destroyed pending. What fails is one no check can see ahead:
    the shared state's PostgreSQL answers, and refuses (a database that does not exist; one that
    does not answer, like Redis, is ridden out: the gateway starts unready)."""
    if not postgres_reachable():
        pytest.skip("no PostgreSQL")
    raw = config(tmp_path)
    raw["state"] = {"kind": "postgres", "dsn": POSTGRES_DSN.rsplit("/", 1)[0] + "/turnout_no_such_database"}
    path = tmp_path / "turnout.yaml"
    path.write_text(json.dumps(raw))
    with pytest.raises(RuntimeError, match="exited with 1 "), turnout_serve(tmp_path, path, ready_s=30):
        pass  # 1: the command failed, as the CLI says (uvicorn's own is 3)
    log = (tmp_path / "turnout.log").read_text()
    [said] = [line for line in log.splitlines() if "start-up failed: " in line]
    assert 'database "turnout_no_such_database" does not exist' in said  # the reason, on one line
    assert "Traceback" not in log
    assert "Task was destroyed but it is pending" not in log
    assert (tmp_path / "turnout.db").exists()  # the ledger had opened before the failure


def closed_port() -> int:
    """A local port with nothing listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
