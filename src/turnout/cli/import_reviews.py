"""``turnout eval import-reviews TASK``: reviewed production samples and escalations become
golden-set cases (``offline.evals.imported``), appended to ``evals/TASK.jsonl`` (created if
missing). Every new line is checked as ``turnout eval`` would load it before anything is
written; an item already imported is left alone, so running it again adds nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import orjson

from turnout.cli._common import CommandError, config_option, format_option, print_json, run_store, task_argument
from turnout.config import Config
from turnout.offline.evals import golden_set_path
from turnout.offline.evals.cases import GoldenSetError, load_cases, parse_cases
from turnout.offline.evals.imported import import_items
from turnout.releases.review import ReviewItem, ReviewQueue

MAX_ITEMS = 100_000


@click.command("import-reviews")
@task_argument()
@click.option("--release", help="Only items answered by this release.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The golden set to append to. Default: evals/TASK.jsonl (releases.evals_path).",
)
@click.option("--dry-run", is_flag=True, help="Show what would be added; write nothing.")
@format_option()
@config_option("YAML config file: the task, the review queue's store (releases.store_path or state) and evals path.")
def import_reviews(config: Config, task: str, release: str | None, out: Path | None, dry_run: bool, fmt: str) -> None:
    """Turn TASK's reviewed items (accepted samples, corrected answers) into golden-set cases.

    An accepted sample expects the answer that was served; a reviewer's corrected answer is
    expected instead wherever one was given; a rejection without one is skipped. Cases keep the
    queue's redaction. Pending and escalate-labelled items wait for a decision."""
    path = out or golden_set_path(config.releases.evals_path, task)
    existing = _existing(path)
    place = config.state_at(config.releases.store_path)
    items: list[ReviewItem] = run_store(
        lambda: ReviewQueue(place), lambda q: _decided(q, task, release), "the review queue"
    )
    result = import_items(items, {c["id"] for c in existing})
    lines = [orjson.dumps(case).decode() for case in result.cases]
    try:  # what `turnout eval` will load, checked before a line is written (the file's own
        if lines:  # lines were checked when read, and new ids are never among theirs)
            parse_cases(lines, source=str(path))
    except GoldenSetError as exc:  # a bug in the import
        raise CommandError(exc.message) from exc
    if lines and not dry_run:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
                f.write("\n")
            f.write("".join(line + "\n" for line in lines))
    summary: dict[str, Any] = {
        "golden_set": str(path),
        "added": [c["id"] for c in result.cases],
        "skipped": [{"item": item, "why": why} for item, why in result.skipped],
        "written": bool(lines) and not dry_run,
    }
    if fmt == "json":
        print_json(summary)
        return
    verb = "would add" if dry_run else "added"
    click.echo(f"{verb} {len(lines)} case{'s' if len(lines) != 1 else ''} to {path}")
    for item, why in result.skipped:
        click.echo(f"  skipped item {item}: {why}")


async def _decided(queue: ReviewQueue, task: str, release: str | None) -> list[ReviewItem]:
    found = [
        *await queue.list(task, "accept", limit=MAX_ITEMS),
        *await queue.list(task, "reject", limit=MAX_ITEMS),
    ]
    return sorted((i for i in found if release is None or i.release == release), key=lambda i: i.id)


def _existing(path: Path) -> list[dict[str, Any]]:
    """The golden set's cases as they stand (none when the file does not exist yet)."""
    if not path.exists():
        return []
    try:
        cases = load_cases(path)
    except GoldenSetError as exc:
        if exc.problems == [f"{path}: no cases"]:
            return []
        raise CommandError(exc.message) from exc
    return [{k: v for k, v in c.to_dict().items() if k != "line"} for c in cases]
