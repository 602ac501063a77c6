"""Output checks: what an answer must satisfy before it reaches the caller, on both doors.

A task's ``output`` config (``turnout.config.OutputConfig``) is resolved once at start
(``Outputs``); a task without one is not checked at all (one dict lookup per request). For a
checked task, ``Rules.checks`` reads the body the targets receive and returns the request's
``Checks``, in this order of verdicts:

* ``secrets`` / ``pii`` (``must_not_contain``): the redaction engine's detectors
  (``turnout.privacy.redact``) over the answer's text, what the model says beside it (``BESIDE``:
  ``reasoning_content``, ``reasoning``, ``refusal``, which reach the caller too) and its tool-call
  arguments: an answer that would leak an AWS key, a private key or a card number is caught;
* ``max_chars``: the answer's text (its content, not its reasoning) is longer;
* ``json`` / ``schema``: the answer is not JSON, or fails a schema: the task's ``schema`` and,
  unless ``response_format: false``, the request's own ``response_format`` (``json_schema``:
  its schema; ``json_object``: an object). The task API's release schema arrives that way.
  A choice that only calls tools has no text to check against a schema.

A failed check is a ``Problem``: a reason code (for the ledger and metrics), a ``detail`` fit
for the client (never the answer's text or the value found) and a ``hint`` for the model when
it is asked to repair its answer (the schema's own message; never the leaked value either).
The caller's schema runs inside the gateway and is compiled like a declared tool's parameters
(``turnout.safety.tools.compile_schema``: regular expressions dropped, no remote ``$ref``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from jsonschema import validators
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator
from referencing import Registry
from referencing.exceptions import Unresolvable

from turnout._support.depth import too_deep
from turnout.config import HUMAN, Config, OutputConfig
from turnout.errors import RequestError
from turnout.privacy.redact.patterns import lowered
from turnout.privacy.redact.plain import read_plainly
from turnout.safety.classify import CATEGORIES, DIGITS, MIN_CHARS, PLAN
from turnout.safety.tools import compile_schema

MAX_DEPTH = 128  # as for request bodies: deeper JSON could not be written out again
# A repair hint's most UTF-8 bytes (so tokens): the quota reserves a re-ask's prompt with it
# (``turnout.control.quota.plan.REPAIR_TURN_TOKENS``).
HINT_BYTES = 2000
REASONS = ("schema", "json", "max_chars", "secrets", "pii")  # a Problem's reason, for metrics
# What a message says beside its content that the caller reads as well: leak-checked, and replayed.
BESIDE = ("reasoning_content", "reasoning", "refusal")
READABLE = {
    "PRIVATE_KEY": "a private key",
    "JWT": "a JSON web token",
    "API_KEY": "an API key",
    "AWS_ACCESS_KEY": "an AWS access key",
    "AWS_SECRET_KEY": "an AWS secret key",
    "BEARER_TOKEN": "a bearer token",
    "PASSWORD": "a password",
    "SECRET": "a secret",
    "CARD": "a card number",
    "IBAN": "an IBAN",
    "US_SSN": "a social security number",
    "EMAIL": "an email address",
    "IP_ADDRESS": "an IP address",
    "PHONE": "a phone number",
}


@dataclass(frozen=True, slots=True)
class Problem:
    """Why an answer failed. ``reason``: schema | json | max_chars | secrets | pii. ``detail``:
    for the client, never text from the answer. ``hint``: for the model's repair. ``echo``:
    whether the rejected answer may be shown to the model again (not when it leaks)."""

    reason: str
    detail: str
    hint: str
    echo: bool = True


@dataclass(frozen=True, slots=True)
class Checks:
    """One request's output checks."""

    schemas: tuple[tuple[str, Validator], ...]  # (where the schema comes from, its validator)
    max_chars: int | None
    kinds: dict[str, str]  # detected kind → its category (secrets | pii)
    fenced: bool  # a JSON answer may come inside a ``` fence (the task API strips it)

    def verify(self, body: dict[str, Any]) -> Problem | None:
        """The first problem of a ``chat.completion`` body, or None: it passes."""
        choices = body.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            message = choice.get("message") if isinstance(choice, dict) else None
            message = message if isinstance(message, dict) else {}
            text = content_text(message.get("content"))
            calls = message.get("tool_calls")
            problem = self._leak(text, message) or self._length(text)
            if problem is None and self.schemas and (text or not calls):
                problem = self._structure(text)
            if problem is not None:
                return problem
        return None

    def _leak(self, text: str, message: dict[str, Any]) -> Problem | None:
        if not self.kinds:
            return None
        found = find(self.kinds, [text, *_refusals(message), *beside(message), *_arguments(message)])
        if found is None:
            return None
        category, kind = found
        what = READABLE.get(kind, kind.lower())
        detail = f"the answer contains {what} ({category}), which this task's output must not contain"
        hint = f"Your previous answer contained {what}. Answer again without any {category}: leave them out entirely."
        return Problem(category, detail, hint, echo=False)

    def _length(self, text: str) -> Problem | None:
        if self.max_chars is None or len(text) <= self.max_chars:
            return None
        detail = f"the answer is {len(text)} characters long; this task allows at most {self.max_chars}"
        hint = f"Your previous answer was {len(text)} characters long. Answer again in at most {self.max_chars}."
        return Problem("max_chars", detail, hint, echo=False)

    def _structure(self, text: str) -> Problem | None:
        try:
            parsed = orjson.loads(strip_fence(text) if self.fenced else text)
        except orjson.JSONDecodeError:
            detail = "the answer is not JSON, as the output schema requires"
            return Problem("json", detail, "Your previous answer was not valid JSON. Answer with JSON only.")
        if too_deep(parsed, MAX_DEPTH):
            detail = f"the answer nests deeper than {MAX_DEPTH} levels"
            return Problem("json", detail, f"Your previous answer nested deeper than {MAX_DEPTH} levels.")
        for source, validator in self.schemas:
            try:
                error = best_match(validator.iter_errors(parsed))
            except (Unresolvable, RecursionError):
                return Problem("schema", f"the answer cannot be checked against {source}", "")
            if error is not None:
                where = "/" + "/".join(str(p) for p in error.absolute_path) if error.absolute_path else "(root)"
                detail = f"the answer fails {source} at {where} ({error.validator})"
                hint = f"Your previous answer does not match the required JSON schema: at {where}, {error.message}."
                return Problem("schema", detail, capped(hint))
        return None


