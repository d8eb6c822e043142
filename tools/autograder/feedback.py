"""Feedback without the hidden tests.

nbgrader's autograded notebooks hold the hidden tests again (autograde restores
every locked cell from the gradebook), and its ``generate_feedback`` renders
them, so students would read the hidden tests in their feedback.
``HideHiddenTests`` is a feedback preprocessor that, in every cell,

* replaces each region between ``### BEGIN HIDDEN TESTS`` and
  ``### END HIDDEN TESTS`` by a one-line placeholder,
* replaces all output of such cells by one fixed line, ``hidden tests: passed``
  or ``hidden tests: failed``: nothing printed while they ran (by the tests or by
  the student's code they called, which could print the tests in any encoding)
  reaches the feedback; the cell's points are shown by nbgrader's template, and
* as a last sweep, removes any output line (of any cell) that quotes a line of
  hidden test code.

The visible checks' output and the scores stay.  To use it with plain ``nbgrader generate_feedback``, add to
``nbgrader_config.py``::

    c.GenerateFeedback.preprocessors = [
        "nbgrader.preprocessors.GetGrades",
        "tools.autograder.feedback.HideHiddenTests",
        "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
    ]
"""

from __future__ import annotations

import re

from nbconvert.preprocessors import Preprocessor
from nbformat.notebooknode import NotebookNode
from traitlets import Bool, Unicode

BEGIN, END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
_REGION = re.compile(r"^([ \t]*)### BEGIN HIDDEN TESTS.*?(?:^[ \t]*### END HIDDEN TESTS[^\n]*$|\Z)", re.M | re.S)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
PLACEHOLDER = "# (hidden tests: not shown in feedback)"
HIDDEN_PASSED = "hidden tests: passed\n"
HIDDEN_FAILED = "hidden tests: failed (the points of this cell show how many you earned)\n"


def hidden_regions(source: str) -> list[str]:
    """The hidden-test regions of a cell's source, markers included."""
    return [m.group(0) for m in _REGION.finditer(source)]


def hidden_lines(source: str, min_length: int = 8) -> set[str]:
    """Distinctive code lines of the hidden regions (stripped, comments and markers excluded)."""
    out = set()
    for region in hidden_regions(source):
        for line in region.splitlines():
            s = line.strip()
            if len(s) >= min_length and not s.startswith("#"):
                out.add(s)
    return out


def strip_hidden(source: str, placeholder: str = PLACEHOLDER) -> str:
    """``source`` with every hidden-test region replaced by ``placeholder`` (indentation kept)."""
    return _REGION.sub(lambda m: m.group(1) + placeholder, source)


def _redact(text: str, secret: set[str]) -> str:
    if not secret:
        return text
    keep = []
    for line in text.split("\n"):
        plain = _ANSI.sub("", line)
        if any(s in plain for s in secret):
            continue
        keep.append(line)
    return "\n".join(keep)


class HideHiddenTests(Preprocessor):
    """Feedback preprocessor: hide hidden-test source, keep pass/fail output (module docstring)."""

    enabled = Bool(True, help="on by default (nbconvert preprocessors are off unless enabled)").tag(config=True)
    placeholder = Unicode(PLACEHOLDER, help="what replaces a hidden-test region").tag(config=True)

    def preprocess(self, nb, resources):  # type: ignore[override]
        secret: set[str] = set()
        for cell in nb.cells:
            secret |= hidden_lines(cell.get("source", ""))
        for cell in nb.cells:
            had_hidden = BEGIN in cell.get("source", "")
            if had_hidden:
                cell.source = strip_hidden(cell.source, self.placeholder)
                failed = any(o.get("output_type") == "error" for o in cell.get("outputs", []))
                cell.outputs = [NotebookNode(output_type="stream", name="stdout",
                                             text=HIDDEN_FAILED if failed else HIDDEN_PASSED)]
                continue
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    out.traceback = [t for t in (_redact(t, secret) for t in out.get("traceback", [])) if t]
                    out.evalue = _redact(out.get("evalue", ""), secret)
                elif out.get("output_type") == "stream":
                    out.text = _redact(out.get("text", ""), secret)
                elif "data" in out and "text/plain" in out.data:
                    out.data["text/plain"] = _redact(out.data["text/plain"], secret)
        return nb, resources
