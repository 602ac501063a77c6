"""`turnout keys` through click's CliRunner: create shows the secret once, list never does,
revoke, --expires, and the errors; with the keys in SQLite (the memory backend) and in Redis."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result

from turnout.cli._common import parse_time
from turnout.cli.main import main
from turnout.control.keys.base import digest
from turnout.control.keys.sqlite import SQLiteKeyStore

REDIS_URL = os.environ.get("TURNOUT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

CONFIG = """
limits: {limits}
targets:
  local: {{provider: local}}
tenants:
  acme: {{}}
  bravo: {{}}
tasks:
  default: {{route: [local]}}
"""

SECRET = re.compile(r"tk-[A-Za-z0-9_-]{43}")


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, ["keys", *args], env={"TURNOUT_CONFIG": None})


@pytest.fixture(params=["sqlite", "redis"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A config file whose limits backend keeps keys in a fresh SQLite file or Redis prefix."""
    if request.param == "sqlite":
        limits = f"{{keys_path: {json.dumps(str(tmp_path / 'state' / 'keys.db'))}}}"
        prefix = None
    else:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            client.ping()
        except redis.RedisError as exc:
            client.close()
            pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
        prefix = f"turnout-test-{uuid.uuid4().hex}"
        limits = f"{{backend: redis, redis_url: {json.dumps(REDIS_URL)}, key_prefix: {prefix}}}"
    path = tmp_path / "turnout.yaml"
    path.write_text(textwrap.dedent(CONFIG.format(limits=limits)))
    yield str(path)
    if prefix is not None:
        client.delete(f"{prefix}:keys", f"{prefix}:keyids")
        client.close()


def create(config: str, *args: str) -> tuple[str, str]:
    """Create a key; return its id and secret."""
    result = invoke("create", "-c", config, *args)
    assert result.exit_code == 0, result.output
    [secret] = SECRET.findall(result.stdout)
    [key_id] = set(re.findall(r"key_[0-9a-f]{16}", result.stdout))
    return key_id, secret


def listed(config: str, *args: str) -> list[dict[str, str | None]]:
    result = invoke("list", "-c", config, "--format", "json", *args)
    assert result.exit_code == 0, result.output
    rows: list[dict[str, str | None]] = json.loads(result.stdout)
    return rows


# --- create -------------------------------------------------------------------------------------


def test_create_prints_the_secret_once_with_the_record(config: str) -> None:
    result = invoke("create", "--tenant", "acme", "--name", "ci runner", "-c", config)
    assert result.exit_code == 0, result.output
    assert len(SECRET.findall(result.stdout)) == 1
    assert "tenant:  acme" in result.stdout
    assert "name:    ci runner" in result.stdout
    assert "expires: never" in result.stdout
    assert re.search(r"id:\s+key_[0-9a-f]{16}", result.stdout)
    assert "will not be shown again" in result.stdout
    assert result.stderr == ""


def test_list_never_shows_the_secret(config: str) -> None:
    key_id, secret = create(config, "-t", "acme", "-n", "ci")
    body = secret.removeprefix("tk-")
    table = invoke("list", "-c", config)
    assert table.exit_code == 0, table.output
    as_json = invoke("list", "-c", config, "--format", "json")
    for result in (table, as_json):
        assert body not in result.output
        assert body[:12] not in result.output
        assert digest(secret).hex() not in result.output
        assert key_id in result.output
        assert secret[:6] + "…" in result.output  # the hint


def test_list_is_a_readable_table(config: str) -> None:
    key_id, _ = create(config, "-t", "acme", "-n", "ci")
    result = invoke("list", "-c", config)
    header, row = result.stdout.splitlines()
    assert header.split() == ["ID", "TENANT", "NAME", "HINT", "CREATED", "EXPIRES", "STATUS"]
    assert row.startswith(key_id)
    assert row.split()[1:3] == ["acme", "ci"]
    assert row.split()[-2:] == ["never", "live"]
    assert header.index("TENANT") == row.index("acme")  # columns line up


def test_list_filters_by_tenant(config: str) -> None:
    acme, _ = create(config, "-t", "acme")
    bravo, _ = create(config, "-t", "bravo")
    assert [row["id"] for row in listed(config, "--tenant", "acme")] == [acme]
    assert [row["id"] for row in listed(config, "-t", "bravo")] == [bravo]
    assert {row["id"] for row in listed(config)} == {acme, bravo}


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_list_refuses_a_tenant_not_in_the_config_as_create_does(config: str, fmt: str) -> None:
    """Seen: `keys list --tenant ghost` said "no keys" and exited 0 where `keys create --tenant
    ghost` exits 1: a typo in a script read as a tenant without keys."""
    create(config, "-t", "acme")
    result = invoke("list", "-c", config, "-t", "ghost", "--format", fmt)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "turnout: no tenant 'ghost' in the config (tenants: acme, bravo)\n"


def test_list_with_no_keys(config: str) -> None:
    assert invoke("list", "-c", config).stdout == "no keys\n"
    assert listed(config) == []


