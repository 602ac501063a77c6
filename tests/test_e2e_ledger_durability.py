"""The ledger keeps one row per answered request through what breaks it in production, proved
on real ``turnout serve`` processes, real SQLite and real PostgreSQL:

* PostgreSQL unreachable for 10 s mid-traffic (a TCP proxy cut between the gateway and the
  server): 0 rows lost once it returns, each row written once;
* the store slower than traffic for 30 s (the proxy delaying every packet): 0 rows lost, and
  ``/readyz`` and ``/metrics`` show the spill meanwhile;
* SIGKILL after 10 s of 32-connection load: at most 1% of answered requests lack a row once the
  journal left behind is replayed by the next start. What a kill loses is a time window (rows
  queued for up to ``store.flush_interval_ms``, plus the batch being written), so the share
  depends on how long the load ran; the figure is printed both ways;
* SIGTERM outlasting ``server.shutdown_grace_s``: every stream and every request stuck on a slow
  upstream ends for its client and has its row, status 503.

Every check waits for the state it needs, with a generous deadline; nothing is timed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest

from tests.fakes.tcp_proxy import FaultProxy
from tests.serving import Process, Served, turnout_serve
from tests.test_ledger_store import POSTGRES_DSN, drop_schema, needs_postgres, postgres_sql, unique_schema

pytestmark = pytest.mark.slow

BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
CATCH_UP_S = 180.0  # how long the gateway gets to replay its journal: generous, never asserted on
ADMIN_KEY = "adm-e2e-durability-61c0"  # /readyz shows the ledger's figures to the admin only


# --- load ---------------------------------------------------------------------------------------


class Load:
    """``clients`` connections posting one request after another until ``stop``; the request ids
    of the answered ones (200, the whole body read; the id from the header and the body agree)."""

    def __init__(self, base_url: str, clients: int) -> None:
        self.url = base_url + "/chat/completions"
        self.clients = clients
        self.answered: set[str] = set()
        self.refused = 0  # answers other than 200
        self.broken = 0  # requests that got no whole answer (the server went away)
        self._stop = asyncio.Event()
        self._answer = asyncio.Event()  # set at each answer
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Load:
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.clients))
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.clients)]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        assert self._http is not None
        await self._http.close()

    async def until(self, answered: int, deadline_s: float = 120.0) -> None:
        """Waits for ``answered`` answers in all; a deadline only so a dead gateway fails the
        test instead of hanging it."""
        async with asyncio.timeout(deadline_s):
            while len(self.answered) < answered:
                self._answer.clear()
                await self._answer.wait()

    async def _client(self) -> None:
        assert self._http is not None
        while not self._stop.is_set():
            try:
                async with self._http.post(self.url, json=BODY) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        self.refused += 1
                        continue
                    request_id = resp.headers["x-turnout-request-id"]
                    assert json.loads(body)["id"] == f"chatcmpl-{request_id}"
                    self.answered.add(request_id)
                    self._answer.set()
            except (aiohttp.ClientError, ConnectionError):
                self.broken += 1
                await asyncio.sleep(0.01)


def get_json(served: Served, path: str) -> Any:
    req = urllib.request.Request(
        f"http://127.0.0.1:{served.port}{path}", headers={"authorization": f"Bearer {ADMIN_KEY}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback test URL
        return json.loads(resp.read())


def ledger_detail(served: Served) -> dict[str, Any]:
    """``/readyz``'s ledger figures (queued, spilling, journal_bytes, dropped)."""
    detail: dict[str, Any] = get_json(served, "/readyz")["ledger"]
    return detail


def metric(served: Served, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} is not in /metrics")


async def watch_ledger(served: Served, seen: list[dict[str, Any]], stop: asyncio.Event) -> None:
    """Samples ``/readyz``'s ledger detail (twice a second) until ``stop``."""
    while not stop.is_set():
        seen.append(await asyncio.to_thread(ledger_detail, served))
        try:
            async with asyncio.timeout(0.5):
                await stop.wait()
        except TimeoutError:
            pass


