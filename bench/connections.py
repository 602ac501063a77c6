"""What the connection guard (turnout.serving.connections) costs against plain uvicorn.

    .venv/bin/python bench/connections.py           # in-process, about 30 s
    .venv/bin/python bench/connections.py --wrk     # also real sockets under wrk, about 2 min

In process, uvicorn's httptools protocol and the guarded one are driven through a fake
transport on uvloop with a trivial ASGI app, in interleaved rounds: the time per request on a
keep-alive connection, per connection (one request each, then closed), and one sweep over
10,000 open connections. With ``--wrk``, two uvicorn servers (plain and guarded) on CPU 0 and
wrk on CPU 1, interleaved rounds, keep-alive and ``connection: close``. Medians are printed.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from turnout.serving.connections import Limits, protocol_class

REQUEST = b"GET /healthz HTTP/1.1\r\nhost: bench\r\nuser-agent: bench\r\naccept: */*\r\n\r\n"
BODY = b'{"status":"ok"}'
LIMITS = Limits(10.0, 30.0, 5.0, 1_000_000)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    head = [(b"content-type", b"application/json"), (b"content-length", b"15")]
    await send({"type": "http.response.start", "status": 200, "headers": head})
    await send({"type": "http.response.body", "body": BODY})


class Transport(asyncio.Transport):
    """Enough of a socket transport for the protocol: counts answers, closes on request."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.protocol: asyncio.Protocol | None = None
        self.answered: asyncio.Future[None] | None = None
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: Any) -> None:
        if bytes(data).endswith(BODY) and self.answered is not None and not self.answered.done():
            self.answered.set_result(None)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing and self.protocol is not None:
            self.closing = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def uvicorn_config(http: Any) -> uvicorn.Config:
    config = uvicorn.Config(app, http=http, lifespan="off", access_log=False, log_level="warning")
    config.load()
    return config


async def per_request(protocol: type[HttpToolsProtocol], n: int) -> float:
    loop = asyncio.get_running_loop()
    state = ServerState()
    proto = protocol(config=uvicorn_config(protocol), server_state=state, app_state={})
    transport = Transport(loop)
    transport.protocol = proto
    proto.connection_made(transport)
    start = time.perf_counter()
    for _ in range(n):
        transport.answered = loop.create_future()
        proto.data_received(REQUEST)
        await transport.answered
    elapsed = time.perf_counter() - start
    transport.close()
    await asyncio.sleep(0)
    return elapsed / n * 1e6


async def per_connection(protocol: type[HttpToolsProtocol], n: int) -> float:
    loop = asyncio.get_running_loop()
    state = ServerState()
    config = uvicorn_config(protocol)
    start = time.perf_counter()
    for _ in range(n):
        proto = protocol(config=config, server_state=state, app_state={})
        transport = Transport(loop)
        transport.protocol = proto
        proto.connection_made(transport)
        transport.answered = loop.create_future()
        proto.data_received(REQUEST)
        await transport.answered
        transport.close()
        await asyncio.sleep(0)  # connection_lost
    elapsed = time.perf_counter() - start
    return elapsed / n * 1e6


async def sweep(n: int) -> float:
    """One sweep over ``n`` open keep-alive connections (each answered once), in ms."""
    loop = asyncio.get_running_loop()
    protocol = protocol_class(LIMITS)
    state = ServerState()
    config = uvicorn_config(protocol)
    conns = []
    for _ in range(n):
        proto = protocol(config=config, server_state=state, app_state={})
        transport = Transport(loop)
        transport.protocol = proto
        proto.connection_made(transport)
        transport.answered = loop.create_future()
        proto.data_received(REQUEST)
        await transport.answered
        conns.append(transport)
    guard = protocol.guard  # type: ignore[attr-defined]
    times = []
    for _ in range(20):
        start = time.perf_counter()
        guard._sweep()
        times.append(time.perf_counter() - start)
    for transport in conns:
        transport.close()
    await asyncio.sleep(0)
    return statistics.median(times) * 1e3


