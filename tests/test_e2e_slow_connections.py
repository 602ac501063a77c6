"""2,000 slow clients against a real ``turnout serve`` held to 1,024 open files: half send their
headers a byte at a time, half send a body a byte at a time. Each is closed by the server
within about its timeout (or sooner, to make room at the connection cap), and a normal client
making requests all the while — fresh connections to /healthz, chat completions through the
official SDK — still gets at least 99% of its answers.

Without the timeouts and the cap the slow clients hold every descriptor and new clients get
empty replies (issue 12).
"""

from __future__ import annotations

import asyncio
import json
import resource
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import openai
import pytest

from tests.serving import Process, turnout_serve

pytestmark = pytest.mark.slow

SERVER_FDS = 1024
SLOW_HEADERS = 1000
SLOW_BODIES = 1000
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 3.0
TRICKLE_EVERY_S = 0.5  # well inside both timeouts: only a deadline on the whole phase stops them
NORMAL_RUN_S = 10.0
# What "within about the timeout" allows: the sweep's two ticks plus a loaded two-core machine.
SLACK_S = 3.0


def hold_open_files() -> None:
    """In the server process before exec: 1,024 descriptors, soft and hard (``serve`` raises
    the soft limit to the hard one, so both must be held)."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (SERVER_FDS, SERVER_FDS))


@dataclass
class Slow:
    kind: str  # "headers" or "body"
    sent_start_at: float = 0.0  # when its request began (the timeout counts from here)
    closed_at: float | None = None
    answer: bytes = b""
    refused: bool = False  # the connection failed at once


@dataclass
class Normal:
    attempts: int = 0
    answers: int = 0
    failures: list[str] = field(default_factory=list)

    def record(self, ok: bool, what: str) -> None:
        self.attempts += 1
        if ok:
            self.answers += 1
        else:
            self.failures.append(what)


def test_two_thousand_slow_clients_are_closed_and_a_normal_client_still_gets_its_answers(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = SLOW_HEADERS + SLOW_BODIES + 500
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"this test opens {need} sockets; the hard open-file limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need) if hard == resource.RLIM_INFINITY else hard, hard))
    upstream = Process("tests.fakes.upstream", ready_path="/v1/models")
    try:
        config = {
            "server": {
                "header_timeout_s": HEADER_TIMEOUT_S,
                "body_timeout_s": BODY_TIMEOUT_S,
                "keepalive_timeout_s": 2.0,
            },
            "targets": {"up": {"provider": "openai", "base_url": upstream.url + "/v1", "model": "m"}},
            "tasks": {"chat": {"route": ["up"]}},
        }
        path = tmp_path / "turnout.yaml"
        path.write_text(json.dumps(config))
        with turnout_serve(tmp_path, path, preexec_fn=hold_open_files) as served:
            slow, normal = asyncio.run(_attack(served.port))
            assert served.proc.poll() is None, "the gateway died"
        log = served.log.read_text()
    finally:
        upstream.stop()

    print(_summary(slow, normal))
    assert normal.attempts >= 100, "the normal client barely ran"
    assert normal.answers >= 0.99 * normal.attempts, normal.failures[:10]
    assert f"open-file limit: {SERVER_FDS} (already the hard limit)" in log
    cap = int(log.split("client connections: at most ")[1].split(";")[0])
    assert cap < SERVER_FDS
    assert "closed client connections:" in log  # the summary line

    still_open = [s for s in slow if s.closed_at is None]
    assert not still_open, f"{len(still_open)} slow connections were never closed"
    for s in slow:
        assert s.closed_at is not None
        limit = HEADER_TIMEOUT_S if s.kind == "headers" else BODY_TIMEOUT_S
        held = s.closed_at - s.sent_start_at
        assert held <= limit + SLACK_S, f"a slow {s.kind} connection was held {held:.1f}s"
        # Closed by its deadline (408) or to make room at the cap (503); never answered 2xx.
        assert s.answer == b"" or s.answer.startswith((b"HTTP/1.1 408 ", b"HTTP/1.1 503 ")), s.answer[:80]
    assert any(s.answer.startswith(b"HTTP/1.1 408 ") for s in slow if s.kind == "headers")
    assert any(s.answer.startswith(b"HTTP/1.1 408 ") for s in slow if s.kind == "body")


async def _attack(port: int) -> tuple[list[Slow], Normal]:
    normal = Normal()
    stop = asyncio.Event()
    clients = [
        asyncio.create_task(_health_on_new_connections(port, normal, stop)),
        asyncio.create_task(_chat_through_the_sdk(port, normal, stop)),
    ]
    await asyncio.sleep(0.5)  # the normal client is under way before the attack
    loop = asyncio.get_running_loop()
    start = loop.time()
    kinds = ["headers", "body"] * min(SLOW_HEADERS, SLOW_BODIES)  # interleaved: both kinds at once
    kinds += ["headers"] * (SLOW_HEADERS - SLOW_BODIES) + ["body"] * (SLOW_BODIES - SLOW_HEADERS)
    slow = [Slow(kind) for kind in kinds]
    attackers = [asyncio.create_task(_slow_client(port, s)) for s in slow]
    await asyncio.sleep(max(0.0, NORMAL_RUN_S - (loop.time() - start)))
    stop.set()
    await asyncio.gather(*clients)
    _, pending = await asyncio.wait(attackers, timeout=BODY_TIMEOUT_S + 2 * SLACK_S)
    for task in pending:  # still open: recorded as never closed
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return slow, normal


async def _slow_client(port: int, s: Slow) -> None:
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        s.refused = True
        s.sent_start_at = s.closed_at = loop.time()
        return
    if s.kind == "headers":
        first, rest = b"P", b"OST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nx-pad: " + b"a" * 200
    else:
        first = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
            b"content-length: 100000\r\n\r\n{"
        )
        rest = b'"model": "chat", "messages": [' + b" " * 1000
    sender = None
    try:
        writer.write(first)
        s.sent_start_at = loop.time()
        sender = asyncio.create_task(_trickle(writer, rest))
        s.answer = await reader.read()  # until the server closes
    except OSError:
        pass  # reset by the server: closed too
    finally:
        s.closed_at = loop.time()
        if sender is not None:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        writer.close()


async def _trickle(writer: asyncio.StreamWriter, data: bytes) -> None:
    try:
        for i in range(len(data)):
            await asyncio.sleep(TRICKLE_EVERY_S)
            writer.write(data[i : i + 1])
            await writer.drain()
    except OSError:
        pass


async def _health_on_new_connections(port: int, normal: Normal, stop: asyncio.Event) -> None:
    """A new client each time, as a load balancer's health check or a short-lived job would be."""
    url = f"http://127.0.0.1:{port}/healthz"
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True), timeout=timeout) as http:
        while not stop.is_set():
            try:
                async with http.get(url) as resp:
                    await resp.read()
                    normal.record(resp.status == 200, f"/healthz {resp.status}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                normal.record(False, f"/healthz {type(exc).__name__}: {exc}")
            await asyncio.sleep(0.02)


async def _chat_through_the_sdk(port: int, normal: Normal, stop: asyncio.Event) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=10
    ) as client:
        while not stop.is_set():
            try:
                done = await client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
                normal.record(bool(done.choices), "chat without choices")
            except openai.OpenAIError as exc:
                normal.record(False, f"chat {type(exc).__name__}: {exc}")
            await asyncio.sleep(0.02)


def _summary(slow: list[Slow], normal: Normal) -> str:
    lines = [f"normal client: {normal.answers}/{normal.attempts} answered"]
    for kind in ("headers", "body"):
        group = [s for s in slow if s.kind == kind]
        held = sorted(s.closed_at - s.sent_start_at for s in group if s.closed_at is not None)
        by_answer = {
            "408": sum(s.answer.startswith(b"HTTP/1.1 408") for s in group),
            "503": sum(s.answer.startswith(b"HTTP/1.1 503") for s in group),
            "closed": sum(s.answer == b"" for s in group),
            "refused at connect": sum(s.refused for s in group),
        }
        if held:
            lines.append(
                f"slow {kind}: {len(held)}/{len(group)} closed, held median {held[len(held) // 2]:.2f}s, "
                f"max {held[-1]:.2f}s; {by_answer}"
            )
    return "\n".join(lines)
