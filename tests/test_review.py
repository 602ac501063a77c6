"""The review queue: sampling at a rate, redaction before anything is written, listing,
labels from people, quality figures per release, and sharing the release store's file."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.pgstate import KINDS, raw_sql, state_place
from turnout._support.places import Place
from turnout.errors import RequestError
from turnout.releases.review import Quality, ReviewError, ReviewQueue
from turnout.releases.store import ReleaseStore


@dataclass
class Redacted:
    text: str


class Upper:
    """A stand-in redactor whose work shows: it upper-cases and tags the text."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def redact(self, text: str) -> Redacted:
        return Redacted(f"[{self.tag}] {text.upper()}")


class Always(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.fixture(params=KINDS)
async def queue(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ReviewQueue]:
    """The same contract on both state backends (``state.kind``)."""
    async with state_place(request.param, tmp_path / "releases.db") as place:
        q = ReviewQueue(place, redactor=Upper("redacted"), secrets=Upper("secrets"), clock=lambda: 50.0)
        await q.open()
        yield q
        await q.aclose()


async def test_sampling_follows_the_rate(queue: ReviewQueue) -> None:
    rng = random.Random(7)
    drawn = [await queue.maybe_enqueue("extract", "r1", f"req-{i}", "an answer", 0.2, rng) for i in range(500)]
    kept = sum(item is not None for item in drawn)
    assert 70 <= kept <= 130  # 100 expected; binomial sd ≈ 9
    assert (await queue.quality("extract", "r1")).sampled == kept
    assert await queue.maybe_enqueue("extract", "r1", "req-x", "t", 0.0, Always(0.0)) is None
    assert await queue.maybe_enqueue("extract", "r1", "req-y", "t", 1.0, Always(0.999)) is not None


async def test_text_is_redacted_by_mode_before_it_is_stored(queue: ReviewQueue) -> None:
    a = await queue.maybe_enqueue("extract", "r1", "req-1", "mail bob@example.com", 1.0, Always(0.0))
    b = await queue.maybe_enqueue("extract", "r1", "req-2", "key sk-123", 1.0, Always(0.0), mode="full")
    assert a is not None and a.text == "[redacted] MAIL BOB@EXAMPLE.COM" and a.mode == "redacted"
    assert b is not None and b.text == "[secrets] KEY SK-123" and b.mode == "full"
    stored = [t for (t,) in raw_sql(queue.place, "SELECT text FROM review_items")]
    assert len(stored) == 2
    assert "bob@example.com" not in " ".join(stored)


async def test_redacted_mode_without_a_redactor_stores_nothing(tmp_path: Path) -> None:
    q = ReviewQueue(tmp_path / "r.db")
    await q.open()
    try:
        assert await q.maybe_enqueue("extract", "r1", "req-1", "secret text", 1.0, Always(0.0)) is None
        assert await q.list() == []
    finally:
        await q.aclose()


async def test_a_request_is_queued_once(queue: ReviewQueue) -> None:
    assert await queue.maybe_enqueue("extract", "r1", "req-1", "x", 1.0, Always(0.0)) is not None
    assert await queue.maybe_enqueue("extract", "r1", "req-1", "x", 1.0, Always(0.0)) is None
    assert len(await queue.list("extract")) == 1


async def test_list_label_and_quality(queue: ReviewQueue) -> None:
    items = []
    for i, release in enumerate(["r1", "r1", "r1", "r2", "r2"]):
        item = await queue.maybe_enqueue("extract", release, f"req-{i}", f"answer {i}", 1.0, Always(0.0))
        assert item is not None
        items.append(item)
    await queue.maybe_enqueue("other", "r1", "req-o", "x", 1.0, Always(0.0))
    pending = await queue.list("extract", "pending")
    assert [i.request_id for i in pending] == ["req-4", "req-3", "req-2", "req-1", "req-0"]  # newest first
    labeled = await queue.label(items[0].id, "accept", "fine", "alice")
    assert labeled is not None
    assert (labeled.status, labeled.note, labeled.labeled_by, labeled.labeled_at) == ("accept", "fine", "alice", 50.0)
    await queue.label(items[1].id, "reject", "wrong order id", "alice")
    await queue.label(items[2].id, "escalate", None, "bob")
    await queue.label(items[3].id, "reject", None, "bob")
    assert [i.id for i in await queue.list("extract", "reject")] == [items[3].id, items[1].id]
    r1 = await queue.quality("extract", "r1")
    assert r1 == Quality(sampled=3, pending=0, accept=1, reject=1, escalate=1)
    assert (r1.labeled, r1.accept_rate) == (3, 0.5)
    assert (await queue.quality("extract", "r2")).to_json() == {
        "sampled": 2,
        "pending": 1,
        "accept": 0,
        "reject": 1,
        "escalate": 0,
        "accept_rate": 0.0,
    }
    assert (await queue.quality("extract")).sampled == 5
    # An escalated item gets its final label later; the latest counts.
    await queue.label(items[2].id, "accept", "checked with the team", "carol")
    assert (await queue.quality("extract", "r1")).accept == 2
    assert await queue.label(9999, "accept", None, "alice") is None
    assert len(await queue.list()) == 6


async def test_bad_labels_and_statuses_are_refused(queue: ReviewQueue) -> None:
    item = await queue.maybe_enqueue("extract", "r1", "req-1", "x", 1.0, Always(0.0))
    assert item is not None
    with pytest.raises(RequestError, match="label must be one of accept, reject, escalate"):
        await queue.label(item.id, "maybe", None, "alice")
    with pytest.raises(RequestError, match="who gave it"):
        await queue.label(item.id, "accept", None, " ")
    with pytest.raises(RequestError, match="status must be one of"):
        await queue.list("extract", "done")  # type: ignore[arg-type]
    assert (await queue.list("extract"))[0].status == "pending"


@pytest.mark.parametrize("kind", KINDS)
async def test_purge_drops_old_items(kind: str, tmp_path: Path) -> None:
    now = [10.0]
    async with state_place(kind, tmp_path / "r.db") as place:
        q = ReviewQueue(place, redactor=Upper("r"), clock=lambda: now[0])
        await q.open()
        try:
            await q.maybe_enqueue("extract", "r1", "req-1", "x", 1.0, Always(0.0))
            now[0] = 20.0
            await q.maybe_enqueue("extract", "r1", "req-2", "x", 1.0, Always(0.0))
            assert await q.purge(15.0) == 1
            assert [i.request_id for i in await q.list()] == ["req-2"]
        finally:
            await q.aclose()


async def test_retention_deletes_a_pair_in_batches_sampled_items_included(queue: ReviewQueue) -> None:
    """Sampled items have no tenant (NULL): the purge's pair (None, task) must still match them."""
    for i in range(5):
        await queue.maybe_enqueue("extract", "r1", f"sampled-{i}", "x", 1.0, Always(0.0))
    await queue.enqueue_ticket("extract", "r1", "ticket-1", "acme", "escalated text")
    assert set(await queue.tenant_tasks()) == {(None, "extract"), ("acme", "extract")}
    assert await queue.delete_before(None, "extract", 60.0, limit=3) == 3
    assert await queue.delete_before(None, "extract", 60.0, limit=3) == 2
    assert await queue.delete_before(None, "extract", 60.0, limit=3) == 0
    assert await queue.delete_before("acme", "extract", 40.0, limit=3) == 0  # queued at 50: kept
    assert [i.request_id for i in await queue.list()] == ["ticket-1"]


@pytest.mark.parametrize("kind", KINDS)
async def test_it_shares_the_release_store_file(kind: str, tmp_path: Path) -> None:
    async with state_place(kind, tmp_path / "releases.db") as path:
        await _shares_the_release_store(path)


async def _shares_the_release_store(path: Place) -> None:
    async with ReleaseStore(path):
        q = ReviewQueue(path, redactor=Upper("r"))
        await q.open()
        await q.maybe_enqueue("extract", "r1", "req-1", "x", 1.0, Always(0.0))
        await q.aclose()
    async with ReleaseStore(path) as store:  # its migrations are untouched by ours
        assert await store.releases("extract") == []
    q = ReviewQueue(path)
    await q.open()
    assert len(await q.list()) == 1
    await q.aclose()
    with pytest.raises(ReviewError, match="not open"):
        await q.list()
