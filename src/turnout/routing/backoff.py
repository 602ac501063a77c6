"""Jittered exponential backoff that honours an upstream's Retry-After."""

from __future__ import annotations

import datetime
import email.utils
import math
import random
import time

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


MAX_RETRY_AFTER_S = 86400.0  # an upstream's hint past a day is read as a day


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After in seconds: delta-seconds, or an HTTP date (``now``: the Unix time it is
    counted from; a date past is 0). None for what is no wait (negative, not finite, not a
    date): an upstream's ``inf`` reached the 503's own Retry-After as an OverflowError, a 500."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # "-0000": UTC, said without a zone
            when = when.replace(tzinfo=datetime.UTC)
        seconds = max(0.0, when.timestamp() - (time.time() if now is None else now))
    if not 0 <= seconds < math.inf:  # NaN fails both
        return None
    return min(seconds, MAX_RETRY_AFTER_S)
