"""No import cycles between the project's modules, found statically and confirmed in a fresh interpreter.

A module-level import cycle makes the result depend on which module is imported first (importing
``ferretd.config_loader`` first once raised ImportError, before config became a package). The
graph is read from each module's top-level ``import`` statements (imports inside functions and
``if TYPE_CHECKING:`` blocks are deliberate late bindings and do not count), so the check is pure
and fast; a handful of modules are then imported first in a fresh interpreter each, as a user would.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("ferretd", "transports")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def top_level_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules imported at module level (a package import also runs its ``__init__``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name if is_package else name.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    module = f"{base}.{node.module}" if node.module else base
                else:
                    module = node.module or ""
                add(module)
                for alias in node.names:  # ``from pkg import submodule``
                    if f"{module}.{alias.name}" in known:
                        add(f"{module}.{alias.name}")
            elif isinstance(node, ast.If) and not _is_type_checking(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(tree.body)
    # importing a.b.c first imports the packages a and a.b
    parts = name.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if parent in known:
            found.add(parent)
    found.discard(name)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := dfs(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := dfs(start)) is not None:
            return cycle
    return None


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: top_level_imports(name, path, known) for name, path in modules.items()}


def test_the_finder_sees_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_level_import_cycle():
    graph = import_graph()
    assert len(graph) > 40, "the walk must see the whole package"
    # a package importing its own submodules is fine only if those never import the package back
    # with a name it has not defined yet; the plain rule is simpler: no cycles at all, except a
    # package ``__init__`` importing its own children (children import their parent first anyway).
    pruned = {
        name: {dep for dep in deps if not name.startswith(dep + ".")} for name, deps in graph.items()
    }
    cycle = find_cycle(pruned)
    assert cycle is None, " -> ".join(cycle or [])


@pytest.mark.parametrize(
    "module",
    [
        "ferretd.config.load",
        "ferretd.config.schema",
        "ferretd.config.live",
        "ferretd.config",
        "ferretd.lifecycle",
        "ferretd.status",
        "ferretd.health",
        "ferretd.events",
        "ferretd.components.trainer",
        "ferretd.components.snapshots",
        "ferretd.components.checkpoints",
        "ferretd.components",
        "ferretd.shutdown",
        "ferretd.daemon",
    ],
)
def test_imported_first_in_a_fresh_interpreter(module):
    if module not in all_modules():
        pytest.skip(f"{module} no longer exists")
    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
