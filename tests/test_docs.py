"""The documents say what the code is: docs/ARCHITECTURE.md's module map names every module of
``src/turnout`` and nothing that is not one; the README names every error code and X-Turnout
header the code sets; every YAML config block of the README and docs/ loads."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import turnout
from tests.test_readme import blocks
from turnout.config import load_config
from turnout.errors import ConfigError

PACKAGE = Path(turnout.__file__).parent
DOCS = Path(__file__).resolve().parent.parent / "docs"
_ROW = re.compile(r"^\| (?P<folder>[^|]+?) \| (?P<rooms>.+) \|$")
_NAME = re.compile(r"[a-z_][a-z0-9_]*(?:/|\.py)?")  # a backticked module, package or folder name


def module_map(text: str) -> dict[str, str]:
    """The map's rows: folder (``""`` for the top row) → what its rooms column says."""
    section = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        row = _ROW.match(line)
        if row and row["folder"] not in ("folder", "---"):
            rows["" if row["folder"] == "top" else row["folder"].strip("`").rstrip("/")] = row["rooms"]
    return rows


def group_after(text: str, name: str) -> str:
    """What the parentheses right after `` `name` `` hold ("" without any): a package's rooms."""
    start = text.find(f"`{name}`")
    if start < 0:
        return ""
    i = start + len(name) + 2
    while i < len(text) and text[i] == " ":
        i += 1
    if i == len(text) or text[i] != "(":
        return ""
    depth = 0
    for j in range(i, len(text)):
        depth += {"(": 1, ")": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return text[i + 1 :]


def named(text: str, name: str) -> bool:
    return any(f"`{form}`" in text for form in (name, f"{name}.py", f"{name}/"))


def unmapped(rows: dict[str, str], package: Path) -> list[str]:
    """Every module (and package) of ``package`` that its row does not name where it belongs: a
    module of a folder's row in that row, one of a package inside it within the parentheses
    after the package's name."""
    missing = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts in ((), ("__main__",)) or (len(parts) == 1 and parts[0] in rows):
            continue  # the package itself, python -m turnout, or a folder that has a row of its own
        folder = parts[0] if parts[0] in rows and len(parts) > 1 else ""
        text = rows[folder]
        for i, part in enumerate(parts[1:] if folder else parts):
            if not named(text, part):
                missing.append(str(path.relative_to(package)))
                break
            if i < len(parts) - (2 if folder else 1):
                text = group_after(text, f"{part}/")
    return missing


def strangers(rows: dict[str, str], package: Path) -> list[str]:
    """Every backticked name in a row that is no module, package or folder under the row's own."""
    found = []
    for folder, text in rows.items():
        root = package / folder
        here = {p.stem for p in root.rglob("*.py")} | {p.name for p in root.rglob("*") if p.is_dir()}
        for token in re.findall(r"`([^`]+)`", text):
            if _NAME.fullmatch(token) and token.removesuffix(".py").rstrip("/") not in here:
                found.append(f"{folder or 'top'}: {token}")
    return found


def test_the_module_map_names_every_module() -> None:
    assert unmapped(module_map((DOCS / "ARCHITECTURE.md").read_text()), PACKAGE) == []


def test_the_module_map_names_nothing_that_is_not_a_module() -> None:
    assert strangers(module_map((DOCS / "ARCHITECTURE.md").read_text()), PACKAGE) == []


MAP = """\
## Module map

| folder | rooms |
| --- | --- |
| top | `config/` (`model`, `load`), `errors.py` |
| `serving/` | `app` (routes), `keys/` (`base`, `redis`) |
"""


@pytest.fixture
def package(tmp_path: Path) -> Path:
    for name in ("__init__", "errors", "config/__init__", "config/model", "config/load", "serving/__init__"):
        (tmp_path / f"{name}.py").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f"{name}.py").write_text("")
    for name in ("app", "keys/__init__", "keys/base", "keys/redis"):
        (tmp_path / "serving" / f"{name}.py").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "serving" / f"{name}.py").write_text("")
    return tmp_path


def test_a_map_that_names_everything_passes(package: Path) -> None:
    assert unmapped(module_map(MAP), package) == []
    assert strangers(module_map(MAP), package) == []


def test_a_module_missing_from_the_map_is_found(package: Path) -> None:
    (package / "serving" / "keys" / "sqlite.py").write_text("")
    (package / "serving" / "door.py").write_text("")
    (package / "config" / "checks.py").write_text("")
    assert unmapped(module_map(MAP), package) == ["config/checks.py", "serving/door.py", "serving/keys/sqlite.py"]


def test_a_module_named_outside_its_package_is_missing(package: Path) -> None:
    """`redis` in the row but not in the parentheses after `keys/` is not where it belongs."""
    text = MAP.replace("`keys/` (`base`, `redis`)", "`keys/` (`base`), `redis` (limits)")
    assert unmapped(module_map(text), package) == ["serving/keys/redis.py"]


def test_a_module_that_no_longer_exists_is_found(package: Path) -> None:
    (package / "serving" / "app.py").unlink()
    assert unmapped(module_map(MAP), package) == []
    assert strangers(module_map(MAP), package) == ["serving: app"]


# --- what the README names --------------------------------------------------------------------------

README = DOCS.parent / "README.md"
# Codes set in the code that no API answer carries, and why.
UNANSWERED = {
    "answer_refused": "the base class's; every refusal raised is a subclass with a code of its own",
    "release_conflict": "the CLI's and the console's: said in words, never as an error code",
    "shadow_store_error": "the shadow mirror's, in the background; the CLI and console say it in words",
    "cache_purge_log_error": "turnout cache purge's, and the gateways' background purge follower",
    "invalid_form": "the console's forms: an HTML page says it",
    "too_many_fields": "the console's forms: an HTML page says it",
}


