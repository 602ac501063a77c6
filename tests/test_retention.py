"""Retention: the effective rule per tenant × task (most specific wins, field by field), the
purge of a real ledger (memory, SQLite, PostgreSQL in a schema of its own) holding rows of
several ages, in batches, audited with counts; ``turnout retention show`` on overlapping rules;
and the gateway starting the purge job."""

from __future__ import annotations

import asyncio
import json
import random
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tests.conftest import AppFactory
from tests.pgstate import KINDS, state_place
from tests.test_ledger_store import (
    BACKENDS,
    POSTGRES_DSN,
    drop_schema,
    make_row,
    postgres_reachable,
    postgres_store,
    unique_schema,
)
from turnout._support.places import PgPlace, Place
from turnout.cli.main import main
from turnout.config import Config, validate
from turnout.errors import ConfigError
from turnout.ledger.memory import MemoryStore
from turnout.ledger.sqlite import SQLiteStore
from turnout.ledger.store import AgedRow, LedgerStore, Order
from turnout.privacy.capture.model import Decision
from turnout.privacy.capture.store import CaptureStore
from turnout.privacy.capture.writer import CaptureWriter
from turnout.privacy.redact import Redactor
from turnout.privacy.retention.purge import RetentionPurge
from turnout.privacy.retention.rules import DAY_S, Rules
from turnout.releases.review import ReviewQueue

NOW = 1_800_000_000.0
INTERVAL = 3600.0  # retention.purge_interval_s's default


def config(**retention: Any) -> Config:
    raw: dict[str, Any] = {
        "targets": {"t": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}},
        "tenants": {
            "acme": {"keys": ["acme-key-00000000"], "data_classes": ["public", "internal"]},
            "globex": {"keys": ["globex-key-0000000"], "data_classes": ["public"]},
        },
        "capture": {"mode": "redacted", "ttl_days": 14},
        "tasks": {
            "faq": {"route": ["t"], "cache": {"ttl_s": 3600, "classes": ["public"]}},
            "support": {"route": ["t"]},
        },
        "retention": retention,
    }
    return validate(raw)


OVERLAPPING = {
    "batch_size": 3,
    "rules": [
        {"ledger_days": 365},
        {"tenant": "acme", "ledger_days": 90, "capture_days": 7},
        {"task": "faq", "cache_ttl_s": 600, "ledger_days": 180},
        {"tenant": "acme", "task": "faq", "ledger_days": 30},
    ],
}


# -- the rules -------------------------------------------------------------------------------


def test_most_specific_wins_field_by_field() -> None:
    rules = Rules(config(**OVERLAPPING))
    acme_faq, acme_support = rules.get("acme", "faq"), rules.get("acme", "support")
    globex_faq, globex_support = rules.get("globex", "faq"), rules.get("globex", "support")
    assert (acme_faq.ledger_days, acme_support.ledger_days) == (30, 90)
    assert (globex_faq.ledger_days, globex_support.ledger_days) == (180, 365)
    assert acme_faq.capture_days == 7 and globex_faq.capture_days == 14  # capture.ttl_days
    assert acme_faq.cache_ttl_s == 600 and acme_support.cache_ttl_s is None
    assert acme_faq.cache_ttl(3600) == 600 and acme_faq.cache_ttl(60) == 60
    assert rules.source("acme", "faq", "ledger_days") == "tenant+task"
    assert rules.source("acme", "faq", "capture_days") == "tenant"
    assert rules.source("globex", "faq", "cache_ttl_s") == "task"
    assert rules.source("globex", "support", "ledger_days") == "default"
    assert rules.source("globex", "support", "review_days") == "fallback"
    assert rules.purges


def test_without_rules_nothing_is_purged_and_capture_keeps_its_ttl() -> None:
    rules = Rules(config())
    assert not rules.purges
    assert rules.get("acme", "faq").ledger_days is None and rules.get("acme", "faq").capture_days == 14


