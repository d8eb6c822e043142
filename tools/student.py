"""Generate the student notebooks from solutions/ with nbgrader, or check them.

    python tools/student.py generate   # (make student) rewrite notebooks/ from solutions/
    python tools/student.py check      # fail if regenerating would change notebooks/

nbgrader's ``generate_assignment`` replaces solution regions by a stub, strips
hidden tests and stored outputs, and locks the graded cells.  The check runs
it in a scratch copy of the course, so it never touches the working tree.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `tools` importable

from tools.common import REPO as ROOT  # noqa: E402
from tools.common import generate_assignment  # noqa: E402


def lessons(root: Path = ROOT) -> list[str]:
    return sorted(p.name for p in (root / "solutions").iterdir() if p.is_dir() and not p.name.startswith("."))


def generate(root: Path = ROOT) -> None:
    """Run nbgrader generate_assignment for every lesson under ``root``."""
    (root / "grading").mkdir(exist_ok=True)
    # One nbgrader process for every lesson: its assignment id is a glob over solutions/ (nbgrader's
    # converters accept one), and the process start-up (importing nbgrader, about 3 s) is paid once,
    # not once per lesson. The notebooks written are byte for byte those of one call per lesson.
    result = generate_assignment(root, "*", db_url=f"sqlite:///{root / 'grading' / 'gradebook.db'}", force=True)
    if result.returncode != 0:
        sys.exit(f"nbgrader generate_assignment failed:\n{result.stdout}\n{result.stderr}")
    stale = sorted(p.name for p in (root / "notebooks").iterdir() if p.is_dir()) if (root / "notebooks").exists() else []
    for name in set(stale) - set(lessons(root)):
        shutil.rmtree(root / "notebooks" / name)


def differences(a: Path, b: Path) -> list[str]:
    """Relative paths that differ between two folder trees (files only)."""
    out = []
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    for rel in sorted(files_a ^ files_b):
        out.append(f"{rel} (only in {'notebooks/' if rel in files_a else 'regenerated copy'})")
    for rel in sorted(files_a & files_b):
        if not filecmp.cmp(a / rel, b / rel, shallow=False):
            out.append(f"{rel} (contents differ)")
    return out


def check() -> list[str]:
    """Regenerate into a scratch copy and list what differs from notebooks/."""
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        shutil.copytree(ROOT / "solutions", scratch / "solutions",
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        shutil.copy2(ROOT / "nbgrader_config.py", scratch / "nbgrader_config.py")
        generate(scratch)
        return differences(ROOT / "notebooks", scratch / "notebooks")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["generate", "check"])
    args = parser.parse_args(argv)
    if args.command == "generate":
        generate()
        print(f"regenerated notebooks/ for {len(lessons())} lessons")
    else:
        diff = check()
        if diff:
            sys.exit("notebooks/ is out of date with solutions/ (run `make student`):\n  " + "\n  ".join(diff))
        print("notebooks/ matches solutions/")


if __name__ == "__main__":
    main()
