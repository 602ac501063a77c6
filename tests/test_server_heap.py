"""Once started, the server freezes what start-up built (turnout.serving.server.freeze_heap): the
collector's full collections then walk only what requests made since."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from tests.serving import free_port
from turnout.serving import server


@pytest.fixture(autouse=True)
def _unfreeze() -> Iterator[None]:
    yield
    gc.unfreeze()  # the test process goes on: its objects stay collectable


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    raise AssertionError("no request is made")


def test_freezing_leaves_the_full_collection_only_what_came_after() -> None:
    gc.collect()
    before = len(gc.get_objects(generation=2))
    frozen = server.freeze_heap()
    assert frozen > 1000 and before > 1000
    made_after = [[i] for i in range(100)]
    assert len(gc.get_objects(generation=2)) + len(gc.get_objects(generation=0)) < before / 10
    assert all(any(x is m for x in gc.get_objects(generation=0)) for m in made_after[:3])


async def test_the_server_freezes_the_heap_once_started(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def freeze() -> int:
        calls.append(1)
        return 1

    monkeypatch.setattr(server, "freeze_heap", freeze)
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), lifespan="off", log_level="warning")
    config.load()
    srv = server._Server(config, lambda: None)
    srv.lifespan = config.lifespan_class(config)  # as uvicorn's own serve sets it up
    await srv.startup()
    try:
        assert calls == [1]
    finally:
        await srv.shutdown()