@pytest.mark.parametrize(
    ("rules", "problem"),
    [
        ([{"task": "nope", "ledger_days": 1}], "retention.rules[0].task: unknown task 'nope'"),
        ([{"tenant": "nope", "ledger_days": 1}], "retention.rules[0].tenant: unknown tenant 'nope'"),
        ([{"task": "faq"}, {"task": "faq"}], "retention.rules[1]: a second rule for task 'faq'"),
        ([{"ledger_days": 0}], "ledger_days"),
    ],
)
def test_bad_rules_are_named(rules: list[dict[str, Any]], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config(rules=rules)
    assert any(problem in p for p in caught.value.problems), caught.value.problems


# -- the purge, on every ledger backend ------------------------------------------------------


@pytest.fixture(params=BACKENDS)
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LedgerStore]:
    store: LedgerStore
    schema = None
    if request.param == "memory":
        store = MemoryStore()
    elif request.param == "sqlite":
        store = SQLiteStore(tmp_path / "ledger.db")
    else:
        if not postgres_reachable():
            pytest.skip("no PostgreSQL")
        schema = unique_schema()
        store = postgres_store(schema)
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()
        if schema is not None:
            await drop_schema(schema)


def aged(n: int, tenant: str, task: str, days_old: float) -> Any:
    return make_row(n, tenant=tenant, task=task, started_at=NOW - days_old * DAY_S)


async def test_purge_deletes_rows_past_their_rule_in_batches_and_audits_counts(
    ledger: LedgerStore, tmp_path: Path
) -> None:
    rows = []
    ages = (1, 29, 31, 89, 91, 179, 181, 364, 366, 1000)
    for i, (tenant, task) in enumerate((t, k) for t in ("acme", "globex") for k in ("faq", "support")):
        rows += [aged(i * 100 + j, tenant, task, age) for j, age in enumerate(ages)]
    await ledger.write_batch(rows)
    audit = CaptureStore(tmp_path / "capture.db")
    await audit.open()
    try:
        purge = RetentionPurge(config(**OVERLAPPING), ledger, audit, clock=lambda: NOW)
        run = await purge.run_once(actor="test")
        # acme/faq keeps 30 days, acme/support 90, globex/faq 180, globex/support 365.
        assert run.deleted == {
            ("acme", "faq"): 8,
            ("acme", "support"): 6,
            ("globex", "faq"): 4,
            ("globex", "support"): 2,
        }
        assert run.batches >= 8  # batch_size 3: acme/faq alone took three full batches and one more
        left = await ledger.recent(1000)
        assert len(left) == 40 - 20
        oldest: dict[tuple[str, str], Any] = {}
        for r in left:
            key = (r.tenant, r.task)
            oldest[key] = max(oldest.get(key, 0.0), (NOW - r.started_at) / DAY_S)
        assert oldest == {
            ("acme", "faq"): 29,
            ("acme", "support"): 89,
            ("globex", "faq"): 179,
            ("globex", "support"): 364,
        }
        events = [e for e in await audit.audit() if e.event == "purged"]
        assert {(e.tenant, e.task, e.detail) for e in events if e.tenant} == {
            ("acme", "faq", "retention: deleted 8 ledger rows past ledger_days"),
            ("acme", "support", "retention: deleted 6 ledger rows past ledger_days"),
            ("globex", "faq", "retention: deleted 4 ledger rows past ledger_days"),
            ("globex", "support", "retention: deleted 2 ledger rows past ledger_days"),
        }
        assert events[-1].detail == "retention run: deleted 20 ledger rows of 4 tenant/task pairs"
        assert all(e.actor == "test" for e in events)
        # A second run finds nothing, and says so in the trail all the same.
        again = await purge.run_once()
        assert again.total == 0 and len(await ledger.recent(1000)) == 20
        assert (await audit.audit())[-1].detail == "retention run: deleted 0 ledger rows of 0 tenant/task pairs"
    finally:
        await audit.aclose()


async def test_a_pair_kept_for_ever_is_not_touched(ledger: LedgerStore) -> None:
    await ledger.write_batch([aged(1, "acme", "support", 5000), aged(2, "acme", "faq", 5000)])
    rules = {"rules": [{"task": "faq", "ledger_days": 10}]}
    run = await RetentionPurge(config(**rules), ledger, None, clock=lambda: NOW).run_once()
    assert run.deleted == {("acme", "faq"): 1}
    assert [r.task for r in await ledger.recent(10)] == ["support"]


class Counting:
    """A ledger that counts the rows the purge reads."""

    def __init__(self, inner: LedgerStore) -> None:
        self.inner, self.read = inner, 0

    async def aged_rows(
        self, since: float, before: float, limit: int, after: tuple[float, Order] | None = None
    ) -> list[AgedRow]:
        found = await self.inner.aged_rows(since, before, limit, after)
        self.read += len(found)
        return found

    async def delete_rows(self, request_ids: Sequence[str]) -> dict[tuple[str, str], int]:
        return await self.inner.delete_rows(request_ids)


