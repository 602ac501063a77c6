"""Logs that tell what happened: breakers opening and closing, fallbacks, 5xx answers, the
ledger spilling, the access log, the start-up summary, and the two formats (text, JSON lines),
each line redacted. Metadata only: no prompt text and no secret in any line."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import turnout.serving.server
from tests.asgi import request
from tests.conftest import AppFactory
from tests.fakes.scripted import ScriptedProvider, Step
from tests.test_ledger_journal import Flaky, row, writer_for
from tests.test_ledger_journal import flaky as flaky  # the fixture
from tests.test_ledger_writer import eventually
from turnout.cli.main import main
from turnout.config import BreakerConfig, OpenAITarget, validate
from turnout.errors import UpstreamConnectError, UpstreamStatusError
from turnout.ledger.record import AttemptRecord, LedgerRow
from turnout.observe import logs
from turnout.observe.requestlog import WARN_BURST, RequestLog
from turnout.privacy.redact import RedactingFilter, Redactor
from turnout.providers.openai import OpenAIProvider
from turnout.routing.breaker import FLAP_BURST, FLAP_EVERY_S, Breaker, State
from turnout.serving import summary
from turnout.serving.app import App
from turnout.serving.runtime import Runtime

KEY = "sk-acme-0123456789"
AUTH = {"authorization": f"Bearer {KEY}"}
SENTINEL = "SENTINEL-7f3a-prompt-text-never-logged"
API_KEY = "sk-proj-Zq8XyLmN4pQrStUvWx2Yz0123456789abcdef"
URL_PASSWORD = "hunter2-url-password"
PG_PASSWORD = "pg-s3cret-password"
REDIS_PASSWORD = "redis-s3cret-password"


def config(**server: Any) -> dict[str, Any]:
    return {
        "server": server,
        "targets": {
            "primary": {
                "provider": "openai",
                "base_url": "http://primary.invalid/v1",
                "model": "m1",
                "retry": {"attempts": 1},
                "breaker": {"failures": 2, "cooldown_s": 60},
            },
            "secondary": {"provider": "openai", "base_url": "http://secondary.invalid/v1", "model": "m2"},
        },
        "tenants": {"acme": {"keys": [KEY]}},
        "tasks": {"chat": {"route": ["primary", "secondary"]}},
    }


async def chat(app: App, text: str = "hi", **body: Any) -> Any:
    payload = {"model": "chat", "messages": [{"role": "user", "content": text}], **body}
    return await request(app, "POST", "/v1/chat/completions", payload, AUTH)


def records(caplog: pytest.LogCaptureFixture, logger: str, level: int = logging.WARNING) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and r.levelno == level]


def fields(record: logging.LogRecord) -> dict[str, Any]:
    found = getattr(record, "fields", None)
    assert isinstance(found, dict)
    return found


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- breakers ------------------------------------------------------------------------------


def trip(breaker: Breaker) -> None:
    for _ in range(breaker.cfg.failures):
        assert breaker.allow()
        breaker.failure()


def test_a_breaker_says_when_it_opens_and_when_it_closes(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    breaker = Breaker(BreakerConfig(failures=3, cooldown_s=10), clock, target="gpu-pool", replica="r1")
    with caplog.at_level(logging.WARNING, "turnout.breaker"):
        trip(breaker)
        clock.now += 10
        assert breaker.allow()  # the probe
        breaker.success()
    opened, closed = records(caplog, "turnout.breaker")
    assert (
        opened.getMessage() == "breaker gpu-pool replica r1 opened after 3 consecutive failures; calls refused for 10s"
    )
    assert fields(opened) == {"breaker": "gpu-pool replica r1", "target": "gpu-pool", "replica": "r1", "state": "open"}
    assert closed.getMessage() == "breaker gpu-pool replica r1 closed: a probe succeeded after 10s open"
    assert fields(closed)["state"] == "closed"


def test_a_failed_probe_says_the_breaker_stays_open(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    breaker = Breaker(BreakerConfig(failures=1, cooldown_s=5), clock, target="t")
    with caplog.at_level(logging.WARNING, "turnout.breaker"):
        trip(breaker)
        clock.now += 5
        assert breaker.allow()
        breaker.failure()
    assert [r.getMessage() for r in records(caplog, "turnout.breaker")] == [
        "breaker t opened after 1 consecutive failures; calls refused for 5s",
        "breaker t the probe failed; open for another 5s",
    ]


def test_a_flapping_breaker_is_throttled_and_the_log_catches_up(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    breaker = Breaker(BreakerConfig(failures=1, cooldown_s=1), clock, target="flappy")
    with caplog.at_level(logging.WARNING, "turnout.breaker"):
        for _ in range(20):  # 20 opens and 20 closes within a minute
            trip(breaker)
            clock.now += 1
            assert breaker.allow()
            breaker.success()
        trip(breaker)  # it ends open: the line saying so is held back
        assert breaker.state is State.OPEN
        held = len(records(caplog, "turnout.breaker"))
        clock.now += FLAP_EVERY_S  # a quiet minute, then the next call
        breaker.allow()
    lines = [r.getMessage() for r in records(caplog, "turnout.breaker")]
    assert held == FLAP_BURST
    assert len(lines) == FLAP_BURST + 1
    assert lines[-1].startswith("breaker flappy is open (")
    assert "not logged: flapping" in lines[-1]


def test_each_replica_breaker_is_named_by_target_and_replica() -> None:
    target = OpenAITarget(provider="openai", base_urls=["http://a.invalid/v1", "http://b.invalid/v1"], model="m")
    provider = OpenAIProvider("pool", target)
    assert [r.breaker.name for r in provider.replicas] == ["pool replica r0", "pool replica r1"]


async def test_a_target_breaker_opening_in_the_gateway_names_the_target(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    primary = ScriptedProvider("primary", Step(UpstreamConnectError("refused")))
    app = await make_app(config(), {"primary": primary, "secondary": ScriptedProvider("secondary")})
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert (await chat(app)).status == 200
    [opened] = records(caplog, "turnout.breaker")
    assert opened.getMessage().startswith("breaker primary opened after 2 consecutive failures")


# --- fallbacks and 5xx ---------------------------------------------------------------------


async def test_a_fallback_is_a_warning_naming_task_targets_and_error_class(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    primary = ScriptedProvider("primary", Step(UpstreamStatusError(503, f"upstream echoed {SENTINEL}")))
    app = await make_app(config(), {"primary": primary, "secondary": ScriptedProvider("secondary")})
    with caplog.at_level(logging.INFO):
        resp = await chat(app, SENTINEL)
    assert resp.status == 200
    [line] = records(caplog, "turnout.requests")
    rid = resp.headers["x-turnout-request-id"]
    assert (
        line.getMessage()
        == f"fallback: request {rid} (task chat) went from primary to secondary after http_503; answered"
    )
    assert fields(line) == {
        "request_id": rid,
        "task": "chat",
        "from_target": "primary",
        "to_target": "secondary",
        "error_class": "http_503",
        "status": 200,
    }
    assert SENTINEL not in caplog.text


async def test_a_5xx_answer_is_a_warning_with_request_id_task_target_status_and_class(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    down = Step(UpstreamConnectError(f"refused {SENTINEL}"))
    fakes = {"primary": ScriptedProvider("primary", down), "secondary": ScriptedProvider("secondary", down)}
    app = await make_app(config(), fakes)
    with caplog.at_level(logging.INFO):
        resp = await chat(app, SENTINEL)
    assert resp.status == 502
    rid = resp.headers["x-turnout-request-id"]
    fallback, error = records(caplog, "turnout.requests")
    assert fallback.getMessage().endswith("went from primary to secondary after connect; failed too")
    assert error.getMessage() == f"request {rid} answered 502 (all_targets_failed): task chat, target secondary"
    assert fields(error) == {
        "request_id": rid,
        "task": "chat",
        "target": "secondary",
        "replica": None,
        "status": 502,
        "error_class": "all_targets_failed",
    }
    assert SENTINEL not in caplog.text


async def test_no_warning_for_a_plain_answer_or_a_client_error(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = await make_app(config(), {"primary": ScriptedProvider("primary"), "secondary": ScriptedProvider("secondary")})
    with caplog.at_level(logging.INFO):
        assert (await chat(app)).status == 200
        assert (await request(app, "POST", "/v1/chat/completions", {"model": "chat"}, AUTH)).status == 400
    assert records(caplog, "turnout.requests") == []
    assert records(caplog, "turnout.access", logging.INFO) == []  # the access log is off by default


def failed_row(n: int, task: str = "chat") -> LedgerRow:
    attempts = [AttemptRecord("a", "r0", "timeout", 1.0), AttemptRecord("b", "r0", "connect", 1.0)]
    return LedgerRow(f"req-{n}", 0.0, "acme", task, "public", False, status=502, attempts=attempts)


def test_warnings_in_an_outage_are_throttled_and_say_how_many_were_held(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = RequestLog(clock=clock)
    with caplog.at_level(logging.WARNING, "turnout.requests"):
        for n in range(100):
            log.observe(failed_row(n))
        log.observe(failed_row(100, task="other"))  # another task has its own allowance
        clock.now += 60
        log.observe(failed_row(101))
    lines = [r.getMessage() for r in records(caplog, "turnout.requests")]
    chat_5xx = [m for m in lines if "answered 502" in m and "task chat" in m]
    assert len(chat_5xx) == WARN_BURST + 1
    assert chat_5xx[-1].endswith(f"({100 - WARN_BURST} similar lines not logged)")
    assert any("task other" in m for m in lines)


def test_a_client_chosen_task_name_cannot_forge_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    log = RequestLog(access_log=True)
    forged = "x\n2026-01-01 00:00:00,000 ERROR turnout: forged " + "y" * 500
    with caplog.at_level(logging.INFO):
        log.observe(LedgerRow("req-1", 0.0, "acme", forged, "", False, status=404))
    [line] = records(caplog, "turnout.access", logging.INFO)
    assert "\n" not in line.getMessage()
    assert len(line.getMessage()) < 300
    assert len(fields(line)["task"]) <= 101


# --- the access log ------------------------------------------------------------------------


async def test_the_access_log_is_one_line_of_metadata_per_request(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = await make_app(
        config(access_log=True), {"primary": ScriptedProvider("primary"), "secondary": ScriptedProvider("secondary")}
    )
    with caplog.at_level(logging.INFO):
        ok = await chat(app, SENTINEL, user=f"{SENTINEL}@example.com")
        unknown = await request(
            app, "POST", "/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": SENTINEL}]}
        )
    assert (ok.status, unknown.status) == (200, 401)
    first, second = records(caplog, "turnout.access", logging.INFO)
    rid = ok.headers["x-turnout-request-id"]
    got = fields(first)
    assert got.pop("latency_ms") >= 0
    assert got == {
        "request_id": rid,
        "task": "chat",
        "tenant": "acme",
        "target": "primary",
        "status": 200,
        "error_class": None,
    }
    message = first.getMessage()
    assert message.startswith(f"request_id={rid} task=chat tenant=acme target=primary status=200 latency_ms=")
    assert fields(second)["status"] == 401 and fields(second)["tenant"] is None
    assert "tenant=- target=- status=401" in second.getMessage()
    assert SENTINEL not in caplog.text
    assert all(SENTINEL not in str(fields(r)) for r in (first, second))


# --- formats and redaction -----------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger(logs.ACCESS).level
    flags = logging.logThreads, logging.logProcesses, logging.logMultiprocessing
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    logging.getLogger(logs.ACCESS).setLevel(saved[2])
    logging.logThreads, logging.logProcesses, logging.logMultiprocessing = flags


class Recorder(io.StringIO):
    """A stream that notes which threads wrote to it."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: set[str] = set()

    def write(self, text: str) -> int:
        self.writers.add(threading.current_thread().name)
        return super().write(text)


