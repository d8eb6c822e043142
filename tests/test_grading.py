"""Robustness of the grading command (tools/grade.py) against hostile submissions.

One grading run (module fixture) grades every fixture of
``tools.autograder.fixtures.bad_submissions`` together, built from the student
notebook that nbgrader generates for the fixture lesson (plain Python, so its
kernels start fast).  ``COURSE_GRADING_LESSON=02_attention_scoring`` builds them
from a real lesson instead (slower).  Small limits keep it short.
"""

from __future__ import annotations

import html
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.autograder import fixtures as fx  # noqa: E402
from tools.autograder.core import Limits, grade, load_course  # noqa: E402
from tools.autograder.feedback import HideHiddenTests, hidden_lines, strip_hidden  # noqa: E402
from tools.grade import main  # noqa: E402

LESSON = os.environ.get("COURSE_GRADING_LESSON", fx.FIXTURE)
LIMITS = Limits(cell_timeout=5, submission_timeout=30, memory=1024**3 if LESSON == fx.FIXTURE else 3 * 1024**3)

EXPECTED = {
    "correct": "graded",
    "blank": "graded",
    "partial": "graded",
    "exception": "error",
    "infinite_loop": "timeout",
    "ignores_interrupt": "timeout",
    "memory_hog": "memory",
    "huge_output": "output_limit",
    "sys_exit": "exit",
    "os_exit": "kernel_died",
    "deleted_tests": "tampered",
    "edited_tests": "tampered",
    "changed_metadata": "tampered",
    "other_lesson": "wrong_assignment",
    "other_kernel": "kernel_changed",
    "not_json": "invalid",
    "empty": "invalid",
    "not_a_notebook": "invalid",
    "slow": "killed",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grading")
    lessons = {LESSON: ROOT / "solutions" / LESSON} if LESSON != fx.FIXTURE else {}
    root = fx.fixture_course(tmp / "course", lessons=lessons)
    student = fx.release(root, LESSON)
    solution = nbformat.read(root / "solutions" / LESSON / f"{LESSON}.ipynb", as_version=4)
    inbox = tmp / "inbox"
    inbox.mkdir()
    files = fx.bad_submissions(student, solution, slow_seconds=LIMITS.submission_timeout + 6)
    for name, data in files.items():
        if name in ("correct", "partial"):  # nbgrader's layout, one of them under another file name
            folder = inbox / name / LESSON
            folder.mkdir(parents=True)
            (folder / (f"{LESSON}.ipynb" if name == "correct" else "my_copy.ipynb")).write_bytes(data)
        else:
            (inbox / f"{name}.ipynb").write_bytes(data)
    report = grade(LESSON, inbox, root=root, jobs=2, limits=LIMITS, progress=False)
    return root, report


@pytest.mark.slow
def test_every_fixture_gets_its_status(run):
    _, report = run
    got = {r.student: r.status for r in report.rows}
    assert got == EXPECTED, "\n".join(f"{r.student}: {r.status}: {r.reason}" for r in report.rows)
    for r in report.rows:
        if r.status != "graded":
            assert r.reason, f"{r.student} has status {r.status} but no reason"


@pytest.mark.slow
def test_scores(run):
    _, report = run
    rows = report.by_student()
    full = rows["correct"].total
    assert 0 < full <= rows["correct"].max
    assert rows["blank"].total == 0
    assert 0 < rows["partial"].total < full
    for name in ("sys_exit", "other_kernel", "huge_output"):
        assert rows[name].total == full, name
    for name in ("exception", "infinite_loop", "memory_hog", "os_exit"):
        assert rows[name].total < full, name
    assert rows["os_exit"].total > 0  # points earned before the kernel died are kept
    for name in ("deleted_tests", "edited_tests", "changed_metadata", "other_lesson", "not_json", "empty",
                 "not_a_notebook", "slow", "ignores_interrupt"):
        assert rows[name].total == 0, name  # tampering gains nothing; what did not run scores zero
    assert len({r.max for r in report.rows}) == 1  # relabelled points do not change the maximum
    # per-exercise columns add up
    for r in report.rows:
        assert sum(r.scores.values()) == pytest.approx(r.total)
    assert set(report.exercises) >= {"ex1", "ex2"}


@pytest.mark.slow
def test_grade_table(run):
    _, report = run
    text = report.csv_path.read_text()
    header = text.splitlines()[0].split(",")
    assert header[:2] == ["student", "assignment"] and header[-5:] == ["total", "max", "manual_pending", "status", "reason"]
    assert "ex1" in header and len(text.splitlines()) == len(EXPECTED) + 1


@pytest.mark.slow
def test_gradebook_is_consistent(run):
    from nbgrader.api import Gradebook

    root, report = run
    course = load_course(root)
    with Gradebook(course.db_url, course.course_id) as gb:
        assignment = gb.find_assignment(LESSON)
        assert {s.student_id for s in assignment.submissions} == {r.student for r in report.rows}
        for r in report.rows:
            sub = gb.find_submission_notebook(LESSON, LESSON, r.student)
            assert sum(float(g.score or 0) for g in sub.grades) == pytest.approx(r.total), r.student
            assert sum(float(g.max_score) for g in sub.grades) == pytest.approx(r.max)
            assert sub.flagged == (r.status not in ("graded", "kernel_changed")), r.student
            if r.status in ("invalid", "wrong_assignment", "killed"):
                assert all(g.auto_score == 0 and not g.needs_manual_grade for g in sub.grades)
        # the written answer awaits the formgrader where it was answered
        answered = gb.find_submission_notebook(LESSON, LESSON, "correct")
        assert any(g.needs_manual_grade for g in answered.grades) or LESSON != fx.FIXTURE


@pytest.mark.slow
def test_feedback_hides_hidden_tests(run):
    root, report = run
    solution = nbformat.read(root / "solutions" / LESSON / f"{LESSON}.ipynb", as_version=4)
    secret: set[str] = set()
    for cell in solution.cells:
        secret |= hidden_lines(cell.source, min_length=12)
    assert secret
    for r in report.rows:
        page = report.feedback_dir / r.student / LESSON / f"{LESSON}.html"
        assert page.is_file(), r.student
        text = html.unescape(re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8")))
        assert "BEGIN HIDDEN TESTS" not in text, r.student
        assert fx.SECRET not in text, r.student
        leaked = [s for s in secret if s in text]
        assert not leaked, f"{r.student}: {leaked[:3]}"
        assert f"{r.total:g}" in text or r.status != "graded"
        if r.status not in ("invalid", "wrong_assignment", "killed"):
            assert "hidden tests: not shown" in text
    if LESSON == fx.FIXTURE:
        correct = (report.feedback_dir / "correct" / LESSON / f"{LESSON}.html").read_text(encoding="utf-8")
        assert "add passes the hidden cases" in html.unescape(correct)  # pass output kept
        partial = (report.feedback_dir / "partial" / LESSON / f"{LESSON}.html").read_text(encoding="utf-8")
        assert "NotImplementedError" in html.unescape(partial)  # fail output kept


@pytest.mark.slow
def test_nothing_escapes_to_the_course(run):
    root, _ = run
    course = load_course(root)
    # student files written in the working directory are not copied out
    for folder in (course.autograded, course.feedback):
        assert not list(folder.rglob("kernel.pids"))
    assert not (root / "notebooks").exists()  # the release went to scratch


def test_strip_hidden_keeps_the_rest():
    src = "# visible\n### BEGIN HIDDEN TESTS\nassert secret_fn(3) == 9\n### END HIDDEN TESTS\nprint('after')"
    out = strip_hidden(src)
    assert "secret_fn" not in out and "# visible" in out and "print('after')" in out
    assert "hidden tests" in out


def test_feedback_preprocessor_cuts_tracebacks():
    cell = nbformat.v4.new_code_cell(
        "### BEGIN HIDDEN TESTS\nassert secret_function(3) == 9, 'secret_function(3) should be 9'\n### END HIDDEN TESTS")
    cell.outputs = [nbformat.v4.new_output("error", ename="AssertionError", evalue="secret_function(3) should be 9",
                                           traceback=["Cell In[3], line 1", "----> 1 assert secret_function(3) == 9, ...",
                                                      "AssertionError: secret_function(3) should be 9"])]
    other = nbformat.v4.new_code_cell("f()")
    other.outputs = [nbformat.v4.new_output("stream", name="stdout",
                                            text="ok\nassert secret_function(3) == 9, 'secret_function(3) should be 9'\n")]
    nb = nbformat.v4.new_notebook(cells=[cell, other])
    nb, _ = HideHiddenTests().preprocess(nb, {})
    assert "secret_function(3) ==" not in nb.cells[0].source
    assert nb.cells[0].outputs[0].traceback == ["\x1b[0;31mAssertionError\x1b[0m: secret_function(3) should be 9"]
    assert nb.cells[1].outputs[0].text.strip() == "ok"


def test_cli_exit_codes(tmp_path, capsys):
    root = fx.fixture_course(tmp_path / "course")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    assert main(["no_such_lesson", str(inbox), "--root", str(root), "--no-progress"]) == 2
    assert "unknown assignment" in capsys.readouterr().err
    assert main([fx.FIXTURE, str(tmp_path / "missing"), "--root", str(root), "--no-progress"]) == 2
    assert "no such folder" in capsys.readouterr().err
    (root / "grading").mkdir()
    (root / "grading" / "gradebook.db").write_bytes(b"this is not a database" * 100)
    assert main([fx.FIXTURE, str(inbox), "--root", str(root), "--no-progress"]) == 2
    assert "gradebook" in capsys.readouterr().err


def test_empty_folder_grades_nothing(tmp_path, capsys):
    root = fx.fixture_course(tmp_path / "course")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    assert main([fx.FIXTURE, str(inbox), "--root", str(root), "--no-progress"]) == 0
    assert "graded 0 submissions" in capsys.readouterr().out


@pytest.mark.slow
def test_feedback_only_regenerates_without_hidden_tests(run):
    root, report = run
    page = report.feedback_dir / "correct" / LESSON / f"{LESSON}.html"
    page.unlink()
    assert main([LESSON, "--feedback-only", "--root", str(root)]) == 0
    text = html.unescape(page.read_text(encoding="utf-8"))
    assert "BEGIN HIDDEN TESTS" not in text and fx.SECRET not in text
    assert "hidden tests: not shown" in text


@pytest.mark.slow
def test_plain_nbgrader_feedback_hides_hidden_tests_too(run):
    """The formgrader's "Generate Feedback" runs this command with nbgrader_config.py."""
    import subprocess

    root, report = run
    page = report.feedback_dir / "correct" / LESSON / f"{LESSON}.html"
    page.unlink()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "nbgrader", "generate_feedback", LESSON, "--student=correct", "--force"]
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    text = html.unescape(page.read_text(encoding="utf-8"))
    assert "BEGIN HIDDEN TESTS" not in text and fx.SECRET not in text
    assert "hidden tests: not shown" in text


def _executed(*cells):
    """A notebook of executed code cells: (nbgrader metadata or None, error name or None)."""
    nb = nbformat.v4.new_notebook()
    for i, (md, ename) in enumerate(cells):
        cell = nbformat.v4.new_code_cell(f"cell_{i}()")
        if md:
            cell.metadata["nbgrader"] = md
        if ename:
            cell.outputs = [nbformat.v4.new_output("error", ename=ename, evalue="boom", traceback=[])]
        nb.cells.append(cell)
    return nb


def test_cells_failing_after_an_unanswered_exercise_are_not_student_errors():
    from tools.autograder.worker import analyse

    solution = {"grade_id": "ex1", "solution": True, "grade": False}
    # a blank exercise, then a lesson cell that needed it (e.g. an empty results table)
    notes = analyse(_executed((solution, "NotImplementedError"), (None, "ValueError")))
    assert [s for s, _ in notes] == ["graded"]
    assert "not answered: ex1" in notes[0][1] and "cell 1: ValueError" in notes[0][1]
    # the same exception with every exercise answered is the student's error
    notes = analyse(_executed((solution, None), (None, "ValueError")))
    assert notes == [("error", "exceptions in student code: cell 1: ValueError")]
    # an exception before the unanswered exercise stays an error
    notes = analyse(_executed((None, "KeyError"), (solution, "NotImplementedError")))
    assert ("error", "exceptions in student code: cell 0: KeyError") in notes
