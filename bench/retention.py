"""What one retention run costs the SQLite ledger: every call it makes on the store's thread
(each one a wait for whatever the ledger writer queues behind it) and how long a writer's
batches waited meanwhile. The ledger writer journals a batch the store has not committed
within 100 ms (``turnout.ledger.writer``: it spills), so the longest call is the figure.

    python bench/retention.py [--rows N] [--scenario NAME ...] [--runs 2] [--keep DIR]

Each scenario builds a ledger of ``--rows`` rows with the store's own ``write_batch`` (the
same rows every time: a fixed seed and a fixed clock; oldest first, as a gateway writes them),
then runs ``RetentionPurge.run_once``
``--runs`` times, the clock one hour (the default ``purge_interval_s``) later each time, while
a probe writes a batch of 50 rows every 10 ms (5,000 rows/s) through the same store:

* ``steady``: one rule (``ledger_days: 30``) over 30 days of rows and the hour past them that
  the next run deletes;
* ``mixed``: the README's rules (365 days by default; acme 90, faq 180, acme/faq 30) over a
  year of rows, each tenant and task holding an hour past its own cutoff: the previous run
  was an hour ago;
* ``first``: ``ledger_days: 30`` switched on over 90 days of rows: two thirds go.

Files go to a temporary folder (removed) or ``--keep DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from turnout.config import Config, validate
from turnout.ledger.record import AttemptRecord, LedgerRow
from turnout.ledger.sqlite import SQLiteStore
from turnout.privacy.retention.purge import RetentionPurge
from turnout.privacy.retention.rules import DAY_S, Rules

NOW = 1_800_000_000.0
HOUR = 3600.0
TENANTS = ("acme", "globex", "initech", "umbrella")
TASKS = ("faq", "support", "summarize", "extract", "classify", "translate", "route", "draft")
SLOW_S = 0.1  # the writer journals a batch not committed within this (``LedgerWriter``)
PROBE_ROWS, PROBE_EVERY_S = 50, 0.01

STEADY = [{"ledger_days": 30}]
MIXED = [
    {"ledger_days": 365},
    {"tenant": "acme", "ledger_days": 90},
    {"task": "faq", "ledger_days": 180},
    {"tenant": "acme", "task": "faq", "ledger_days": 30},
]
# name: (rules, days of rows, whether the previous run was an hour ago)
SCENARIOS: dict[str, tuple[list[dict[str, Any]], float, bool]] = {
    "steady": (STEADY, 30 + 1 / 24, True),
    "mixed": (MIXED, 365 + 1 / 24, True),
    "first": (STEADY, 90, False),
}


def config(rules: list[dict[str, Any]]) -> Config:
    return validate(
        {
            "targets": {"t": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}},
            "tenants": {name: {"keys": [f"{name}-key-0000000000"]} for name in TENANTS},
            "tasks": {name: {"route": ["t"]} for name in TASKS},
            "retention": {"rules": rules},
        }
    )


def row(i: int, started_at: float, tenant: str, task: str, rng: random.Random) -> LedgerRow:
    return LedgerRow(
        request_id=f"req-{rng.getrandbits(64):016x}-{i}",  # random, as the gateway's are
        started_at=started_at,
        tenant=tenant,
        task=task,
        data_class="internal",
        stream=i % 3 == 0,
        user=f"u-{rng.randrange(5000):05d}",
        release=None if task in ("route", "draft") else f"{task}@{rng.randrange(3)}",
        target="qwen-vllm",
        replica="gpu-2",
        model_version="qwen3-32b",
        status=200,
        attempts=[AttemptRecord("qwen-vllm", "gpu-2", None, 812.5, 0.0, 0.000412)],
        fallback=False,
        prompt_tokens=412,
        completion_tokens=128,
        cost_usd=0.000412,
        latency_ms=812.5,
        queue_ms=0.4,
        ttft_ms=210.0,
        generation_ms=603.8,
        capture_mode="metadata",
        endpoint="chat.completions",
        finish_reason="stop",
    )


async def build(path: Path, rows: int, rules: list[dict[str, Any]], days: float, settled: bool) -> None:
    """``rows`` rows spread over ``days`` before NOW, written oldest first as a gateway writes
    them; ``settled``: less those of each tenant and task more than an hour past its rule (the
    previous run was an hour ago)."""
    effective = Rules(config(rules))
    rng = random.Random(7)
    picked: list[tuple[float, str, str]] = []
    while len(picked) < rows:
        tenant, task = rng.choice(TENANTS), rng.choice(TASKS)
        started_at = NOW - rng.random() * days * DAY_S
        keep = effective.get(tenant, task).ledger_days
        if not settled or keep is None or started_at >= NOW - keep * DAY_S - HOUR:
            picked.append((started_at, tenant, task))
    picked.sort()
    store = SQLiteStore(path)
    await store.open()
    for start in range(0, rows, 5000):
        chunk = picked[start : start + 5000]
        await store.write_batch([row(start + k, *each, rng) for k, each in enumerate(chunk)])
    await store.aclose()


class Timed:
    """The store, each call the purge makes timed (the writer probe's calls are not)."""

    def __init__(self, inner: SQLiteStore) -> None:
        self.inner = inner
        self.calls: dict[str, list[float]] = defaultdict(list)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.inner, name)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await method(*args, **kwargs)
            finally:
                self.calls[name].append(time.perf_counter() - t0)

        return timed


