"""Data classified before the model tier: a request that carries PII or secrets is treated as
the class they call for, whatever class it declared, before policy picks its targets.

A task's ``classify`` config (``{detect: [pii, secrets], raise_to: confidential}``) resolves per
tenant and task, the most specific block whole::

    tenants.<t>.task_classify.<task>  →  tenants.<t>.classify  →  tasks.<task>.classify  →  off

For a request declared below ``raise_to``, the redaction engine's detectors
(``turnout.privacy.redact``) read what the targets would receive: every string of the body as it
leaves the gateway (``texts``: messages, quoted tool calls, tool and schema descriptions,
``documents``, forwarded ``metadata``, ``user``…), not its structure (model, roles, types, ids)
nor media that are not text; turnout's own ``metadata`` keys are out of the body by then. The first finding of a
detected kind settles it (``Raised``); the request's class becomes ``raise_to``, so
``turnout.routing.policy`` only offers it the targets that class may use, and the ledger keeps
both (``declared_class``, ``data_class``). A request already at ``raise_to`` or above is not
read at all, and a tenant or task without ``classify`` pays nothing.

Cost: the detectors read the whole text when nothing is found (the usual case), about 80 µs per
KB of text with digits in it (``bench/classify_tools.py``); the detectors that only look at
numbers (cards, phones, SSNs, IBANs) are skipped for an ASCII text without digits, the IPv6 one
for a text with fewer than two colons, which halves the cost of plain prose.

Kinds: ``secrets`` are private keys, JWTs, API keys, AWS keys, bearer tokens, passwords and other
secrets in key=value form; ``pii`` are card numbers, IBANs, US SSNs, email addresses, IP
addresses and phone numbers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from turnout.config import DATA_CLASSES, ClassifyConfig, Config
from turnout.privacy.redact.patterns import DETECTORS, Detector, lowered
from turnout.privacy.redact.plain import read_plainly
from turnout.safety.inputs import text_data_url

SECRETS = frozenset(
    {"PRIVATE_KEY", "JWT", "API_KEY", "AWS_ACCESS_KEY", "AWS_SECRET_KEY", "BEARER_TOKEN", "PASSWORD", "SECRET"}
)
PII = frozenset({"CARD", "IBAN", "US_SSN", "EMAIL", "IP_ADDRESS", "PHONE"})
CATEGORIES = {"secrets": SECRETS, "pii": PII}
RANK = {name: i for i, name in enumerate(DATA_CLASSES)}
MIN_CHARS = 4  # the redactor's own floor: nothing it finds is shorter
BATCH_CHARS = 1024  # short strings are read together, up to about this many characters at a time
DIGITS = "0123456789"
# What a detector cannot find anything without (its patterns need it): skipped when it is absent.
NEEDS = {"numbers": "digits", "context_numbers": "digits", "ibans": "digits", "ipv6_addresses": "colons"}
PLAN: tuple[tuple[Detector, str | None], ...] = tuple((d, NEEDS.get(d.__name__)) for d in DETECTORS)
# A body's fields that are its structure, not text a model reads: what they hold is not classified.
# ``input_audio`` is a clip in base64 (no data URL to say so).
STRUCTURAL = frozenset({"model", "role", "type", "id", "tool_call_id", "file_id", "detail", "format", "input_audio"})

# Media the detectors cannot read: a data URL with a type and a base64 payload (an image, audio,
# a PDF) that ``text_data_url`` did not read as text. Any other string that starts with
# ``data:`` is read as it is: "Data: my card is ..." is a message, not media.
_BINARY_DATA_URL = re.compile(r"data:[\w.+-]+/[\w.+-]+(?:;[^,;]*)*;base64,", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Raised:
    """A request's class raised: from what it declared to what it carries calls for."""

    declared: str
    effective: str
    found: str  # the category that settled it: pii | secrets

    def note(self) -> str:
        return f"its data class was raised from {self.declared} to {self.effective}: it carries {self.found}"


