"""Times in JSON that people and programs read: ISO 8601 in UTC, the one format the CLI's
``--format json`` and the admin API share (the OpenAI-shaped ``/v1`` answers keep OpenAI's unix
seconds)."""

from __future__ import annotations

from datetime import UTC, datetime

LAST = 253_402_300_799.0  # 9999-12-31T23:59:59Z: the last second datetime can write


def iso(at: float | None) -> str | None:
    """Epoch seconds as ISO 8601 in UTC; None stays None. A time past year 9999 (a key that
    effectively never expires) prints as that year's last second rather than failing."""
    if at is None:
        return None
    return datetime.fromtimestamp(min(max(at, 0.0), LAST), UTC).isoformat()
