"""Make graded notebooks and feedback pages safe to publish (to students and in the formgrader).

``sanitize_notebook`` (the worker, on the autograded notebook, before feedback):
attachments removed; markdown passed through ``nh3`` (the Rust sanitizer ammonia:
an allowlist of formatting tags, no scripts, no event handlers, no ``style``);
raw cells shown as text; outputs reduced to ``text/plain``, PNG and JPEG images
(each at most ``max_image`` bytes), streams and errors: no HTML, JavaScript, SVG,
widgets or other rich outputs; metadata reduced to what nbgrader and Jupyter read
(the kernelspec, the language, each cell's ``nbgrader`` fields and ``tags``), each
bounded.  ``cap_notebook`` then removes outputs, largest first, until the notebook
fits in :data:`MAX_STORED` bytes.

``sanitize_page`` (the parent, on every feedback page before it is placed in
``grading/``): the template's ``<style>`` blocks kept, everything in the body
passed through ``nh3``, no ``<script>`` or ``<link>`` anywhere.
"""

from __future__ import annotations

import html
import json
import re

import nbformat
import nh3

TAGS = {"a", "abbr", "b", "blockquote", "br", "code", "dd", "del", "details", "div", "dl", "dt", "em", "h1", "h2",
        "h3", "h4", "h5", "h6", "hr", "i", "img", "kbd", "li", "ol", "p", "pre", "s", "span", "strong", "sub",
        "summary", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul"}
ATTRIBUTES = {"*": {"class", "id", "title"}, "a": {"href"}, "img": {"src", "alt", "width", "height"},
              "td": {"colspan", "rowspan"}, "th": {"colspan", "rowspan"}}
URL_SCHEMES = {"http", "https", "mailto", "data"}
KEPT_MIME = ("text/plain", "image/png", "image/jpeg")
MAX_IMAGE = 1_000_000  # characters of base64 per image
MAX_STORED = 20 * 1024**2  # bytes of a stored (autograded) notebook, as of a submission
MAX_META = 10_000  # characters of one metadata entry
NB_META = ("kernelspec", "language_info")
NBGRADER_FIELDS = ("grade", "grade_id", "locked", "points", "schema_version", "solution", "task", "cell_type")
_HTML_LIKE = re.compile(r"<\s*[A-Za-z!/?]")
_ATTACHMENT = re.compile(r"!\[([^\]]*)\]\(\s*attachment:[^)]*\)")


def clean_html(fragment: str) -> str:
    return nh3.clean(fragment, tags=TAGS, attributes=ATTRIBUTES, url_schemes=URL_SCHEMES, link_rel="noopener")


def sanitize_notebook(nb, max_image: int = MAX_IMAGE):
    """``nb`` made safe in place (see the module docstring); returns it."""
    nb.metadata = {k: v for k, v in nb.get("metadata", {}).items() if k in NB_META and _small(v)}
    for cell in nb.cells:
        if cell.pop("attachments", None) is not None or (cell.cell_type != "code" and "attachment:" in cell.source):
            cell.source = _ATTACHMENT.sub(r"[\1: attachment removed by the grader]", cell.source)
            cell.source = cell.source.replace("attachment:", "removed-attachment:")
        cell.metadata = _cell_metadata(cell.get("metadata", {}))
        if cell.cell_type == "markdown" and _HTML_LIKE.search(cell.source):
            cell.source = clean_html(cell.source)
        elif cell.cell_type == "raw":
            cell.cell_type = "markdown"
            cell.source = "<pre>" + html.escape(cell.source) + "</pre>"
        if cell.cell_type != "code":
            cell.pop("outputs", None)
            cell.pop("execution_count", None)
            continue
        kept = []
        for out in cell.get("outputs", []):
            if out.get("output_type") in ("stream", "error"):
                kept.append(out)
                continue
            data = {k: v for k, v in out.get("data", {}).items() if k in KEPT_MIME}
            for k in ("image/png", "image/jpeg"):
                if k in data and (not isinstance(data[k], str) or len(data[k]) > max_image):
                    del data[k]
                    data["text/plain"] = f"[image removed by the grader: over {max_image} characters]"
            if "text/plain" in data and not isinstance(data["text/plain"], str):
                data["text/plain"] = "".join(data["text/plain"])
            if data:
                out["data"] = data
                out["metadata"] = {}
                kept.append(out)
        cell.outputs = kept
    return nb


def _small(value) -> bool:
    try:
        return len(json.dumps(value)) <= MAX_META
    except (TypeError, ValueError):
        return False


def _cell_metadata(md) -> dict:
    """A cell's ``nbgrader`` fields and ``tags`` (short strings), nothing else."""
    out: dict = {}
    if not isinstance(md, dict):
        return out
    nbg = md.get("nbgrader")
    if isinstance(nbg, dict):
        nbg = {k: v for k, v in nbg.items() if k in NBGRADER_FIELDS and _small(v)}
        if nbg:
            out["nbgrader"] = nbg
    tags = md.get("tags")
    if isinstance(tags, list):
        out["tags"] = [t for t in tags if isinstance(t, str) and len(t) <= 100][:20]
    return out


def cap_notebook(nb, limit: int = MAX_STORED) -> bool:
    """Remove outputs, largest cell first, until ``nb`` is at most ``limit`` bytes of JSON; True if any went."""
    sizes = sorted(((len(json.dumps(c.get("outputs", []))), i) for i, c in enumerate(nb.cells)
                    if c.get("outputs")), reverse=True)
    total, removed = len(json.dumps(nb)), False
    for size, i in sizes:
        if total <= limit:
            break
        note = {"output_type": "stream", "name": "stdout", "text": "[outputs removed by the grader: notebook too large]\n"}
        nb.cells[i].outputs = [nbformat.from_dict(note)]
        total -= size - len(json.dumps(nb.cells[i].outputs))
        removed = True
    return removed


_STYLE = re.compile(r"<style[^>]*>.*?</style>", re.S | re.I)
_BODY = re.compile(r"<body[^>]*>(.*)</body>", re.S | re.I)
_TITLE = re.compile(r"<title>(.*?)</title>", re.S | re.I)


def sanitize_page(page: str) -> str:
    """A feedback page rebuilt from its template's styles and its sanitized body."""
    head_end = page.lower().find("<body")
    head = page[:head_end] if head_end >= 0 else ""
    styles = "".join(s for s in _STYLE.findall(head) if "</style" not in s[7:-8].lower())
    m = _BODY.search(page)
    body = clean_html(m.group(1) if m else page)
    t = _TITLE.search(head)
    title = html.escape(html.unescape(t.group(1))) if t else "Feedback"
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title>"
            f"<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
            f"style-src 'unsafe-inline'\">{styles}</head>\n<body>{body}</body></html>\n")