@dataclass(frozen=True, slots=True)
class Classifier:
    """The resolved ``classify`` config of one tenant and task."""

    kinds: dict[str, str]  # detected kind → its category
    raise_to: str

    def classify(self, data_class: str, body: dict[str, Any]) -> Raised | None:
        """``Raised`` when ``body`` holds a detected kind and ``data_class`` is below ``raise_to``."""
        if RANK.get(data_class, len(RANK)) >= RANK[self.raise_to]:
            return None
        found = self.find(batched(texts(body)))
        return None if found is None else Raised(data_class, self.raise_to, found)

    def find(self, items: Iterable[str], plan: tuple[tuple[Detector, str | None], ...] = PLAN) -> str | None:
        """The category of the first detected kind in ``items``, or None."""
        kinds = self.kinds
        for text in read_plainly(items):
            if len(text) < MIN_CHARS:
                continue
            lower = lowered(text)
            # \d in the patterns also matches other scripts' digits: only ASCII text is skipped.
            has = {"digits": not text.isascii() or any(d in text for d in DIGITS), "colons": text.count(":") >= 2}
            for detector, need in plan:
                if need is not None and not has[need]:
                    continue
                for _, _, kind in detector(text, lower):
                    category = kinds.get(kind)
                    if category is not None:
                        return category
        return None


def texts(body: dict[str, Any]) -> Iterator[str]:
    """Every string of the body the targets would receive, in order: message contents and their
    parts (text, refusals, a text file's decoded data), names, quoted tool-call arguments, tool
    and schema descriptions, ``documents``, ``metadata``, ``user``, ``prediction``,
    ``chat_template_kwargs``, an embeddings body's inputs, and any field turnout does not know
    (it passes them on). Not read: object keys, the body's structure (``STRUCTURAL``: the model,
    roles, types, ids), and media that are not text (a base64 data URL of an image or another
    binary type, audio): the detectors cannot read them and they can be megabytes. A string that
    only starts like a data URL ("Data: my card is ...") is text, and read."""
    stack: list[Any] = [body]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if value[:5].lower() == "data:":
                decoded = text_data_url(value)
                if decoded is not None:
                    yield decoded
                elif _BINARY_DATA_URL.match(value) is None:  # text that starts "Data:", not media
                    yield value
            else:
                yield value
        elif isinstance(value, dict):
            stack.extend(item for key, item in reversed(value.items()) if key not in STRUCTURAL)
        elif isinstance(value, list):
            stack.extend(reversed(value))


def batched(items: Iterable[str]) -> Iterator[str]:
    """Short strings (names, descriptions, enum values, short messages) read together, joined by
    line breaks into texts of about ``BATCH_CHARS``: the detectors cost a few µs a call whatever
    the length, so a tool schema's hundred fields are a few calls, not a hundred. A longer
    string is read on its own (its digit and colon gates stay its own)."""
    batch: list[str] = []
    size = 0
    for text in items:
        if len(text) >= BATCH_CHARS:
            yield text
            continue
        batch.append(text)
        size += len(text) + 1
        if size >= BATCH_CHARS:
            yield "\n".join(batch)
            batch, size = [], 0
    if batch:
        yield "\n".join(batch)


def resolve(config: Config, tenant: str | None, task: str) -> Classifier | None:
    """The classifier of ``tenant`` (a config tenant, or None) on ``task``; None when off."""
    tenant_cfg = config.tenants.get(tenant) if tenant is not None else None
    layers: list[ClassifyConfig | None] = [config.tasks[task].classify]  # least specific first
    if tenant_cfg is not None:
        layers += [tenant_cfg.classify, tenant_cfg.task_classify.get(task)]
    chosen = next((c for c in reversed(layers) if c is not None), None)
    if chosen is None or not chosen.detect:
        return None
    kinds: dict[str, str] = {kind: category for category in chosen.detect for kind in CATEGORIES[category]}
    return Classifier(kinds, chosen.raise_to)


class Classifiers:
    """Every (tenant, task) pair's classifier, resolved once; a caller that is no config tenant
    (the anonymous one) gets the task's own."""

    def __init__(self, config: Config) -> None:
        self._tenants = frozenset(config.tenants)
        self._found: dict[tuple[str | None, str], Classifier] = {}
        for task in config.tasks:
            for tenant in (None, *config.tenants):
                found = resolve(config, tenant, task)
                if found is not None:
                    self._found[(tenant, task)] = found

    def get(self, tenant: str, task: str) -> Classifier | None:
        if not self._found:
            return None
        return self._found.get((tenant if tenant in self._tenants else None, task))
