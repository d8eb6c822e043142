"""Build the course website: static HTML from the student lessons, offline, with Sphinx + MyST-NB.

    python tools/website.py build [--out build/site] [--repo-url URL]   # (make site)
    python tools/website.py check build/site                           # re-check a built site

What a page shows and where it comes from:

* every cell's **source** comes from the student lesson, ``notebooks/NN_topic/NN_topic.ipynb``
  (found by globbing, so a new lesson appears when it lands): exercises read exactly as the
  student gets them, stubs and the empty hidden-test cells included, each graded cell labelled
  with its points;
* the **outputs** (figures, tables, BLEU, accuracies) are the stored full-mode outputs of
  ``solutions/``, taken only for cells that nbgrader leaves alone (no nbgrader metadata) and whose
  source is the student cell's byte for byte; exercise cells show no output, as in a fresh copy.
  Live progress bars (ipywidgets, whose stored state is a 0 % snapshot) are dropped.

Three guards keep solutions and hidden tests off the site: a staged notebook is refused when any
cell carries nbgrader's solution or hidden-test markers, or when a stored output quotes a line of a
solution or hidden-test region (a traceback through an exercise would); and after Sphinx has run,
every file of the site is scanned for the markers again. The site is written to a scratch folder
and moved to ``--out`` only when all pass, so a failed build never leaves a publishable site behind.
The scan also refuses a page that loads a script, stylesheet or image from another host: math is
typeset by the MathJax that ``sphinx-mathjax-offline`` bundles, and the theme ships its own assets.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `tools` importable

from tools.common import REPO, nbgrader_md  # noqa: E402

CONF_DIR = REPO / "website"
DEFAULT_OUT = REPO / "build" / "site"
STAGE_NAME = "_staged"  # beside --out: the Sphinx source folder the build writes

# nbgrader's delimiters (ClearSolutions / ClearHiddenTests defaults, which nbgrader_config.py keeps).
FORBIDDEN = re.compile(r"(BEGIN|END)\s+(SOLUTION|HIDDEN\s+TESTS)", re.IGNORECASE)
# A page must not load code or styles from elsewhere (view time is offline too).
EXTERNAL_ASSET = re.compile(
    r"<(?:script|img|iframe|source)\b[^>]*\bsrc\s*=\s*[\"']?(?:https?:)?//"
    r"|<link\b[^>]*\bhref\s*=\s*[\"']?(?:https?:)?//[^>]*>"
    r"|@import\s+(?:url\()?[\"']?(?:https?:)?//"
    r"|url\(\s*[\"']?(?:https?:)?//",
    re.IGNORECASE,
)
SCANNED_SUFFIXES = {".html", ".js", ".css", ".txt", ".ipynb", ".json", ".xml", ".md"}
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
GOALS_LEAD = r"In\s+this\s+lesson\s+you\s+will"


class SiteError(Exception):
    """The site cannot be published: the message says which file and why."""


# ---------------------------------------------------------------------------------------------
# Lessons: discovery and what the course map shows


@dataclass
class Lesson:
    name: str  # NN_topic
    title: str  # the notebook's first heading
    summary: str  # the intro's first paragraph
    goals: list[str] = field(default_factory=list)  # "In this lesson you will" list
    points: str | None = None  # "Points in this lesson: N"
    run_time: str | None = None  # the "*Run time:*" paragraph

    @property
    def repo_path(self) -> str:
        return f"notebooks/{self.name}/{self.name}.ipynb"


def discover(notebooks: Path) -> list[Path]:
    """Every student lesson ``NN_topic/NN_topic.ipynb`` under ``notebooks``, in course order."""
    found = [p for p in notebooks.glob("[0-9][0-9]_*/*.ipynb") if p.stem == p.parent.name]
    if not found:
        raise SiteError(f"no lessons under {notebooks} (expected NN_topic/NN_topic.ipynb)")
    return sorted(found, key=lambda p: p.stem)


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def _intro(nb: dict) -> str:
    """The markdown before the first code cell: where a lesson states its goals, points and run time."""
    parts = []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            break
        if cell.get("cell_type") == "markdown":
            parts.append(_source(cell))
    return "\n\n".join(parts)


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def _goals(intro: str) -> list[str]:
    """The markdown list after "In this lesson you will" (numbered or bulleted), continuations joined."""
    m = re.search(GOALS_LEAD + r":?[ \t]*\n", intro)
    items: list[str] = []
    blank = False
    for line in intro[m.end():].splitlines() if m else []:
        if not line.strip():
            blank = True
            continue
        item = re.match(r"\s*(?:\d+[.)]|[*+-])\s+(.*)", line)
        if item:
            items.append(item.group(1).strip())
        elif items and (not blank or line.startswith((" ", "\t"))):
            items[-1] += " " + line.strip()
        else:
            break
        blank = False
    return items


def _summary(paragraphs: list[str]) -> str:
    """The intro's first paragraph, without the goals' lead-in, ending in a full stop, not a colon."""
    text = " ".join(paragraphs[0].split()) if paragraphs else ""
    text = re.sub(GOALS_LEAD + r":?$", "", text).strip()
    return text[:-1] + "." if text.endswith(":") else text


def describe_lesson(path: Path) -> Lesson:
    """Title, summary, goals, points and run time, read from the lesson's introduction."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    intro = _intro(nb)
    m = re.search(r"^#\s+(.+)$", intro, re.MULTILINE)
    title = m.group(1).strip() if m else path.stem
    summary = _summary([p for p in _paragraphs(intro) if not p.startswith("#")])
    goals = _goals(intro)
    m = re.search(r"\*\*Points in this lesson:\s*(\d+)\*\*", intro)
    points = m.group(1) if m else None
    m = re.search(r"\*Run time:?\*:?\s*(.+?)(?:\n\s*\n|\Z)", intro, re.DOTALL)
    run_time = " ".join(m.group(1).split()) if m else None
    return Lesson(path.stem, title, summary, goals, points, run_time)


