"""`turnout release shadow`, the shadow sample in `release show`, the gates `release canary`
checks before a shadow takes traffic, and `turnout report shadow`, through click's CliRunner
over a real release store and shadow store."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import time
from pathlib import Path

import pytest

from tests.test_release_cli import fails, ok, write_config
from tests.test_shadow import pair
from turnout.cli.main import main
from turnout.releases.shadowstore import Pair, ShadowStore


@pytest.fixture
def config(tmp_path: Path) -> str:
    shadowed = "{route: [qwen], gates: {min_pass_rate: 0.9}, shadow: {min_pairs: 20, min_agreement: 0.7}}"
    return write_config(tmp_path, shadowed, ("v1", "v2"))


def add_pairs(tmp_path: Path, pairs: list[Pair]) -> None:
    async def run() -> None:
        async with ShadowStore(tmp_path / "state" / "shadow.db") as store:
            await store.write_pairs(pairs)

    asyncio.run(run())


def passing(n: int, start: int = 0) -> list[Pair]:
    now = time.time()
    return [pair(i, agree=i % 5 != 0, at=now - 600 + i) for i in range(start, start + n)]  # 80 % agree, all pass


def start(config: str) -> None:
    ok(config, "register", "extract", "--all", "--by", "alice")
    ok(config, "promote", "extract", "v1", "--by", "alice", "--why", "first")
    out = ok(config, "shadow", "extract", "v2", "--percent", "20", "--by", "alice", "--why", "compare first")
    assert out.startswith("extract: v2 gets a copy of 20% of v1's requests (never served)")


def test_a_shadow_is_started_listed_and_shown(config: str, tmp_path: Path) -> None:
    start(config)
    listing = ok(config, "list", "extract")
    assert re.search(r"^v2 +shadow +0% \(shadow of 20%\)", listing, re.M), listing
    data = json.loads(ok(config, "show", "extract", "v2", "--format", "json"))
    assert data["state"] == "shadow" and data["shadow"]["pairs"] == 0
    assert [g["name"] for g in data["shadow"]["gates"] if not g["passed"]] == [
        "min_pairs",
        "min_agreement",
        "min_pass_rate",
    ]
    assert "shadow sample: none yet" in ok(config, "show", "extract", "v2")
    assert not (tmp_path / "state" / "shadow.db").exists()  # reading never creates the store
    listed = json.loads(ok(config, "list", "extract", "--format", "json"))
    assert (listed["serving"]["shadow"], listed["serving"]["shadow_percent"]) == ("v2", 20.0)


def test_a_shadow_takes_traffic_only_once_its_sample_passes(config: str, tmp_path: Path) -> None:
    start(config)
    add_pairs(tmp_path, passing(10))
    out = fails(config, "canary", "extract", "v2", "--percent", "5", "--by", "alice", "--why", "looks fine")
    assert "is in shadow and its sample does not pass the task's gates" in out
    assert "min_pairs: 10 mirrored requests; 20 needed for a verdict" in out
    add_pairs(tmp_path, passing(20, start=10))
    shown = ok(config, "show", "extract", "v2")
    assert "shadow sample: 30 mirrored requests" in shown
    assert "agreement:  80.0% [" in shown and "of 30 compared" in shown
    assert "pass rate" in shown and "latency p50" in shown and "cost / request" in shown
    assert "pass  min_pairs" in shown and "FAIL" not in shown
    out = ok(config, "canary", "extract", "v2", "--percent", "5", "--by", "alice", "--why", "shadow ok")
    assert out == "extract: v2 takes 5% of traffic; v1 the rest\n"
    data = json.loads(ok(config, "show", "extract", "v2", "--format", "json"))
    last = data["transitions"][-1]
    assert (last["from_state"], last["to_state"]) == ("shadow", "canary")
    assert "[shadow sample passed the gates: 30 pairs, agreement 80.0%, pass 100.0%]" in last["why"]
    assert json.loads(ok(config, "list", "extract", "--format", "json"))["serving"]["shadow"] is None


def test_only_pairs_against_the_active_release_count(tmp_path: Path) -> None:
    """The sample was measured against the release active then: after a promotion, pairs whose
    served side was the old active release say nothing of the shadow against the new one."""
    shadowed = "{route: [qwen], gates: {min_pass_rate: 0.9}, shadow: {min_pairs: 20, min_agreement: 0.7}}"
    config = write_config(tmp_path, shadowed, ("v1", "v2", "v3"))
    ok(config, "register", "extract", "--all", "--by", "alice")
    ok(config, "promote", "extract", "v1", "--by", "alice", "--why", "first")
    ok(config, "shadow", "extract", "v3", "--percent", "20", "--by", "alice", "--why", "compare")
    now = time.time()
    add_pairs(tmp_path, [pair(i, shadow_release="v3", agree=i % 5 != 0, at=now - 600 + i) for i in range(30)])
    ok(config, "promote", "extract", "v2", "--force", "--by", "alice", "--why", "hotfix")
    out = fails(config, "canary", "extract", "v3", "--percent", "5", "--by", "alice", "--why", "sample passed")
    assert "min_pairs: 0 mirrored requests; 20 needed for a verdict" in out
    assert "shadow sample: none yet" in ok(config, "show", "extract", "v3")
    later = [pair(i, served_release="v2", shadow_release="v3", at=now - 60 + i / 10) for i in range(100, 125)]
    add_pairs(tmp_path, later)
    assert "shadow sample: 25 mirrored requests" in ok(config, "show", "extract", "v3")
    out = ok(config, "canary", "extract", "v3", "--percent", "5", "--by", "alice", "--why", "sample passed")
    assert out == "extract: v3 takes 5% of traffic; v2 the rest\n"


def test_a_failing_sample_is_refused_with_each_reason(config: str, tmp_path: Path) -> None:
    start(config)
    bad = [pair(i, agree=i % 2 == 0, shadow_pass=i % 3 != 0) for i in range(30)]
    add_pairs(tmp_path, bad)
    out = fails(config, "canary", "extract", "v2", "--percent", "5", "--by", "alice", "--why", "try")
    assert "min_agreement: v2 agrees with the served answer on 50.0%" in out
    assert "min_pass_rate: v2 passes 66.7%" in out
    assert "min_pairs" not in out  # passed gates are not listed


def test_stop_returns_the_release_and_bad_calls_are_usage_errors(config: str) -> None:
    start(config)
    out = ok(config, "shadow", "extract", "--stop", "--by", "alice", "--why", "enough")
    assert out == "extract: no shadow (stopped v2); v1 serves\n"
    assert re.search(r"^v2 +registered +0%", ok(config, "list", "extract"), re.M)
    assert "has no release in shadow" in fails(config, "shadow", "extract", "--stop", "--by", "a", "--why", "w")
    assert "--stop takes no --percent" in fails(
        config, "shadow", "extract", "--stop", "--percent", "5", "--by", "a", "--why", "w"
    )
    assert "give a release NAME and --percent" in fails(config, "shadow", "extract", "v2", "--by", "a", "--why", "w")
    assert "is active; only a release that serves no traffic" in fails(
        config, "shadow", "extract", "v1", "--percent", "5", "--by", "a", "--why", "w"
    )


def test_report_shadow(config: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    start(config)
    add_pairs(tmp_path, passing(25))

    def report(*args: str) -> str:
        got = CliRunner().invoke(
            main, ["report", "shadow", "--since", "1d", *args, "--config", config], env={"TURNOUT_CONFIG": None}
        )
        assert got.exit_code == 0, got.output
        return got.output

    table = report()
    assert "TASK" in table and "extract  v2" in table and "80.0% [" in table
    data = json.loads(report("--format", "json", "--task", "extract"))
    (only,) = data["shadows"]
    assert (only["task"], only["release"], only["pairs"], only["agreed"]) == ("extract", "v2", 25, 20)
    rows = list(csv.reader(io.StringIO(report("--format", "csv"))))
    assert rows[0][:4] == ["TASK", "SHADOW", "SERVED", "PAIRS"] and rows[1][:4] == ["extract", "v2", "v1", "25"]
    assert "no shadow pairs" in report("--task", "other")


def test_report_shadow_keeps_each_active_release_apart(config: str, tmp_path: Path) -> None:
    """Seen: pairs served by v1, then (after a promotion) by v3, were summed as one sample of v2
    "against v1": a shadow is compared with the release that was active, one line for each."""
    from click.testing import CliRunner

    start(config)
    now = time.time()
    before = [pair(i, agree=True, at=now - 600 + i) for i in range(10)]  # served by v1: all agree
    after = [pair(i, served_release="v3", agree=False, at=now - 60 + i / 10) for i in range(10, 16)]
    add_pairs(tmp_path, before + after)
    args = ["report", "shadow", "--since", "1d", "--format", "json", "--config", config]
    got = CliRunner().invoke(main, args, env={"TURNOUT_CONFIG": None})
    assert got.exit_code == 0, got.output
    found = [(s["release"], s["served"]["release"], s["pairs"], s["agreed"]) for s in json.loads(got.output)["shadows"]]
    assert found == [("v2", "v1", 10, 10), ("v2", "v3", 6, 0)]
