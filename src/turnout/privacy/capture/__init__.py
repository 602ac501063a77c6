"""Audited capture of prompt and completion text.

Text is kept only where the config's capture rules say so, and then only after redaction:

* ``metadata`` (the default): no text at all;
* ``redacted``: text after secrets and PII are replaced by typed placeholders;
* ``full``: only while a grant (``turnout capture grant``) is live for the tenant and task;
  secrets are still scrubbed. Without a live grant, ``full`` degrades to ``metadata``.

``sample_rate`` keeps a random share of the requests a rule covers. Captured text is purged
after ``ttl_days``. Every grant, each use of it, its expiry or revocation and every purge run
go to an append-only audit table.

    Capture                       turnout.privacy.capture.service   what the gateway holds
    ├── CaptureStore              turnout.privacy.capture.store     SQLite: grants, audit, captures
    ├── CapturePolicy             turnout.privacy.capture.policy    decide(): rules + cached grants
    ├── CaptureWriter             turnout.privacy.capture.writer    bounded queue → redact → store
    ├── Purger                    turnout.privacy.capture.purge     retention, every purge_interval_s
    └── SecretsOnly               turnout.privacy.capture.secrets   full mode's redactor: secrets only
"""

from turnout.privacy.capture.model import (
    METADATA,
    AuditEvent,
    CaptureRow,
    CaptureStoreError,
    Decision,
    Grant,
    Mode,
    TextRedactor,
)
from turnout.privacy.capture.policy import CapturePolicy, rule_for
from turnout.privacy.capture.purge import Purger, PurgeResult
from turnout.privacy.capture.secrets import ALWAYS_SCRUBBED, SecretsOnly
from turnout.privacy.capture.service import Capture
from turnout.privacy.capture.store import CaptureStore, capture_path
from turnout.privacy.capture.writer import CaptureWriter

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
