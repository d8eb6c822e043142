"""Robustness of the grading command (tools/grade.py) against hostile submissions.

One grading run (module fixture) grades every fixture of
``tools.autograder.fixtures.bad_submissions`` together, built from the student
notebook that nbgrader generates for the fixture lesson (plain Python, so its
kernels start fast).  ``COURSE_GRADING_LESSON=02_attention_scoring`` builds them
from a real lesson instead (slower).  Small limits keep it short.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import csv
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import grading_fixtures as fx  # noqa: E402  (tests/grading_fixtures.py)

from tools.autograder import wire  # noqa: E402
from tools.autograder.core import Limits, grade, load_course  # noqa: E402
from tools.autograder.feedback import (  # noqa: E402
    HIDDEN_FAILED,
    HIDDEN_PASSED,
    HideHiddenTests,
    hidden_lines,
    strip_hidden,
)
from tools.autograder.sandbox import detect  # noqa: E402
from tools.grade import main  # noqa: E402

SANDBOX = detect().sandboxed
needs_sandbox = pytest.mark.skipif(not SANDBOX, reason="bubblewrap is not installed (apt-get install bubblewrap)")

LESSON = os.environ.get("COURSE_GRADING_LESSON", fx.FIXTURE)
LIMITS = Limits(cell_timeout=5, submission_timeout=30, memory=512 * 1024**2 if LESSON == fx.FIXTURE else 3 * 1024**3)

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
    "dup": "invalid",  # dup.ipynb and dup!.ipynb: one student id, two submissions
}
# attacks on the grader (fixtures.attack_submissions), graded when bubblewrap is there
ATTACKS = {"read_hidden_tests": "graded", "write_outside": "graded", "kill_others": "graded",
           "orphan_process": "graded", "network": "graded", "html_output": "graded", "html_markdown": "graded",
           "big_attachment": "graded", "stash_hidden_tests": "graded", "fake_pass": "graded",
           # attacks on the tests from the kernel (fixtures.kernel_attacks): the tests run in the grader process
           "fool_rebind_allclose": "graded", "fool_rebind_code": "graded", "fool_exception_handler": "graded",
           "fool_ast_transformer": "graded", "fool_input_transformer": "graded", "fool_from_globals": "graded",
           "read_tests": "graded",
           # issue #29: floods of the trusted process (item 4), an honest answer that prints a lot (item 7)
           "flood": "graded", "chatty": "graded", "leak_inputs": "error"}
FOOLS = [k for k in ATTACKS if k.startswith("fool_")]
if SANDBOX:
    EXPECTED.update(ATTACKS)


def _scratch_folders() -> set[Path]:
    """The grading runs' scratch folders of the lesson now in the temporary folder (others' runs included)."""
    return set(Path(tempfile.gettempdir()).glob(f"grade-{LESSON}-*"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    before = _scratch_folders()
    tmp = tmp_path_factory.mktemp("grading")
    lessons = {LESSON: ROOT / "solutions" / LESSON} if LESSON != fx.FIXTURE else {}
    root = fx.fixture_course(tmp / "course", lessons=lessons)
    student = fx.release(root, LESSON)
    solution = nbformat.read(root / "solutions" / LESSON / f"{LESSON}.ipynb", as_version=4)
    inbox = tmp / "inbox"
    inbox.mkdir()
    files = fx.bad_submissions(student, solution, slow_seconds=LIMITS.submission_timeout + 6)
    if SANDBOX:
        files.update(fx.attack_submissions(student, solution))
    files["dup"] = files["dup!"] = files["correct"]
    for name, data in files.items():
        if name in ("correct", "partial"):  # nbgrader's layout, one of them under another file name
            folder = inbox / name / LESSON
            folder.mkdir(parents=True)
            (folder / (f"{LESSON}.ipynb" if name == "correct" else "my_copy.ipynb")).write_bytes(data)
        else:
            (inbox / f"{name}.ipynb").write_bytes(data)
    report = grade(LESSON, inbox, root=root, jobs=2, limits=LIMITS, progress=False, weak_isolation=not SANDBOX)
    report.scratch_before = before  # what the run must not leave behind is the rest
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
        assert HIDDEN_PASSED.strip() in html.unescape(correct)  # a fixed line for the hidden tests
        assert "add passes the hidden cases" not in html.unescape(correct)  # never what ran there
        assert "add works on small numbers" in html.unescape(correct)  # the visible checks' output stays
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


def test_feedback_preprocessor_shows_a_fixed_line_for_hidden_tests():
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
    assert nb.cells[0].outputs == [nbformat.v4.new_output("stream", name="stdout", text=HIDDEN_FAILED)]
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


# ----------------------------------------------------------------------------
# attacks on the grader (issue #10)
# ----------------------------------------------------------------------------
def _outputs(report, student: str) -> str:
    """The outputs of a submission's autograded notebook (what its code printed), as JSON text."""
    ag = report.feedback_dir.parent / "autograded" / student / LESSON / f"{LESSON}.ipynb"
    nb = nbformat.read(ag, as_version=4)
    return "\n".join(json.dumps(c.get("outputs", [])) for c in nb.cells if c.cell_type == "code")


