"""`turnout capture` through click's CliRunner: grant (with its checks), list, revoke, audit and
purge against a capture.db beside the configured ledger; and a running policy seeing a grant
the CLI made."""

from __future__ import annotations

import asyncio
import json
import re
import textwrap
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner, Result

from tests.test_capture_policy import eventually
from turnout.cli.main import main
from turnout.config import load_config
from turnout.privacy.capture import CapturePolicy, CaptureRow, CaptureStore

CONFIG = """
store: {{path: {path}}}
capture:
  rules:
    - {{task: support, mode: full}}
    - {{task: faq, mode: redacted}}
targets:
  local: {{provider: local}}
tenants:
  acme: {{}}
  bravo: {{}}
tasks:
  support: {{route: [local]}}
  faq: {{route: [local]}}
"""

T = TypeVar("T")

GRANT_ID = re.compile(r"grt_[0-9a-f]{16}")


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "turnout.yaml"
    path.write_text(textwrap.dedent(CONFIG.format(path=json.dumps(str(tmp_path / "state" / "turnout.db")))))
    return str(path)


def db(config: str) -> Path:
    return Path(config).parent / "state" / "capture.db"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, ["capture", *args], env={"TURNOUT_CONFIG": None})


def ok(*args: str) -> Result:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result


def grant(config: str, *extra: str, tenant: str = "acme", task: str = "support") -> str:
    result = ok(
        "grant", "-c", config, "--tenant", tenant, "--task", task, "--minutes", "30", "--reason", "ticket 4812",
        "--by", "alice", *extra,
    )  # fmt: skip
    [grant_id] = set(GRANT_ID.findall(result.stdout))
    return str(grant_id)


