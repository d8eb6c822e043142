"""What a run reports: rows, statuses, the grade table, and the files placed in ``grading/``."""

from __future__ import annotations

import csv
import html
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tools.autograder.config import STATUSES, Course
from tools.autograder.records import Note
from tools.autograder.sanitize import sanitize_page

MAX_FEEDBACK = 5 * 1024**2  # bytes of one feedback page


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
    isolation: str = ""
    restored: list[str] = field(default_factory=list)  # manual gradebook entries put back
    similarity: Path | None = None
    withheld: list[str] = field(default_factory=list)  # lib references the kernels did not have

    def by_student(self) -> dict[str, Row]:
        return {r.student: r for r in self.rows}


def status_of(notes: list[Note]) -> tuple[str, str]:
    order = list(STATUSES)
    notes = sorted(notes, key=lambda n: order.index(n[0]) if n[0] in order else len(order))
    status = notes[0][0] if notes else "graded"
    return status, "; ".join(text for _, text in notes if text)


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


def _replace_dir(final: Path, fill) -> None:
    """Build ``final`` beside itself and swap it in, so a killed run leaves the old or the new one."""
    tmp = final.with_name(final.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    fill(tmp)
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


@dataclass
class Graded:
    """What one submission left to place in ``grading/``."""

    student: str
    submitted: Path | None  # the file as submitted
    timestamp: Path | None  # its timestamp.txt, if any
    job_course: Path | None  # the scratch course that holds autograded/ and feedback/ (None: not run)
    autograded: bool = False  # the autograded notebook is there to place
    feedback: bool = False  # the feedback page is there to place


def place_files(course: Course, assignment: str, notebook: str, graded: Graded, row: Row) -> None:
    """Copy the submission, the autograded notebook and the (sanitized) feedback page into grading/."""
    student, job_course = graded.student, graded.job_course

    def submitted(d: Path) -> None:
        if graded.submitted is not None and graded.submitted.is_file():
            shutil.copyfile(graded.submitted, d / f"{notebook}.ipynb")
        if graded.timestamp is not None and graded.timestamp.is_file():
            shutil.copyfile(graded.timestamp, d / "timestamp.txt")

    def autograded(d: Path) -> None:
        src = job_course / "autograded" / student / assignment / f"{notebook}.ipynb" if job_course else None
        if graded.autograded and src and src.is_file():
            shutil.copyfile(src, d / f"{notebook}.ipynb")

    def page(d: Path) -> None:
        src = job_course / "feedback" / student / assignment / f"{notebook}.html" if job_course else None
        text = None
        if graded.feedback and src and src.is_file() and src.stat().st_size <= MAX_FEEDBACK:
            text = sanitize_page(src.read_text(encoding="utf-8", errors="replace"))
        (d / f"{notebook}.html").write_text(text or plain_feedback(assignment, row), encoding="utf-8")

    for base, fill in ((course.submitted, submitted), (course.autograded, autograded), (course.feedback, page)):
        (base / student).mkdir(parents=True, exist_ok=True)
        _replace_dir(base / student / assignment, fill)


def plain_feedback(assignment: str, row: Row) -> str:
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Feedback</title></head><body>"
        f"<h1>{html.escape(assignment)}: feedback for {html.escape(row.student)}</h1>"
        f"<p><b>Score: {row.total:g} / {row.max:g}</b></p>"
        f"<p>Your submission could not be graded automatically: <b>{html.escape(row.status)}</b> "
        f"({html.escape(STATUSES.get(row.status, ''))}).</p><p>{html.escape(row.reason)}</p>"
        "<p>Please check the file you submitted and ask your instructor.</p></body></html>"
    )