async def test_the_next_run_reads_only_what_aged_since_the_last(ledger: LedgerStore) -> None:
    """A run reads the rows that crossed a cutoff since the previous one, not every row older
    than the shortest rule: globex's support rows, kept a year, are read by the first run of
    the process and then left alone."""
    kept = [aged(i, "globex", "support", 100) for i in range(50)]
    young = [aged(100 + i, "acme", "faq", 30 - (i + 1) * 600 / DAY_S) for i in range(3)]  # 30 days old within 30 min
    await ledger.write_batch([*kept, *young, aged(200, "acme", "faq", 31)])
    now = [NOW]
    counting = Counting(ledger)
    purge = RetentionPurge(config(**OVERLAPPING), counting, None, clock=lambda: now[0])
    first = await purge.run_once()
    assert first.deleted == {("acme", "faq"): 1} and counting.read == 51
    counting.read = 0
    now[0] += INTERVAL
    second = await purge.run_once()
    assert second.deleted == {("acme", "faq"): 3} and counting.read == 3
    assert await ledger.count() == 50


async def test_a_row_written_long_after_it_started_goes_at_the_daily_walk_of_every_old_row(ledger: LedgerStore) -> None:
    """Rows that reach the ledger after their own cutoff (a spill journal replayed after a
    long outage) are not in what aged since the last run; once a day a run reads every old
    row again."""
    now = [NOW]
    purge = RetentionPurge(config(**OVERLAPPING), ledger, None, clock=lambda: now[0])
    await purge.run_once()
    await ledger.write_batch([aged(1, "acme", "faq", 40)])
    now[0] += INTERVAL
    assert (await purge.run_once()).total == 0
    now[0] += DAY_S - INTERVAL
    assert (await purge.run_once()).deleted == {("acme", "faq"): 1}


async def test_a_run_reads_the_started_at_index_never_the_whole_ledger(tmp_path: Path) -> None:
    """Seen: each run began with ``SELECT DISTINCT tenant, task FROM requests``, a scan of the
    whole table (250 ms on 800,000 rows, ``bench/retention.py``) that held the ledger's thread
    so the writer's batches waited and spilled, and each pair's deletes searched the
    (task, release, started_at) index by task alone, reading every row of the task. Every
    statement a run makes now reads the ``started_at`` index or the primary key."""
    path = tmp_path / "ledger.db"
    ledger = SQLiteStore(path)
    await ledger.open()
    statements: list[str] = []
    try:
        ages = (1, 29, 31, 89, 91, 179, 181, 364, 366, 1000)
        await ledger.write_batch([aged(i, "acme", "faq", age) for i, age in enumerate(ages)])
        await ledger._db.run(lambda conn: conn.set_trace_callback(statements.append))
        now = [NOW]
        purge = RetentionPurge(config(**{**OVERLAPPING, "batch_size": 3}), ledger, None, clock=lambda: now[0])
        assert (await purge.run_once()).total == 8
        now[0] += INTERVAL
        await purge.run_once()
        await ledger._db.run(lambda conn: conn.set_trace_callback(None))
    finally:
        await ledger.aclose()
    reads = [sql for sql in statements if sql.lstrip().upper().startswith(("SELECT", "DELETE"))]
    assert len(reads) >= 6
    # A batch after the first searches from the last row's time, not from the walk's start
    # again (seen: every batch of a full walk read the index from the oldest row).
    going_on = [re.search(r"started_at >= (\S+) .*\(started_at, rowid\) > \((\S+), ", sql) for sql in reads]
    assert [m[1] for m in going_on if m] == [m[2] for m in going_on if m] != []
    db = sqlite3.connect(path)
    try:
        for sql in reads:
            plan = [str(r[-1]) for r in db.execute("EXPLAIN QUERY PLAN " + sql.replace("-Inf", "-9e999"))]
            on_requests = [step for step in plan if " requests" in step]
            assert on_requests, (sql, plan)
            for step in on_requests:
                assert "requests_started_at" in step or "sqlite_autoindex_requests" in step, (sql, plan)
    finally:
        db.close()


# -- turnout retention show ----------------------------------------------------------------


def write(tmp_path: Path, cfg: Config) -> Path:
    path = tmp_path / "turnout.yaml"
    raw = cfg.model_dump(mode="json", exclude_defaults=True)
    path.write_text(yaml.safe_dump(raw))
    return path


