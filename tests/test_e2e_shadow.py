"""Shadow releases end to end: a real ``turnout serve``, two fake upstreams as processes (``live``
for the active release v1, ``cand`` for v2), the CLI as subprocesses against the running
gateway's config and the official SDK as the client.

- A shadow candidate that disagrees with the served answer on exactly 20% of requests (the fake
  echoes each user message, and ``cand`` alters those that end in 0 or 5: a fifth) shows it
  in ``turnout release show``: agreement 0.8, within its 95% interval, over one pair a request;
  ``turnout report shadow`` lists the same sample.
- A shadow whose daily spending cap is reached stops mirroring: the candidate's calls stop at
  the cap while every served request still answers, and ``/metrics`` counts the ``capped`` ones.

The shadow starts while the gateway runs (``turnout release shadow``); the gateway picks it up
at its next registry poll. Requests of the ``restricted`` data class, which the policy keeps off
``cand``, tell when it has: they are mirrored from then on, counted ``not_allowed``, and leave
neither a pair nor a call at the candidate.
"""

from __future__ import annotations

import json
import re
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.serving import Process, Served, release_cli, sdk_client, turnout_cli, turnout_serve
from tests.test_shadow import RELEASE

pytestmark = pytest.mark.slow

KEY = "sk-acme-e2e-shadow-0001"
TASK = "chat"
REQUESTS = 100
DIFFERS = "[05]$"  # the candidate alters the echo of item-…0 and item-…5: 20 of 100
PRICE = {"input_per_mtok": 1_000_000.0, "output_per_mtok": 1_000_000.0}  # $1 a token
USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}  # $10 a priced call
_SHADOW_LINE = re.compile(r"^turnout_shadow_total\{([^}]*)\} (\S+)$", re.M)


@pytest.fixture
def live() -> Iterator[Process]:
    proc = Process("tests.fakes.upstream", ready_path="/v1/models")
    proc.post("/_reply", {"echo": True})
    yield proc
    proc.stop()


@pytest.fixture
def cand() -> Iterator[Process]:
    proc = Process("tests.fakes.upstream", ready_path="/v1/models")
    yield proc
    proc.stop()


def project(root: Path, live: Process, cand: Process, shadow: dict[str, Any], price: bool = False) -> Path:
    """turnout.yaml, releases/chat/v1.yaml (target live) and v2.yaml (target cand); v1 active."""
    candidate: dict[str, Any] = {"provider": "openai", "base_url": cand.url + "/v1", "model": "m"}
    if price:
        candidate["price"] = PRICE
    config = {
        "targets": {"live": {"provider": "openai", "base_url": live.url + "/v1", "model": "m"}, "cand": candidate},
        "policy": {"restricted": {"targets": ["live"]}},
        "tenants": {"acme": {"keys": [KEY], "data_classes": ["internal", "restricted"]}},
        "tasks": {TASK: {"route": ["live", "cand"], "shadow": shadow}},
        "observability": {"metrics": True},
    }
    (root / "turnout.yaml").write_text(json.dumps(config))
    folder = root / "releases" / TASK
    folder.mkdir(parents=True)
    for name, target in (("v1", "live"), ("v2", "cand")):
        (folder / f"{name}.yaml").write_text(textwrap.dedent(RELEASE.format(target=target)))
    release_cli(root, "register", TASK, "--all", "--by", "ci")
    release_cli(root, "promote", TASK, "v1", "--by", "ci", "--why", "first")
    return root / "turnout.yaml"


def shadow_counts(served: Served) -> dict[str, float]:
    """``turnout_shadow_total`` of task chat, release v2, by result."""
    with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for labels, value in _SHADOW_LINE.findall(text):
        found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if found.get("task") == TASK and found.get("release") == "v2":
            out[found["result"]] = float(value)
    return out


def until(what: str, check: Callable[[], bool], within_s: float = 15.0, every_s: float = 0.05) -> None:
    end = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < end, f"not within {within_s}s: {what}"
        time.sleep(every_s)


def ask(client: openai.OpenAI, text: str, data_class: str | None = None) -> str:
    """One chat through the SDK; asserts a 200 and returns the answer's text."""
    headers = {"x-turnout-data-class": data_class} if data_class else None
    raw = client.chat.completions.with_raw_response.create(
        model=TASK, messages=[{"role": "user", "content": text}], extra_headers=headers
    )
    assert raw.status_code == 200
    content = raw.parse().choices[0].message.content
    assert content is not None
    return content


def start_shadow(root: Path, served: Served, client: openai.OpenAI) -> None:
    """``turnout release shadow`` against the running gateway, then restricted requests (never
    sent to ``cand``, so neither a pair nor a candidate call) until the gateway mirrors."""
    out = release_cli(root, "shadow", TASK, "v2", "--percent", "100", "--by", "ci", "--why", "compare")
    assert out.startswith(f"{TASK}: v2 gets a copy of 100% of v1's requests (never served)"), out

    def mirrored() -> bool:
        assert ask(client, "probe", data_class="restricted") == "probe"
        return shadow_counts(served).get("not_allowed", 0) > 0

    until("the gateway mirrors to the shadow", mirrored, every_s=0.1)


def outcomes(served: Served) -> float:
    """Requests mirrored to v2 (or refused by the caps), the policy's refusals aside."""
    return sum(v for k, v in shadow_counts(served).items() if k != "not_allowed")


