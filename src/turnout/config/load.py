"""Reading a config: the YAML file (duplicate keys, alias bombs and deep nesting refused),
``${VAR}`` and ``${VAR:-default}`` substituted from the environment in values (a key holding
one is refused), then every problem, per field and across sections, reported together with
its key path (``ConfigError``); the built-in default when there is no file."""

from __future__ import annotations

import os
import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from turnout._support.suggest import keys_at, nearest
from turnout.config.checks import cross_problems
from turnout.config.model import PROVIDERS, Config
from turnout.errors import ConfigError

DEFAULT = {
    "targets": {"local": {"provider": "local"}},
    "tasks": {"default": {"route": ["local"], "description": "the embedded SmolLM2 model"}},
}


def default_config() -> Config:
    return validate(DEFAULT)


def load_config(path: str | Path | None, env: dict[str, str] | None = None) -> Config:
    """Load, substitute ``${VAR}`` / ``${VAR:-default}`` and validate; raise ConfigError with
    every problem found."""
    if path is None:
        return default_config()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([not_utf8(path, exc)]) from None
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {yaml_problem(exc)}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: the top level must be a mapping"])
    problems: list[str] = []
    raw = _substitute(raw, "", os.environ if env is None else env, problems)
    if problems:
        raise ConfigError(problems)
    return validate(raw)


def not_utf8(path: str | Path, exc: UnicodeDecodeError) -> str:
    """What a file turnout reads as text (a config, a release, a golden set) says when it is
    not UTF-8: where, and the first byte that is not (never more of the file)."""
    return f"{path}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start : exc.start + 1]!r})"


def given(config: Config) -> dict[str, Any]:
    """What ``validate`` made ``config`` from: the fields that were set, as plain data, to change
    and validate again. Not ``model_dump()``: defaults dumped back in would read as set, and a
    validator that tells forms apart by which fields were given (a price: managed or
    self-hosted) would see both."""
    return config.model_dump(exclude_unset=True)


def validate(raw: dict[str, Any]) -> Config:
    problems = cross_problems(raw)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_problems(exc) + problems) from exc
    if problems:
        raise ConfigError(problems)
    return config


