"""The course website (``make site``, tools/website.py): built from the student lessons, checked in a browser.

The site is built once for this module into a scratch folder. Without a browser the build is still
checked: one page per lesson in notebooks/, the course map with each lesson's goals, points and run
time, the stored figures on the pages, no exercise output, and the guards (a planted solution block
or hidden-test marker fails the build, a page that loads a script from another host fails the
check). In headless Chromium (Debian's, see tests/chromium.py), served from a loopback HTTP server
with every request to another host blocked: every page loads with no console error, math is
typeset, every figure loads, internal links resolve, previous/next follow the course order, and
search finds each lesson by a word that only its prose uses.
"""

from __future__ import annotations

import collections
import functools
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools import website  # noqa: E402

REPO_URL = "https://github.com/example-org/attention-course"  # links only: never fetched
LESSONS = website.discover(ROOT / "notebooks")
NAMES = [p.stem for p in LESSONS]


def _can_cut_the_network() -> bool:
    """Whether this process may run a command in a network namespace of its own (root on Linux)."""
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "--net", "true"], capture_output=True).returncode == 0


OFFLINE = _can_cut_the_network()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """``make site``'s command, with no network at all where the machine allows it (unshare --net)."""
    out = tmp_path_factory.mktemp("site") / "site"
    cmd = [sys.executable, str(ROOT / "tools" / "website.py"), "build", "--out", str(out), "--repo-url", REPO_URL]
    result = subprocess.run((["unshare", "--net"] if OFFLINE else []) + cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"the site build failed:\n{result.stdout}\n{result.stderr[-3000:]}"
    return out


def _soup(path: Path):
    from bs4 import BeautifulSoup  # pydata-sphinx-theme's dependency

    return BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")


def _nb(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _image_outputs(nb: dict) -> int:
    return sum(1 for c in nb["cells"] for o in c.get("outputs", [])
               if any(k.startswith("image/") for k in o.get("data", {})))


# ---------------------------------------------------------------------------------------------
# The build (no browser)


def test_every_student_lesson_has_a_page_and_the_map_lists_it_in_order(site):
    assert NAMES == sorted(NAMES) and len(NAMES) >= 11
    for name in NAMES:
        assert (site / f"{name}.html").is_file(), f"no page for lesson {name}"
    soup = _soup(site / "index.html")
    linked = [a["href"] for a in soup.select("article h3 a[href]:not(.headerlink)")]
    assert linked == [f"{name}.html" for name in NAMES], "the course map does not list the lessons in order"
    assert (site / ".nojekyll").is_file(), "GitHub Pages would hide _static/ without .nojekyll"


def test_the_course_map_states_each_lessons_goals_points_and_run_time(site):
    soup = _soup(site / "index.html")
    for path in LESSONS:
        lesson = website.describe_lesson(path)
        assert lesson.goals, f"{path.stem}: its introduction has no 'In this lesson you will' list"
        assert lesson.points, f"{path.stem}: its introduction states no '**Points in this lesson: N**'"
        assert lesson.run_time, f"{path.stem}: its introduction states no '*Run time:*'"
        section = soup.select_one(f'article h3 a[href="{path.stem}.html"]').find_parent("section")
        goals = section.select(".lesson-goals li")
        assert len(goals) == len(lesson.goals), f"{path.stem}: {len(goals)} goals on the map, {len(lesson.goals)} in the lesson"
        facts = " ".join(section.select_one(".lesson-facts").get_text().split())
        assert f"Points: {lesson.points}" in facts and "Run time:" in facts and "not stated" not in facts, facts


def test_pages_show_the_stored_outputs_of_untouched_cells_and_none_under_exercises(site):
    for path in LESSONS:
        student, solution = _nb(path), _nb(ROOT / "solutions" / path.stem / path.name)
        staged = website.stage_notebook(path, ROOT / "solutions" / path.stem / path.name,
                                        website.describe_lesson(path), REPO_URL, "main")
        for cell in staged["cells"]:
            if cell["cell_type"] == "code" and website.nbgrader_md(cell):
                assert not cell["outputs"], f"{path.stem}: an exercise cell shows an output"
        expected = _image_outputs({"cells": [c for c in solution["cells"] if not website.nbgrader_md(c)]})
        assert _image_outputs(staged) == expected, f"{path.stem}: figures of the stored run missing"
        assert _image_outputs(student) == 0  # the figures come from the stored run, not the student file
        shown = _soup(site / f"{path.stem}.html").select(".cell_output img")
        assert len(shown) == expected, f"{path.stem}: {len(shown)} figures on the page, {expected} stored"


def test_exercises_read_as_the_student_gets_them_with_their_points(site):
    for path in LESSONS:
        student = _nb(path)
        page = _soup(site / f"{path.stem}.html")
        labels = [" ".join(x.get_text().split()) for x in page.select(".exercise-label")]
        graded = [c for c in student["cells"] if website.nbgrader_md(c)]
        assert len(labels) == len(graded), f"{path.stem}: {len(labels)} labels for {len(graded)} nbgrader cells"
        points = [website.nbgrader_md(c).get("points") for c in graded if website.nbgrader_md(c).get("grade")]
        labelled = [float(m.group(1)) for text in labels if (m := re.search(r"· (\d+(?:\.\d+)?) points?", text))]
        assert labelled == [float(p) for p in points], f"{path.stem}: points on the page {labelled} != {points}"
        text = page.get_text()
        stubs = sum(website._source(c).count("raise NotImplementedError()") for c in graded)
        assert text.count("raise NotImplementedError()") >= stubs, f"{path.stem}: a stub is missing"
        links = [a["href"] for a in page.select(".run-locally a[href]")]
        assert f"{REPO_URL}/blob/main/notebooks/{path.stem}/{path.name}" in links, links
        download = next(h for h in links if h.startswith("_downloads/"))
        assert (site / download).read_bytes() == path.read_bytes(), "the download is not the student notebook"


def _tiny_course(tmp_path: Path, extra: str = "11_probe") -> tuple[Path, Path]:
    """notebooks/ and solutions/ with lesson 00 and a new lesson ``extra`` (lesson 00 under another title)."""
    for kind in ("notebooks", "solutions"):
        first = ROOT / kind / "00_setup" / "00_setup.ipynb"
        for name in ("00_setup", extra):
            (tmp_path / kind / name).mkdir(parents=True)
        shutil.copy(first, tmp_path / kind / "00_setup" / "00_setup.ipynb")
        nb = _nb(first)
        nb["cells"][0]["source"] = "".join(nb["cells"][0]["source"]).replace(
            "# 00 · Setting up: how this course works", "# 11 · A lesson that just landed", 1)
        (tmp_path / kind / extra / f"{extra}.ipynb").write_text(json.dumps(nb))
    return tmp_path / "notebooks", tmp_path / "solutions"


def test_a_new_lesson_appears_on_the_site_when_it_lands(tmp_path):
    notebooks, solutions = _tiny_course(tmp_path)
    out = tmp_path / "out"
    lessons = website.build(out, notebooks=notebooks, solutions=solutions)
    assert [x.name for x in lessons] == ["00_setup", "11_probe"]
    assert "11 · A lesson that just landed" in (out / "index.html").read_text()
    nxt = _soup(out / "00_setup.html").select_one("a.right-next")
    assert nxt is not None and nxt["href"] == "11_probe.html"


PLANTS = {
    "solution block": ("code", "def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\n"),
    "hidden tests": ("code", "### BEGIN HIDDEN TESTS\nassert f() == 1\n### END HIDDEN TESTS\n"),
    "written model answer": ("markdown", "=== BEGIN SOLUTION ===\nBecause.\n=== END SOLUTION ==="),
}


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_a_planted_solution_or_hidden_test_fails_the_build_and_publishes_nothing(tmp_path, plant):
    notebooks, solutions = _tiny_course(tmp_path)
    path = notebooks / "11_probe" / "11_probe.ipynb"
    nb = _nb(path)
    kind, source = PLANTS[plant]
    cell = {"cell_type": kind, "id": "planted", "metadata": {}, "source": source}
    if kind == "code":
        cell |= {"outputs": [], "execution_count": None}
    nb["cells"].insert(3, cell)
    path.write_text(json.dumps(nb))
    out = tmp_path / "out"
    with pytest.raises(website.SiteError, match=r"11_probe.* cell 3"):
        website.build(out, notebooks=notebooks, solutions=solutions)
    assert not out.exists()


def test_a_stored_output_that_quotes_a_solution_line_fails_the_build(tmp_path):
    """A traceback through an exercise's solution, stored in an untouched cell, carries no marker."""
    notebooks, solutions = _tiny_course(tmp_path)
    path = solutions / "11_probe" / "11_probe.ipynb"
    nb = _nb(path)
    solution = next(c for c in nb["cells"] if "BEGIN SOLUTION" in website._source(c))
    line = website._source(solution).split("BEGIN SOLUTION")[1].splitlines()[1]
    untouched = next(c for c in nb["cells"] if c["cell_type"] == "code" and not website.nbgrader_md(c))
    untouched["outputs"] = [{"output_type": "error", "ename": "RuntimeError", "evalue": "boom",
                             "traceback": ["Traceback (most recent call last):", f"---> 3 {line}"]}]
    path.write_text(json.dumps(nb))
    out = tmp_path / "out"
    with pytest.raises(website.SiteError, match="quotes the solution line"):
        website.build(out, notebooks=notebooks, solutions=solutions)
    assert not out.exists()


def test_a_marker_that_reaches_a_page_another_way_fails_the_build_and_keeps_the_old_site(tmp_path):
    """The second guard: whatever the route, the built pages are scanned before they are published."""
    conf = tmp_path / "website"
    shutil.copytree(ROOT / "website", conf)
    index = conf / "index.md"
    index.write_text(index.read_text() + "\n```python\n### BEGIN HIDDEN TESTS\n```\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.html").write_text("the site published before")
    with pytest.raises(website.SiteError, match=r"index\.html: carries 'BEGIN HIDDEN TESTS'"):
        website.build(out, notebooks=_tiny_course(tmp_path)[0], conf_dir=conf)
    assert (out / "index.html").read_text() == "the site published before"


def test_the_check_refuses_a_page_that_loads_from_another_host(tmp_path, capsys):
    (tmp_path / "index.html").write_text('<html><script src="https://cdn.example.org/mathjax.js"></script></html>')
    assert website.main(["check", str(tmp_path)]) == 1
    assert "loads an asset from another host" in capsys.readouterr().err
    (tmp_path / "index.html").write_text('<html><script src="_static/mathjax/tex-chtml.js"></script>'
                                         '<a href="https://example.org/">a link is fine</a></html>')
    assert website.main(["check", str(tmp_path)]) == 0


def test_the_build_needs_no_network(site):
    if not OFFLINE:
        pytest.skip("cannot run the build without a network here (unshare --net needs root on Linux)")
    assert (site / "index.html").is_file()  # the module's site was built in a namespace with no network


def test_the_site_folder_is_git_ignored():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "build/site/index.html"])
    assert ignored.returncode == 0, "build/site/ (make site's output) is not git-ignored"


