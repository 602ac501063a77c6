"""The release store's state machine: registration (idempotent, immutable), evaluation, canary,
promotion (gated, bootstrap, forced), rollback, and an audit trail SQLite keeps append-only."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.pgstate import KINDS, pg_errors, raw_sql, state_place
from turnout.releases.base import Prompt, Release
from turnout.releases.store import MIGRATIONS, ReleaseStore, ReleaseStoreError, ServingRow, from_spec, to_spec

TASK = "extract"


def make(name: str, temperature: float = 0.0, task: str = TASK) -> Release:
    return Release(
        task=task,
        name=name,
        route=("qwen",),
        model_version="sha256:4f1c",
        tokenizer="Qwen/Qwen3-32B",
        prompt=Prompt(system="Extract.", user="{{ text }}", variables={"text": "str"}),
        params={"temperature": temperature, "stop": ["\n"]},
        output_schema={"type": "object"},
        retrieval={"k": 4},
        safety=None,
    )


@pytest.fixture(params=KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ReleaseStore]:
    """The same contract on both state backends (``state.kind``)."""
    async with state_place(request.param, tmp_path / "state" / "releases.db") as place, ReleaseStore(place) as s:
        yield s


async def states(store: ReleaseStore, task: str = TASK) -> dict[str, str]:
    return {r.release.name: r.state for r in await store.releases(task)}


async def serving(store: ReleaseStore) -> tuple[str | None, str | None, float, str | None]:
    row = await store.serving_row(TASK)
    assert row is not None
    return row.active, row.canary, row.canary_percent, row.previous_active


async def bootstrap(store: ReleaseStore, *names: str) -> None:
    """v1 active (bootstrap), the other names registered and evaluated."""
    await store.register(make("v1"), "alice")
    await store.promote(TASK, "v1", "alice", "first release")
    for i, name in enumerate(names, start=1):
        await store.register(make(name, temperature=i / 10), "alice")
        await store.mark_evaluated(TASK, name, "turnout-eval", "gates passed")


def test_spec_round_trip() -> None:
    release = make("v1")
    assert from_spec(TASK, "v1", to_spec(release)) == release


async def test_register_records_and_is_idempotent(store: ReleaseStore) -> None:
    first = await store.register(make("v1"), "alice")
    assert first.state == "registered" and first.registered_by == "alice"
    assert first.version == make("v1").version and first.prompt_version == make("v1").prompt_version
    assert first.release == make("v1")
    again = await store.register(make("v1"), "bob")
    assert again == first  # the first registration stays, with its who and when
    moves = await store.transitions(TASK)
    assert [(t.release, t.from_state, t.to_state, t.by) for t in moves] == [("v1", None, "registered", "alice")]
    assert await store.serving_row(TASK) == ServingRow(TASK, None, None, 0.0, None, first.registered_at)


async def test_a_changed_release_needs_a_new_name(store: ReleaseStore) -> None:
    await store.register(make("v1"), "alice")
    with pytest.raises(ReleaseStoreError, match="changing a release requires a new name"):
        await store.register(make("v1", temperature=0.5), "alice")
    # The same content under another name is fine: same version, separate release.
    twin = await store.register(dataclasses.replace(make("v1"), name="v1-copy"), "alice")
    assert twin.version == make("v1").version
    assert (await store.get(TASK, "v1")) is not None
    assert await store.get(TASK, "nope") is None


async def test_registered_rows_and_transitions_cannot_be_changed(store: ReleaseStore) -> None:
    """Refused by the schema itself (triggers), whoever writes the tables: not only this code."""
    await store.register(make("v1"), "alice")
    for statement in (
        "UPDATE releases SET spec = '{}'",
        "UPDATE releases SET version = 'x'",
        "DELETE FROM releases",
        "UPDATE transitions SET why = 'rewritten'",
        "DELETE FROM transitions",
    ):
        with pytest.raises(Exception, match=r"immutable|never deleted|append-only") as refused:
            raw_sql(store.place, statement)
        assert isinstance(refused.value, (sqlite3.IntegrityError, *pg_errors()))
    assert [t.why for t in await store.transitions(TASK)] == ["registered from its file"]


async def test_bootstrap_then_the_full_lifecycle(store: ReleaseStore) -> None:
    await store.register(make("v1"), "alice")
    row = await store.promote(TASK, "v1", "alice", "first release")
    assert (row.active, row.canary, row.previous_active) == ("v1", None, None)
    await store.register(make("v2", 0.2), "alice")
    await store.mark_evaluated(TASK, "v2", "turnout-eval", "run 7: all gates passed")
    row = await store.start_canary(TASK, "v2", 5, "alice", "eval passed")
    assert (row.active, row.canary, row.canary_percent) == ("v1", "v2", 5.0)
    row = await store.set_canary_percent(TASK, 25, "turnout-canary", "step 2: healthy")
    assert row.canary_percent == 25.0
    row = await store.promote(TASK, "v2", "turnout-canary", "all steps healthy")
    assert (row.active, row.canary, row.canary_percent, row.previous_active) == ("v2", None, 0.0, "v1")
    assert await states(store) == {"v1": "retired", "v2": "active"}
    moves = [(t.release, t.from_state, t.to_state, t.by, t.why, t.percent) for t in await store.transitions(TASK)]
    assert moves == [
        ("v1", None, "registered", "alice", "registered from its file", None),
        ("v1", "registered", "active", "alice", "first release [bootstrap: the task's first active release]", 100.0),
        ("v2", None, "registered", "alice", "registered from its file", None),
        ("v2", "registered", "evaluated", "turnout-eval", "run 7: all gates passed", None),
        ("v2", "evaluated", "canary", "alice", "eval passed", 5.0),
        ("v2", "canary", "canary", "turnout-canary", "step 2: healthy", 25.0),
        ("v1", "active", "retired", "turnout-canary", "replaced by 'v2': all steps healthy", None),
        ("v2", "canary", "active", "turnout-canary", "all steps healthy", 100.0),
    ]
    ats = [t.at for t in await store.transitions(TASK)]
    assert ats == sorted(ats)
    assert [t.release for t in await store.transitions(TASK, "v1")] == ["v1", "v1", "v1"]
    # the console's page: the newest few, still oldest first, read without the rest
    assert await store.transitions(TASK, last=3) == (await store.transitions(TASK))[-3:]
    assert await store.transitions(TASK, "v1", last=2) == (await store.transitions(TASK, "v1"))[-2:]
    assert await store.transitions(TASK, last=0) == []


async def test_promote_needs_evaluation_after_bootstrap(store: ReleaseStore) -> None:
    await bootstrap(store)
    await store.register(make("v2", 0.2), "alice")
    with pytest.raises(ReleaseStoreError, match="'v2' of task 'extract' is registered, not evaluated"):
        await store.promote(TASK, "v2", "alice", "trust me")
    row = await store.promote(TASK, "v2", "alice", "hotfix", force=True)
    assert row.active == "v2"
    last = (await store.transitions(TASK))[-1]
    assert last.why == "hotfix [forced: promoted from registered without passing its gates]"


async def test_an_evaluated_release_may_be_promoted_without_a_canary(store: ReleaseStore) -> None:
    await bootstrap(store, "v2")
    row = await store.promote(TASK, "v2", "alice", "small change")
    assert (row.active, row.previous_active) == ("v2", "v1")


async def test_bootstrap_is_only_for_a_task_that_never_had_an_active_release(store: ReleaseStore) -> None:
    await store.register(make("v1"), "alice")
    await store.register(make("v2", 0.2), "alice")
    await store.promote(TASK, "v2", "alice", "the one we want first")  # any registered release may bootstrap
    with pytest.raises(ReleaseStoreError, match="not evaluated"):
        await store.promote(TASK, "v1", "alice", "again")


async def test_canary_refusals(store: ReleaseStore) -> None:
    await store.register(make("v1"), "alice")
    await store.mark_evaluated(TASK, "v1", "eval", "ok")
    with pytest.raises(ReleaseStoreError, match="no active release for the rest of the traffic"):
        await store.start_canary(TASK, "v1", 5, "alice", "try")
    await store.promote(TASK, "v1", "alice", "first")
    await store.register(make("v2", 0.2), "alice")
    with pytest.raises(ReleaseStoreError, match="is registered; a canary needs an evaluated release"):
        await store.start_canary(TASK, "v2", 5, "alice", "try")
    with pytest.raises(ReleaseStoreError, match="is active; a canary needs"):
        await store.start_canary(TASK, "v1", 5, "alice", "try")
    with pytest.raises(
        ReleaseStoreError, match="no release 'v9' registered for task 'extract' \\(registered: v1, v2\\)"
    ):
        await store.start_canary(TASK, "v9", 5, "alice", "try")
    await store.mark_evaluated(TASK, "v2", "eval", "ok")
    await store.register(make("v3", 0.3), "alice")
    await store.mark_evaluated(TASK, "v3", "eval", "ok")
    for bad in (0, -1, 100.5):
        with pytest.raises(ReleaseStoreError, match="more than 0 and at most 100"):
            await store.start_canary(TASK, "v2", bad, "alice", "try")
    await store.start_canary(TASK, "v2", 5, "alice", "go")
    with pytest.raises(ReleaseStoreError, match="already has release 'v2' in canary at 5%"):
        await store.start_canary(TASK, "v3", 5, "alice", "try")
    with pytest.raises(ReleaseStoreError, match="has release 'v2' in canary; promote it or roll it back"):
        await store.promote(TASK, "v3", "alice", "try")
    row = await store.start_canary(TASK, "v2", 10, "alice", "more")  # the same canary: a new share
    assert row.canary_percent == 10
    with pytest.raises(ReleaseStoreError, match="already active"):
        await store.promote(TASK, "v1", "alice", "again")


async def test_set_canary_percent_needs_a_canary(store: ReleaseStore) -> None:
    await bootstrap(store)
    with pytest.raises(ReleaseStoreError, match="has no release in canary"):
        await store.set_canary_percent(TASK, 25, "turnout-canary", "step")
    with pytest.raises(ReleaseStoreError, match="has no release in canary"):
        await store.set_canary_percent("other", 25, "turnout-canary", "step")


async def test_rollback_drops_the_canary_and_keeps_the_active(store: ReleaseStore) -> None:
    await bootstrap(store, "v2")
    await store.start_canary(TASK, "v2", 5, "alice", "go")
    row = await store.rollback(TASK, "turnout-canary", "error rate 31% vs 1%")
    assert (row.active, row.canary, row.canary_percent) == ("v1", None, 0.0)
    assert await states(store) == {"v1": "active", "v2": "retired"}
    last = (await store.transitions(TASK))[-1]
    assert (last.release, last.from_state, last.to_state, last.why, last.percent) == (
        "v2",
        "canary",
        "retired",
        "error rate 31% vs 1%",
        0.0,
    )
    # A rolled-back canary can come back only after a fresh evaluation.
    with pytest.raises(ReleaseStoreError, match="is retired; a canary needs an evaluated release"):
        await store.start_canary(TASK, "v2", 5, "alice", "again")
    await store.mark_evaluated(TASK, "v2", "turnout-eval", "fixed upstream, rerun passed")
    await store.start_canary(TASK, "v2", 5, "alice", "again")


async def test_rollback_returns_to_the_previous_active_once(store: ReleaseStore) -> None:
    await bootstrap(store, "v2")
    with pytest.raises(ReleaseStoreError, match="no previous active release to return to"):
        await store.rollback(TASK, "alice", "nothing to go back to")
    await store.promote(TASK, "v2", "alice", "ship")
    row = await store.rollback(TASK, "alice", "complaints")
    assert (row.active, row.previous_active) == ("v1", None)
    assert await states(store) == {"v1": "active", "v2": "retired"}
    with pytest.raises(ReleaseStoreError, match="no previous active release"):
        await store.rollback(TASK, "alice", "again")
    assert (await serving(store))[0] == "v1"  # the last fully active release is always kept


async def test_rollback_to_previous_with_a_canary_running(store: ReleaseStore) -> None:
    await bootstrap(store, "v2", "v3")
    await store.promote(TASK, "v2", "alice", "ship")
    await store.start_canary(TASK, "v3", 5, "alice", "try")
    with_canary = await store.rollback(TASK, "alice", "v3 bad", to_previous=False)
    assert (with_canary.active, with_canary.canary, with_canary.previous_active) == ("v2", None, "v1")
    await store.mark_evaluated(TASK, "v3", "eval", "rerun")
    await store.start_canary(TASK, "v3", 5, "alice", "try again")
    row = await store.rollback(TASK, "alice", "both bad", to_previous=True)
    assert (row.active, row.canary, row.previous_active) == ("v1", None, None)
    assert await states(store) == {"v1": "active", "v2": "retired", "v3": "retired"}


async def test_rollback_without_anything_serving(store: ReleaseStore) -> None:
    with pytest.raises(ReleaseStoreError, match="nothing to roll back"):
        await store.rollback(TASK, "alice", "why")
    await store.register(make("v1"), "alice")
    with pytest.raises(ReleaseStoreError, match="nothing to roll back"):
        await store.rollback(TASK, "alice", "why")


async def test_a_canary_without_previous_can_be_dropped_but_not_reverted(store: ReleaseStore) -> None:
    await bootstrap(store, "v2")
    await store.start_canary(TASK, "v2", 5, "alice", "go")
    with pytest.raises(ReleaseStoreError, match="no previous active release to return to; roll back without"):
        await store.rollback(TASK, "alice", "both", to_previous=True)
    assert (await serving(store))[:2] == ("v1", "v2")  # refused as a whole: the canary still runs


async def test_mark_evaluated(store: ReleaseStore) -> None:
    await bootstrap(store, "v2")
    again = await store.mark_evaluated(TASK, "v2", "eval", "second run")
    assert again.state == "evaluated"
    assert sum(t.to_state == "evaluated" for t in await store.transitions(TASK)) == 1
    with pytest.raises(ReleaseStoreError, match="is active; only a registered or retired release"):
        await store.mark_evaluated(TASK, "v1", "eval", "run")


@pytest.mark.parametrize(("by", "why", "message"), [(" ", "why", "'by'"), ("alice", "", "'why'")])
async def test_who_and_why_are_required(store: ReleaseStore, by: str, why: str, message: str) -> None:
    await store.register(make("v1"), "alice")
    with pytest.raises(ReleaseStoreError, match=message):
        await store.promote(TASK, "v1", by, why)
    with pytest.raises(ReleaseStoreError, match=message):
        await store.register(make("v2"), by, why)


async def test_tasks_are_independent(store: ReleaseStore) -> None:
    await bootstrap(store)
    await store.register(make("v1", task="summarise"), "alice")
    assert await states(store, "summarise") == {"v1": "registered"}
    await store.promote("summarise", "v1", "alice", "first")  # its own bootstrap
    snapshot = await store.snapshot()
    assert sorted(snapshot.serving) == ["extract", "summarise"]
    assert snapshot.serving["summarise"].active == make("v1", task="summarise")


@pytest.mark.parametrize("kind", KINDS)
async def test_concurrent_promotions_are_serialised(kind: str, tmp_path: Path) -> None:
    """Two processes' (or machines') worth of stores race to promote different releases: one
    wins, the other sees the state the first left and is refused or applies on top of it; never
    both."""
    async with (
        state_place(kind, tmp_path / "releases.db") as path,
        ReleaseStore(path) as a,
        ReleaseStore(path) as b,
    ):
        await bootstrap(a, "v2", "v3")
        results = await asyncio.gather(
            a.promote(TASK, "v2", "alice", "race"), b.promote(TASK, "v3", "bob", "race"), return_exceptions=True
        )
        assert not any(isinstance(r, BaseException) for r in results)
        row = await a.serving_row(TASK)
        assert row is not None and row.active in ("v2", "v3")
        active = [name for name, state in (await states(a)).items() if state == "active"]
        assert active == [row.active]


async def test_reopening_keeps_everything_and_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "releases.db"
    async with ReleaseStore(path) as s:
        await bootstrap(s, "v2")
    async with ReleaseStore(path) as s:
        assert await states(s) == {"v1": "active", "v2": "evaluated"}
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_migrations VALUES (?, 0)", (len(MIGRATIONS) + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(ReleaseStoreError, match="newer than this turnout knows"):
        async with ReleaseStore(path):
            pass


async def test_a_closed_store_says_so(tmp_path: Path) -> None:
    s = ReleaseStore(tmp_path / "r.db")
    with pytest.raises(ReleaseStoreError, match="is not open"):
        await s.releases(TASK)
    with pytest.raises(ReleaseStoreError, match="is not open"):
        s.data_version()
    await s.open()
    with pytest.raises(ReleaseStoreError, match="already open"):
        await s.open()
    await s.aclose()
    await s.aclose()  # twice is fine
