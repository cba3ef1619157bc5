"""The project's import graph read statically with ``ast``: shared by the import-cycle test and the
dependency-rule test, so both see imports the same way.

Importing ``a.b.c`` also runs the packages ``a`` and ``a.b``; ``if TYPE_CHECKING:`` blocks never
run and are skipped; ``late=False`` leaves out imports inside functions (late bindings).
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ferretd", "transports")
STDLIB = frozenset(sys.stdlib_module_names) | {"__future__"}


# --------------------------------------------------------------------------- the import graph


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_in_source(name: str, source: str, is_package: bool, *, late: bool = True) -> set[str]:
    """Dotted names ``name``'s source imports (``late``: also inside functions and classes)."""
    known = set(all_modules())
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name if is_package else name.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    module = f"{base}.{node.module}" if node.module else base
                else:
                    module = node.module or ""
                found.add(module)
                found.update(f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in known)
            elif isinstance(node, ast.If) and is_type_checking(node):
                visit(node.orelse)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if late:
                    visit(node.body)
            else:  # class bodies, if/try/with/for/match blocks: their statements run too
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, ast.stmt):
                        visit([child])
                    elif isinstance(child, ast.excepthandler | ast.match_case):
                        visit(child.body)

    visit(ast.parse(source).body)
    return found


@cache
def direct_imports(name: str, late: bool = True) -> frozenset[str]:
    """What module ``name`` imports, as project module names or external top-level packages."""
    path = all_modules()[name]
    raw = imports_in_source(name, path.read_text(), path.name == "__init__.py", late=late)
    known = all_modules()
    found: set[str] = set()
    for target in raw:
        if target.split(".")[0] in PACKAGES:
            while target and target not in known:
                target = target.rpartition(".")[0]
            parts = target.split(".")
            found.update(".".join(parts[: i + 1]) for i in range(len(parts)))  # parents run first
        elif target:
            found.add(target.split(".")[0])
    parts = name.split(".")
    found.update(".".join(parts[:i]) for i in range(1, len(parts)))
    found.discard(name)
    return frozenset(found)
