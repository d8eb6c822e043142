"""The grading run: check, autograde in sandboxed workers, merge, report.

    report = grade("02_attention_scoring", Path("inbox/"))

1. **Set up** (parent): read the course's ``nbgrader_config.py`` (``config``); find
   the sandbox (``sandbox.detect``: bubblewrap, or refuse unless weak isolation is
   accepted); put the assignment into the course gradebook and take a snapshot of it
   (``gradebook``); remember the manual grades (``ManualGuard``); start the watchdog
   that cleans the scratch folder if this process dies.
2. **Check** every submission (``submissions``): unreadable, empty, another lesson,
   another kernel, edited/deleted/re-labelled graded cells, colliding student ids.
3. **Autograde** each runnable submission in its own scratch course in a worker
   process (``lanes``; ``jobs`` in parallel), its kernel in its own sandbox.
4. **Merge** (parent only, one submission at a time): scores, comments and flags
   from the scratch gradebook into the course gradebook; the autograded notebook
   and the sanitized feedback into ``grading/`` (``report.place_files``).
5. **Report**: manual grades changed during the run put back; the grade table read
   back from the gradebook; the similarity report (``integrity``) beside it.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from tools.autograder import gradebook as gbk
from tools.autograder import submissions as subs
from tools.autograder import withhold
from tools.autograder.config import (  # noqa: F401  (re-exported: the public names of the grader)
    GIB,
    NOT_RUN,
    STATUSES,
    Course,
    GradingError,
    Limits,
    gradebook_lock,
    load_course,
    notebook_name,
)
from tools.autograder.lanes import Lane
from tools.autograder.records import JobSpec, Note, Result
from tools.autograder.report import Graded, Report, Row, place_files, status_of, write_csv
from tools.autograder.sandbox import Isolation, detect, plan, write_kernelspec
from tools.common import REPO, tool_env

__all__ = ["GIB", "REPO", "STATUSES", "GradingError", "Limits", "Report", "Row", "grade", "load_course",
           "regenerate_feedback"]


@dataclass
class Job:
    student: str
    sub: subs.Submission
    notes: list[Note] = field(default_factory=list)
    dir: Path | None = None
    spec: JobSpec | None = None


@dataclass(frozen=True)
class Run:
    """One grading run: what ``grade`` was asked, and where it works."""

    course: Course
    assignment: str
    notebook: str
    folder: Path  # the submissions
    scratch: Path  # the run's private folder (release, gradebook snapshot, jobs, the kernels' lib)
    iso: Isolation
    jobs: int
    limits: Limits
    quick: bool
    csv_path: Path | None
    progress: bool
    similarity: bool


def _watchdog(scratch: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tools.autograder.watchdog", str(scratch)], cwd=REPO,
                            env=tool_env({**os.environ, "PYTHONPATH": str(REPO)}), stdin=subprocess.PIPE,
                            start_new_session=True)


def grade(
    assignment: str,
    folder: Path,
    *,
    root: Path = REPO,
    jobs: int = 2,
    limits: Limits | None = None,
    quick: bool = True,
    csv_path: Path | None = None,
    keep_scratch: bool = False,
    progress: bool = True,
    weak_isolation: bool = False,
    similarity: bool = True,
) -> Report:
    """Grade every submission of ``assignment`` in ``folder``; see the module docstring."""
    limits = limits or Limits()
    t0 = time.monotonic()
    course = load_course(Path(root).resolve())
    notebook = notebook_name(course, assignment)
    folder = Path(folder)
    if not folder.is_dir():
        raise GradingError(f"no such folder of submissions: {folder}")
    iso = detect()
    if not iso.sandboxed and not weak_isolation:
        raise GradingError(f"no sandbox for the students' code ({iso.why}); install bubblewrap, or accept "
                           "weaker isolation explicitly with --weak-isolation (docs/grading.md)")
    os.environ["PATH"] = tool_env()["PATH"]  # nbgrader runs alembic from PATH
    scratch = Path(tempfile.mkdtemp(prefix=f"grade-{assignment}-"))
    os.chmod(scratch, 0o711)  # sandbox uids may traverse to their own socket folder, nothing else
    watchdog = _watchdog(scratch)
    try:
        with gradebook_lock(course):
            report = _run(Run(course, assignment, notebook, folder, scratch, iso, jobs, limits, quick, csv_path,
                              progress, similarity))
    finally:
        try:
            if keep_scratch:
                print(f"scratch kept in {scratch}", file=sys.stderr)
                watchdog.stdin.write(b"keep\n")
            watchdog.stdin.close()
            watchdog.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if not keep_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    report.seconds = time.monotonic() - t0
    return report


def _run(run: Run) -> Report:
    course, assignment, notebook, scratch, limits = run.course, run.assignment, run.notebook, run.scratch, run.limits
    release = gbk.prepare_assignment(course, assignment, scratch)
    guard = gbk.ManualGuard(course, assignment)
    source = nbformat.read(course.source / assignment / f"{notebook}.ipynb", as_version=4)
    template = scratch / "gradebook.db"
    gbk.snapshot(course, template)
    # the kernels' lib: without the references of this lesson (its hidden tests name them)
    kernel_lib, withheld = withhold.build(REPO / "lib", withhold.withheld_names(source), scratch / "kernel-lib")
    jupyter = write_kernelspec(scratch, limits, run.iso)
    found = subs.find(run.folder, assignment, notebook)
    todo: list[Job] = []
    done: list[tuple[Job, Result]] = []
    answers: dict[str, dict[str, str]] = {}
    for i, sub in enumerate(found):
        if sub.path is None:
            done.append((Job(sub.student, sub, [("invalid", sub.problem)]), Result()))
            continue
        checked = subs.check(sub.path, release, source)
        job = Job(sub.student, sub, list(checked.notes))
        if checked.status:
            done.append((job, Result()))
            continue
        from tools.autograder.integrity import solution_cells

        answers[sub.student] = solution_cells(checked.nb)
        job.dir = scratch / "jobs" / f"{i:04d}"
        target = job.dir / "course" / "submitted" / sub.student / assignment
        target.mkdir(parents=True)
        nbformat.write(checked.nb, target / f"{notebook}.ipynb")
        if sub.timestamp:
            shutil.copyfile(sub.timestamp, target / "timestamp.txt")
        shutil.copyfile(template, job.dir / "course" / "gradebook.db")
        job.spec = JobSpec(course=str(job.dir / "course"), course_id=course.course_id,
                           source_directory=str(course.source), assignment=assignment, student=sub.student,
                           notebook=notebook, cell_timeout=limits.cell_timeout,
                           max_cell_output=limits.max_cell_output, max_notebook_output=limits.max_notebook_output,
                           feedback_preprocessors=course.feedback_preprocessors)
        todo.append(job)

    rows: dict[str, Row] = {}
    bar = _progress(len(found), assignment, run.progress)

    def finish(job: Job, result: Result) -> None:
        status, reason = status_of(job.notes + result.notes)
        ok = status not in NOT_RUN and result.autograded
        row = Row(job.student, status, reason)
        scratch_db = job.dir / "course" / "gradebook.db" if job.dir and ok else None
        gbk.merge(course, assignment, notebook, job.student, scratch_db,
                  result if ok else Result(), flagged=status not in ("graded", "kernel_changed"))
        gbk.fill_scores(course, assignment, notebook, [row])
        place_files(course, assignment, notebook, Graded(job.student, job.sub.path, job.sub.timestamp,
                                                         job.dir / "course" if job.dir else None, ok,
                                                         ok and result.feedback), row)
        rows[job.student] = row
        bar.update(1)
        bar.set_postfix_str(f"{job.student}: {status}")

    for job, result in done:
        finish(job, result)
    lanes = [Lane(i, scratch, jupyter, run.quick, limits) for i in range(max(1, min(run.jobs, len(todo))))]
    free = list(lanes)
    lock = threading.Lock()

    def on_lane(job: Job) -> Result:
        with lock:
            lane = free.pop()
        try:
            sandbox_spec = None
            if run.iso.sandboxed:
                sandbox_spec, ipc = plan(job.dir, lane.index, limits, run.iso, run.quick, lib=kernel_lib)
                job.spec.ipc_dir = str(ipc)
            return lane.run(job.dir, job.spec, sandbox_spec)
        finally:
            with lock:
                free.append(lane)

    try:
        with cf.ThreadPoolExecutor(max_workers=len(lanes) or 1) as pool:
            futures = {pool.submit(on_lane, job): job for job in todo}
            for fut in cf.as_completed(futures):
                job = futures[fut]
                try:
                    result = fut.result()
                except Exception as e:  # noqa: BLE001
                    result = Result.failed("grader_error", f"{type(e).__name__}: {e}")
                finish(job, result)
    finally:
        for lane in lanes:
            lane.close()
    bar.close()
    restored = guard.restore()
    ordered = [rows[s.student] for s in found]
    exercises = gbk.fill_scores(course, assignment, notebook, ordered)
    csv_path = run.csv_path or course.db_path.parent / f"{assignment}_grades.csv"
    write_csv(csv_path, assignment, exercises, ordered)
    sim_path = None
    if run.similarity and answers:
        from tools.autograder.integrity import report as similarity_report

        sim_path = csv_path.with_name(f"{assignment}_similarity.csv")
        similarity_report(answers, release, REPO / "lib", sim_path, sim_path.with_suffix(".html"))
    return Report(assignment, ordered, exercises, csv_path, course.feedback, 0.0, run.iso.describe(), restored,
                  sim_path, withheld=withheld if run.iso.sandboxed else [])


def _progress(total: int, assignment: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"grading {assignment}", unit="sub", disable=not enabled, file=sys.stderr)


def regenerate_feedback(assignment: str, *, root: Path = REPO) -> Path:
    """Feedback for every autograded submission from the course gradebook (after manual grading)."""
    from nbgrader.converters import GenerateFeedback
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config.loader import PyFileConfigLoader

    from tools.autograder.sanitize import sanitize_page

    course = load_course(Path(root).resolve())
    notebook = notebook_name(course, assignment)
    os.environ["PATH"] = tool_env()["PATH"]
    cfg = PyFileConfigLoader("nbgrader_config.py", path=str(course.root)).load_config()
    cfg.CourseDirectory.assignment_id = assignment
    cfg.GenerateFeedback.preprocessors = course.feedback_preprocessors  # load_course checked it hides the tests
    cfg.GenerateFeedback.force = True
    with gradebook_lock(course):
        try:
            GenerateFeedback(coursedir=CourseDirectory(config=cfg), config=cfg).start()
        except Exception as e:  # noqa: BLE001
            raise GradingError(f"nbgrader generate_feedback failed: {e}") from None
        for page in course.feedback.glob(f"*/{assignment}/{notebook}.html"):
            page.write_text(sanitize_page(page.read_text(encoding="utf-8", errors="replace")), encoding="utf-8")
    return course.feedback