def configured(kind: str, access_log: bool = False) -> tuple[logs.Listener, Recorder]:
    stream = Recorder()
    redaction = RedactingFilter(Redactor(b"k" * 32), fields=kind == "json")
    return logs.configure("info", kind, redaction, access_log=access_log, stream=stream), stream  # type: ignore[arg-type]


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_parse_one_by_one_and_stay_redacted() -> None:
    listener, stream = configured("json")
    log = logging.getLogger("turnout.test")
    log.warning("upstream said %s", f"Authorization: Bearer {API_KEY}\nand more", extra={"fields": {"who": API_KEY}})
    try:
        raise ValueError(f"mail bob@example.com, key {API_KEY}")
    except ValueError:
        log.exception("it broke")
    logging.getLogger("turnout.requests").warning("plain", extra={"fields": {"request_id": "r1", "status": 502}})
    listener.stop()
    text = stream.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 3  # a newline in a message or a traceback does not split a line
    first, broke, plain = lines
    assert set(first) == {"time", "level", "logger", "message", "who"}
    assert (first["level"], first["logger"]) == ("WARNING", "turnout.test")
    assert first["time"].endswith("+00:00")
    assert "[BEARER_TOKEN_" in first["message"] or "[API_KEY_" in first["message"]
    assert "ValueError" in broke["exception"] and "[EMAIL_" in broke["exception"]
    assert plain == {**plain, "request_id": "r1", "status": 502, "message": "plain"}
    assert API_KEY not in text and "bob@example.com" not in text
    assert stream.writers and threading.current_thread().name not in stream.writers  # written off this thread


