"""Find submissions in a folder and check each one before it is run.

Two layouts are accepted (and may be mixed):

* nbgrader's: ``<student_id>/<assignment>/<notebook>.ipynb`` (a ``timestamp.txt``
  beside the notebook is kept, for late penalties);
* flat: ``<student_id>.ipynb``, also ``<student_id>/<notebook>.ipynb``.

``check()`` reads a submission against the released (student) notebook and
returns the notebook to grade plus notes about what was wrong with it.  Nothing
from the submission is executed here.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from tools.common import grade_id as _gid
from tools.common import nbgrader_md as _nbg

MAX_BYTES = 20 * 1024 * 1024
_ID_BAD = re.compile(r"[^A-Za-z0-9_.@+-]")


@dataclass
class Submission:
    student: str
    path: Path | None  # the notebook, or None when the folder holds none
    timestamp: Path | None = None
    problem: str = ""  # set when the layout itself is wrong (no notebook, several ...)


@dataclass
class Checked:
    """The outcome of ``check``: a notebook to grade, or a status that stops it."""

    nb: nbformat.NotebookNode | None
    status: str = ""  # "" (run it) or "invalid" / "wrong_assignment"
    notes: list[tuple[str, str]] = field(default_factory=list)  # (status, text), e.g. ("tampered", ...)


def student_id(name: str) -> str:
    """A safe student id from a file or folder name (nbgrader uses it in paths and the gradebook)."""
    sid = _ID_BAD.sub("_", name.strip()).strip("._") or "unnamed"
    return sid[:100]


def _hidden(p: Path) -> bool:
    return p.name.startswith(".") or p.name == "__pycache__"


def find(folder: Path, assignment: str, notebook: str) -> list[Submission]:
    """Every submission in ``folder``, sorted by student id.

    Names that normalise to the same student id (``alice.ipynb`` and ``alice/``,
    ``Bob!.ipynb`` and ``Bob.ipynb``) are one ``invalid`` submission whose problem
    names all of them: no sort order decides whose work is graded.
    """
    found: list[Submission] = []
    for entry in sorted(folder.iterdir()):
        if _hidden(entry):
            continue
        if entry.is_file() and entry.suffix == ".ipynb":
            found.append(Submission(student_id(entry.stem), entry))
        elif entry.is_dir():
            base = entry / assignment if (entry / assignment).is_dir() else entry
            nbs = sorted(p for p in base.glob("*.ipynb") if not _hidden(p))
            ts = base / "timestamp.txt"
            ts = ts if ts.is_file() else None
            preferred = [p for p in nbs if p.stem == notebook]
            if preferred:
                found.append(Submission(student_id(entry.name), preferred[0], ts))
            elif len(nbs) == 1:
                found.append(Submission(student_id(entry.name), nbs[0], ts))
            elif not nbs:
                found.append(Submission(student_id(entry.name), None, ts, "no notebook in the folder"))
            else:
                names = ", ".join(p.name for p in nbs)
                found.append(Submission(student_id(entry.name), None, ts,
                                        f"several notebooks and none named {notebook}.ipynb: {names}"))
    by_id: dict[str, list[Submission]] = {}
    for sub in found:
        by_id.setdefault(sub.student, []).append(sub)
    out = []
    for sid in sorted(by_id):
        group = by_id[sid]
        if len(group) == 1:
            out.append(group[0])
            continue
        names = ", ".join(sorted(str(s.path.relative_to(folder)) if s.path else "(a folder without a notebook)"
                                 for s in group))
        out.append(Submission(sid, None, None, f"student id {sid!r} is claimed by {len(group)} submissions "
                              f"({names}); none graded: rename them and grade again"))
    return out


def read(path: Path) -> tuple[nbformat.NotebookNode | None, str]:
    """Parse a submitted file; on failure return (None, reason)."""
    try:
        size = path.stat().st_size
    except OSError as e:
        return None, f"cannot read the file: {e.strerror}"
    if size == 0:
        return None, "empty file"
    if size > MAX_BYTES:
        return None, f"file too large ({size / 2**20:.0f} MiB > {MAX_BYTES / 2**20:.0f} MiB)"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None, "not a notebook: the file is not UTF-8 text"
    if not text.strip():
        return None, "empty file (only whitespace)"
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as e:
        return None, f"not valid JSON: {str(e)[:200]}"
    if not isinstance(raw, dict) or not isinstance(raw.get("cells", raw.get("worksheets")), list):
        return None, "not a Jupyter notebook (valid JSON without a list of cells)"
    try:
        nb = nbformat.reads(text, as_version=4)
        _, fixed = nbformat.validator.normalize(nb)
        nb = nbformat.from_dict(fixed)
        nbformat.validate(nb)
    except Exception as e:  # noqa: BLE001  (nbformat raises many kinds)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return None, f"not a valid notebook: {msg[:200]}"
    return nb, ""


def _key(md: dict) -> tuple:
    """The nbgrader metadata that decides grading (nbgrader adds checksum and cell_type itself)."""
    points = md.get("points")
    try:
        points = float(points) if points is not None else None
    except (TypeError, ValueError):
        pass
    return (bool(md.get("grade")), bool(md.get("solution")), bool(md.get("locked")), bool(md.get("task")), points)


def check(path: Path, release: nbformat.NotebookNode, source: nbformat.NotebookNode | None = None,
          kernel_name: str = "python3") -> Checked:
    """Validate a submission against the released notebook and repair what nbgrader would not.

    * unreadable, empty, not a notebook -> status ``invalid``;
    * none of the assignment's graded cells (by ``grade_id``) -> ``wrong_assignment``;
    * another kernel -> normalised to the assignment's, noted ``kernel_changed``;
    * nbgrader metadata of a known cell changed -> restored from the release, ``tampered``;
    * a locked cell (visible check, hidden test) edited -> noted ``tampered``
      (nbgrader restores its source, hidden tests included, from the gradebook);
    * a cell of the release deleted -> put back where it was, ``tampered``
      (solution cells as the release's stub, so they score zero);
    * unknown or duplicated grade_ids -> their nbgrader metadata removed, ``tampered``.
    """
    nb, why = read(path)
    if nb is None:
        return Checked(None, "invalid", [("invalid", why)])
    rel_cells = [c for c in release.cells if _gid(c)]
    rel_ids = [_gid(c) for c in rel_cells]
    rel_by_id = {_gid(c): c for c in rel_cells}
    # A locked cell may also hold the source version (the instructor's solution, hidden tests included).
    src_by_id = {_gid(c): c for c in (source.cells if source else []) if _gid(c)}
    sub_ids = [_gid(c) for c in nb.cells if _gid(c)]
    known = [g for g in sub_ids if g in rel_by_id]
    if not known:
        detail = f"found grade_ids {sorted(set(sub_ids))[:6]}" if sub_ids else "it has no nbgrader cells"
        return Checked(None, "wrong_assignment",
                       [("wrong_assignment", f"none of this assignment's graded cells are in the notebook ({detail})")])
    notes: list[tuple[str, str]] = []

    ks = nb.metadata.get("kernelspec", {}) if isinstance(nb.metadata.get("kernelspec"), dict) else {}
    want = release.metadata.get("kernelspec", {"name": kernel_name})
    if ks.get("name") != want.get("name", kernel_name):
        notes.append(("kernel_changed", f"kernel {ks.get('name')!r} normalised to {want.get('name', kernel_name)!r}"))
        nb.metadata["kernelspec"] = copy.deepcopy(want)

    changed, edited, foreign, dupes = [], [], [], []
    seen: set[str] = set()
    for cell in nb.cells:
        gid = _gid(cell)
        if "nbgrader" in cell.get("metadata", {}) and gid is None:
            foreign.append("(no grade_id)")
            del cell.metadata["nbgrader"]
            continue
        if gid is None:
            continue
        if gid not in rel_by_id or gid in seen:
            (dupes if gid in seen else foreign).append(gid)
            del cell.metadata["nbgrader"]
            continue
        seen.add(gid)
        ref = rel_by_id[gid]
        if _key(_nbg(cell)) != _key(_nbg(ref)) or cell.cell_type != ref.cell_type:
            changed.append(gid)
            cell.metadata["nbgrader"] = copy.deepcopy(ref.metadata["nbgrader"])
        if _nbg(ref).get("locked") and cell.source not in (ref.source, src_by_id.get(gid, {}).get("source")):
            edited.append(gid)
    missing = [g for g in rel_ids if g not in seen]
    if missing:
        _restore(nb, release, missing)
    if changed:
        notes.append(("tampered", f"nbgrader metadata changed in {', '.join(changed)} (restored)"))
    if edited:
        notes.append(("tampered", f"locked cells edited: {', '.join(edited)} (restored from the gradebook)"))
    if missing:
        notes.append(("tampered", f"graded cells deleted: {', '.join(missing)} (put back)"))
    if foreign:
        notes.append(("tampered", f"unknown grade_ids ignored: {', '.join(foreign)}"))
    if dupes:
        notes.append(("tampered", f"duplicated grade_ids ignored: {', '.join(dupes)}"))
    return Checked(nb, "", notes)


def _restore(nb: nbformat.NotebookNode, release: nbformat.NotebookNode, missing: list[str]) -> None:
    """Insert the release's cells ``missing`` after the nearest preceding graded cell present."""
    order = [_gid(c) for c in release.cells if _gid(c)]
    rel_by_id = {_gid(c): c for c in release.cells if _gid(c)}
    for gid in order:
        if gid not in missing:
            continue
        pos = 0
        for prev in reversed(order[: order.index(gid)]):
            idx = next((i for i, c in enumerate(nb.cells) if _gid(c) == prev), None)
            if idx is not None:
                pos = idx + 1
                break
        cell = copy.deepcopy(rel_by_id[gid])
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.pop("id", None)
        if (nb.nbformat, nb.nbformat_minor) >= (4, 5):
            cell["id"] = re.sub(r"[^A-Za-z0-9_-]", "-", f"restored-{len(nb.cells)}-{gid}")[:64]
        nb.cells.insert(pos, cell)