def test_show_json_on_overlapping_rules(tmp_path: Path) -> None:
    path = write(tmp_path, config(**OVERLAPPING))
    result = CliRunner().invoke(main, ["retention", "show", "--format", "json", "--config", str(path)])
    assert result.exit_code == 0, result.output
    lines = json.loads(result.output)
    by = {(x["tenant"], x["task"], x["data_class"]): x for x in lines}
    assert set(by) == {
        ("acme", "faq", "public"),
        ("acme", "faq", "internal"),
        ("acme", "support", "public"),
        ("acme", "support", "internal"),
        ("globex", "faq", "public"),
        ("globex", "support", "public"),
    }
    acme_faq = by[("acme", "faq", "public")]
    assert (acme_faq["ledger"]["days"], acme_faq["ledger"]["rule"]) == (30, "tenant+task")
    assert (acme_faq["text"]["what"], acme_faq["text"]["days"], acme_faq["text"]["rule"]) == (
        "redacted text",
        7,
        "tenant",
    )
    assert (acme_faq["cache"]["seconds"], acme_faq["cache"]["rule"]) == (600, "task")
    assert by[("acme", "faq", "internal")]["cache"]["kept"] is False  # the task caches public only
    globex = by[("globex", "support", "public")]
    assert (globex["ledger"]["days"], globex["ledger"]["rule"]) == (365, "default")
    assert (globex["text"]["days"], globex["text"]["rule"]) == (14, "capture.ttl_days")
    assert globex["cache"]["kept"] is False and globex["review"]["kept"] is False


def test_show_table_filtered(tmp_path: Path) -> None:
    path = write(tmp_path, config(**OVERLAPPING))
    result = CliRunner().invoke(main, ["retention", "show", "--tenant", "acme", "--task", "faq", "-c", str(path)])
    assert result.exit_code == 0, result.output
    table, footer = result.output.strip().split("\n\n")
    header, *rows = table.splitlines()
    assert header.split()[:3] == ["TENANT", "TASK", "CLASS"]
    assert len(rows) == 2
    assert "30 d [tenant+task]" in rows[0] and "redacted text: 7 d [tenant]" in rows[0]
    assert "600 s in gateway memory [task]" in rows[0]
    # Seen: the table named where the cache keeps answers, but nowhere the ledger or the text.
    ledger, text = config(**OVERLAPPING).store.path, str(Path(config(**OVERLAPPING).store.path).parent / "capture.db")
    assert footer == f"where: ledger: {ledger}; text: {text}"


def test_show_refuses_an_unknown_tenant(tmp_path: Path) -> None:
    path = write(tmp_path, config(**OVERLAPPING))
    result = CliRunner().invoke(main, ["retention", "show", "--tenant", "nobody", "-c", str(path)])
    assert result.exit_code != 0 and "nobody" in result.output


# -- capture_days and the gateway's job --------------------------------------------------------


async def test_capture_days_per_tenant_and_task_set_each_capture_expiry(tmp_path: Path) -> None:
    rules = Rules(config(**OVERLAPPING))
    store = CaptureStore(tmp_path / "capture.db")
    await store.open()
    redactor = Redactor(b"k" * 32)
    w = CaptureWriter(
        store, redactor, ttl_days=14, ttl_days_for=lambda t, k: rules.get(t, k).capture_days, clock=lambda: NOW
    )
    w.start()
    decision = Decision("redacted", None, True)
    w.submit("req-a", "acme", "faq", decision, "hello", "hi", at=NOW)
    w.submit("req-g", "globex", "faq", decision, "hello", "hi", at=NOW)
    await w.aclose()
    expiry = {r.request_id: (r.expires_at - NOW) / DAY_S for r in await store.captures()}
    await store.aclose()
    assert expiry == {"req-a": pytest.approx(7), "req-g": pytest.approx(14)}