@pytest.mark.usefixtures("restore_logging")
def test_text_lines_are_redacted_too_and_the_access_log_speaks_at_info_whatever_the_level() -> None:
    stream = Recorder()
    redaction = RedactingFilter(Redactor(b"k" * 32), fields=False)
    listener = logs.configure("warning", "text", redaction, access_log=True, stream=stream)
    logging.getLogger("turnout").info("not at this level")
    logging.getLogger("turnout").warning("key %s", API_KEY)
    RequestLog(access_log=True).observe(LedgerRow("req-9", 0.0, "acme", "chat", "", False, status=200))
    listener.stop()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert " WARNING turnout: key [" in lines[0] and API_KEY not in lines[0]
    assert " INFO turnout.access: request_id=req-9 task=chat tenant=acme target=- status=200" in lines[1]


@pytest.mark.usefixtures("restore_logging")
def test_a_line_logged_just_before_stop_is_written() -> None:
    listener, stream = configured("text")
    for n in range(3000):  # more than one batch
        logging.getLogger("turnout").warning("line %d", n)
    listener.stop()
    assert len(stream.getvalue().splitlines()) == 3000


# --- the ledger ----------------------------------------------------------------------------


async def test_the_ledger_says_once_when_it_spills_and_once_when_it_caught_up(
    flaky: Flaky, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = writer_for(flaky, tmp_path)
    writer.start()
    flaky.down = True
    with caplog.at_level(logging.WARNING, "turnout.ledger.writer"):
        for n in range(120):
            writer.submit(row(n))
        await eventually(lambda: writer.spilled == 120)
        flaky.down = False
        await eventually(lambda: not writer.spilling)
        await writer.aclose()
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    spills = [m for level, m in lines if "rows go to the spill journal" in m]
    assert len(spills) == 1
    assert "writing 50 rows failed (StoreError: the store is down (injected))" in spills[0]
    assert str(tmp_path / "spill") in spills[0]
    assert [m for _, m in lines if "spill journal is replayed" in m] == [
        "ledger: the spill journal is replayed (120 rows so far); rows go straight to the store again"
    ]
    assert all(level == logging.WARNING for level, _ in lines)  # nothing was lost
    assert "req-" not in spills[0]


async def test_a_slow_store_is_said_once_too(flaky: Flaky, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    writer = writer_for(flaky, tmp_path)
    writer.start()
    flaky.stall = asyncio.Event()
    with caplog.at_level(logging.WARNING, "turnout.ledger.writer"):
        for n in range(200):
            writer.submit(row(n))
            if n % 50 == 0:
                await asyncio.sleep(0.05)
        await eventually(lambda: writer.spilled > 0)
        flaky.stall.set()
        flaky.stall = None
        await eventually(lambda: not writer.spilling)
        await writer.aclose()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("a store write took longer than 100 ms" in m for m in messages) == 1
    assert sum("spill journal is replayed" in m for m in messages) == 1


async def test_lost_rows_are_an_error(flaky: Flaky, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    writer = writer_for(flaky, tmp_path, max_bytes=2000)
    writer.start()
    flaky.down = True
    with caplog.at_level(logging.WARNING, "turnout.ledger.writer"):
        for n in range(100):
            writer.submit(row(n))
        await eventually(lambda: writer.spilled + writer.dropped == 100)
    errors = records(caplog, "turnout.ledger.writer", logging.ERROR)
    assert len(errors) == 1  # rate-limited
    assert "spill journal full" in errors[0].getMessage()
    flaky.down = False
    await eventually(lambda: writer.written == writer.spilled)
    await writer.aclose()


# --- the start-up summary ------------------------------------------------------------------


def secret_config(tmp_path: Path) -> dict[str, Any]:
    return {
        "server": {"admin_key": "admin-key-0123456789abcdef"},
        "store": {"kind": "postgres", "dsn": f"postgresql://turnout:{PG_PASSWORD}@127.0.0.1:5432/test?sslmode=disable"},
        "limits": {"backend": "redis", "redis_url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/2"},
        "targets": {
            "keyed": {
                "provider": "openai",
                "base_url": "https://api.example.com/v1",
                "model": "gpt",
                "api_key": API_KEY,
            },
            "userinfo": {
                "provider": "openai",
                "base_urls": [
                    f"http://bob:{URL_PASSWORD}@10.0.0.7:8000/v1",
                    "http://10.0.0.8:8000/v1",
                ],  # a query is refused
                "model": "m",
            },
            "claude": {"provider": "bedrock", "region": "us-east-1", "model": "anthropic.claude-3-haiku-20240307-v1:0"},
        },
        "tenants": {"acme": {"keys": [KEY]}},
        "tasks": {"chat": {"route": ["keyed", "userinfo"]}, "summarize": {"route": ["claude"]}},
        "releases": {"path": str(tmp_path / "none")},
    }


def test_the_summary_names_what_runs_and_no_secret(tmp_path: Path) -> None:
    runtime = Runtime(validate(secret_config(tmp_path)))  # not started: the summary reads the config
    text = "\n".join(summary.lines(runtime, "conf/turnout.yaml"))
    for secret in (API_KEY, URL_PASSWORD, PG_PASSWORD, REDIS_PASSWORD, KEY, "admin-key", "bob", "sslmode"):
        assert secret not in text
    assert str(Path("conf/turnout.yaml").resolve()) in text
    assert "listening on http://127.0.0.1:8080" in text
    assert "chat → keyed, userinfo; summarize → claude" in text
    assert "keyed (openai, 1 replica), userinfo (openai, 2 replicas), claude (bedrock, us-east-1)" in text
    assert "ledger postgres 127.0.0.1:5432/test" in text
    assert "limits and keys redis 127.0.0.1:6379/2" in text
    assert "api.example.com" not in text and "10.0.0.7" not in text  # no URL at all
    assert len(text.splitlines()) <= 5


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        (f"host=db.internal port=5433 dbname=ledger user=t password={PG_PASSWORD}", "db.internal:5433/ledger"),
        (f"postgresql://t:{PG_PASSWORD}@/ledger?host=/var/run/postgresql", "/ledger"),
        (f"postgres://t:{PG_PASSWORD}@[::1]:5432/x", "[::1]:5432/x"),
        (None, "(libpq defaults)"),
    ],
)
def test_a_dsn_is_shown_by_place_only(dsn: str | None, shown: str) -> None:
    assert summary.dsn_place(dsn) == shown
    assert PG_PASSWORD not in summary.dsn_place(dsn)


async def test_the_summary_is_logged_once_the_runtime_has_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    raw = config(access_log=True, log_format="json")
    app = App(validate(raw), {"primary": ScriptedProvider("primary"), "secondary": ScriptedProvider("secondary")})
    app.source = "turnout.yaml"
    sent: list[dict[str, Any]] = []
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: Any) -> None:
        if message["type"] == "lifespan.startup.complete":
            assert any("turnout started" in r.getMessage() for r in caplog.records)  # before the server says ready
        sent.append(message)

    with caplog.at_level(logging.INFO, "turnout"):
        await app.lifespan(receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    started = [r for r in caplog.records if r.getMessage().startswith("turnout started")]
    assert len(started) == 1
    assert f"config {tmp_path / 'turnout.yaml'}" in started[0].getMessage()
    assert "log format json, access log on" in started[0].getMessage()
    assert fields(started[0])["address"] == "http://127.0.0.1:8080"
    assert KEY not in caplog.text


@pytest.mark.parametrize("by_env", [False, True])
def test_serve_hands_the_config_path_to_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, by_env: bool
) -> None:
    seen: list[str | None] = []

    def run(config: Any, source: str | None = None, loader: object = None) -> None:
        seen.append(source)

    monkeypatch.setattr(turnout.serving.server, "run", run)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps(config()))
    args = ["serve"] if by_env else ["serve", "--config", str(path)]
    result = CliRunner().invoke(main, args, env={"TURNOUT_CONFIG": str(path)} if by_env else {})
    assert result.exit_code == 0, result.output
    assert seen == [str(path)]