async def drive(served: Served, clients: int, fault: Callable[[], Awaitable[None]]) -> tuple[Load, list[Any]]:
    """Load from ``clients`` connections: 300 answers first, then ``fault`` (which breaks the
    store and restores it), then 300 more answers after it; ``/readyz`` watched throughout."""
    seen: list[dict[str, Any]] = []
    stop = asyncio.Event()
    async with Load(served.base_url, clients) as load:
        await load.until(300)
        watcher = asyncio.create_task(watch_ledger(served, seen, stop))
        await fault()
        await load.until(len(load.answered) + 300)
        stop.set()
        await watcher
    return load, seen


def caught_up(served: Served) -> dict[str, Any]:
    """Waits until the gateway has nothing waiting for the store; its ledger detail then."""
    deadline = time.monotonic() + CATCH_UP_S
    while True:
        ledger = ledger_detail(served)
        if (not ledger["spilling"] and ledger["queued"] == 0) or time.monotonic() > deadline:
            return ledger
        time.sleep(0.25)


# --- PostgreSQL behind a proxy ------------------------------------------------------------------


@contextmanager
def postgres_gateway(tmp_path: Path) -> Iterator[tuple[Served, FaultProxy, str]]:
    """A gateway whose PostgreSQL ledger (a schema of its own, dropped afterwards) is reached
    through a ``FaultProxy``, in front of a fast fake upstream."""
    url = urlsplit(POSTGRES_DSN)
    schema = unique_schema()
    upstream = Process("tests.fakes.upstream", ready_path="/v1/models")
    try:
        with FaultProxy(url.port or 5432, url.hostname or "127.0.0.1") as proxy:
            netloc = f"{url.username or 'postgres'}@127.0.0.1:{proxy.port}"
            config = {
                "store": {
                    "kind": "postgres",
                    "dsn": urlunsplit(url._replace(netloc=netloc)),
                    "pg_schema": schema,
                    "spill_dir": str(tmp_path / "spill"),
                },
                "server": {"admin_key": ADMIN_KEY},
                "targets": {"up": {"provider": "openai", "base_url": upstream.url + "/v1", "model": "m"}},
                "tasks": {"chat": {"route": ["up"]}},
            }
            path = tmp_path / "turnout.yaml"
            path.write_text(json.dumps(config))
            with turnout_serve(tmp_path, path) as served:
                yield served, proxy, schema
    finally:
        upstream.stop()
        asyncio.run(drop_schema(schema))


def stored_in_postgres(schema: str, answered: set[str]) -> dict[str, int]:
    """How many rows each answered request id has in the schema's ledger, once every id has
    one (or the deadline passed: the assertion then names what is missing)."""
    ids = sorted(answered)
    deadline = time.monotonic() + CATCH_UP_S
    while True:
        found = asyncio.run(
            postgres_sql(
                schema,
                "SELECT request_id, count(*) FROM requests WHERE request_id = ANY($1::text[]) GROUP BY request_id",
                ids,
            )
        )
        counts = {str(r[0]): int(r[1]) for r in found}
        if len(counts) == len(ids) or time.monotonic() > deadline:
            return counts
        time.sleep(0.5)


def report(what: str, load: Load, spilled: float, seen: list[dict[str, Any]]) -> int:
    """Prints the figures (run with -s to see them); returns the journal's largest size seen."""
    most = max(int(s["journal_bytes"]) for s in seen)
    print(f"\n{what}: {len(load.answered)} answered, {spilled:.0f} rows spilled, journal up to {most} bytes")
    return most


def assert_every_row_once(answered: set[str], counts: dict[str, int]) -> None:
    missing = answered - counts.keys()
    assert not missing, f"{len(missing)} of {len(answered)} answered requests have no row, e.g. {sorted(missing)[:3]}"
    twice = {k: n for k, n in counts.items() if n != 1}
    assert not twice, f"rows written more than once: {twice}"


@needs_postgres
def test_postgres_unreachable_for_10s_mid_traffic_loses_no_row(tmp_path: Path) -> None:
    with postgres_gateway(tmp_path) as (served, proxy, schema):

        async def outage() -> None:
            await asyncio.to_thread(proxy.cut)  # open connections dropped, new ones refused
            await asyncio.sleep(10)
            await asyncio.to_thread(proxy.restore)

        load, seen = asyncio.run(drive(served, 8, outage))
        ledger = caught_up(served)
        counts = stored_in_postgres(schema, load.answered)
        spilled = metric(served, "turnout_ledger_spilled_total")
    report("PostgreSQL cut for 10 s", load, spilled, seen)
    assert len(load.answered) >= 600 and load.broken == 0 and load.refused == 0  # the store never slows a request
    assert_every_row_once(load.answered, counts)
    assert any(s["spilling"] and s["journal_bytes"] > 0 for s in seen), "the outage never reached the journal"
    assert spilled > 0
    assert ledger == {"queued": 0, "spilling": False, "journal_bytes": 0, "dropped": 0}
    assert not [p for p in (tmp_path / "spill").iterdir() if p.stat().st_size > 0]  # replayed and removed


