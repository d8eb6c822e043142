"""Grade submissions in scratch courses: ``python -m tools.autograder.worker --serve`` (or ``JOB.json``).

The grader keeps one worker process per parallel lane (in its own session, so it
can be killed as a group, and restarted for the next submission).  The worker owns a scratch course folder prepared by
the parent: ``submitted/<student>/<assignment>/<notebook>.ipynb`` (already
checked), and ``gradebook.db``, a snapshot of the course gradebook.  It runs
nbgrader's autograde there with the hardened ``SafeExecute`` and the sandboxed
kernel, then generates the feedback with the hidden tests removed, and writes
``result.json``: what went wrong during execution, read from the autograded
notebook.  The course gradebook is never opened here: the parent merges the
scratch gradebook into it.
"""

from __future__ import annotations

import ast
import logging
import os
import shutil
import sys
import traceback
import warnings
from pathlib import Path

import nbformat
from nbconvert.preprocessors import ClearMetadataPreprocessor
from nbgrader.converters import Autograde, GenerateFeedback
from nbgrader.coursedir import CourseDirectory
from nbgrader.preprocessors import (
    AssignLatePenalties,
    CheckCellMetadata,
    IgnorePattern,
    LimitOutput,
    SaveAutoGrades,
)
from traitlets.config import Config

from tools.autograder.execute import KERNEL_DIED, TRUNCATED, SafeExecute
from tools.autograder.records import JobSpec, Result
from tools.autograder.sandbox import KERNEL_NAME
from tools.autograder.sanitize import MAX_STORED, cap_notebook, sanitize_notebook
from tools.autograder.withhold import WITHHELD
from tools.common import REPO, is_test

# nbgrader's autograde pipeline with SafeExecute for Execute (the feedback pipeline is the course's own)
AUTOGRADE = [SafeExecute, IgnorePattern, ClearMetadataPreprocessor, LimitOutput, SaveAutoGrades,
             AssignLatePenalties, CheckCellMetadata]


def _config(job: JobSpec) -> Config:
    c = Config()
    cd = c.CourseDirectory
    cd.root = job.course
    cd.course_id = job.course_id
    cd.source_directory = job.source_directory
    cd.submitted_directory = "submitted"
    cd.autograded_directory = "autograded"
    cd.feedback_directory = "feedback"
    cd.db_url = "sqlite:///" + str(Path(job.course) / "gradebook.db")
    cd.assignment_id = job.assignment
    cd.student_id = job.student
    cd.notebook_id = "*"
    c.Autograde.autograde_preprocessors = AUTOGRADE
    c.GenerateFeedback.preprocessors = job.feedback_preprocessors
    ex = c.SafeExecute
    ex.kernel_name = KERNEL_NAME
    ex.timeout = job.cell_timeout
    ex.startup_timeout = 120
    ex.max_cell_output = job.max_cell_output
    ex.max_notebook_output = job.max_notebook_output
    # the graded test cells run here, in the grader, from the lesson's source (never the submission's cells)
    ex.trusted_source = str(Path(job.source_directory) / job.assignment / f"{job.notebook}.ipynb")
    if job.ipc_dir:  # a sandboxed kernel has no network: Unix sockets in the folder both sides see
        c.KernelManager.transport = "ipc"
        c.KernelManager.ip = str(Path(job.ipc_dir) / "k")
        ex.socket_dir = job.ipc_dir
    return c


def analyse(nb) -> list[tuple[str, str]]:
    """Notes (status, text) about how the execution of the autograded notebook went."""
    notes: list[tuple[str, str]] = []
    errors: list[str] = []
    unanswered: list[str] = []
    consequences: list[str] = []
    test_names = _test_cell_names(nb)
    helper_missing = False
    withheld_used = False
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        name = cell.metadata.get("nbgrader", {}).get("grade_id") or f"cell {i}"
        test = is_test(cell)
        timed_out = any(o.get("ename") == "CellTimeoutError" for o in cell.get("outputs", []))
        for out in cell.get("outputs", []):
            if out.output_type == "stream" and TRUNCATED in out.get("text", ""):
                notes.append(("output_limit", f"output of {name} truncated"))
            if out.output_type != "error":
                continue
            ename, evalue = out.get("ename", ""), str(out.get("evalue", ""))
            if ename == KERNEL_DIED:
                if not evalue.startswith("not run"):
                    notes.append(("kernel_died", f"{evalue} ({name}); later cells not run"))
            elif ename == "CellTimeoutError" or "Timeout" in ename:
                notes.append(("timeout", f"{name} ran past the cell timeout" +
                              (f": {evalue}" if "killed" in evalue else "")))
            elif ename == "MemoryError" or "can't allocate memory" in evalue or "out of memory" in evalue.lower():
                notes.append(("memory", f"{name} ran out of memory ({ename})"))
            elif ename == "SystemExit":
                notes.append(("exit", f"{name} called sys.exit() ({evalue or 'no code'})"))
            elif ename == "KeyboardInterrupt":
                if not timed_out:
                    notes.append(("error", f"{name} interrupted (KeyboardInterrupt)"))
            elif ename == WITHHELD and not test:
                # a lesson cell that uses a reference withheld from the kernel while grading (withhold.py)
                consequences.append(f"{name}: {ename}")
                withheld_used = True
            elif ename == "NotImplementedError" and not test:
                unanswered.append(name)
            elif not test and ename == "NameError" and (_quoted(evalue) in test_names or helper_missing):
                # a lesson cell that uses a helper a test cell defines (or a name such a cell failed to
                # define): test cells run in the grader process, never in the kernel; not the student's error
                helper_missing = True
                consequences.append(f"{name}: {ename} ({_quoted(evalue)})")
            elif not test and (unanswered or withheld_used):
                # a lesson cell that needs an earlier, unanswered exercise (e.g. a
                # table of models that could not train): a consequence, not an error
                consequences.append(f"{name}: {ename}")
            elif not test:
                errors.append(f"{name}: {ename}")
    if errors:
        notes.append(("error", f"exceptions in student code: {_shorten(errors)}"))
    if unanswered:
        text = f"not answered: {', '.join(unanswered)}"
        if consequences:
            text += f"; later cells failed for want of them: {_shorten(consequences)}"
        notes.append(("graded", text))
    elif consequences:
        notes.append(("graded", "lesson cells failed for want of test-cell helpers or of the lesson's references "
                                f"(withheld while grading): {_shorten(consequences)}"))
    return notes


