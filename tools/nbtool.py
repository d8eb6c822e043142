"""Authoring helper for lesson notebooks (solutions/ is the single source).

    python tools/nbtool.py export 02_attention_scoring   # ipynb -> build/02_attention_scoring.py
    python tools/nbtool.py build  02_attention_scoring   # build/*.py -> ipynb, executed in full mode
    python tools/nbtool.py run    02_attention_scoring   # re-execute the ipynb in place (full mode)
    python tools/nbtool.py run    02_attention_scoring --quick   # quick mode, e.g. to try it fast

The .py form is jupytext's percent format: every cell keeps its metadata
(tags, nbgrader) in its header line, so a notebook can be edited as text and
converted back without losing anything.  build/ is git-ignored: the .ipynb
with its stored full-mode outputs is what is committed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "solutions"
BUILD = ROOT / "build"

KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def notebook_path(name: str) -> Path:
    name = Path(name).stem
    return SOLUTIONS / name / f"{name}.ipynb"


def normalise(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Keep only the metadata the course relies on, so diffs stay small."""
    nb.metadata = nbformat.from_dict(
        {
            "kernelspec": KERNELSPEC,
            "language_info": {"name": "python"},
        }
    )
    for cell in nb.cells:
        for key in ("jupytext", "execution", "lines_to_next_cell", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
    nbformat.validator.normalize(nb)
    return nb


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
    import jupytext

    src = notebook_path(name)
    BUILD.mkdir(exist_ok=True)
    dst = BUILD / f"{src.stem}.py"
    nb = jupytext.read(src)
    jupytext.write(nb, dst, fmt="py:percent")
    print(f"wrote {dst.relative_to(ROOT)}")


def cmd_build(name: str, run: bool, quick: bool) -> None:
    import jupytext

    stem = Path(name).stem
    src = BUILD / f"{stem}.py"
    if not src.exists():
        sys.exit(f"{src} not found: write it (jupytext percent format) or `export` the notebook first")
    nb = jupytext.read(src, fmt="py:percent")
    dst = notebook_path(stem)
    dst.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(normalise(nb), dst)
    print(f"wrote {dst.relative_to(ROOT)}")
    if run:
        execute(dst, quick=quick)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("export", help="solutions notebook -> build/NAME.py")
    p.add_argument("name")
    p = sub.add_parser("build", help="build/NAME.py -> solutions notebook, executed")
    p.add_argument("name")
    p.add_argument("--no-run", action="store_true", help="convert only, do not execute")
    p.add_argument("--quick", action="store_true", help="execute in quick mode (outputs are then not the ones to commit)")
    p = sub.add_parser("run", help="execute a solutions notebook in place")
    p.add_argument("name")
    p.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.cmd == "export":
        cmd_export(args.name)
    elif args.cmd == "build":
        cmd_build(args.name, run=not args.no_run, quick=args.quick)
    else:
        execute(notebook_path(args.name), quick=args.quick)


if __name__ == "__main__":
    main()