@dataclass(frozen=True, slots=True)
class Rules:
    """The resolved ``output`` config of one task."""

    task: str
    schema: Validator | None
    response_format: bool
    max_chars: int | None
    kinds: dict[str, str]
    repair_attempts: int
    escalate_to: str | None  # a target's name, ``human``, or None: refuse

    @property
    def to_human(self) -> bool:
        return self.escalate_to == HUMAN

    def checks(self, body: dict[str, Any], *, fenced: bool) -> Checks | None:
        """The checks of a request whose targets receive ``body``; None when nothing is checked.
        An unusable ``response_format`` schema is the caller's 400, before any attempt."""
        schemas: list[tuple[str, Validator]] = []
        if self.schema is not None:
            schemas.append(("the task's output schema", self.schema))
        asked = _asked(body) if self.response_format else None
        if asked is not None:
            schemas.append(asked)
        if not schemas and self.max_chars is None and not self.kinds:
            return None
        return Checks(tuple(schemas), self.max_chars, self.kinds, fenced)


def operators_schema(schema: dict[str, Any]) -> Validator:
    """A schema the operator wrote (a task's output schema, a release's), checked at load: its
    patterns and all, but with an empty registry: a ``$ref`` to another document is never
    fetched (jsonschema's default would, from the event loop), it fails to resolve."""
    return validators.validator_for(schema)(schema, registry=Registry())


