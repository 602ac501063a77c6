"""Shadow releases: the store's state machine (both state backends), the comparison of two
answers, the sample's figures and gates by hand-computed known answers, and the mirror on the
request path in-process (after the answer, never served, within its caps and the policy)."""

from __future__ import annotations

import asyncio
import dataclasses
import http.server
import socketserver
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.asgi import request
from tests.conftest import AppFactory
from tests.fakes.scripted import ScriptedProvider, Step
from tests.pgstate import KINDS, state_place
from tests.test_releases_store import bootstrap, make
from turnout.config import TaskConfig
from turnout.offline.shadow import shadow_gates, summarize
from turnout.releases.shadowstore import Pair, ShadowStore
from turnout.releases.store import ReleaseStore, ReleaseStoreError
from turnout.serving.app import App
from turnout.serving.shadow import _fits, agrees

TASK = "extract"


@pytest.fixture(params=KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ReleaseStore]:
    async with state_place(request.param, tmp_path / "state" / "releases.db") as place, ReleaseStore(place) as s:
        yield s


async def state_of(store: ReleaseStore, name: str) -> str:
    found = await store.get(TASK, name)
    assert found is not None
    return found.state


# --- the state machine ------------------------------------------------------------------------


async def test_a_shadow_starts_changes_share_and_stops_back_to_its_state(store: ReleaseStore) -> None:
    await bootstrap(store, "v2")
    await store.register(make("v3", temperature=0.7), "alice")
    row = await store.start_shadow(TASK, "v3", 20, "alice", "compare")
    assert (row.active, row.shadow, row.shadow_percent, row.canary) == ("v1", "v3", 20.0, None)
    assert await state_of(store, "v3") == "shadow"
    row = await store.start_shadow(TASK, "v3", 50, "alice", "more")
    assert row.shadow_percent == 50.0
    with pytest.raises(ReleaseStoreError, match="already shadows release 'v3'"):
        await store.start_shadow(TASK, "v2", 10, "alice", "a second one")
    snap = await store.snapshot()
    serving = snap.serving[TASK]
    assert serving.shadow is not None and serving.shadow.name == "v3" and serving.shadow_percent == 50.0
    row = await store.stop_shadow(TASK, "alice", "enough")
    assert (row.shadow, row.shadow_percent) == (None, 0.0)
    assert await state_of(store, "v3") == "registered"  # where it was before
    moves = [(t.from_state, t.to_state) for t in await store.transitions(TASK, "v3")]
    assert moves == [(None, "registered"), ("registered", "shadow"), ("shadow", "shadow"), ("shadow", "registered")]
    with pytest.raises(ReleaseStoreError, match="no release in shadow"):
        await store.stop_shadow(TASK, "alice", "again")


async def test_an_evaluation_during_the_shadow_is_remembered(store: ReleaseStore) -> None:
    await bootstrap(store)
    await store.register(make("v3", temperature=0.7), "alice")
    await store.start_shadow(TASK, "v3", 20, "alice", "compare")
    await store.mark_evaluated(TASK, "v3", "turnout-eval", "gates passed")
    assert await state_of(store, "v3") == "shadow"
    await store.stop_shadow(TASK, "alice", "done")
    assert await state_of(store, "v3") == "evaluated"


async def test_what_a_shadow_may_not_do(store: ReleaseStore) -> None:
    await store.register(make("v1"), "alice")
    with pytest.raises(ReleaseStoreError, match="no active release to compare"):
        await store.start_shadow(TASK, "v1", 20, "alice", "nothing serves")
    await store.promote(TASK, "v1", "alice", "first")
    with pytest.raises(ReleaseStoreError, match="serves no traffic"):
        await store.start_shadow(TASK, "v1", 20, "alice", "the active one")
    with pytest.raises(ReleaseStoreError, match="share must be more than 0"):
        await store.start_shadow(TASK, "v1", 0, "alice", "none")
    await store.register(make("v2", temperature=0.3), "alice")
    await store.start_shadow(TASK, "v2", 20, "alice", "compare")
    with pytest.raises(ReleaseStoreError, match="is in shadow; start a canary"):
        await store.promote(TASK, "v2", "alice", "skip the canary", force=True)
    with pytest.raises(ReleaseStoreError, match="passes the task's gates"):
        await store.start_canary(TASK, "v2", 5, "alice", "not checked")
    row = await store.start_canary(TASK, "v2", 5, "alice", "sample passed", gated=True)
    assert (row.canary, row.canary_percent, row.shadow) == ("v2", 5.0, None)  # no longer mirrored
    assert await state_of(store, "v2") == "canary"


