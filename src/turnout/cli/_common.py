"""What every ``turnout`` command shares, so that each behaves like the others:

* errors: ``CommandError`` says ``turnout: MESSAGE`` on stderr and exits 1; a bad option or
  argument stays click's usage error (exit 2). ``CommandGroup``, the top group, turns what a
  command lets escape of turnout's own errors (``TurnoutError``) or the system's (``OSError``:
  a file that cannot be read or a store that cannot be opened) into a ``CommandError``, so a
  user's mistake never ends in a traceback; output piped into a reader that leaves early
  (``| head``) ends the command quietly, exit 0;
* the config: ``--config/-c`` (or ``TURNOUT_CONFIG``, then ``./turnout.yaml``) is declared once, by ``config_option``,
  read before anything else on the command line, and hands the command a loaded ``Config``;
  every problem in it is listed, exit 1. Tenant and task names can be checked against it;
* the other options more than one command takes: ``--format``, ``--tenant``, ``--task``,
  ``--by`` (who, for the audit trail), ``--since``;
* one grammar for durations (``30s``, ``15m``, ``2h``, ``7d``, ``2w``; ``1.5h`` too) and for
  times (a duration from now, or an ISO 8601 date or date-time, UTC unless it names an offset);
* opening a store for one action, reading the ledger in one bounded query, and printing
  tables, JSON and times (always UTC, so the output does not depend on the machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import click
import orjson

from turnout._support.times import iso as iso  # re-exported: the commands format JSON times with it
from turnout.config import Config, load_config
from turnout.errors import ConfigError, TurnoutError
from turnout.ledger.record import LedgerRow
from turnout.ledger.store import LedgerStore, open_store, rows_in_pages
from turnout.releases.base import Release
from turnout.releases.files import load_task, release_path

T = TypeVar("T")
FC = TypeVar("FC", bound=Callable[..., Any] | click.Command)
Callback = Callable[[click.Context, click.Parameter, Any], Any]

# Inherited by every command below the top group: -h as well as --help, every option's default
# named in its help, and room for the option texts.
CONTEXT_SETTINGS: dict[str, Any] = {
    "help_option_names": ["-h", "--help"],
    "show_default": True,
    "max_content_width": 100,
}

TABLE_OR_JSON = "A table to read, or JSON to process."
BUILT_IN_CONFIG = (
    "./turnout.yaml if there is one, else the built-in one: the embedded SmolLM2 model, its ledger under ./.turnout/"
)
DISCOVERED_CONFIG = "turnout.yaml"  # read from the working folder when neither -c nor TURNOUT_CONFIG names one
CONFIG_PATH = "turnout.config_path"  # ctx.meta key: the config file the command loaded


# --- errors -------------------------------------------------------------------------------------


class CommandError(click.ClickException):
    """A command cannot do what it was asked: ``turnout: MESSAGE`` on stderr, exit 1."""

    exit_code = 1

    @classmethod
    def listing(cls, heading: str, problems: Sequence[str]) -> CommandError:
        """``heading:`` and then every problem, one an indented line."""
        return cls(f"{heading}:\n" + "\n".join(f"  {p}" for p in problems))

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"turnout: {self.format_message()}", file=file, err=True)


class CommandGroup(click.Group):
    """The outermost group: the one place where turnout's own errors and the system's become a
    one-line message instead of a traceback. Anything else is a bug and keeps its traceback."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        with _reader_gone():  # `turnout --help | head -1`
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with _reader_gone():
                return super().invoke(ctx)
        except TurnoutError as exc:
            raise CommandError(exc.message) from exc
        except OSError as exc:
            raise CommandError(os_message(exc)) from exc


@contextlib.contextmanager
def _reader_gone() -> Iterator[None]:
    """Output piped into a reader that stops early (``| head``) ends the command quietly, exit
    0, as the reader asked: not a "Broken pipe" message (an OSError) nor, when Python flushes
    stdout at exit, an "Exception ignored" traceback."""
    try:
        yield
    except BrokenPipeError:
        # What is still buffered cannot be written: stdout on /dev/null lets the exit flush pass.
        with contextlib.suppress(OSError, ValueError):  # ValueError: a stdout with no descriptor
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        raise click.exceptions.Exit(0) from None


