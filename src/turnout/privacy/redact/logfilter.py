"""A logging filter that redacts records before any handler formats them."""

from __future__ import annotations

import logging

from turnout.privacy.redact.engine import Redactor

_FORMATTER = logging.Formatter()


class RedactingFilter(logging.Filter):
    """Install on a handler (``handler.addFilter(RedactingFilter(redactor))``): the record's message is
    formatted (``msg % args``) and redacted, and its traceback and stack text are rendered and redacted,
    with ``exc_info`` dropped so that no formatter can render the raw exception again."""

    def __init__(self, redactor: Redactor, name: str = "") -> None:
        super().__init__(name)
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # bad args: keep what we can, redacted
            message = f"{record.msg!s} {record.args!r}"
        record.msg = self._redactor.redact(message).text
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = _FORMATTER.formatException(record.exc_info)
        record.exc_info = None
        if record.exc_text:
            record.exc_text = self._redactor.redact(record.exc_text).text
        if record.stack_info:
            record.stack_info = self._redactor.redact(record.stack_info).text
        return True
