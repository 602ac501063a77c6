"""`turnout release` through click's CliRunner: register from files, list, show, canary,
promote (gated, bootstrap, --force), rollback, and the errors a user sees."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from turnout.cli.main import main
from turnout.releases.store import ReleaseStore

RELEASE = """
target: qwen
model_version: sha256:4f1c
prompt:
  system: "Extract."
  user: "{{{{ text }}}}"
  variables: {{text: str}}
params: {{temperature: {temperature}}}
"""


@pytest.fixture
def config(tmp_path: Path) -> str:
    return write_config(tmp_path)


def write_config(
    tmp_path: Path, extract: str = "{route: [qwen]}", releases: tuple[str, ...] = ("v1", "v2", "v3")
) -> str:
    """The config (task ``extract`` as the YAML ``extract`` says, and ``other``) and ``releases``
    of ``extract``, each at its own temperature; the config's path."""
    path = tmp_path / "turnout.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            targets:
              qwen: {{provider: openai, base_url: "http://127.0.0.1:9/v1", model: q}}
            tasks:
              extract: {extract}
              other: {{route: [qwen]}}
            releases:
              path: {json.dumps(str(tmp_path / "releases"))}
              store_path: {json.dumps(str(tmp_path / "state" / "releases.db"))}
            """
        )
    )
    for i, name in enumerate(releases):
        write(tmp_path, name, RELEASE.format(temperature=i / 5))
    return str(path)


def write(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / "releases" / "extract" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def invoke(config: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["release", *args, "--config", config], env={"TURNOUT_CONFIG": None})


def ok(config: str, *args: str) -> str:
    result = invoke(config, *args)
    assert result.exit_code == 0, result.output
    return result.output


def fails(config: str, *args: str) -> str:
    result = invoke(config, *args)
    assert result.exit_code != 0, result.output
    return result.output


def mark_evaluated(tmp_path: Path, name: str) -> None:
    """What `turnout eval` does when the gates pass (the eval harness is another module)."""

    async def run() -> None:
        async with ReleaseStore(tmp_path / "state" / "releases.db") as store:
            await store.mark_evaluated("extract", name, "turnout-eval", "gates passed")

    asyncio.run(run())


def test_the_whole_lifecycle(config: str, tmp_path: Path) -> None:
    out = ok(config, "register", "extract", "v1", "--by", "alice")
    assert out.startswith("v1: registered, version sha256:")
    assert "already registered (unchanged)" in ok(config, "register", "extract", "v1", "--by", "alice")
    out = ok(config, "register", "extract", "--all", "--by", "alice")
    assert "v1: already registered" in out and "v2: registered" in out and "v3: registered" in out

    out = ok(config, "promote", "extract", "v1", "--by", "alice", "--why", "first release")
    assert out == "extract: v1 is active for all traffic\n"

    out = fails(config, "canary", "extract", "v2", "--percent", "5", "--by", "alice", "--why", "try")
    assert "is registered; a canary needs an evaluated release (run its golden set first, or shadow it)" in out
    mark_evaluated(tmp_path, "v2")
    out = ok(config, "canary", "extract", "v2", "--percent", "5", "--by", "alice", "--why", "eval 41 passed")
    assert out == "extract: v2 takes 5% of traffic; v1 the rest\n"

    listing = ok(config, "list", "extract")
    lines = {line.split()[0]: line.split() for line in listing.splitlines()[1:]}
    assert lines["v1"][1:3] == ["active", "95%"]
    assert lines["v2"][1:3] == ["canary", "5%"]
    assert lines["v3"][1:3] == ["registered", "0%"]

    out = ok(config, "promote", "extract", "v2", "--by", "bob", "--why", "canary healthy")
    assert out == "extract: v2 is active for all traffic (was v1)\n"
    out = ok(config, "rollback", "extract", "--by", "carol", "--why", "complaints")
    assert out == "extract: v1 is active for all traffic; no canary\n"

    shown = ok(config, "show", "extract")  # the active one
    assert shown.startswith("release v1 of task extract\n")
    assert "state:          active (100% of traffic)" in shown
    assert '"temperature": 0' in shown
    assert "retired → active  by carol: complaints" in shown
    assert "registered → active  by alice: first release [bootstrap" in shown

    data = json.loads(ok(config, "show", "extract", "v2", "--format", "json"))
    assert data["state"] == "retired" and data["spec"]["params"] == {"temperature": 0.2}
    assert [(t["from_state"], t["to_state"], t["by"]) for t in data["transitions"]] == [
        (None, "registered", "alice"),
        ("registered", "evaluated", "turnout-eval"),
        ("evaluated", "canary", "alice"),
        ("canary", "active", "bob"),
        ("active", "retired", "carol"),
    ]
    assert data["transitions"][2]["percent"] == 5.0

    listed = json.loads(ok(config, "list", "extract", "--format", "json"))
    assert listed["serving"]["active"] == "v1" and listed["serving"]["previous_active"] is None
    assert [r["name"] for r in listed["releases"]] == ["v1", "v2", "v3"]


def test_promote_refuses_an_unevaluated_release_unless_forced(config: str) -> None:
    ok(config, "register", "extract", "--all", "--by", "alice")
    ok(config, "promote", "extract", "v1", "--by", "alice", "--why", "bootstrap")
    out = fails(config, "promote", "extract", "v3", "--by", "alice", "--why", "hurry")
    assert "turnout: release 'v3' of task 'extract' is registered, not evaluated" in out
    out = ok(config, "promote", "extract", "v3", "--force", "--by", "alice", "--why", "incident 88 hotfix")
    assert "v3 is active" in out
    shown = ok(config, "show", "extract", "v3")
    assert "incident 88 hotfix [forced: promoted from registered without passing its gates]" in shown


def test_a_changed_file_must_be_a_new_release(config: str, tmp_path: Path) -> None:
    ok(config, "register", "extract", "v1", "--by", "alice")
    write(tmp_path, "v1", RELEASE.format(temperature=0.7))
    out = fails(config, "register", "extract", "v1", "--by", "alice")
    assert "changing a release requires a new name" in out


def test_invalid_files_are_reported_with_file_and_key(config: str, tmp_path: Path) -> None:
    write(tmp_path, "bad", RELEASE.format(temperature=0).replace("target: qwen", "target: nope"))
    out = fails(config, "register", "extract", "--all", "--by", "alice")
    assert "release files are invalid:" in out
    assert f"{tmp_path / 'releases' / 'extract' / 'bad.yaml'}: target: target 'nope' is not on the route" in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("list", "nope"), "turnout: no task 'nope' in the config (tasks: extract, other)"),
        (("register", "extract", "v9", "--by", "a"), "turnout: no release file"),
        (("register", "other", "--all", "--by", "a"), "turnout: no release files for task 'other'"),
        (("register", "extract", "--by", "a"), "give a release NAME or --all"),
        (("register", "extract", "v1", "--all", "--by", "a"), "give a release NAME or --all"),
        (("show", "extract"), "turnout: task 'extract' has no active release; name one"),
        (("show", "extract", "v1"), "turnout: no release 'v1' registered for task 'extract'"),
        (("rollback", "extract", "--by", "a", "--why", "w"), "nothing to roll back"),
        (("promote", "extract", "v1", "--by", "a", "--why", " "), "Invalid value for '--why': must not be empty"),
        (("promote", "extract", "v1", "--why", "w"), "Missing option '--by'"),
        (("canary", "extract", "v1", "--percent", "0", "--by", "a", "--why", "w"), "is not in the range 0<x<=100"),
        (("canary", "extract", "v1", "--percent", "nan", "--by", "a", "--why", "w"), "'nan' is not a finite number"),
        (("shadow", "extract", "v1", "--percent", "nan", "--by", "a", "--why", "w"), "'nan' is not a finite number"),
    ],
)
def test_errors(config: str, args: tuple[str, ...], expected: str) -> None:
    assert expected in fails(config, *args)


def test_list_of_an_empty_task(config: str) -> None:
    assert (
        ok(config, "list", "extract") == "no releases registered for task 'extract' (see `turnout release register`)\n"
    )


def test_help_is_reachable_from_main(config: str) -> None:
    result = CliRunner().invoke(main, ["release", "--help"])
    assert result.exit_code == 0
    assert "turnout release canary extract v2 --percent 5" in result.output
