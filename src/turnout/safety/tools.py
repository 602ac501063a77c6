"""Tool allowlists: the tools a request may declare and the tool calls a model may hand back.

A task's ``tools`` config resolves per tenant and task, most specific first, one value at a
time, like ``safety``::

    tenants.<t>.task_tools.<task>  →  tenants.<t>.tools  →  tasks.<task>.tools  →  not checked

A pair with no ``tools`` block anywhere is not checked at all (the request path pays nothing);
one with a block and no ``allow`` allows no tool. For a checked request, ``Rules.admit`` reads
the body the targets will receive: a tool it declares (``tools[i]``, legacy ``functions[i]``)
outside the allowlist is refused with 400 ``tool_not_allowed`` naming it, before any quota or
attempt. It returns the request's ``Guard``, which the attempt loop calls on every answer
(``turnout.routing.attempts``' ``check``): each tool call is *blocked* when

* ``not_allowed``: the tool is not on the allowlist;
* ``undeclared``: the request did not declare it;
* ``invalid_arguments``: its arguments are not a JSON object valid under the declared
  ``parameters`` schema (``strict``: an object admits no property its schema does not list);
* ``malformed``: the call has no function name.

A blocked call never reaches the client. ``fallback`` rejects the answer (``AnswerRejected``:
the walk goes on to the next allowed target); ``refuse`` and ``escalate`` end the request
with 502 ``tool_call_blocked``: ``escalate`` is not wired to the output stage's escalation
(``output.escalate``), as the call is blocked inside the attempt loop, in a stream possibly after
text went out, where there is no whole answer to hand on.
Streams: ``turnout.safety.held`` holds tool-call deltas back until each call is complete and
checked; text deltas pass at once.

A caller's schema runs inside the gateway, so it is defused first: ``pattern`` and
``patternProperties`` are dropped (a regular expression of the caller's could take the event
loop for seconds), so under ``strict`` a property only a ``patternProperties`` admits is extra.
Schemas are compiled once per distinct schema (a bounded cache). The ledger and the metrics
get each violation as the tool's name and the reason (``Guard.record``), never its arguments.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonschema
import orjson
from jsonschema.protocols import Validator
from referencing import Registry
from referencing.exceptions import Unresolvable

from turnout.config import Config, ToolsConfig
from turnout.errors import AnswerRefused, AnswerRejected, RequestError
from turnout.providers.base import Completion, Stream
from turnout.safety.held import hold

OnViolation = Literal["refuse", "fallback", "escalate"]
Reason = Literal["not_allowed", "undeclared", "invalid_arguments", "malformed"]
REASONS: tuple[Reason, ...] = ("not_allowed", "undeclared", "invalid_arguments", "malformed")
CODE = "tool_call_blocked"
MAX_NAME = 64  # OpenAI's limit for a function name; longer names are cut in records
MAX_SCHEMAS = 512  # compiled schemas kept; past it the cache starts over


class ToolNotAllowed(RequestError):
    """The request declares a tool its task's allowlist does not name."""

    code = "tool_not_allowed"


class ToolCallBlocked(AnswerRefused):
    """The model called a tool it may not call, or with arguments its schema refuses."""

    code = CODE
    error_class = CODE


class ToolCallRejected(AnswerRejected):
    """As ``ToolCallBlocked``, under ``on_violation: fallback``: the next target is tried."""

    code = CODE
    error_class = CODE


@dataclass(frozen=True, slots=True)
class Violation:
    name: str  # the tool's name as a label: safe characters only, at most MAX_NAME
    reason: Reason
    detail: str  # for the client's message: never the arguments' values


@dataclass(frozen=True, slots=True)
class Rules:
    """The resolved ``tools`` config of one tenant and task."""

    task: str
    allow: frozenset[str]
    strict: bool
    on_violation: OnViolation

    def admit(self, body: dict[str, Any]) -> Guard:
        """The request's guard; its ``refusal`` is set (and its violation recorded) when the
        body declares a tool the allowlist lacks. ``RequestError`` for a declaration that cannot
        be checked (no name, twice, a schema that is no JSON Schema)."""
        guard = Guard(self, {})
        for param, name, schema in _declared(body):
            if name not in self.allow:
                label = label_of(name)
                guard.violations.append(Violation(label, "not_allowed", "declared by the request"))
                message = f"'{param}': the tool {label!r} is not allowed for the task {self.task!r}"
                guard.refusal = ToolNotAllowed(message, param=param)
                return guard
            if name in guard.declared:
                raise RequestError(f"'{param}': the tool {_quote(name)} is declared twice", param=param)
            where = f"{param}.function" if param.startswith("tools") else param
            guard.declared[name] = _compiled(schema, self.strict, f"{where}.parameters")
        return guard