async def test_the_gateway_runs_the_purge_at_start(make_app: AppFactory, tmp_path: Path) -> None:
    raw = config(**OVERLAPPING).model_dump(mode="json", exclude_defaults=True)
    raw["store"] = {"kind": "sqlite", "path": str(tmp_path / "ledger.db"), "flush_interval_ms": 10}
    seed = SQLiteStore(tmp_path / "ledger.db")
    await seed.open()
    await seed.write_batch([make_row(1, tenant="acme", task="faq", started_at=time.time() - 40 * DAY_S)])
    await seed.aclose()
    app = await make_app(raw)
    audit = CaptureStore(tmp_path / "capture.db")
    await audit.open()
    try:
        for _ in range(400):
            if any(e.detail.startswith("retention run") for e in await audit.audit()):
                break
            await asyncio.sleep(0.005)
        details = [e.detail for e in await audit.audit()]
    finally:
        await audit.aclose()
    assert "retention: deleted 1 ledger rows past ledger_days" in details
    assert app.runtime.store is not None and await app.runtime.store.count() == 0


async def test_review_items_past_review_days_are_deleted_sampled_ones_by_the_shortest_rule(tmp_path: Path) -> None:
    rules = {
        "batch_size": 2,
        "rules": [{"tenant": "acme", "review_days": 10}, {"tenant": "globex", "task": "faq", "review_days": 3}],
    }
    at = [NOW]
    queue = ReviewQueue(str(tmp_path / "releases.db"), redactor=Redactor(b"k" * 32), clock=lambda: at[0])
    await queue.open()
    ledger = MemoryStore()
    await ledger.open()
    audit = CaptureStore(tmp_path / "capture.db")
    await audit.open()
    try:
        escalated = [("acme", "faq", 11), ("acme", "faq", 9), ("globex", "faq", 4), ("globex", "faq", 2)]
        for i, (tenant, task, age) in enumerate([*escalated, ("globex", "support", 400)]):
            at[0] = NOW - age * DAY_S
            await queue.enqueue_ticket(task, None, f"esc-{i}", tenant, "answer text")
        for i, (task, age) in enumerate([("faq", 5), ("faq", 1), ("support", 50)]):
            at[0] = NOW - age * DAY_S
            await queue.maybe_enqueue(task, None, f"smp-{i}", "sampled text", 1.0, random.Random(1))
        purge = RetentionPurge(config(**rules), ledger, audit, reviews=queue, clock=lambda: NOW)
        run = await purge.run_once()
        # acme: 10 days; globex/faq: 3; sampled (no tenant) faq items: the shortest for faq, 3;
        # support: acme's 10 (globex keeps support items for ever, acme does not).
        assert run.reviews == {("acme", "faq"): 1, ("globex", "faq"): 1, (None, "faq"): 1, (None, "support"): 1}
        left = sorted(item.request_id for item in await queue.list(limit=100))
        assert left == ["esc-1", "esc-3", "esc-4", "smp-1"]
        details = [e.detail for e in await audit.audit()]
        assert details[-1].endswith("and 4 review items")
    finally:
        await queue.aclose()
        await audit.aclose()
        await ledger.aclose()


async def test_shadow_pairs_follow_ledger_days(tmp_path: Path) -> None:
    from tests.test_shadow import pair
    from turnout.releases.shadowstore import ShadowStore

    rules = {"batch_size": 2, "rules": [{"tenant": "acme", "ledger_days": 10}, {"task": "faq", "ledger_days": 3}]}
    ledger = MemoryStore()
    await ledger.open()
    audit = CaptureStore(tmp_path / "capture.db")
    await audit.open()
    try:
        async with ShadowStore(tmp_path / "shadow.db") as shadows:
            ages = [("acme", "support", 11), ("acme", "support", 9), ("globex", "faq", 4), ("globex", "faq", 2)]
            ages += [("globex", "support", 400)] * 3
            await shadows.write_pairs(
                [pair(i, tenant=tenant, task=task, at=NOW - age * DAY_S) for i, (tenant, task, age) in enumerate(ages)]
            )
            run = await RetentionPurge(config(**rules), ledger, audit, shadows=shadows, clock=lambda: NOW).run_once()
            # acme: 10 days; faq: 3 (globex's only rule); globex/support: kept for ever
            assert run.shadow == {("acme", "support"): 1, ("globex", "faq"): 1}
            assert len(await shadows.pairs("support")) == 4 and len(await shadows.pairs("faq")) == 1
        details = [e.detail for e in await audit.audit()]
        assert "retention: deleted 1 shadow pairs past ledger_days" in details
        assert details[-1].endswith("and 2 shadow pairs")
    finally:
        await audit.aclose()
        await ledger.aclose()


