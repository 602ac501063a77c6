"""What tracing costs: ledger rows recorded by ``Tracing.record`` from an event loop, the way the
gateway records each finished request, exported over OTLP/HTTP to a collector in a process of
its own (aiohttp, which decodes each request and counts its spans).

    python bench/tracing.py [--seconds 5] [--rate ROWS_PER_S] [--port 19901]

Rows are ``bench/ledger_rows.py``'s (two attempts: three spans a row). For ``--seconds`` the loop
records rows in chunks of 64, as fast as it can or at ``--rate`` rows a second, yielding between
chunks; then tracing shuts down (what is queued gets its few seconds to leave). Prints the time
``record`` takes on the loop a row, the process's CPU a row (the export thread's included), the
spans a second the collector received while rows were offered, and the spans dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time
import urllib.request
from typing import Any

from ledger_rows import rows

from turnout.config import validate
from turnout.observe.tracing import Tracing

CHUNK = 64


def collector(port: int, ready: Any) -> None:
    """The collector's process: counts the spans of each export; GET /count answers the total."""
    from aiohttp import web
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    count = [0]
    answer = ExportTraceServiceRequest().SerializeToString()

    async def traces(request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        count[0] += sum(len(s.spans) for r in export.resource_spans for s in r.scope_spans)
        return web.Response(body=answer, content_type="application/x-protobuf")

    async def total(request: web.Request) -> web.Response:
        return web.Response(text=str(count[0]))

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/count", total)
    web.run_app(app, host="127.0.0.1", port=port, print=lambda *_: ready.set(), handle_signals=True)


def received(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/count") as answer:
        return int(answer.read())


def config(port: int) -> Any:
    return validate(
        {
            "store": {"kind": "none"},
            "observability": {"otlp_endpoint": f"http://127.0.0.1:{port}"},
            "targets": {
                "qwen-vllm": {"provider": "openai", "base_url": "http://qwen.invalid/v1", "model": "qwen2.5-7b"},
                "deepseek-br": {"provider": "bedrock", "region": "us-east-1", "model": "deepseek.v3-v1:0"},
            },
            "tasks": {"support-reply": {"route": ["qwen-vllm", "deepseek-br"]}},
        }
    )


async def offer(tracing: Tracing, seconds: float, rate: float | None) -> tuple[int, float]:
    """Rows recorded for ``seconds``: how many, and the time spent in ``record``."""
    batch = rows(CHUNK * 64, "bench")
    in_record = 0.0
    offered = 0
    start = time.perf_counter()
    while (now := time.perf_counter()) - start < seconds:
        if rate is not None and offered > (now - start) * rate:
            await asyncio.sleep(CHUNK / rate / 4)
            continue
        chunk = batch[offered % len(batch) :][:CHUNK]
        t0 = time.perf_counter()
        for row in chunk:
            tracing.record(row)
        in_record += time.perf_counter() - t0
        offered += len(chunk)
        await asyncio.sleep(0)
    return offered, in_record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, help="rows offered a second (default: as many as the loop can)")
    parser.add_argument("--port", type=int, default=19901)
    args = parser.parse_args()

    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Event()
    server = spawn.Process(target=collector, args=(args.port, ready), daemon=True)
    server.start()
    try:
        if not ready.wait(30):
            raise SystemExit("the collector did not start")
        tracing = Tracing.from_config(config(args.port))
        assert tracing is not None
        before = received(args.port)
        cpu0, t0 = time.process_time(), time.perf_counter()
        offered, in_record = asyncio.run(offer(tracing, args.seconds, args.rate))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        during = received(args.port) - before
        tracing.shutdown()
        cpu_all = time.process_time() - cpu0
        total = received(args.port) - before
    finally:
        server.terminate()
        server.join()
    spans = offered * 3
    print(
        f"rows offered {offered:,} ({offered / wall:,.0f}/s, {spans / wall:,.0f} spans/s)\n"
        f"record on the loop: {in_record / offered * 1e6:.2f} us a row\n"
        f"process CPU: {cpu / offered * 1e6:.1f} us a row while offered, "
        f"{cpu_all / offered * 1e6:.1f} with the shutdown's export\n"
        f"collector received {during / wall:,.0f} spans/s while offered; "
        f"{total:,} of {spans:,} in all, {spans - total:,} dropped ({(spans - total) / spans:.1%})"
    )


if __name__ == "__main__":
    main()