def resolve(task: str, cfg: OutputConfig) -> Rules:
    schema = operators_schema(cfg.json_schema) if cfg.json_schema is not None else None
    kinds: dict[str, str] = {kind: category for category in cfg.must_not_contain for kind in CATEGORIES[category]}
    to = cfg.escalate.to if cfg.escalate is not None else None
    return Rules(task, schema, cfg.response_format, cfg.max_chars, kinds, cfg.repair_attempts, to)


class Outputs:
    """Every task's rules, resolved once."""

    def __init__(self, config: Config) -> None:
        self._rules = {name: resolve(name, t.output) for name, t in config.tasks.items() if t.output is not None}

    def get(self, task: str) -> Rules | None:
        """None: the task's answers are not checked."""
        return self._rules.get(task) if self._rules else None

    @property
    def active(self) -> bool:
        return bool(self._rules)

    @property
    def to_human(self) -> bool:
        """Whether some task escalates to a person (the review queue is needed)."""
        return any(r.to_human for r in self._rules.values())


def find(kinds: dict[str, str], items: list[str]) -> tuple[str, str] | None:
    """(category, kind) of the first detected kind in ``items`` (each read as written and, where
    it differs, plainly: ``turnout.privacy.redact.plain``), or None."""
    for text in read_plainly(items):
        if len(text) < MIN_CHARS:
            continue
        lower = lowered(text)
        has = {"digits": not text.isascii() or any(d in text for d in DIGITS), "colons": text.count(":") >= 2}
        for detector, need in PLAN:
            if need is not None and not has[need]:
                continue
            for _, _, kind in detector(text, lower):
                category = kinds.get(kind)
                if category is not None:
                    return category, kind
    return None


def capped(hint: str) -> str:
    """``hint`` cut to ``HINT_BYTES`` UTF-8 bytes (never inside a character)."""
    raw = hint.encode()
    return hint if len(raw) <= HINT_BYTES else raw[:HINT_BYTES].decode(errors="ignore")


def strip_fence(text: str) -> str:
    """JSON inside a Markdown code fence (```json ... ```), as models often write it."""
    text = text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    return text


def _asked(body: dict[str, Any]) -> tuple[str, Validator] | None:
    """The schema the request's ``response_format`` asks for, compiled; None: it asks none."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return None
    kind = fmt.get("type")
    if kind == "json_object":
        return "the requested JSON object format", compile_schema({"type": "object"}, "response_format")
    if kind != "json_schema":
        return None
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict):
        raise RequestError("'response_format.json_schema' must be an object", param="response_format.json_schema")
    schema = spec.get("schema", {})
    return "the requested response_format schema", compile_schema(schema, "response_format.json_schema.schema")


def beside(message: dict[str, Any]) -> Iterator[str]:
    """The texts a message carries beside its content (``BESIDE``)."""
    for field in BESIDE:
        said = message.get(field)
        if isinstance(said, str) and said:
            yield said


def content_text(content: Any) -> str:
    """A message's text: its content, or the ``text`` of its content parts put together (some
    OpenAI-compatible servers answer with a list of parts; the caller gets them as they are)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _refusals(message: dict[str, Any]) -> Iterator[str]:
    content = message.get("content")
    for part in content if isinstance(content, list) else ():
        if isinstance(part, dict) and isinstance(part.get("refusal"), str):
            yield part["refusal"]


def _arguments(message: dict[str, Any]) -> Iterator[str]:
    """Every tool call's arguments, the legacy ``function_call``'s included, as the caller gets
    them: a string or (from some servers) an object, whose keys and strings are read."""
    calls = message.get("tool_calls")
    fns = [call.get("function") for call in calls if isinstance(call, dict)] if isinstance(calls, list) else []
    fns.append(message.get("function_call"))
    for fn in fns:
        arguments = fn.get("arguments") if isinstance(fn, dict) else None
        if isinstance(arguments, str):
            yield arguments
        elif isinstance(arguments, dict | list):
            yield from _strings(arguments)


def _strings(value: dict[str, Any] | list[Any]) -> Iterator[str]:
    """The keys and string values of a JSON value, however deep (no recursion)."""
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            for key, nested in item.items():
                stack += (key, nested)
        elif isinstance(item, list):
            stack.extend(item)