def error_codes(package: Path) -> set[str]:
    """Every error code the code sets: a ``code`` class attribute or assignment, or a ``code=``
    argument, given as a string literal (or a conditional of them)."""
    found: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            keyword = isinstance(node, ast.keyword) and node.arg == "code"
            if keyword or (isinstance(node, ast.Assign) and any(_is_code(t) for t in node.targets)):
                value = node.value  # type: ignore[attr-defined]
                found |= {c.value for c in ast.walk(value) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    return found - {""}


def _is_code(target: ast.expr) -> bool:
    return (isinstance(target, ast.Name) and target.id == "code") or (
        isinstance(target, ast.Attribute) and target.attr == "code"
    )


def test_every_error_code_is_in_the_readme() -> None:
    codes = error_codes(PACKAGE)
    assert set(UNANSWERED) <= codes  # each exception still exists
    text = README.read_text()
    assert sorted(c for c in codes - set(UNANSWERED) if f"`{c}`" not in text) == []


def test_every_turnout_header_is_in_the_readme() -> None:
    sent = set()
    for path in PACKAGE.rglob("*.py"):
        sent |= {h.lower() for h in re.findall(r"x-turnout-[a-z-]*[a-z]", path.read_text(), re.IGNORECASE)}
    assert len(sent) > 10
    named = {h.lower() for h in re.findall(r"X-Turnout-[A-Za-z-]*[a-z]", README.read_text())}
    named |= {f"x-turnout{h.lower()}" for h in re.findall(r"`(-[A-Z][A-Za-z-]*)`", README.read_text())}
    assert sorted(sent - named) == []


def test_error_codes_are_found_in_each_form(tmp_path: Path) -> None:
    source = (
        'class A(E):\n    code = "a_code"\n'
        'raise E("x", code="b_code")\n'
        'self.code = "c_code" if x else "d_code"\n'
        'other = "not_a_code"\n'
    )
    (tmp_path / "m.py").write_text(source)
    assert error_codes(tmp_path) == {"a_code", "b_code", "c_code", "d_code"}


# --- the config the documents show ------------------------------------------------------------------

# What a snippet may lean on to stand alone: the README's three targets, and the variables it names.
TARGETS = {
    "qwen-vllm": {"provider": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "Qwen/Qwen3-32B"},
    "deepseek-br": {"provider": "bedrock", "region": "us-east-1", "model": "deepseek.v3-v1:0"},
    "local": {"provider": "local"},
}
ENV = {
    "ACME_KEY": "sk-acme-0123456789abcdef",
    "TURNOUT_ADMIN_KEY": "admin-0123456789abcdef",
    "TURNOUT_CACHE_KEY": "0" * 64,
    "TURNOUT_REDACTION_KEY": "r" * 32,
    "AWS_BEARER_TOKEN_BEDROCK": "bedrock-api-key",
}


def standing_alone(snippet: dict[str, Any]) -> dict[str, Any]:
    """``snippet`` with what it needs to load on its own: the targets it does not define, a route
    for each task it names without one (and a task where it names none), and every tenant and
    task its capture and retention rules name."""
    raw: dict[str, Any] = {"targets": {k: v for k, v in TARGETS.items() if k not in (snippet.get("targets") or {})}}
    for key, value in snippet.items():
        raw[key] = {**raw[key], **value} if key == "targets" else value
    tasks = raw.setdefault("tasks", {}) or {"default": {}}
    raw["tasks"] = {name: {"route": ["qwen-vllm"], **task} for name, task in tasks.items()}
    for section in ("capture", "retention"):
        for rule in (raw.get(section) or {}).get("rules", []):
            if rule.get("tenant"):
                raw.setdefault("tenants", {}).setdefault(rule["tenant"], {"keys": [ENV["ACME_KEY"]]})
            if rule.get("task"):
                raw["tasks"].setdefault(rule["task"], {"route": ["local"]})
    return raw


def config_blocks() -> list[tuple[str, str]]:
    """Every ``yaml`` block of the README and docs/ that is config, by place: not a file shown
    as shipped (a ``# path`` first line: ``tests/test_readme.py`` holds those to the file)."""
    found = []
    for doc in (README, *sorted(DOCS.glob("*.md"))):
        for block in blocks(doc.read_text()):
            first = block.text.partition("\n")[0]
            if block.lang == "yaml" and not (first.startswith("# ") and (DOCS.parent / first[2:].strip()).is_file()):
                found.append((f"{doc.name}:{block.line}", block.text))
    return found


def test_the_documents_show_config() -> None:
    assert len(config_blocks()) >= 15


@pytest.mark.parametrize(("place", "text"), config_blocks(), ids=[place for place, _ in config_blocks()])
def test_every_config_block_loads(place: str, text: str, tmp_path: Path) -> None:
    path = tmp_path / "turnout.yaml"
    path.write_text(yaml.safe_dump(standing_alone(yaml.safe_load(text))))
    try:
        load_config(path, env=ENV)
    except ConfigError as exc:
        pytest.fail(f"{place}: {exc.problems}")


def test_a_block_with_a_key_the_config_lacks_fails(tmp_path: Path) -> None:
    path = tmp_path / "turnout.yaml"
    path.write_text(yaml.safe_dump(standing_alone({"tasks": {"faq": {"cache": {"ttl": 60, "classes": ["public"]}}}})))
    with pytest.raises(ConfigError, match=r"tasks\.faq\.cache\.ttl: unknown key"):
        load_config(path, env=ENV)