@dataclass(slots=True)
class Guard:
    """One request's tool checks: what it declared (name → compiled schema) and what was blocked."""

    rules: Rules
    declared: dict[str, Validator]
    violations: list[Violation] = field(default_factory=list)
    refusal: ToolNotAllowed | None = None  # the request declares a tool it may not: 400

    async def __call__(self, answer: Completion | Stream) -> Completion | Stream:
        """The attempt loop's check: a completion is checked whole; a stream comes back with its
        tool calls held, read ahead until its first text (or its end) so that a call blocked
        before anything was sent can still fall back."""
        if isinstance(answer, Stream):
            return await hold(answer, self)
        for name, arguments in _calls(answer.body):
            self.verify(name, arguments, relayed=False)
        return answer

    def verify(self, name: Any, arguments: Any, *, relayed: bool) -> None:
        """Raise the rules' error when this call is blocked. ``relayed``: part of the answer has
        reached the client already, so falling back is no longer possible."""
        found = self.violation(name, arguments)
        if found is None:
            return
        self.violations.append(found)
        raise self.blocked(found, relayed=relayed)

    def refuse(self, name: str, detail: str, *, relayed: bool) -> Exception:
        """A call blocked for its shape (``held``: too many calls, arguments too large)."""
        label = label_of(name) if name else "(none)"
        found = Violation(
            label, "invalid_arguments" if name else "malformed", f"{detail} ({label!r})" if name else detail
        )
        self.violations.append(found)
        return self.blocked(found, relayed=relayed)

    def violation(self, name: Any, arguments: Any) -> Violation | None:
        if not isinstance(name, str) or not name:
            return Violation("(none)", "malformed", "a tool call without a function name")
        label = label_of(name)
        if name not in self.rules.allow:
            return Violation(label, "not_allowed", f"the tool {label!r} is not allowed for this task")
        validator = self.declared.get(name)
        if validator is None:
            return Violation(label, "undeclared", f"the request did not declare the tool {label!r}")
        problem = _arguments_problem(validator, arguments)
        if problem is not None:
            return Violation(label, "invalid_arguments", f"the arguments of {label!r} {problem}")
        return None

    def blocked(self, found: Violation, *, relayed: bool) -> ToolCallBlocked | ToolCallRejected:
        message = f"the model's tool call was blocked: {found.detail}"
        mode = self.rules.on_violation
        if mode == "fallback" and not relayed:
            return ToolCallRejected(message)
        if mode == "fallback":
            message += " (part of the answer was already sent, so no other target could be tried)"
        elif mode == "escalate":
            message += " (on_violation 'escalate' refuses: tool calls are not escalated)"
        return ToolCallBlocked(message)

    @property
    def record(self) -> str | None:
        """The ledger's text: ``name:reason`` per blocked call, space-separated; None: none."""
        if not self.violations:
            return None
        return " ".join(f"{v.name}:{v.reason}" for v in self.violations)


def parse_record(record: str) -> list[tuple[str, str]]:
    """``Guard.record`` back into (name, reason) pairs."""
    return [(name, reason) for name, _, reason in (part.rpartition(":") for part in record.split())]


_LABEL = re.compile(r"[^A-Za-z0-9_.-]")


def label_of(name: str) -> str:
    """A tool name fit for a record, a label and a message: a model may make up any name."""
    return _LABEL.sub("_", name[:MAX_NAME]) or "(none)"


def _quote(name: str) -> str:
    return repr(label_of(name))


# --- resolution ---------------------------------------------------------------------------------


def resolve(config: Config, tenant: str | None, task: str) -> Rules | None:
    """The rules of ``tenant`` (a config tenant, or None) on ``task``; None when not checked."""
    tenant_cfg = config.tenants.get(tenant) if tenant is not None else None
    layers: list[ToolsConfig] = []  # most specific first
    if tenant_cfg is not None:
        if task in tenant_cfg.task_tools:
            layers.append(tenant_cfg.task_tools[task])
        if tenant_cfg.tools is not None:
            layers.append(tenant_cfg.tools)
    own = config.tasks[task].tools
    if own is not None:
        layers.append(own)
    if not layers:
        return None
    allow = next((c.allow for c in layers if c.allow is not None), [])
    strict = next((c.strict for c in layers if c.strict is not None), True)
    mode: OnViolation = next((c.on_violation for c in layers if c.on_violation is not None), "refuse")
    return Rules(task, frozenset(allow), strict, mode)


