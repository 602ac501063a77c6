"""The deterministic scorers: ``equals``, ``contains``, ``regex``, ``json_schema``,
``required_fields``, ``number_close``. (``python_test`` lives in ``sandbox``, ``judge`` in
``judge``.) Argument reference, as written in a golden set:

    {"scorer": "equals", "value": "Paris", "ignore_case": true, "ignore_whitespace": true}
    {"scorer": "contains", "all": ["A-17", "mug"], "any": ["two", "2"], "ignore_case": true}
    {"scorer": "regex", "pattern": "^\\d{4}$", "flags": "im", "full": false, "negate": false}
    {"scorer": "json_schema", "schema": {"type": "object", "required": ["order_id"]}}
    {"scorer": "required_fields", "fields": ["order_id", "customer.name"], "values": {"qty": 2}}
    {"scorer": "number_close", "expected": 42.5, "abs_tol": 0.01, "rel_tol": 0, "pick": "last", "path": "total"}

Outputs are compared after stripping leading and trailing whitespace. JSON outputs may come bare
or inside one ```json fenced block.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Mapping
from typing import Any

import orjson

from turnout.offline.evals.cases import Case
from turnout.offline.evals.scoring import Score, Scorer, register

# jsonschema ships no type information; it is used through this one untyped handle.
_jsonschema: Any = importlib.import_module("jsonschema")

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?")
_REGEX_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every ``` fenced block, in order."""
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]


def parse_json_output(output: str) -> Any:
    """The output as JSON: bare, or the first ```json (or unlabelled) fenced block. Raises ValueError."""
    text = output.strip()
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as bare_error:
        for lang, body in fenced_blocks(text):
            if lang in ("json", ""):
                try:
                    return orjson.loads(body)
                except orjson.JSONDecodeError:
                    continue
        raise ValueError(f"output is not JSON: {bare_error}") from None


def lookup(obj: Any, path: str) -> tuple[bool, Any]:
    """Follow a dotted path (``customer.name``, ``items.0.sku``) through objects and lists."""
    cur = obj
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return False, None
    return True, cur


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _bool_args(args: Mapping[str, Any], *names: str) -> list[str]:
    return [f"'{n}' must be true or false" for n in names if n in args and not isinstance(args[n], bool)]


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


@register
class Equals(Scorer):
    name = "equals"
    arguments = ("value", "ignore_case", "ignore_whitespace")

    def check(self, args: Mapping[str, Any]) -> list[str]:
        problems = [] if isinstance(args.get("value"), str) else ["'value' must be a string"]
        return problems + _bool_args(args, "ignore_case", "ignore_whitespace")

    async def score(self, output: str, case: Case, args: Mapping[str, Any]) -> Score:
        got, want = self._norm(output, args), self._norm(args["value"], args)
        if got == want:
            return Score(True, 1.0)
        return Score(False, 0.0, f"expected {_short(args['value'])}, got {_short(output.strip())}")

    @staticmethod
    def _norm(text: str, args: Mapping[str, Any]) -> str:
        text = text.strip()
        if args.get("ignore_whitespace"):
            text = " ".join(text.split())
        if args.get("ignore_case"):
            text = text.casefold()
        return text


@register
class Contains(Scorer):
    """``all``: every string must occur; ``any``: at least one must; ``value``: one string."""

    name = "contains"
    arguments = ("value", "all", "any", "ignore_case")

    def check(self, args: Mapping[str, Any]) -> list[str]:
        problems = [f"'{k}' must be a list of strings" for k in ("all", "any") if k in args and not _strings(args[k])]
        if "value" in args and not isinstance(args["value"], str):
            problems.append("'value' must be a string")
        if not any(k in args for k in ("all", "any", "value")):
            problems.append("give 'value', 'all' or 'any'")
        if "any" in args and not args["any"]:
            problems.append("'any' must not be empty")
        return problems + _bool_args(args, "ignore_case")

    async def score(self, output: str, case: Case, args: Mapping[str, Any]) -> Score:
        fold = bool(args.get("ignore_case"))
        hay = output.casefold() if fold else output

        def has(needle: str) -> bool:
            return (needle.casefold() if fold else needle) in hay

        must = list(args.get("all", [])) + ([args["value"]] if "value" in args else [])
        missing = [s for s in must if not has(s)]
        any_of: list[str] = list(args.get("any", []))
        found_any = not any_of or any(has(s) for s in any_of)
        checked = len(must) + (1 if any_of else 0)
        value = (len(must) - len(missing) + (1 if any_of and found_any else 0)) / checked
        if not missing and found_any:
            return Score(True, value)
        detail = []
        if missing:
            detail.append(f"missing {', '.join(map(_short, missing))}")
        if not found_any:
            detail.append(f"none of {', '.join(map(_short, any_of))}")
        return Score(False, value, "; ".join(detail))


