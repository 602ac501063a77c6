"""Redaction of secrets and PII, applied before text is written anywhere (ledger, logs, traces).

    >>> r = Redactor(b"a key of sixteen bytes or more")
    >>> r.redact("mail bob@example.com").text  # doctest: +SKIP
    'mail [EMAIL_1c9e0a2b]'

``Redactor.redact`` returns the new text and the findings (kind and span; never the value);
``RedactingFilter`` redacts log records; ``Redactor.redact_mapping`` redacts the strings of a
JSON-like structure. ``KINDS`` lists what is detected, most specific first.
"""

from turnout.privacy.redact.engine import PLACEHOLDER, Finding, Redacted, Redactor, masked, redact_mapping
from turnout.privacy.redact.logfilter import RedactingFilter
from turnout.privacy.redact.patterns import KINDS
from turnout.privacy.redact.validators import card_ok, iban_ok, ipv4_ok, ipv6_ok, luhn_ok, shannon_entropy, ssn_ok

__all__ = [
    "KINDS",
    "PLACEHOLDER",
    "Finding",
    "Redacted",
    "RedactingFilter",
    "Redactor",
    "card_ok",
    "iban_ok",
    "ipv4_ok",
    "ipv6_ok",
    "luhn_ok",
    "masked",
    "redact_mapping",
    "shannon_entropy",
    "ssn_ok",
]
