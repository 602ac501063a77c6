"""The ledger's ``finish_reason`` (why the answer stopped, from the upstream's answer) and
``documents`` (how many the task API attached): read off the answer and the request, bounded
to an enum, written by the pipeline and stored by SQLite."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from tests.asgi import ledger_rows as ledger
from tests.asgi import request
from tests.conftest import AppFactory
from tests.fakes.scripted import Step
from tests.test_task_api import call, release, start
from turnout.ledger.record import LedgerRow
from turnout.ledger.sqlite import SQLiteStore
from turnout.providers.base import Completion, Stream
from turnout.releases.base import Serving
from turnout.routing.attempts import Result
from turnout.serving.stops import OTHER, documents, finish_reason
from turnout.serving.tasks import TaskRequest


def answered(choices: Any) -> Result:
    body = {"id": "x", "object": "chat.completion", "choices": choices}
    return Result(cast(Any, None), Completion(body, None, "m"))


def choice(reason: Any) -> list[dict[str, Any]]:
    return [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": reason}]


@pytest.mark.parametrize("reason", ["stop", "length", "tool_calls", "content_filter", "end_turn"])
def test_the_upstream_reason_is_kept(reason: str) -> None:
    assert finish_reason(answered(choice(reason))) == reason


@pytest.mark.parametrize(
    "reason",
    ["Stop", "stop because the user said: my password is hunter2", "x" * 33, "", 7, ["stop"], {"a": 1}],
)
def test_anything_but_an_enum_word_is_other(reason: Any) -> None:
    assert finish_reason(answered(choice(reason))) == OTHER


@pytest.mark.parametrize("choices", [None, [], "stop", [None], [{"index": 0}], choice(None)])
def test_no_reason_is_none(choices: Any) -> None:
    assert finish_reason(answered(choices)) is None


def test_streams_and_no_answer_have_no_reason() -> None:
    async def chunks() -> Any:
        yield {}

    assert finish_reason(Result(cast(Any, None), Stream(chunks(), "m"))) is None
    assert finish_reason(None) is None


def test_documents_count_only_for_the_task_api() -> None:
    task = TaskRequest("t", {}, ["a", "b", "c"], None, None, None)
    assert documents(task) == 3
    assert documents(TaskRequest("t", {}, [], None, None, None)) == 0
    assert documents(object()) is None and documents(None) is None


async def test_the_pipeline_writes_both_fields(make_app: AppFactory) -> None:
    app, _ = await start(make_app, Serving(release("v1")), Step(text='{"order_id": "A-17"}'), Step(text="hello"))
    resp = await call(app, {"variables": {"text": "order A-17"}, "documents": ["first doc", "second doc"]})
    assert resp.status == 200, resp.body
    chat = await request(
        app, "POST", "/v1/chat/completions", {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert chat.status == 200, chat.body
    rows = {row.endpoint: row for row in await ledger(app)}
    assert (rows["tasks"].finish_reason, rows["tasks"].documents) == ("stop", 2)
    assert (rows["chat.completions"].finish_reason, rows["chat.completions"].documents) == ("stop", None)
    # Neither the documents' text nor the answer's reaches the row.
    assert "first doc" not in repr(rows["tasks"]) and "A-17" not in repr(rows["tasks"])


async def test_a_stream_and_a_failure_have_no_reason(make_app: AppFactory) -> None:
    app, _ = await start(make_app, Serving(release("v1")), Step(text="hi"), Step(error=RuntimeError("down")))
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    assert (await request(app, "POST", "/v1/chat/completions", body)).status == 200
    failed = await call(app, {"variables": {"text": "x"}, "documents": ["d"]})
    assert failed.status >= 400
    rows = {row.endpoint: row for row in await ledger(app)}
    assert rows["chat.completions"].finish_reason is None and rows["chat.completions"].documents is None
    assert rows["tasks"].finish_reason is None and rows["tasks"].documents == 1


async def test_sqlite_stores_both_fields(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "ledger.db")
    await store.open()
    try:
        await store.write_batch(
            [
                LedgerRow("a", 1.0, "t", "task", "internal", False, finish_reason="length", documents=4),
                LedgerRow("b", 2.0, "t", "task", "internal", False),
            ]
        )
        got = {row.request_id: row for row in await store.recent(10)}
    finally:
        await store.aclose()
    assert (got["a"].finish_reason, got["a"].documents) == ("length", 4)
    assert (got["b"].finish_reason, got["b"].documents) == (None, None)