async def in_process(rounds: int = 15) -> None:
    guarded = protocol_class(LIMITS)
    kinds: dict[str, type[HttpToolsProtocol]] = {"plain uvicorn": HttpToolsProtocol, "guarded": guarded}
    req: dict[str, list[float]] = {k: [] for k in kinds}
    conn: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for name, protocol in kinds.items():
            req[name].append(await per_request(protocol, 20_000))
            conn[name].append(await per_connection(protocol, 5_000))
    print(f"in process, uvloop, median of {rounds} interleaved rounds (us):")
    for name in kinds:
        print(
            f"  {name:14} per keep-alive request {statistics.median(req[name]):.3f}  "
            f"per connection {statistics.median(conn[name]):.3f}"
        )
    d_req = statistics.median(req["guarded"]) - statistics.median(req["plain uvicorn"])
    d_conn = statistics.median(conn["guarded"]) - statistics.median(conn["plain uvicorn"])
    print(f"  guarded - plain: {d_req:+.3f} us per request, {d_conn:+.3f} us per connection")
    print(f"  one sweep over 10,000 open connections: {await sweep(10_000):.2f} ms")


# -- real sockets under wrk -----------------------------------------------------------------

SERVER = """
import sys, uvicorn
sys.path.insert(0, {bench!r})
from connections import app, LIMITS
from turnout.serving.connections import protocol_class
http = protocol_class(LIMITS) if sys.argv[2] == "guarded" else "httptools"
uvicorn.run(app, port=int(sys.argv[1]), loop="uvloop", http=http, access_log=False, log_level="warning",
            backlog=4096)
"""


def cpu_s(pid: int) -> float:
    """The process's user + system CPU seconds so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(port: int, pid: int, conns: int, secs: int, close: bool) -> tuple[float, float]:
    """Requests per second, and the server's CPU microseconds per request (steadier than the
    rate on a shared machine)."""
    args = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{secs}s"]
    if close:
        args += ["-H", "connection: close"]
    url = f"http://127.0.0.1:{port}/healthz"
    before = cpu_s(pid)
    out = subprocess.run([*args, url], capture_output=True, text=True, check=False).stdout  # noqa: S603
    used = cpu_s(pid) - before
    rps = float(next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec")))
    total = int(next(line.split()[0] for line in out.splitlines() if "requests in" in line))
    return rps, used / total * 1e6


def under_wrk(rounds: int = 6, secs: int = 4) -> None:
    code = SERVER.format(bench=str(Path(__file__).parent))
    ports = {"plain": 18090, "guarded": 18091}
    servers = {
        name: subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", code, str(port), name])  # noqa: S603, S607
        for name, port in ports.items()
    }
    try:
        time.sleep(2)
        for close in (False, True):
            rps: dict[str, list[float]] = {k: [] for k in servers}
            cpu: dict[str, list[float]] = {k: [] for k in servers}
            for i in range(rounds):
                for name in sorted(servers, reverse=i % 2 == 1):  # alternate who goes first
                    r, c = wrk(ports[name], servers[name].pid, 32 if not close else 8, secs, close)
                    rps[name].append(r)
                    cpu[name].append(c)
            what = "connection: close @8" if close else "keep-alive @32"
            p_rps, g_rps = (statistics.median(rps[k]) for k in ("plain", "guarded"))
            p_cpu, g_cpu = (statistics.median(cpu[k]) for k in ("plain", "guarded"))
            print(
                f"wrk {what}: plain {p_rps:.0f} req/s, {p_cpu:.1f} us CPU/req; guarded {g_rps:.0f} req/s, "
                f"{g_cpu:.1f} us CPU/req ({g_cpu - p_cpu:+.1f} us)"
            )
    finally:
        for proc in servers.values():
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    uvloop.run(in_process())
    if "--wrk" in sys.argv:
        under_wrk()
