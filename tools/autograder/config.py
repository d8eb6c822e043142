"""Course configuration of a grading run: limits, statuses, the course's folders, the run lock."""

from __future__ import annotations

import contextlib
import fcntl
import re
from dataclasses import dataclass
from pathlib import Path

GIB = 1024**3

# Most severe first: the status of a submission is the first one among its notes.
STATUSES = {
    "invalid": "the file is not a readable notebook, or its student id collides with another; not run, scores zero",
    "wrong_assignment": "a notebook of another assignment; not run, scores zero",
    "killed": "the submission ran past its wall-clock limit and was killed; scores zero",
    "grader_error": "the grader failed on this submission; scores zero (see the reason)",
    "kernel_died": "the kernel died (os._exit, crash, CPU limit); cells after it score zero",
    "memory": "a cell ran out of the memory limit",
    "timeout": "a cell ran past the cell timeout and was interrupted",
    "exit": "the notebook called sys.exit()",
    "output_limit": "output beyond the limit was cut",
    "tampered": "graded cells were edited, deleted or re-labelled; restored before grading",
    "error": "student code raised exceptions (beyond unanswered stubs)",
    "kernel_changed": "another kernel was named; graded with the course's",
    "graded": "graded normally",
}
NOT_RUN = {"invalid", "wrong_assignment", "killed", "grader_error"}


class GradingError(RuntimeError):
    """Grading itself cannot run (unknown assignment, missing folder, unusable gradebook, no sandbox)."""


@dataclass
class Limits:
    cell_timeout: int = 120  # s per cell, then the kernel is interrupted
    submission_timeout: int = 900  # s of wall clock per submission, then the worker is killed
    memory: int = 4 * GIB  # bytes of data per kernel (RLIMIT_DATA)
    worker_memory: int = 8 * GIB  # bytes of data per grading worker, the trusted side (RLIMIT_DATA)
    file_size: int = 256 * 1024**2  # largest file the kernel may write
    processes: int = 256  # processes and threads of one sandbox (RLIMIT_NPROC of its own uid)
    scratch_size: int = 512 * 1024**2  # the sandbox's private writable folders (tmpfs), bytes
    max_cell_output: int = 100_000  # characters kept per cell
    max_notebook_output: int = 2_000_000  # characters kept per notebook


@dataclass
class Course:
    root: Path
    course_id: str
    source: Path
    submitted: Path
    autograded: Path
    feedback: Path
    db_url: str
    db_path: Path
    feedback_preprocessors: list[str]  # the course's feedback pipeline (nbgrader_config.py): the one list


HIDE = "tools.autograder.feedback.HideHiddenTests"


def load_course(root: Path) -> Course:
    from traitlets.config.loader import PyFileConfigLoader

    cfg_file = root / "nbgrader_config.py"
    if not cfg_file.is_file():
        raise GradingError(f"no nbgrader_config.py in {root}")
    cfg = PyFileConfigLoader("nbgrader_config.py", path=str(root)).load_config()
    cd = cfg.CourseDirectory

    def folder(name: str, default: str) -> Path:
        p = Path(cd.get(name, default))
        return p if p.is_absolute() else Path(cd.get("root", str(root))) / p

    db_url = cd.get("db_url", f"sqlite:///{root / 'gradebook.db'}")
    if not db_url.startswith("sqlite:///"):
        raise GradingError(f"only sqlite gradebooks are supported, got {db_url}")
    pipeline = [p if isinstance(p, str) else f"{p.__module__}.{p.__name__}"
                for p in cfg.GenerateFeedback.get("preprocessors", [])]
    if HIDE not in pipeline:
        raise GradingError(f"{cfg_file}: c.GenerateFeedback.preprocessors must include {HIDE!r}, or the feedback "
                           "would show the hidden tests (docs/grading.md, 5. Feedback)")
    return Course(root=Path(cd.get("root", str(root))), course_id=cd.get("course_id", "default_course"),
                  source=folder("source_directory", "source"), submitted=folder("submitted_directory", "submitted"),
                  autograded=folder("autograded_directory", "autograded"),
                  feedback=folder("feedback_directory", "feedback"), db_url=db_url,
                  db_path=Path(db_url[len("sqlite:///"):]), feedback_preprocessors=pipeline)


def notebook_name(course: Course, assignment: str) -> str:
    folder = course.source / assignment
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", assignment) or not folder.is_dir():
        known = sorted(p.name for p in course.source.iterdir() if p.is_dir()) if course.source.is_dir() else []
        raise GradingError(f"unknown assignment {assignment!r}; known: {', '.join(known) or 'none'}")
    nbs = sorted(p.stem for p in folder.glob("*.ipynb"))
    if assignment in nbs:
        return assignment
    if len(nbs) == 1:
        return nbs[0]
    raise GradingError(f"assignment {assignment!r} must hold one notebook, found {nbs}")


@contextlib.contextmanager
def gradebook_lock(course: Course):
    """One grading run per gradebook at a time (a lock file beside it, released when the process dies)."""
    course.db_path.parent.mkdir(parents=True, exist_ok=True)
    with open(course.db_path.parent / ".grading.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise GradingError(f"another grading run is using {course.db_path}") from None
        yield
