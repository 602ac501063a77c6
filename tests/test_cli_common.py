"""What every command shares (``turnout.cli._common``): errors that carry their exit code and
render themselves, one ``--config``, one grammar for durations and times, a store opened for one
action, tables and times. Through click's CliRunner, on real commands where it matters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from tests.test_plan_cli import seed
from turnout.cli._common import (
    AGO,
    AHEAD,
    CONTEXT_SETTINGS,
    CommandError,
    CommandGroup,
    by_option,
    config_option,
    format_option,
    iso,
    need,
    parse_duration,
    parse_time,
    print_table,
    run_store,
    tenant_option,
    when,
)
from turnout.cli.main import main
from turnout.config import Config
from turnout.errors import TurnoutError
from turnout.ledger.record import LedgerRow

AT = 1_767_225_600.0 + 3723  # 2026-01-01 01:02:03 UTC


class StoreError(TurnoutError):
    pass


class Store:
    def __init__(self, fail_open: OSError | None = None) -> None:
        self.events: list[str] = []
        self.fail_open = fail_open

    async def open(self) -> None:
        if self.fail_open is not None:
            raise self.fail_open
        self.events.append("open")

    async def aclose(self) -> None:
        self.events.append("close")


def invoke(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env={"TURNOUT_CONFIG": None, **(env or {})})


def failed_cleanly(result: Result, code: int) -> str:
    """The exit code, no traceback (click's own exit, not an exception escaping); stderr."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result.stderr


# --- output ---------------------------------------------------------------------------------------


def test_times_are_utc() -> None:
    assert when(AT) == "2026-01-01 01:02 UTC"
    assert when(AT, seconds=True) == "2026-01-01 01:02:03 UTC"
    assert iso(AT) == "2026-01-01T01:02:03+00:00"
    assert iso(None) is None


def test_a_table_aligns_its_columns(capsys: pytest.CaptureFixture[str]) -> None:
    print_table([("ID", "NAME"), ("k_1", "ci"), ("k_22", "")])
    assert capsys.readouterr().out == "ID    NAME\nk_1   ci\nk_22\n"


# --- errors ---------------------------------------------------------------------------------------


def group_with(failure: BaseException) -> click.Group:
    """A top group (as ``turnout`` is) whose one command raises ``failure``."""

    @click.group(cls=CommandGroup)
    def top() -> None:
        pass

    @top.command()
    def go() -> None:
        raise failure

    return top


def test_a_command_error_is_one_line_on_stderr_and_exit_1() -> None:
    result = CliRunner().invoke(group_with(CommandError("no such thing")), ["go"])
    assert failed_cleanly(result, 1) == "turnout: no such thing\n"
    assert result.stdout == ""


def test_a_listing_names_every_problem() -> None:
    error = CommandError.listing("x.yaml is invalid", ["a: bad", "b: worse"])
    result = CliRunner().invoke(group_with(error), ["go"])
    assert failed_cleanly(result, 1) == "turnout: x.yaml is invalid:\n  a: bad\n  b: worse\n"


def test_turnouts_errors_and_the_systems_end_the_command_with_their_message() -> None:
    result = CliRunner().invoke(group_with(StoreError("the store is locked")), ["go"])
    assert failed_cleanly(result, 1) == "turnout: the store is locked\n"
    missing = FileNotFoundError(2, "No such file or directory", "/nowhere/x.svg")
    result = CliRunner().invoke(group_with(missing), ["go"])
    assert failed_cleanly(result, 1) == "turnout: /nowhere/x.svg: No such file or directory\n"


@pytest.mark.parametrize("args", [("check",), ("--help",), ("keys", "--help")])
def test_output_into_a_reader_that_left_ends_quietly(args: tuple[str, ...], tmp_path: Path) -> None:
    """`turnout … | head -1`: the reader has gone before the command writes (its end of the
    pipe closed first, so this does not depend on timing)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "turnout", *args],
            cwd=tmp_path,  # no turnout.yaml: the built-in config
            env={k: v for k, v in os.environ.items() if k != "TURNOUT_CONFIG"},
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert done.stderr == ""  # no "turnout: Broken pipe", no "Exception ignored … BrokenPipeError"
    assert done.returncode == 0


def test_a_bug_keeps_its_traceback() -> None:
    result = CliRunner().invoke(group_with(ValueError("a bug")), ["go"])
    assert result.exit_code == 1
    assert isinstance(result.exception, ValueError)


def test_usage_errors_stay_clicks_exit_2() -> None:
    result = CliRunner().invoke(group_with(click.BadParameter("nope")), ["go"])
    assert failed_cleanly(result, 2).endswith("Error: Invalid value: nope\n")


def test_an_unknown_name_ends_the_command() -> None:
    need("tenant", "acme", {"acme", "beta"})
    with pytest.raises(CommandError, match=r"^no task 'extract' in the config \(tasks: classify, summarize\)$"):
        need("task", "extract", {"summarize", "classify"})
    with pytest.raises(CommandError, match=r"\(tenants: none\)$"):
        need("tenant", "acme", set())


# --- stores ---------------------------------------------------------------------------------------


def test_a_store_is_opened_for_one_action_and_closed() -> None:
    store = Store()

    async def action(s: Store) -> int:
        s.events.append("act")
        return 42

    assert run_store(lambda: store, action, "the store") == 42
    assert store.events == ["open", "act", "close"]


def test_the_stores_error_passes_and_the_store_is_closed() -> None:
    store = Store()

    async def action(s: Store) -> int:
        raise StoreError("the store is locked")

    with pytest.raises(StoreError, match="locked"):
        run_store(lambda: store, action, "the store")
    assert store.events == ["open", "close"]


def test_a_store_that_cannot_be_opened_is_named() -> None:
    async def action(s: Store) -> int:
        raise AssertionError("not reached")

    in_the_way = FileExistsError(17, "File exists", "/tmp/file")
    with pytest.raises(CommandError, match=r"^cannot open the key store: /tmp/file: File exists$"):
        run_store(lambda: Store(fail_open=in_the_way), action, "the key store")


def test_other_errors_are_not_swallowed() -> None:
    async def action(s: Store) -> int:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        run_store(Store, action, "the store")


# --- shared options -------------------------------------------------------------------------------


def test_the_options_and_the_blank_check(tmp_path: Path) -> None:
    @click.command(context_settings=CONTEXT_SETTINGS)
    @by_option("who")
    @tenant_option("whose")
    @format_option()
    @config_option("the config")
    def command(by: str, tenant: str | None, fmt: str, config: Config) -> None:
        click.echo(f"{by}|{tenant}|{fmt}|{sorted(config.tasks)}")

    path = tmp_path / "t.yaml"
    path.write_text(
        "targets: {gpt: {provider: openai, base_url: 'http://g/v1', model: m}}\ntasks: {qa: {route: [gpt]}}\n"
    )
    runner = CliRunner()
    assert runner.invoke(command, ["--by", " alice "]).output == "alice|None|table|['default']\n"
    result = runner.invoke(command, ["--by", "a", "-t", "acme", "--format", "json"], env={"TURNOUT_CONFIG": str(path)})
    assert result.output == "a|acme|json|['qa']\n"
    result = runner.invoke(command, ["--by", "  "])
    assert result.exit_code == 2 and "must not be empty" in result.output
    text = runner.invoke(command, ["--help"]).output
    for part in ("A table to read, or JSON to process.", "[default: table]", "TURNOUT_CONFIG", "built-in"):
        assert part in text


# --- durations and times --------------------------------------------------------------------------

ACCEPTED = [
    ("30s", 30),
    ("15m", 900),
    ("2h", 7200),
    ("7d", 604800),
    ("2w", 1209600),
    ("1.5h", 5400),  # a decimal amount (plan and report took one; keys now does too)
    (" 7d ", 604800),
    ("5 d", 432000),
    ("0d", 0),
]
REFUSED = ["", "d", "7", "-5d", "5 days", "7D", "1y", "1e3s", ".5h", "7d ago", "1h30m", "tomorrow", "soon"]


@pytest.mark.parametrize(("text", "seconds"), ACCEPTED)
def test_the_duration_grammar_accepts(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
    assert parse_time(text, 10_000_000.0, ago=True) == 10_000_000.0 - seconds
    assert parse_time(text, 10_000_000.0, ago=False) == 10_000_000.0 + seconds


@pytest.mark.parametrize("text", REFUSED)
def test_the_duration_grammar_refuses(text: str) -> None:
    assert parse_duration(text) is None
    with pytest.raises(ValueError, match="is neither a duration nor a date: expected a duration"):
        parse_time(text, 0.0, ago=True)


def test_times_are_iso_dates_utc_unless_they_say() -> None:
    assert parse_time("2026-01-01", 0.0, ago=True) == 1_767_225_600.0
    assert parse_time("2026-01-01T01:02:03", 0.0, ago=False) == AT
    assert parse_time("2026-01-01T02:02:03+01:00", 0.0, ago=True) == AT
    assert parse_time("2026-01-01T01:02:03Z", 0.0, ago=True) == AT


def test_a_time_too_far_away_is_refused_not_a_crash() -> None:
    with pytest.raises(ValueError, match="too far from now"):
        parse_time("99999999999w", time.time(), ago=False)


def test_an_expiry_must_be_in_the_future_a_window_start_need_not() -> None:
    assert AGO.convert("0d", None, None) <= time.time()
    with pytest.raises(click.BadParameter, match=r"'0d' is (now|in the past)"):
        AHEAD.convert("0d", None, None)
    with pytest.raises(click.BadParameter, match="in the past"):
        AHEAD.convert("2001-01-01", None, None)
    assert AHEAD.convert("1s", None, None) > time.time()


# --- the real commands: one --config, one grammar, the error paths -------------------------------


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A config with every store under tmp_path, a ledger with one request of 'support' a
    second old, one release file and a golden set."""
    (tmp_path / "releases" / "support").mkdir(parents=True)
    (tmp_path / "releases" / "support" / "v1.yaml").write_text(
        "target: gpt\nmodel_version: m\ntokenizer: t\nprompt:\n  user: '{{ q }}'\n  variables: {q: str}\n"
    )
    (tmp_path / "evals").mkdir()
    (tmp_path / "turnout.yaml").write_text(config_text(tmp_path))
    now = time.time()
    row = LedgerRow(
        "r1", now - 1, "acme", "support", "internal", False, target="gpt", status=200, prompt_tokens=10, latency_ms=5
    )
    seed(tmp_path / "ledger.db", [row])
    return tmp_path / "turnout.yaml"


def config_text(root: Path, *, store: str | None = None) -> str:
    return textwrap.dedent(
        f"""
        store: {store or json.dumps({"kind": "sqlite", "path": str(root / "ledger.db")})}
        limits: {{keys_path: {json.dumps(str(root / "keys.db"))}}}
        releases:
          path: {json.dumps(str(root / "releases"))}
          store_path: {json.dumps(str(root / "releases.db"))}
          evals_path: {json.dumps(str(root / "evals"))}
        targets:
          gpt:
            provider: openai
            base_url: "http://127.0.0.1:9/v1"
            model: gpt
            price: {{input_per_mtok: 3, output_per_mtok: 15}}
        tenants:
          acme: {{}}
        tasks:
          support: {{route: [gpt]}}
        capture:
          rules: [{{tenant: acme, task: support, mode: full}}]
        """
    )


# Every command that takes --config, with arguments that are valid once the config loads.
COMMANDS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("serve",): (),
    ("check",): (),
    ("keys", "create"): ("-t", "acme"),
    ("keys", "list"): (),
    ("keys", "revoke"): ("key_0000000000000000",),
    ("capture", "grant"): ("-t", "acme", "--task", "support", "--minutes", "5", "--reason", "r", "--by", "me"),
    ("capture", "list"): (),
    ("capture", "revoke"): ("grt_0000000000000000", "--by", "me"),
    ("capture", "audit"): (),
    ("capture", "purge"): (),
    ("cache", "purge"): (),
    ("retention", "show"): (),
    ("release", "list"): ("support",),
    ("release", "show"): ("support", "v1"),
    ("release", "register"): ("support", "v1", "--by", "me"),
    ("release", "canary"): ("support", "v1", "--percent", "5", "--by", "me", "--why", "w"),
    ("release", "promote"): ("support", "v1", "--by", "me", "--why", "w"),
    ("release", "rollback"): ("support", "--by", "me", "--why", "w"),
    ("release", "shadow"): ("support", "v1", "--percent", "5", "--by", "me", "--why", "w"),
    ("eval", "run"): ("support", "--candidate", "v1"),
    ("eval", "import-reviews"): ("support",),
    ("plan",): ("--task", "support"),
    ("report",): ("cost",),
}


