"""Sustained ledger insert rate, rows/s: each store on its own (``write_batch`` in batches of
``store.batch_size``, one after another) and through the full path (``LedgerWriter.submit`` →
queue → store, the way the gateway writes). Rows look like a gateway's: every column set, two
attempts (a failed one, then a fallback), unique request ids.

    python bench/ledger_rows.py [--rows N] [--postgres DSN | --no-postgres]

SQLite writes to a fresh file in a temporary folder (removed afterwards); PostgreSQL to a schema
of its own, dropped afterwards. One line per store and path, for ``bench/ledger.sh``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from turnout.config import StoreConfig
from turnout.ledger.record import AttemptRecord, LedgerRow
from turnout.ledger.store import LedgerStore
from turnout.ledger.writer import LedgerWriter

BATCH = StoreConfig().batch_size
DSN = "postgresql://postgres@127.0.0.1:5432/test"


def rows(n: int, run: str) -> list[LedgerRow]:
    start = time.time()
    return [
        LedgerRow(
            request_id=f"{run}-{i:08d}",
            started_at=start + i / 1000,
            tenant="acme",
            task="support-reply",
            data_class="internal",
            stream=i % 3 == 0,
            user="u-5f2c9a1e",
            release="support-reply@7",
            prompt_version="p3",
            target="deepseek-br",
            replica="us-east-1",
            model_version="deepseek.v3-v1:0",
            status=200,
            attempts=[
                AttemptRecord("qwen-vllm", "gpu-2", "upstream_timeout", 2000.0, 0.0, None),
                AttemptRecord("deepseek-br", "us-east-1", None, 812.5, 2001.3, 0.000412),
            ],
            fallback=True,
            prompt_tokens=412,
            completion_tokens=128,
            cost_usd=0.000412,
            latency_ms=2813.8,
            queue_ms=0.4,
            ttft_ms=2210.0,
            generation_ms=603.8,
            fallback_ms=2001.3,
            capture_mode="metadata",
            episode_id=f"ep-{i // 10}",
            usage_estimated=False,
        )
        for i in range(n)
    ]


async def store_rate(store: LedgerStore, batch: list[LedgerRow]) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(batch), BATCH):
        await store.write_batch(batch[i : i + BATCH])
    return len(batch) / (time.perf_counter() - t0)


async def writer_rate(store: LedgerStore, batch: list[LedgerRow]) -> float:
    """Submitted at once (the queue holds them all), timed until the last is committed."""
    writer = LedgerWriter(store, BATCH, queue_size=len(batch))
    t0 = time.perf_counter()
    writer.start()
    for row in batch:
        writer.submit(row)
    await writer.aclose()
    elapsed = time.perf_counter() - t0
    if writer.written != len(batch):
        raise SystemExit(f"the writer wrote {writer.written} of {len(batch)} rows")
    return len(batch) / elapsed


async def measure(name: str, open_store: object, n: int) -> None:
    assert callable(open_store)
    store: LedgerStore = open_store()
    await store.open()
    try:
        direct = await store_rate(store, rows(n, "direct"))
        full = await writer_rate(store, rows(n, "writer"))
        if await store.count() != 2 * n:
            raise SystemExit(f"{name}: {await store.count()} rows stored, expected {2 * n}")
    finally:
        await store.aclose()
    print(f"{name:<11} write_batch {direct:8.0f} rows/s   LedgerWriter.submit {full:8.0f} rows/s   ({n} rows each)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--postgres", default=DSN, help="DSN of a PostgreSQL database to write to")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()

    from turnout.ledger.sqlite import SQLiteStore

    with tempfile.TemporaryDirectory() as folder:
        await measure("SQLite", lambda: SQLiteStore(Path(folder) / "ledger.db"), args.rows)
    if args.no_postgres:
        return
    import asyncpg

    from turnout.ledger.postgres import PostgresStore

    schema = f"turnout_bench_rows_{uuid.uuid4().hex[:8]}"
    try:
        await measure("PostgreSQL", lambda: PostgresStore(args.postgres, schema=schema), args.rows)
    finally:
        conn = await asyncpg.connect(args.postgres)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
