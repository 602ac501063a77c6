"""``turnout safety``: the injection screener (``turnout.safety``) outside the gateway.

``scan`` reads JSON lines ``{"id": …, "text": …}`` and writes one line per input,
``{"id", "verdict": "injection" | "clean", "score", "reasons"}``, with the same screener and
thresholds the request path uses; a count goes to stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import IO, Any

import click
import orjson

from turnout.cli._common import CommandError, Finite
from turnout.safety.screen import CHANNELS, SCREENER, THRESHOLDS, Channel

MAX_LINE = 16 << 20  # bytes: a longer line is refused, not read into memory whole


@click.group()
def safety() -> None:
    """Screen texts for prompt injection, as the gateway does.

    \b
    turnout safety scan inputs.jsonl
    turnout safety scan tool-results.jsonl --channel tool_output --threshold 0.4
    cat texts.jsonl | turnout safety scan -"""


@safety.command()
@click.argument("file", type=click.File("rb"))
@click.option(
    "--channel",
    type=click.Choice(CHANNELS),
    default="user",
    help="Where the texts come from: user messages, task documents, or tool output (each scored its own way).",
)
@click.option(
    "--threshold",
    type=Finite(0, 1, min_open=True),
    default=None,
    help="A score at or above this is an injection. Default: the channel's, as in the gateway.",
)
def scan(file: IO[bytes], channel: Channel, threshold: float | None) -> None:
    """Screen each line of FILE (JSON lines with "id" and "text"; - for stdin).

    Writes one JSON line per input to stdout: {"id", "verdict": "injection"|"clean", "score",
    "reasons"}. A line that is not a JSON object with a string "text" stops the scan (exit 1)."""
    limit = THRESHOLDS[channel] if threshold is None else threshold
    out = sys.stdout.buffer
    total = found = 0
    for number, line in enumerate(_lines(file), start=1):
        if not line.strip():
            continue
        item = _item(line, number)
        verdict = SCREENER.screen(item["text"], channel)
        injection = verdict.over(limit)
        row = {
            "id": item.get("id", number),
            "verdict": "injection" if injection else "clean",
            "score": verdict.score,
            "reasons": list(verdict.reasons),
        }
        out.write(orjson.dumps(row) + b"\n")
        total += 1
        found += injection
    out.flush()
    click.echo(f"{total} texts screened as {channel} (threshold {limit:g}): {found} injections", err=True)


def _lines(file: IO[bytes]) -> Iterator[bytes]:
    while True:
        line = file.readline(MAX_LINE + 1)
        if not line:
            return
        if len(line) > MAX_LINE:
            raise CommandError(f"a line is longer than {MAX_LINE >> 20} MiB")
        yield line


def _item(line: bytes, number: int) -> dict[str, Any]:
    try:
        item = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise CommandError(f"line {number}: not JSON ({exc})") from exc
    if not isinstance(item, dict) or not isinstance(item.get("text"), str):
        raise CommandError(f'line {number}: expected an object with a string "text"')
    if "id" in item and not isinstance(item["id"], (str, int, float)) and item["id"] is not None:
        raise CommandError(f'line {number}: "id" must be a string or a number')
    return item
