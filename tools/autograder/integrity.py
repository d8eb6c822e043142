"""Similarity report: each exercise's answers against lib's reference code and against each other.

Import bans (``forbid``) cannot prove authorship: a student can always copy
``lib``'s source by hand.  This report (``copydetect``'s winnowing fingerprints,
the release's stub as boilerplate) lists, per exercise, how much of each
student's solution cells overlaps a file of ``lib/`` or another student's
answer, as ``<assignment>_similarity.csv`` and ``.html`` beside the grade table.
It flags; an instructor decides.
"""

from __future__ import annotations

import csv
import html
import io
from pathlib import Path

from copydetect import CodeFingerprint, compare_files
from copydetect.utils import highlight_overlap

from tools.common import grade_id, nbgrader_md

K, WIN = 25, 6  # copydetect's defaults: noise threshold 25 tokens, guarantee 30
SHOWN = 0.3  # pairs at or above this share of the student's tokens are listed


def _fp(code: str, boiler: list | None = None) -> CodeFingerprint:
    return CodeFingerprint("cell.py", K, WIN, boilerplate=boiler or [], fp=io.StringIO(code), language="python")


def solution_cells(nb) -> dict[str, str]:
    return {grade_id(c): c.source for c in nb.cells
            if c.cell_type == "code" and nbgrader_md(c).get("solution") and grade_id(c)}


def report(answers: dict[str, dict[str, str]], release, lib_dir: Path, out_csv: Path, out_html: Path) -> int:
    """``answers``: student -> grade_id -> source.  Writes the CSV and HTML; returns the rows listed."""
    stubs = solution_cells(release)
    refs = {f"lib/{p.name}": p.read_text(encoding="utf-8") for p in sorted(lib_dir.glob("*.py"))}
    ref_fps = {}
    rows: list[tuple] = []
    for gid, stub in stubs.items():
        boiler = list(_fp(stub).hashes) if stub.strip() else []
        fps = {}
        for student, cells in answers.items():
            code = cells.get(gid, "")
            if code.strip() and code.strip() != stub.strip():
                fp = _fp(code, boiler)
                if len(fp.hashes):
                    fps[student] = fp
        for name, code in refs.items():
            if name not in ref_fps:
                ref_fps[name] = _fp(code)
        for student, fp in fps.items():
            others = [(n, f) for n, f in ref_fps.items()] + [(s, f) for s, f in fps.items() if s != student]
            for other, ofp in others:
                overlap, (sim, _), (slices, _) = compare_files(fp, ofp)
                if sim >= SHOWN:
                    code, _ = highlight_overlap(fp.raw_code, slices, "<mark>", "</mark>", escape_html=True)
                    rows.append((gid, student, other, float(sim), int(overlap), code))
    rows.sort(key=lambda r: (r[0], -r[3], r[1]))
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["exercise", "student", "similar_to", "share_of_student_code", "overlapping_tokens"])
        for gid, student, other, sim, overlap, _ in rows:
            w.writerow([gid, student, other, f"{sim:.2f}", overlap])
    body = "".join(
        f"<tr><td>{html.escape(g)}</td><td>{html.escape(s)}</td><td>{html.escape(o)}</td><td>{sim:.0%}</td>"
        f"<td>{ov}</td><td><pre>{code}</pre></td></tr>" for g, s, o, sim, ov, code in rows)
    out_html.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Similarity report</title>"
        "<style>body{font-family:sans-serif}td{vertical-align:top;border-top:1px solid #ccc;padding:4px}"
        "mark{background:#fbb}pre{margin:0;font-size:85%}</style></head><body>"
        f"<h1>Similarity of the answers (at least {SHOWN:.0%} of a student's tokens)</h1>"
        "<p>Overlap of each student's solution cells with a file of <code>lib/</code> (the course's reference "
        "implementation) or another student's answer, the release's stub excluded (copydetect). "
        "A flag, not a verdict.</p><table><tr><th>exercise</th><th>student</th><th>similar to</th>"
        f"<th>share</th><th>tokens</th><th>student's code (overlap marked)</th></tr>{body}</table></body></html>",
        encoding="utf-8")
    return len(rows)