# ---------------------------------------------------------------------------------------------
# Staging: the notebooks Sphinx reads


def forbidden_in_notebook(nb: dict) -> list[str]:
    """Where a notebook carries a solution or hidden-test marker: 'cell N (source|output)'."""
    found = []
    for i, cell in enumerate(nb.get("cells", [])):
        if FORBIDDEN.search(_source(cell)):
            found.append(f"cell {i} (source)")
        if FORBIDDEN.search(json.dumps(cell.get("outputs", []))) or FORBIDDEN.search(
                json.dumps(cell.get("attachments", {}))):
            found.append(f"cell {i} (output)")
    return found


REGION = re.compile(r"BEGIN\s+(SOLUTION|HIDDEN\s+TESTS)(.*?)END\s+\1", re.IGNORECASE | re.DOTALL)


def secret_lines(solution: dict, student: dict, min_chars: int = 16) -> set[str]:
    """The lines of the solution's solution and hidden-test regions that the student never sees.

    A stored output that quotes one (a traceback through an exercise's solution, a printed source)
    would publish it although no marker comes along.
    """
    seen = {ln.strip() for c in student.get("cells", []) for ln in _source(c).splitlines()}
    secrets = set()
    for cell in solution.get("cells", []):
        for region in REGION.finditer(_source(cell)):
            for line in region.group(2).splitlines()[1:]:
                line = line.strip()
                if len(line) >= min_chars and line not in seen and not FORBIDDEN.search(line):
                    secrets.add(line)
    return secrets


def _output_text(outputs: list) -> str:
    parts = []
    for out in outputs:
        for value in [out.get("text", ""), *out.get("data", {}).values(), *out.get("traceback", [])]:
            parts.append("".join(value) if isinstance(value, list) else value if isinstance(value, str) else "")
    return "\n".join(parts)


