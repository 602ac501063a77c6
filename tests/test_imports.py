"""The layers import one way: no import cycle anywhere in the package, counting imports inside
functions too (only ``if TYPE_CHECKING:`` blocks, which never run, are left out); observability
never imports the serving layer; and no module imports another module's underscore names."""

from __future__ import annotations

import ast
from pathlib import Path

import turnout

ROOT = Path(turnout.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every turnout module ``path`` imports, at any depth of its code (functions included)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # a submodule imported by name
    return {name for name in found if name in modules}


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node that can run: all of them but the bodies of ``if TYPE_CHECKING:``."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(files)
    return {name: imports_of(path, modules) - {name} for name, path in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_function_level_imports() -> None:
    edges = graph()
    assert "turnout.serving.pipeline" in edges["turnout.serving.app"]
    assert "turnout.observe.tracing" in edges["turnout.observe"]  # imported inside open_tracing


def test_no_import_cycle_anywhere() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_type_checking_imports_are_left_out() -> None:
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import turnout.serving.app\n")
    names = [n for n in _runtime_nodes(tree) if isinstance(n, ast.Import)]
    assert names == []


def test_no_module_imports_another_modules_underscore_names() -> None:
    """``from turnout.x import _private`` across modules (``turnout._support`` is a package
    meant for the others; its modules' own underscore names are still private)."""
    reaching: list[str] = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("turnout"):
                reaching += [
                    f"{module_name(path)}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")
                ]
    assert reaching == []


def test_observe_never_imports_serving() -> None:
    edges = graph()
    reaching = {m: sorted(d for d in deps if d.startswith("turnout.serving")) for m, deps in edges.items()}
    assert {m: d for m, d in reaching.items() if m.startswith("turnout.observe") and d} == {}


def test_the_pipeline_knows_no_door() -> None:
    """Doors plug into the pipeline; the pipeline imports none of them."""
    edges = graph()
    for door in ("turnout.serving.chat", "turnout.serving.tasks"):
        assert door not in edges["turnout.serving.pipeline"]
        assert door not in edges["turnout.serving.runtime"]
