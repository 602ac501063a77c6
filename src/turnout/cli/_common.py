"""What the store commands (``turnout keys``, ``turnout capture``, ``turnout release``) share:
the ``--config`` and ``--format`` options, loading the config, opening a store for one action,
failing with a message, and printing tables and times (always UTC, so the output does not
depend on the machine).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar

import click

from turnout.errors import TurnoutError

if TYPE_CHECKING:
    from turnout.config import Config

T = TypeVar("T")
FC = TypeVar("FC", bound=Callable[..., Any] | click.Command)

TABLE_OR_JSON = "A table to read, or JSON to process."


class Store(Protocol):
    async def open(self) -> None: ...

    async def aclose(self) -> None: ...


S = TypeVar("S", bound=Store)


def config_option(help: str) -> Callable[[FC], FC]:
    """``--config/-c PATH`` (or ``TURNOUT_CONFIG``) into the ``config_path`` parameter."""
    return click.option(
        "--config", "-c", "config_path", type=click.Path(dir_okay=False), envvar="TURNOUT_CONFIG", help=help
    )


def format_option(help: str = TABLE_OR_JSON) -> Callable[[FC], FC]:
    """``--format table|json`` into the ``fmt`` parameter."""
    return click.option(
        "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True, help=help
    )


def nonblank(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """An option callback: the value stripped, refused when that leaves nothing."""
    if not value.strip():
        raise click.BadParameter("must not be empty", ctx, param)
    return value.strip()


def load_config(path: str | None) -> Config:
    """The config, or exit with its problems listed (as ``turnout serve`` does)."""
    # Imported here: turnout.cli.main registers the groups that use this, so a top-level import
    # would be circular.
    from turnout.cli.main import _load

    return _load(path)


def need(kind: str, name: str, known: Collection[str]) -> None:
    """Exit unless the config names ``name`` among its ``kind``s (tenant, task)."""
    if name not in known:
        fail(f"no {kind} {name!r} in the config ({kind}s: {', '.join(sorted(known)) or 'none'})")


def run_store(open_store: Callable[[], S], action: Callable[[S], Awaitable[T]], error: type[TurnoutError]) -> T:
    """Open a store, run one action on it, close it; the store's ``error`` ends the command
    with its message."""

    async def run() -> T:
        store = open_store()
        await store.open()
        try:
            return await action(store)
        finally:
            await store.aclose()

    try:
        return asyncio.run(run())
    except error as exc:
        fail(exc.message)


def fail(message: str) -> NoReturn:
    click.echo(f"turnout: {message}", err=True)
    sys.exit(1)


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Rows of cells, the first the header, in left-aligned columns two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def iso(at: float | None) -> str | None:
    """Epoch seconds as ISO 8601 in UTC, for JSON; None stays None."""
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat()


def when(at: float, *, seconds: bool = False) -> str:
    """Epoch seconds for people to read, in UTC, to the minute (or the second)."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")
