"""Grade a folder of submissions of one lesson with nbgrader.

    make grade ASSIGNMENT=02_attention_scoring SUBMISSIONS=inbox/
    python -m tools.grade 02_attention_scoring inbox/ [--jobs 2] [--cell-timeout 120] ...
    python -m tools.grade 02_attention_scoring --feedback-only   # after grading written answers

The folder holds nbgrader's layout (``<student>/<assignment>/<notebook>.ipynb``)
or one file per student (``<student>.ipynb``).  Every submission is checked,
then autograded in its own scratch folder by a separate process under limits
(cell timeout, submission timeout, kernel memory, output size).  Results go to
the course gradebook (``grading/gradebook.db``), a grade table
(``grading/<assignment>_grades.csv``) and per-student feedback without the
hidden tests (``grading/feedback/<student>/<assignment>/``).

Each kernel runs in its own bubblewrap sandbox; without ``bwrap`` grading refuses
to run unless ``--weak-isolation`` accepts resource limits only.

Exit status: 0 when grading ran (whatever the students' results), 2 when it
could not run (unknown assignment, missing folder, unusable gradebook, no sandbox),
3 when it ran but some submissions failed for the grader's own reasons
(``grader_error``: they score zero until graded again; the reasons are printed).
See docs/grading.md.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from tools.autograder.core import (
    GIB,
    STATUSES,
    GradingError,
    Limits,
    Report,
    grade,
    regenerate_feedback,
)
from tools.common import REPO


def _bytes(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    t = text.strip().lower().rstrip("ib").rstrip("b")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def summary(report: Report) -> str:
    rows = report.rows
    n = len(rows)
    lines = [f"graded {n} submission{'s' * (n != 1)} of {report.assignment} in {report.seconds:.0f} s"
             + (f" ({n / report.seconds * 60:.1f} per minute)" if report.seconds > 0 and n else "")]
    if rows:
        counts = Counter(r.status for r in rows)
        lines.append("  status: " + ", ".join(f"{s} {counts[s]}" for s in STATUSES if counts[s]))
        mx = max(r.max for r in rows)
        mean = sum(r.total for r in rows) / n
        lines.append(f"  mean score: {mean:.2f} / {mx:g}")
        pending = sum(r.manual_pending for r in rows)
        if pending:
            lines.append(f"  {pending} written answers to grade by hand: nbgrader formgrader (docs/grading.md)")
        for r in rows:
            if r.status != "graded":
                lines.append(f"    {r.student}: {r.status}: {r.reason}")
    lines.append(f"  isolation:   {report.isolation}")
    if report.withheld:
        lines.append(f"  withheld from the kernels (the lesson's references): {', '.join(report.withheld)}")
    for fix in report.restored:
        lines.append(f"  RESTORED manual gradebook entry changed during the run: {fix}")
    lines.append(f"  grade table: {report.csv_path}")
    if report.similarity:
        lines.append(f"  similarity:  {report.similarity} (and .html)")
    lines.append(f"  feedback:    {report.feedback_dir}/<student>/{report.assignment}/")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.grade", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("assignment", help="the lesson, e.g. 02_attention_scoring")
    p.add_argument("submissions", nargs="?", type=Path, help="folder of submissions")
    p.add_argument("--root", type=Path, default=REPO, help="course root holding nbgrader_config.py (default: this repo)")
    p.add_argument("--jobs", "-j", type=int, default=2, help="submissions graded in parallel (default 2)")
    p.add_argument("--cell-timeout", type=int, default=Limits.cell_timeout, help="seconds per cell (default %(default)s)")
    p.add_argument("--timeout", type=int, default=Limits.submission_timeout,
                   help="seconds of wall clock per submission (default %(default)s)")
    p.add_argument("--memory", type=_bytes, default=Limits.memory,
                   help=f"kernel memory limit, e.g. 4G (default {Limits.memory // GIB}G)")
    p.add_argument("--worker-memory", type=_bytes, default=Limits.worker_memory,
                   help=f"memory limit of each grading worker, e.g. 8G (default {Limits.worker_memory // GIB}G)")
    p.add_argument("--max-output", type=int, default=Limits.max_cell_output,
                   help="characters of output kept per cell (default %(default)s)")
    p.add_argument("--full", action="store_true", help="run the lessons in full mode (default: COURSE_QUICK=1)")
    p.add_argument("--csv", type=Path, help="grade table path (default grading/<assignment>_grades.csv)")
    p.add_argument("--keep-scratch", action="store_true", help="keep the scratch folders (debugging)")
    p.add_argument("--weak-isolation", action="store_true",
                   help="grade without the bubblewrap sandbox (resource limits only; student code runs as you)")
    p.add_argument("--no-similarity", action="store_true", help="skip the similarity report")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--feedback-only", action="store_true",
                   help="only regenerate feedback from the gradebook (after manual grading)")
    a = p.parse_args(argv)
    try:
        if a.feedback_only:
            out = regenerate_feedback(a.assignment, root=a.root)
            print(f"feedback regenerated in {out}/<student>/{a.assignment}/ (hidden tests removed)")
            return 0
        if a.submissions is None:
            p.error("the folder of submissions is required (or --feedback-only)")
        limits = Limits(cell_timeout=a.cell_timeout, submission_timeout=a.timeout, memory=a.memory,
                        worker_memory=a.worker_memory,
                        max_cell_output=a.max_output, max_notebook_output=max(a.max_output, Limits.max_notebook_output))
        report = grade(a.assignment, a.submissions, root=a.root, jobs=a.jobs, limits=limits, quick=not a.full,
                       csv_path=a.csv, keep_scratch=a.keep_scratch, progress=not a.no_progress,
                       weak_isolation=a.weak_isolation, similarity=not a.no_similarity)
    except GradingError as e:
        print(f"grading could not run: {e}", file=sys.stderr)
        return 2
    print(summary(report))
    failed = [r for r in report.rows if r.status == "grader_error"]
    if failed:
        print(f"grading failed for the grader's own reasons on {len(failed)} of {len(report.rows)} submissions "
              "(they score zero; fix the cause and grade again):", file=sys.stderr)
        for r in failed:
            print(f"  {r.student}: grader_error: {r.reason}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
