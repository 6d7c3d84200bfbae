"""Opening a page in headless Chromium (Debian's `chromium`, driven by Playwright) for the HTML tests."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass
class LoadedPage:
    text: str  # what the page shows, as the browser lays it out
    images: list[tuple[str, int]]  # (alt, natural width) of every <img>
    requests: list[str] = field(default_factory=list)  # every URL the page asked for, itself included
    errors: list[str] = field(default_factory=list)  # console errors and uncaught page errors


def chromium_or_skip() -> str:
    """The browser's path; without it (or Playwright) the test skips, except under CI=true, where it fails:
    .ci/run installs both, so a missing one there is a broken set-up, not a reason to pass quietly."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        browser = None
    if browser is None:
        why = "needs Chromium (apt-get install chromium) and Playwright (pip install -e '.[dev]')"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the browser test cannot run: it {why}")
        pytest.skip(why)
    return browser


def load_page(path: Path, screenshot: Path) -> LoadedPage:
    """Open `path` from disk as a person would, record what it fetched and said, and save a screenshot."""
    from playwright.sync_api import sync_playwright

    browser_path = chromium_or_skip()
    with sync_playwright() as playwright:
        # --no-sandbox: CI containers run as root, where Chromium refuses its sandbox.
        browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            loaded = LoadedPage("", [])
            page.on("request", lambda request: loaded.requests.append(request.url))
            page.on("console", lambda message: loaded.errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: loaded.errors.append(str(error)))
            page.goto(path.resolve().as_uri(), wait_until="load")
            loaded.images = [tuple(item) for item in page.evaluate(
                "Array.from(document.images, i => [i.alt, i.complete ? i.naturalWidth : 0])")]
            loaded.text = page.inner_text("body")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return loaded


def assert_loads_cleanly(path: Path, screenshot: Path) -> LoadedPage:
    """Every image decoded, nothing fetched but the file itself (data: URIs are not requests), no error."""
    loaded = load_page(path, screenshot)
    assert loaded.images, "the page shows no image"
    assert all(width > 0 for _, width in loaded.images), loaded.images
    assert [url for url in loaded.requests if not url.startswith("data:")] == [path.resolve().as_uri()], \
        loaded.requests
    assert loaded.errors == []
    assert screenshot.read_bytes().startswith(b"\x89PNG")
    return loaded