async def test_a_gated_canary_is_refused_when_the_active_release_changed(store: ReleaseStore) -> None:
    """The gates were read against one active release; another was promoted meanwhile."""
    await bootstrap(store, "v2")
    await store.register(make("v3", temperature=0.7), "alice")
    await store.start_shadow(TASK, "v3", 20, "alice", "compare")
    await store.promote(TASK, "v2", "alice", "meanwhile")
    with pytest.raises(ReleaseStoreError, match="measured against 'v1', but 'v2' is active"):
        await store.start_canary(TASK, "v3", 5, "alice", "sample passed", gated=True, against="v1")
    row = await store.start_canary(TASK, "v3", 5, "alice", "sample passed", gated=True, against="v2")
    assert (row.active, row.canary, row.shadow) == ("v2", "v3", None)


async def test_rollback_and_promotion_leave_the_shadow_running(store: ReleaseStore) -> None:
    await bootstrap(store, "v2")
    await store.register(make("v3", temperature=0.7), "alice")
    await store.start_shadow(TASK, "v3", 30, "alice", "compare")
    await store.promote(TASK, "v2", "alice", "better")
    row = await store.rollback(TASK, "alice", "worse")
    assert (row.active, row.shadow, row.shadow_percent) == ("v1", "v3", 30.0)


async def test_a_rollback_to_the_release_in_shadow_ends_its_shadow(store: ReleaseStore) -> None:
    """The previous active release, retired, may be shadowed; rolling back to it left it active
    and in shadow at once (mirrored to itself)."""
    await bootstrap(store, "v2")
    await store.promote(TASK, "v2", "alice", "better")
    await store.start_shadow(TASK, "v1", 30, "alice", "keep an eye on the old one")
    row = await store.rollback(TASK, "alice", "v2 is worse")
    assert (row.active, row.shadow, row.shadow_percent, row.canary) == ("v1", None, 0.0, None)
    assert await state_of(store, "v1") == "active"
    snap = (await store.snapshot()).serving[TASK]
    assert snap.shadow is None and snap.active is not None and snap.active.name == "v1"
    moves = [(t.from_state, t.to_state) for t in await store.transitions(TASK, "v1")]
    assert moves[-1] == ("shadow", "active")
    await store.register(make("v3", temperature=0.7), "alice")
    assert (await store.start_shadow(TASK, "v3", 10, "alice", "a new one")).shadow == "v3"


# --- comparing answers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("served", "shadow", "how", "same"),
    [
        ('{"a": 1, "b": [1, 2]}', '{"b": [1, 2],\n "a": 1}', "auto", True),
        ('{"a": 1}', '```json\n{"a": 1}\n```', "auto", True),
        ('{"a": 1}', '{"a": 2}', "auto", False),
        ("Paris is the capital.", "  paris   is the CAPITAL. ", "auto", True),
        ("Paris.", "Lyon.", "text", False),
        ('{"a": 1}', '{ "a": 1 }', "text", False),
        ("Paris.", "paris.", "exact", False),
        ("Paris.", "Paris.", "exact", True),
        ('{"a": 1', '{"a": 1', "json", True),  # not JSON on either side: compared as text
    ],
)
def test_answers_agree_as_configured(served: str, shadow: str, how: str, same: bool) -> None:
    assert agrees(served, shadow, how) is same


