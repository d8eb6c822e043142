"""The notebook pipeline: environment files agree, solutions are well formed,
notebooks/ is exactly what nbgrader generates from solutions/."""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools import nbtool, student  # noqa: E402

LESSONS = student.lessons()


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_and_pyproject_name_the_same_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += extra
    pip_lines = []
    in_pip = False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        stripped = line.strip()
        if stripped == "- pip:":
            in_pip = True
            continue
        if in_pip and stripped.startswith("- ") and not stripped.startswith("- -e"):
            pip_lines.append(stripped[2:])
    assert pip_lines, "environment.yml has no pip section"
    assert sorted(pip_lines) == sorted(declared), "environment.yml and pyproject.toml disagree (names and versions)"
    assert len({_name(r) for r in declared}) == len(declared), "a package is declared twice"


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    assert "make test" in (ROOT / "README.md").read_text()


def test_there_are_lessons_and_every_one_is_in_the_readme():
    assert LESSONS[:3] == ["00_setup", "01_attention_pooling", "02_attention_scoring"]
    readme = (ROOT / "README.md").read_text()
    for lesson in LESSONS:
        assert lesson in readme, f"README's course map does not list {lesson}"


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("lesson", LESSONS)
def test_solution_notebook_is_well_formed(lesson):
    path = ROOT / "solutions" / lesson / f"{lesson}.ipynb"
    assert path.exists(), f"{lesson}: expected one notebook named {path.name} in its folder"
    nb = _load(path)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code), f"{lesson}: every code cell must be executed (stored outputs)"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{lesson}: stored outputs contain an error"
    graded = [c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade")]
    ids = [c["metadata"]["nbgrader"]["grade_id"] for c in nb["cells"] if "nbgrader" in c["metadata"]]
    assert len(ids) == len(set(ids)), f"{lesson}: duplicate nbgrader grade_ids"
    for cell in nb["cells"]:
        meta = cell["metadata"].get("nbgrader")
        if meta and meta.get("solution") and cell["cell_type"] == "code":
            assert "### BEGIN SOLUTION" in "".join(cell["source"]), f"{lesson}: {meta['grade_id']} has no solution region"
    if lesson != "00_setup" or graded:
        hidden = [c for c in graded if "### BEGIN HIDDEN TESTS" in "".join(c["source"])]
        if any(c["cell_type"] == "code" for c in graded):
            assert hidden, f"{lesson}: graded exercises need hidden tests"
        points = sum(c["metadata"]["nbgrader"].get("points", 0) for c in graded)
        intro = "".join(nb["cells"][0]["source"])
        assert f"Points in this lesson: {points}" in intro, f"{lesson}: the intro must state the total of {points} points"


@pytest.mark.parametrize("lesson", LESSONS)
def test_text_source_and_notebook_agree(lesson):
    """solutions/NN/NN.py (what review reads) holds exactly the cells of NN.ipynb (what runs)."""
    problems = nbtool.pair_differences(lesson)
    assert not problems, "\n".join(problems) + f"\n(edit the .py, then `python tools/nbtool.py sync {lesson}`)"


def test_pair_check_sees_an_edit(tmp_path, monkeypatch):
    lesson = LESSONS[0]
    copy = tmp_path / lesson
    copy.mkdir()
    for suffix in (".py", ".ipynb"):
        (copy / f"{lesson}{suffix}").write_bytes((ROOT / "solutions" / lesson / f"{lesson}{suffix}").read_bytes())
    monkeypatch.setattr(nbtool, "SOLUTIONS", tmp_path)
    assert nbtool.pair_differences(lesson) == []
    text = (copy / f"{lesson}.py").read_text()
    (copy / f"{lesson}.py").write_text(text.replace("import", "import  ", 1))
    assert nbtool.pair_differences(lesson), "an edit of the .py alone went unnoticed"


def test_sync_carry_keeps_an_edited_cells_outputs_only_where_nbval_compares_them(tmp_path, monkeypatch):
    lesson = "06_transformer_encoder"
    copy = tmp_path / lesson
    copy.mkdir()
    for suffix in (".py", ".ipynb"):
        (copy / f"{lesson}{suffix}").write_bytes((ROOT / "solutions" / lesson / f"{lesson}{suffix}").read_bytes())
    monkeypatch.setattr(nbtool, "SOLUTIONS", tmp_path)
    before = [c for c in _load(copy / f"{lesson}.ipynb")["cells"] if c["cell_type"] == "code"]
    compared = next(i for i, c in enumerate(before) if c["outputs"] and "nbval-ignore-output" not in c["metadata"].get("tags", []))
    ignored = next(i for i, c in enumerate(before) if c["outputs"] and "nbval-ignore-output" in c["metadata"].get("tags", []))
    text = (copy / f"{lesson}.py").read_text()
    for i in (compared, ignored):
        source = "".join(before[i]["source"])
        assert source in text
        text = text.replace(source, source + "\npass  # edited", 1)
    (copy / f"{lesson}.py").write_text(text)
    for carry, kept in ((False, set()), (True, {compared})):
        nbtool.cmd_sync(lesson, carry=carry)
        after = [c for c in _load(copy / f"{lesson}.ipynb")["cells"] if c["cell_type"] == "code"]
        assert {i for i in (compared, ignored) if after[i]["outputs"] == before[i]["outputs"]} == kept
        (copy / f"{lesson}.ipynb").write_bytes((ROOT / "solutions" / lesson / f"{lesson}.ipynb").read_bytes())


@pytest.mark.parametrize("lesson", LESSONS)
def test_student_notebook_has_no_solutions_and_no_outputs(lesson):
    path = ROOT / "notebooks" / lesson / f"{lesson}.ipynb"
    assert path.exists(), f"notebooks/{lesson} is missing: run `make student`"
    nb = _load(path)
    text = json.dumps(nb)
    assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")


def test_regenerating_notebooks_changes_nothing():
    differences = student.check()
    assert not differences, "notebooks/ is out of date with solutions/ (run `make student`):\n" + "\n".join(differences)