# ---------------------------------------------------------------------------------------------
# In a real browser


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no request log on the test's output
        pass


@pytest.fixture(scope="module")
def served(site):
    """The site over HTTP on a free loopback port (as a static host serves it)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser():
    from chromium import launch, require_chromium

    executable = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p, executable)
        try:
            yield b
        finally:
            b.close()


def _watched(browser, served: str):
    """A new browser context and page, and the list its problems go to: console errors, uncaught
    exceptions, failed loads, HTTP errors, and requests to any other host (blocked)."""
    context = browser.new_context(viewport={"width": 1300, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    problems: list[str] = []
    page.on("console", lambda m: m.type == "error" and problems.append(f"console error: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"uncaught: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"failed: {r.url} ({r.failure})"))
    page.on("response", lambda r: r.status >= 400 and problems.append(f"HTTP {r.status}: {r.url}"))

    def only_this_host(route):
        if route.request.url.startswith((served, "data:")):
            route.continue_()
        else:
            problems.append(f"request to another host: {route.request.url}")
            route.abort()

    context.route("**/*", only_this_host)
    return context, page, problems


@pytest.fixture
def page(browser, served):
    context, page, problems = _watched(browser, served)
    page.problems = problems
    try:
        yield page
    finally:
        context.close()


COLLECT = """async () => {
  if (document.querySelector('.math')) {
    while (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) await new Promise(r => setTimeout(r, 50));
    await MathJax.startup.promise;
  }
  const images = [...document.images];
  const loaded = await Promise.all(images.map(i => { i.loading = 'eager'; return i.decode().then(() => true, () => false); }));
  const maths = [...document.querySelectorAll('span.math, div.math')];
  return {
    math: maths.length,
    typeset: maths.filter(e => e.querySelector('mjx-container')).length,
    merror: document.querySelectorAll('mjx-merror, mjx-container [data-mjx-error]').length,
    images: images.map((i, k) => ({src: i.currentSrc || i.src, ok: loaded[k] && i.naturalWidth > 0})),
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    prev: document.querySelector('a.left-prev')?.href ?? null,
    next: document.querySelector('a.right-next')?.href ?? null,
  };
}"""


@pytest.fixture(scope="module")
def visits(site, served, browser):
    """Every HTML page of the site, visited once: what it loaded, typeset and links to."""
    found = {}
    for path in sorted(site.rglob("*.html")):
        if "_static" in path.parts:
            continue
        rel = path.relative_to(site).as_posix()
        context, page, problems = _watched(browser, served)
        page.goto(served + rel, wait_until="load")
        facts = page.evaluate(COLLECT)
        page.wait_for_load_state("networkidle")
        facts["problems"] = problems
        found[rel] = facts
        context.close()
    return found


@pytest.mark.slow
def test_every_page_loads_with_no_console_error_and_nothing_from_another_host(visits):
    assert len(visits) >= len(NAMES) + 1
    bad = {rel: v["problems"] for rel, v in visits.items() if v["problems"]}
    assert not bad, f"pages with problems: {bad}"


@pytest.mark.slow
def test_math_is_typeset_on_every_page(visits):
    for name in NAMES:
        assert visits[f"{name}.html"]["math"] > 0, f"{name}: no math on the page"
    for rel, v in visits.items():
        assert v["typeset"] == v["math"], f"{rel}: {v['math'] - v['typeset']} of {v['math']} formulas not typeset"
        assert v["merror"] == 0, f"{rel}: MathJax shows {v['merror']} errors"


@pytest.mark.slow
def test_every_figure_image_loads(visits):
    figures = [img for v in visits.values() for img in v["images"] if "/_images/" in img["src"]]
    assert len(figures) >= len(NAMES), "the lessons' figures are not on the pages"
    broken = [(rel, img["src"]) for rel, v in visits.items() for img in v["images"] if not img["ok"]]
    assert not broken, f"images that did not load: {broken}"


@pytest.mark.slow
def test_internal_links_resolve(visits, served):
    targets = collections.defaultdict(set)
    for rel, v in visits.items():
        for href in v["links"]:
            if href.startswith(served):
                url, _, fragment = href.partition("#")
                targets[url].add((fragment, rel))
    assert targets
    for url, uses in sorted(targets.items()):
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = response.read().decode("utf-8", errors="replace")
        except OSError as err:
            pytest.fail(f"{url} (linked from {sorted({r for _, r in uses})[:3]}) does not load: {err}")
        if not url.endswith(".html") and not url.endswith("/"):
            continue
        ids = set(re.findall(r'\b(?:id|name)="([^"]+)"', body))
        missing = sorted((urllib.parse.unquote(f), r) for f, r in uses if f and urllib.parse.unquote(f) not in ids)
        assert not missing, f"{url}: anchors that do not exist: {missing[:5]}"


@pytest.mark.slow
def test_previous_and_next_follow_the_course_order(visits, served):
    order = ["index.html"] + [f"{name}.html" for name in NAMES]
    for k, rel in enumerate(order):
        v = visits[rel]
        assert v["prev"] == (served + order[k - 1] if k else None), f"{rel}: previous is {v['prev']}"
        assert v["next"] == (served + order[k + 1] if k + 1 < len(order) else None), f"{rel}: next is {v['next']}"


def _plain(text: str) -> str:
    """Markdown without math, inline code and link targets: the words a reader sees."""
    return re.sub(r"\$\$.*?\$\$|\$[^$\n]*\$|`[^`]*`|\]\([^)]*\)", " ", text, flags=re.DOTALL)


def _words(text: str) -> list[str]:
    return [w.lower() for w in re.findall(r"\b[A-Za-z]{8,}\b", _plain(text))]


def _distinctive_words() -> dict[str, str]:
    """Per lesson, the most frequent word of its prose that no other lesson uses anywhere."""
    cells = {p.stem: _nb(p)["cells"] for p in LESSONS}
    anywhere = {n: set(_words(" ".join(website._source(c) for c in cs))) for n, cs in cells.items()}
    chosen = {}
    for name, cs in cells.items():
        others = set().union(*(w for n, w in anywhere.items() if n != name))
        prose = " ".join(website._source(c) for c in cs if c["cell_type"] == "markdown")
        counts = collections.Counter(w for w in _words(prose) if w not in others)
        if counts:
            chosen[name] = min(counts, key=lambda w: (-counts[w], w))
    return chosen


def _search_hits(page) -> list[str]:
    """The result links of the search page, once Sphinx's search has finished.

    Sphinx lists the results one by one (a timer between them) and fetches each result page for its snippet
    without waiting: the summary element exists from the start, so wait for its final text, then for the
    snippet fetches to end (navigating away earlier aborts them, which would count as failed requests).
    """
    page.wait_for_function("() => /Search finished|did not match/.test("
                           "document.querySelector('#search-results .search-summary')?.innerText || '')")
    page.wait_for_load_state("networkidle")
    return page.eval_on_selector_all("#search-results ul.search li a", "els => els.map(a => a.getAttribute('href'))")


@pytest.mark.slow
def test_search_finds_each_lesson_by_a_word_of_its_prose(page, served):
    words = _distinctive_words()
    assert len(words) >= len(NAMES) - 1, f"no distinctive word for {sorted(set(NAMES) - set(words))}"
    for name, word in words.items():
        page.goto(f"{served}search.html?q={urllib.parse.quote(word)}")
        hits = _search_hits(page)
        assert any(h.split("#")[0] == f"{name}.html" for h in hits), f"searching {word!r} does not find {name}: {hits}"
    assert not page.problems, page.problems


@pytest.mark.slow
def test_the_search_box_on_the_landing_page_finds_a_lesson(page, served):
    name, word = next(iter(_distinctive_words().items()))
    page.goto(served + "index.html")
    page.locator("button.search-button-field:visible").first.click()
    box = page.locator("input[name='q']:visible").first
    box.fill(word)
    box.press("Enter")
    page.wait_for_url(re.compile(r"search\.html\?q="))
    hits = _search_hits(page)
    assert any(h.split("#")[0] == f"{name}.html" for h in hits), f"the search box's {word!r} does not find {name}"
    assert not page.problems, page.problems