# --- the sample and its gates, by hand --------------------------------------------------------


def pair(i: int, *, agree: bool | None = True, shadow_pass: bool | None = True, status: int = 200, **kw: Any) -> Pair:
    fields: dict[str, Any] = {
        "request_id": f"r{i}",
        "at": 1000.0 + i,
        "tenant": "acme",
        "task": TASK,
        "served_release": "v1",
        "shadow_release": "v2",
        "shadow_target": "cand" if status == 200 else None,
        "status": status,
        "error_class": None if status == 200 else "upstream_error",
        "agree": agree if status == 200 else None,
        "served_pass": True,
        "shadow_pass": shadow_pass if status == 200 else None,
        "served_ms": 100.0 + i,
        "shadow_ms": 200.0 + 2 * i,
        "served_cost_usd": 0.002,
        "shadow_cost_usd": 0.001 if status == 200 else 0.0,
    }
    fields.update(kw)
    return Pair(**fields)


def sample() -> list[Pair]:
    """10 pairs: 1 shadow error; of the 9 answers 7 agree; 8 shadow passes (one disagreeing
    answer fails its scorers, and the error fails)."""
    out = [pair(i) for i in range(7)]
    out.append(pair(7, agree=False))
    out.append(pair(8, agree=False, shadow_pass=False))
    out.append(pair(9, status=502))
    return out


def test_the_sample_by_hand() -> None:
    s = summarize(TASK, "v2", sample())
    assert (s.pairs, s.errors, s.compared, s.agreed) == (10, 1, 9, 7)
    assert s.agreement == pytest.approx(7 / 9)
    # Wilson 95 % for 7 of 9: centre (7/9 + z²/18)/(1 + z²/9), by hand 0.4530 to 0.9372
    assert s.agreement_interval.low == pytest.approx(0.4530, abs=1e-3)
    assert s.agreement_interval.high == pytest.approx(0.9372, abs=1e-3)
    assert (s.served.passed, s.shadow.passed) == (10, 8)
    assert s.shadow.pass_rate == pytest.approx(0.8) and s.served.pass_rate == 1.0
    assert (s.only_served_passed, s.only_shadow_passed) == (2, 0)
    assert s.served.p50_ms == pytest.approx(104.5)  # 100..109
    assert s.shadow.p50_ms == pytest.approx(208.0)  # the 9 answered: 200, 202, ..., 216
    assert s.shadow.cost_usd == pytest.approx(0.009) and s.served.cost_usd == pytest.approx(0.02)
    assert s.shadow.cost_per_pass() == pytest.approx(0.009 / 8)
    assert s.served.cost_interval is not None and s.served.cost_interval.low == pytest.approx(0.002)


def test_the_gates_on_the_sample_by_hand() -> None:
    task = TaskConfig.model_validate(
        {
            "route": ["cand"],
            "gates": {
                "min_pass_rate": 0.65,
                "max_regression": 0.15,
                "max_p95_ms": 250,
                "max_cost_per_pass_ratio": 1.0,
                "max_cost_per_completed_task": 0.03,
            },
            "review_cost_usd": 0.01,
            "escalation_cost_usd": 0.1,
            "shadow": {"min_pairs": 10, "min_agreement": 0.75},
        }
    )
    gates = {g.name: g for g in shadow_gates(summarize(TASK, "v2", sample()), task)}
    assert gates["min_pairs"].passed
    assert gates["min_agreement"].passed and gates["min_agreement"].observed == pytest.approx(7 / 9)
    assert gates["min_pass_rate"].passed and gates["min_pass_rate"].observed == pytest.approx(0.8)
    assert not gates["max_regression"].passed and gates["max_regression"].observed == pytest.approx(0.2)
    assert gates["max_p95_ms"].passed  # p95 of 200..216 = 215.2
    # shadow $0.009 / 8 passes vs served $0.02 / 10 passes: 0.5625 ≤ 1
    assert gates["max_cost_per_pass_ratio"].passed
    assert gates["max_cost_per_pass_ratio"].observed == pytest.approx(0.5625)
    # ($0.009 + $0.01 × 10 + $0.1 × 2 failed) / 8 passed = $0.038625 > $0.03
    assert gates["max_cost_per_completed_task"].observed == pytest.approx(0.038625)
    assert not gates["max_cost_per_completed_task"].passed
    small = {g.name: g for g in shadow_gates(summarize(TASK, "v2", sample()[:4]), task)}
    assert not small["min_pairs"].passed and "4 mirrored requests; 10 needed" in small["min_pairs"].explanation