def listed(config: str, *args: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(ok("list", "-c", config, "--format", "json", *args).stdout)
    return found


def audited(config: str, *args: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(ok("audit", "-c", config, "--format", "json", *args).stdout)
    return found


def test_grant_list_and_audit(config: str) -> None:
    before = time.time()
    grant_id = grant(config)
    [g] = listed(config)
    assert g["id"] == grant_id and g["status"] == "active"
    assert (g["tenant"], g["task"], g["reason"], g["granted_by"]) == ("acme", "support", "ticket 4812", "alice")
    span = _ts(g["ends_at"]) - _ts(g["starts_at"])
    assert span == pytest.approx(1800) and _ts(g["starts_at"]) >= before - 1
    assert listed(config, "--active") == [g]
    [event] = audited(config)
    assert (event["event"], event["grant_id"], event["actor"]) == ("granted", grant_id, "alice")
    table = ok("list", "-c", config).stdout
    assert grant_id in table and "active" in table and "ticket 4812" in table
    assert "granted" in ok("audit", "-c", config).stdout


def test_grant_is_refused_without_its_conditions(config: str) -> None:
    base = ["grant", "-c", config, "--minutes", "30", "--reason", "r", "--by", "alice"]
    result = invoke(*base, "--tenant", "nobody", "--task", "support")
    assert result.exit_code == 1 and "no tenant 'nobody'" in result.stderr
    result = invoke(*base, "--tenant", "acme", "--task", "nothing")
    assert result.exit_code == 1 and "no task 'nothing'" in result.stderr
    result = invoke(*base, "--tenant", "acme", "--task", "faq")
    assert result.exit_code == 1 and "is 'redacted'" in result.stderr and "mode: full" in result.stderr
    for missing in ("--reason", "--by"):
        args = ["grant", "-c", config, "--tenant", "acme", "--task", "support", "--minutes", "30"]
        args += [a for flag, value in (("--reason", "r"), ("--by", "x")) if flag != missing for a in (flag, value)]
        result = invoke(*args)
        assert result.exit_code == 2 and f"Missing option '{missing}'" in result.output
    result = invoke("grant", "-c", config, "--tenant", "acme", "--task", "support", "--minutes", "30",
                    "--reason", "   ", "--by", "alice")  # fmt: skip
    assert result.exit_code == 2 and "must not be empty" in result.output
    for minutes in ("0", "1441", "soon"):
        result = invoke("grant", "-c", config, "--tenant", "acme", "--task", "support", "--minutes", minutes,
                        "--reason", "r", "--by", "alice")  # fmt: skip
        assert result.exit_code == 2, result.output
    assert not db(config).exists() or listed(config) == []


def test_revoke(config: str) -> None:
    grant_id = grant(config)
    result = ok("revoke", grant_id, "--by", "bob", "-c", config)
    assert f"Revoked {grant_id}" in result.stdout
    [g] = listed(config)
    assert g["status"] == "revoked" and g["revoked_by"] == "bob"
    assert listed(config, "--active") == []
    assert "already revoked" in ok("revoke", grant_id, "--by", "carol", "-c", config).stdout
    assert [e["event"] for e in audited(config)] == ["granted", "revoked"]
    result = invoke("revoke", "grt_0000000000000000", "--by", "bob", "-c", config)
    assert result.exit_code == 1 and "no grant with id" in result.stderr
    assert invoke("revoke", grant_id, "-c", config).exit_code == 2  # --by is required


def test_expired_grants_are_listed_and_audited_once(config: str) -> None:
    now = time.time()
    made = asyncio.run(_with_store(config, lambda s: s.create_grant("acme", "support", now - 120, now - 60, "r", "a")))
    assert [g["status"] for g in listed(config)] == ["expired"]
    assert listed(config, "--active") == []
    listed(config)
    audited(config)
    ok("purge", "-c", config)
    result = ok("revoke", made.id, "--by", "bob", "-c", config)
    assert "already expired" in result.stdout
    events = [e["event"] for e in audited(config)]
    assert events == ["granted", "expired", "purged"]


def test_purge_deletes_expired_captures_and_audits_it(config: str) -> None:
    now = time.time()
    rows = [
        CaptureRow("old", "acme", "faq", "redacted", None, now - 10, now - 1, "p", None),
        CaptureRow("new", "acme", "faq", "redacted", None, now, now + 86_400, "p", None),
    ]
    asyncio.run(_with_store(config, lambda s: s.write_captures(rows)))
    assert "Purged 1 captures" in ok("purge", "-c", config).stdout
    kept = asyncio.run(_with_store(config, lambda s: s.captures()))
    assert [r.request_id for r in kept] == ["new"]
    [event] = audited(config)
    assert (event["event"], event["actor"], event["detail"]) == (
        "purged",
        "cli",
        "deleted 1 captures past their retention",
    )


def test_audit_filters_by_tenant_and_limit(config: str) -> None:
    grant(config, tenant="acme")
    grant(config, tenant="bravo")
    assert [e["tenant"] for e in audited(config, "--tenant", "bravo")] == ["bravo"]
    assert [e["tenant"] for e in audited(config, "--limit", "1")] == ["bravo"]
    assert ok("audit", "-c", config, "--tenant", "nobody").stdout.strip() == "no audit events"
    assert ok("list", "-c", config, "--tenant", "nobody").stdout.strip() == "no grants"


def test_capture_help_is_registered() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert "capture" in result.output
    assert "grant" in ok("--help").stdout


async def test_a_running_gateway_sees_a_cli_grant(config: str) -> None:
    cfg = load_config(config)
    store = CaptureStore(db(config))
    await store.open()
    policy = CapturePolicy(cfg.capture, store, refresh_interval_s=0.01)
    await policy.start()
    try:
        assert policy.decide("acme", "support").mode == "metadata"
        grant_id = await asyncio.to_thread(grant, config)
        await eventually(lambda: policy.decide("acme", "support").grant_id == grant_id)
        await asyncio.to_thread(ok, "revoke", grant_id, "--by", "bob", "-c", config)
        await eventually(lambda: policy.decide("acme", "support").mode == "metadata")
    finally:
        await policy.aclose()
        await store.aclose()


async def _with_store(config: str, action: Callable[[CaptureStore], Awaitable[T]]) -> T:
    store = CaptureStore(db(config))
    await store.open()
    try:
        return await action(store)
    finally:
        await store.aclose()


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@pytest.mark.parametrize("kind", ["memory", "none"])
def test_every_command_refuses_a_capture_the_gateway_keeps_in_memory(tmp_path: Path, kind: str) -> None:
    # A ledger in memory (or none) puts the gateway's capture in memory: a grant written to a
    # capture.db here was "active" in `capture list` and never reached it.
    path = tmp_path / "turnout.yaml"
    path.write_text(textwrap.dedent(CONFIG.format(path=json.dumps(str(tmp_path / "turnout.db")))))
    path.write_text(path.read_text().replace("store: {path:", f"store: {{kind: {kind}, path:"))
    for args in (
        ("grant", "--tenant", "acme", "--task", "support", "--minutes", "30", "--reason", "r", "--by", "alice"),
        ("list",),
        ("audit",),
        ("revoke", "grt_0123456789abcdef", "--by", "alice"),
        ("purge",),
    ):
        result = invoke(*args, "-c", str(path))
        assert result.exit_code == 1, result.output
        assert f"with store.kind: {kind}, the gateway keeps capture (grants, audit, text) in memory" in result.stderr
    assert not (tmp_path / "capture.db").exists()


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://turnout@127.0.0.1:1/test?sslmode=disable&password=pw-CANARY",
        "postgresql://turnout:pw-CANARY@127.0.0.1:1/test",
        "postgresql://turnout:pw%40CANARY@127.0.0.1:1/test",
    ],
)
def test_a_state_database_that_does_not_answer_is_named_without_its_password(tmp_path: Path, dsn: str) -> None:
    """The CLI's error names where it looked: a password in the DSN's user information or in its
    query (`?password=`, which libpq and asyncpg read) is left out."""
    path = tmp_path / "turnout.yaml"
    raw = CONFIG.format(path=json.dumps(str(tmp_path / "turnout.db"))).replace(
        "store: {", f"state: {{kind: postgres}}\nstore: {{kind: postgres, dsn: {json.dumps(dsn)}, "
    )
    path.write_text(textwrap.dedent(raw))
    result = invoke("list", "--config", str(path))
    assert result.exit_code == 1, result.output
    assert "127.0.0.1:1/test" in result.output
    assert "CANARY" not in result.output, result.output
