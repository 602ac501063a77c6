"""``turnout eval import-reviews``: reviewed production items become golden-set cases that
``turnout eval`` loads; redaction is kept, a second import adds nothing, nothing is written on a
dry run, and the queue may live in SQLite or the fleet's PostgreSQL."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import yaml

from tests.pgstate import KINDS, state_place
from tests.test_cli_common import failed_cleanly, invoke
from turnout._support.places import PgPlace, Place
from turnout.offline.evals import load_cases
from turnout.offline.evals.imported import import_items, to_case
from turnout.privacy.redact import Redactor
from turnout.releases.review import ReviewItem, ReviewQueue, Status

MESSAGES = [
    {"role": "system", "content": "Extract the order."},
    {"role": "user", "content": "order A-17 from bob@example.com"},
]
PROMPT = orjson.dumps(MESSAGES).decode()


def item(n: int, status: str, text: str, answer: str | None = None, reason: str | None = None) -> ReviewItem:
    return ReviewItem(
        n,
        "extract",
        "v1",
        f"req-{n}",
        text,
        "redacted",
        10.0,
        cast(Status, status),
        None,
        "alice",
        20.0,
        None,
        reason,
        answer,
    )


def sample(answer: str) -> str:
    return f"{PROMPT}\n\n--- answer ---\n{answer}"


# --- items → cases ---------------------------------------------------------------------------


def test_an_accepted_sample_expects_what_was_served() -> None:
    case = to_case(item(1, "accept", sample("A-17, two mugs")))
    assert isinstance(case, dict)
    assert case["id"] == "review-1" and case["messages"] == MESSAGES
    assert case["expect"] == [{"scorer": "equals", "value": "A-17, two mugs", "ignore_whitespace": True}]
    assert case["tags"] == ["from-review", "accept"]
    assert case["metadata"] == {
        "request_id": "req-1",
        "release": "v1",
        "labeled_by": "alice",
        "label": "accept",
        "source": "review sample",
    }


def test_a_corrected_answer_is_expected_instead_and_json_answers_check_their_fields() -> None:
    case = to_case(item(2, "reject", sample('{"order_id": "A-71"}'), answer='{"order_id": "A-17", "qty": 2}'))
    assert isinstance(case, dict)
    assert case["expect"] == [{"scorer": "required_fields", "values": {"order_id": "A-17", "qty": 2}}]


def test_an_escalation_answered_by_a_person_becomes_a_case() -> None:
    ticket = f"{PROMPT}\n\n--- rejected answer (schema: missing order_id) ---\nno idea"
    case = to_case(item(3, "accept", ticket, answer="A-17", reason="escalated"))
    assert isinstance(case, dict) and case["messages"] == MESSAGES and case["metadata"]["source"] == "escalation"
    assert case["expect"][0]["value"] == "A-17"


@pytest.mark.parametrize(
    ("made", "why"),
    [
        (item(4, "reject", sample("wrong")), "rejected without a corrected answer"),
        (item(5, "accept", "not json at all\n\n--- answer ---\nx"), "no request messages"),
        (item(6, "accept", sample("   ")), "empty"),
        (item(7, "accept", '{"role": "user"}\n\n--- answer ---\nx'), "no request messages"),
    ],
)
def test_items_that_make_no_case_say_why(made: ReviewItem, why: str) -> None:
    out = to_case(made)
    assert isinstance(out, str) and why in out


def test_only_decided_items_new_to_the_golden_set_are_imported() -> None:
    items = [
        item(1, "accept", sample("a")),
        item(2, "pending", sample("b")),
        item(3, "escalate", sample("c")),
        item(4, "accept", sample("d")),
    ]
    out = import_items(items, {"review-4"})
    assert [c["id"] for c in out.cases] == ["review-1"]
    assert out.skipped == [(4, "already in the golden set")]


# --- the command -----------------------------------------------------------------------------


@pytest.fixture(params=KINDS)
def project(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, Place]]:
    """A config whose review queue holds a few labelled items (redacted by the real redactor)."""
    import asyncio

    async def seed(place: Place) -> None:
        redactor = Redactor(os.urandom(32))
        queue = ReviewQueue(place, redactor=redactor)
        await queue.open()
        try:
            for n, answer in enumerate(("A-17, two mugs", '{"order_id": "A-17"}', "wrong", "pending one"), 1):
                await queue.maybe_enqueue("support", "v1", f"req-{n}", sample(answer), 1.0, random.Random(0))
            listed = {i.request_id: i.id for i in await queue.list("support")}
            await queue.label(listed["req-1"], "accept", None, "alice")
            await queue.label(listed["req-2"], "accept", None, "alice")
            await queue.label(listed["req-3"], "reject", "hallucinated", "bob")
        finally:
            await queue.aclose()

    cm = state_place(request.param, tmp_path / "releases.db")
    place = asyncio.run(cm.__aenter__())
    try:
        asyncio.run(seed(place))
        config: dict[str, Any] = {
            "targets": {"t": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}},
            "tasks": {"support": {"route": ["t"]}},
            "releases": {"store_path": str(tmp_path / "releases.db"), "evals_path": str(tmp_path / "evals")},
        }
        if isinstance(place, PgPlace):
            config["state"] = {"kind": "postgres", "dsn": place.dsn, "pg_schema": place.schema}
        path = tmp_path / "turnout.yaml"
        path.write_text(yaml.safe_dump(config))
        yield path, place
    finally:
        asyncio.run(cm.__aexit__(None, None, None))


def test_import_appends_cases_that_eval_loads_and_twice_adds_nothing(project: tuple[Path, Place]) -> None:
    config, _ = project
    golden = config.parent / "evals" / "support.jsonl"
    golden.parent.mkdir()
    golden.write_text(
        '{"id": "hand-1", "messages": [{"role": "user", "content": "hi"}], '
        '"expect": [{"scorer": "contains", "all": ["hello"]}]}'
    )  # no final newline
    done = invoke("eval", "import-reviews", "support", "-c", str(config))
    assert done.exit_code == 0, done.output
    assert "added 2 cases" in done.stdout and "rejected without a corrected answer" in done.stdout
    cases = load_cases(golden)
    assert cases[0].id == "hand-1" and len(cases) == 3
    imported = cases[1:]
    assert {e.scorer for c in imported for e in c.expect} == {"equals", "required_fields"}
    text = golden.read_text()
    assert "bob@example.com" not in text and "[EMAIL_" in text  # the queue's redaction is kept
    again = invoke("eval", "import-reviews", "support", "-c", str(config), "--format", "json")
    assert again.exit_code == 0, again.output
    summary = orjson.loads(again.stdout)
    assert summary["added"] == [] and summary["written"] is False
    assert golden.read_text() == text


def test_a_dry_run_writes_nothing_and_a_new_golden_set_is_created(project: tuple[Path, Place]) -> None:
    config, _ = project
    golden = config.parent / "evals" / "support.jsonl"
    dry = invoke("eval", "import-reviews", "support", "--dry-run", "-c", str(config))
    assert dry.exit_code == 0 and "would add 2 cases" in dry.stdout
    assert not golden.exists()
    made = invoke("eval", "import-reviews", "support", "--release", "v1", "-c", str(config))
    assert made.exit_code == 0, made.output
    assert len(load_cases(golden)) == 2
    other = invoke(
        "eval", "import-reviews", "support", "--release", "v9", "--out", str(golden) + ".v9", "-c", str(config)
    )
    assert other.exit_code == 0 and "added 0 cases" in other.stdout


def test_a_broken_golden_set_is_reported_not_appended_to(project: tuple[Path, Place]) -> None:
    config, _ = project
    golden = config.parent / "evals" / "support.jsonl"
    golden.parent.mkdir()
    golden.write_text("{not json\n")
    stderr = failed_cleanly(invoke("eval", "import-reviews", "support", "-c", str(config)), 1)
    assert "not valid JSON" in stderr
    assert golden.read_text() == "{not json\n"

    golden.write_bytes(b"\xff\n")  # a traceback (UnicodeDecodeError) before
    stderr = failed_cleanly(invoke("eval", "import-reviews", "support", "-c", str(config)), 1)
    assert "not UTF-8 text (byte 0: b'\\xff')" in stderr
    assert golden.read_bytes() == b"\xff\n"