@pytest.mark.parametrize(("status", "why"), [(502, "every shadow call failed"), (200, "no answer passed its scorers")])
def test_a_shadow_that_passed_nothing_fails_its_pass_rate(status: int, why: str) -> None:
    # gates.min_pass_rate defaults to 0: a shadow whose every call failed passed it, and with a
    # served side that failed its scorers alike, every gate passed and the canary started
    pairs = [pair(i, status=status, served_pass=False, shadow_pass=False if status == 200 else None) for i in range(50)]
    task = TaskConfig.model_validate({"route": ["cand"], "shadow": {"min_pairs": 50}})
    gates = {g.name: g for g in shadow_gates(summarize(TASK, "v2", pairs), task)}
    g = gates["min_pass_rate"]
    assert not g.passed and g.explanation == f"v2 passed none of 50 pairs ({why})"
    assert gates["max_regression"].passed  # nothing else would have stopped it


@pytest.mark.parametrize("kind", KINDS)
async def test_pairs_are_stored_once_and_read_back(kind: str, tmp_path: Path) -> None:
    async with state_place(kind, tmp_path / "shadow.db") as place, ShadowStore(place) as store:
        await store.write_pairs(sample())
        await store.write_pairs(sample()[:3])  # a replayed batch: nothing twice
        found = await store.pairs(TASK, "v2")
        assert len(found) == 10 and found[0].request_id == "r9"  # newest first
        assert {p.request_id: p for p in found}["r8"] == sample()[8]
        assert await store.pairs(TASK, "v9") == []
        assert await store.spent(since=0) == {TASK: pytest.approx(0.009)}
        assert await store.spent(since=5000) == {}
        judged = pair(20, judge_cost_usd=0.5)
        await store.write_pairs([judged])
        assert (await store.pairs(TASK, "v2"))[0] == judged
        await store.write_pairs([pair(30, served_release="v3")])  # served by another active release
        assert [p.request_id for p in await store.pairs(TASK, "v2", baseline="v3")] == ["r30"]
        assert len(await store.pairs(TASK, "v2", baseline="v1")) == 11


# --- on the request path ----------------------------------------------------------------------

PRICE = {"input_per_mtok": 1_000_000.0, "output_per_mtok": 1_000_000.0}  # $1 a token: 7 + 3 = $10 a call
RELEASE = """
target: {target}
prompt:
  user: "unused by chat"
params: {{temperature: 0}}
"""


async def shadowed_app(
    make_app: AppFactory,
    tmp_path: Path,
    live: ScriptedProvider,
    cand: ScriptedProvider,
    judging: ScriptedProvider | None = None,
    cache: Any = None,
    **shadow: Any,
) -> App:
    """v1 (on live) active, v2 (on cand) in shadow at 100 %; with ``judging``, a priced judge target
    that restricted data may not reach (the candidate may); with ``cache``, the task's cache."""
    for name, target in (("v1", "live"), ("v2", "cand")):
        path = tmp_path / "releases" / "chat" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(RELEASE.format(target=target)))
    raw: dict[str, Any] = {
        "releases": {"path": str(tmp_path / "releases"), "store_path": str(tmp_path / "releases.db")},
        "targets": {
            "live": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"},
            "cand": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", "price": PRICE},
        },
        "policy": {"restricted": {"targets": ["live"]}},
        "tenants": {"acme": {"keys": ["sk-acme-shadow-001"], "data_classes": ["internal", "restricted"]}},
        "tasks": {"chat": {"route": ["live", "cand"], "shadow": {"max_concurrency": 50, **shadow}}},
        "observability": {"metrics": True},
    }
    providers = {"live": live, "cand": cand}
    if judging is not None:
        raw["targets"]["judge"] = {**raw["targets"]["cand"], "model": "j"}
        raw["policy"] = {"restricted": {"targets": ["live", "cand"]}}
        providers["judge"] = judging
    if cache is not None:
        raw["tasks"]["chat"]["cache"] = cache
    from turnout.config import validate
    from turnout.releases.files import load_all

    files = load_all(validate(raw))["chat"]
    async with ReleaseStore(tmp_path / "releases.db") as store:
        for each in files.values():
            await store.register(each, "alice")
        await store.promote("chat", "v1", "alice", "first")
        await store.start_shadow("chat", "v2", 100, "alice", "compare")
    return await make_app(raw, providers)


