"""Audited capture of prompt and completion text.

Text is kept only where the config's capture rules say so, and then only after redaction:

* ``metadata`` (the default): no text at all;
* ``redacted``: text after secrets and PII are replaced by typed placeholders;
* ``full``: only while a grant (``turnout capture grant``) is live for the tenant and task;
  secrets are still scrubbed. Without a live grant, ``full`` degrades to ``metadata``.

``sample_rate`` keeps a random share of the requests a rule covers. Captured text is purged
after ``ttl_days``. Every grant, each use of it, its expiry or revocation and every purge run
go to an append-only audit table.

    Capture                       turnout.capture.service   what the gateway holds
    ├── CaptureStore              turnout.capture.store     SQLite: grants, audit, captures
    ├── CapturePolicy             turnout.capture.policy    decide(): rules + cached grants
    ├── CaptureWriter             turnout.capture.writer    bounded queue → redact → store
    ├── Purger                    turnout.capture.purge     retention, every purge_interval_s
    └── SecretsOnly               turnout.capture.secrets   full mode's redactor: secrets only
"""

from turnout.capture.model import (
    METADATA,
    AuditEvent,
    CaptureRow,
    CaptureStoreError,
    Decision,
    Grant,
    Mode,
    TextRedactor,
)
from turnout.capture.policy import CapturePolicy, rule_for
from turnout.capture.purge import Purger, PurgeResult
from turnout.capture.secrets import ALWAYS_SCRUBBED, SecretsOnly
from turnout.capture.service import Capture
from turnout.capture.store import CaptureStore, capture_path
from turnout.capture.writer import CaptureWriter

__all__ = [
    "ALWAYS_SCRUBBED",
    "METADATA",
    "AuditEvent",
    "Capture",
    "CapturePolicy",
    "CaptureRow",
    "CaptureStore",
    "CaptureStoreError",
    "CaptureWriter",
    "Decision",
    "Grant",
    "Mode",
    "PurgeResult",
    "Purger",
    "SecretsOnly",
    "TextRedactor",
    "capture_path",
    "rule_for",
]