def test_show_names_the_task_ttl_where_a_rules_cap_is_longer(tmp_path: Path) -> None:
    """Seen: ``{ledger_days: 365, cache_ttl_s: 7200}`` over a task's ``ttl_s: 3600`` showed the
    3600 s as the default rule's; the cap does not apply, the task's own setting does."""
    longer = {"rules": [{"ledger_days": 365, "cache_ttl_s": 7200}]}
    path = write(tmp_path, config(**longer))
    result = CliRunner().invoke(main, ["retention", "show", "--format", "json", "--config", str(path)])
    assert result.exit_code == 0, result.output
    faq = {(x["tenant"], x["task"], x["data_class"]): x for x in json.loads(result.output)}[("acme", "faq", "public")]
    assert (faq["cache"]["seconds"], faq["cache"]["rule"]) == (3600, "tasks.faq.cache.ttl_s")
    shorter = {"rules": [{"ledger_days": 365, "cache_ttl_s": 60}]}
    path = write(tmp_path, config(**shorter))
    result = CliRunner().invoke(main, ["retention", "show", "--format", "json", "--config", str(path)])
    faq = {(x["tenant"], x["task"], x["data_class"]): x for x in json.loads(result.output)}[("acme", "faq", "public")]
    assert (faq["cache"]["seconds"], faq["cache"]["rule"]) == (60, "default")


def test_show_takes_the_anonymous_tenant_where_no_tenants_are_configured(tmp_path: Path) -> None:
    """Its table names the tenant ``anonymous``; ``--tenant anonymous`` was refused."""
    raw = config().model_dump(mode="json", exclude_defaults=True)
    raw.pop("tenants", None)
    path = tmp_path / "turnout.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(main, ["retention", "show", "--tenant", "anonymous", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1].startswith("anonymous")
    refused = CliRunner().invoke(main, ["retention", "show", "--tenant", "acme", "--config", str(path)])
    assert refused.exit_code != 0 and "no tenant 'acme'" in refused.output


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_show_says_where_text_and_review_items_are_kept(tmp_path: Path, kind: str) -> None:
    """Seen: with ``state.kind: postgres`` the page said captured text was in ``capture.db`` and
    review items in ``releases.store_path``'s file, where the fleet's PostgreSQL tables hold
    them; with SQLite it named no directory for the text, and for the ledger only "sqlite
    ledger", where every other record named its file."""
    raw = config(**OVERLAPPING).model_dump(mode="json", exclude_defaults=True)
    raw["tasks"]["faq"]["review_rate"] = 0.1
    raw["store"] = {"kind": "sqlite", "path": str(tmp_path / "data" / "ledger.db")}
    raw["releases"] = {"store_path": str(tmp_path / "data" / "releases.db")}
    if kind == "postgres":
        raw["store"] = {"kind": "postgres", "dsn": "postgresql://turnout@db:5432/turnout", "pg_schema": "fleet"}
        raw["state"] = {"kind": "postgres"}
    path = tmp_path / "turnout.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(main, ["retention", "show", "--format", "json", "--config", str(path)])
    assert result.exit_code == 0, result.output
    faq = {(x["tenant"], x["task"], x["data_class"]): x for x in json.loads(result.output)}[("acme", "faq", "public")]
    if kind == "postgres":
        assert (faq["ledger"]["where"], faq["text"]["where"], faq["review"]["where"]) == (
            "PostgreSQL, table requests",
            "PostgreSQL, table captures",
            "PostgreSQL, table review_items",
        )
    else:
        assert (faq["ledger"]["where"], faq["text"]["where"], faq["review"]["where"]) == (
            str(tmp_path / "data" / "ledger.db"),
            str(tmp_path / "data" / "capture.db"),
            str(tmp_path / "data" / "releases.db"),
        )


# -- one run per interval across the processes sharing the store -------------------------------


@pytest.fixture(params=KINDS)
async def shared(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Place, Place | Path]]:
    """Where two gateways' audit store and ledger are: one SQLite file each, or one PostgreSQL
    (the fleet's state and its ledger, each in a schema of its own)."""
    async with state_place(request.param, tmp_path / "capture.db") as place:
        if request.param == "sqlite":
            yield place, tmp_path / "ledger.db"
            return
        ledger_schema = unique_schema()
        try:
            yield place, PgPlace(POSTGRES_DSN, ledger_schema)
        finally:
            await drop_schema(ledger_schema)


def ledger_at(where: Place | Path) -> LedgerStore:
    return postgres_store(where.schema or "") if isinstance(where, PgPlace) else SQLiteStore(where)