async def ask(app: App, content: str = "order?", data_class: str | None = None) -> tuple[int, str]:
    headers = {"authorization": "Bearer sk-acme-shadow-001"}
    if data_class:
        headers["x-turnout-data-class"] = data_class
    body = {"model": "chat", "messages": [{"role": "user", "content": content}]}
    got = await request(app, "POST", "/v1/chat/completions", body, headers=headers)
    text = got.json()["choices"][0]["message"]["content"] if got.status == 200 else ""
    return got.status, text


async def pairs(app: App, n: int) -> list[Pair]:
    mirror = app.runtime.shadows
    assert mirror is not None
    deadline = time.monotonic() + 10
    while True:
        found = await mirror.store.pairs("chat")
        if len(found) >= n or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.02)


async def test_a_shadow_sees_a_copy_and_its_disagreements_are_counted(make_app: AppFactory, tmp_path: Path) -> None:
    live = ScriptedProvider("live", Step(text="the served answer"))
    steps = [Step(text="the served answer" if i % 5 else "something else") for i in range(20)]
    cand = ScriptedProvider("cand", *steps)
    app = await shadowed_app(make_app, tmp_path, live, cand, usd_per_day=1000.0)
    answers = [await ask(app, f"q{i}") for i in range(20)]
    assert answers == [(200, "the served answer")] * 20  # the shadow never serves
    found = await pairs(app, 20)
    assert len(found) == 20 and len(cand.calls) == 20
    s = summarize("chat", "v2", found)
    assert (s.compared, s.agreed) == (20, 16) and s.served.release == "v1"
    assert s.shadow.cost_usd == pytest.approx(200.0) and s.served.cost_usd is None  # live is unpriced
    assert {p.shadow_target for p in found} == {"cand"}
    # the shadow got each request's messages, with its release's parameters and a bounded answer
    asked = sorted(c.body["messages"][0]["content"] for c in cand.calls)
    assert asked == sorted(f"q{i}" for i in range(20))
    assert all(c.body["temperature"] == 0 and c.body["max_tokens"] > 0 for c in cand.calls)
    rows = await app.runtime.store.recent(100) if app.runtime.store is not None else []
    assert len(rows) == 20 and {r.target for r in rows} == {"live"}  # no ledger row for a shadow call
    scraped = (await request(app, "GET", "/metrics")).body.decode()
    assert 'turnout_shadow_total{release="v2",result="agree",task="chat"} 16.0' in scraped
    assert 'turnout_shadow_total{release="v2",result="disagree",task="chat"} 4.0' in scraped