def _label(cell: dict) -> str | None:
    """What the student is asked to do in an nbgrader cell, with its points."""
    md = nbgrader_md(cell)
    if not md:
        return None
    points = md.get("points")
    pts = f"{points:g} point{'s' if points != 1 else ''}" if isinstance(points, (int, float)) else None
    lines = [ln.strip() for ln in _source(cell).splitlines() if ln.strip()]
    if md.get("solution") and cell.get("cell_type") == "markdown":
        return f"Your written answer{f' · {pts}' if pts else ''}, graded by hand"
    if md.get("solution"):
        what = "Your code" + (f" · {pts}" if md.get("grade") and pts else "")
        return f"{what}: replace the stub `raise NotImplementedError()`"
    if md.get("grade") and lines and all(ln.startswith("#") for ln in lines):
        return f"Hidden tests{f' · {pts}' if pts else ''}: the grader runs them, you see this comment only"
    if md.get("grade"):
        return f"Check{f' · {pts}' if pts else ''}: run it to test your answer"
    if md.get("task"):
        return f"Task{f' · {pts}' if pts else ''}"
    return None


def _label_cell(text: str, cell_id: str) -> dict:
    return {"cell_type": "markdown", "id": cell_id, "metadata": {},
            "source": f":::{{container}} exercise-label\n{text}\n:::"}


def _run_box(lesson: Lesson, repo_url: str | None, branch: str) -> str:
    source = (f"[`{lesson.repo_path}`]({repo_url}/blob/{branch}/{lesson.repo_path}) on the repository"
              if repo_url else f"`{lesson.repo_path}` in the course repository")
    return (
        "\n\n:::{admonition} Run this lesson yourself\n:class: tip run-locally\n"
        f"**Source:** {source} · {{download}}`download the notebook <_student/{lesson.name}.ipynb>`\n\n"
        f"**Run it:** `make lab` in your copy of the course (it installs everything into `.venv/` and "
        f"opens JupyterLab), then open `{lesson.repo_path}` ([how to get the course]"
        "(index.md#run-the-course-yourself)).\n\n"
        "The outputs on this page are the stored run of the complete lesson (full mode); the exercises "
        "are shown as you get them, with their points.\n:::\n"
    )


def stage_notebook(student: Path, solution: Path | None, lesson: Lesson, repo_url: str | None,
                   branch: str) -> dict:
    """The page's notebook: student sources, the solution's outputs for untouched cells, labels."""
    nb = json.loads(student.read_text(encoding="utf-8"))
    problems = forbidden_in_notebook(nb)
    if problems:
        raise SiteError(f"{student} carries a solution or hidden-test marker in {', '.join(problems)}: "
                        "the site is built from nbgrader's student release only (make student)")
    ref = json.loads(solution.read_text(encoding="utf-8")) if solution and solution.exists() else {"cells": []}
    ref_cells = ref.get("cells", [])
    aligned = len(ref_cells) == len(nb["cells"])
    if ref_cells and not aligned:
        print(f"make site: {student.stem}: the student notebook has {len(nb['cells'])} cells, the solution "
              f"{len(ref_cells)}, so its page shows no outputs (make student regenerates notebooks/)",
              file=sys.stderr)
    cells = []
    for i, cell in enumerate(nb["cells"]):
        cell = copy.deepcopy(cell)
        label = _label(cell)
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
            other = ref_cells[i] if aligned else None
            if (other is not None and not nbgrader_md(cell) and not nbgrader_md(other)
                    and other.get("cell_type") == "code" and _source(other) == _source(cell)):
                cell["outputs"] = [o for o in other.get("outputs", []) if WIDGET_VIEW not in o.get("data", {})]
                cell["execution_count"] = other.get("execution_count")
        if i == 0 and cell.get("cell_type") == "markdown":  # the box under the lesson's title
            text = _source(cell)
            head, sep, rest = text.partition("\n")
            cell["source"] = head + _run_box(lesson, repo_url, branch) + sep + rest
        if label:
            cells.append(_label_cell(label, f"exercise-label-{i}"))
        cells.append(cell)
    nb["cells"] = cells
    problems = forbidden_in_notebook(nb)  # the outputs taken from solutions/ too
    secrets = secret_lines(ref, nb)
    for k, cell in enumerate(nb["cells"]):
        text = _output_text(cell.get("outputs", []))
        problems += [f"cell {k}'s stored output quotes the solution line {s!r}" for s in secrets if s in text][:1]
    if problems:
        raise SiteError(f"the page of {student.stem} would carry a solution or hidden test: {'; '.join(problems)}")
    return nb