def settled(served: Served, n: int) -> None:
    """Until ``n`` requests' shadow outcomes are counted (a call's once it has answered and was
    spent: the counter moves after the spend)."""
    until(f"{n} shadow outcomes counted", lambda: outcomes(served) >= n)


def show(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(release_cli(root, "show", TASK, "v2", "--format", "json"))
    return data


def report(root: Path) -> list[dict[str, Any]]:
    shadows: list[dict[str, Any]] = json.loads(turnout_cli(root, "report", "shadow", "--format", "json"))["shadows"]
    return shadows


def until_pairs(root: Path, n: int) -> dict[str, Any]:
    """``release show``'s shadow sample once it holds ``n`` pairs (written in batches)."""
    shown: dict[str, Any] = {}

    def complete() -> bool:
        nonlocal shown
        shown = show(root)
        return int(shown["shadow"]["pairs"]) >= n

    until(f"{n} pairs in the shadow store", complete, every_s=0.2)
    return shown


def chats(proc: Process) -> list[dict[str, Any]]:
    """The request bodies an upstream got at /v1/chat/completions."""
    return [r["body"] for r in proc.requests() if r["path"] == "/v1/chat/completions"]


def test_a_candidate_disagreeing_on_a_fifth_shows_it_in_release_show(
    tmp_path: Path, live: Process, cand: Process
) -> None:
    cand.post("/_reply", {"echo": True, "alter": DIFFERS})
    config = project(tmp_path, live, cand, {"max_concurrency": 2 * REQUESTS, "usd_per_day": 1.0, "min_pairs": 50})
    items = [f"item-{i:03d}" for i in range(REQUESTS)]
    with turnout_serve(tmp_path, config) as served:
        client = sdk_client(served.base_url, KEY)
        start_shadow(tmp_path, served, client)
        answers = [ask(client, item) for item in items]
        assert answers == items  # every served answer is live's: the candidate's never is
        settled(served, REQUESTS)
        counts = shadow_counts(served)
        shown = until_pairs(tmp_path, REQUESTS)
    assert {k: v for k, v in counts.items() if k != "not_allowed"} == {"agree": 80.0, "disagree": 20.0}
    sample = shown["shadow"]
    assert shown["state"] == "shadow"
    assert (sample["pairs"], sample["errors"], sample["compared"], sample["agreed"]) == (REQUESTS, 0, REQUESTS, 80)
    assert sample["agreement"] == 0.8
    interval = sample["agreement_interval"]
    assert interval["low"] < 0.8 < interval["high"]  # Wilson, 80 of 100: about 0.711 to 0.867
    assert 1 - interval["high"] < 0.2 < 1 - interval["low"]  # the 20% disagreement, within the sample's
    assert (sample["served"]["release"], sample["shadow"]["release"]) == ("v1", "v2")
    assert sample["shadow"]["p50_ms"] is not None and sample["shadow"]["cost_usd"] is None  # cand is unpriced
    gates = {g["name"]: g for g in sample["gates"]}
    assert gates["min_pairs"]["passed"] and gates["min_agreement"]["skipped"]
    # The candidate got each request once (its release's parameters, a bounded answer); the
    # restricted probes never reached it; live served them all.
    asked = chats(cand)
    assert sorted(b["messages"][-1]["content"] for b in asked) == items
    assert all(b["temperature"] == 0 and b["max_tokens"] > 0 for b in asked)
    served_texts = [b["messages"][-1]["content"] for b in chats(live)]
    assert [t for t in served_texts if t != "probe"] == items
    (listed,) = report(tmp_path)
    assert (listed["task"], listed["release"], listed["pairs"], listed["agreed"]) == (TASK, "v2", REQUESTS, 80)


def test_a_shadow_stops_mirroring_at_its_daily_spending_cap(tmp_path: Path, live: Process, cand: Process) -> None:
    cand.post("/_reply", {"echo": True, "usage": USAGE})  # $10 a call
    config = project(tmp_path, live, cand, {"max_concurrency": 8, "usd_per_day": 25.0}, price=True)
    sent = 10
    with turnout_serve(tmp_path, config) as served:
        client = sdk_client(served.base_url, KEY)
        start_shadow(tmp_path, served, client)
        calls = []
        for i in range(sent):
            assert ask(client, f"q{i}") == f"q{i}"  # served (200) whether mirrored or capped
            # One at a time: each shadow call settles (and is spent) before the next request.
            settled(served, i + 1)
            calls.append(len(chats(cand)))
        counts = shadow_counts(served)
        shown = until_pairs(tmp_path, 3)
    # $10, $20, $30: the third call passed the $25 cap, and no call was made after it.
    assert calls == [1, 2, 3] + [3] * (sent - 3)
    assert counts.get("capped", 0) == sent - 3 > 0
    assert counts.get("agree") == 3 and "busy" not in counts
    sample = shown["shadow"]
    assert sample["pairs"] == 3 and sample["shadow"]["cost_usd"] == pytest.approx(30.0)
    assert [b["messages"][-1]["content"] for b in chats(cand)] == ["q0", "q1", "q2"]
    (listed,) = report(tmp_path)
    assert (listed["release"], listed["pairs"]) == ("v2", 3)
