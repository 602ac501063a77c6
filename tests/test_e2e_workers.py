"""``turnout serve --workers 2`` as a real process, through the official ``openai`` SDK: both
workers answer on one port, their counters are summed at ``/metrics``, a tenant's RPM holds
across them through Redis, a killed worker is replaced, SIGHUP to the parent (or
``POST /admin/reload`` on one worker) reloads every worker without cutting a stream, and
SIGTERM lets a stream in flight finish while new connections are refused."""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import redis

from tests.serving import Process, Served, free_port_in, sdk_client, turnout_serve
from tests.test_ledger_store import make_row
from turnout.ledger.sqlite import SQLiteStore

pytestmark = pytest.mark.slow
REDIS = "redis://127.0.0.1:6379/0"
KEY = "sk-acme-e2e-workers-0001"
ADMIN = "adm-e2e-workers-0123456789"
RPM = 30
STARTED = "serving (pid"  # the supervisor heard the worker serve: it takes part in a reload from now on
TRIES = 400  # connections made to see both workers: each lands on either, so a few do


@pytest.fixture(scope="module")
def upstream() -> Iterator[Process]:
    fake = Process("tests.fakes.upstream", ready_path="/v1/models")
    yield fake
    fake.stop()


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"turnout-workers-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(REDIS)
    try:
        for key in client.scan_iter(f"{name}*"):
            client.delete(key)
    finally:
        client.close()


def config(upstream: Process, prefix: str, **tasks: Any) -> dict[str, Any]:
    return {
        "server": {"admin_key": ADMIN, "shutdown_grace_s": 20},
        "limits": {"backend": "redis", "redis_url": REDIS, "key_prefix": prefix},
        "observability": {"metrics": True},
        "targets": {"up": {"provider": "openai", "base_url": upstream.url + "/v1", "model": "m"}},
        "tenants": {"acme": {"keys": [KEY], "limits": {"rpm": RPM}}},
        "tasks": {"chat": {"route": ["up"]}, **tasks},
    }


@pytest.fixture
def served(tmp_path: Path, upstream: Process, prefix: str) -> Iterator[Served]:
    upstream.post("/_fault", {})
    (tmp_path / "turnout.yaml").write_text(json.dumps(config(upstream, prefix)))
    with turnout_serve(tmp_path, tmp_path / "turnout.yaml", extra=("--workers", "2")) as s:
        wait_log(s, STARTED, 2)  # /readyz answered for one worker; the other may still be starting
        yield s


def get(served: Served, path: str, auth: str | None = None) -> tuple[str, bytes]:
    """A fresh connection each time (so either worker may take it): the answering pid, the body."""
    headers = {"authorization": f"Bearer {auth}"} if auth else {}
    req = urllib.request.Request(f"http://127.0.0.1:{served.port}{path}", headers=headers)
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback test URL
        return resp.headers.get("x-turnout-worker", ""), resp.read()


def worker_pids(served: Served, want: int = 2) -> set[str]:
    seen: set[str] = set()
    for _ in range(TRIES):
        seen.add(get(served, "/healthz")[0])
        if len(seen) >= want:
            break
    return seen


