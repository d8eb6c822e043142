"""What every tool shares: the repository root, nbgrader's environment and command, cell ids.

One definition each (the tools used to carry their own copies):

* ``REPO``: the course repository (the folder holding ``nbgrader_config.py``);
* ``tool_env()``: the environment for nbgrader, which runs ``alembic`` from ``PATH``;
* ``generate_assignment(...)``: the ``nbgrader generate_assignment`` command line;
* ``grade_id(cell)`` / ``nbgrader_md(cell)``: a cell's nbgrader metadata, robust to odd notebooks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tool_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with this Python's ``bin/`` first on ``PATH``."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    return env


def generate_assignment(root: Path, assignment: str, *, release: Path | None = None, db_url: str | None = None,
                        force: bool = False) -> subprocess.CompletedProcess:
    """Run ``nbgrader generate_assignment`` for course ``root``; the caller checks ``returncode``."""
    cmd = [sys.executable, "-m", "nbgrader", "generate_assignment", assignment, "--log-level=WARN",
           f"--CourseDirectory.root={root}"]
    if force:
        cmd.append("--force")
    if release is not None:
        cmd.append(f"--CourseDirectory.release_directory={release}")
    if db_url is not None:
        cmd.append(f"--CourseDirectory.db_url={db_url}")
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=tool_env(), preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    """In a child process: die with the parent (a killed grading run leaves no nbgrader writing into its scratch)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        pass


def nbgrader_md(cell) -> dict:
    """A cell's nbgrader metadata ({} when absent or not a dict)."""
    md = cell.get("metadata", {})
    md = md.get("nbgrader") if isinstance(md, dict) else None
    return md if isinstance(md, dict) else {}


def grade_id(cell) -> str | None:
    """A cell's nbgrader ``grade_id`` (None when absent or not a string)."""
    gid = nbgrader_md(cell).get("grade_id")
    return gid if isinstance(gid, str) else None


def is_test(cell) -> bool:
    """A graded test cell (visible check or hidden test): graded, not a solution."""
    md = nbgrader_md(cell)
    return bool(md.get("grade")) and not md.get("solution")
