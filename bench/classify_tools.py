"""What data classification (``classify``) and tool allowlists (``tools``) cost per request.

    python bench/classify_tools.py                 # 10,000 requests per run, 5 rounds
    python bench/classify_tools.py -n 20000 -r 7

Two parts, one run each, the median over rounds:

* the stages alone: ``Classifier.classify`` on chat bodies of several sizes (clean ones, which
  are read whole, and one whose PII comes first), in µs per request and per KB; the tool checks:
  ``Rules.admit`` (two declared tools, their schemas compiled once and cached) and one checked
  tool call;
* the gateway in-process (the App answering from an instant provider, no sockets, no ledger):
  loop µs per request with neither, with ``classify`` on a clean short body, on a clean 4 KB
  body, and with ``tools`` on a request that declares two tools and gets one call back.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from turnout.config import validate  # noqa: E402
from turnout.providers.base import Call, Completion, Health, Load, Stream, Usage  # noqa: E402
from turnout.safety.classify import resolve as classifier  # noqa: E402
from turnout.safety.tools import resolve as tool_rules  # noqa: E402
from turnout.serving.app import App  # noqa: E402

PROSE = (
    "Hello, I ordered a blue kettle last week (order 88213, shipped 2024-05-02) and it arrived with a "
    "cracked lid. The box looked fine. Could you send a replacement lid or should I return the whole "
    "kettle? I would prefer a replacement since I use it daily. Version 2.4.1 of your app shows the "
    "order as delivered. Thanks for your help, and sorry for the long message. "
)
SYSTEM = "You are a helpful support assistant for a kitchenware shop. Answer briefly and politely. " * 4
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
ORDER = {
    "type": "function",
    "function": {"name": "lookup_order", "parameters": {"type": "object", "properties": {"id": {"type": "integer"}}}},
}
CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def chat(user: str, system: str | None = None, **extra: Any) -> dict[str, Any]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return {"model": "chat", "messages": messages, **extra}


def config(task: dict[str, Any]) -> Any:
    return validate(
        {
            "store": {"kind": "none"},
            "observability": {"metrics": False},
            "targets": {"t": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}},
            "tasks": {"chat": {"route": ["t"], **task}},
        }
    )


def best_us(fn: Callable[[], Any], n: int, rounds: int) -> float:
    runs = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(runs)


def stages(n: int, rounds: int) -> None:
    found = classifier(config({"classify": {"detect": ["pii", "secrets"]}}), None, "chat")
    assert found is not None
    bodies = {
        "clean, 60 B": chat("How do I descale my kettle?"),
        "clean, 1 KB": chat(PROSE * 3),
        "clean, 4 KB": chat(PROSE * 11, SYSTEM),
        "clean, 16 KB": chat(PROSE * 46, SYSTEM),
        "no digits, 4 KB": chat(PROSE.translate(str.maketrans("", "", "0123456789")) * 11, SYSTEM),
        "PII first, 4 KB": chat("Reach me at jane.doe@example.com. " + PROSE * 11, SYSTEM),
    }
    print("classify (pii, secrets), a public request:")
    print(f"  {'body':<18} {'µs/request':>11} {'µs/KB':>8} {'raised':>7}")
    for name, body in bodies.items():
        size = sum(len(m["content"].encode()) for m in body["messages"]) / 1024
        us = best_us(lambda body=body: found.classify("public", body), n, rounds)
        raised = found.classify("public", body) is not None
        print(f"  {name:<18} {us:11.1f} {us / size:8.1f} {raised!s:>7}")
    rules = tool_rules(config({"tools": {"allow": ["get_weather", "lookup_order"]}}), None, "chat")
    assert rules is not None
    body = chat("Weather in Paris?", tools=[WEATHER, ORDER])
    guard = rules.admit(body)
    print("tools:")
    print(f"  admit, 2 declared tools (compiled once)   {best_us(lambda: rules.admit(body), n, rounds):7.1f} µs")
    check = best_us(lambda: guard.verify("get_weather", '{"city": "Paris"}', relayed=False), n, rounds)
    print(f"  one tool call checked against its schema  {check:7.1f} µs")


class Instant:
    """A provider that answers at once: text, or one tool call when the request offers tools."""

    async def complete(self, call: Call) -> Completion:
        message: dict[str, Any] = {"role": "assistant", "content": "hi"}
        if call.body.get("tools"):
            message = {"role": "assistant", "content": None, "tool_calls": [CALL]}
        body = {
            "id": "x",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
        return Completion(body, Usage(3, 1), "m", "r0")

    async def stream(self, call: Call) -> Stream:
        raise NotImplementedError

    async def health(self) -> Health:
        return Health(True)

    def load(self) -> Load:
        return Load(0, None)

    async def aclose(self) -> None:
        return None


async def loop_us(task: dict[str, Any], body: dict[str, Any], n: int) -> float:
    raw = orjson.dumps(body)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
        "query_string": b"",
    }
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    app = App(config(task), {"t": Instant()})  # type: ignore[dict-item]
    await app.runtime.start()
    try:
        for _ in range(300):  # warm up
            await app.http(dict(scope), receive, send)
        t0 = time.perf_counter()
        for _ in range(n):
            await app.http(dict(scope), receive, send)
        wall = time.perf_counter() - t0
    finally:
        await app.runtime.aclose()
    assert set(statuses) == {200}, set(statuses)
    return wall / n * 1e6


def gateway(n: int, rounds: int) -> None:
    classify = {"classify": {"detect": ["pii", "secrets"]}}
    tools = {"tools": {"allow": ["get_weather", "lookup_order"]}}
    short, long = chat("How do I descale my kettle?"), chat(PROSE * 11, SYSTEM)
    with_tools = chat("Weather in Paris?", tools=[WEATHER, ORDER])
    # mode: (task config, body, the mode it is compared with)
    modes: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
        "neither, short": ({}, short, "neither, short"),
        "classify, short": (classify, short, "neither, short"),
        "neither, 4 KB": ({}, long, "neither, 4 KB"),
        "classify, 4 KB": (classify, long, "neither, 4 KB"),
        "neither, tools": ({}, with_tools, "neither, tools"),
        "tools, 1 call": (tools, with_tools, "neither, tools"),
    }
    results: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(rounds):
        for mode, (task, body, _) in modes.items():
            results[mode].append(asyncio.run(loop_us(task, body, n)))
    print(f"gateway in-process, {n} requests x {rounds} rounds (loop µs/request, median, and added):")
    for mode, (_, _, base) in modes.items():
        us = statistics.median(results[mode])
        print(f"  {mode:<18} {us:8.1f} {us - statistics.median(results[base]):+8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10_000, help="requests per run")
    parser.add_argument("-r", "--rounds", type=int, default=5)
    args = parser.parse_args()
    stages(args.n, args.rounds)
    gateway(args.n, args.rounds)


if __name__ == "__main__":
    main()
