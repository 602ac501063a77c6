"""``turnout check --probe``: every upstream contacted the cheap way (a GET of /v1/models, never a
completion), its verdict per target and replica, and exit 1 when one cannot be reached or
refuses its credentials."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.fakes.bedrock import ACCESS_KEY, SECRET_KEY
from tests.serving import Process, free_port
from turnout.cli.main import main


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, Process]]:
    procs = {name: Process("tests.fakes.upstream", ready_path="/v1/models") for name in ("up", "refusing")}
    yield procs
    for p in procs.values():
        p.stop()


def run(tmp_path: Path, targets: dict[str, Any], env: dict[str, str] | None = None) -> tuple[int, str]:
    config = {"targets": targets, "tasks": {name: {"route": [name]} for name in targets}}
    path = tmp_path / "turnout.yaml"
    path.write_text(json.dumps(config))
    result = CliRunner().invoke(main, ["check", "--probe", "-c", str(path)], env=env or {})
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def openai(url: str, **extra: Any) -> dict[str, Any]:
    return {"provider": "openai", "base_url": url + "/v1", "model": "m", **extra}


def test_a_reachable_server_passes_and_gets_no_completion(tmp_path: Path, upstreams: dict[str, Process]) -> None:
    up = upstreams["up"]
    up.post("/_fault", {"mode": "ok"})
    code, out = run(tmp_path, {"selfhosted": openai(up.url)})
    assert code == 0, out
    assert "probe: selfhosted (openai): reachable" in out
    paths = [r["path"] for r in up.requests()]
    assert paths and all(p == "/v1/models" for p in paths), paths  # never a billable call


def test_a_refused_key_and_a_dead_replica_fail_with_their_reasons(
    tmp_path: Path, upstreams: dict[str, Process]
) -> None:
    upstreams["up"].post("/_fault", {"mode": "ok"})
    upstreams["refusing"].post("/_fault", {"mode": "status", "status": 401, "message": "bad key"})
    dead = f"http://127.0.0.1:{free_port()}"
    targets = {
        "keyed": openai(upstreams["refusing"].url, api_key="sk-wrong-0123456789"),
        "pair": {"provider": "openai", "base_urls": [upstreams["up"].url + "/v1", dead + "/v1"], "model": "m"},
        "gone": openai(dead),
    }
    code, out = run(tmp_path, targets)
    assert code == 1, out
    assert "probe: keyed (openai): UNREACHABLE" in out and "HTTP 401: credentials refused" in out
    assert "probe: pair (openai): reachable — failing: r1" in out  # one replica of two answers
    assert "probe:   replica r0: ok" in out and "probe:   replica r1: FAILING — cannot connect" in out
    assert "probe: gone (openai): UNREACHABLE" in out
    assert "unreachable or refusing: keyed, pair, gone" in out
    assert "sk-wrong" not in out and dead not in out  # neither a key nor an address in the report


def test_bedrock_is_probed_by_its_credentials_alone(tmp_path: Path) -> None:
    target = {"provider": "bedrock", "region": "us-east-1", "model": "deepseek.v3-v1:0"}
    env = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    code, out = run(tmp_path, {"cloud": target}, env)
    assert code == 0, out
    assert "probe: cloud (bedrock): reachable" in out and "credentials from env" in out
    missing = {**env, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_EC2_METADATA_DISABLED": "true"}
    code, out = run(tmp_path, {"cloud": target}, missing)
    assert code == 1 and "probe: cloud (bedrock): UNREACHABLE" in out, out


def test_without_probe_check_contacts_nothing(tmp_path: Path, upstreams: dict[str, Process]) -> None:
    up = upstreams["up"]
    up.post("/_fault", {"mode": "ok"})
    before = len(up.requests())
    path = tmp_path / "turnout.yaml"
    path.write_text(json.dumps({"targets": {"s": openai(up.url)}, "tasks": {"s": {"route": ["s"]}}}))
    result = CliRunner().invoke(main, ["check", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert "probe:" not in result.output and len(up.requests()) == before
