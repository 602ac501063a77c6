"""A Redis that degrades under a running `turnout serve` (limits, issued keys and the cache on a
redis-server of the test's own): out of memory under ``noeviction``, and back. The gateway
follows ``on_backend_error``, never answers 5xx but a clear 503, and recovers without a restart."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.serving import Process, Served, turnout_serve

pytestmark = pytest.mark.slow
KEY = "sk-acme-degraded-0001"
ADMIN = "adm-degraded-0123456789"
BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


@pytest.fixture(scope="module")
def upstream() -> Iterator[Process]:
    fake = Process("tests.fakes.upstream", ready_path="/v1/models")
    yield fake
    fake.stop()


def serve(tmp: Path, upstream: Process, port: int, limits: dict[str, Any], **settings: Any) -> Any:
    """`turnout serve` with its limits in the Redis on ``port``."""
    config = {
        "server": {"admin_key": ADMIN},
        "limits": {"backend": "redis", "redis_url": f"redis://127.0.0.1:{port}/0", **settings},
        "targets": {"up": {"provider": "openai", "base_url": upstream.url + "/v1", "model": "m"}},
        "tenants": {"acme": {"keys": [KEY], "limits": limits}},
        "tasks": {"chat": {"route": ["up"]}},
    }
    (tmp / "turnout.yaml").write_text(json.dumps(config))
    return turnout_serve(tmp, tmp / "turnout.yaml")


def ask(served: Served, path: str = "/v1/chat/completions", key: str = KEY) -> tuple[int, Any]:
    """POST ``BODY`` to ``path`` (GET for another path), as ``key``: the status and the JSON."""
    body = json.dumps(BODY).encode() if path.endswith("/completions") else None
    req = urllib.request.Request(
        f"http://127.0.0.1:{served.port}{path}",
        body,
        {"content-type": "application/json", "authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback test URL
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def in_use(served: Served) -> int:
    status, usage = ask(served, "/admin/usage?tenant=acme", ADMIN)
    assert status == 200, usage
    [acme] = [scope for scope in usage["data"] if scope["scope"] == "acme"]
    return int(acme["usage"]["concurrency"]["in_use"])


def out_of_memory(port: int, full: bool) -> None:
    """Redis refuses every write that would grow it (OOM), or takes them again."""
    client = redis.Redis(port=port)
    try:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", "1" if full else "0")
    finally:
        client.close()


@pytest.mark.parametrize("on_error", ["closed", "open"])
def test_a_redis_out_of_memory_is_a_backend_failure_not_a_500(
    tmp_path: Path, upstream: Process, own_redis: tuple[subprocess.Popen[bytes], int], on_error: str
) -> None:
    """Seen: Redis at maxmemory under noeviction refused the quota's script with an OOM error,
    which went out as a 500 `internal error` for every request, whatever on_backend_error said."""
    _, port = own_redis
    with serve(tmp_path, upstream, port, {"rpm": 1000}, on_backend_error=on_error) as served:
        assert ask(served)[0] == 200
        out_of_memory(port, True)
        status, body = ask(served)
        if on_error == "open":
            assert status == 200
        else:
            assert (status, body["error"]["code"]) == (503, "quota_backend_unavailable")
        out_of_memory(port, False)
        assert ask(served)[0] == 200


def test_slots_taken_while_redis_was_out_of_memory_are_freed_once_it_takes_writes(
    tmp_path: Path, upstream: Process, own_redis: tuple[subprocess.Popen[bytes], int]
) -> None:
    """Seen: out of memory, Redis still ran the acquire (its first write frees memory) but
    refused the settle (its first write is the finished marker); the settle was logged and
    dropped, so the tenant's concurrency slot stayed taken for max_request_s after Redis
    recovered: 429 concurrency for ten minutes. It is sent again once a heartbeat goes through."""
    _, port = own_redis
    with serve(tmp_path, upstream, port, {"concurrency": 1}) as served:
        assert ask(served)[0] == 200  # the replica's heartbeat is in Redis: its slots are live
        while in_use(served):  # its settle, sent after the answer
            time.sleep(0.05)
        out_of_memory(port, True)
        assert ask(served)[0] == 200  # admitted; its settle is refused
        status, body = ask(served)
        assert (status, body["error"]["param"]) == (429, "concurrency")
        out_of_memory(port, False)
        deadline = time.monotonic() + 20  # the heartbeat comes every second
        while (status := ask(served)[0]) != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status == 200
