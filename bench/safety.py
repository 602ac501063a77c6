"""bench/safety.py — the injection screener on the labelled set (tests/data/safety/): precision,
recall and false-positive rate per split and channel, and the screener's cost in µs per KB.

    .venv/bin/python bench/safety.py [--split dev|heldout|all] [--errors] [--repeat N]

``dev`` is the split the patterns were tuned on; ``heldout`` was written first and never used
for tuning: its numbers are the honest ones. ``--errors`` lists the misclassified ids and texts
(of the dev split unless --split says otherwise). The cost is the median of ``--repeat`` timed
passes over each channel's texts (wall time of ``screen`` ÷ the texts' UTF-8 size), plus a
long clean document (64 KB of prose) and the same document with base64 and letters spaced out
scattered in it (the decoders' worst common case).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import orjson

from turnout.safety.screen import CHANNELS, SCREENER, THRESHOLDS, Channel

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "safety"
PROSE = (
    "The quarterly report shows revenue grew by twelve percent, driven by strong demand in Europe and steady "
    "performance in North America. Operating costs were flat. The board approved a new dividend policy and "
    "discussed plans for the next fiscal year, including hiring and investment in data infrastructure. "
    "Customers asked for faster shipping; the logistics team will send a proposal to the board next month. "
)


def load(split: str) -> list[dict[str, str]]:
    names = ["dev", "heldout"] if split == "all" else [split]
    rows: list[dict[str, str]] = []
    for name in names:
        rows += [orjson.loads(line) for line in (DATA / f"{name}.jsonl").read_bytes().splitlines() if line.strip()]
    return rows


def quality(rows: list[dict[str, str]], channel: Channel, errors: bool) -> str:
    tp = fp = fn = tn = 0
    misses: list[str] = []
    for row in rows:
        verdict = SCREENER.screen(row["text"], channel)
        flagged = verdict.over(THRESHOLDS[channel])
        injection = row["label"] == "injection"
        tp += flagged and injection
        fp += flagged and not injection
        fn += injection and not flagged
        tn += not injection and not flagged
        if errors and flagged != injection:
            kind = "FP" if flagged else "FN"
            misses.append(f"    {kind} {row['id']} {verdict.score:.2f} {list(verdict.reasons)} {row['text'][:110]!r}")
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    fpr = fp / (fp + tn) if fp + tn else 0.0
    line = (
        f"  {channel:<11} n={len(rows):<4} injections={tp + fn:<4} precision={precision:.3f} recall={recall:.3f} "
        f"false-positive rate={fpr:.3f} (tp {tp}, fp {fp}, fn {fn}, tn {tn})"
    )
    return "\n".join([line, *misses])


def cost(texts: list[str], channel: Channel, repeat: int) -> tuple[float, float]:
    """µs per KB and µs per text: the median of ``repeat`` passes."""
    size = sum(len(t.encode()) for t in texts) / 1024
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for text in texts:
            SCREENER.screen(text, channel)
        runs.append((time.perf_counter() - t0) * 1e6)
    spent = statistics.median(runs)
    return spent / size, spent / len(texts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("dev", "heldout", "all"), default=None)
    parser.add_argument("--errors", action="store_true", help="list the misclassified texts")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    splits = [args.split] if args.split else ["dev", "heldout", "all"]
    for split in splits:
        rows = load(split)
        print(f"{split}: {len(rows)} texts")
        for channel in CHANNELS:
            mine = [r for r in rows if r["channel"] == channel]
            print(quality(mine, channel, args.errors and (split == "dev" or args.split == split)))
    rows = load("all")
    print(f"cost (median of {args.repeat} passes):")
    for channel in CHANNELS:
        texts = [r["text"] for r in rows if r["channel"] == channel]
        per_kb, per_text = cost(texts, channel, args.repeat)
        mean = sum(len(t.encode()) for t in texts) / len(texts)
        print(f"  {channel:<11} the set's texts: {per_text:6.1f} µs per text (mean {mean:.0f} bytes), ", end="")
        print(f"{per_kb:7.1f} µs per KB")
    doc = (PROSE * 200)[:65536]
    print(f"  documents   64 KB of clean prose: {cost([doc], 'documents', args.repeat)[0]:.1f} µs per KB")
    noisy = doc.replace("twelve percent", "dHdlbHZlIHBlcmNlbnQ= (t w e l v e)")
    per_kb = cost([noisy], "documents", args.repeat)[0]
    print(f"  documents   the same with base64 and spaced letters: {per_kb:.1f} µs per KB")
    short = "My order 1234 has not arrived yet. What can I do?"
    per_text = cost([short] * 2000, "user", args.repeat)[1]
    print(f"  user        one short clean message ({len(short)} bytes): {per_text:.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