async def test_of_two_gateways_ticking_at_once_one_runs_each_interval(shared: tuple[Place, Place | Path]) -> None:
    """Seen: every worker and replica ran the purge every interval, so the trail held a run per
    process and their deletes raced. Each tick is claimed in the audit store now: one runs."""
    audit_place, ledger_place = shared
    now = [NOW]
    stores = [ledger_at(ledger_place), ledger_at(ledger_place)]
    audits = [CaptureStore(audit_place), CaptureStore(audit_place)]
    for each in stores:
        await each.open()
    for audit in audits:
        await audit.open()
    try:
        await stores[0].write_batch([aged(i, "acme", "faq", 31 + i) for i in range(7)])
        rules = {"purge_interval_s": INTERVAL, **OVERLAPPING}
        a, b = (
            RetentionPurge(config(**rules), s, au, clock=lambda: now[0]) for s, au in zip(stores, audits, strict=True)
        )

        async def interval() -> list[str]:
            await asyncio.gather(a.tick(), b.tick())
            return [e.detail for e in await audits[1].audit() if e.detail.startswith("retention run")]

        assert await interval() == ["retention run: deleted 7 ledger rows of 1 tenant/task pairs"]
        assert sorted((a.runs, b.runs)) == [0, 1] and a.skipped + b.skipped == 1
        holder, other = (a, b) if a.runs else (b, a)
        details = [e.detail for e in await audits[0].audit()]
        assert details.count("retention: deleted 7 ledger rows past ledger_days") == 1

        # The next interval: the holder, whose claim is still good, runs again; the other skips.
        await stores[1].write_batch([aged(100, "acme", "faq", 30 - INTERVAL / 2 / DAY_S)])  # 30 days old by then
        now[0] += INTERVAL
        assert len(await interval()) == 2
        assert (holder.runs, other.runs, other.skipped) == (2, 0, 2)
        assert await stores[0].count() == 0

        # A holder that stops ticking (it died mid-run) holds the job up for 1.5 intervals at most.
        now[0] += INTERVAL
        await other.tick()
        assert other.runs == 0
        now[0] += INTERVAL / 2
        await other.tick()
        assert other.runs == 1

        # One that stops cleanly hands the claim back: the next to tick runs at once.
        assert other.claim is not None and holder.claim is not None
        await other.aclose()
        await holder.tick()
        assert holder.runs == 3
    finally:
        for each in stores:
            await each.aclose()
        for audit in audits:
            await audit.aclose()


async def test_a_long_run_keeps_its_claim(tmp_path: Path) -> None:
    """A run longer than a quarter interval renews its claim between batches, so a second
    process ticking meanwhile does not start another run beside it."""
    now = [NOW]
    ledger = SQLiteStore(tmp_path / "ledger.db")
    audits = [CaptureStore(tmp_path / "capture.db"), CaptureStore(tmp_path / "capture.db")]
    await ledger.open()
    for audit in audits:
        await audit.open()
    try:
        await ledger.write_batch([aged(i, "acme", "faq", 31) for i in range(10)])
        rules = {**OVERLAPPING, "purge_interval_s": INTERVAL, "batch_size": 2}
        slow = SlowLedger(ledger, now, INTERVAL / 2)  # each batch takes half an interval
        a = RetentionPurge(config(**rules), slow, audits[0], clock=lambda: now[0])
        b = RetentionPurge(config(**rules), ledger, audits[1], clock=lambda: now[0])
        await a.tick()  # 6 batches read: three intervals long
        assert a.runs == 1 and now[0] == NOW + 3 * INTERVAL
        await b.tick()  # 3 intervals after a claimed, but a renewed its claim as it went
        assert (b.runs, b.skipped) == (0, 1)
    finally:
        await ledger.aclose()
        for audit in audits:
            await audit.aclose()


class SlowLedger:
    """A ledger whose reads take ``step_s`` of the test's clock each."""

    def __init__(self, inner: LedgerStore, now: list[float], step_s: float) -> None:
        self.inner, self.now, self.step_s = inner, now, step_s

    async def aged_rows(
        self, since: float, before: float, limit: int, after: tuple[float, Order] | None = None
    ) -> list[AgedRow]:
        self.now[0] += self.step_s
        return await self.inner.aged_rows(since, before, limit, after)

    async def delete_rows(self, request_ids: Sequence[str]) -> dict[tuple[str, str], int]:
        return await self.inner.delete_rows(request_ids)
