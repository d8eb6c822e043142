"""Authoring helper for lesson notebooks: the text source and the executed notebook, kept paired.

Every lesson is two committed files in ``solutions/NN_topic/``:

* ``NN_topic.py``: the text source (jupytext's percent format): prose, code and each
  cell's metadata (tags, nbgrader) in its ``# %%`` header line. This is what review reads.
* ``NN_topic.ipynb``: the same cells, executed in full mode, with their stored outputs.

    python tools/nbtool.py sync  02_attention_scoring   # .py -> .ipynb, keeping the outputs of unchanged cells
    python tools/nbtool.py build 02_attention_scoring   # .py -> .ipynb, executed in full mode
    python tools/nbtool.py build 02_attention_scoring --quick    # quick mode, to try it fast (do not commit)
    python tools/nbtool.py run   02_attention_scoring   # re-execute the .ipynb in place (full mode)
    python tools/nbtool.py export 02_attention_scoring  # .ipynb -> .py (after editing in JupyterLab)
    python tools/nbtool.py check                        # fail unless every pair agrees

``tests/test_pipeline.py`` runs ``check``: a pull request whose ``.py`` and ``.ipynb``
disagree fails, so a review of the text is a review of the notebook.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `tools` importable
from tools.common import REPO as ROOT  # noqa: E402

SOLUTIONS = ROOT / "solutions"

KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
# No YAML header in the text source: the kernel is always the course's, and a header
# would carry the jupytext version (churn in every review).
TEXT_FORMAT = {"extension": ".py", "format_name": "percent"}
_CELL_KEYS_DROPPED = ("jupytext", "execution", "lines_to_next_cell", "collapsed", "scrolled")


def notebook_path(name: str) -> Path:
    name = Path(name).stem
    return SOLUTIONS / name / f"{name}.ipynb"


def source_path(name: str) -> Path:
    return notebook_path(name).with_suffix(".py")


def lessons() -> list[str]:
    return sorted(p.name for p in SOLUTIONS.iterdir() if p.is_dir() and (p / f"{p.name}.ipynb").exists())


def normalise(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Keep only the metadata the course relies on, so diffs stay small."""
    nb.metadata = nbformat.from_dict({"kernelspec": KERNELSPEC, "language_info": {"name": "python"}})
    for cell in nb.cells:
        for key in _CELL_KEYS_DROPPED:
            cell.metadata.pop(key, None)
    nbformat.validator.normalize(nb)
    return nb


def to_text(nb: nbformat.NotebookNode) -> str:
    """The percent-format text of a notebook's cells (no outputs, no header)."""
    import jupytext

    nb = nbformat.from_dict(nb)
    nb.metadata = nbformat.from_dict({"jupytext": {"notebook_metadata_filter": "-all"}})
    return jupytext.writes(nb, fmt=TEXT_FORMAT)


def from_text(text: str) -> nbformat.NotebookNode:
    import jupytext

    return normalise(jupytext.reads(text, fmt=TEXT_FORMAT))


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, str, dict]]:
    out = []
    for cell in nb.cells:
        meta = {k: v for k, v in cell.metadata.items() if k not in _CELL_KEYS_DROPPED}
        out.append((cell.cell_type, cell.source.rstrip("\n"), meta))
    return out


def pair_differences(name: str) -> list[str]:
    """What differs between a lesson's text source and its notebook (empty when they agree)."""
    src, nbp = source_path(name), notebook_path(name)
    if not src.exists():
        return [f"{src.relative_to(ROOT)} is missing (python tools/nbtool.py export {name})"]
    text_cells = _cells(from_text(src.read_text(encoding="utf-8")))
    nb_cells = _cells(nbformat.read(nbp, as_version=4))
    problems = []
    if len(text_cells) != len(nb_cells):
        problems.append(f"{name}: {len(text_cells)} cells in the .py, {len(nb_cells)} in the .ipynb")
    for i, (a, b) in enumerate(zip(text_cells, nb_cells, strict=False)):
        if a != b:
            what = "type" if a[0] != b[0] else "source" if a[1] != b[1] else "metadata"
            problems.append(f"{name}: cell {i} differs in its {what} (.py: {a[1][:60]!r})")
            break
    return problems


def execute(path: Path, quick: bool, timeout: int = 3600) -> None:
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env_before = os.environ.get("COURSE_QUICK")
    os.environ["COURSE_QUICK"] = "1" if quick else "0"
    try:
        start = time.perf_counter()
        client = NotebookClient(
            nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        )
        client.execute()
        print(f"executed {path.relative_to(ROOT)} in {'quick' if quick else 'full'} mode "
              f"in {time.perf_counter() - start:.1f} s")
    finally:
        if env_before is None:
            os.environ.pop("COURSE_QUICK", None)
        else:
            os.environ["COURSE_QUICK"] = env_before
    nbformat.write(normalise(nb), path)