def course_map(lessons: list[Lesson]) -> str:
    """The landing page's course map, in MyST markdown: one section per lesson."""
    out = []
    for lesson in lessons:
        out.append(f"### [{lesson.title}]({lesson.name}.ipynb)\n")
        if lesson.summary:
            out.append(lesson.summary + "\n")
        facts = []
        if lesson.points:
            facts.append(f"**Points:** {lesson.points}")
        facts.append(f"**Run time:** {lesson.run_time or 'not stated in the lesson'}")
        out.append(":::{container} lesson-facts\n" + "  \n".join(facts) + "\n:::\n")
        if lesson.goals:
            out.append(":::{container} lesson-goals\n**In this lesson you will**\n\n" + "\n".join(
                f"{k}. {g}" for k, g in enumerate(lesson.goals, 1)) + "\n:::\n")
    out.append("```{toctree}\n:hidden:\n:maxdepth: 1\n\n" + "\n".join(lesson.name for lesson in lessons) + "\n```\n")
    return "\n".join(out)


def stage(stage_dir: Path, notebooks: Path, solutions: Path, repo_url: str | None, branch: str,
          conf_dir: Path = CONF_DIR) -> list[Lesson]:
    """Write the Sphinx source folder: conf, static files, landing page, one notebook per lesson."""
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    shutil.copytree(conf_dir, stage_dir, ignore=shutil.ignore_patterns("__pycache__", "index.md"))
    (stage_dir / "_student").mkdir()
    lessons = []
    for path in discover(notebooks):
        lesson = describe_lesson(path)
        nb = stage_notebook(path, solutions / path.stem / path.name, lesson, repo_url, branch)
        (stage_dir / path.name).write_text(json.dumps(nb, indent=1, ensure_ascii=False), encoding="utf-8")
        shutil.copy(path, stage_dir / "_student" / path.name)  # the download: the student's file as is
        lessons.append(lesson)
    index = (conf_dir / "index.md").read_text(encoding="utf-8")
    index = index.replace("{{course_map}}", course_map(lessons))
    index = index.replace("{{repository}}", f"[the course repository]({repo_url})" if repo_url
                          else "the course repository")
    index = index.replace("{{clone}}", repo_url or "<repository-url>")
    (stage_dir / "index.md").write_text(index, encoding="utf-8")
    (stage_dir / "course.json").write_text(json.dumps(
        {"repository_url": repo_url, "branch": branch, "lessons": [asdict(x) for x in lessons]}, indent=1))
    return lessons


# ---------------------------------------------------------------------------------------------
# The built site: the guards


def check_site(site: Path) -> list[str]:
    """Every problem that keeps ``site`` from being published ([] when it may be)."""
    problems = []
    for path in sorted(site.rglob("*")):
        if not path.is_file() or path.suffix not in SCANNED_SUFFIXES:
            continue
        if "_static/mathjax" in path.as_posix():  # the MathJax distribution (no course text in it)
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = path.relative_to(site)
        if m := FORBIDDEN.search(text):
            problems.append(f"{rel}: carries {m.group(0)!r} (a solution or hidden test must never be published)")
        if path.suffix == ".html" and (m := EXTERNAL_ASSET.search(text)):
            problems.append(f"{rel}: loads an asset from another host ({m.group(0)[:80]!r}): the site must work offline")
    if not (site / "index.html").exists():
        problems.append("index.html is missing")
    return problems


