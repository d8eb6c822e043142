"""The course in a real browser: JupyterLab in headless Chromium runs a lesson through the UI.

JupyterLab is the course's user interface. This test starts it on a free loopback port with a
token, opens lesson 00 (the solution, quick mode) in Debian's ``chromium`` driven by Playwright
(pointed at the system browser: nothing is downloaded), runs all cells from the *Run* menu,
saves, and checks that every code cell ran, that outputs appear and that no cell shows an error;
then that nbgrader's formgrader page loads, and that JupyterLab's first-run news pop-up stays off
(``jupyter/lab-settings/overrides.json``, the setting ``make lab`` uses too).

Without a Chromium on the machine the test skips and says how to install one (``.ci/run``
installs it where it can). On a failure it saves a screenshot under ``build/browser-test/``
(git-ignored) and prints its path.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from chromium import launch, require_chromium

ROOT = Path(__file__).resolve().parents[1]
LESSON = Path(os.environ.get("COURSE_BROWSER_LESSON", ROOT / "solutions" / "00_setup" / "00_setup.ipynb"))
LAB_SETTINGS = ROOT / "jupyter" / "lab-settings"
SHOTS = ROOT / "build" / "browser-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a free loopback port, rooted in a scratch course folder."""
    browser = require_chromium()
    work = tmp_path_factory.mktemp("lab")
    nb = json.loads(LESSON.read_text())
    for cell in nb["cells"]:  # a fresh notebook: no stored outputs to mistake for this run's
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    (work / LESSON.name).write_text(json.dumps(nb))
    # The course's nbgrader configuration, rooted here (its gradebook goes to work/grading/).
    shutil.copy(ROOT / "nbgrader_config.py", work / "nbgrader_config.py")
    port, token = _free_port(), uuid.uuid4().hex
    env = dict(os.environ, COURSE_QUICK="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               JUPYTER_RUNTIME_DIR=str(work / ".runtime"), PYTHONPATH=str(ROOT))
    log = work / "lab.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={work}", f"--LabApp.app_settings_dir={LAB_SETTINGS}"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_server(f"http://127.0.0.1:{port}/api/status?token={token}", proc, log)
        yield {"base": f"http://127.0.0.1:{port}", "token": token, "work": work, "browser": browser, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def page(lab, request):
    """A headless Chromium page; on a failing test, a screenshot under build/browser-test/."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p, lab["browser"])
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        page.set_default_timeout(60_000)
        try:
            yield page
        finally:
            browser.close()


@contextlib.contextmanager
def screenshot_on_failure(page, name: str, log: Path):
    try:
        yield
    except BaseException:
        SHOTS.mkdir(parents=True, exist_ok=True)
        shot = SHOTS / f"{name}.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"\nbrowser test failed: screenshot saved to {shot}\nJupyterLab log: {log}")
        raise


def _code_cell_prompts(page) -> list[str]:
    return page.locator(".jp-Notebook .jp-CodeCell .jp-InputArea-prompt").all_text_contents()


@pytest.mark.slow
def test_a_lesson_runs_in_jupyterlab_in_a_real_browser(lab, page):
    with screenshot_on_failure(page, "lesson", lab["log"]):
        _run_a_lesson(lab, page)


class StepNeverHappened(AssertionError):
    """A step of the browser test that did not happen in time (the message names it)."""


def _api(lab, path: str):
    with urllib.request.urlopen(f"{lab['base']}{path}?token={lab['token']}", timeout=5) as response:
        return json.loads(response.read())


def _kernel_of_the_notebook(lab) -> dict | None:
    """The server's record of the notebook's kernel (execution_state, connections), or None without a session."""
    for session in _api(lab, "/api/sessions"):
        if session.get("path", "").endswith(LESSON.name) and session.get("kernel"):
            return _api(lab, f"/api/kernels/{session['kernel']['id']}")
    return None


def _wait_until_kernel_ready(lab, timeout: float = 180.0) -> None:
    """The real condition to run cells on: a session, its kernel connected to this page and idle."""
    deadline, kernel = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            kernel = _kernel_of_the_notebook(lab)
            if kernel and kernel.get("connections", 0) >= 1 and kernel.get("execution_state") == "idle":
                return
        time.sleep(0.5)
    if kernel is None:
        raise StepNeverHappened(f"no kernel session for {LESSON.name} was started within {timeout:.0f} s")
    if kernel.get("connections", 0) < 1:
        raise StepNeverHappened(f"the notebook's kernel never connected to the page within {timeout:.0f} s "
                                f"(state {kernel.get('execution_state')!r})")
    raise StepNeverHappened(f"the notebook's kernel never became idle within {timeout:.0f} s "
                            f"(state {kernel.get('execution_state')!r})")


def _ran(prompt: str) -> bool:
    """A code cell's prompt after it ran or while it runs: ``[3]:`` or ``[*]:`` (not ``[ ]:``)."""
    inner = prompt.strip().removeprefix("[").removesuffix(":").removesuffix("]").strip()
    return inner == "*" or inner.isdigit()


def _run_all_cells(page, tries: int = 3, wait: float = 30.0) -> None:
    """Run > Run All Cells, as a student would; again if the first cell did not start (the command did not take)."""
    for _ in range(tries):
        page.locator(".jp-Notebook").first.click()
        page.locator(".lm-MenuBar-item", has_text="Run").first.click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            prompts = _code_cell_prompts(page)
            if prompts and _ran(prompts[0]):
                return
            time.sleep(0.5)
    raise StepNeverHappened(f"Run All Cells was chosen {tries} times with the kernel idle, but the first cell "
                            f"never started executing (prompts: {_code_cell_prompts(page)[:5]})")


def _run_a_lesson(lab, page):
    page.goto(f"{lab['base']}/lab/tree/{LESSON.name}?token={lab['token']}")
    try:
        page.locator(".jp-Notebook .jp-CodeCell").first.wait_for()
    except Exception as e:  # noqa: BLE001  (playwright's TimeoutError)
        raise StepNeverHappened(f"the notebook {LESSON.name} never showed its cells: {e}") from None
    page.locator(".jp-Notebook").first.click()
    try:
        page.wait_for_function("document.querySelector('.jp-NotebookPanel-toolbar')?.innerText.includes('Python')")
    except Exception as e:  # noqa: BLE001
        raise StepNeverHappened(f"the notebook's toolbar never named the Python kernel: {e}") from None
    _wait_until_kernel_ready(lab)
    _run_all_cells(page)
    n_code = page.locator(".jp-Notebook .jp-CodeCell").count()
    tracebacks = page.locator(".jp-OutputArea-output", has_text="Traceback (most recent call last)")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and tracebacks.count() == 0:  # Run All stops at an error
        prompts = _code_cell_prompts(page)
        if len(prompts) == n_code and all(_ran(p) and "*" not in p for p in prompts):
            break
        time.sleep(1.0)
    # no cell shows an error, every cell ran, outputs appear
    assert tracebacks.count() == 0, f"a cell shows an error:\n{tracebacks.first.text_content()[-2000:]}"
    prompts = _code_cell_prompts(page)
    if not all(_ran(p) and "*" not in p for p in prompts):
        raise StepNeverHappened(f"the cells started but not every one finished within 240 s: {prompts}")
    assert page.locator(".jp-OutputArea-output").count() >= 3, "the lesson's cells show no outputs"
    # save through the UI and read the saved notebook: executed in order, no error output
    page.keyboard.press("Control+s")
    deadline = time.monotonic() + 30
    saved = lab["work"] / LESSON.name
    nb = {}
    while time.monotonic() < deadline:
        nb = json.loads(saved.read_text())
        cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
        if all(c.get("execution_count") for c in cells):
            break
        time.sleep(0.5)
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in cells), "the saved notebook has cells that did not run"
    errors = [o for c in cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors, f"saved error output: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    # the course's settings keep the news pop-up away
    assert page.get_by_text("official Jupyter news").count() == 0, "JupyterLab's news pop-up is showing"


@pytest.mark.slow
def test_the_formgrader_page_loads(lab, page):
    with screenshot_on_failure(page, "formgrader", lab["log"]):
        _open_the_formgrader(lab, page)


def _open_the_formgrader(lab, page):
    response = page.goto(f"{lab['base']}/formgrader?token={lab['token']}")
    assert response is not None and response.status == 200, f"formgrader answered {response and response.status}"
    page.get_by_text("Manage Assignments").first.wait_for()
    assert "error" not in page.title().lower()
