"""lib's import graph: no cycle, and every module imports only modules listed above it in ``lib/__init__.py``.

The graph is read from the source (every ``import``, at module level or inside a function), so
a lazy import that hides a cycle from Python still counts here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lib

LIB = Path(lib.__file__).parent


def lib_imports(source: str) -> set[str]:
    """The ``lib`` modules that ``source`` imports, anywhere in it (``lib.x`` -> ``x``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] == "lib":
                found.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
        elif isinstance(node, ast.ImportFrom) and node.level > 0:  # from . import x / from .x import y
            found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("lib."))
    return found


def import_graph() -> dict[str, set[str]]:
    return {p.stem: lib_imports(p.read_text(encoding="utf-8")) for p in LIB.glob("*.py") if p.stem != "__init__"}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of ``graph``, or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_reader_sees_lazy_and_relative_imports() -> None:
    source = "import lib.vit\nfrom lib import data, plot\ndef f():\n    from lib.multihead import X\n    from . import text\n"
    assert lib_imports(source) == {"vit", "data", "plot", "multihead", "text"}


def test_lib_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "lib imports in a circle: " + " -> ".join(cycle)


def test_every_module_imports_only_modules_above_it() -> None:
    graph = import_graph()
    order = list(lib._SUBMODULES)
    assert sorted(order) == sorted(graph), "lib/__init__.py's _SUBMODULES must list every module of lib exactly once"
    for module, deps in graph.items():
        below = sorted(d for d in deps if order.index(d) >= order.index(module))
        assert not below, f"lib.{module} imports {below}, which lib/__init__.py lists below it"


def test_the_docstring_lists_the_modules_in_order() -> None:
    words = [line.split()[0] for line in lib.__doc__.splitlines() if line.startswith("    ") and line.split()]
    listed = [w for w in words if w in lib._SUBMODULES]
    assert listed == list(lib._SUBMODULES), f"lib's docstring lists {listed}, _SUBMODULES is {list(lib._SUBMODULES)}"