def commands_with_config(group: click.Group, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], click.Parameter]:
    found: dict[tuple[str, ...], click.Parameter] = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found |= commands_with_config(command, (*path, name))
        for param in command.params:
            if param.name == "config":
                found[(*path, name)] = param
    return found


def test_every_command_that_reads_a_config_takes_the_one_config_option() -> None:
    found = commands_with_config(main)
    assert set(found) == set(COMMANDS)  # a new command joins COMMANDS, and these tests
    for path, param in found.items():
        assert isinstance(param, click.Option), path
        assert param.opts == ["--config", "-c"], path
        assert param.envvar == "TURNOUT_CONFIG", path
        assert param.callback is next(iter(found.values())).callback, path


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_a_missing_config_file_ends_every_command_alike(path: tuple[str, ...], tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    expected = f"turnout: {missing} is invalid:\n  {missing}: cannot read (No such file or directory)\n"
    assert failed_cleanly(invoke(*path, *COMMANDS[path], "--config", missing), 1) == expected
    assert failed_cleanly(invoke(*path, "-c", missing, *COMMANDS[path]), 1) == expected
    assert failed_cleanly(invoke(*path, *COMMANDS[path], env={"TURNOUT_CONFIG": missing}), 1) == expected
    # Read before anything else: a bad config is what is reported, even with arguments missing.
    assert failed_cleanly(invoke(*path, env={"TURNOUT_CONFIG": missing}), 1) == expected


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_an_empty_config_path_is_a_usage_error_in_every_command(path: tuple[str, ...]) -> None:
    # `-c "$UNSET"` read "." and said "built-in config is invalid: : cannot read (Is a directory)".
    stderr = failed_cleanly(invoke(*path, *COMMANDS[path], "-c", ""), 2)
    assert "'--config' / '-c'" in stderr and "is empty: give a config file's path" in stderr


def test_eval_without_run_is_still_the_run_command(tmp_path: Path) -> None:
    """`turnout eval TASK …` (and options before TASK) as before the import-reviews command."""
    missing = str(tmp_path / "nope.yaml")
    expected = f"turnout: {missing} is invalid:\n  {missing}: cannot read (No such file or directory)\n"
    assert failed_cleanly(invoke("eval", "-c", missing, "support", "--candidate", "v1"), 1) == expected
    assert failed_cleanly(invoke("eval", "support", "--candidate", "v1", "-c", missing), 1) == expected
    assert failed_cleanly(invoke("eval", env={"TURNOUT_CONFIG": missing}), 1) == expected


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_an_invalid_config_lists_its_problems_in_every_command(path: tuple[str, ...], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("bogus: 1\ntasks: {t: {route: [ghost]}}\n")
    stderr = failed_cleanly(invoke(*path, *COMMANDS[path], "-c", str(bad)), 1)
    assert stderr.startswith(f"turnout: {bad} is invalid:\n")
    assert "  bogus: unknown key" in stderr.splitlines()


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_every_help_names_the_config_option_its_variable_and_default(path: tuple[str, ...]) -> None:
    result = invoke(*path, "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())  # as read, not as wrapped
    default = "default: (./turnout.yaml if there is one, else the built-in one: the embedded SmolLM2"
    for part in ("-c, --config FILE", f"[env var: TURNOUT_CONFIG; {default}"):
        assert part in text, part


# --- ./turnout.yaml: the config found without an option ------------------------------------------

FOUND = "targets: {vllm: {provider: openai, base_url: 'http://127.0.0.1:9/v1', model: m}}\n"


def project_config(folder: Path, tasks: int) -> Path:
    """A config with ``tasks`` tasks, so that a command's output tells which file it read."""
    routes = ", ".join(f"t{i}: {{route: [vllm]}}" for i in range(tasks))
    path = folder / "turnout.yaml"
    path.write_text(FOUND + f"tasks: {{{routes}}}\n")
    return path


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_every_command_reads_turnout_yaml_in_the_working_folder(
    path: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "turnout.yaml").write_text("bogus: 1\ntasks: {t: {route: [ghost]}}\n")
    monkeypatch.chdir(tmp_path)
    stderr = failed_cleanly(invoke(*path, *COMMANDS[path]), 1)
    assert stderr.startswith("turnout: turnout.yaml is invalid:\n")
    assert "  bogus: unknown key" in stderr.splitlines()


@click.command()
@config_option("The config.")
def tasks_of(config: Config) -> None:
    """Prints the tasks of the config it was given: which file was read."""
    click.echo(" ".join(config.tasks))


def tasks_read(*args: str, env: dict[str, str | None] | None = None) -> str:
    result = CliRunner().invoke(tasks_of, list(args), env={"TURNOUT_CONFIG": None, **(env or {})})
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def test_turnout_yaml_is_read_when_no_option_or_variable_names_a_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project_config(tmp_path, tasks=2)
    (tmp_path / "elsewhere").mkdir()
    other = str(project_config(tmp_path / "elsewhere", tasks=3))
    monkeypatch.chdir(tmp_path)
    assert tasks_read() == "t0 t1"
    # An option or the variable wins over the file in the working folder.
    assert tasks_read("-c", other) == tasks_read(env={"TURNOUT_CONFIG": other}) == "t0 t1 t2"
    assert invoke("check").stdout.startswith("ok: 1 target(s), 2 task(s)")  # a real command too


def test_without_turnout_yaml_the_built_in_config_serves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert tasks_read() == "default"
    (tmp_path / "turnout.yaml").mkdir()  # a folder of that name is not a config
    assert tasks_read() == "default"


def test_the_top_help_lists_every_command_and_the_exit_codes() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for name in ("serve", "check", "keys", "capture", "release", "eval", "plan", "report"):
        assert f"  {name} " in result.stdout
    assert "Exit status: 0 done; 1 the command failed" in result.stdout


# Every option that reads a time, with what it needs besides.
TIME_OPTIONS = [
    ("keys", "create", "-t", "acme", "--expires"),
    ("plan", "--task", "support", "--since"),
    ("report", "cost", "--since"),
    ("report", "cost", "--since", "30d", "--until"),
]


@pytest.mark.parametrize("text", ["30s", "15m", "2h", " 7d ", "5 d", "1.5h", "2w"])
def test_every_time_option_accepts_the_grammar(text: str, project: Path) -> None:
    for args in TIME_OPTIONS:
        if args[-1] == "--until":
            continue  # "until 30s ago" leaves the one request out: an empty report, still fine
        result = invoke(*args, text, "-c", str(project))
        assert result.exit_code == 0, (args, result.output)
    result = invoke("report", "cost", "--since", "30d", "--until", text, "-c", str(project))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("text", ["1y", "7D", "soon", "-5d", "1h30m"])
def test_every_time_option_refuses_the_same_forms_the_same_way(text: str, project: Path) -> None:
    for args in TIME_OPTIONS:
        stderr = failed_cleanly(invoke(*args, text, "-c", str(project)), 2)
        assert f"Invalid value for '{args[-1]}': {text!r} is neither a duration nor a date" in stderr, args


def test_dates_are_accepted_where_times_are(project: Path) -> None:
    assert invoke("keys", "create", "-t", "acme", "--expires", "2099-12-31", "-c", str(project)).exit_code == 0
    assert invoke("plan", "--task", "support", "--since", "2020-01-01", "-c", str(project)).exit_code == 0
    result = invoke("report", "cost", "--since", "2020-01-01", "--until", "2999-01-01T00:00+02:00", "-c", str(project))
    assert result.exit_code == 0, result.output


def test_an_unknown_task_is_one_line(project: Path) -> None:
    for args in (
        ("release", "list", "nope"),
        ("eval", "nope", "--candidate", "v1"),
        ("capture", "grant", "-t", "acme", "--task", "nope", "--minutes", "5", "--reason", "r", "--by", "me"),
    ):
        stderr = failed_cleanly(invoke(*args, "-c", str(project)), 1)
        assert stderr == "turnout: no task 'nope' in the config (tasks: support)\n", args


def test_eval_refuses_what_it_cannot_run_before_starting_anything(project: Path) -> None:
    stderr = failed_cleanly(invoke("eval", "support", "--candidate", "v9", "-c", str(project)), 1)
    assert stderr == f"turnout: no release file {project.parent / 'releases' / 'support' / 'v9.yaml'}\n"
    stderr = failed_cleanly(invoke("eval", "support", "--candidate", "v1", "-c", str(project)), 1)
    assert stderr.startswith("turnout: invalid golden set ") and "support.jsonl: cannot read" in stderr
    (project.parent / "releases" / "support" / "v2.yaml").write_text("target: ghost\n")
    stderr = failed_cleanly(invoke("eval", "support", "--candidate", "v1", "-c", str(project)), 1)
    assert stderr.startswith("turnout: release files are invalid:\n  ")


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (("keys", "list"), "the key store"),
        (("capture", "list"), "the capture store"),
        (("release", "list", "support"), "the release store"),
    ],
)
def test_a_store_that_cannot_be_opened_is_one_line(args: tuple[str, ...], what: str, tmp_path: Path) -> None:
    in_the_way = tmp_path / "afile"
    in_the_way.write_text("")
    config = tmp_path / "turnout.yaml"
    config.write_text(config_text(in_the_way))  # every store under a file, not a directory
    stderr = failed_cleanly(invoke(*args, "-c", str(config)), 1)
    assert stderr == f"turnout: cannot open {what}: {in_the_way}: File exists\n"


@pytest.mark.parametrize("command", [("plan", "--task", "support"), ("report", "cost")])
@pytest.mark.parametrize(
    ("store", "message"),
    [
        ("{kind: none}", "turnout: the config has no ledger (store.kind: none)\n"),
        ("{kind: memory}", "turnout: the config's ledger is in memory (store.kind: memory)"),
        ("{kind: sqlite, path: /nowhere/ledger.db}", "turnout: no ledger at /nowhere/ledger.db: has the gateway run"),
        ("{kind: postgres, dsn: 'postgresql://turnout@127.0.0.1:9/test'}", "turnout: "),
    ],
)
def test_a_ledger_that_cannot_be_read_is_one_line(
    command: tuple[str, ...], store: str, message: str, tmp_path: Path
) -> None:
    config = tmp_path / "turnout.yaml"
    config.write_text(config_text(tmp_path, store=store))
    stderr = failed_cleanly(invoke(*command, "-c", str(config)), 1)
    assert stderr.startswith(message)
    assert len(stderr.splitlines()) == 1
    assert not Path("/nowhere").exists()  # reading never creates a ledger


def test_an_eval_against_itself_is_a_usage_error_not_a_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "turnout.yaml"
    cfg.write_text(
        "targets: {a: {provider: openai, base_url: 'http://127.0.0.1:9/v1', model: m}}\ntasks: {t: {route: [a]}}\n"
    )
    done = invoke("eval", "t", "--candidate", "v3", "--baseline", "v3", "-c", str(cfg))
    assert done.exit_code == 2 and "another release than the candidate" in done.output
    assert "Traceback" not in done.output