async def probe(store: SQLiteStore, stop: asyncio.Event, waits: list[float]) -> None:
    """A writer's batches meanwhile: each one's time from submit to commit."""
    rng = random.Random(11)
    n = 0
    while not stop.is_set():
        batch = [row(900_000_000 + n + k, NOW + n + k, "acme", "support", rng) for k in range(PROBE_ROWS)]
        n += PROBE_ROWS
        t0 = time.perf_counter()
        await store.write_batch(batch)
        waits.append(time.perf_counter() - t0)
        await asyncio.sleep(PROBE_EVERY_S)


async def scenario(name: str, rows: int, runs: int, folder: Path) -> None:
    rules, days, settled = SCENARIOS[name]
    path = folder / f"{name}.db"
    t0 = time.perf_counter()
    await build(path, rows, rules, days, settled)
    print(f"{name}: {rows:,} rows over {days:g} days built in {time.perf_counter() - t0:.1f} s")
    store = SQLiteStore(path)
    await store.open()
    try:
        now = [NOW]
        timed = Timed(store)
        purge = RetentionPurge(config(rules), timed, None, clock=lambda: now[0])  # type: ignore[arg-type]
        for n in range(runs):
            timed.calls.clear()
            stop, waits = asyncio.Event(), list[float]()
            prober = asyncio.create_task(probe(store, stop, waits))
            await asyncio.sleep(0.05)
            t0 = time.perf_counter()
            run = await purge.run_once()
            wall = time.perf_counter() - t0
            stop.set()
            await prober
            every = [s for each in timed.calls.values() for s in each]
            calls = ", ".join(
                f"{k} {len(v)}× (max {max(v) * 1e3:.1f} ms, sum {sum(v) * 1e3:.0f} ms)" for k, v in timed.calls.items()
            )
            print(
                f"  run {n + 1}: deleted {run.total:,} rows in {wall * 1e3:.0f} ms; longest call "
                f"{max(every) * 1e3:.1f} ms; {calls}"
            )
            slow = sum(w > SLOW_S for w in waits)
            print(
                f"    writer probe: {len(waits)} batches, median {statistics.median(waits) * 1e3:.1f} ms, "
                f"max {max(waits) * 1e3:.1f} ms, over {SLOW_S * 1e3:.0f} ms (journaled): {slow}"
            )
            now[0] += HOUR
    finally:
        await store.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=800_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--keep", type=Path, help="build the ledgers here and leave them")
    args = parser.parse_args()
    names = args.scenario or list(SCENARIOS)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        for name in names:
            await scenario(name, args.rows, args.runs, args.keep)
        return
    with tempfile.TemporaryDirectory(prefix="turnout-retention-") as folder:
        for name in names:
            await scenario(name, args.rows, args.runs, Path(folder))


if __name__ == "__main__":
    asyncio.run(main())