def test_create_refuses_a_tenant_not_in_the_config(config: str) -> None:
    result = invoke("create", "--tenant", "ghost", "-c", config)
    assert result.exit_code == 1
    assert "no tenant 'ghost' in the config (tenants: acme, bravo)" in result.stderr
    assert result.stdout == ""
    assert listed(config) == []


def test_create_requires_a_tenant(config: str) -> None:
    result = invoke("create", "-c", config)
    assert result.exit_code == 2
    assert "--tenant" in result.stderr


def test_create_on_an_invalid_config_reports_it(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("limits: {backend: etcd}\n")
    result = invoke("create", "-t", "acme", "-c", str(path))
    assert result.exit_code == 1
    assert "is invalid" in result.stderr
    assert "limits.backend" in result.stderr


# --- expiry ---------------------------------------------------------------------------------------


def test_create_with_a_duration_sets_the_expiry(config: str) -> None:
    before = time.time()
    create(config, "-t", "acme", "--expires", "30d")
    [row] = listed(config)
    assert row["expires_at"] is not None
    expires = datetime.fromisoformat(row["expires_at"]).timestamp()
    assert before + 30 * 86400 - 1 < expires < time.time() + 30 * 86400 + 1
    assert row["status"] == "live"


def test_create_with_a_date_sets_the_expiry(config: str) -> None:
    result = invoke("create", "-t", "acme", "--expires", "2099-12-31", "-c", config)
    assert result.exit_code == 0, result.output
    assert "expires: 2099-12-31 00:00 UTC" in result.stdout
    [row] = listed(config)
    assert row["expires_at"] == "2099-12-31T00:00:00+00:00"


def test_create_refuses_a_bad_or_past_expiry(config: str) -> None:
    for bad, message in (
        ("soon", "neither a duration"),
        ("12y", "neither a duration"),
        ("2001-01-01", "in the past"),
        ("0d", "'0d' is now"),
    ):
        result = invoke("create", "-t", "acme", "--expires", bad, "-c", config)
        assert result.exit_code == 2, bad
        assert "--expires" in result.stderr
        assert message in result.stderr
    assert listed(config) == []


def test_an_expired_key_is_listed_as_expired(config: str) -> None:
    create(config, "-t", "acme", "--expires", "1s")
    time.sleep(1.1)
    [row] = listed(config)
    assert row["status"] == "expired"
    assert invoke("list", "-c", config).stdout.splitlines()[1].endswith("expired")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90m", 5400), ("12h", 43200), ("30d", 2592000), ("2w", 1209600), ("45s", 45), (" 7d ", 604800), ("1.5h", 5400)],
)
def test_durations(text: str, seconds: int) -> None:
    # The one grammar of every command: --expires counts forward from now.
    assert parse_time(text, 1000.0, ago=False) == 1000.0 + seconds


@pytest.mark.parametrize(
    ("text", "when"),
    [
        ("2027-03-01", datetime(2027, 3, 1, tzinfo=UTC)),
        ("2027-03-01T18:30", datetime(2027, 3, 1, 18, 30, tzinfo=UTC)),
        ("2027-03-01T18:30:00+02:00", datetime(2027, 3, 1, 16, 30, tzinfo=UTC)),
        ("2027-03-01T18:30:00Z", datetime(2027, 3, 1, 18, 30, tzinfo=UTC)),
    ],
)
def test_dates(text: str, when: datetime) -> None:
    assert parse_time(text, 0.0, ago=False) == when.timestamp()


@pytest.mark.parametrize("text", ["", "d", "-5d", "5 days", "2027-13-01", "tomorrow"])
def test_what_is_not_an_expiry(text: str) -> None:
    with pytest.raises(ValueError, match=r"neither a duration"):
        parse_time(text, 0.0, ago=False)


def test_no_expiry(config: str) -> None:
    result = invoke("create", "-t", "acme", "-c", config)
    assert result.exit_code == 0, result.output
    assert "expires: never" in result.stdout
    [row] = listed(config)
    assert row["expires_at"] is None


# --- revoke ---------------------------------------------------------------------------------------


def test_revoke_marks_the_key_revoked(config: str) -> None:
    key_id, _ = create(config, "-t", "acme", "-n", "ci")
    other, _ = create(config, "-t", "acme", "-n", "other")
    result = invoke("revoke", key_id, "-c", config)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"Revoked key {key_id} (tenant 'acme', name ci).\n"
    statuses = {row["id"]: row["status"] for row in listed(config)}
    assert statuses == {key_id: "revoked", other: "live"}
    [row] = [row for row in listed(config) if row["id"] == key_id]
    assert row["revoked_at"] is not None


def test_revoking_twice_says_so_and_keeps_the_first_time(config: str) -> None:
    key_id, _ = create(config, "-t", "acme")
    invoke("revoke", key_id, "-c", config)
    [first] = listed(config)
    time.sleep(0.01)
    result = invoke("revoke", key_id, "-c", config)
    assert result.exit_code == 0, result.output
    assert "was already revoked at" in result.stdout
    assert listed(config) == [first]


