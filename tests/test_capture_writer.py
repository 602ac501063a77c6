"""CaptureWriter and Capture: text is redacted before it reaches SQLite (the raw sentinels never
appear in the file's bytes), full mode scrubs secrets but keeps the rest, each use of a grant is
audited, the queue is bounded, and aclose drains everything."""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_capture_policy import eventually
from turnout.config import CaptureConfig
from turnout.privacy.capture import (
    METADATA,
    Capture,
    CaptureStore,
    CaptureStoreError,
    CaptureWriter,
    Decision,
    SecretsOnly,
    TextRedactor,
)
from turnout.privacy.redact import Redactor

T0 = 1_800_000_000.0
LONG = 60.0

EMAIL = "sentinel.person@example.com"
CARD = "4111 1111 1111 1111"
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
PASSWORD = "Tr0ub4dor-3-xyzzy"
SENTINELS = (EMAIL, CARD, AWS_KEY, PASSWORD)
PROMPT = f"I am {EMAIL}, card {CARD}. Deploy with {AWS_KEY} and password={PASSWORD} please."
COMPLETION = f"Done, {EMAIL}; never share password={PASSWORD}."

REDACTED = Decision("redacted", None, True)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class StandIn:
    text: str


class Sentinels:
    """A stand-in redactor that knows exactly the sentinels, so these tests do not depend on
    the engine's detection quality (tests/test_redact* measure that)."""

    def __init__(self) -> None:
        self.calls = 0

    def redact(self, text: str) -> StandIn:
        self.calls += 1
        for kind, value in zip(("EMAIL", "CARD", "AWS", "PASSWORD"), SENTINELS, strict=True):
            text = text.replace(value, f"[{kind}]")
        return StandIn(text)


class Exploding:
    def redact(self, text: str) -> StandIn:
        raise RuntimeError(f"cannot redact {text}")  # the message holds the text: it must not be logged


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CaptureStore]:
    s = CaptureStore(tmp_path / "capture.db")
    await s.open()
    yield s
    await s.aclose()


def file_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.glob("capture.db*")))