def workers_of(served: Served) -> set[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    found = subprocess.run(["pgrep", "-P", str(served.proc.pid), "-f", "spawn_main"], capture_output=True, text=True)
    return {int(p) for p in found.stdout.split()}


def chat(served: Served, task: str = "chat") -> str:
    client = sdk_client(served.base_url, KEY)
    answer = client.chat.completions.create(model=task, messages=[{"role": "user", "content": "hi"}])
    return answer.choices[0].message.content or ""


def requests_total(served: Served) -> float:
    _, body = get(served, "/metrics")
    return sum(float(v) for v in re.findall(rb'^turnout_requests_total\{[^}]*status="200"[^}]*\} (\S+)$', body, re.M))


def test_both_workers_answer_and_metrics_sum_them(served: Served) -> None:
    pids = worker_pids(served)
    assert len(pids) == 2 and str(served.proc.pid) not in pids
    assert {int(p) for p in pids} == workers_of(served)
    for _ in range(12):
        assert chat(served) == "Hello, world"
    assert requests_total(served) == 12.0  # whichever worker answers the scrape: every worker's count
    # The ledger's counts live in each worker; every scrape shows their sum, whichever worker answers.
    deadline = time.monotonic() + 15
    while (written := sample(served, "turnout_ledger_written_total")) != 12.0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert written == 12.0
    answered = {get(served, "/healthz")[0] for _ in range(TRIES)}
    assert len(answered) == 2
    assert {sample(served, "turnout_ledger_written_total") for _ in range(10)} == {12.0}
    assert {sample(served, "turnout_ledger_queue_depth") for _ in range(4)} == {0.0}
    assert {sample(served, "turnout_ledger_dropped_total") for _ in range(4)} == {0.0}
    _, body = get(served, "/metrics")
    assert body.count(b"# TYPE turnout_ledger_written_total counter") == 1  # one family: the workers' sum


def sample(served: Served, name: str) -> float:
    """One sample's value summed over its label sets (there is one: no worker label)."""
    _, body = get(served, "/metrics")
    found = re.findall(rb"^" + name.encode() + rb"(?:\{[^}]*\})? (\S+)$", body, re.M)
    assert found, f"{name} missing from /metrics"
    return sum(float(v) for v in found)


async def burst(served: Served, n: int) -> list[int]:
    """``n`` concurrent requests, each on its own connection; their statuses."""
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=n, force_close=True)) as http:

        async def one() -> int:
            async with http.post(served.base_url + "/chat/completions", json=body, headers=headers) as resp:
                await resp.read()
                return resp.status

        return list(await asyncio.gather(*(one() for _ in range(n))))


def test_the_tenant_rpm_holds_across_workers(served: Served) -> None:
    statuses = asyncio.run(burst(served, 3 * RPM))
    assert statuses.count(200) == RPM  # not RPM per worker
    assert set(statuses) == {200, 429}
    assert requests_total(served) == RPM


def test_a_killed_worker_is_replaced(served: Served) -> None:
    before = workers_of(served)
    assert len(before) == 2
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    answered, deadline = 0, time.monotonic() + 60
    while True:  # the survivor answers all the while (within the tenant's RPM: a slow restart
        if answered < RPM // 2:  # on a busy machine must not turn into 429s)
            assert chat(served) == "Hello, world"
            answered += 1
        after = workers_of(served)
        if len(after) == 2 and victim not in after:
            break
        assert time.monotonic() < deadline, "no worker replaced the killed one within 60 s"
        time.sleep(0.05)
    wait_log(served, STARTED, 3)
    pids = worker_pids(served)  # the new one serves too, once started
    for _ in range(TRIES):
        if {int(p) for p in pids} == after:
            break
        pids |= worker_pids(served)
    assert {int(p) for p in pids} == after
    assert "killed by SIGKILL: starting another" in served.log.read_text()


def wait_log(served: Served, text: str, count: int) -> None:
    """Until the log says ``text`` ``count`` times (bounded: a signal takes a moment to act)."""
    for _ in range(400):
        if served.log.read_text().count(text) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} fewer than {count} times in {served.log.read_text()}")


def models_everywhere(served: Served) -> set[tuple[str, ...]]:
    """The task lists answered on fresh connections (either worker takes each; both answer
    ``worker_pids``'s)."""
    assert len(worker_pids(served)) == 2
    seen: set[tuple[str, ...]] = set()
    for _ in range(40):
        _, body = get(served, "/v1/models", KEY)
        seen.add(tuple(m["id"] for m in json.loads(body)["data"]))
    return seen


