"""Release files: ``<releases.path>/<task>/<release>.yaml`` read into ``Release`` and checked
against the config.

Every problem is reported as ``<file>: <key.path>: <message>`` and all of a load's problems come
together in one ``ConfigError``, like the config's own. A release that loads is safe to
register: its task exists, its targets are on the task's route, its templates parse in the
sandbox and use only declared variables, its parameters are known generation parameters and
its output schema is a valid JSON Schema.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2 import meta
from jsonschema import SchemaError
from jsonschema.validators import validator_for
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from turnout.config import Config, UniqueKeyLoader, not_utf8, yaml_problem
from turnout.errors import ConfigError
from turnout.releases.base import VARIABLE_TYPES, Prompt, Release
from turnout.releases.render import template_environment

SUFFIX = ".yaml"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PromptFile(_Strict):
    system: str | None = None
    user: str = Field(min_length=1)
    variables: dict[str, str] = {}


class Params(_Strict):
    """The generation parameters a release may fix; anything else is refused at load so a typo
    (``max_token``) cannot silently change nothing."""

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    response_format: dict[str, Any] | None = None


class ReleaseFile(_Strict):
    target: str | None = Field(None, min_length=1)
    route: list[str] | None = Field(None, min_length=1)
    model_version: str | None = None
    tokenizer: str | None = None
    prompt: PromptFile
    params: dict[str, Any] = {}  # checked against Params with the config, so all problems come at once
    output_schema: dict[str, Any] | None = None
    retrieval: dict[str, Any] | None = None
    safety: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_target_form(self) -> ReleaseFile:
        if (self.target is None) == (self.route is None):
            raise ValueError("give exactly one of target or route")
        return self


def release_path(config: Config, task: str, name: str) -> Path:
    return Path(config.releases.path) / task / f"{name}{SUFFIX}"


def load_release(path: str | Path, config: Config) -> Release:
    """One file, its task from the directory and its name from the file name; raises
    ConfigError naming the file and key of every problem."""
    path = Path(path)
    task, name = path.parent.name, path.name.removesuffix(SUFFIX)
    release, problems = _read(path, task, name)
    if release is not None:
        problems += [f"{path}: {p}" for p in check_release(release, config)]
    if problems:
        raise ConfigError(problems)
    assert release is not None
    return release


def load_task(config: Config, task: str) -> dict[str, Release]:
    """Every release file of one task (none: an empty dict)."""
    return load_all(config, tasks=[task]).get(task, {})


def load_all(config: Config, tasks: list[str] | None = None) -> dict[str, dict[str, Release]]:
    """Every release file under ``releases.path`` (or only those of ``tasks``), by task and
    name. A directory that is not a configured task is a problem, as is a file that is not
    ``*.yaml``; a missing ``releases.path`` means no releases."""
    root = Path(config.releases.path)
    found: dict[str, dict[str, Release]] = {}
    problems: list[str] = []
    if not root.is_dir():
        return found
    for task_dir in sorted(root.iterdir()):
        if tasks is not None and task_dir.name not in tasks:
            continue
        if not task_dir.is_dir():
            if not task_dir.name.startswith("."):
                problems.append(f"{task_dir}: not a task directory (expected {root}/<task>/<release>{SUFFIX})")
            continue
        if task_dir.name not in config.tasks:
            problems.append(f"{task_dir}: no task {task_dir.name!r} in the config ({_known(config)})")
            continue
        for path in sorted(task_dir.iterdir()):
            if path.name.startswith("."):
                continue
            if path.suffix != SUFFIX or not path.is_file():
                problems.append(f"{path}: not a release file (release files end in {SUFFIX})")
                continue
            try:
                found.setdefault(task_dir.name, {})[path.name.removesuffix(SUFFIX)] = load_release(path, config)
            except ConfigError as exc:
                problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return found


def check_release(release: Release, config: Config) -> list[str]:
    """Problems between a release and the config, and in its templates, params and schema,
    each as ``key.path: message``."""
    problems: list[str] = []
    if not NAME.fullmatch(release.name):
        problems.append(f"name: {release.name!r} is not a release name (letters, digits, '.', '_', '-'; up to 64)")
    task = config.tasks.get(release.task)
    if task is None:
        problems.append(f"task: no task {release.task!r} in the config ({_known(config)})")
    else:
        key = "target" if len(release.route) == 1 else "route"
        seen: set[str] = set()
        for i, target in enumerate(release.route):
            where = key if key == "target" else f"route[{i}]"
            if target not in task.route:
                problems.append(
                    f"{where}: target {target!r} is not on the route of task {release.task!r} ({', '.join(task.route)})"
                )
            elif target in seen:
                problems.append(f"{where}: target {target!r} listed twice")
            seen.add(target)
    problems += _prompt_problems(release.prompt)
    try:
        Params.model_validate(release.params)
    except ValidationError as exc:
        problems += _problems(exc, "params")
    if release.output_schema is not None:
        problems += _schema_problems(release.output_schema)
    return problems


def _read(path: Path, task: str, name: str) -> tuple[Release | None, list[str]]:
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except OSError as exc:
        return None, [f"{path}: cannot read ({exc.strerror})"]
    except UnicodeDecodeError as exc:
        return None, [not_utf8(path, exc)]
    except yaml.YAMLError as exc:
        return None, [f"{path}: not valid YAML: {yaml_problem(exc)}"]
    if not isinstance(raw, dict):
        return None, [f"{path}: the top level must be a mapping"]
    try:
        spec = ReleaseFile.model_validate(raw)
    except ValidationError as exc:
        return None, [f"{path}: {p}" for p in _problems(exc)]
    release = Release(
        task=task,
        name=name,
        route=(spec.target,) if spec.target is not None else tuple(spec.route or ()),
        model_version=spec.model_version,
        tokenizer=spec.tokenizer,
        prompt=Prompt(system=spec.prompt.system, user=spec.prompt.user, variables=dict(spec.prompt.variables)),
        params=dict(spec.params),
        output_schema=spec.output_schema,
        retrieval=spec.retrieval,
        safety=spec.safety,
    )
    return release, []


def _prompt_problems(prompt: Prompt) -> list[str]:
    problems: list[str] = []
    for name, kind in prompt.variables.items():
        if not name.isidentifier():
            problems.append(f"prompt.variables.{name}: not a valid variable name")
        if kind not in VARIABLE_TYPES:
            problems.append(f"prompt.variables.{name}: unknown type {kind!r} (expected {', '.join(VARIABLE_TYPES)})")
    env = template_environment()
    for part, source in (("system", prompt.system), ("user", prompt.user)):
        if source is None:
            continue
        try:
            used = meta.find_undeclared_variables(env.parse(source))
        except jinja2.TemplateSyntaxError as exc:
            problems.append(f"prompt.{part}: template syntax error on line {exc.lineno}: {exc.message}")
            continue
        for name in sorted(used - set(prompt.variables)):
            problems.append(f"prompt.{part}: uses {name!r}, which prompt.variables does not declare")
    return problems


def _schema_problems(schema: dict[str, Any]) -> list[str]:
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.path)
        return [f"output_schema{where}: not a valid JSON Schema: {exc.message}"]
    return []


def _problems(exc: ValidationError, prefix: str = "") -> list[str]:
    out: list[str] = []
    for err in exc.errors():
        parts = [prefix] if prefix else []
        for item in err["loc"]:
            if isinstance(item, int):
                parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
            # pydantic names the branch of ``stop: str | list[str]`` it tried; the user wrote no such key.
            elif item not in ("str", "list[str]") or not parts or parts[-1] != "stop":
                parts.append(str(item))
        loc = ".".join(parts)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            if parts[:1] == ["params"]:
                msg = f"unknown generation parameter (known: {', '.join(Params.model_fields)})"
        out.append(f"{loc}: {msg}" if loc else msg)
    return out


def _known(config: Config) -> str:
    return "tasks: " + (", ".join(sorted(config.tasks)) or "none")
