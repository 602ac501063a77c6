"""Canaries watched on live traffic through `turnout serve`: a candidate whose target fails 30%
of the time is rolled back without a human (and the transitions say why); a healthy candidate
walks its steps to 100% and becomes the active release."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.serving import Process, Served, release_cli, turnout_serve
from turnout.releases.store import ReleaseStore

pytestmark = pytest.mark.slow


def release_file(target: str) -> str:
    return (
        f"target: {target}\nmodel_version: weights-{target}\n"
        "prompt:\n  user: 'Summarise: {{ text }}'\n  variables: {text: str}\n"
        "params: {max_tokens: 16}\n"
    )


@pytest.fixture
def upstreams() -> Iterator[dict[str, Process]]:
    procs = {name: Process("tests.fakes.upstream", ready_path="/v1/models") for name in ("stable", "flaky", "fresh")}
    procs["flaky"].post("/_fault", {"mode": "status", "status": 500, "rate": 0.3})
    yield procs
    for p in procs.values():
        p.stop()


def project(root: Path, upstreams: dict[str, Process]) -> Path:
    targets = {
        name: {"provider": "openai", "base_url": up.url + "/v1", "model": "m", "retry": {"attempts": 1}}
        for name, up in upstreams.items()
    }
    # Latency and cost ratios are set wide: on a busy CI machine they are noise; the error rate decides.
    canary = {
        "steps": [20, 60, 100],
        "interval_s": 0.3,
        "min_requests": 25,
        "max_error_rate_delta": 0.1,
        "max_p95_ratio": 50,
        "max_cost_ratio": 50,
    }
    config = {
        "store": {"flush_interval_ms": 50},
        "targets": targets,
        "tasks": {"summarise": {"route": ["stable", "flaky", "fresh"], "canary": canary}},
    }
    (root / "turnout.yaml").write_text(json.dumps(config))
    folder = root / "releases" / "summarise"
    folder.mkdir(parents=True)
    for name, target in (("v1", "stable"), ("v2-flaky", "flaky"), ("v3-fresh", "fresh")):
        (folder / f"{name}.yaml").write_text(release_file(target))
    return root / "turnout.yaml"


async def prepare(root: Path, candidate: str) -> None:
    """v1 active; the candidate evaluated (as `turnout eval` would leave it) and in canary at 20%."""
    store = ReleaseStore(root / ".turnout" / "releases.db")
    await store.open()
    try:
        await store.mark_evaluated("summarise", candidate, "ci", "golden set passed (test)")
    finally:
        await store.aclose()


async def traffic(served: Served, until: Any, limit_s: float = 60.0) -> int:
    """Distinct end users, so the sticky split sends a share to the canary, until ``until()``."""
    sent = 0
    deadline = time.monotonic() + limit_s
    async with aiohttp.ClientSession() as http:
        while not until() and time.monotonic() < deadline:
            batch = []
            for _ in range(20):
                sent += 1
                headers = {"x-turnout-user": f"user-{sent}"}
                body = {"variables": {"text": "the quarterly report"}}
                batch.append(http.post(served.base_url + "/tasks/summarise", json=body, headers=headers))
            for resp in await asyncio.gather(*batch):
                await resp.read()
                resp.release()
            await asyncio.sleep(0.05)
    return sent


def state(root: Path) -> dict[str, Any]:
    out = json.loads(release_cli(root, "show", "summarise", "--format", "json"))
    assert isinstance(out, dict)
    return out


def serving_now(root: Path) -> tuple[str | None, str | None]:
    """(active, canary) straight from the release store, cheap enough to poll."""
    with sqlite3.connect(root / ".turnout" / "releases.db") as conn:
        row = conn.execute("SELECT active, canary FROM serving WHERE task = 'summarise'").fetchone()
    return (row[0], row[1]) if row else (None, None)


def serving_active(root: Path) -> str:
    listed = release_cli(root, "list", "summarise", "--format", "json")
    data = json.loads(listed)
    return str(data["serving"]["active"])


def test_a_failing_canary_is_rolled_back_and_a_healthy_one_promoted(
    tmp_path: Path, upstreams: dict[str, Process]
) -> None:
    path = project(tmp_path, upstreams)
    release_cli(tmp_path, "register", "summarise", "--all", "--by", "ci")
    release_cli(tmp_path, "promote", "summarise", "v1", "--by", "ci", "--why", "first release")
    asyncio.run(prepare(tmp_path, "v2-flaky"))
    release_cli(tmp_path, "canary", "summarise", "v2-flaky", "--percent", "20", "--by", "ci", "--why", "try v2")
    with turnout_serve(tmp_path, path) as served:
        asyncio.run(traffic(served, lambda: serving_now(tmp_path) == ("v1", None)))
        shown = release_cli(tmp_path, "show", "summarise", "v2-flaky")
        assert "turnout-canary" in shown and "error rate" in shown  # the audit says who and why
        assert serving_active(tmp_path) == "v1"

        asyncio.run(prepare(tmp_path, "v3-fresh"))
        release_cli(tmp_path, "canary", "summarise", "v3-fresh", "--percent", "20", "--by", "ci", "--why", "try v3")
        asyncio.run(traffic(served, lambda: serving_now(tmp_path) == ("v3-fresh", None)))
        assert serving_active(tmp_path) == "v3-fresh"
        shown = release_cli(tmp_path, "show", "summarise", "v3-fresh")
        assert "canary at 60%" in shown and "promoted" in shown  # it walked its steps
