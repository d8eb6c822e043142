"""The course gradebook, written by the grading parent only.

* ``prepare_assignment``: the lesson into the gradebook (its release to scratch);
* ``snapshot``: a copy for the workers' scratch courses;
* ``merge``: one submission's automatic scores, comments and flags from its scratch
  gradebook into the course gradebook, through nbgrader's ``Gradebook`` API;
* ``ManualGuard``: the manual scores, extra credit and manual comments of the
  assignment, read when the run starts; any that changed during the run (no code
  of the run should write them) are put back and reported;
* ``fill_scores``: the grade table's rows read back from the gradebook.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import warnings
from pathlib import Path

import nbformat

from tools.autograder.config import Course, GradingError
from tools.autograder.records import Result
from tools.common import generate_assignment


def _quiet() -> None:
    warnings.filterwarnings("ignore", message=".*not in session.*")  # nbgrader's SQLAlchemy noise


def prepare_assignment(course: Course, assignment: str, scratch: Path) -> nbformat.NotebookNode:
    """Put the assignment into the course gradebook; return its released notebook."""
    release = scratch / "release"
    r = generate_assignment(course.root, assignment, release=release)
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


def merge(course: Course, assignment: str, notebook: str, student: str, scratch_db: Path | None,
          result: Result, flagged: bool) -> None:
    from nbgrader.api import Gradebook, MissingEntry

    _quiet()
    ok = result.autograded and scratch_db is not None
    auto: dict[str, tuple] = {}
    comments: dict[str, str | None] = {}
    timestamp = penalty = None
    if ok:
        with Gradebook(f"sqlite:///{scratch_db}", course.course_id) as sg:
            s = sg.find_submission(assignment, student)
            timestamp = s.timestamp
            snb = sg.find_submission_notebook(notebook, assignment, student)
            penalty = snb.late_submission_penalty
            for g in snb.grades:
                auto[g.name] = (g.auto_score, g.needs_manual_grade)
            for c in snb.comments:
                comments[c.name] = c.auto_comment
    with Gradebook(course.db_url, course.course_id) as gb:
        gb.update_or_create_student(student)
        kwargs = {"timestamp": timestamp} if timestamp else {}
        gb.update_or_create_submission(assignment, student, **kwargs)
        snb = gb.find_submission_notebook(notebook, assignment, student)
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
            gb.find_submission(assignment, student)
        except MissingEntry as e:  # pragma: no cover
            raise GradingError(f"the gradebook lost {student}'s submission") from e


class ManualGuard:
    """What instructors set by hand for ``assignment``: kept as it was when the run started."""

    def __init__(self, course: Course, assignment: str):
        self.course, self.assignment = course, assignment
        self.grades, self.comments = self._read()

    def _read(self) -> tuple[dict, dict]:
        from nbgrader.api import Gradebook

        _quiet()
        grades: dict[tuple[str, str, str], tuple] = {}
        comments: dict[tuple[str, str, str], str | None] = {}
        with Gradebook(self.course.db_url, self.course.course_id) as gb:
            try:
                assignment = gb.find_assignment(self.assignment)
            except Exception:  # noqa: BLE001  (a new assignment: nothing set by hand yet)
                return grades, comments
            for sub in assignment.submissions:
                for snb in sub.notebooks:
                    for g in snb.grades:
                        grades[(sub.student_id, snb.name, g.name)] = (g.manual_score, g.extra_credit)
                    for c in snb.comments:
                        comments[(sub.student_id, snb.name, c.name)] = c.manual_comment
        return grades, comments

    def restore(self) -> list[str]:
        """Put back every manual entry that changed since the run started; describe what was restored."""
        from nbgrader.api import Gradebook

        _quiet()
        fixed: list[str] = []
        with Gradebook(self.course.db_url, self.course.course_id) as gb:
            try:
                assignment = gb.find_assignment(self.assignment)
            except Exception:  # noqa: BLE001
                return fixed
            for sub in assignment.submissions:
                for snb in sub.notebooks:
                    for g in snb.grades:
                        want = self.grades.get((sub.student_id, snb.name, g.name), (None, None))
                        if (g.manual_score, g.extra_credit) != want:
                            fixed.append(f"{sub.student_id}/{g.name}: manual score {g.manual_score} -> {want[0]}")
                            g.manual_score, g.extra_credit = want
                    for c in snb.comments:
                        want_c = self.comments.get((sub.student_id, snb.name, c.name))
                        if c.manual_comment != want_c:
                            fixed.append(f"{sub.student_id}/{c.name}: manual comment restored")
                            c.manual_comment = want_c
            gb.db.commit()
        return fixed


def exercise_of(grade_id: str) -> str:
    m = re.match(r"(ex\d+)", grade_id)
    return m.group(1) if m else "other"


def fill_scores(course: Course, assignment: str, notebook: str, rows: list) -> list[str]:
    """Set each row's scores from the gradebook; return the exercise columns."""
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
