"""Release files: loading, every validation problem named by file and key, and what the version
and prompt version hash."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

import pytest

from turnout.config import Config, validate
from turnout.errors import ConfigError
from turnout.releases.base import Prompt, Release
from turnout.releases.files import check_release, load_all, load_release, load_task

GOOD = """
target: qwen
model_version: sha256:4f1c
tokenizer: Qwen/Qwen3-32B
prompt:
  system: "You extract orders. Answer with JSON only."
  user: "Extract the order from: {{ text }}{% if hint %} ({{ hint }}){% endif %}"
  variables: {text: str, hint: str}
params: {temperature: 0, max_tokens: 200, stop: ["\\n\\n"]}
output_schema: {type: object, required: [order_id], properties: {order_id: {type: string}}}
retrieval: {index: orders, k: 4}
safety: {pii: redact}
"""


def make_config(tmp_path: Path) -> Config:
    return validate(
        {
            "targets": {
                "qwen": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "q"},
                "deepseek": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "d"},
                "other": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "o"},
            },
            "tasks": {"extract": {"route": ["qwen", "deepseek"]}, "summarise": {"route": ["other"]}},
            "releases": {"path": str(tmp_path / "releases"), "store_path": str(tmp_path / "releases.db")},
        }
    )


def write(tmp_path: Path, task: str, name: str, text: str) -> Path:
    path = tmp_path / "releases" / task / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def problems(tmp_path: Path, text: str, task: str = "extract") -> list[str]:
    path = write(tmp_path, task, "v1", text)
    with pytest.raises(ConfigError) as info:
        load_release(path, make_config(tmp_path))
    return [p.removeprefix(f"{path}: ") for p in info.value.problems]


def test_a_good_file_loads_into_a_release(tmp_path: Path) -> None:
    path = write(tmp_path, "extract", "v1", GOOD)
    release = load_release(path, make_config(tmp_path))
    assert release.task == "extract" and release.name == "v1"
    assert release.route == ("qwen",)
    assert release.model_version == "sha256:4f1c" and release.tokenizer == "Qwen/Qwen3-32B"
    assert release.prompt.variables == {"text": "str", "hint": "str"}
    assert release.params == {"temperature": 0, "max_tokens": 200, "stop": ["\n\n"]}
    assert release.output_schema is not None and release.output_schema["required"] == ["order_id"]
    assert release.retrieval == {"index": "orders", "k": 4} and release.safety == {"pii": "redact"}


def test_a_route_keeps_its_order(tmp_path: Path) -> None:
    text = GOOD.replace("target: qwen", "route: [deepseek, qwen]")
    release = load_release(write(tmp_path, "extract", "v1", text), make_config(tmp_path))
    assert release.route == ("deepseek", "qwen")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("target: qwen", "target: other"),
            "target: target 'other' is not on the route of task 'extract' (qwen, deepseek)",
        ),
        (("target: qwen", "route: [qwen, nope]"), "route[1]: target 'nope' is not on the route of task 'extract'"),
        (("target: qwen", "route: [qwen, qwen]"), "route[1]: target 'qwen' listed twice"),
        (("target: qwen", "route: []"), "route: List should have at least 1 item"),
        (("target: qwen", "route: [qwen]\ntarget: qwen"), "give exactly one of target or route"),
        (("target: qwen", ""), "give exactly one of target or route"),
        (("variables: {text: str, hint: str}", "variables: {text: str}"), "prompt.user: uses 'hint', which"),
        (("variables: {text: str, hint: str}", "variables: {text: str, hint: string}"), "unknown type 'string'"),
        (("{{ text }}", "{{ text "), "prompt.user: template syntax error on line 1"),
        (('system: "You', 'system: "{{ lang }} You'), "prompt.system: uses 'lang', which prompt.variables"),
        (("max_tokens: 200", "max_token: 200"), "params.max_token: unknown generation parameter (known: temperature"),
        (("temperature: 0", "temperature: 5"), "params.temperature: Input should be less than or equal to 2"),
        (("max_tokens: 200", "max_tokens: -1"), "params.max_tokens: Input should be greater than 0"),
        (("{type: string}", "{type: strin}"), "output_schema.properties.order_id.type: not a valid JSON Schema"),
        (("required: [order_id]", "required: order_id"), "output_schema.required: not a valid JSON Schema"),
        (("safety: {pii: redact}", "safety: {pii: redact}\ncolour: blue"), "colour: unknown key"),
        (("tokenizer: Qwen/Qwen3-32B", "tokenizer: [a]"), "tokenizer: Input should be a valid string"),
    ],
)
def test_problems_name_the_key(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    assert change[0] in GOOD
    found = problems(tmp_path, GOOD.replace(*change))
    assert any(expected in p for p in found), found


def test_the_prompt_needs_a_user_template(tmp_path: Path) -> None:
    found = problems(tmp_path, "target: qwen\nprompt: {system: hi}\n")
    assert found == ["prompt.user: Field required"]


def test_every_problem_names_its_file(tmp_path: Path) -> None:
    path = write(tmp_path, "extract", "v1", GOOD.replace("max_tokens: 200", "max_token: 200").replace("qwen", "x"))
    with pytest.raises(ConfigError) as info:
        load_release(path, make_config(tmp_path))
    assert len(info.value.problems) == 2
    assert all(p.startswith(f"{path}: ") for p in info.value.problems)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- a\n- b\n", "the top level must be a mapping"),
        ("target: [unclosed\n", "not valid YAML"),
        ("target: qwen\ntarget: qwen\n", "duplicate key 'target'"),
    ],
)
def test_unreadable_files(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in problems(tmp_path, text)[0]


def test_a_file_that_is_not_utf8_is_named_with_its_first_bad_byte(tmp_path: Path) -> None:
    # It was a UnicodeDecodeError traceback: in `release register`, and in check and start-up.
    path = write(tmp_path, "extract", "v1", "")
    path.write_bytes("prompt: {user: 'caf\u00e9'}\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_task(make_config(tmp_path), "extract")
    assert info.value.problems == [f"{path}: not UTF-8 text (byte 19: b'\\xe9')"]


def test_load_all_collects_every_problem_and_names_unknown_tasks(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    write(tmp_path, "extract", "v1", GOOD)
    bad = write(tmp_path, "extract", "v2", GOOD.replace("target: qwen", "target: other"))
    write(tmp_path, "nope", "v1", GOOD)
    (tmp_path / "releases" / "extract" / "v3.yml").write_text(GOOD)
    with pytest.raises(ConfigError) as info:
        load_all(config)
    text = "\n".join(info.value.problems)
    assert f"{bad}: target: target 'other'" in text
    assert "nope: no task 'nope' in the config (tasks: extract, summarise)" in text
    assert "v3.yml: not a release file (release files end in .yaml)" in text


def test_load_all_by_task_and_name(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert load_all(config) == {}  # no releases directory: no releases
    write(tmp_path, "extract", "v1", GOOD)
    write(tmp_path, "extract", "v2", GOOD.replace("temperature: 0", "temperature: 0.2"))
    write(tmp_path, "summarise", "s1", "target: other\nprompt: {user: hi}\n")
    found = load_all(config)
    assert sorted(found) == ["extract", "summarise"]
    assert sorted(found["extract"]) == ["v1", "v2"]
    assert load_task(config, "summarise")["s1"].prompt.system is None
    assert load_task(config, "extract").keys() == {"v1", "v2"}


def release(**changes: Any) -> Release:
    base = Release(
        task="extract",
        name="v1",
        route=("qwen",),
        model_version="sha256:4f1c",
        tokenizer="Qwen/Qwen3-32B",
        prompt=Prompt(system="sys", user="{{ text }}", variables={"text": "str"}),
        params={"temperature": 0},
        output_schema={"type": "object"},
        retrieval={"k": 4},
        safety={"pii": "redact"},
    )
    return dataclasses.replace(base, **changes)


def test_check_release_accepts_the_base_release(tmp_path: Path) -> None:
    assert check_release(release(), make_config(tmp_path)) == []
    assert "name: 'a b' is not a release name" in check_release(release(name="a b"), make_config(tmp_path))[0]
    # `$` alone also matches before a final line break: the whole name is checked
    assert "is not a release name" in check_release(release(name="v1\n"), make_config(tmp_path))[0]
    assert "task: no task 'x'" in check_release(release(task="x"), make_config(tmp_path))[0]


def test_same_content_same_version_and_the_name_is_not_hashed() -> None:
    assert release().version == release().version
    assert release().version == release(name="renamed").version
    assert release().version.startswith("sha256:") and len(release().version) == len("sha256:") + 16


@pytest.mark.parametrize(
    "change",
    [
        {"task": "other"},
        {"route": ("qwen", "deepseek")},
        {"model_version": "sha256:beef"},
        {"tokenizer": "other/tok"},
        {"prompt": Prompt(system="sys!", user="{{ text }}", variables={"text": "str"})},
        {"prompt": Prompt(system="sys", user="{{ text }}!", variables={"text": "str"})},
        {"prompt": Prompt(system="sys", user="{{ text }}", variables={"text": "list"})},
        {"params": {"temperature": 0.5}},
        {"output_schema": {"type": "array"}},
        {"output_schema": None},
        {"retrieval": {"k": 5}},
        {"safety": None},
    ],
)
def test_any_change_is_a_new_version(change: dict[str, Any]) -> None:
    assert release(**change).version != release().version


def test_prompt_version_hashes_the_prompt_alone() -> None:
    assert release(params={"temperature": 1}).prompt_version == release().prompt_version
    assert release(route=("deepseek",), name="x").prompt_version == release().prompt_version
    changed = release(prompt=Prompt(system="other", user="{{ text }}", variables={"text": "str"}))
    assert changed.prompt_version != release().prompt_version


def test_a_file_and_its_twin_under_another_name_share_a_version(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    a = load_release(write(tmp_path, "extract", "a", GOOD), config)
    b = load_release(write(tmp_path, "extract", "b", GOOD), config)
    c = load_release(write(tmp_path, "extract", "c", GOOD.replace("k: 4", "k: 5")), config)
    assert a.version == b.version != c.version
    assert a.prompt_version == c.prompt_version
