"""What the store commands share: options, the config check, one action on a store, tables and
times."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner
from turnout.cli._common import config_option, format_option, iso, need, nonblank, print_table, run_store, when

from turnout.errors import TurnoutError

AT = 1_767_225_600.0 + 3723  # 2026-01-01 01:02:03 UTC


class StoreError(TurnoutError):
    pass


class Store:
    def __init__(self) -> None:
        self.events: list[str] = []

    async def open(self) -> None:
        self.events.append("open")

    async def aclose(self) -> None:
        self.events.append("close")


def test_times_are_utc() -> None:
    assert when(AT) == "2026-01-01 01:02 UTC"
    assert when(AT, seconds=True) == "2026-01-01 01:02:03 UTC"
    assert iso(AT) == "2026-01-01T01:02:03+00:00"
    assert iso(None) is None


def test_a_table_aligns_its_columns(capsys: pytest.CaptureFixture[str]) -> None:
    print_table([("ID", "NAME"), ("k_1", "ci"), ("k_22", "")])
    assert capsys.readouterr().out == "ID    NAME\nk_1   ci\nk_22\n"


def test_the_options_and_the_blank_check() -> None:
    @click.command()
    @click.option("--by", callback=nonblank, required=True)
    @format_option()
    @config_option("the config")
    def command(by: str, fmt: str, config_path: str | None) -> None:
        click.echo(f"{by}|{fmt}|{config_path}")

    runner = CliRunner()
    assert runner.invoke(command, ["--by", " alice "]).output == "alice|table|None\n"
    result = runner.invoke(command, ["--by", "a", "--format", "json"], env={"TURNOUT_CONFIG": "t.yaml"})
    assert result.output == "a|json|t.yaml\n"
    result = runner.invoke(command, ["--by", "  "])
    assert result.exit_code == 2 and "must not be empty" in result.output
    assert "A table to read, or JSON to process." in runner.invoke(command, ["--help"]).output


def test_an_unknown_name_ends_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    need("tenant", "acme", {"acme", "beta"})
    with pytest.raises(SystemExit) as caught:
        need("task", "extract", {"summarize", "classify"})
    assert caught.value.code == 1
    assert capsys.readouterr().err == "turnout: no task 'extract' in the config (tasks: classify, summarize)\n"
    with pytest.raises(SystemExit):
        need("tenant", "acme", set())
    assert capsys.readouterr().err.endswith("(tenants: none)\n")


def test_a_store_is_opened_for_one_action_and_closed() -> None:
    store = Store()

    async def action(s: Store) -> int:
        s.events.append("act")
        return 42

    assert run_store(lambda: store, action, StoreError) == 42
    assert store.events == ["open", "act", "close"]


def test_the_stores_error_ends_the_command_with_its_message(capsys: pytest.CaptureFixture[str]) -> None:
    store = Store()

    async def action(s: Store) -> int:
        raise StoreError("the store is locked")

    with pytest.raises(SystemExit) as caught:
        run_store(lambda: store, action, StoreError)
    assert caught.value.code == 1
    assert store.events == ["open", "close"]
    assert capsys.readouterr().err == "turnout: the store is locked\n"


def test_other_errors_are_not_swallowed() -> None:
    async def action(s: Store) -> int:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        run_store(Store, action, StoreError)
