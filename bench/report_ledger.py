"""What ``turnout report`` and ``turnout plan`` cost on a big ledger: builds a SQLite ledger of
``--rows`` mixed rows (failures, retries, fallbacks, cache hits, escalations, estimated usage,
episodes; three tenants, three tasks, four releases) over the last ``--days`` days, and writes
a config beside it. Time each command with ``/usr/bin/time -v``:

    python bench/report_ledger.py --rows 200000 --out /tmp/ledger
    /usr/bin/time -v turnout report cost --since 8d --by tenant,release -c /tmp/ledger/turnout.yaml
    /usr/bin/time -v turnout plan --task support --since 8d -c /tmp/ledger/turnout.yaml

The rows are the same every time (a fixed seed), their times relative to now.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from pathlib import Path

from turnout.ledger.record import AttemptRecord, LedgerRow
from turnout.ledger.sqlite import SQLiteStore

CONFIG = """\
targets:
  gpt: {{provider: openai, base_url: "http://127.0.0.1:9/v1", model: gpt-4o-mini}}
  backup: {{provider: openai, base_url: "http://127.0.0.1:9/v1", model: gpt-4o}}
tasks:
  support: {{route: [gpt, backup], review_cost_usd: 4.5, escalation_cost_usd: 20}}
  extract: {{route: [gpt]}}
  triage: {{route: [backup]}}
store: {{kind: sqlite, path: {path}}}
"""
TENANTS = ("acme", "globex", "all")  # "all": a tenant named like the reports' total once was
TASKS = ("support", "extract", "triage")
RELEASES = ("support@1", "support@2", "extract@1", None)


def mixed_row(i: int, at: float, rng: random.Random) -> LedgerRow:
    """One request of many kinds: the draw decides failures, retries, fallbacks, cache hits."""
    kind = rng.random()
    attempts = [AttemptRecord("gpt", "r1", None, rng.uniform(200, 3000), 0.0, 0.0004)]
    status, error_class, fallback, cost = 200, None, False, rng.choice((0.0004, 0.0011, None, 0.00023))
    if kind < 0.05:  # a retry after a timeout
        attempts.insert(0, AttemptRecord("gpt", "r1", "timeout_ttft", 2000.0))
    elif kind < 0.10:  # a fallback
        attempts = [AttemptRecord("gpt", "r1", "http_503", 40.0), AttemptRecord("backup", "r2", None, 900.0, 41.0)]
        fallback = True
    elif kind < 0.13:  # every target failed
        attempts = [AttemptRecord("gpt", "r1", "http_503", 30.0)]
        status, error_class, cost = 502, "upstream_error", None
    elif kind < 0.16:  # refused before any target
        attempts, status, error_class, cost = [], rng.choice((400, 429, 404)), "rate_limited", None
    cache_hit = True if 0.16 <= kind < 0.22 else None
    episode = f"ep-{i // 4}" if rng.random() < 0.5 else None
    outcome = rng.choice((None, None, "success", "success", "failure"))
    return LedgerRow(
        request_id=f"req-{i:09d}",
        started_at=at,
        tenant=rng.choice(TENANTS),
        task=rng.choice(TASKS),
        data_class="internal",
        stream=rng.random() < 0.4,
        release=rng.choice(RELEASES),
        target="backup" if fallback else (None if not attempts else "gpt"),
        status=status,
        error_class=error_class,
        attempts=attempts,
        fallback=fallback,
        prompt_tokens=None if not attempts else rng.randint(50, 4000),
        completion_tokens=None if not attempts else rng.randint(1, 800),
        cost_usd=0.0 if cache_hit else cost,
        latency_ms=rng.uniform(1, 4000),
        queue_ms=rng.choice((None, rng.uniform(0, 50))),
        ttft_ms=rng.uniform(50, 900) if rng.random() < 0.4 else None,
        outcome=outcome,
        cache_hit=cache_hit,
        human_review=rng.choice((None, None, True, False)),
        escalated=rng.choice((None, None, None, True)),
        outcome_value=rng.choice((None, rng.uniform(0, 10))),
        outcome_at=at + 60 if outcome else None,
        episode_id=episode,
        usage_estimated=rng.choice((None, False, True)),
        repairs=rng.choice((None, None, 1, 2)),
        escalated_to=rng.choice((None, None, None, "human", "backup")),
        live_pass=rng.choice((None, True, False)),
        evaluation=True if rng.random() < 0.01 else None,
    )


async def build(path: Path, n: int, days: float) -> None:
    rng = random.Random(7)
    end = time.time()
    start = end - days * 86400
    store = SQLiteStore(path)
    await store.open()
    try:
        batch = []
        for i in range(n):
            batch.append(mixed_row(i, start + (end - start) * i / n, rng))
            if len(batch) == 5000:
                await store.write_batch(batch)
                batch = []
        await store.write_batch(batch)
    finally:
        await store.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    db = args.out / "ledger.db"
    db.unlink(missing_ok=True)
    asyncio.run(build(db, args.rows, args.days))
    (args.out / "turnout.yaml").write_text(CONFIG.format(path=db))
    print(args.out / "turnout.yaml")


if __name__ == "__main__":
    main()