@needs_postgres
def test_store_slower_than_traffic_for_30s_loses_no_row(tmp_path: Path) -> None:
    with postgres_gateway(tmp_path) as (served, proxy, schema):

        async def slow_store() -> None:
            proxy.slow(0.2, 0.5)  # every packet to and from PostgreSQL: a round trip of 0.4-1 s
            await asyncio.sleep(30)
            proxy.slow(0, 0)

        load, seen = asyncio.run(drive(served, 8, slow_store))
        spilled_during = metric(served, "turnout_ledger_spilled_total")
        ledger = caught_up(served)
        counts = stored_in_postgres(schema, load.answered)
    most = report("PostgreSQL slow for 30 s", load, spilled_during, seen)
    assert len(load.answered) >= 600 and load.broken == 0 and load.refused == 0
    assert_every_row_once(load.answered, counts)
    # It did fall behind: rows waited on disk, and /readyz and /metrics said so.
    assert most > 0
    assert any(s["spilling"] for s in seen)
    assert spilled_during > 0
    assert ledger == {"queued": 0, "spilling": False, "journal_bytes": 0, "dropped": 0}


# --- SIGKILL ------------------------------------------------------------------------------------


def test_sigkill_under_32_connections_loses_at_most_one_percent(tmp_path: Path) -> None:
    """The default store (SQLite) and flush interval; the next start replays what the killed
    process left in its spill journal."""
    upstream = Process("tests.fakes.upstream", ready_path="/v1/models")
    try:
        config = {
            "server": {"admin_key": ADMIN_KEY},
            "targets": {"up": {"provider": "openai", "base_url": upstream.url + "/v1", "model": "m"}},
            "tasks": {"chat": {"route": ["up"]}},
        }
        path = tmp_path / "turnout.yaml"
        path.write_text(json.dumps(config))
        with turnout_serve(tmp_path, path) as served:
            answered, loaded_s = asyncio.run(_load_then_sigkill(served, clients=32, seconds=5))
            assert served.proc.wait(30) == -signal.SIGKILL
        with turnout_serve(tmp_path, path) as again:  # replays the journal at start
            assert caught_up(again)["journal_bytes"] == 0
        with sqlite3.connect(tmp_path / ".turnout" / "turnout.db") as conn:
            stored = {r[0] for r in conn.execute("SELECT request_id FROM requests")}
    finally:
        upstream.stop()
    lost = answered - stored
    share = 100 * len(lost) / len(answered)
    window_ms = 1000 * len(lost) / (len(answered) / loaded_s)  # the loss, as that much of the traffic
    print(
        f"\nSIGKILL under 32-connection load: {len(answered)} answered in {loaded_s:.1f} s, "
        f"{len(lost)} without a row ({share:.2f}%, about {window_ms:.0f} ms of answers)"
    )
    assert len(answered) >= 1000  # the load was real
    assert share <= 1.0, f"{len(lost)} of {len(answered)} answered requests lost their row ({share:.2f}%)"


async def _load_then_sigkill(served: Served, clients: int, seconds: float) -> tuple[set[str], float]:
    """The ids answered before the process died (read after: an answer in flight then counts),
    and how long the load ran."""
    async with Load(served.base_url, clients) as load:
        started = time.monotonic()
        await asyncio.sleep(seconds)
        os.kill(served.proc.pid, signal.SIGKILL)
        loaded_s = time.monotonic() - started
    return set(load.answered), loaded_s


# --- SIGTERM past the grace period --------------------------------------------------------------


