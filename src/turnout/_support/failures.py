"""How a failure is told in a log line: its type and where it was raised, never its message,
which may quote request content or a secret."""

from __future__ import annotations

import traceback


def describe(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}{where}"
