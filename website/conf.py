"""Sphinx configuration of the course website (tools/website.py copies it beside the staged lessons).

Sphinx + MyST-NB + sphinx-book-theme: the stack Jupyter Book 1 wraps, used directly. The notebooks
are rendered with their stored outputs (never executed here), math is typeset by the MathJax 3 that
sphinx-mathjax-offline bundles, search is Sphinx's own (an index shipped with the pages): nothing is
fetched at build or view time.
"""

import json
from pathlib import Path

course = json.loads((Path(__file__).parent / "course.json").read_text())
repository_url = course["repository_url"]

project = "Attention and Transformers, built from scratch"
author = "the course's authors"
copyright = "the course's authors, MIT licence"

extensions = [
    "myst_nb",  # notebooks and MyST markdown
    "sphinx-mathjax-offline",  # MathJax 3 served from _static/, no CDN
    "sphinx.ext.githubpages",  # .nojekyll, so GitHub Pages serves _static/
]
exclude_patterns = ["_student", "course.json", "**/.ipynb_checkpoints"]

# Notebooks: the stored outputs, never re-executed; streams of one cell shown as one block.
nb_execution_mode = "off"
nb_merge_streams = True
nb_ipywidgets_js = {}  # no widget manager from a CDN (the staged notebooks carry no widgets)
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3
# MyST makes the lessons' own "1. Masked softmax" headings into anchors; a lesson's title is its page.
suppress_warnings = ["myst.header"]

html_theme = "sphinx_book_theme"
html_title = project
html_static_path = ["_static"]
html_css_files = ["course.css"]
html_favicon = "_static/favicon.svg"
html_copy_source = False  # the download link serves the student notebook; no other source copy
html_show_sourcelink = False
html_last_updated_fmt = None
html_context = {"default_mode": "auto"}  # the reader's light or dark preference (empty logs a console error)
html_theme_options = {
    "home_page_in_toc": True,
    "show_navbar_depth": 1,
    "show_toc_level": 2,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "navigation_with_keys": False,
    "show_prev_next": True,
}
if repository_url:
    html_theme_options |= {"repository_url": repository_url, "repository_branch": course["branch"],
                           "use_repository_button": True}
