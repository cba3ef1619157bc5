"""No import cycles between the project's modules, found statically and confirmed in a fresh interpreter.

A module-level import cycle makes the result depend on which module is imported first (importing
``ferretd.config_loader`` first once raised ImportError, before config became a package). The
graph is read from each module's top-level ``import`` statements (imports inside functions and
``if TYPE_CHECKING:`` blocks are deliberate late bindings and do not count), so the check is pure
and fast; a handful of modules are then imported first in a fresh interpreter each, as a user would.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.import_graph import ROOT, all_modules, direct_imports


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
    """Each module's module-level imports of other project modules."""
    modules = all_modules()
    return {name: {dep for dep in direct_imports(name, late=False) if dep in modules} for name in modules}


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
        "ferretd.config.learning",
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