def _published(report, student: str) -> str:
    """Everything a student sees of a submission: the feedback page, and the autograded outputs."""
    page = (report.feedback_dir / student / LESSON / f"{LESSON}.html").read_text(encoding="utf-8")
    return page + "\n" + _outputs(report, student)


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.bad: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "iframe", "object", "embed", "link", "svg"):
            self.bad.append(tag)
        self.bad += [f"{tag} {name}" for name, value in attrs
                     if name.startswith("on") or "javascript:" in (value or "").lower()]


def _unsafe_html(page: str) -> list[str]:
    parser = _Tags()
    parser.feed(page)
    return parser.bad


def _leaks(text: str) -> list[str]:
    """The hidden-test marker in plain text, ROT13 or any base64 run in ``text``."""
    found = []
    plain = html.unescape(text)
    if fx.SECRET in plain or "BEGIN HIDDEN TESTS" in plain:
        found.append("plain")
    if codecs.encode(fx.SECRET, "rot13") in plain:
        found.append("rot13")
    for run in re.findall(r"[A-Za-z0-9+/=]{40,}", plain):
        try:
            decoded = base64.b64decode(run + "=" * (-len(run) % 4), validate=False)
        except ValueError:
            continue
        if fx.SECRET.encode() in decoded or b"HIDDEN TESTS" in decoded:
            found.append("base64")
    return found


HONEST_ATTACKS = [k for k in ATTACKS if k not in ("fake_pass", "flood", *FOOLS)]
HIDDEN_INPUTS = ("(10, -3)", "(2.5, 0.5)")  # what the fixture lesson's hidden tests pass to add()  # the correct answers plus an attack


@pytest.mark.slow
@needs_sandbox
def test_attacks_earn_nothing_and_harm_no_one(run):
    _, report = run
    rows = report.by_student()
    full = rows["correct"].total
    for name in HONEST_ATTACKS:  # each is the correct notebook plus one hostile cell
        assert rows[name].total == full, f"{name}: {rows[name].total} ({rows[name].reason})"
    assert rows["correct"].status == "graded" and rows["blank"].total == 0
    assert "bubblewrap" in report.isolation


@pytest.mark.slow
@needs_sandbox
@pytest.mark.parametrize("name", HONEST_ATTACKS)
def test_no_hidden_test_text_in_any_encoding(run, name):
    _, report = run
    assert not _leaks(_published(report, name)), name


@pytest.mark.slow
@needs_sandbox
def test_sandbox_hides_the_course_and_the_network(run):
    _, report = run
    seen = _outputs(report, "read_hidden_tests")
    assert "found 0" in seen  # nothing of solutions/, grading/, the scratch gradebook or other jobs
    net = _outputs(report, "network")
    assert "CONNECTED" not in net and "no connection to" in net


@pytest.mark.slow
@needs_sandbox
def test_nothing_written_or_left_running_outside(run):
    root, report = run
    assert "WROTE" not in _outputs(report, "write_outside")
    assert "could not write" in _outputs(report, "write_outside")
    if os.geteuid() == 0:  # (#29.4) the socket folder takes no file from the kernel once its sockets exist
        assert "could not write in the socket folder" in _outputs(report, "write_outside")
    for folder in (ROOT, root, Path(sys.prefix) / "lib"):
        assert not (folder / "sitecustomize.py").exists(), folder
    time.sleep(1)
    left = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if fx.ORPHAN_MARK.encode() in (proc / "cmdline").read_bytes():
                left.append(proc.name)
    assert not left, f"processes left behind: {left}"
    assert not _scratch_folders() - report.scratch_before, "scratch left behind"


@pytest.mark.slow
@needs_sandbox
def test_feedback_and_formgrader_views_are_sanitized(run):
    _, report = run
    for name in ("html_output", "html_markdown", "big_attachment"):
        page = (report.feedback_dir / name / LESSON / f"{LESSON}.html").read_text(encoding="utf-8")
        assert not _unsafe_html(page), f"{name}: {_unsafe_html(page)[:5]}"
        assert len(page) < 1_000_000, f"{name}: feedback of {len(page)} characters"
        ag = nbformat.read(report.feedback_dir.parent / "autograded" / name / LESSON / f"{LESSON}.ipynb",
                           as_version=4)
        for cell in ag.cells:
            assert "attachments" not in cell, name
            for out in cell.get("outputs", []):
                assert set(out.get("data", {})) <= {"text/plain", "image/png", "image/jpeg"}, name
            if cell.cell_type == "markdown":
                assert not _unsafe_html(cell.source), cell.source[:200]
    assert (report.feedback_dir / "html_output" / LESSON / f"{LESSON}.html").stat().st_size < 200_000


@pytest.mark.slow
@needs_sandbox
def test_kernel_hooks_cannot_read_the_hidden_tests(run):
    _, report = run
    assert not _leaks(_published(report, "stash_hidden_tests"))
    assert report.by_student()["stash_hidden_tests"].total == report.by_student()["correct"].total