def test_sighup_reloads_every_worker_without_cutting_a_stream(
    served: Served, upstream: Process, prefix: str, tmp_path: Path
) -> None:
    upstream.post("/_fault", {"chunk_delay": 0.2})
    client = sdk_client(served.base_url, KEY)
    stream = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], stream=True)
    pieces = [next(iter(stream)).choices[0].delta.content or ""]
    new = config(upstream, prefix, summarize={"route": ["up"]})
    (tmp_path / "turnout.yaml").write_text(json.dumps(new))
    served.proc.send_signal(signal.SIGHUP)
    pieces += [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == "Hello, world"
    wait_log(served, "on every worker (2)", 1)  # the supervisor's line, once both have swapped it in
    assert models_everywhere(served) == {("chat", "summarize")}
    upstream.post("/_fault", {})
    assert chat(served, "summarize") == "Hello, world"


def admin_reload(served: Served) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{served.port}/admin/reload", b"", {"authorization": f"Bearer {ADMIN}"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=90) as resp:  # noqa: S310 - loopback test URL
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_admin_reload_on_one_worker_answers_once_every_worker_has_it(
    served: Served, upstream: Process, prefix: str, tmp_path: Path
) -> None:
    """The answer came from the worker asked, the others following a SIGHUP later: a client
    acting on it could reach a worker still on the old config."""
    (tmp_path / "turnout.yaml").write_text(json.dumps(config(upstream, prefix, summarize={"route": ["up"]})))
    assert admin_reload(served) == (
        200,
        {"reloaded": True, "changed": ["tasks"], "restart_needed": [], "workers": 2},
    )
    assert models_everywhere(served) == {("chat", "summarize")}  # at once: no waiting for a log line


def test_admin_reload_of_an_invalid_file_changes_no_worker(
    served: Served, upstream: Process, prefix: str, tmp_path: Path
) -> None:
    (tmp_path / "turnout.yaml").write_text(json.dumps(config(upstream, prefix, summarize={"route": ["nowhere"]})))
    status, body = admin_reload(served)
    assert status == 422 and body["error"]["code"] == "invalid_config"
    assert body["error"]["problems"] == ["tasks.summarize.route[0]: unknown target 'nowhere'"]
    assert models_everywhere(served) == {("chat",)}
    assert served.log.read_text().count("config reload refused") == 1  # the supervisor's one line


def test_a_sighup_to_one_worker_reloads_every_worker(
    served: Served, upstream: Process, prefix: str, tmp_path: Path
) -> None:
    """``kill -HUP`` on a worker's pid reloaded that worker alone: two configs on one port."""
    (tmp_path / "turnout.yaml").write_text(json.dumps(config(upstream, prefix, summarize={"route": ["up"]})))
    os.kill(min(workers_of(served)), signal.SIGHUP)
    wait_log(served, "config reloaded from", 1)
    for _ in range(5):  # bounded: each look asks both workers many times
        if models_everywhere(served) == {("chat", "summarize")}:
            return
    raise AssertionError(f"the workers serve different configs: {models_everywhere(served)}")


def wait_rounds(served: Served, count: int) -> None:
    """Until the supervisor has ended ``count`` reloads, each with one line: done, or refused."""
    for _ in range(400):
        text = served.log.read_text()
        if text.count("on every worker (") + text.count("the running config is kept on every worker") >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} reloads ended in {served.log.read_text()}")


