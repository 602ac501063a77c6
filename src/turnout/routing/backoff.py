"""Jittered exponential backoff that honours an upstream's Retry-After."""

from __future__ import annotations

import random

from turnout.config import RetryConfig


def delay(cfg: RetryConfig, attempt: int, retry_after: float | None, rng: random.Random | None = None) -> float | None:
    """Seconds to wait before try number ``attempt + 1`` at the same target (``attempt`` counts
    from 1), or None when the wait asked for is longer than the cap: then fall back instead."""
    cap = cfg.max_backoff_ms / 1000
    if retry_after is not None:
        return retry_after if retry_after <= cap else None
    base = cfg.backoff_ms / 1000 * (2 ** (attempt - 1))
    # "Full jitter": uniform in [0, min(cap, base)] spreads retries of many clients apart.
    return (rng or random).uniform(0, min(cap, base))


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (delta-seconds form; HTTP dates are rare upstream and ignored)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