@pytest.mark.slow
@needs_sandbox
def test_kernel_hooks_cannot_fake_a_pass(run):
    _, report = run
    assert report.by_student()["fake_pass"].total == 0  # an untouched notebook plus rebound checks


def _test_cell_outputs(report, student: str) -> str:
    """The outputs of the graded test cells of a submission's autograded notebook, as JSON text."""
    ag = report.feedback_dir.parent / "autograded" / student / LESSON / f"{LESSON}.ipynb"
    nb = nbformat.read(ag, as_version=4)
    grade_ids = {c.metadata.nbgrader["grade_id"] for c in nbformat.read(
        report.feedback_dir.parent.parent / "solutions" / LESSON / f"{LESSON}.ipynb", as_version=4).cells
        if c.get("metadata", {}).get("nbgrader", {}).get("grade")}
    return "\n".join(json.dumps(c.get("outputs", [])) for c in nb.cells
                     if c.cell_type == "code" and c.get("metadata", {}).get("nbgrader", {}).get("grade_id") in grade_ids)


@pytest.mark.slow
@needs_sandbox
@pytest.mark.parametrize("name", FOOLS)
def test_kernel_attacks_on_the_tests_earn_nothing(run, name):
    """Wrong answers plus a rebound check, exception handler, AST/input transformer or stolen expected values."""
    _, report = run
    row = report.by_student()[name]
    assert row.total == 0, f"{name}: {row.total} ({row.reason})"
    assert not _leaks(_published(report, name)), name


@pytest.mark.slow
@needs_sandbox
def test_reading_the_tests_from_the_kernel_finds_nothing(run):
    """Correct answers plus a pre_run_cell hook, In/_ih and the callers' frames, printed encoded."""
    _, report = run
    rows = report.by_student()
    assert rows["read_tests"].total == rows["correct"].total
    assert not _leaks(_published(report, "read_tests"))
    seen = _test_cell_outputs(report, "read_tests")
    assert seen and fx.STUDENT_MARK not in seen  # what the student's code printed during the tests is dropped
    assert "Graded in the grader process" not in _test_cell_outputs(report, "correct")  # no errors there


@pytest.mark.slow
def test_colliding_ids_are_invalid_with_a_reason(run):
    _, report = run
    row = report.by_student()["dup"]
    assert row.status == "invalid" and "dup!.ipynb" in row.reason and "dup.ipynb" in row.reason
    assert row.total == 0


@pytest.mark.slow
def test_similarity_report_flags_copies(run):
    _, report = run
    assert report.similarity and report.similarity.is_file() and report.similarity.with_suffix(".html").is_file()
    with open(report.similarity, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and set(rows[0]) == {"exercise", "student", "similar_to", "share_of_student_code",
                                     "overlapping_tokens"}
    # the correct answers are copies of each other
    pairs = {(r["student"], r["similar_to"]) for r in rows}
    assert ("correct", "partial") in pairs or ("correct", "sys_exit") in pairs
    assert "<script" not in report.similarity.with_suffix(".html").read_text().lower()


def test_similarity_against_lib(tmp_path):
    from tools.autograder.integrity import report as similarity

    release = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()",
        metadata={"nbgrader": {"grade_id": "ex1_f", "solution": True, "grade": False}})])
    copied = (ROOT / "lib" / "checks.py").read_text().split("def check_close")[1].split("\ndef ")[0]
    answers = {"copier": {"ex1_f": "def check_close" + copied}, "own": {"ex1_f": "def f(x):\n    return x + 1\n"}}
    n = similarity(answers, release, ROOT / "lib", tmp_path / "s.csv", tmp_path / "s.html")
    rows = list(csv.DictReader(open(tmp_path / "s.csv", newline="")))
    assert n == len(rows) and any(r["student"] == "copier" and r["similar_to"] == "lib/checks.py" for r in rows)
    assert not any(r["student"] == "own" for r in rows)


@pytest.mark.filterwarnings("ignore:.*not in session")
def test_manual_grades_changed_during_a_run_are_restored(tmp_path):
    from nbgrader.api import Gradebook

    from tools.autograder.gradebook import ManualGuard, prepare_assignment

    root = fx.fixture_course(tmp_path / "course")
    course = load_course(root)
    course.db_path.parent.mkdir(parents=True)
    prepare_assignment(course, fx.FIXTURE, tmp_path / "scratch")
    with Gradebook(course.db_url, course.course_id) as gb:
        for student in ("honest", "cheat"):
            gb.add_student(student)
            gb.add_submission(fx.FIXTURE, student)
        gb.find_grade("ex3_explain", fx.FIXTURE, fx.FIXTURE, "honest").manual_score = 2
        gb.db.commit()
    guard = ManualGuard(course, fx.FIXTURE)
    with Gradebook(course.db_url, course.course_id) as gb:  # what a hostile process would do
        gb.find_grade("ex3_explain", fx.FIXTURE, fx.FIXTURE, "honest").manual_score = 0
        gb.find_grade("ex1_add_hidden", fx.FIXTURE, fx.FIXTURE, "cheat").manual_score = 3
        gb.db.commit()
    fixed = guard.restore()
    assert len(fixed) == 2 and any("honest/ex3_explain" in f for f in fixed)
    with Gradebook(course.db_url, course.course_id) as gb:
        assert gb.find_grade("ex3_explain", fx.FIXTURE, fx.FIXTURE, "honest").manual_score == 2
        assert gb.find_grade("ex1_add_hidden", fx.FIXTURE, fx.FIXTURE, "cheat").manual_score is None
    assert guard.restore() == []


