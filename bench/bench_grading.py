"""Throughput of the grading command: 50 submissions of one lesson, graded in one run.

    .venv/bin/python bench/bench_grading.py                      # fixture lesson (fast kernels)
    .venv/bin/python bench/bench_grading.py --lesson 02_attention_scoring --n 50 --jobs 2

The submissions are a mix built from the lesson's student notebook: correct,
partially correct, untouched, and hostile ones (exception, infinite loop, memory
hog, megabytes of output, sys.exit, os._exit, deleted tests, invalid JSON, empty
file, another kernel).  Everything runs in a scratch copy of the course (the
shared gradebook is not touched).  Prints the wall time and submissions per
minute, and the same per status; no assertions (benchmarks never fail on time).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import grading_fixtures as fx  # noqa: E402  (tests/grading_fixtures.py)
import nbformat  # noqa: E402

from tools.autograder.core import Limits, grade  # noqa: E402

# (fixture, share of the submissions)
MIX = [("correct", 0.40), ("partial", 0.20), ("blank", 0.10), ("exception", 0.04), ("infinite_loop", 0.04),
       ("memory_hog", 0.04), ("huge_output", 0.04), ("sys_exit", 0.02), ("os_exit", 0.02), ("deleted_tests", 0.02),
       ("not_json", 0.02), ("empty", 0.02), ("other_kernel", 0.04)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lesson", default=fx.FIXTURE, help=f"a lesson in solutions/ or {fx.FIXTURE} (default)")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--cell-timeout", type=int, default=10)
    p.add_argument("--memory-gib", type=float, default=2.0, help="kernel memory limit (default 2)")
    a = p.parse_args()
    os.environ.setdefault("COURSE_QUICK", "1")
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
        tmp = Path(tmp)
        lessons = {a.lesson: ROOT / "solutions" / a.lesson} if a.lesson != fx.FIXTURE else {}
        root = fx.fixture_course(tmp / "course", lessons=lessons)
        student = fx.release(root, a.lesson)
        solution = nbformat.read(root / "solutions" / a.lesson / f"{a.lesson}.ipynb", as_version=4)
        files = fx.bad_submissions(student, solution)
        inbox = tmp / "inbox"
        inbox.mkdir()
        names = []
        for kind, share in MIX:
            names += [kind] * max(1, round(share * a.n))
        names = (names * (a.n // len(names) + 1))[: a.n]
        for i, kind in enumerate(names):
            (inbox / f"s{i:03d}_{kind}.ipynb").write_bytes(files[kind])
        t0 = time.perf_counter()
        report = grade(a.lesson, inbox, root=root, jobs=a.jobs,
                       limits=Limits(cell_timeout=a.cell_timeout, submission_timeout=600,
                                     memory=int(a.memory_gib * 1024**3)), progress=True)
        wall = time.perf_counter() - t0
    counts = Counter(r.status for r in report.rows)
    print(f"lesson {a.lesson}: {len(report.rows)} submissions, {a.jobs} parallel workers, "
          f"{os.cpu_count()} CPU cores")
    print(f"wall time {wall:.1f} s  ->  {len(report.rows) / wall * 60:.1f} submissions per minute "
          f"({wall / max(1, len(report.rows)):.2f} s each)")
    print("statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    main()
