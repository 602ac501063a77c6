"""What the access log (``server.access_log``) costs per request, in-process.

    python bench/access_log.py                 # 20,000 requests per run, 5 rounds
    python bench/access_log.py -n 50000 -r 7

The gateway's App answers chat completions from an in-process provider (no sockets, no
upstream), with logging set up as ``turnout serve`` sets it up (``turnout.observe.logs``: a
queue, and a listener thread that redacts, formats and writes to a file). Each round runs
every mode in turn (access log off; on, text lines; on, JSON lines), so drift hits them alike;
the figures are the median over rounds of

* loop µs/request: wall time of the sequential request loop (the event loop's thread, which
  also waits whenever the listener thread holds the GIL), and
* CPU µs/request: the process's CPU time, the listener thread's included: what the line costs
  in all, wherever it is paid.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from turnout.config import validate  # noqa: E402
from turnout.observe import logs  # noqa: E402
from turnout.privacy.redact import RedactingFilter, Redactor  # noqa: E402
from turnout.providers.base import Call, Completion, Health, Load, Stream, Usage  # noqa: E402
from turnout.serving.app import App  # noqa: E402

BODY = b'{"model": "chat", "messages": [{"role": "user", "content": "hello there"}]}'
ANSWER = {
    "id": "x",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


class Instant:
    """A provider that answers at once."""

    async def complete(self, call: Call) -> Completion:
        return Completion(ANSWER, Usage(3, 1), "m", "r0")

    async def stream(self, call: Call) -> Stream:
        raise NotImplementedError

    async def health(self) -> Health:
        return Health(True)

    def load(self) -> Load:
        return Load(0, None)

    async def aclose(self) -> None:
        return None


async def run(app: App, n: int) -> None:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())],
        "query_string": b"",
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: Any) -> None:
        return None

    for _ in range(n):
        await app.http(dict(scope), receive, send)


async def measure(access_log: bool, fmt: str, n: int, stream: IO[str]) -> tuple[float, float]:
    raw = {
        "server": {"access_log": access_log, "log_format": fmt},
        "store": {"kind": "none"},
        "observability": {"metrics": False},
        "targets": {"t": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}},
        "tasks": {"chat": {"route": ["t"]}},
    }
    config = validate(raw)
    redaction = RedactingFilter(Redactor(os.urandom(32)), fields=fmt == "json")
    listener = logs.configure("info", fmt, redaction, access_log=access_log, stream=stream)  # type: ignore[arg-type]
    app = App(config, {"t": Instant()})  # type: ignore[dict-item]
    await app.runtime.start()
    try:
        await run(app, 500)  # warm up
        wall0, cpu0 = time.perf_counter(), time.process_time()
        await run(app, n)
        listener.stop()  # the queue written out: its CPU counts
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        await app.runtime.aclose()
        logging.getLogger().handlers.clear()
    return wall / n * 1e6, cpu / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000, help="requests per run")
    parser.add_argument("-r", "--rounds", type=int, default=5)
    args = parser.parse_args()
    modes = {"off": (False, "text"), "on, text": (True, "text"), "on, json": (True, "json")}
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "log"
        with out.open("a") as stream:
            for _ in range(args.rounds):
                for mode, (on, fmt) in modes.items():
                    results[mode].append(asyncio.run(measure(on, fmt, args.n, stream)))
        lines = len(out.read_text().splitlines())
    base_wall = statistics.median(w for w, _ in results["off"])
    base_cpu = statistics.median(c for _, c in results["off"])
    print(f"{args.n} requests x {args.rounds} rounds; {lines} log lines written")
    print(f"{'access log':<12} {'loop µs/req':>12} {'+':>7} {'CPU µs/req':>12} {'+':>7}")
    for mode, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"{mode:<12} {wall:12.1f} {wall - base_wall:7.1f} {cpu:12.1f} {cpu - base_cpu:7.1f}")


if __name__ == "__main__":
    main()
