"""Bedrock client stacks side by side against the wire-protocol fake, in one run.

    /tmp/bedrock-bench-venv/bin/python bench/bedrock_client.py [--seconds 2] [--stacks turnout,aiobotocore,boto3]

The fake (``tests.fakes.bedrock``) runs in its own process on CPU 1; each stack runs in a fresh
child process on CPU 0, so its import time and RSS are its own. Every stack does the gateway's
whole job for one call: OpenAI body → Converse (``to_converse``), sign, send, read, and the
answer back to OpenAI (``from_converse`` / ``StreamTranslator``); only the transport differs.

  turnout      ``BedrockProvider``: botocore's SigV4 signer and event-stream decoder over a
               pooled aiohttp session (``complete``; ``stream`` consumed to the end)
  aiobotocore  ``converse`` / ``converse_stream`` with retries off and a 64-connection pool
  boto3        the same calls through ``asyncio.to_thread`` (32 worker threads); a stream hands
               each event over from the thread, as a gateway forwarding chunks would

Per stack and operation: median and p99 latency at concurrency 1, calls/s at concurrency 32,
and the client's own CPU per call at 32 (the fake shares nothing with it, so this is the
figure that does not depend on the fake keeping up). The fake is a Python server: absolute
latencies include its cost; compare stacks with each other, within this one run.

Needs a venv with aiobotocore and boto3 besides turnout (aiobotocore pins botocore to a few
patch releases, so it stays out of turnout's own venv); see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL = "deepseek.v3-v1:0"  # the ':' is percent-encoded in the path, as with real model ids
REGION = "us-east-1"
ACCESS_KEY, SECRET_KEY = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"  # the fake's keys
BODY: dict[str, Any] = {  # the same request as ../shared/bench/post.lua
    "model": "bench-model",
    "messages": [
        {"role": "system", "content": "You are a helpful support assistant."},
        {"role": "user", "content": "My order 1234 has not arrived yet. What can I do?"},
    ],
    "max_tokens": 64,
}
STACKS = ("turnout", "aiobotocore", "boto3")
CONCURRENCY = 32
TASKSET = shutil.which("taskset") or "taskset"

Call = Callable[[bool], Awaitable[int]]  # stream? → chunks (or 1) received


# -- the stacks (in the child process) -------------------------------------------------------


async def turnout_stack(url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    from turnout.config import BedrockTarget
    from turnout.providers.base import Call as TCall
    from turnout.providers.base import Timeouts
    from turnout.providers.bedrock.provider import BedrockProvider

    target = BedrockTarget(provider="bedrock", region=REGION, model=MODEL, endpoint_url=url)
    provider = BedrockProvider("bench", target)
    timeouts = Timeouts()

    async def call(stream: bool) -> int:
        c = TCall(body=BODY, stream=stream, timeouts=timeouts, request_id="bench")
        if not stream:
            done = await provider.complete(c)
            assert done.body["choices"][0]["message"]["content"]
            return 1
        s = await provider.stream(c)
        return sum([1 async for _ in s.chunks])

    return call, provider.aclose


async def aiobotocore_stack(url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    from aiobotocore.config import AioConfig  # type: ignore[import-not-found, unused-ignore]
    from aiobotocore.session import get_session  # type: ignore[import-not-found, unused-ignore]

    from turnout.providers.bedrock.stream import StreamTranslator, from_converse
    from turnout.providers.bedrock.translate import to_converse

    config = AioConfig(retries={"max_attempts": 0, "mode": "standard"}, max_pool_connections=64)
    cm = get_session().create_client(
        "bedrock-runtime",
        region_name=REGION,
        endpoint_url=url,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=config,
    )
    client = await cm.__aenter__()

    async def call(stream: bool) -> int:
        t = to_converse(BODY, structured_output=False, stream=stream)
        if not stream:
            resp = await client.converse(modelId=MODEL, **t.request)
            body = from_converse(resp, model=MODEL, created=int(time.time()), request=t)
            assert body["choices"][0]["message"]["content"]
            return 1
        resp = await client.converse_stream(modelId=MODEL, **t.request)
        translator = StreamTranslator(MODEL, int(time.time()), "chatcmpl-bedrock", t)
        n = 0
        async for event in resp["stream"]:
            for kind, payload in event.items():
                n += len(translator.feed(kind, payload))
        return n

    async def close() -> None:
        await cm.__aexit__(None, None, None)

    return call, close


async def boto3_stack(url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    from concurrent.futures import ThreadPoolExecutor

    import boto3
    from botocore.config import Config

    from turnout.providers.bedrock.stream import StreamTranslator, from_converse
    from turnout.providers.bedrock.translate import to_converse

    # The default executor has min(32, cpus + 4) threads; give it one per connection.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(CONCURRENCY))
    client = boto3.client(
        "bedrock-runtime",
        region_name=REGION,
        endpoint_url=url,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(retries={"max_attempts": 0, "mode": "standard"}, max_pool_connections=64),
    )
    end = object()

    async def call(stream: bool) -> int:
        t = to_converse(BODY, structured_output=False, stream=stream)
        if not stream:
            resp = await asyncio.to_thread(client.converse, modelId=MODEL, **t.request)
            body = from_converse(resp, model=MODEL, created=int(time.time()), request=t)
            assert body["choices"][0]["message"]["content"]
            return 1
        resp = await asyncio.to_thread(client.converse_stream, modelId=MODEL, **t.request)
        events = iter(resp["stream"])
        translator = StreamTranslator(MODEL, int(time.time()), "chatcmpl-bedrock", t)
        n = 0
        while (event := await asyncio.to_thread(next, events, end)) is not end:
            for kind, payload in event.items():  # type: ignore[attr-defined]
                n += len(translator.feed(kind, payload))
        return n

    async def close() -> None:
        client.close()

    return call, close


async def measure(stack: str, url: str, seconds: float, import_ms: float) -> dict[str, Any]:
    factory = {"turnout": turnout_stack, "aiobotocore": aiobotocore_stack, "boto3": boto3_stack}[stack]
    t0 = time.perf_counter()
    call, close = await factory(url)
    await call(False)
    out: dict[str, Any] = {"stack": stack, "import_ms": import_ms, "first_call_ms": (time.perf_counter() - t0) * 1e3}
    try:
        for stream in (False, True):
            op = "converse-stream" if stream else "converse"
            await _loop(call, stream, 1, min(0.5, seconds / 4))  # warm-up
            lat = await _latencies(call, stream, seconds)
            await _loop(call, stream, CONCURRENCY, min(0.5, seconds / 4))  # fill the pool
            cpu0, t0 = time.process_time(), time.perf_counter()
            n = await _loop(call, stream, CONCURRENCY, seconds)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
            lat.sort()
            out[op] = {
                "p50_ms": statistics.median(lat) * 1e3,
                "p99_ms": lat[int(len(lat) * 0.99)] * 1e3,
                "n1": len(lat),
                "rps32": n / wall,
                "cpu_us32": cpu / n * 1e6,
                "cpu_busy32": cpu / wall,
            }
    finally:
        await close()
    out["rss_mb"] = _rss_mb()
    return out


async def _latencies(call: Call, stream: bool, seconds: float) -> list[float]:
    lat: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline and len(lat) < 20_000:
        t0 = time.perf_counter()
        await call(stream)
        lat.append(time.perf_counter() - t0)
    return lat


async def _loop(call: Call, stream: bool, workers: int, seconds: float) -> int:
    deadline = time.perf_counter() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call(stream)
            done += 1

    await asyncio.gather(*(worker() for _ in range(workers)))
    return done


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(stack: str, url: str, seconds: float) -> None:
    os.sched_setaffinity(0, {0})
    # What a running turnout has loaded anyway (config, aiohttp, the Converse translation), so
    # that the import time below is what each transport adds to the gateway.
    import turnout.control.catalog
    import turnout.providers.bedrock.errors
    import turnout.providers.bedrock.translate
    import turnout.providers.transport

    t0 = time.perf_counter()
    if stack == "turnout":
        import turnout.providers.bedrock.provider  # noqa: F401
    elif stack == "aiobotocore":
        import aiobotocore.session  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    else:
        import boto3  # noqa: F401
    import_ms = (time.perf_counter() - t0) * 1e3
    import uvloop  # turnout serves on uvloop; every stack gets the same loop

    result = uvloop.run(measure(stack, url, seconds, import_ms))
    print(json.dumps(result))


# -- the driver ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(100):
        if proc.poll() is not None:
            sys.exit(f"the fake exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing on :{port}")


def _clear(port: int) -> None:
    """The fake records every request; empty its list between stacks so it does not grow."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"DELETE /_requests HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    while s.recv(65536):
        pass
    s.close()