def repo_url_default() -> str | None:
    """The web address of the repository's ``origin`` remote (GitHub/GitLab style), if any."""
    try:
        url = subprocess.run(["git", "-C", str(REPO), "remote", "get-url", "origin"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.match(r"(?:git@|ssh://git@)([^:/]+)[:/](.+?)(?:\.git)?/?$", url)
    if m:
        return f"https://{m.group(1)}/{m.group(2)}"
    m = re.match(r"https?://(?:[^@/]+@)?(.+?)(?:\.git)?/?$", url)
    return f"https://{m.group(1)}" if m else None


def build(out: Path = DEFAULT_OUT, *, notebooks: Path = REPO / "notebooks", solutions: Path = REPO / "solutions",
          repo_url: str | None = None, branch: str = "main", jobs: int = 1, quiet: bool = True,
          conf_dir: Path = CONF_DIR) -> list[Lesson]:
    """Stage, run Sphinx into a scratch folder, check every file, then move the site to ``out``."""
    out = out.resolve()
    work = out.parent / f".{out.name}.build"
    stage_dir = work / STAGE_NAME
    html = work / "html"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    lessons = stage(stage_dir, notebooks, solutions, repo_url, branch, conf_dir)
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-j", str(jobs),
           "-d", str(work / "doctrees"), str(stage_dir), str(html)]
    if quiet:
        cmd.append("-q")
    result = subprocess.run(cmd, cwd=stage_dir)
    if result.returncode != 0:
        raise SiteError(f"sphinx-build failed (exit {result.returncode}); the staged sources are in {stage_dir}")
    for junk in (html / "_static").rglob("*.html"):  # the themes' Jinja macro sources, not pages
        junk.unlink()
    if (html / "_sources").is_dir() and not any((html / "_sources").iterdir()):
        (html / "_sources").rmdir()
    problems = check_site(html)
    if problems:
        raise SiteError("the site is not published:\n  " + "\n  ".join(problems))
    if out.exists():
        shutil.rmtree(out)
    html.rename(out)
    shutil.rmtree(work)
    return lessons


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the site (make site)")
    b.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the site goes (default %(default)s)")
    b.add_argument("--notebooks", type=Path, default=REPO / "notebooks", help="the student lessons")
    b.add_argument("--solutions", type=Path, default=REPO / "solutions",
                   help="where the stored outputs of the untouched cells come from")
    b.add_argument("--repo-url", default=os.environ.get("COURSE_REPO_URL") or None,
                   help="the repository's web address, for the source links (default: git's origin)")
    b.add_argument("--branch", default="main", help="the branch the source links point at (default %(default)s)")
    b.add_argument("-j", "--jobs", type=int, default=1, help="Sphinx processes (default %(default)s)")
    c = sub.add_parser("check", help="scan a built site for solutions, hidden tests and external assets")
    c.add_argument("site", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "check":
            problems = check_site(args.site)
            if problems:
                raise SiteError("\n".join(problems))
            print(f"{args.site}: no solution, no hidden test, no external asset")
            return 0
        start = time.perf_counter()
        repo_url = (args.repo_url or repo_url_default() or "").rstrip("/") or None
        lessons = build(args.out, notebooks=args.notebooks, solutions=args.solutions, repo_url=repo_url,
                        branch=args.branch, jobs=args.jobs)
        pages = sum(1 for _ in args.out.rglob("*.html"))
        print(f"built {args.out} in {time.perf_counter() - start:.1f} s: {len(lessons)} lessons, {pages} pages; "
              f"open {args.out / 'index.html'} or serve the folder (python -m http.server -d {args.out})")
        return 0
    except SiteError as err:
        print(f"make site: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