def test_a_file_rewritten_while_signalled_is_served_whole_by_every_worker_or_by_none(
    served: Served, upstream: Process, prefix: str, tmp_path: Path
) -> None:
    """An editor's or a ConfigMap's write lands in pieces; each worker read the file itself,
    at its own moment: some on the old text, some on the new, some on half of it."""
    path = tmp_path / "turnout.yaml"
    for i in range(6):
        text = json.dumps(config(upstream, prefix, **{f"task{i}": {"route": ["up"]}})).encode()
        with path.open("wb") as out:  # truncated, then written in two pieces around the signal
            out.write(text[: len(text) // 2])
            out.flush()
            served.proc.send_signal(signal.SIGHUP)
            time.sleep(0.01 * i)  # the file is read before, while or after the rest is written
            out.write(text[len(text) // 2 :])
        wait_rounds(served, i + 1)
        [served_now] = models_everywhere(served)  # one config on every worker, whichever
        assert served_now in {("chat",), *(("chat", f"task{j}") for j in range(i + 1))}
    served.proc.send_signal(signal.SIGHUP)
    wait_rounds(served, 7)
    assert models_everywhere(served) == {("chat", "task5")}


def test_an_invalid_file_is_refused_once_and_no_worker_changes(served: Served, tmp_path: Path) -> None:
    (tmp_path / "turnout.yaml").write_text("tasks: {chat: {route: [nowhere]}}\n")
    served.proc.send_signal(signal.SIGHUP)
    wait_log(served, "config reload refused, the running config is kept on every worker", 1)
    assert models_everywhere(served) == {("chat",)}
    assert chat(served) == "Hello, world"
    assert served.log.read_text().count("config reload refused") == 1  # no worker read the file


def test_a_reload_giving_memory_limits_is_refused_by_every_worker(tmp_path: Path, upstream: Process) -> None:
    """Limits in memory are refused at start with workers; a reload adding a tenant's RPM
    (``limits.backend`` is restart-only: memory stays) would let each worker admit its own."""
    raw = config(upstream, "unused")
    del raw["limits"], raw["tenants"]["acme"]["limits"]
    (tmp_path / "turnout.yaml").write_text(json.dumps(raw))
    with turnout_serve(tmp_path, tmp_path / "turnout.yaml", extra=("--workers", "2")) as served:
        wait_log(served, STARTED, 2)
        raw["tenants"]["acme"]["limits"] = {"rpm": 5}
        (tmp_path / "turnout.yaml").write_text(json.dumps(raw))
        served.proc.send_signal(signal.SIGHUP)
        wait_log(served, "config reload refused, the running config is kept on every worker", 1)
        assert "limits.backend: memory: with --workers 2" in served.log.read_text()
        assert "config reloaded from" not in served.log.read_text()


def test_sigterm_lets_a_stream_in_flight_finish(served: Served, upstream: Process) -> None:
    upstream.post("/_fault", {"chunk_delay": 0.2})
    client = sdk_client(served.base_url, KEY)
    stream = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], stream=True)
    pieces = [next(iter(stream)).choices[0].delta.content or ""]
    workers = workers_of(served)
    served.proc.send_signal(signal.SIGTERM)
    pieces += [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == "Hello, world"
    assert served.proc.wait(60) == 0
    assert not any(os.path.exists(f"/proc/{pid}") for pid in workers)
    with pytest.raises(openai.APIConnectionError):
        chat(served)


def test_a_single_process_reloads_on_sighup_too(tmp_path: Path, upstream: Process, prefix: str) -> None:
    (tmp_path / "turnout.yaml").write_text(json.dumps(config(upstream, prefix)))
    with turnout_serve(tmp_path, tmp_path / "turnout.yaml") as single:
        (tmp_path / "turnout.yaml").write_text(json.dumps(config(upstream, prefix, summarize={"route": ["up"]})))
        single.proc.send_signal(signal.SIGHUP)
        wait_log(single, "config reloaded from", 1)
        assert single.proc.poll() is None  # SIGHUP no longer ends the process
        assert chat(single, "summarize") == "Hello, world"


def console(served: Served, method: str, path: str, cookie: str = "", form: str = "") -> tuple[int, str, str]:
    """One console request on a fresh connection (either worker may take it), redirects not
    followed: status, the worker's pid, and a new cookie or the body."""
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    headers = {"cookie": cookie} if cookie else {}
    if form:
        headers |= {"content-type": "application/x-www-form-urlencoded", "origin": f"http://127.0.0.1:{served.port}"}
    conn.request(method, path, body=form or None, headers=headers)
    resp = conn.getresponse()
    body = resp.read().decode()
    conn.close()
    return resp.status, resp.getheader("set-cookie", "") or "", body


def test_a_console_session_holds_on_every_worker(served: Served) -> None:
    """Each worker had its own sessions and CSRF secret: half the pages went back to the login
    form, and forms that reached the other worker were refused."""
    status, set_cookie, _ = console(served, "POST", "/ui/login", form=f"key={ADMIN}&name=ops")
    assert status == 303
    cookie = set_cookie.split(";")[0]
    assert len(worker_pids(served)) == 2
    pages = [console(served, "GET", "/ui/tenants", cookie) for _ in range(12)]
    assert [p[0] for p in pages] == [200] * 12
    token = re.search(r'name="csrf" value="([^"]+)"', pages[0][2])
    assert token is not None
    assert console(served, "POST", "/ui/logout", cookie, f"csrf={token.group(1)}")[0] == 303
    assert [console(served, "GET", "/ui/tenants", cookie)[0] for _ in range(8)] == [303] * 8  # on every worker


def test_retention_runs_once_an_interval_whatever_the_workers(tmp_path: Path) -> None:
    """Seen: every worker ran the retention purge every interval, so the audit trail held two
    runs an interval and their deletes raced. One worker claims each interval's run now."""
    interval = 0.5

    async def seed() -> None:
        ledger = SQLiteStore(tmp_path / "ledger.db")
        await ledger.open()
        old = time.time() - 40 * 86_400
        await ledger.write_batch([make_row(i, started_at=old + i) for i in range(3)])
        await ledger.aclose()

    asyncio.run(seed())
    cfg = {
        "store": {"kind": "sqlite", "path": str(tmp_path / "ledger.db"), "flush_interval_ms": 10},
        "targets": {"up": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}},
        "tasks": {"chat": {"route": ["up"]}},
        "retention": {"purge_interval_s": interval, "rules": [{"ledger_days": 30}]},
    }
    (tmp_path / "turnout.yaml").write_text(json.dumps(cfg))
    port = free_port_in(22000, 22999)
    with turnout_serve(tmp_path, tmp_path / "turnout.yaml", extra=("--workers", "2"), port=port) as served:
        wait_log(served, STARTED, 2)
        time.sleep(10 * interval)
        assert len(workers_of(served)) == 2
    db = sqlite3.connect(tmp_path / "capture.db")
    try:
        trail = db.execute("SELECT at, detail FROM audit WHERE detail LIKE 'retention%' ORDER BY id").fetchall()
    finally:
        db.close()
    runs = [at for at, detail in trail if detail.startswith("retention run")]
    assert len(runs) >= 5, trail
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert min(gaps) >= 0.9 * interval, gaps  # two workers running each interval: pairs a moment apart
    assert [d for _, d in trail].count("retention: deleted 3 ledger rows past ledger_days") == 1
    assert sum("deleted 3 ledger rows of 1 tenant/task pairs" in d for _, d in trail) == 1


def test_sigterm_refuses_new_connections_while_a_stream_drains(served: Served, upstream: Process) -> None:
    """As one process does: a load balancer's connect fails at once and it moves on, instead of
    a request waiting in a backlog no worker reads until the drain ends, then reset."""
    upstream.post("/_fault", {"chunk_delay": 0.5})
    client = sdk_client(served.base_url, KEY)
    stream = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], stream=True)
    pieces = [next(iter(stream)).choices[0].delta.content or ""]
    served.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # each worker has taken its signal and closed its listener
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", served.port), timeout=5).close()
    assert served.proc.poll() is None  # still draining
    pieces += [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == "Hello, world"
    assert served.proc.wait(60) == 0


def test_failed_console_logins_are_counted_across_workers(served: Served) -> None:
    """Each worker counted its own failures: two workers let twenty guesses through, not ten."""
    assert len(worker_pids(served)) == 2
    statuses = [console(served, "POST", "/ui/login", form=f"key=guess-{n}")[0] for n in range(30)]
    assert statuses == [401] * 10 + [429] * 20
    assert console(served, "POST", "/ui/login", form=f"key={ADMIN}")[0] == 429  # the right key waits too


def test_what_a_console_form_did_is_shown_whichever_worker_serves_the_next_page(served: Served) -> None:
    """The message for the page after a form was kept by the worker that took the form: half
    the time the next page came from the other worker, and a refusal went unsaid."""
    status, set_cookie, _ = console(served, "POST", "/ui/login", form=f"key={ADMIN}&name=ops")
    assert status == 303
    cookie = set_cookie.split(";")[0]
    assert len(worker_pids(served)) == 2
    token = re.search(r'name="csrf" value="([^"]+)"', console(served, "GET", "/ui/review", cookie)[2])
    assert token is not None
    for n in range(12):
        status, more, _ = console(served, "POST", "/ui/review/1", cookie, f"csrf={token.group(1)}&label=accept")
        assert status == 303
        jar = f"{cookie}; {more.split(';')[0]}" if more else cookie  # as a browser keeps what it is given
        page = console(served, "GET", "/ui/review", jar)[2]
        assert "the review queue is off" in page, n