def driver(stacks: list[str], seconds: float) -> None:
    port = _free_port()
    fake = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [TASKSET, "-c", "1", sys.executable, "-m", "tests.fakes.bedrock", "--port", str(port), "--verify-signature"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
    )
    # The stacks find the fake's keys in the environment, and no profile or instance metadata.
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    env |= {"AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    results = []
    try:
        _wait_port(port, fake)
        for stack in stacks:
            _clear(port)
            argv = [sys.executable, __file__, "--child", stack, "--url", f"http://127.0.0.1:{port}"]
            argv += ["--seconds", str(seconds)]
            out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False, env=env)  # noqa: S603
            if out.returncode:
                sys.exit(f"{stack} failed:\n{out.stderr[-3000:]}")
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        fake.terminate()
        fake.wait(5)
    report(results, seconds)


def report(results: list[dict[str, Any]], seconds: float) -> None:
    import aiobotocore  # type: ignore[import-not-found, unused-ignore]
    import botocore

    day = time.strftime("%Y-%m-%d", time.gmtime())
    print(f"Bedrock client stacks, {day}, one run; client on CPU 0, FakeBedrock on CPU 1")
    print(f"botocore {botocore.__version__}, aiobotocore {aiobotocore.__version__}, {seconds:g} s per measurement")
    print("absolute figures include the Python fake's own cost; compare the rows with each other")
    head = f"{'stack':<12} {'operation':<16} {'p50@1 ms':>9} {'p99@1 ms':>9} {'calls/s@32':>11}"
    head += f" {'CPU µs/call@32':>15} {'busy@32':>8}"
    print(head)
    print("-" * len(head))
    for r in results:
        for op in ("converse", "converse-stream"):
            m = r[op]
            print(
                f"{r['stack']:<12} {op:<16} {m['p50_ms']:>9.3f} {m['p99_ms']:>9.3f} {m['rps32']:>11.0f} "
                f"{m['cpu_us32']:>15.0f} {m['cpu_busy32'] * 100:>7.0f}%"
            )
    print()
    print(f"{'stack':<12} {'import ms (added)':>18} {'client + first call ms':>23} {'RSS after MB':>13}")
    for r in results:
        print(f"{r['stack']:<12} {r['import_ms']:>18.0f} {r['first_call_ms']:>23.0f} {r['rss_mb']:>13.1f}")
    base = next((r for r in results if r["stack"] == "turnout"), None)
    if base is None:
        return
    print()
    for r in results:
        if r is base:
            continue
        for op in ("converse", "converse-stream"):
            a, b = r[op], base[op]
            print(
                f"{r['stack']} / turnout, {op}: p50@1 x{a['p50_ms'] / b['p50_ms']:.2f}, "
                f"calls/s@32 x{a['rps32'] / b['rps32']:.2f}, CPU/call@32 x{a['cpu_us32'] / b['cpu_us32']:.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each measurement")
    parser.add_argument("--stacks", default=",".join(STACKS))
    parser.add_argument("--child", choices=STACKS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.url, args.seconds)
    else:
        driver([s for s in args.stacks.split(",") if s], args.seconds)


if __name__ == "__main__":
    main()
