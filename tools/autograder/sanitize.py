"""Make graded notebooks and feedback pages safe to publish (to students and in the formgrader).

``sanitize_notebook`` (the worker, on the autograded notebook, before feedback):
attachments removed; markdown passed through ``nh3`` (the Rust sanitizer ammonia:
an allowlist of formatting tags, no scripts, no event handlers, no ``style``);
raw cells shown as text; outputs reduced to ``text/plain``, PNG and JPEG images
(each at most ``max_image`` bytes), streams and errors: no HTML, JavaScript, SVG,
widgets or other rich outputs.

``sanitize_page`` (the parent, on every feedback page before it is placed in
``grading/``): the template's ``<style>`` blocks kept, everything in the body
passed through ``nh3``, no ``<script>`` or ``<link>`` anywhere.
"""

from __future__ import annotations

import html
import re

import nh3

TAGS = {"a", "abbr", "b", "blockquote", "br", "code", "dd", "del", "details", "div", "dl", "dt", "em", "h1", "h2",
        "h3", "h4", "h5", "h6", "hr", "i", "img", "kbd", "li", "ol", "p", "pre", "s", "span", "strong", "sub",
        "summary", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul"}
ATTRIBUTES = {"*": {"class", "id", "title"}, "a": {"href"}, "img": {"src", "alt", "width", "height"},
              "td": {"colspan", "rowspan"}, "th": {"colspan", "rowspan"}}
URL_SCHEMES = {"http", "https", "mailto", "data"}
KEPT_MIME = ("text/plain", "image/png", "image/jpeg")
MAX_IMAGE = 1_000_000  # characters of base64 per image
_HTML_LIKE = re.compile(r"<\s*[A-Za-z!/?]")
_ATTACHMENT = re.compile(r"!\[([^\]]*)\]\(\s*attachment:[^)]*\)")


def clean_html(fragment: str) -> str:
    return nh3.clean(fragment, tags=TAGS, attributes=ATTRIBUTES, url_schemes=URL_SCHEMES, link_rel="noopener")


def sanitize_notebook(nb, max_image: int = MAX_IMAGE):
    """``nb`` made safe in place (see the module docstring); returns it."""
    for cell in nb.cells:
        if cell.pop("attachments", None) is not None or (cell.cell_type != "code" and "attachment:" in cell.source):
            cell.source = _ATTACHMENT.sub(r"[\1: attachment removed by the grader]", cell.source)
            cell.source = cell.source.replace("attachment:", "removed-attachment:")
        cell.metadata = {k: v for k, v in cell.get("metadata", {}).items() if k in ("nbgrader", "tags")}
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