def os_message(exc: OSError) -> str:
    """``PATH: reason`` for a file error, the reason alone otherwise."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{exc.filename}: {reason}" if exc.filename else reason


def need(kind: str, name: str, known: Collection[str]) -> None:
    """Refuse ``name`` unless the config has it among its ``kind``s (tenant, task)."""
    if name not in known:
        raise CommandError(f"no {kind} {name!r} in the config ({kind}s: {', '.join(sorted(known)) or 'none'})")


# --- the config ---------------------------------------------------------------------------------


def _load(ctx: click.Context, param: click.Parameter, path: str | None) -> Config:
    """The config at ``path`` (None: ``./turnout.yaml`` if there is one, else the built-in one), or
    a CommandError listing its problems. The path is kept in ``ctx.meta[CONFIG_PATH]`` (``serve``
    names it in its start-up summary)."""
    if path is not None and not path.strip():  # `-c "$UNSET"`: read as "." it said "Is a directory"
        raise click.BadParameter("is empty: give a config file's path, or leave it out for ./turnout.yaml", ctx, param)
    if path is None and Path(DISCOVERED_CONFIG).is_file():
        path = DISCOVERED_CONFIG
    ctx.meta[CONFIG_PATH] = path
    try:
        return load_config(path)
    except ConfigError as exc:
        raise CommandError.listing(f"{path or 'built-in config'} is invalid", exc.problems) from exc


def config_option(help: str) -> Callable[[FC], FC]:
    """``--config/-c PATH`` (or ``TURNOUT_CONFIG``, or ``./turnout.yaml``), loaded into the
    ``config`` parameter.

    Eager: loaded before any other option or argument is read, so a bad config ends every
    command the same way, and the names given can be checked against it (``task_argument``,
    ``known=True``)."""
    return click.option(
        "--config",
        "-c",
        "config",
        type=click.Path(dir_okay=False),
        is_eager=True,
        envvar="TURNOUT_CONFIG",
        show_envvar=True,
        show_default=BUILT_IN_CONFIG,
        callback=_load,
        help=help,
    )


def release_files(config: Config, task: str, names: Collection[str] | None = None) -> dict[str, Release]:
    """``task``'s release files by name: those in ``names``, each of which must exist, or every
    one (None), of which there must be one. A CommandError lists every problem in them."""
    try:
        files = load_task(config, task)
    except ConfigError as exc:
        raise CommandError.listing("release files are invalid", exc.problems) from exc
    if names is None:
        if not files:
            raise CommandError(f"no release files for task {task!r} under {release_path(config, task, '*').parent}")
        return files
    for name in names:
        if name not in files:
            raise CommandError(f"no release file {release_path(config, task, name)}")
    return {name: files[name] for name in names}


# --- durations and times ------------------------------------------------------------------------

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
TIME_METAVAR = "DURATION|DATE"
TIME_FORMS = "a duration (30s, 15m, 2h, 7d, 2w) or an ISO date or time (2026-12-31, 2026-12-31T18:00+02:00)"


def parse_duration(text: str) -> float | None:
    """The seconds in a duration: an amount and a unit, ``s`` ``m`` ``h`` ``d`` or ``w``
    (``30s``, ``15m``, ``1.5h``, ``7d``, ``2w``; spaces around or between are fine). None when
    ``text`` is not one."""
    match = _DURATION.fullmatch(text.strip())
    return float(match.group(1)) * UNITS[match.group(2)] if match else None


def parse_time(text: str, now: float, *, ago: bool) -> float:
    """A moment as epoch seconds: a duration before ``now`` (``ago``) or after it, or an ISO
    8601 date or date-time (UTC unless it names its offset, so the meaning does not depend on
    the machine). ValueError, with a message for the user, for anything else."""
    seconds = parse_duration(text)
    if seconds is not None:
        at = now - seconds if ago else now + seconds
    else:
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is neither a duration nor a date: expected {TIME_FORMS}") from None
        at = (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).timestamp()
    try:
        datetime.fromtimestamp(at, UTC)
    except (OverflowError, ValueError, OSError):
        raise ValueError(f"{text!r} is too far from now") from None
    return at


class TimeParam(click.ParamType[float]):
    """An option's moment (``parse_time``), read against the clock when the command line is.

    ``ago``: durations count back from now (the start of a window); otherwise forward, and the
    moment must be in the future (an expiry)."""

    name = "time"

    def __init__(self, *, ago: bool) -> None:
        self.ago = ago

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):  # already converted (click's contract for a type)
            return value
        now = time.time()
        try:
            at = parse_time(str(value), now, ago=self.ago)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if not self.ago and at <= now:
            self.fail(
                f"{value!r} is {'now' if at == now else 'in the past'}: expected a time in the future", param, ctx
            )
        return at


AGO = TimeParam(ago=True)
AHEAD = TimeParam(ago=False)


class Finite(click.FloatRange):
    """click's ``FloatRange`` that refuses ``nan`` and ``inf``: NaN compares false with every
    bound, so a range lets it through (a ``--threshold nan`` flagged nothing, a ``--review-cost
    nan`` made every figure NaN), and a range without a maximum takes infinity."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


# --- the other shared options -------------------------------------------------------------------


