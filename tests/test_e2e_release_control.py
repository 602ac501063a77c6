"""Release control always reaches a running gateway: with every SQLite-backed feature on in one
`turnout serve` (ledger, issued keys, releases, the review queue, capture), twenty transitions
made with the CLI in a row — canary shares, promotions, rollbacks — each serve within a second,
and the gateway's WAL files stay whole (before the fix, opening a second store on a file the
process already had open dropped its POSIX locks, and another process's disconnect deleted the
WAL: CLI transitions stopped reaching the gateway)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.serving import Process, Served, release_cli, turnout_serve
from turnout.releases.store import ReleaseStore

pytestmark = pytest.mark.slow

KEY = "sk-acme-0123456789abcdef"
RELEASES = ("v1", "v2", "v3", "v4", "v5", "v6")
USERS = 80  # distinct end users per check: at a share of 25% or more, both sides show
# (transition, then what serves: the releases 80 users see)
STEPS: list[tuple[tuple[str, ...], set[str]]] = [
    (("canary", "v2", "--percent", "25"), {"v1", "v2"}),
    (("canary", "v2", "--percent", "60"), {"v1", "v2"}),
    (("canary", "v2", "--percent", "100"), {"v2"}),
    (("promote", "v2"), {"v2"}),
    (("canary", "v3", "--percent", "30"), {"v2", "v3"}),
    (("canary", "v3", "--percent", "100"), {"v3"}),
    (("rollback",), {"v2"}),
    (("canary", "v4", "--percent", "40"), {"v2", "v4"}),
    (("canary", "v4", "--percent", "75"), {"v2", "v4"}),
    (("promote", "v4"), {"v4"}),
    (("rollback",), {"v2"}),
    (("canary", "v5", "--percent", "25"), {"v2", "v5"}),
    (("canary", "v5", "--percent", "50"), {"v2", "v5"}),
    (("canary", "v5", "--percent", "100"), {"v5"}),
    (("promote", "v5"), {"v5"}),
    (("canary", "v6", "--percent", "35"), {"v5", "v6"}),
    (("canary", "v6", "--percent", "100"), {"v6"}),
    (("canary", "v6", "--percent", "45"), {"v5", "v6"}),
    (("rollback",), {"v5"}),
    (("rollback",), {"v2"}),
]


@pytest.fixture
def upstream() -> Iterator[Process]:
    proc = Process("tests.fakes.upstream", ready_path="/v1/models")
    yield proc
    proc.stop()


def project(root: Path, upstream: Process) -> Path:
    config = {
        "store": {"flush_interval_ms": 50},
        "capture": {"mode": "redacted"},  # capture.db, and the review queue beside the releases
        "targets": {"up": {"provider": "openai", "base_url": upstream.url + "/v1", "model": "m"}},
        "tenants": {"acme": {"keys": [KEY]}},  # issued keys in keys.db
        # The canary controller runs too, but never acts here: its sample is out of reach.
        "tasks": {"t": {"route": ["up"], "review_rate": 0.2, "canary": {"interval_s": 3600, "min_requests": 10**6}}},
    }
    (root / "turnout.yaml").write_text(json.dumps(config))
    folder = root / "releases" / "t"
    folder.mkdir(parents=True)
    for name in RELEASES:
        (folder / f"{name}.yaml").write_text(
            f"target: up\nmodel_version: w-{name}\nprompt:\n  user: 'Say {{{{ text }}}}'\n"
            "  variables: {text: str}\nparams: {max_tokens: 8}\n"
        )
    return root / "turnout.yaml"


def transition(root: Path, args: tuple[str, ...]) -> None:
    extra = ("--why", "test") if args[0] != "rollback" else ("--why", "back")
    release_cli(root, args[0], "t", *args[1:], "--by", "ci", *extra)


async def evaluated(root: Path) -> None:
    store = ReleaseStore(root / ".turnout" / "releases.db")
    await store.open()
    try:
        for name in RELEASES[1:]:
            await store.mark_evaluated("t", name, "ci", "golden set passed (test)")
    finally:
        await store.aclose()


async def serving(served: Served) -> set[str]:
    """Which releases answer USERS distinct end users now."""
    headers = {"authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession() as http:

        async def one(n: int) -> str:
            body = {"variables": {"text": "hello"}}
            async with http.post(
                served.base_url + "/tasks/t", json=body, headers={**headers, "x-turnout-user": f"user-{n}"}
            ) as resp:
                assert resp.status == 200, await resp.text()
                return resp.headers["x-turnout-release"]

        return set(await asyncio.gather(*(one(n) for n in range(USERS))))


async def until_served(served: Served, expected: set[str], within_s: float) -> float:
    started = time.monotonic()
    while (seen := await serving(served)) != expected:
        assert time.monotonic() - started < within_s, f"still serving {seen}, expected {expected}"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def deleted_files(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.endswith("(deleted)"):
            out.append(target)
    return out


def test_twenty_cli_transitions_each_reach_the_running_gateway(tmp_path: Path, upstream: Process) -> None:
    path = project(tmp_path, upstream)
    release_cli(tmp_path, "register", "t", "--all", "--by", "ci")
    release_cli(tmp_path, "promote", "t", "v1", "--by", "ci", "--why", "first")
    asyncio.run(evaluated(tmp_path))
    with turnout_serve(tmp_path, path) as served:
        assert asyncio.run(serving(served)) == {"v1"}
        took = []
        for args, expected in STEPS:
            transition(tmp_path, args)
            # The registry polls every 0.5 s; a check of 80 requests takes a moment on top.
            took.append(asyncio.run(until_served(served, expected, within_s=2.0)))
        assert deleted_files(served.proc.pid) == []  # the WAL and shared-memory files are whole
    for name in ("turnout.db", "releases.db", "keys.db", "capture.db"):
        assert (tmp_path / ".turnout" / name).exists(), name
    assert max(took) < 2.0