async def test_a_cache_hit_is_not_mirrored(make_app: AppFactory, tmp_path: Path) -> None:
    """Seen: on a cached task the hits were mirrored as served answers that cost $0 and took a
    millisecond, so a shadow as dear as the active release failed max_cost_per_pass_ratio. A
    hit replays an answer that was compared (when drawn) as it was generated."""
    live = ScriptedProvider("live", Step(text="the served answer"))
    cand = ScriptedProvider("cand", Step(text="the served answer"))
    cache = {"ttl_s": 60, "classes": ["internal"]}
    app = await shadowed_app(make_app, tmp_path, live, cand, cache=cache, usd_per_day=1000.0)
    assert [await ask(app, f"q{i % 2}") for i in range(6)] == [(200, "the served answer")] * 6
    assert len(live.calls) == 2  # q0 and q1 generated, four hits
    assert len(await pairs(app, 2)) == 2
    await asyncio.sleep(0.2)  # a hit's mirror, were there one, has run by now (the fakes answer at once)
    assert len(cand.calls) == 2 and len(await pairs(app, 2)) == 2


async def test_the_daily_cap_stops_mirroring(make_app: AppFactory, tmp_path: Path) -> None:
    live, cand = ScriptedProvider("live", Step(text="a")), ScriptedProvider("cand", Step(text="a"))
    app = await shadowed_app(make_app, tmp_path, live, cand, usd_per_day=25.0, max_concurrency=1)
    for i in range(6):
        assert (await ask(app, f"q{i}"))[0] == 200
        await pairs(app, min(i + 1, 3))
    assert len(cand.calls) == 3  # $10, $20, $30: the third passed the cap, then none
    scraped = (await request(app, "GET", "/metrics")).body.decode()
    assert 'turnout_shadow_total{release="v2",result="capped",task="chat"} 3.0' in scraped


async def test_a_busy_shadow_is_skipped_and_never_delays_the_answer(make_app: AppFactory, tmp_path: Path) -> None:
    live = ScriptedProvider("live", Step(text="a"))
    cand = ScriptedProvider("cand", Step(text="a", delay=1.0))
    app = await shadowed_app(make_app, tmp_path, live, cand, max_concurrency=1)
    assert [(await ask(app, f"q{i}"))[0] for i in range(3)] == [200, 200, 200]
    assert app.runtime.shadows is not None and app.runtime.shadows.busy["chat"] == 1  # answered while it runs
    assert len(cand.calls) == 1
    scraped = (await request(app, "GET", "/metrics")).body.decode()
    assert 'turnout_shadow_total{release="v2",result="busy",task="chat"} 2.0' in scraped


async def test_the_policy_keeps_restricted_requests_from_a_shadow_target(make_app: AppFactory, tmp_path: Path) -> None:
    live, cand = ScriptedProvider("live", Step(text="a")), ScriptedProvider("cand", Step(text="a"))
    app = await shadowed_app(make_app, tmp_path, live, cand)
    assert (await ask(app, "secret", data_class="restricted"))[0] == 200
    await asyncio.sleep(0.2)
    assert cand.calls == []
    scraped = (await request(app, "GET", "/metrics")).body.decode()
    assert 'turnout_shadow_total{release="v2",result="not_allowed",task="chat"} 1.0' in scraped


async def test_a_failing_shadow_is_a_pair_with_its_error(make_app: AppFactory, tmp_path: Path) -> None:
    from turnout.errors import UpstreamStatusError

    live = ScriptedProvider("live", Step(text="a"))
    cand = ScriptedProvider("cand", Step(error=UpstreamStatusError(500, "boom")))
    app = await shadowed_app(make_app, tmp_path, live, cand)
    assert await ask(app) == (200, "a")
    (found,) = await pairs(app, 1)
    assert (found.status, found.agree, found.shadow_pass) == (502, None, None)
    assert found.error_class is not None


