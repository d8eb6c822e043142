"""The course library a sandboxed kernel sees while a lesson is graded: lib without that lesson's references.

nbgrader releases a lesson without its solutions; grading does the same with ``lib``.  The lib
objects that the lesson's hidden tests name (the targets of their ``forbid(...)``: the reference
implementations of the exercises) are withheld from the kernel: ``build`` copies ``lib/`` into the
run's scratch folder with each of them replaced by a stand-in that raises :class:`ReferenceWithheld`
(a ``NotImplementedError``), and the sandbox mounts that copy where ``lib/`` is.  So while the
lesson is graded the student's code cannot call, subclass, wrap or alias the reference: the code is
not in the kernel.  The grader's own process keeps the whole library (the tests compare with it).

A reference that the lesson's own model solutions use (an earlier exercise's reference that a later
exercise may build on) stays: withholding it would fail honest answers.
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

from tools.common import REPO, grade_id, is_test

HIDDEN = "### BEGIN HIDDEN TESTS"
WITHHELD = "ReferenceWithheld"  # the exception a withheld reference raises in the kernel
_NAME = re.compile(r"lib(\.[A-Za-z_][A-Za-z0-9_]*)+")

_PRELUDE = '''
class ReferenceWithheld(NotImplementedError):
    """A reference of the lesson being graded: not in the kernel while it is graded."""


def _course_withheld(name):
    def withheld(*args, **kwargs):
        raise ReferenceWithheld(f"{name} is not available while this lesson is graded: "
                                "the exercise asks you to write it yourself")
    withheld.__name__ = withheld.__qualname__ = name.rsplit(".", 1)[-1]
    return withheld
'''


def _strings(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and _NAME.fullmatch(n.value)}


def _tree(source: str) -> ast.Module | None:
    try:
        return ast.parse(source)
    except SyntaxError:
        return None


def lib_imports(sources: list[str], root: str = "lib") -> dict[str, str]:
    """Local name -> the object of package ``root`` it is bound to by the imports of ``sources``."""
    alias: dict[str, str] = {}
    for tree in filter(None, map(_tree, sources)):
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == root or a.name.startswith(root + "."):
                        alias[a.asname or root] = a.name if a.asname else root
            elif isinstance(node, ast.ImportFrom) and node.module \
                    and (node.module == root or node.module.startswith(root + ".")):
                for a in node.names:
                    alias[a.asname or a.name] = f"{node.module}.{a.name}"
    return alias


def used_by(source: str, alias: dict[str, str]) -> set[str]:
    """The dotted ``lib.`` names a cell's code refers to, through ``alias`` and its own imports."""
    tree = _tree(source)
    if tree is None:
        return set()
    alias = {**alias, **lib_imports([source])}
    out: set[str] = set()
    for node in ast.walk(tree):
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id in alias:
            dotted = alias[node.id]
            out.add(dotted)
            for p in reversed(parts):
                dotted += f".{p}"
                out.add(dotted)
    return out


def withheld_names(trusted_nb) -> list[str]:
    """The lib objects the lesson's hidden tests name, less those its model solutions use."""
    code = [c for c in trusted_nb.cells if c.cell_type == "code"]
    alias = lib_imports([c.source for c in code if not is_test(c)])  # what the lesson's own cells import
    named: set[str] = set()
    used: set[str] = set()
    for cell in code:
        if is_test(cell) and HIDDEN in cell.source:
            named |= _strings(cell.source)
        elif cell.get("metadata", {}).get("nbgrader", {}).get("solution") and grade_id(cell):
            used |= used_by(cell.source, alias)
    def needed(name: str) -> bool:  # a solution uses it, an object inside it, or the object holding it
        return any(name == u or name.startswith(u + ".") or u.startswith(name + ".") for u in used)

    handed_out = _registered()
    return sorted(n for n in named if not needed(n) and n not in handed_out)


def _registered(lib_dir: Path = REPO / "lib") -> set[str]:
    """lib objects held in a lib module's registry (a module-level dict, list, tuple or set of names, e.g.
    ``KERNELS``): tests pass them to the student's code by name, so the kernel must have them."""
    out: set[str] = set()
    for file in sorted(lib_dir.glob("*.py")):
        tree = _tree(file.read_text())
        for node in tree.body if tree else []:
            value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
            if isinstance(value, ast.Dict):
                items = value.values
            elif isinstance(value, (ast.List, ast.Tuple, ast.Set)):
                items = value.elts
            else:
                continue
            out |= {f"lib.{file.stem}.{v.id}" for v in items if isinstance(v, ast.Name)}
    return out


def _stand_in(name: str, node: ast.stmt) -> list[ast.stmt]:
    """``node`` (a def, class or assignment of ``name``'s last part) with its code replaced."""
    raise_stmt = ast.parse(f"raise ReferenceWithheld({name + ' is not available while this lesson is graded'!r})").body
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = node.body[:1] if node.body and isinstance(node.body[0], ast.Expr) \
            and isinstance(node.body[0].value, ast.Constant) else []
        node.body = doc + raise_stmt
        return [node]
    if isinstance(node, ast.ClassDef):
        for item in ast.walk(node):
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                item.body = list(raise_stmt)
        return [node]
    target = name.rsplit(".", 1)[-1]
    return [ast.parse(f"{target} = _course_withheld({name!r})").body[0]]


def _defines(node: ast.stmt, target: str) -> bool:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name == target
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return any(isinstance(t, ast.Name) and t.id == target for t in targets)
    return False


def _withhold(tree: ast.Module, name: str, path: list[str]) -> bool:
    """Replace the object at ``path`` (e.g. ["ViT", "embed"]) in ``tree``; True if found."""
    body = tree.body
    for depth, part in enumerate(path):
        for i, node in enumerate(body):
            if _defines(node, part):
                if depth == len(path) - 1:
                    body[i:i + 1] = _stand_in(name, node)
                    return True
                if not isinstance(node, ast.ClassDef):
                    return False
                body = node.body
                break
        else:
            return False
    return False


def build(lib_dir: Path, names: list[str], out: Path) -> tuple[Path, list[str]]:
    """A copy of ``lib_dir`` at ``out/lib`` with ``names`` withheld; returns it and the names withheld."""
    target = out / "lib"
    shutil.copytree(lib_dir, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done: list[str] = []
    by_file: dict[Path, list[tuple[str, list[str]]]] = {}
    for name in names:
        parts = name.split(".")[1:]
        for cut in range(len(parts), 0, -1):  # the longest module path that is a file of lib
            mod = target.joinpath(*parts[:cut])
            if mod.with_suffix(".py").is_file() and cut < len(parts):
                by_file.setdefault(mod.with_suffix(".py"), []).append((name, parts[cut:]))
                break
    for file, items in by_file.items():
        tree = ast.parse(file.read_text())
        changed = [name for name, path in items if _withhold(tree, name, path)]
        if not changed:
            continue
        first = 1 if tree.body and isinstance(tree.body[0], ast.Expr) else 0  # after the docstring
        while first < len(tree.body) and isinstance(tree.body[first], ast.ImportFrom) \
                and tree.body[first].module == "__future__":
            first += 1
        tree.body[first:first] = ast.parse(_PRELUDE).body
        file.write_text(ast.unparse(ast.fix_missing_locations(tree)) + "\n")
        done += changed
    return target, sorted(done)
