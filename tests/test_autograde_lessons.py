"""Every lesson with graded cells: the solution scores full marks, the untouched student notebook zero.

One grading run per lesson (two submissions, 'solution' and 'blank') through the
grading library, in quick mode, in a scratch copy of the course so the shared
gradebook is never touched.  Parametrized per lesson so pytest-xdist spreads them.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.autograder.core import Limits, grade, load_course  # noqa: E402


def graded_lessons() -> list[str]:
    out = []
    for folder in sorted((ROOT / "solutions").iterdir()):
        nb = folder / f"{folder.name}.ipynb"
        if nb.is_file() and any(c.get("metadata", {}).get("nbgrader", {}).get("grade")
                                for c in json.loads(nb.read_text())["cells"]):
            out.append(folder.name)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("lesson", graded_lessons())
def test_solution_full_marks_blank_zero(lesson, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_QUICK", "1")
    student = ROOT / "notebooks" / lesson / f"{lesson}.ipynb"
    if not student.is_file():
        pytest.fail(f"notebooks/{lesson}/{lesson}.ipynb is missing: run `make student`")
    course = tmp_path / "course"
    (course / "solutions").mkdir(parents=True)
    shutil.copytree(ROOT / "solutions" / lesson, course / "solutions" / lesson,
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    shutil.copyfile(ROOT / "nbgrader_config.py", course / "nbgrader_config.py")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copyfile(ROOT / "solutions" / lesson / f"{lesson}.ipynb", inbox / "solution.ipynb")
    shutil.copyfile(student, inbox / "blank.ipynb")

    report = grade(lesson, inbox, root=course, jobs=2, progress=False,
                   limits=Limits(cell_timeout=600, submission_timeout=900))
    rows = report.by_student()
    sol, blank = rows["solution"], rows["blank"]
    assert sol.status == "graded", f"{sol.status}: {sol.reason}"
    assert blank.status == "graded", f"{blank.status}: {blank.reason}"
    # full marks on everything the autograder scores (written answers await the formgrader)
    from nbgrader.api import Gradebook

    cd = load_course(course)
    with Gradebook(cd.db_url, cd.course_id) as gb:
        manual = sum(g.max_score for g in gb.find_submission_notebook(lesson, lesson, "solution").grades
                     if g.needs_manual_grade)
    assert sol.total == pytest.approx(sol.max - manual), f"solution scored {sol.total}/{sol.max}: {sol.reason}"
    assert sol.max > 0
    assert blank.total == 0, f"untouched notebook scored {blank.total}: {blank.reason}"