def test_refuses_without_a_sandbox_unless_accepted(tmp_path, monkeypatch, capsys):
    from tools.autograder import core
    from tools.autograder.sandbox import Isolation

    monkeypatch.setattr(core, "detect", lambda: Isolation(False, "none", why="bwrap not found"))
    root = fx.fixture_course(tmp_path / "course")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    assert main([fx.FIXTURE, str(inbox), "--root", str(root), "--no-progress"]) == 2
    assert "--weak-isolation" in capsys.readouterr().err
    assert main([fx.FIXTURE, str(inbox), "--root", str(root), "--no-progress", "--weak-isolation"]) == 0
    assert "WEAK ISOLATION" in capsys.readouterr().out


@pytest.mark.slow
@needs_sandbox
def test_a_killed_parent_leaves_nothing_and_a_rerun_grades(tmp_path):
    others = _scratch_folders()  # other grading runs' (this test kills its own run's parent only)
    root = fx.fixture_course(tmp_path / "course")
    inbox = fx.inbox(root, tmp_path / "inbox", {"looper": "infinite_loop", "correct": "correct"})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "tools.grade", fx.FIXTURE, str(inbox), "--root", str(root), "--no-progress",
           "--cell-timeout", "60", "--jobs", "1"]
    parent = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    scratch = []
    while time.monotonic() < deadline and not any(p.stat().st_size for s in scratch for p in s.glob("jobs/*/kernel.pids")):
        time.sleep(0.5)
        scratch = [s for s in Path(tempfile.gettempdir()).glob(f"grade-{fx.FIXTURE}-*") if s not in others]
    assert scratch, "the run never started a kernel"
    time.sleep(2)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(s.exists() for s in scratch):
        time.sleep(0.5)
    assert not any(s.exists() for s in scratch), "scratch (with the hidden tests) left behind"
    left = [p.name for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, str(scratch[0]))]
    assert not left, f"processes of the killed run still alive: {left}"
    report = grade(fx.FIXTURE, inbox, root=root, jobs=2, progress=False, limits=Limits(cell_timeout=5))
    assert report.by_student()["correct"].status == "graded"
    assert report.by_student()["looper"].status == "timeout"


def _cmdline_has(proc: Path, text: str) -> bool:
    try:
        return text.encode() in (proc / "cmdline").read_bytes()
    except OSError:
        return False


# ----------------------------------------------------------------------------
# issue #29: a course anywhere, bounded replies, handles decided by the grader
# ----------------------------------------------------------------------------
def _mount_targets(argv: list[str]) -> list[tuple[str, str]]:
    """(option, target) of every mount in a bwrap command line, in order."""
    out, i = [], 0
    two = {"--ro-bind", "--bind"}
    one = {"--tmpfs", "--proc", "--dev"}
    while i < len(argv) and argv[i] != "--":
        if argv[i] in two:
            out.append((argv[i], argv[i + 2]))
            i += 3
        elif argv[i] in one:
            out.append((argv[i], argv[i + 1]))
            i += 2
        else:
            i += 1
    return out


@pytest.mark.parametrize("where", ["/tmp/clone", "/home/me/course", "/tmp"])
def test_no_mount_hides_another_wherever_the_course_lives(where):
    """Attack (#29.1): the course, its environment and the data under /tmp, the sandbox's private /tmp."""
    from tools.autograder.sandbox_kernel import bwrap_argv

    spec = {"bwrap": "bwrap", "mode": "root", "setpriv": "setpriv", "uid": 61000, "scratch_size": 1 << 20,
            "ro": [f"{where}/lib", f"{where}/.venv", f"{where}/data", f"{where}/tools/autograder/k.py"],
            "tmpfs": ["/home/student", "/tmp"], "ipc_dir": "/tmp/grade-x/jobs/0000/ipc", "env": {},
            "python": "python", "kernel_script": "k.py", "memory": 1, "cpu": 1, "fsize": 1}
    mounts = _mount_targets(bwrap_argv(spec, "/tmp/grade-x/jobs/0000/course/autograded/s/l", "c.json"))
    targets = [t for _, t in mounts]
    assert set(spec["ro"]) | {"/tmp", spec["ipc_dir"]} <= set(targets)
    for i, (_, t) in enumerate(mounts):
        later = [u for u in targets[i + 1:] if t == u or t.startswith(u.rstrip("/") + "/")]
        assert not later, f"{t} is mounted before {later}, which hides it"


