"""`turnout serve` with one target of two replicas (fake upstream processes) and active health
checks, driven by the official openai SDK: a replica made to fail its health check gets no live
traffic once two checks have seen it (counted at the fakes), and gets traffic again after it
recovers; the gateway shuts down cleanly with the check loop running."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.serving import Process, Served, sdk_client, turnout_serve

pytestmark = pytest.mark.slow
KEY = "sk-e2e-health-77b2"
INTERVAL_S = 0.2
BOUND_S = 20.0  # a liveness bound for waits, never an assertion on time


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[Process]]:
    started: list[Process] = []
    try:
        for _ in range(2):
            started.append(Process("tests.fakes.upstream", "--model", "m"))
        yield started
    finally:
        for fake in started:
            fake.stop()


@pytest.fixture(scope="module")
def served(replicas: list[Process], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    cwd = tmp_path_factory.mktemp("serve")
    config = {
        "targets": {
            "pool": {
                "provider": "openai",
                "base_urls": [f"{r.url}/v1" for r in replicas],
                "model": "m",
                "retry": {"attempts": 1},
                "breaker": {"failures": 5, "cooldown_s": 0.5},
                "health": {"interval_s": INTERVAL_S, "timeout_s": 1.0},
            }
        },
        "tenants": {"acme": {"keys": [KEY]}},
        "tasks": {"chat": {"route": ["pool"]}},
    }
    path = cwd / "turnout.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    with turnout_serve(cwd, path) as s:
        yield s


def ask(served: Served) -> None:
    sdk_client(served.base_url, KEY).chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )


def chats(fake: Process) -> int:
    return sum(1 for r in fake.requests() if r["path"] == "/v1/chat/completions")


def checks(fake: Process) -> int:
    with urllib.request.urlopen(fake.url + "/_health", timeout=5) as resp:  # noqa: S310 - loopback
        seen: int = json.loads(resp.read())["checks"]
        return seen


def wait(condition: Any, what: str) -> None:
    end = time.monotonic() + BOUND_S
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"never: {what}")
        time.sleep(INTERVAL_S / 4)


def test_both_replicas_serve_and_are_checked(served: Served, replicas: list[Process]) -> None:
    for _ in range(4):
        ask(served)
    assert [chats(r) for r in replicas] == [2, 2]  # ties rotate
    wait(lambda: all(checks(r) >= 2 for r in replicas), "both replicas checked")


def test_a_replica_failing_its_check_gets_no_live_traffic(served: Served, replicas: list[Process]) -> None:
    good, bad = replicas
    bad.post("/_health", {"status": 503})
    seen = checks(bad)
    # The second check after the switch starts only after the first one's round has ended,
    # and so after its verdict: two check intervals.
    wait(lambda: checks(bad) >= seen + 2, "two checks of the failing replica")
    before = (chats(good), chats(bad))
    for _ in range(6):
        ask(served)
    assert (chats(good), chats(bad)) == (before[0] + 6, before[1])


def test_it_comes_back_after_it_recovers(served: Served, replicas: list[Process]) -> None:
    _, bad = replicas
    bad.post("/_health", {"status": 200})
    before = chats(bad)

    def served_again() -> bool:
        ask(served)
        return chats(bad) > before

    wait(served_again, "live traffic at the recovered replica")


def test_zz_shutdown_ends_the_check_loop(served: Served, replicas: list[Process]) -> None:
    served.stop()
    assert served.proc.poll() is not None
    settled = [checks(r) for r in replicas]
    time.sleep(INTERVAL_S * 3)  # long enough for three more rounds, had the loop outlived the server
    assert [checks(r) for r in replicas] == settled