def test_revoke_an_unknown_id_exits_1(config: str) -> None:
    create(config, "-t", "acme")
    result = invoke("revoke", "key_0000000000000000", "-c", config)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "turnout: no key with id 'key_0000000000000000'" in result.stderr


def test_the_readmes_commands_work_as_written(config: str) -> None:
    """README's keys block, in order, on a fresh store: create, list, then revoke the id that its
    `jq -r` filter picks from `keys list --format json` (applied here as jq would)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    [block] = [b for b in readme.split("```sh\n")[1:] if "turnout keys revoke" in b.split("```")[0]]
    lines = [line.split("  #", 1)[0] for line in block.split("```")[0].splitlines()]
    made, listing, revoking = (shlex.split(line) for line in lines if line.strip())
    assert made[:3] == ["turnout", "keys", "create"] and listing[:3] == ["turnout", "keys", "list"]
    created = invoke(*made[2:], "-c", config)
    assert created.exit_code == 0, created.output
    [key_id] = set(re.findall(r"key_[0-9a-f]{16}", created.stdout))
    shown = invoke(*listing[2:], "-c", config)
    assert shown.exit_code == 0 and key_id in shown.stdout
    assert revoking[:3] == ["turnout", "keys", "revoke"]
    [(inner, jq)] = re.findall(r"^\$\(turnout keys list (.*?) \| jq -r '(.*)'\)$", revoking[3])
    as_json = invoke("list", *shlex.split(inner), "-c", config)
    assert as_json.exit_code == 0, as_json.output
    picked = jq_path(json.loads(as_json.stdout), jq)
    assert picked == key_id
    revoked = invoke("revoke", picked, "-c", config)
    assert revoked.exit_code == 0, revoked.output
    assert [row["status"] for row in listed(config)] == ["revoked"]


def jq_path(value: object, path: str) -> str:
    """What `jq -r PATH` prints for a path of `.[N]` and `.name` steps (null: "null")."""
    assert re.fullmatch(r"(\.\[\d+\]|\.\w+)+", path), f"not a plain path: {path}"
    steps = re.findall(r"\.\[(\d+)\]|\.(\w+)", path)
    for index, name in steps:
        if index:
            value = value[int(index)] if isinstance(value, list) and int(index) < len(value) else None
        else:
            value = value.get(name) if isinstance(value, dict) else None
    return "null" if value is None else str(value)


def test_a_running_store_sees_what_the_cli_does(tmp_path: Path) -> None:
    """The gateway's store (open throughout) and the CLI (another connection) on one file."""
    path = tmp_path / "keys.db"
    config = tmp_path / "turnout.yaml"
    config.write_text(textwrap.dedent(CONFIG.format(limits=f"{{keys_path: {json.dumps(str(path))}}}")))

    async def scenario() -> None:
        gateway = SQLiteKeyStore(path)
        await gateway.open()
        try:
            key_id, secret = await asyncio.to_thread(create, str(config), "-t", "acme")
            found = await gateway.lookup(digest(secret))
            assert found is not None
            assert found.live(time.time())
            revoked = await asyncio.to_thread(invoke, "revoke", key_id, "-c", str(config))
            assert revoked.exit_code == 0, revoked.output
            found = await gateway.lookup(digest(secret))
            assert found is not None
            assert not found.live(time.time())
        finally:
            await gateway.aclose()

    asyncio.run(scenario())


# --- help -----------------------------------------------------------------------------------------


def test_main_help_lists_keys() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert "keys" in result.stdout
    assert "Issue, list and revoke API keys." in result.stdout


def test_keys_help() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for text in ("create", "list", "revoke", "shown once", "SHA-256", "limits.keys_path"):
        assert text in result.stdout
    assert invoke("-h").stdout == result.stdout


def test_subcommand_help_mentions_the_options() -> None:
    for command, texts in (
        ("create", ("--tenant", "--name", "--expires", "30d", "ISO", "UTC", "--config")),
        ("list", ("--tenant", "--format", "json", "live, expired or revoked", "--config")),
        ("revoke", ("KEY_ID", "first time", "--config")),
    ):
        result = invoke(command, "--help")
        assert result.exit_code == 0
        for text in texts:
            assert text in result.stdout, (command, text)


def test_a_key_more_than_a_century_away_or_a_name_with_control_characters_is_refused(config: str) -> None:
    """The admin API caps a key's life at 100 years; the CLI took 200,000 days. A newline in a
    name broke `keys list`'s table."""
    far = invoke("create", "-t", "acme", "--expires", "200000d", "-c", config)
    assert far.exit_code == 2 and "100 years" in far.output
    forged = invoke("create", "-t", "acme", "--name", "ci\nkey_x acme forged", "-c", config)
    assert forged.exit_code == 2 and "control characters" in forged.output
    assert "ci" not in invoke("list", "-c", config).output