def _quoted(evalue: str) -> str:
    """The name in NameError's message ``name 'x' is not defined``."""
    parts = evalue.split("'")
    return parts[1] if len(parts) >= 3 else ""


def _test_cell_names(nb) -> set[str]:
    """Top-level names the graded test cells define (their sources are the lesson's, restored by nbgrader)."""
    names: set[str] = set()
    for cell in nb.cells:
        if cell.cell_type != "code" or not is_test(cell):
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For, ast.With)):
                names |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return names


def _shorten(items: list[str], keep: int = 5) -> str:
    return "; ".join(items[:keep]) + (f"; ... ({len(items)} in all)" if len(items) > keep else "")


def _remove_student_files(folder: Path, source: Path, keep: str) -> None:
    """Delete what the student's code wrote next to the notebook (it must not reach feedback/)."""
    for p in sorted(folder.rglob("*"), reverse=True):
        rel = p.relative_to(folder)
        if str(rel) == keep or (source / rel).exists():
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def run(job_path: Path) -> Result:
    job = JobSpec.read(job_path)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message=".*not in session.*")  # nbgrader's SQLAlchemy noise
    config = _config(job)
    result = Result()
    os.environ.setdefault("MPLBACKEND", "Agg")  # the lesson's own cells that run in the grader draw nowhere
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # the grader's trusted copy of lib

    coursedir = CourseDirectory(config=config)
    try:
        Autograde(coursedir=coursedir, config=config).start()
    except BaseException as e:  # noqa: BLE001  (NbGraderException, SystemExit ...)
        result.notes.append(("grader_error", f"nbgrader autograde failed: {type(e).__name__}: {str(e)[:300]}"))
        result.log = traceback.format_exc()[-4000:]
        return result
    course = Path(job.course)
    out = course / "autograded" / job.student / job.assignment / f"{job.notebook}.ipynb"
    if not out.exists():
        result.notes.append(("grader_error", "nbgrader autograde wrote no notebook (see the grader log)"))
        return result
    result.autograded = True
    _remove_student_files(out.parent, Path(job.source_directory) / job.assignment, out.name)
    nb = nbformat.read(out, as_version=4)
    result.notes = analyse(nb)
    nb = sanitize_notebook(nb)  # what the formgrader and the feedback show, at most MAX_STORED bytes
    if cap_notebook(nb):
        result.notes.append(("output_limit", f"outputs removed: the graded notebook was over {MAX_STORED} bytes"))
    nbformat.write(nb, out)
    try:
        GenerateFeedback(coursedir=CourseDirectory(config=config), config=config).start()
        result.feedback = True
    except BaseException as e:  # noqa: BLE001
        result.notes.append(("grader_error", f"feedback failed: {type(e).__name__}: {str(e)[:300]}"))
    return result


def serve() -> None:
    """Grade job after job: read a job path per line on stdin, answer ``done`` on the original stdout.

    The grader keeps one such process per parallel lane, so nbgrader is imported
    once per lane instead of once per submission.  Student code never runs here
    (it runs in the kernel, a fresh process per submission); each job gets its
    own environment (home, temp and Jupyter folders), which the kernel inherits.
    """
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed by libraries goes to the log, not into the protocol
    sys.stdout = sys.stderr
    for line in sys.stdin:
        job_path = Path(line.strip())
        if not line.strip():
            continue
        os.environ.clear()
        os.environ.update(JobSpec.read(job_path).env)
        try:
            result = run(job_path)
        except BaseException as e:  # noqa: BLE001
            result = Result.failed("grader_error", f"{type(e).__name__}: {str(e)[:300]}", traceback.format_exc()[-4000:])
        result.write(job_path.parent / "result.json")
        reply.write("done\n")


def main() -> None:
    if sys.argv[1:] == ["--serve"]:
        serve()
        return
    job_path = Path(sys.argv[1])
    run(job_path).write(job_path.parent / "result.json")


if __name__ == "__main__":
    main()