def named(config: Config) -> frozenset[str]:
    """Every tool name an allowlist of ``config`` names: the metrics' bounded tool labels."""
    blocks = [task.tools for task in config.tasks.values()]
    for tenant in config.tenants.values():
        blocks += [tenant.tools, *tenant.task_tools.values()]
    return frozenset(name for block in blocks if block is not None for name in block.allow or ())


class Allowlists:
    """Every (tenant, task) pair's rules, resolved once; a caller that is no config tenant (the
    anonymous one) gets the task's own."""

    def __init__(self, config: Config) -> None:
        self._tenants = frozenset(config.tenants)
        self._rules: dict[tuple[str | None, str], Rules] = {}
        for task in config.tasks:
            for tenant in (None, *config.tenants):
                rules = resolve(config, tenant, task)
                if rules is not None:
                    self._rules[(tenant, task)] = rules

    def get(self, tenant: str, task: str) -> Rules | None:
        """None: tool calls are not checked for this tenant and task."""
        if not self._rules:
            return None
        return self._rules.get((tenant if tenant in self._tenants else None, task))


# --- what a body declares and an answer calls ---------------------------------------------------


def _declared(body: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """(param, name, parameters schema) per declared tool. The chat door has checked ``tools``'
    shape; the legacy ``functions`` and a release's parameters are checked here."""
    for key, nested in (("tools", True), ("functions", False)):
        listed = body.get(key)
        if listed is None:
            continue
        if not isinstance(listed, list):
            raise RequestError(f"'{key}' must be an array", param=key, code="invalid_value")
        for i, entry in enumerate(listed):
            fn = entry.get("function") if nested and isinstance(entry, dict) else entry
            name = fn.get("name") if isinstance(fn, dict) else None
            if not isinstance(fn, dict) or not isinstance(name, str) or not name:
                raise RequestError(f"'{key}[{i}]' must name its function", param=f"{key}[{i}]", code="invalid_value")
            yield f"{key}[{i}]", name, fn.get("parameters")


def _calls(body: dict[str, Any]) -> Iterator[tuple[Any, Any]]:
    """(name, arguments) per tool call in a completion, legacy ``function_call`` included."""
    for choice in body.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        calls = message.get("tool_calls")
        # None, [] (a plain-text answer) hold no call; anything else not a list is one, malformed
        for call in (calls if isinstance(calls, list) else [calls]) if calls else ():
            fn = call.get("function") if isinstance(call, dict) else None
            yield (fn.get("name"), fn.get("arguments")) if isinstance(fn, dict) else (None, None)
        legacy = message.get("function_call")
        if legacy:
            yield (legacy.get("name"), legacy.get("arguments")) if isinstance(legacy, dict) else (None, None)


# --- argument schemas ---------------------------------------------------------------------------


def _ignored(*_: Any) -> None:
    return None


# Draft 2020-12 (``unevaluatedProperties`` composes with allOf / anyOf / $ref), with the caller's
# regular expressions never run.
_SchemaValidator = jsonschema.validators.extend(  # type: ignore[no-untyped-call]  # untyped in the stubs
    jsonschema.Draft202012Validator, {"pattern": _ignored, "patternProperties": _ignored}
)
_COMPILED: dict[tuple[bytes, bool], Validator | str] = {}
_DEFUSED = frozenset({"pattern", "patternProperties"})
# Keywords whose schemas describe a *child* of the instance (a property, an item): each such
# schema is its own object scope, closed under strict. In-place applicators (allOf, anyOf,
# oneOf, $ref, if/then/else, not) describe the same instance: their scope is the parent's.
_CHILD_MAPS = ("properties",)
_IN_PLACE_MAPS = ("$defs", "definitions", "dependentSchemas")  # $defs: scoped where a $ref uses them
_CHILD = ("additionalProperties", "items", "contains", "additionalItems", "unevaluatedItems", "propertyNames")
_CHILD_LISTS = ("prefixItems",)
_IN_PLACE = ("not", "if", "then", "else")
_IN_PLACE_LISTS = ("allOf", "anyOf", "oneOf")
_OBJECT_HINTS = ("properties", "required", "allOf", "anyOf", "oneOf", "$ref")
_COMPOSING = ("allOf", "anyOf", "oneOf", "$ref", "$dynamicRef", "if", "dependentSchemas", "not")


def _compiled(schema: Any, strict: bool, param: str) -> Validator:
    """The validator of a declared ``parameters`` schema (absent: an object with no
    properties under strict, any object otherwise), or 400 naming ``param``."""
    if schema is None:
        schema = {"type": "object", "properties": {}} if strict else {"type": "object"}
    if not isinstance(schema, dict):
        raise RequestError(f"'{param}' must be a JSON Schema object", param=param, code="invalid_value")
    key = (orjson.dumps(schema, option=orjson.OPT_SORT_KEYS), strict)
    found = _COMPILED.get(key)
    if found is None:
        if len(_COMPILED) >= MAX_SCHEMAS:
            _COMPILED.clear()
        defused = _defuse(schema, close=strict, scope=True)
        try:
            _SchemaValidator.check_schema(defused)
        except jsonschema.SchemaError as exc:
            found = f"'{param}' is not a valid JSON Schema ({exc.validator} at {_where(exc.absolute_path)})"
        else:
            # An empty registry: a $ref to another document is never fetched (jsonschema's default
            # would fetch it, a request forgery with the caller's URL), it fails to resolve.
            found = _SchemaValidator(defused, registry=Registry())
        _COMPILED[key] = found
    if isinstance(found, str):
        raise RequestError(found, param=param, code="invalid_value")
    return found


def compile_schema(schema: Any, param: str) -> Validator:
    """A caller's JSON Schema compiled as declared tool parameters are (its regular expressions
    dropped, no remote ``$ref``, cached), as written (not closed): the output checks use it for
    a request's ``response_format`` schema (``turnout.safety.output``). 400 naming ``param``."""
    return _compiled(schema, False, param)


def _defuse(schema: Any, *, close: bool, scope: bool) -> Any:
    """A copy without the caller's regular expressions; with ``close``, every object scope that
    says nothing of extra properties gets ``unevaluatedProperties: false`` (``additionalProperties``
    where nothing composes the scope)."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DEFUSED:
            continue
        if key in _CHILD_MAPS and isinstance(value, dict):
            out[key] = {k: _defuse(v, close=close, scope=True) for k, v in value.items()}
        elif key in _IN_PLACE_MAPS and isinstance(value, dict):
            out[key] = {k: _defuse(v, close=close, scope=False) for k, v in value.items()}
        elif key in _CHILD:
            out[key] = _defuse(value, close=close, scope=True)
        elif key in _CHILD_LISTS and isinstance(value, list):
            out[key] = [_defuse(v, close=close, scope=True) for v in value]
        elif key in _IN_PLACE:
            out[key] = _defuse(value, close=close, scope=False)
        elif key in _IN_PLACE_LISTS and isinstance(value, list):
            out[key] = [_defuse(v, close=close, scope=False) for v in value]
        else:
            out[key] = value
    if close and scope and _object_like(out) and not ({"additionalProperties", "unevaluatedProperties"} & out.keys()):
        # Without in-place applicators the two say the same, and additionalProperties is cheaper.
        composed = any(k in out for k in _COMPOSING)
        out["unevaluatedProperties" if composed else "additionalProperties"] = False
    return out


def _object_like(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    if kind == "object" or (isinstance(kind, list) and "object" in kind):
        return True
    return kind is None and any(k in schema for k in _OBJECT_HINTS)


def _arguments_problem(validator: Validator, arguments: Any) -> str | None:
    """Why the arguments fail (where and which keyword, never a value), or None."""
    if isinstance(arguments, str):
        try:
            arguments = orjson.loads(arguments) if arguments.strip() else {}
        except orjson.JSONDecodeError:
            return "are not JSON"
    if not isinstance(arguments, dict):
        return "are not a JSON object"
    try:
        error = next(iter(validator.iter_errors(arguments)), None)
    except (Unresolvable, RecursionError):
        return "cannot be checked against the declared schema"
    if error is None:
        return None
    return f"fail the declared schema at {_where(error.absolute_path)} ({error.validator})"


def _where(path: Any) -> str:
    return "/" + "/".join(label_of(str(p)) for p in path) if path else "(root)"