def _problems(exc: ValidationError) -> list[str]:
    out: list[str] = []
    for err in exc.errors():
        loc = _path(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        key = _bad_key(err)
        if key is not None:  # `5:` or `2024-01-01:` where a name or setting is text
            parent = _path(err["loc"][:-2] if err["loc"][-1] == "[key]" else err["loc"][:-1])
            loc, msg = parent, f"key {key} must be text (quote it)"
        elif err["type"] == "literal_error" and err["loc"][-1:] == ("[key]",):  # `policy: {restriced: …}`
            loc, expected = _path(err["loc"][:-1]), err.get("ctx", {}).get("expected", "")
            guess = nearest(err["loc"][-2], re.findall(r"'([^']*)'", expected))
            msg = "unknown key" + (guess or f" (expected {expected})")
        elif err["type"] in _SECTION_TYPES:  # pydantic names its class: "instance of StoreConfig"
            msg = f"must be a mapping (key: value), not {_kind(err.get('input'))}"
        elif err["type"] == "list_type":
            msg = f"must be a list, not {_kind(err.get('input'))}"
        elif err["type"] == "extra_forbidden":
            msg = "unknown key" + nearest(err["loc"][-1], keys_at(Config, err["loc"]))
        elif err["type"] == "union_tag_invalid":
            msg = f"unknown provider {err.get('input', {}).get('provider')!r} (expected {', '.join(PROVIDERS)})"
        elif err["type"] == "union_tag_not_found":
            msg = f"missing 'provider' ({', '.join(PROVIDERS)})"
        out.append(f"{loc}: {msg}" if loc else msg)
    return out


_SECTION_TYPES = ("model_type", "dict_type", "model_attributes_type")


def _kind(value: Any) -> str:
    """What a YAML value is, in YAML's words (the type problems' "not ...")."""
    if value is None:
        return "empty (null)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return "text"  # not quoted: it may be a secret from the environment in the wrong place
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _bad_key(err: Any) -> str | None:
    """The key a mapping's key error is about (pydantic's ``[key]`` marker after it, or a
    model's ``invalid_key``), as the file wrote it as near as pydantic kept it; None otherwise."""
    loc = err["loc"]
    if err["type"] == "invalid_key" and loc:
        return str(loc[-1])
    if err["type"] == "string_type" and len(loc) >= 2 and loc[-1] == "[key]":
        return str(loc[-2])
    return None


def _path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for i, item in enumerate(loc):
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif i == 2 and loc[0] == "targets" and item in PROVIDERS:
            continue  # the discriminator's branch name is not a key the user wrote
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")
_OPEN = re.compile(r"\$\{")  # left once every ${NAME} and ${NAME:-default} is taken out


def _substitute(node: Any, where: str, env: Any, problems: list[str]) -> Any:
    if isinstance(node, dict):
        for key in node:
            if isinstance(key, str) and "${" in key:  # a name from the environment would differ unseen
                place = f"{where}.{key}" if where else key
                problems.append(f"{place}: ${{...}} is replaced in values only, not in keys (names)")
        return {k: _substitute(v, f"{where}.{k}" if where else str(k), env, problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, f"{where}[{i}]", env, problems) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:

        def repl(m: re.Match[str]) -> str:
            value = env.get(m.group(1))
            if m.group(2) is not None and not value:
                return m.group(2)  # as in the shell, ":-" also covers a variable set but empty
            if value is None:
                problems.append(f"{where}: environment variable {m.group(1)} is not set")
                return ""
            return str(value)

        if any("${" in (m.group(2) or "") for m in _VAR.finditer(node)):
            # "${A:-${B}}" read as the default "${B" and a "}": the literal "${B}", or A's value and a "}"
            problems.append(f"{where}: a ${{NAME:-default}} whose default holds ${{...}} (they do not nest)")
            return node
        substituted = _VAR.sub(repl, node)
        if _OPEN.search(_VAR.sub("", node)):  # "${NAME" without its brace, or "${}": not taken literally
            problems.append(f"{where}: an unterminated or empty ${{...}} (write ${{NAME}} or ${{NAME:-default}})")
        return substituted
    return node


MAX_DEPTH = 100  # levels of nesting, aliases expanded; a JSON schema in a task needs a few dozen
MAX_VALUES = 1_000_000  # values in a document, aliases expanded


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys instead of keeping the last one, and a key
    that is itself a list or a mapping (``? [a]``, ``{[1]: x}``), which no setting is.

    And a document that only its aliases make huge ("billion laughs": nine lists of nine
    aliases of the one before hung ``check`` and ``serve`` while every value was substituted),
    deep (``[[[...]]]`` ended in a RecursionError traceback) or that holds itself."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> yaml.Node | None:
        node = super().compose_document()
        if node is not None:
            _measure(node)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                what = "a list" if isinstance(key, list) else "a mapping"
                raise yaml.constructor.ConstructorError(None, None, f"a key is {what}", key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _measure(root: yaml.Node) -> None:
    """Raise a ComposerError where ``root``, every alias expanded, holds more than MAX_VALUES
    values, is deeper than MAX_DEPTH or holds itself. Each node is measured once (an alias
    repeats a node, it is not walked again), without recursion."""
    measured: dict[int, tuple[int, int]] = {}  # id(node) → (values, depth) under it
    walking: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        inside = _children(node)
        if done:
            walking.discard(id(node))
            values = 1 + sum(measured[id(child)][0] for child in inside)
            depth = 1 + max((measured[id(child)][1] for child in inside), default=0)
            if values > MAX_VALUES or depth > MAX_DEPTH:
                what = f"more than {MAX_VALUES:,} values" if values > MAX_VALUES else f"deeper than {MAX_DEPTH} levels"
                raise yaml.composer.ComposerError(None, None, f"its aliases make it {what}", node.start_mark)
            measured[id(node)] = (values, depth)
        elif id(node) in walking:
            raise yaml.composer.ComposerError(None, None, "an alias refers to a node that holds it", node.start_mark)
        elif id(node) not in measured:
            walking.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in inside)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def yaml_problem(exc: yaml.YAMLError) -> str:
    """What the parser says and where (line, column), never the file's text: the line it
    quotes may hold a key (the message reaches the log and a reload's answer)."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return type(exc).__name__
    parts = []
    for what, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark)):
        if what:
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            parts.append(f"{what}{where}")
    return "; ".join(parts) or "unreadable"
