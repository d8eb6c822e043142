"""Headless Chromium for the browser tests: the system's browser driven by Playwright.

Playwright is pointed at Debian's ``chromium`` (or the binary named in ``COURSE_CHROMIUM``), so
nothing is downloaded. Without one the tests skip and say how to install it (``.ci/run`` installs
it where it can). Import from a test module: ``from chromium import launch, require_chromium``
(pytest puts tests/ on ``sys.path``).
"""

from __future__ import annotations

import os
import shutil

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# no sandbox (containers, root), no /dev/shm (small in containers), no GPU (headless servers)
LAUNCH_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]


def find_chromium() -> str | None:
    """``COURSE_CHROMIUM`` if set, else the first Chromium on ``PATH`` (None without one)."""
    explicit = os.environ.get("COURSE_CHROMIUM", "").strip()
    if explicit:
        return explicit
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def require_chromium() -> str:
    """The Chromium to drive; skips the calling test, saying how to get one, when there is none."""
    browser = find_chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine, so the browser test cannot run: install Debian's "
                    "`chromium` (apt-get install -y chromium; .ci/run does it when run as root) "
                    "or name a Chromium binary in COURSE_CHROMIUM")
    pytest.importorskip("playwright", reason="playwright is a dev extra: `make env` installs it")
    return browser


def launch(playwright, executable: str):
    """A headless Chromium browser (close it when done)."""
    return playwright.chromium.launch(executable_path=executable, headless=True, args=LAUNCH_ARGS)