def cmd_export(name: str) -> None:
    nb = nbformat.read(notebook_path(name), as_version=4)
    dst = source_path(name)
    dst.write_text(to_text(nb), encoding="utf-8")
    print(f"wrote {dst.relative_to(ROOT)}")


def cmd_sync(name: str, carry: bool = False) -> None:
    """Write the .py's cells into the .ipynb; a cell whose source is unchanged keeps its outputs.

    With ``carry``, an *edited* code cell also keeps the outputs of the old code cell at the same
    position (when the notebook has as many code cells as before), unless it is tagged
    ``nbval-ignore-output``: for edits that do not change what a cell prints (a check cell's
    messages for wrong answers, say). Strict nbval compares those outputs on the next run, so a
    carried output that the cell no longer prints fails the tests rather than going stale.
    """
    src = source_path(name)
    if not src.exists():
        sys.exit(f"{src} not found: write it (jupytext percent format) or `export` the notebook first")
    new = from_text(src.read_text(encoding="utf-8"))
    dst = notebook_path(name)
    old_cells = nbformat.read(dst, as_version=4).cells if dst.exists() else []
    by_source: dict[tuple[str, str], list[nbformat.NotebookNode]] = {}
    for cell in old_cells:
        by_source.setdefault((cell.cell_type, cell.source), []).append(cell)
    used: set[str] = set()
    old_code = [c for c in old_cells if c.cell_type == "code"]
    new_code = [c for c in new.cells if c.cell_type == "code"]
    position = {id(c): i for i, c in enumerate(new_code)} if carry and len(old_code) == len(new_code) else {}
    for cell in new.cells:
        previous = by_source.get((cell.cell_type, cell.source))
        if previous:
            match = previous.pop(0)
            cell.id = match.get("id", cell.id)
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = match.outputs, match.execution_count
        else:  # a new or edited cell: an id derived from its text, so syncing twice changes nothing
            cell.id = hashlib.sha1(cell.source.encode()).hexdigest()[:8]
            if id(cell) in position and "nbval-ignore-output" not in cell.metadata.get("tags", []):
                match = old_code[position[id(cell)]]
                cell.outputs, cell.execution_count = match.outputs, match.execution_count
        while cell.id in used:
            cell.id = hashlib.sha1(cell.id.encode()).hexdigest()[:8]
        used.add(cell.id)
    dst.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(normalise(new), dst)
    print(f"wrote {dst.relative_to(ROOT) if dst.is_relative_to(ROOT) else dst}")


def cmd_build(name: str, run: bool, quick: bool) -> None:
    cmd_sync(name)
    if run:
        execute(notebook_path(name), quick=quick)


def cmd_check(names: list[str]) -> list[str]:
    problems = []
    for name in names or lessons():
        problems += pair_differences(name)
    return problems


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("export", help="solutions notebook -> its .py text source")
    p.add_argument("name")
    p = sub.add_parser("sync", help=".py -> .ipynb, keeping the outputs of unchanged code cells")
    p.add_argument("name")
    p.add_argument("--carry", action="store_true",
                   help="edited code cells keep the old outputs at their position (strict nbval checks them)")
    p = sub.add_parser("build", help=".py -> .ipynb, executed (full mode unless --quick)")
    p.add_argument("name")
    p.add_argument("--no-run", action="store_true", help="convert only, do not execute")
    p.add_argument("--quick", action="store_true", help="execute in quick mode (outputs are then not the ones to commit)")
    p = sub.add_parser("run", help="execute a solutions notebook in place")
    p.add_argument("name")
    p.add_argument("--quick", action="store_true")
    p = sub.add_parser("check", help="fail unless every lesson's .py and .ipynb agree")
    p.add_argument("names", nargs="*")
    args = parser.parse_args(argv)
    if args.cmd == "export":
        cmd_export(args.name)
    elif args.cmd == "sync":
        cmd_sync(args.name, carry=args.carry)
    elif args.cmd == "build":
        cmd_build(args.name, run=not args.no_run, quick=args.quick)
    elif args.cmd == "run":
        execute(notebook_path(args.name), quick=args.quick)
    else:
        problems = cmd_check(args.names)
        if problems:
            sys.exit("text sources and notebooks disagree:\n  " + "\n  ".join(problems))
        print("every lesson's .py agrees with its .ipynb")


if __name__ == "__main__":
    main()