async def test_a_reload_reprices_and_rescores_the_shadow(make_app: AppFactory, tmp_path: Path) -> None:
    from turnout.config import validate
    from turnout.serving.pipeline import Pipeline

    live, cand = ScriptedProvider("live", Step(text='{"a": 1}')), ScriptedProvider("cand", Step(text='{"a": 1}'))
    app = await shadowed_app(make_app, tmp_path, live, cand, usd_per_day=1000.0)
    assert await ask(app) == (200, '{"a": 1}')
    (before,) = await pairs(app, 1)
    assert (before.shadow_cost_usd, before.shadow_pass) == (10.0, None)
    raw = app.runtime.config.model_dump(mode="json", exclude_unset=True)
    raw["targets"]["cand"]["price"] = {"input_per_mtok": 2_000_000.0, "output_per_mtok": 2_000_000.0}
    raw["tasks"]["chat"]["scoring"] = {"rate": 1.0, "scorers": [{"scorer": "json_schema", "schema": {"type": "array"}}]}
    new = await app.runtime.successor(validate(raw))  # what App.reload does
    new.adopt(app.runtime)
    app.runtime, app.pipeline = new, Pipeline(new)
    assert await ask(app) == (200, '{"a": 1}')
    after = [p for p in await pairs(app, 2) if p.request_id != before.request_id]
    assert [(p.shadow_cost_usd, p.shadow_pass, p.served_pass) for p in after] == [(20.0, False, False)]


JUDGED = {"compare": "judge", "judge": {"target": "judge", "rubric": "the same order id"}, "usd_per_day": 1000.0}


async def test_a_judge_decides_agreement_and_is_priced_apart(make_app: AppFactory, tmp_path: Path) -> None:
    live = ScriptedProvider("live", Step(text='{"order_id": "A-17"}'))
    cand = ScriptedProvider("cand", Step(text="The order is A-17."))
    judge = ScriptedProvider("judge", Step(text="YES"), Step(text="no."), Step(text="Yes"), Step(text="maybe"))
    app = await shadowed_app(make_app, tmp_path, live, cand, judge, max_concurrency=1, **JUDGED)
    for i in range(4):
        assert (await ask(app, f"q{i}"))[0] == 200
        await pairs(app, i + 1)
    found = sorted(await pairs(app, 4), key=lambda p: p.at)
    assert [p.agree for p in found] == [True, False, True, None]  # "maybe": no verdict
    assert [p.judge_cost_usd for p in found] == [10.0] * 4 and [p.shadow_cost_usd for p in found] == [10.0] * 4
    asked = judge.calls[0].body
    question = asked["messages"][0]["content"]
    assert asked["max_tokens"] == 3 and asked["temperature"] == 0
    assert '{"order_id": "A-17"}' in question and "The order is A-17." in question and "q0" in question
    assert "Judge by this rubric: the same order id" in question
    s = summarize("chat", "v2", found)
    assert (s.compared, s.agreed, s.judge_calls, s.judge_cost_usd) == (3, 2, 4, 40.0)
    assert app.runtime.shadows is not None and app.runtime.shadows.spent["chat"] == 80.0  # the judge counts
    scraped = (await request(app, "GET", "/metrics")).body.decode()
    assert 'turnout_shadow_total{release="v2",result="unjudged",task="chat"} 1.0' in scraped


async def test_the_judge_sees_no_text_its_target_may_not_take(make_app: AppFactory, tmp_path: Path) -> None:
    live, cand = ScriptedProvider("live", Step(text="a")), ScriptedProvider("cand", Step(text="a"))
    judge = ScriptedProvider("judge", Step(text="YES"))
    app = await shadowed_app(make_app, tmp_path, live, cand, judge, **JUDGED)
    assert await ask(app, "secret", data_class="restricted") == (200, "a")
    (found,) = await pairs(app, 1)
    assert len(cand.calls) == 1 and judge.calls == []  # the candidate may take restricted data, the judge not
    assert (found.agree, found.judge_cost_usd) == (None, None)


@pytest.mark.parametrize(
    ("shadow", "message"),
    [
        ({"compare": "judge"}, "compare: judge and a judge"),
        ({"judge": {"target": "live"}}, "compare: judge and a judge"),
        (
            {"compare": "judge", "judge": {"target": "jduge"}},
            r"tasks\.chat\.shadow\.judge\.target: unknown target 'jduge'",
        ),
    ],
)
def test_a_judge_is_configured_whole(shadow: dict[str, Any], message: str) -> None:
    from turnout.config import validate
    from turnout.errors import ConfigError

    raw = {
        "targets": {"live": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}},
        "tasks": {"chat": {"route": ["live"], "shadow": shadow}},
    }
    with pytest.raises(ConfigError, match=message):
        validate(raw)


