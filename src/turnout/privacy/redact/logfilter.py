"""A logging filter that redacts records before any handler formats them."""

from __future__ import annotations

import logging

from turnout.privacy.redact.engine import Redactor

_FORMATTER = logging.Formatter()


# Field values seen often (task, tenant, target names) are redacted once and remembered.
_MEMO_SIZE = 4096
_MEMO_CHARS = 200


class RedactingFilter(logging.Filter):
    """Install on a handler (``handler.addFilter(RedactingFilter(redactor))``): the record's message is
    formatted (``msg % args``) and redacted, and its traceback and stack text are rendered and redacted,
    with ``exc_info`` dropped so that no formatter can render the raw exception again. With
    ``fields`` (for a formatter that writes them, e.g. JSON lines), the string values of the
    record's structured ``fields`` (``extra={"fields": {...}}``) are redacted too."""

    def __init__(self, redactor: Redactor, name: str = "", *, fields: bool = True) -> None:
        super().__init__(name)
        self._redactor = redactor
        self._fields = fields
        self._memo: dict[str, str] = {}

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
        fields = getattr(record, "fields", None)
        if self._fields and isinstance(fields, dict):
            record.fields = {k: self._value(v) if isinstance(v, str) else v for k, v in fields.items()}
        return True

    def _value(self, value: str) -> str:
        memo = self._memo
        done = memo.get(value)
        if done is None:
            done = self._redactor.redact(value).text
            if len(value) <= _MEMO_CHARS:
                if len(memo) >= _MEMO_SIZE:
                    memo.clear()
                memo[value] = done
        return done
