"""One gateway in this process, driven without sockets: N requests of the bench body through
``App`` (no uvicorn, no client), then the ledger drained. Under ``bench/instructions.sh`` it is
run twice under callgrind and the difference of the two totals is what one request costs in
instructions: a count that repeats within about 1 % from run to run, where a throughput figure on
this shared machine moves by 10 % between rounds. Use it to tell a small change to the request
path from noise; quote throughput from ``bench/run.sh``.

    python bench/inprocess.py N [--config bench/cache-config.yaml] [--nap-every 32] [--nap-s 0.05]
                                [--batch ROWS]

Every ``--nap-every`` requests the loop sleeps ``--nap-s``: no request here ever waits on a
socket, so without a pause the ledger's thread would never get the GIL and its rows would pile
up in the queue (and the count would leave out the writer's work). Prints the CPU time a
request and the ledger's counters, which must show no row dropped or spilled. ``--batch``: the
ledger writes batches of exactly that many rows (``store.batch_size``, and a flush interval
long enough that no batch goes by time), so that its cost a batch and a row can be told apart.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

import uvloop

from turnout.config import load_config
from turnout.serving.app import App

HERE = Path(__file__).resolve().parent
BODY = (
    b'{"model":"bench-model","messages":[{"role":"system","content":"You are a helpful support assistant."},'
    b'{"role":"user","content":"My order 1234 has not arrived yet. What can I do?"}],"max_tokens":64}'
)  # the kit's post.lua body
SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "POST",
    "scheme": "http",
    "path": "/v1/chat/completions",
    "raw_path": b"/v1/chat/completions",
    "query_string": b"",
    "root_path": "",
    "headers": [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BODY)).encode()),
    ],
    "client": ("127.0.0.1", 40000),
    "server": ("127.0.0.1", 18030),
}


async def main(n: int, config: Path, nap_every: int, nap_s: float, batch: int | None) -> None:
    loaded = load_config(config)
    if batch is not None:
        store = loaded.store.model_copy(update={"batch_size": batch, "flush_interval_ms": 60_000})
        loaded = loaded.model_copy(update={"store": store})
    app = App(loaded)
    await app.runtime.start()
    app.ready = True
    message = {"type": "http.request", "body": BODY, "more_body": False}
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return message

    async def send(sent: Any) -> None:
        if sent["type"] == "http.response.start":
            statuses.append(sent["status"])

    async def requests(count: int) -> None:
        for i in range(count):
            await app(dict(SCOPE), receive, send)
            if i % nap_every == 0:
                await asyncio.sleep(nap_s)

    try:
        await requests(1)  # a cache's first request is its miss
        cpu = time.process_time()
        await requests(n)
        cpu = time.process_time() - cpu
        ledger = app.runtime.ledger
        print(f"{n} requests, {cpu / max(n, 1) * 1e6:.1f} us CPU a request (naps included), statuses {set(statuses)}")
        if ledger is None:
            print("ledger: none")
        else:
            await asyncio.sleep(0.5)
            print(f"ledger: written {ledger.written}, dropped {ledger.dropped}, spilled {ledger.spilled}")
    finally:
        await app.runtime.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, help="requests to time, after one first request")
    parser.add_argument("--config", type=Path, default=HERE / "cache-config.yaml")
    parser.add_argument("--nap-every", type=int, default=32)
    parser.add_argument("--nap-s", type=float, default=0.05)
    parser.add_argument("--batch", type=int, default=None, help="rows a ledger batch, exactly")
    args = parser.parse_args()
    os.environ.setdefault("TURNOUT_BENCH_DB", "/tmp/turnout-bench/inprocess.db")  # noqa: S108
    uvloop.install()
    asyncio.run(main(args.n, args.config, args.nap_every, args.nap_s, args.batch))
