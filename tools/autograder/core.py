"""The grading run: check, autograde in isolated workers, merge, report.

    report = grade("02_attention_scoring", Path("inbox/"))

1. **Set up** (parent): read the course's ``nbgrader_config.py``; make sure
   the assignment is in the course gradebook (``nbgrader generate_assignment``,
   its release written to scratch, so ``notebooks/`` is untouched); take a
   snapshot of the gradebook; write the sandbox kernelspec.
2. **Check** every submission (``submissions.check``): unreadable, empty, another
   lesson, another kernel, edited/deleted/re-labelled graded cells.
3. **Autograde** each runnable submission in its own scratch course (a copy of
   the notebook and of the gradebook snapshot) in a worker process (``jobs``
   workers in parallel, each reused for the next submission), under a
   wall-clock limit per submission; every submission gets a fresh kernel under
   memory/CPU/file-size limits (``sandbox_kernel.py``) with a scratch working
   directory and home.
4. **Merge** (parent only, one submission at a time): scores, comments and
   flags go from the scratch gradebook into the course gradebook through
   nbgrader's ``Gradebook`` API; the autograded notebook and the feedback are
   copied into ``grading/``.  Workers never open the course gradebook.
5. **Report**: the grade table (CSV) is read back from the course gradebook.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import csv
import fcntl
import html
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from tools.autograder import submissions as subs
from tools.autograder.worker import KERNEL_NAME

REPO = Path(__file__).resolve().parents[2]
GIB = 1024**3

# Most severe first: the status of a submission is the first one among its notes.
STATUSES = {
    "invalid": "the file is not a readable notebook; not run, scores zero",
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
    """Grading itself cannot run (unknown assignment, missing folder, unusable gradebook)."""


@dataclass
class Limits:
    cell_timeout: int = 120  # s per cell, then the kernel is interrupted
    submission_timeout: int = 900  # s of wall clock per submission, then the worker is killed
    memory: int = 4 * GIB  # bytes of data per kernel (RLIMIT_DATA)
    file_size: int = 256 * 1024**2  # largest file the kernel may write
    max_cell_output: int = 100_000  # characters kept per cell
    max_notebook_output: int = 2_000_000  # characters kept per notebook


@dataclass
class Row:
    student: str
    status: str = "graded"
    reason: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    total: float = 0.0
    max: float = 0.0
    manual_pending: int = 0


@dataclass
class Report:
    assignment: str
    rows: list[Row]
    exercises: list[str]
    csv_path: Path
    feedback_dir: Path
    seconds: float

    def by_student(self) -> dict[str, Row]:
        return {r.student: r for r in self.rows}


# ----------------------------------------------------------------------------
# course configuration
# ----------------------------------------------------------------------------
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


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


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
    return Course(root=Path(cd.get("root", str(root))), course_id=cd.get("course_id", "default_course"),
                  source=folder("source_directory", "source"), submitted=folder("submitted_directory", "submitted"),
                  autograded=folder("autograded_directory", "autograded"),
                  feedback=folder("feedback_directory", "feedback"), db_url=db_url,
                  db_path=Path(db_url[len("sqlite:///"):]))


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
    """One grading run per gradebook at a time (a lock file beside it)."""
    course.db_path.parent.mkdir(parents=True, exist_ok=True)
    with open(course.db_path.parent / ".grading.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise GradingError(f"another grading run is using {course.db_path}") from None
        yield


def prepare_assignment(course: Course, assignment: str, scratch: Path) -> nbformat.NotebookNode:
    """Put the assignment into the course gradebook; return its released notebook."""
    release = scratch / "release"
    cmd = [sys.executable, "-m", "nbgrader", "generate_assignment", assignment, "--log-level=WARN",
           f"--CourseDirectory.root={course.root}", f"--CourseDirectory.release_directory={release}"]
    r = subprocess.run(cmd, cwd=course.root, capture_output=True, text=True, env=tool_env())
    if r.returncode != 0:
        raise GradingError(f"cannot put {assignment} into the gradebook {course.db_path} "
                           f"(nbgrader generate_assignment failed):\n{(r.stdout + r.stderr)[-3000:]}")
    nb_files = list((release / assignment).glob("*.ipynb"))
    if len(nb_files) != 1:
        raise GradingError(f"nbgrader released {len(nb_files)} notebooks for {assignment}")
    return nbformat.read(nb_files[0], as_version=4)


def snapshot(course: Course, dest: Path) -> None:
    try:
        src = sqlite3.connect(f"file:{course.db_path}?mode=ro", uri=True)
        dst = sqlite3.connect(dest)
        with dst:
            src.backup(dst)
        src.close()
        dst.close()
    except sqlite3.Error as e:
        raise GradingError(f"the gradebook {course.db_path} is unusable: {e}") from None


def write_kernelspec(scratch: Path, limits: Limits) -> Path:
    jupyter = scratch / "jupyter"
    spec = jupyter / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    launcher = Path(__file__).with_name("sandbox_kernel.py")
    argv = [sys.executable, str(launcher), "--memory", str(limits.memory),
            "--cpu", str(max(limits.submission_timeout, limits.cell_timeout) + 30),
            "--fsize", str(limits.file_size),
            "--", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps(
        {"argv": argv, "display_name": "Python 3 (course grader sandbox)", "language": "python"}))
    return jupyter


# ----------------------------------------------------------------------------
# one submission
# ----------------------------------------------------------------------------
@dataclass
class Job:
    student: str
    sub: subs.Submission
    notes: list[tuple[str, str]]
    dir: Path | None = None


def worker_env(job_dir: Path, jupyter: Path, quick: bool) -> dict[str, str]:
    keep = ("LANG", "LC_ALL", "LC_CTYPE", "TZ")
    env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("COURSE_")}
    home = job_dir / "home"
    for d in ("home", "tmp", "ipython", "mpl", "jupyter_config", "jupyter_data", "runtime"):
        (job_dir / d).mkdir(exist_ok=True)
    env.update(
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)]),
        HOME=str(home), TMPDIR=str(job_dir / "tmp"), IPYTHONDIR=str(job_dir / "ipython"),
        MPLCONFIGDIR=str(job_dir / "mpl"), MPLBACKEND="Agg",
        JUPYTER_PATH=str(jupyter), JUPYTER_CONFIG_DIR=str(job_dir / "jupyter_config"),
        JUPYTER_DATA_DIR=str(job_dir / "jupyter_data"), JUPYTER_RUNTIME_DIR=str(job_dir / "runtime"),
        JUPYTER_PLATFORM_DIRS="1", PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1",
        OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COURSE_GRADER_PIDFILE=str(job_dir / "kernel.pids"),
    )
    env["COURSE_QUICK"] = "1" if quick else "0"
    return env


def _kill_kernels(job_dir: Path) -> None:
    """Kill the sandbox kernels this job started (pids from its pid file, checked by command line)."""
    pidfile = job_dir / "kernel.pids"
    if pidfile.exists():
        for line in pidfile.read_text().split():
            try:
                pid = int(line)
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"sandbox_kernel.py" in cmdline:
                    os.kill(pid, signal.SIGKILL)
            except (ValueError, OSError):
                pass


class Lane:
    """One grading worker process, reused for submission after submission (``worker --serve``).

    A submission that runs past ``submission_timeout`` gets its worker's whole
    process group and its kernels killed; the next submission starts a new worker.
    """

    def __init__(self, index: int, scratch: Path, jupyter: Path, quick: bool, limits: Limits):
        self.dir = scratch / f"lane{index}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.env = worker_env(self.dir, jupyter, quick)
        self.jupyter, self.quick = jupyter, quick
        self.limits = limits
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "worker.log"

    def _start(self) -> subprocess.Popen:
        log = open(self.log, "ab")
        try:
            return subprocess.Popen([sys.executable, "-m", "tools.autograder.worker", "--serve"], cwd=self.dir,
                                    env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                    start_new_session=True)
        finally:
            log.close()

    def _kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._kill()
            self.proc = None

    def _wait_line(self, deadline: float) -> bool:
        import select

        fd = self.proc.stdout.fileno()
        buf = b""
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(fd, 64)
                if not chunk:  # the worker died
                    return True
                buf += chunk
        return True

    def run(self, job: Job) -> dict:
        assert job.dir is not None
        job_json = job.dir / "job.json"
        spec = json.loads(job_json.read_text())
        spec["env"] = worker_env(job.dir, self.jupyter, self.quick)
        job_json.write_text(json.dumps(spec))
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        try:
            self.proc.stdin.write(f"{job_json}\n".encode())
            self.proc.stdin.flush()
        except OSError:
            self._kill()
            self.proc = self._start()
            self.proc.stdin.write(f"{job_json}\n".encode())
            self.proc.stdin.flush()
        finished = self._wait_line(time.monotonic() + self.limits.submission_timeout)
        if not finished:
            self._kill()
            _kill_kernels(job.dir)
            return {"notes": [["killed", f"the submission ran past the {self.limits.submission_timeout} s limit "
                               "and was killed"]], "autograded": False}
        _kill_kernels(job.dir)
        result_file = job.dir / "result.json"
        if not result_file.exists():
            code = self.proc.poll()
            self._kill()
            tail = self.log.read_text(errors="replace")[-300:].strip().replace("\n", " | ")
            return {"notes": [["grader_error", f"the grading worker died (exit code {code}): {tail}"]],
                    "autograded": False}
        return json.loads(result_file.read_text())


# ----------------------------------------------------------------------------
# merging into the course gradebook (parent only)
# ----------------------------------------------------------------------------
def merge(course: Course, assignment: str, notebook: str, job: Job, result: dict, flagged: bool) -> None:
    import warnings

    from nbgrader.api import Gradebook, MissingEntry

    warnings.filterwarnings("ignore", message=".*not in session.*")  # nbgrader's SQLAlchemy noise

    ok = bool(result.get("autograded"))
    scratch_url = f"sqlite:///{job.dir / 'course' / 'gradebook.db'}" if job.dir else None
    auto: dict[str, tuple] = {}
    comments: dict[str, str | None] = {}
    timestamp = None
    penalty = None
    if ok and scratch_url:
        with Gradebook(scratch_url, course.course_id) as sg:
            s = sg.find_submission(assignment, job.student)
            timestamp = s.timestamp
            snb = sg.find_submission_notebook(notebook, assignment, job.student)
            penalty = snb.late_submission_penalty
            for g in snb.grades:
                auto[g.name] = (g.auto_score, g.needs_manual_grade)
            for c in snb.comments:
                comments[c.name] = c.auto_comment
    with Gradebook(course.db_url, course.course_id) as gb:
        gb.update_or_create_student(job.student)
        kwargs = {"timestamp": timestamp} if timestamp else {}
        gb.update_or_create_submission(assignment, job.student, **kwargs)
        snb = gb.find_submission_notebook(notebook, assignment, job.student)
        for g in snb.grades:
            if ok and g.name in auto:
                g.auto_score, g.needs_manual_grade = auto[g.name]
            else:  # not run: zero, as nbgrader does for a missing notebook
                g.auto_score, g.needs_manual_grade = 0.0, False
        for c in snb.comments:
            with contextlib.suppress(KeyError):
                c.auto_comment = comments[c.name] if ok else None
        snb.flagged = flagged
        if penalty is not None:
            snb.late_submission_penalty = penalty
        gb.db.commit()
        try:
            gb.find_submission(assignment, job.student)
        except MissingEntry as e:  # pragma: no cover
            raise GradingError(f"the gradebook lost {job.student}'s submission") from e


def place_files(course: Course, assignment: str, notebook: str, job: Job, row: Row, result: dict) -> None:
    """Copy the submission, the autograded notebook and the feedback into grading/."""
    sub_dir = course.submitted / job.student / assignment
    shutil.rmtree(sub_dir, ignore_errors=True)
    sub_dir.mkdir(parents=True)
    if job.sub.path is not None:
        shutil.copyfile(job.sub.path, sub_dir / f"{notebook}.ipynb")
    if job.sub.timestamp is not None:
        shutil.copyfile(job.sub.timestamp, sub_dir / "timestamp.txt")
    ag_dir = course.autograded / job.student / assignment
    fb_dir = course.feedback / job.student / assignment
    shutil.rmtree(ag_dir, ignore_errors=True)
    shutil.rmtree(fb_dir, ignore_errors=True)
    if result.get("autograded") and job.dir:
        shutil.copytree(job.dir / "course" / "autograded" / job.student / assignment, ag_dir)
    fb_dir.mkdir(parents=True)
    src = job.dir / "course" / "feedback" / job.student / assignment if job.dir else None
    if result.get("feedback") and src and src.is_dir():
        shutil.copytree(src, fb_dir, dirs_exist_ok=True)
    else:
        (fb_dir / f"{notebook}.html").write_text(_plain_feedback(assignment, row), encoding="utf-8")


def _plain_feedback(assignment: str, row: Row) -> str:
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Feedback</title></head><body>"
        f"<h1>{html.escape(assignment)}: feedback for {html.escape(row.student)}</h1>"
        f"<p><b>Score: {row.total:g} / {row.max:g}</b></p>"
        f"<p>Your submission could not be graded automatically: <b>{html.escape(row.status)}</b> "
        f"({html.escape(STATUSES.get(row.status, ''))}).</p><p>{html.escape(row.reason)}</p>"
        "<p>Please check the file you submitted and ask your instructor.</p></body></html>"
    )


# ----------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------
def exercise_of(grade_id: str) -> str:
    m = re.match(r"(ex\d+)", grade_id)
    return m.group(1) if m else "other"


def status_of(notes: list[tuple[str, str]]) -> tuple[str, str]:
    order = list(STATUSES)
    notes = sorted(notes, key=lambda n: order.index(n[0]) if n[0] in order else len(order))
    status = notes[0][0] if notes else "graded"
    return status, "; ".join(text for _, text in notes if text)


def fill_scores(course: Course, assignment: str, notebook: str, rows: list[Row]) -> list[str]:
    from nbgrader.api import Gradebook

    exercises: list[str] = []
    with Gradebook(course.db_url, course.course_id) as gb:
        nb = gb.find_notebook(notebook, assignment)
        for gc in nb.grade_cells:
            ex = exercise_of(gc.name)
            if ex not in exercises:
                exercises.append(ex)
        exercises.sort(key=lambda e: (e == "other", int(e[2:]) if e[2:].isdigit() else 0))
        for row in rows:
            snb = gb.find_submission_notebook(notebook, assignment, row.student)
            row.scores = dict.fromkeys(exercises, 0.0)
            row.total = row.max = 0.0
            row.manual_pending = 0
            for g in snb.grades:
                ex = exercise_of(g.name)
                score = float(g.score or 0.0)
                row.scores[ex] += score
                row.total += score
                row.max += float(g.max_score)
                row.manual_pending += bool(g.needs_manual_grade)
    return exercises


def write_csv(path: Path, assignment: str, exercises: list[str], rows: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["student", "assignment", *exercises, "total", "max", "manual_pending", "status", "reason"])
        for r in rows:
            w.writerow([r.student, assignment, *(f"{r.scores.get(e, 0):g}" for e in exercises),
                        f"{r.total:g}", f"{r.max:g}", r.manual_pending, r.status, r.reason])
    os.replace(tmp, path)


# ----------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------
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
) -> Report:
    """Grade every submission of ``assignment`` in ``folder``; see the module docstring."""
    limits = limits or Limits()
    t0 = time.monotonic()
    course = load_course(Path(root).resolve())
    notebook = notebook_name(course, assignment)
    folder = Path(folder)
    if not folder.is_dir():
        raise GradingError(f"no such folder of submissions: {folder}")
    os.environ["PATH"] = tool_env()["PATH"]  # nbgrader runs alembic from PATH
    scratch = Path(tempfile.mkdtemp(prefix=f"grade-{assignment}-"))
    try:
        with gradebook_lock(course):
            release = prepare_assignment(course, assignment, scratch)
            source = nbformat.read(course.source / assignment / f"{notebook}.ipynb", as_version=4)
            template = scratch / "gradebook.db"
            snapshot(course, template)
            jupyter = write_kernelspec(scratch, limits)
            found = subs.find(folder, assignment, notebook)
            todo: list[Job] = []
            done: list[tuple[Job, dict]] = []
            for i, sub in enumerate(found):
                if sub.path is None:
                    done.append((Job(sub.student, sub, [("invalid", sub.problem)]), {"autograded": False}))
                    continue
                checked = subs.check(sub.path, release, source)
                job = Job(sub.student, sub, list(checked.notes))
                if checked.status:
                    done.append((job, {"autograded": False}))
                    continue
                job.dir = scratch / "jobs" / f"{i:04d}"
                target = job.dir / "course" / "submitted" / sub.student / assignment
                target.mkdir(parents=True)
                nbformat.write(checked.nb, target / f"{notebook}.ipynb")
                if sub.timestamp:
                    shutil.copyfile(sub.timestamp, target / "timestamp.txt")
                shutil.copyfile(template, job.dir / "course" / "gradebook.db")
                (job.dir / "job.json").write_text(json.dumps({
                    "course": str(job.dir / "course"), "course_id": course.course_id,
                    "source_directory": str(course.source), "assignment": assignment,
                    "student": sub.student, "notebook": notebook, "cell_timeout": limits.cell_timeout,
                    "max_cell_output": limits.max_cell_output, "max_notebook_output": limits.max_notebook_output,
                }))
                todo.append(job)

            rows: dict[str, Row] = {}
            bar = _progress(len(found), assignment, progress)

            def finish(job: Job, result: dict) -> None:
                notes = job.notes + [tuple(n) for n in result.get("notes", [])]
                status, reason = status_of(notes)
                if status in NOT_RUN:
                    result = {**result, "autograded": False, "feedback": False}
                row = Row(job.student, status, reason)
                merge(course, assignment, notebook, job, result, flagged=status not in ("graded", "kernel_changed"))
                fill_scores(course, assignment, notebook, [row])
                place_files(course, assignment, notebook, job, row, result)
                rows[job.student] = row
                bar.update(1)
                bar.set_postfix_str(f"{job.student}: {status}")

            for job, result in done:
                finish(job, result)
            lanes = [Lane(i, scratch, jupyter, quick, limits) for i in range(max(1, min(jobs, len(todo))))]
            free = list(lanes)
            try:
                with cf.ThreadPoolExecutor(max_workers=len(lanes) or 1) as pool:
                    import threading

                    lock = threading.Lock()

                    def on_lane(job: Job) -> dict:
                        with lock:
                            lane = free.pop()
                        try:
                            return lane.run(job)
                        finally:
                            with lock:
                                free.append(lane)

                    futures = {pool.submit(on_lane, job): job for job in todo}
                    for fut in cf.as_completed(futures):
                        job = futures[fut]
                        try:
                            result = fut.result()
                        except Exception as e:  # noqa: BLE001
                            result = {"notes": [["grader_error", f"{type(e).__name__}: {e}"]], "autograded": False}
                        finish(job, result)
            finally:
                for lane in lanes:
                    lane.close()
            bar.close()
            ordered = [rows[s.student] for s in found]
            exercises = fill_scores(course, assignment, notebook, ordered)
            csv_path = csv_path or course.db_path.parent / f"{assignment}_grades.csv"
            write_csv(csv_path, assignment, exercises, ordered)
    finally:
        if keep_scratch:
            print(f"scratch kept in {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return Report(assignment, ordered, exercises, csv_path, course.feedback, time.monotonic() - t0)


def _progress(total: int, assignment: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"grading {assignment}", unit="sub", disable=not enabled, file=sys.stderr)


def regenerate_feedback(assignment: str, *, root: Path = REPO) -> Path:
    """Feedback for every autograded submission from the course gradebook (after manual grading)."""
    from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
    from nbgrader.converters import GenerateFeedback
    from nbgrader.coursedir import CourseDirectory
    from nbgrader.preprocessors import GetGrades
    from traitlets.config.loader import PyFileConfigLoader

    from tools.autograder.feedback import HideHiddenTests

    course = load_course(Path(root).resolve())
    notebook_name(course, assignment)
    os.environ["PATH"] = tool_env()["PATH"]
    cfg = PyFileConfigLoader("nbgrader_config.py", path=str(course.root)).load_config()
    cfg.CourseDirectory.assignment_id = assignment
    cfg.GenerateFeedback.preprocessors = [GetGrades, HideHiddenTests, CSSHTMLHeaderPreprocessor]
    cfg.GenerateFeedback.force = True
    with gradebook_lock(course):
        try:
            GenerateFeedback(coursedir=CourseDirectory(config=cfg), config=cfg).start()
        except Exception as e:  # noqa: BLE001
            raise GradingError(f"nbgrader generate_feedback failed: {e}") from None
    return course.feedback