def format_option(help: str = TABLE_OR_JSON, choices: Sequence[str] = ("table", "json")) -> Callable[[FC], FC]:
    """``--format`` among ``choices`` (the first the default) into the ``fmt`` parameter."""
    return click.option("--format", "fmt", type=click.Choice(choices), default=choices[0], help=help)


def _in_config(kind: str, names: Callable[[Config], Collection[str]]) -> Callback:
    """An option callback: the value, refused (``need``) unless the config names it."""

    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is not None:
            need(kind, value, names(ctx.params["config"]))
        return value

    return check


def tenant_option(help: str, *, required: bool = False, known: bool = False) -> Callable[[FC], FC]:
    """``--tenant/-t``; ``known``: it must be one of the config's tenants."""
    check = _in_config("tenant", lambda config: config.tenants) if known else None
    return click.option("--tenant", "-t", required=required, callback=check, help=help)


def task_option(help: str, *, required: bool = False, known: bool = False) -> Callable[[FC], FC]:
    """``--task``; ``known``: it must be one of the config's tasks."""
    check = _in_config("task", lambda config: config.tasks) if known else None
    return click.option("--task", required=required, callback=check, help=help)


def task_argument() -> Callable[[FC], FC]:
    """``TASK``, one of the config's tasks."""
    return click.argument("task", callback=_in_config("task", lambda config: config.tasks))


def nonblank(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """An option callback: the value stripped, refused when that leaves nothing."""
    if not value.strip():
        raise click.BadParameter("must not be empty", ctx, param)
    return value.strip()


def by_option(help: str) -> Callable[[FC], FC]:
    """``--by NAME``: who does it, required and kept in the audit trail."""
    return click.option("--by", "by", required=True, callback=nonblank, help=help)


def since_option(help: str) -> Callable[[FC], FC]:
    """``--since``: a window's start as epoch seconds, a week back unless told."""
    return click.option("--since", type=AGO, default="7d", metavar=TIME_METAVAR, help=help)


# --- stores -------------------------------------------------------------------------------------


class Store(Protocol):
    async def open(self) -> None: ...

    async def aclose(self) -> None: ...


S = TypeVar("S", bound=Store)


def run_store(make: Callable[[], S], action: Callable[[S], Awaitable[T]], what: str) -> T:
    """Make a store, open it (``what`` names it: "the key store"), run one action on it, close
    it. Its own errors are turnout's (``TurnoutError``): they end the command at the top group."""

    async def run() -> T:
        store = make()
        try:
            await store.open()
        except OSError as exc:  # a file in the way, a directory that cannot be made
            raise CommandError(f"cannot open {what}: {os_message(exc)}") from exc
        try:
            return await action(store)
        finally:
            await store.aclose()

    return asyncio.run(run())


def read_ledger(
    config: Config,
    since: float,
    until: float,
    each: Callable[[LedgerRow], None],
    *,
    tenant: str | None = None,
    task: str | None = None,
) -> None:
    """Call ``each`` on every ledger row with ``since <= started_at < until`` (of ``tenant``
    and ``task`` where given), oldest first: the whole window, read a page at a time
    (``rows_in_pages``), so memory does not grow with it; never creates a ledger."""
    cfg = config.store
    if cfg.kind == "none":
        raise CommandError("the config has no ledger (store.kind: none)")
    if cfg.kind == "memory":
        raise CommandError(
            "the config's ledger is in memory (store.kind: memory): it lives only inside a running gateway"
        )
    if cfg.kind == "sqlite" and cfg.path != ":memory:" and not Path(cfg.path).is_file():
        raise CommandError(f"no ledger at {cfg.path}: has the gateway run with this config?")

    async def read(store: LedgerStore) -> None:
        async for page in rows_in_pages(store, since, until, tenant=tenant, task=task):
            for row in page:
                each(row)

    run_store(lambda: open_store(cfg), read, "the ledger")


# --- output -------------------------------------------------------------------------------------


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Rows of cells, the first the header, in left-aligned columns two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def print_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def print_listing(
    fmt: str,
    found: Sequence[T],
    *,
    as_json: Callable[[T], Any],
    header: Sequence[str],
    as_row: Callable[[T], Sequence[str]],
    none: str,
) -> None:
    """What a ``list`` command prints: a JSON array (``--format json``, empty or not), else a
    table under ``header``, or ``none`` when there is nothing to show."""
    if fmt == "json":
        print_json([as_json(each) for each in found])
    elif not found:
        click.echo(none)
    else:
        print_table([header, *(as_row(each) for each in found)])


def when(at: float, *, seconds: bool = False) -> str:
    """Epoch seconds for people to read, in UTC, to the minute (or the second)."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")