@register
class Regex(Scorer):
    """``full``: the whole (stripped) output must match; otherwise a match anywhere. ``negate``:
    pass when it does not match."""

    name = "regex"
    arguments = ("pattern", "flags", "full", "negate")

    def check(self, args: Mapping[str, Any]) -> list[str]:
        pattern, flags = args.get("pattern"), args.get("flags", "")
        if not isinstance(pattern, str):
            return ["'pattern' must be a string"]
        if not isinstance(flags, str) or set(flags) - set(_REGEX_FLAGS):
            return [f"'flags' must be a string of {''.join(_REGEX_FLAGS)}"]
        try:
            self._compile(args)
        except re.error as exc:
            return [f"bad pattern: {exc}"]
        return _bool_args(args, "full", "negate")

    @staticmethod
    def _compile(args: Mapping[str, Any]) -> re.Pattern[str]:
        flags = 0
        for ch in args.get("flags", ""):
            flags |= _REGEX_FLAGS[ch]
        return re.compile(args["pattern"], flags)

    async def score(self, output: str, case: Case, args: Mapping[str, Any]) -> Score:
        rx = self._compile(args)
        m = rx.fullmatch(output.strip()) if args.get("full") else rx.search(output)
        if args.get("negate"):
            ok = m is None
            return Score(ok, 1.0 if ok else 0.0, "" if ok else f"matched {_short(m.group(0) if m else '')}")
        return Score(m is not None, 1.0 if m else 0.0, "" if m else f"no match for /{args['pattern']}/")


@register
class JsonSchema(Scorer):
    name = "json_schema"
    arguments = ("schema",)

    def check(self, args: Mapping[str, Any]) -> list[str]:
        schema = args.get("schema")
        if not isinstance(schema, dict | bool):
            return ["'schema' must be a JSON Schema object"]
        try:
            _jsonschema.validators.validator_for(schema).check_schema(schema)
        except _jsonschema.exceptions.SchemaError as exc:
            return [f"invalid schema: {exc.message}"]
        return []

    async def score(self, output: str, case: Case, args: Mapping[str, Any]) -> Score:
        try:
            doc = parse_json_output(output)
        except ValueError as exc:
            return Score(False, 0.0, str(exc))
        schema = args["schema"]
        validator = _jsonschema.validators.validator_for(schema)(schema)
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        if not errors:
            return Score(True, 1.0)
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(root)"
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        return Score(False, 0.0, f"{where}: {first.message}{more}")


@register
class RequiredFields(Scorer):
    """The output is a JSON object with every path in ``fields`` present, and every path in
    ``values`` equal to its value. ``value`` is the share of those checks that hold."""

    name = "required_fields"
    arguments = ("fields", "values")

    def check(self, args: Mapping[str, Any]) -> list[str]:
        problems = []
        if "fields" in args and not _strings(args["fields"]):
            problems.append("'fields' must be a list of strings")
        if "values" in args and not isinstance(args["values"], dict):
            problems.append("'values' must be an object of path → expected value")
        if not args.get("fields") and not args.get("values"):
            problems.append("give 'fields' or 'values'")
        return problems

    async def score(self, output: str, case: Case, args: Mapping[str, Any]) -> Score:
        try:
            doc = parse_json_output(output)
        except ValueError as exc:
            return Score(False, 0.0, str(exc))
        values: dict[str, Any] = args.get("values", {})
        fields = [f for f in args.get("fields", []) if f not in values]
        problems: list[str] = []
        for path in fields:
            if not lookup(doc, path)[0]:
                problems.append(f"missing {path}")
        for path, want in values.items():
            found, got = lookup(doc, path)
            if not found:
                problems.append(f"missing {path}")
            elif got != want or isinstance(got, bool) != isinstance(want, bool):  # 1 is not true
                problems.append(f"{path}: expected {_short(want)}, got {_short(got)}")
        total = len(fields) + len(values)
        return Score(not problems, (total - len(problems)) / total, "; ".join(problems))


@register
class NumberClose(Scorer):
    """A number taken from the output (``pick``: the first or last number in the text, or the
    JSON value at ``path``) within ``abs_tol`` or ``rel_tol`` (relative to ``expected``) of
    ``expected``. Thousands separators (1,234.5) are understood."""

    name = "number_close"
    arguments = ("expected", "abs_tol", "rel_tol", "path", "pick")

    def check(self, args: Mapping[str, Any]) -> list[str]:
        problems = []
        if not _is_number(args.get("expected")):
            problems.append("'expected' must be a number")
        for k in ("abs_tol", "rel_tol"):
            if k in args and not (_is_number(args[k]) and args[k] >= 0):
                problems.append(f"'{k}' must be a number ≥ 0")
        if args.get("pick", "last") not in ("first", "last"):
            problems.append("'pick' must be 'first' or 'last'")
        if "path" in args and not isinstance(args["path"], str):
            problems.append("'path' must be a string")
        return problems

    async def score(self, output: str, case: Case, args: Mapping[str, Any]) -> Score:
        got = self._extract(output, args)
        if isinstance(got, str):
            return Score(False, None, got)
        want = float(args["expected"])
        abs_tol, rel_tol = float(args.get("abs_tol", 0.0)), float(args.get("rel_tol", 0.0))
        ok = abs(got - want) <= max(abs_tol, rel_tol * abs(want))
        return Score(ok, got, "" if ok else f"expected {want:g} ± max({abs_tol:g}, {rel_tol:g}×), got {got:g}")

    @staticmethod
    def _extract(output: str, args: Mapping[str, Any]) -> float | str:
        """The number, or a message saying why there is none."""
        if "path" in args:
            try:
                found, value = lookup(parse_json_output(output), args["path"])
            except ValueError as exc:
                return str(exc)
            if not found:
                return f"missing {args['path']}"
            if _is_number(value):
                return float(value)
            output = str(value)
        matches = _NUMBER.findall(output)
        if not matches:
            return "no number in the output"
        raw = matches[0] if args.get("pick", "last") == "first" else matches[-1]
        number = float(raw.replace(",", ""))
        return number if math.isfinite(number) else f"not a finite number: {raw}"


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