def writer(store: CaptureStore, redactor: TextRedactor | None = None, **kw: object) -> CaptureWriter:
    kw = {"flush_interval_s": LONG, "clock": Clock(), **kw}
    return CaptureWriter(store, redactor or Sentinels(), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("real", [False, True], ids=["stand-in", "turnout.privacy.redact"])
async def test_redacted_mode_never_writes_raw_text(store: CaptureStore, tmp_path: Path, real: bool) -> None:
    redactor: TextRedactor = Redactor(b"k" * 32) if real else Sentinels()
    w = writer(store, redactor)
    w.start()
    for i in range(20):
        assert w.submit(f"req-{i}", "acme", "support", REDACTED, PROMPT, COMPLETION)
    await w.aclose()
    rows = await store.captures()
    assert len(rows) == 20 and w.written == 20
    for r in rows:
        assert r.mode == "redacted" and r.grant_id is None
        for value in SENTINELS:
            assert value not in r.prompt_text and value not in (r.completion_text or "")
    await store.aclose()
    raw = file_bytes(tmp_path)
    assert b"Deploy with" in raw  # the text is there ...
    for value in SENTINELS:
        assert value.encode() not in raw  # ... its secrets and PII are not


async def test_full_mode_scrubs_secrets_keeps_pii_and_audits_each_use(store: CaptureStore, tmp_path: Path) -> None:
    grant = await store.create_grant("acme", "support", T0 - 10, T0 + 600, "ticket", "alice")
    real = Redactor(b"k" * 32)
    w = writer(store, real, secrets=SecretsOnly(real))
    w.start()
    full = Decision("full", grant.id, True)
    w.submit("req-1", "acme", "support", full, PROMPT, COMPLETION)
    w.submit("req-2", "acme", "support", full, PROMPT, None)
    await w.aclose()
    rows = await store.captures()
    assert [(r.mode, r.grant_id, r.completion_text is None) for r in rows] == [
        ("full", grant.id, False),
        ("full", grant.id, True),
    ]
    assert EMAIL in rows[0].prompt_text  # PII kept under a grant
    for secret in (AWS_KEY, PASSWORD, CARD):
        assert secret not in rows[0].prompt_text
    used = [(e.request_id, e.grant_id) for e in await store.audit() if e.event == "used"]
    assert used == [("req-1", grant.id), ("req-2", grant.id)]
    await store.aclose()
    raw = file_bytes(tmp_path)
    for secret in (AWS_KEY, PASSWORD, CARD):
        assert secret.encode() not in raw


async def test_full_mode_without_a_secrets_redactor_redacts_everything(store: CaptureStore) -> None:
    grant = await store.create_grant("acme", "support", T0, T0 + 600, "ticket", "alice")
    w = writer(store)
    w.submit("req-1", "acme", "support", Decision("full", grant.id, True), PROMPT, None)
    await w.aclose()
    [r] = await store.captures()
    assert r.prompt_text == "I am [EMAIL], card [CARD]. Deploy with [AWS] and password=[PASSWORD] please."


async def test_decisions_that_keep_nothing_are_ignored(store: CaptureStore) -> None:
    redactor = Sentinels()
    w = writer(store, redactor)
    assert not w.submit("req-1", "acme", "support", METADATA, PROMPT, None)
    assert not w.submit("req-2", "acme", "support", Decision("redacted", None, False), PROMPT, None)
    await w.aclose()
    assert await store.captures() == [] and redactor.calls == 0
    assert (w.written, w.dropped, w.failed) == (0, 0, 0)


async def test_retention_comes_from_ttl_days(store: CaptureStore) -> None:
    w = writer(store, ttl_days=2.5, clock=Clock(T0))
    w.submit("req-1", "acme", "support", REDACTED, "hello", "hi")
    w.submit("req-2", "acme", "support", REDACTED, "hello", "hi", at=T0 + 5)
    await w.aclose()
    assert [(r.captured_at, r.expires_at) for r in await store.captures()] == [
        (T0, T0 + 2.5 * 86_400),
        (T0 + 5, T0 + 5 + 2.5 * 86_400),
    ]


async def test_submit_never_awaits_and_writes_off_the_request_path(store: CaptureStore) -> None:
    redactor = Sentinels()
    w = writer(store, redactor, batch_size=1000)
    assert not inspect.iscoroutinefunction(w.submit)
    w.start()
    w.submit("req-1", "acme", "support", REDACTED, PROMPT, None)
    assert redactor.calls == 0 and w.queued == 1  # nothing redacted or written yet
    await asyncio.sleep(0.05)
    assert await store.captures() == []  # the flush interval has not passed
    await w.aclose()
    assert len(await store.captures()) == 1 and w.queued == 0


async def test_a_full_batch_is_written_without_waiting_for_the_interval(store: CaptureStore) -> None:
    w = writer(store, batch_size=4)
    w.start()
    for i in range(4):
        w.submit(f"req-{i}", "acme", "support", REDACTED, "p", "c")
    await eventually(lambda: w.written >= 4)
    await w.aclose()


async def test_bounded_queue_drops_count_and_log(store: CaptureStore, caplog: pytest.LogCaptureFixture) -> None:
    w = writer(store, queue_size=3, queue_chars=1000)
    results = [w.submit(f"req-{i}", "acme", "support", REDACTED, "p", "c") for i in range(5)]
    assert results == [True, True, True, False, False] and w.dropped == 2
    assert not w.submit("big", "acme", "support", REDACTED, "x" * 2000, None)  # over queue_chars
    assert w.dropped == 3
    assert sum("queue is full" in r.message for r in caplog.records) == 1  # rate-limited
    await w.aclose()
    assert w.written == 3
    assert not w.submit("late", "acme", "support", REDACTED, "p", None)  # closed
    assert w.dropped == 4


async def test_aclose_drains_everything(store: CaptureStore) -> None:
    w = writer(store, batch_size=7)
    w.start()
    for i in range(100):
        w.submit(f"req-{i:03d}", "acme", "support", REDACTED, PROMPT, COMPLETION)
    await w.aclose()
    assert w.written == 100 and w.queued == 0
    assert len(await store.captures()) == 100


async def test_aclose_drains_even_if_never_started(store: CaptureStore) -> None:
    w = writer(store)
    w.submit("req-1", "acme", "support", REDACTED, "p", None)
    await w.aclose()
    await w.aclose()  # twice is fine
    assert len(await store.captures()) == 1


async def test_a_redactor_failure_drops_the_record_never_the_redaction(
    store: CaptureStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    w = writer(store, Exploding())
    w.submit("req-1", "acme", "support", REDACTED, PROMPT, None)
    await w.aclose()
    assert (w.written, w.failed, w.queued) == (0, 1, 0)
    assert await store.captures() == []
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "req-1" in logged and "RuntimeError" in logged
    for value in SENTINELS:
        assert value not in logged


async def test_a_store_failure_is_counted_and_the_loop_goes_on(store: CaptureStore) -> None:
    w = writer(store)
    await store.aclose()
    w.submit("req-1", "acme", "support", REDACTED, PROMPT, None)
    await w.aclose()
    assert (w.written, w.failed) == (0, 1)


async def test_capture_end_to_end(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The facade the gateway holds: decide, submit, and a shutdown that drains and closes."""
    caplog.set_level(logging.INFO)
    cfg = CaptureConfig.model_validate(
        {"rules": [{"task": "support", "mode": "full"}, {"task": "faq", "mode": "redacted"}], "ttl_days": 1}
    )
    real = Redactor(b"k" * 32)
    clock = Clock()
    cap = Capture(cfg, tmp_path / "capture.db", real, secrets=SecretsOnly(real), rng=random.Random(1), clock=clock)
    await cap.start()
    grant = await cap.store.create_grant("acme", "support", T0, T0 + 60, "ticket", "alice")
    await cap.policy.refresh()
    for request_id, task in (("r1", "support"), ("r2", "faq"), ("r3", "other")):
        decision = cap.decide("acme", task)
        cap.submit(request_id, "acme", task, decision, PROMPT, COMPLETION)
    await cap.aclose()
    check = CaptureStore(tmp_path / "capture.db")
    await check.open()
    try:
        rows = {r.request_id: r for r in await check.captures()}
        assert set(rows) == {"r1", "r2"} and rows["r1"].grant_id == grant.id and rows["r2"].mode == "redacted"
        events = [e.event for e in await check.audit()]
        assert sorted(events) == ["granted", "purged", "used"]  # the purge job ran once, at start
    finally:
        await check.aclose()
    assert not re.search("|".join(map(re.escape, SENTINELS)), caplog.text)


async def test_a_capture_start_that_fails_half_way_closes_what_it_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = CaptureConfig.model_validate({"rules": [{"task": "support", "mode": "full"}]})
    cap = Capture(cfg, tmp_path / "capture.db", Sentinels())

    def broken() -> None:
        raise RuntimeError("the writer cannot start")

    monkeypatch.setattr(cap.writer, "start", broken)  # after the store, the grant refresher and the purge job
    with pytest.raises(RuntimeError, match="cannot start"):
        await cap.start()
    assert [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("turnout-capture")] == []
    with pytest.raises(CaptureStoreError):
        await cap.store.captures()  # closed
    await cap.aclose()  # and closing again is harmless