async def test_a_streamed_answer_is_mirrored_whole(make_app: AppFactory, tmp_path: Path) -> None:
    live, cand = ScriptedProvider("live", Step(text="streamed words")), ScriptedProvider("cand", Step(text="other"))
    app = await shadowed_app(make_app, tmp_path, live, cand, usd_per_day=1000.0)
    body = {"model": "chat", "messages": [{"role": "user", "content": "q"}], "stream": True}
    got = await request(
        app, "POST", "/v1/chat/completions", body, headers={"authorization": "Bearer sk-acme-shadow-001"}
    )
    assert got.status == 200 and b"data: [DONE]" in got.body
    (found,) = await pairs(app, 1)
    assert found.agree is False and live.calls[0].stream and not cand.calls[0].stream


def test_cost_per_pass_against_a_served_release_that_passed_nothing_reads_as_the_eval_gate() -> None:
    """The golden set's gate passes a candidate whose baseline passed nothing (any finite cost
    per pass is better); the shadow's failed it as an infinite ratio, so the same two releases
    passed one gate and failed the other."""
    pairs = [pair(i, served_pass=False) for i in range(20)]
    task = TaskConfig.model_validate({"route": ["cand"], "gates": {"max_cost_per_pass_ratio": 1.0}})
    g = {g.name: g for g in shadow_gates(summarize(TASK, "v2", pairs), task)}["max_cost_per_pass_ratio"]
    assert g.passed and g.observed is None
    assert g.explanation == "the served release passed nothing: any finite cost per pass is better"
    free = [pair(i, served_cost_usd=0.0) for i in range(20)]  # served at no cost, the shadow not
    g = {g.name: g for g in shadow_gates(summarize(TASK, "v2", free), task)}["max_cost_per_pass_ratio"]
    assert not g.passed and g.observed is None  # not inf: the report's JSON stays JSON


@pytest.mark.parametrize("ref", ["#/$defs/missing", "remote"])
def test_a_shadow_answer_is_checked_against_its_schema_without_fetching_a_ref(ref: str) -> None:
    """The shadow's schema check ran ``jsonschema.validate``: a ``$ref`` to another document was
    fetched over HTTP from the event loop, and one that resolves nowhere raised out of the
    comparison. Now it is the task API's check: nothing fetched, the answer does not fit."""
    fetched: list[str] = []

    class Schemas(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetched.append(self.path)
            body = b'{"type": "object"}'
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with socketserver.TCPServer(("127.0.0.1", 0), Schemas) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            target = ref if ref != "remote" else f"http://127.0.0.1:{server.server_address[1]}/order.json"
            release = dataclasses.replace(make("v2"), output_schema={"$ref": target})
            assert _fits(release, '{"id": "A-17"}') is False
            assert _fits(dataclasses.replace(make("v2")), '{"id": "A-17"}') is True  # an object fits
        finally:
            server.shutdown()
    assert fetched == []


def test_the_gates_of_a_shadow_with_no_pair_yet_say_so() -> None:
    """With nothing mirrored, the gates read "None − v2 = +0.0%" and "passed none of 0 pairs
    (every shadow call failed)": no call had been made."""
    task = TaskConfig.model_validate({"route": ["cand"], "gates": {"min_pass_rate": 0.5}})
    gates = {g.name: g for g in shadow_gates(summarize(TASK, "v2", []), task)}
    assert not gates["min_pairs"].passed
    assert not gates["min_pass_rate"].passed
    assert gates["min_pass_rate"].explanation == "v2 has no mirrored request yet"
    assert gates["max_regression"].explanation == "v2: no mirrored request to compare yet"
    assert all("None" not in g.explanation and "failed" not in g.explanation for g in gates.values())
