"""The screener on its labelled set (tests/data/safety/, described in its README): the set is
what it claims to be, and precision, recall and the false-positive rate per channel hold.

``heldout`` was written before the screener and never tuned against: its bounds are the ones
that say how the screener generalises (recall ≥ 0.85, false positives ≤ 6 % per channel; at
the time of writing 0.914 / 0.048 on user messages, the weakest channel). ``dev`` was tuned
against, so its bounds are tighter and say only that nothing regressed."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from turnout.safety.screen import CHANNELS, SCREENER, THRESHOLDS, Channel

DATA = Path(__file__).parent / "data" / "safety"


def load(split: str) -> list[dict[str, str]]:
    return [orjson.loads(line) for line in (DATA / f"{split}.jsonl").read_bytes().splitlines() if line.strip()]


def test_the_set_is_what_it_says() -> None:
    dev, heldout = load("dev"), load("heldout")
    rows = dev + heldout
    assert len(rows) >= 300
    assert len({r["id"] for r in rows}) == len(rows)
    assert len(heldout) / len(rows) >= 0.3
    assert {r["split"] for r in dev} == {"dev"} and {r["split"] for r in heldout} == {"heldout"}
    assert {r["label"] for r in rows} == {"injection", "clean"}
    for split in (dev, heldout):
        pairs = Counter((r["channel"], r["label"]) for r in split)
        assert all(pairs[(c, lab)] >= 15 for c in CHANNELS for lab in ("injection", "clean")), pairs
    languages = Counter(r["lang"] for r in rows)
    assert {"en", "es", "fr", "de", "zh"} <= set(languages) and len(languages) >= 8


def rates(split: str, channel: Channel) -> tuple[float, float, float]:
    tp = fp = fn = tn = 0
    for row in load(split):
        if row["channel"] != channel:
            continue
        flagged = SCREENER.screen(row["text"], channel).over(THRESHOLDS[channel])
        injection = row["label"] == "injection"
        tp += flagged and injection
        fp += flagged and not injection
        fn += injection and not flagged
        tn += not (flagged or injection)
    return tp / (tp + fp), tp / (tp + fn), fp / (fp + tn)


@pytest.mark.parametrize("channel", CHANNELS)
def test_heldout_precision_recall_and_false_positives(channel: Channel) -> None:
    precision, recall, fpr = rates("heldout", channel)
    assert recall >= 0.85 and fpr <= 0.06 and precision >= 0.9, (precision, recall, fpr)


@pytest.mark.parametrize("channel", CHANNELS)
def test_dev_precision_recall_and_false_positives(channel: Channel) -> None:
    precision, recall, fpr = rates("dev", channel)
    assert recall >= 0.97 and fpr <= 0.03 and precision >= 0.97, (precision, recall, fpr)
