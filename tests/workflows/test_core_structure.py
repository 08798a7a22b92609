"""The engine core's shape: no import cycles inside it, no function-level imports dodging
them, and the import-linter contract (pyproject.toml) listing every product module.

``make lint`` runs the contract itself (``lint-imports``); these tests keep the contract honest
and check what it cannot express.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "workflows" / "core"

# Function-level imports the core needs, each with the reason. Keep it empty if you can: an
# import inside a function usually hides a cycle, which the layering should remove instead.
ALLOWED_LOCAL_IMPORTS: dict[tuple[str, str], str] = {}


def _core_graph() -> dict[str, set[str]]:
    graph = grimp.build_graph("workflows", exclude_type_checking_imports=True)
    core = {m for m in graph.modules if m == "workflows.core" or m.startswith("workflows.core.")}
    return {m: graph.find_modules_directly_imported_by(m) & core for m in core}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), or self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges[v]:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_core_has_no_import_cycles() -> None:
    edges = _core_graph()
    assert "workflows.core.executor" in edges
    assert _cycles(edges) == []


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def local_imports(source: str) -> list[tuple[str, int]]:
    """(imported module, line) of every import that is not at module level. Imports under a
    module-level ``if TYPE_CHECKING:`` are type-only and do not count."""
    tree = ast.parse(source)
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            top.add(id(node))
        elif isinstance(node, ast.If) and _is_type_checking(node):
            top.update(id(n) for n in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in top:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            found += [(str(name), node.lineno) for name in names]
    return found


def test_the_local_import_finder_sees_imports_in_functions() -> None:
    source = (
        "import os\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import json\n"
        "def f():\n    from workflows.core import services\n    import time\n"
    )
    assert local_imports(source) == [("workflows.core", 6), ("time", 7)]


def test_the_core_has_no_function_level_imports() -> None:
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for module, line in local_imports(path.read_text()):
            if (rel, module) not in ALLOWED_LOCAL_IMPORTS:
                offenders.append(f"{rel}:{line} imports {module} inside a function")
    assert offenders == []


def test_the_contract_forbids_every_product_module() -> None:
    """A new module in workflows/ outside the core must be named in the contract (or moved
    into the core), so the core cannot start importing it unnoticed."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = config["contracts"]
    assert contract["source_modules"] == ["workflows.core"]
    forbidden = set(contract["forbidden_modules"])
    assert {"reviews", "pipelines", "config"} <= forbidden
    product = {
        f"workflows.{p.stem if p.is_file() else p.name}"
        for p in (ROOT / "workflows").iterdir()
        if (p.suffix == ".py" and p.stem != "__init__")
        or (p.is_dir() and (p / "__init__.py").exists() and p.name not in {"core", "migrations"})
    }
    assert product - forbidden == set()