def test_requests_cut_by_a_shutdown_past_grace_end_and_get_a_503_row(tmp_path: Path) -> None:
    slow_stream = Process("tests.fakes.upstream", ready_path="/v1/models")
    stuck = Process("tests.fakes.upstream", ready_path="/v1/models")
    try:
        slow_stream.post("/_reply", {"text": ["word "] * 60})
        slow_stream.post("/_fault", {"mode": "ok", "chunk_delay": 0.5})  # 30 s per stream
        timeouts = {"ttft": 120, "total": 300}
        config = {
            "server": {"shutdown_grace_s": 1},
            "targets": {
                "streamer": {
                    "provider": "openai",
                    "base_url": slow_stream.url + "/v1",
                    "model": "m",
                    "timeouts": timeouts,
                },
                "stuck": {"provider": "openai", "base_url": stuck.url + "/v1", "model": "m", "timeouts": timeouts},
            },
            "tasks": {"story": {"route": ["streamer"]}, "wait": {"route": ["stuck"]}},
        }
        path = tmp_path / "turnout.yaml"
        path.write_text(json.dumps(config))
        with turnout_serve(tmp_path, path) as served:
            stuck.post("/_fault", {"mode": "hang"})  # once ready: its health check would hang too
            streams, waits = asyncio.run(_cut_by_sigterm(served, stuck, streams=4, waiting=3))
            served.proc.wait(60)  # uvicorn exits by the signal it got, once shut down
        assert "timeout graceful shutdown exceeded" in served.log.read_text()  # the cut, not a drain
        with sqlite3.connect(tmp_path / ".turnout" / "turnout.db") as conn:
            conn.row_factory = sqlite3.Row
            rows = {r["request_id"]: r for r in conn.execute("SELECT * FROM requests")}
    finally:
        slow_stream.stop()
        stuck.stop()

    for request_id, events in streams.items():
        # The client saw the stream end: its text so far, then an error event, then the end.
        assert events[0] == "chunk" and events[-1] == "error:shutting_down", events
        row = rows[request_id]
        assert (row["status"], row["error_class"], row["stream"]) == (503, "shutting_down", 1)
        assert row["completion_tokens"] and row["completion_tokens"] > 0  # what was generated is counted
    for request_id, (status, code) in waits.items():
        assert (status, code) == (503, "shutting_down")
        row = rows[request_id]
        assert (row["status"], row["error_class"], row["stream"]) == (503, "shutting_down", 0)
    assert len(streams) == 4 and len(waits) == 3


async def _cut_by_sigterm(
    served: Served, stuck: Process, streams: int, waiting: int
) -> tuple[dict[str, list[str]], dict[str, tuple[int, str]]]:
    """Starts ``streams`` slow streams (each past its first chunk) and ``waiting`` requests
    hanging on their upstream, sends SIGTERM, and reads what each client gets until its end."""
    url = served.base_url + "/chat/completions"
    started = asyncio.Semaphore(0)

    async def stream(http: aiohttp.ClientSession) -> tuple[str, list[str]]:
        body = {"model": "story", "messages": [{"role": "user", "content": "tell"}], "stream": True}
        events: list[str] = []
        async with http.post(url, json=body) as resp:
            assert resp.status == 200
            request_id = resp.headers["x-turnout-request-id"]
            try:
                async for line in resp.content:
                    if not line.startswith(b"data: "):
                        continue
                    data = line[6:].strip()
                    if data == b"[DONE]":
                        events.append("done")
                        continue
                    event = json.loads(data)
                    if "error" in event:
                        events.append(f"error:{event['error'].get('code')}")
                    elif not events:
                        events.append("chunk")
                        started.release()
            except aiohttp.ClientPayloadError:
                events.append("cut")  # the body ended without its terminating chunk
        return request_id, events

    async def wait(http: aiohttp.ClientSession) -> tuple[str, tuple[int, str]]:
        body = {"model": "wait", "messages": [{"role": "user", "content": "hold"}]}
        async with http.post(url, json=body) as resp:
            answer = await resp.json()
            return resp.headers["x-turnout-request-id"], (resp.status, answer["error"].get("code"))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        stream_tasks = [asyncio.create_task(stream(http)) for _ in range(streams)]
        wait_tasks = [asyncio.create_task(wait(http)) for _ in range(waiting)]
        for _ in range(streams):
            await started.acquire()
        while len(await asyncio.to_thread(stuck.requests)) < waiting:  # noqa: ASYNC110 - polls the fake over HTTP
            await asyncio.sleep(0.05)
        os.kill(served.proc.pid, signal.SIGTERM)
        return dict(await asyncio.gather(*stream_tasks)), dict(await asyncio.gather(*wait_tasks))
