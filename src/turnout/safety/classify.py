"""Data classified before the model tier: a request that carries PII or secrets is treated as
the class they call for, whatever class it declared, before policy picks its targets.

A task's ``classify`` config (``{detect: [pii, secrets], raise_to: confidential}``) resolves per
tenant and task, the most specific block whole::

    tenants.<t>.task_classify.<task>  →  tenants.<t>.classify  →  tasks.<task>.classify  →  off

For a request declared below ``raise_to``, the redaction engine's detectors
(``turnout.privacy.redact``) read what the targets would receive: every message's text (string
content and text parts) and the arguments of the tool calls it quotes. The first finding of a
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

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from turnout.config import DATA_CLASSES, ClassifyConfig, Config
from turnout.privacy.redact.patterns import DETECTORS, Detector
from turnout.privacy.redact.plain import read_plainly

SECRETS = frozenset(
    {"PRIVATE_KEY", "JWT", "API_KEY", "AWS_ACCESS_KEY", "AWS_SECRET_KEY", "BEARER_TOKEN", "PASSWORD", "SECRET"}
)
PII = frozenset({"CARD", "IBAN", "US_SSN", "EMAIL", "IP_ADDRESS", "PHONE"})
CATEGORIES = {"secrets": SECRETS, "pii": PII}
RANK = {name: i for i, name in enumerate(DATA_CLASSES)}
MIN_CHARS = 4  # the redactor's own floor: nothing it finds is shorter
DIGITS = "0123456789"
# What a detector cannot find anything without (its patterns need it): skipped when it is absent.
NEEDS = {"numbers": "digits", "context_numbers": "digits", "ibans": "digits", "ipv6_addresses": "colons"}
PLAN: tuple[tuple[Detector, str | None], ...] = tuple((d, NEEDS.get(d.__name__)) for d in DETECTORS)


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
        found = self.find(texts(body))
        return None if found is None else Raised(data_class, self.raise_to, found)

    def find(self, items: Iterable[str], plan: tuple[tuple[Detector, str | None], ...] = PLAN) -> str | None:
        """The category of the first detected kind in ``items``, or None."""
        kinds = self.kinds
        for text in read_plainly(items):
            if len(text) < MIN_CHARS:
                continue
            lower = text.lower()
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
    """The texts of a chat body the targets would receive: message contents and quoted tool-call
    arguments (a conversation replayed to the model carries them); an embeddings body's inputs."""
    inputs = body.get("input")
    if isinstance(inputs, list):
        yield from (text for text in inputs if isinstance(text, str))
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            yield content
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str):
                    yield text
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            fn = call.get("function") if isinstance(call, dict) else None
            arguments = fn.get("arguments") if isinstance(fn, dict) else None
            if isinstance(arguments, str):
                yield arguments
        legacy = message.get("function_call")
        if isinstance(legacy, dict) and isinstance(legacy.get("arguments"), str):
            yield legacy["arguments"]


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