@pytest.mark.slow
@needs_sandbox
def test_a_course_under_tmp_grades(tmp_path):
    """Attack (#29.1): the course, lib and the grader all live in a folder under /tmp (a fresh clone)."""
    clone = Path(tempfile.mkdtemp(dir="/tmp", prefix="clone-"))
    try:
        for part in ("lib", "tools"):
            shutil.copytree(ROOT / part, clone / part, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copyfile(ROOT / "nbgrader_config.py", clone / "nbgrader_config.py")
        root = fx.fixture_course(clone / "course")
        inbox = fx.inbox(root, clone / "inbox", {"correct": "correct", "blank": "blank"})
        env = {**os.environ, "PYTHONPATH": str(clone)}
        done = subprocess.run([sys.executable, "-m", "tools.grade", fx.FIXTURE, str(inbox), "--root", str(root),
                               "--no-progress", "--no-similarity", "--cell-timeout", "20"],
                              cwd=clone, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        rows = {r["student"]: r for r in csv.DictReader(open(root / "grading" / f"{fx.FIXTURE}_grades.csv"))}
        assert rows["correct"]["status"] == "graded" and float(rows["correct"]["total"]) == 8, rows["correct"]
        assert rows["blank"]["status"] == "graded" and float(rows["blank"]["total"]) == 0, rows["blank"]
    finally:
        shutil.rmtree(clone, ignore_errors=True)


@pytest.mark.slow
@needs_sandbox
def test_grader_failures_exit_non_zero_with_the_reason(tmp_path, monkeypatch, capsys):
    """Attack (#29.1): every kernel dies before replying; `make grade` must not say all is well."""
    from tools.autograder import core

    real_plan = core.plan

    def broken(*args, **kwargs):
        path, ipc = real_plan(*args, **kwargs)
        spec = json.loads(path.read_text())
        spec["python"] = "/nonexistent/python3"
        path.write_text(json.dumps(spec))
        return path, ipc

    monkeypatch.setattr(core, "plan", broken)
    root = fx.fixture_course(tmp_path / "course")
    inbox = fx.inbox(root, tmp_path / "inbox", {"alice": "correct"})
    code = main([fx.FIXTURE, str(inbox), "--root", str(root), "--no-progress", "--no-similarity",
                 "--cell-timeout", "10", "--timeout", "60"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "alice" in err and "grader_error" in err and "the grader's own" in err


_LIAR = """
import torch
from torch import nn
import lib.positional as pos


class _ClaimsParameter(type):  # its instances' class reports nn.Parameter's method resolution order
    @property
    def __mro__(cls):
        return (nn.Parameter, torch.Tensor, object)


class _Liar(metaclass=_ClaimsParameter):
    pass


liar = _Liar()


class _ClaimsReference(type):  # a class that reports lib's reference in its method resolution order
    @property
    def __mro__(cls):
        return (cls, pos.LearnedPositionalEmbedding, nn.Module, object)


class Encoding(metaclass=_ClaimsReference):
    def __init__(self, max_len, d_model):
        self.table = torch.zeros(max_len, d_model)
"""


def test_a_handle_that_claims_to_be_a_tensor_stays_a_handle():
    """Attack (#29.2): a student object whose __class__ is nn.Parameter; torch must never read a proxy as a tensor."""
    script = (f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]\n"
              "import torch\nfrom grading_fixtures import agent_session as _session, SOL\n"
              f"s, _ = _session({_LIAR!r}, [('liar = None', 'ex1', SOL)])\n"
              "s.catch_up(1)\nliar = s.ns['liar']\n"
              "print('TENSOR' if isinstance(liar, torch.Tensor) else 'OPAQUE', flush=True)\n"
              "try:\n    torch.add(liar, 1)\nexcept TypeError as e:\n    print('REFUSED', e)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, f"the grader process died (code {done.returncode}): {done.stderr[-2000:]}"
    assert "OPAQUE" in done.stdout and "REFUSED" in done.stdout, done.stdout


def test_class_checks_come_from_the_trusted_declaration():
    """Attack (#29.2): a metaclass that lies about __mro__ (lib's reference in it) to pass or fail class checks."""
    import torch

    import lib.positional as pos

    trusted = [("import torch\nfrom torch import nn\nimport lib.positional as pos", None, {}),
               ("class Encoding(nn.Module):\n    pass", "ex1", {"solution": True, "grade": False, "locked": False})]
    s, _ = fx.agent_session(_LIAR, trusted)
    s.catch_up(2)
    cls = s.ns["Encoding"]
    assert not issubclass(cls, pos.LearnedPositionalEmbedding)  # what the kernel reports is not believed
    assert issubclass(cls, torch.nn.Module)  # what the lesson declares
    enc = cls(4, 3)
    assert isinstance(enc, torch.nn.Module) and not isinstance(enc, pos.LearnedPositionalEmbedding)
    assert not isinstance(enc, torch.Tensor)


def test_the_grader_imports_nothing_the_kernel_names():
    """Attack (#29.8): handles naming installed torch* / lib.* modules the grader never imported."""
    script = (f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]\n"
              "from grading_fixtures import agent_session as _session, SOL\n"
              "student = 'import torchvision.ops, torch.utils.benchmark\\nf = torchvision.ops.nms\\n"
              "g = torch.utils.benchmark.Timer\\n'\n"
              "s, ns = _session('import torch\\n' + student, [('f = g = None', 'ex1', SOL)])\n"
              "for name in [m for m in sys.modules if m.startswith(('torchvision', 'torch.utils.benchmark'))]:\n"
              "    del sys.modules[name]  # the kernel imported them; the grader never did\n"
              "s.catch_up(1)\n"
              "from tools.autograder.grader import Remote\n"
              "for name in ('f', 'g'):\n"
              "    h = s.ns[name]\n"
              "    h == object(); getattr(h, '__wrapped__', None); isinstance(h, type)\n"
              "print('IMPORTED', sorted(m for m in ('torchvision', 'torch.utils.benchmark') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "IMPORTED []" in done.stdout, done.stdout


@pytest.mark.slow
@needs_sandbox
def test_a_flood_of_the_trusted_process_is_bounded(run):
    """Attack (#29.4): widget state in comms and in the metadata, 3 x 30 MiB fake answers per graded call."""
    _, report = run
    row = report.by_student()["flood"]
    assert row.status == "graded", f"{row.status}: {row.reason}"
    ag = report.feedback_dir.parent / "autograded" / "flood" / LESSON / f"{LESSON}.ipynb"
    assert ag.stat().st_size < 2_000_000, f"autograded notebook of {ag.stat().st_size} bytes"
    nb = nbformat.read(ag, as_version=4)
    assert set(nb.metadata) <= {"kernelspec", "language_info"}
    page = report.feedback_dir / "flood" / LESSON / f"{LESSON}.html"
    assert page.stat().st_size < 1_000_000


@pytest.mark.slow
@needs_sandbox
def test_printing_while_the_tests_call_costs_no_marks(run):
    """Attack (#29.7): an honest answer that prints 2,000 lines per call (output lags behind each reply)."""
    _, report = run
    rows = report.by_student()
    assert rows["chatty"].total == rows["correct"].total, f"{rows['chatty'].total}: {rows['chatty'].reason}"
    assert "interrupt" not in rows["chatty"].reason


def test_replies_are_bounded_before_they_are_parsed(monkeypatch):
    """Attack (#29.4): a 16 MiB JSON header of empty lists; a kernel message with 2 MiB of metadata or 100 MiB
    of content: refused or replaced before any parsing."""
    import struct

    from jupyter_client.session import Session

    from tools.autograder import execute, wire

    parsed: list[int] = []
    real_loads = json.loads
    monkeypatch.setattr(wire.json, "loads", lambda b, *a, **k: parsed.append(len(b)) or real_loads(b, *a, **k))
    header = b"[" + b"[]," * (16 * 2**20 // 3) + b"[]]"
    raw = struct.pack("<Q", len(header)) + header
    with pytest.raises(wire.WireError, match="header"):
        wire.unpack(base64.b64encode(raw).decode())
    assert not parsed or max(parsed) <= wire.MAX_HEADER

    session = Session(key=b"k")
    sizes: list[int] = []
    unpack = session.unpack
    session.unpack = lambda b: sizes.append(len(b)) or unpack(b)
    execute.bound_session(session)

    def message(content: bytes, metadata: bytes = b"{}") -> list[bytes]:
        parts = [session.pack({"msg_id": "1", "msg_type": "stream", "session": "s", "username": "u",
                               "date": "2026-01-01T00:00:00Z", "version": "5.3"}),
                 session.pack({"msg_id": "0"}), metadata, content]
        return [session.sign(parts)] + parts

    ok = session.deserialize(message(session.pack({"name": "stdout", "text": "hi"})))
    assert ok["content"]["text"] == "hi"
    big = b'{"name": "stdout", "text": "' + b"x" * (100 * 2**20) + b'"}'
    msg = session.deserialize(message(big))
    assert "x" * 100 not in msg["content"]["text"] and "limit" in msg["content"]["text"]
    msg = session.deserialize(message(session.pack({"name": "stdout", "text": "hi"}), b'{"a": "' + b"m" * 2**21 + b'"}'))
    assert msg["parent_header"] == {}  # addressed to no one: dropped
    assert max(sizes) <= execute.MAX_CONTENT


def _carries(text: str, secrets: tuple[str, ...]) -> list[str]:
    """``secrets`` found in ``text`` in plain text, ROT13 or any base64 run."""
    plain = html.unescape(text)
    found = [s for s in secrets if s in plain or codecs.encode(s, "rot13") in plain]
    for run in re.findall(r"[A-Za-z0-9+/]{16,}={0,2}", plain):
        try:
            decoded = base64.b64decode(run + "=" * (-len(run) % 4), validate=False).decode("latin-1")
        except ValueError:
            continue
        found += [s for s in secrets if s in decoded]
    return found


@pytest.mark.slow
@needs_sandbox
def test_what_the_hidden_tests_send_never_comes_back(run):
    """Attack (#29.5): record every input of the hidden tests, print it (plain, base64, ROT13, an exception)."""
    if LESSON != fx.FIXTURE:
        pytest.skip("the recorded inputs are the fixture lesson's")
    _, report = run
    rows = report.by_student()
    assert rows["leak_inputs"].total == rows["correct"].total
    assert not _carries(_published(report, "leak_inputs"), HIDDEN_INPUTS)
    assert _carries("(10, -3) " + base64.b64encode(b"x (2.5, 0.5) y").decode(), HIDDEN_INPUTS)  # the probe works


def test_the_kernel_never_gets_the_hidden_tests_configuration():
    """Attack (#29.5): forbid(...) names and lists in a hidden test; the kernel sees the call's arguments only."""
    trusted = [("import torch\nfrom lib.checks import forbid", None, {}),
               ("def f(x): ...", "ex1_f", fx.SOL),
               ("### BEGIN HIDDEN TESTS\n_banned = ('lib.attention.masked_softmax', 'torch.softmax')\n"
                "with forbid(*_banned):\n    assert f(torch.ones(2)).shape == (2,)\n### END HIDDEN TESTS",
                "ex1_f_hidden", fx.TEST)]
    s, _ = fx.agent_session("import torch\ndef f(x):\n    return x * 2\n", trusted)
    sent: list[str] = []
    send = s.send
    s.send = lambda text: sent.append(text) or send(text)
    assert s.run_test("ex1_f_hidden") == []
    headers = " ".join(json.dumps(wire.unpack(t)[0]) for t in sent)
    assert sent and "softmax" not in headers and "forbid" not in headers


def test_a_banned_function_is_refused_by_the_grader():
    """Attack (#29.6): forbid(...) decided in the grader from the answer's source (torch's softmax as a method;
    lib's reference through an import in another cell and a private alias); nothing of it reaches the kernel."""
    trusted = [("import torch\nfrom lib.checks import forbid", None, {}),
               ("def f(x): ...", "ex1_f", fx.SOL),
               ("### BEGIN HIDDEN TESTS\nwith forbid('torch.nn.functional.softmax', 'torch.Tensor.softmax', "
                "'torch.nn.functional.unfold'):\n    f(torch.ones(2))\n### END HIDDEN TESTS", "ex1_f_hidden", fx.TEST)]
    for student, banned in [("import torch\ndef f(x):\n    return x.softmax(-1)\n", "torch.Tensor.softmax"),
                            ("import torch.nn.functional as F\ndef f(x):\n    return F.softmax(x, -1)\n",
                             "torch.nn.functional.softmax")]:
        s, _ = fx.agent_session(student, trusted)
        s.answers, s.student_code = {"ex1_f": student}, [student]
        out = s.run_test("ex1_f_hidden")
        assert out and out[-1]["ename"] == "AssertionError" and banned in out[-1]["evalue"], out
    windows = "import torch\ndef f(x):\n    return x.unfold(0, 1, 1).sum(-1)\n"  # Tensor.unfold is not F.unfold
    s, _ = fx.agent_session(windows, trusted)
    s.answers, s.student_code = {"ex1_f": windows}, [windows]
    assert s.run_test("ex1_f_hidden") == []
    honest = "import torch\ndef f(x):\n    e = (x - x.max()).exp()\n    return e / e.sum()\n"
    s, _ = fx.agent_session(honest, trusted)
    s.answers = {"ex1_f": honest}
    assert s.run_test("ex1_f_hidden") == []
    # a lib reference, bound through an import in another cell and a private alias
    lib_trusted = [trusted[0], trusted[1], ("### BEGIN HIDDEN TESTS\nwith forbid('lib.attention.masked_softmax'):\n"
                                            "    f(torch.ones(2))\n### END HIDDEN TESTS", "ex1_f_hidden", fx.TEST)]
    imports = "import torch\nimport lib.attention as _la\n"
    cheat = "_m = _la.masked_softmax\ndef f(x):\n    return _m(x, mask=torch.ones_like(x, dtype=torch.bool))\n"
    s, _ = fx.agent_session(imports + cheat, lib_trusted)
    s.answers, s.student_code = {"ex1_f": cheat}, [imports, cheat]
    out = s.run_test("ex1_f_hidden")
    assert out and "lib.attention.masked_softmax" in out[-1]["evalue"]
    own = "def f(x):\n    masked_softmax = x.exp\n    return masked_softmax() / x.exp().sum()\n"  # its own name
    s, _ = fx.agent_session(imports + own, lib_trusted)
    s.answers, s.student_code = {"ex1_f": own}, [imports, own]
    assert s.run_test("ex1_f_hidden") == []


def test_the_kernels_lib_lacks_the_lessons_references(tmp_path):
    """(#29.6) lib as the sandbox mounts it while lesson 02 is graded: its references raise, the rest works."""
    from tools.autograder import withhold

    trusted = nbformat.read(ROOT / "solutions" / "02_attention_scoring" / "02_attention_scoring.ipynb", as_version=4)
    names = withhold.withheld_names(trusted)
    assert "lib.attention.scaled_dot_product_attention" in names
    assert "lib.attention.masked_softmax" not in names  # exercise 2's model answer uses it
    lib_copy, done = withhold.build(ROOT / "lib", names, tmp_path)
    assert set(done) == set(names)
    script = ("import torch, lib.attention as la\n"
              "print(la.padding_mask(torch.tensor([2]), 3).tolist())\n"
              "try:\n    la.scaled_dot_product_attention(*[torch.zeros(1, 2, 3)] * 3)\n"
              "except NotImplementedError as e:\n    print(type(e).__name__, e)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=120)
    assert "[[True, True, False]]" in done.stdout and "ReferenceWithheld" in done.stdout, done.stdout + done.stderr
    import ast

    tree = ast.parse((lib_copy / "attention.py").read_text())
    body = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "scaled_dot_product_attention").body
    assert isinstance(body[-1], ast.Raise) and len(body) <= 2  # a docstring and the raise: no code of it left


_CALLS_THE_REFERENCE = """
import contextlib
import lib.attention as _la
import lib.checks as _chk
_chk.forbid = lambda *targets: contextlib.nullcontext()  # a forbid that bans nothing
_ref = _la.masked_softmax


def my_masked_softmax(scores, mask):
    return _ref(scores, mask=mask)
"""


@pytest.mark.slow
@needs_sandbox
def test_calling_the_reference_earns_nothing(tmp_path):
    """Attack (#29.6): lesson 02's exercise 1 answered by lib's reference through a private alias, forbid replaced."""
    lesson = "02_attention_scoring"
    root = fx.fixture_course(tmp_path / "course", lessons={lesson: ROOT / "solutions" / lesson})
    solution = nbformat.read(root / "solutions" / lesson / f"{lesson}.ipynb", as_version=4)
    cheat = fx.solve(fx.release(root, lesson), solution)
    for cell in cheat.cells:
        if fx._gid(cell) == "ex1_masked_softmax":
            cell.source = _CALLS_THE_REFERENCE
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    nbformat.write(cheat, inbox / "cheat.ipynb")
    report = grade(lesson, inbox, root=root, jobs=1, progress=False, similarity=False,
                   limits=Limits(cell_timeout=120, submission_timeout=600, memory=3 * 1024**3))
    row = report.by_student()["cheat"]
    assert row.status == "graded", f"{row.status}: {row.reason}"
    # the visible check (2 points) bans nothing; the hidden tests' 3 points are lost (on main: 5 of 5)
    assert row.scores["ex1"] == 2, f"{row.scores}: {row.reason}"
    assert row.scores["ex2"] == 5, f"{row.scores}: {row.reason}"
    # exercise 2's model answer uses masked_softmax: it stays; the lesson's other references do not
    assert "lib.attention.scaled_dot_product_attention" in report.withheld
    assert "lib.attention.masked_softmax" not in report.withheld


_SHARES = """
import torch
from torch import nn


def to_conv(linear):  # shares the Linear's memory instead of copying it
    conv = nn.Conv1d(linear.in_features, linear.out_features, 1)
    conv.weight = nn.Parameter(linear.weight.unsqueeze(-1))
    conv.bias = linear.bias
    return conv


def to_conv_copy(linear):
    conv = nn.Conv1d(linear.in_features, linear.out_features, 1)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.unsqueeze(-1))
        conv.bias.copy_(linear.bias)
    return conv


def same(x):
    return x


def half_of(x):
    return x[:, :2]


def bump(x):
    x.add_(1)
    return None
"""


def test_identity_aliasing_and_in_place_updates_are_observed():
    """Attack (#29.3): lesson 05's "copy, do not share" check against an answer that shares the Linear's memory."""
    trusted = [("def to_conv(linear): ...\ndef to_conv_copy(linear): ...\ndef same(x): ...\ndef half_of(x): ...\n"
                "def bump(x): ...", "ex1", fx.SOL)]
    import torch

    s, _ = fx.agent_session(_SHARES, trusted)
    s.catch_up(1)
    lin = torch.nn.Linear(6, 10)
    shared = s.ns["to_conv"](lin)
    assert shared.weight.untyped_storage().data_ptr() == lin.weight.untyped_storage().data_ptr()
    assert shared.bias.untyped_storage().data_ptr() == lin.bias.untyped_storage().data_ptr()
    with torch.no_grad():
        shared.weight.add_(1.0)  # lesson 05's hidden check: training one changes the other
    assert torch.equal(shared.weight.squeeze(-1), lin.weight)
    copied = s.ns["to_conv_copy"](lin)
    assert copied.weight.untyped_storage().data_ptr() != lin.weight.untyped_storage().data_ptr()
    assert torch.equal(copied.weight.squeeze(-1), lin.weight)
    x = torch.randn(3, 4)
    assert s.ns["same"](x) is x  # identity
    view = s.ns["half_of"](x)
    assert view.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() and torch.equal(view, x[:, :2])
    before = x.clone()
    assert s.ns["bump"](x) is None
    assert torch.equal(x, before + 1)  # the in-place update reached the grader's tensor
