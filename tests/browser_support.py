"""Headless Debian chromium (never `playwright install`) for the tests that check HTML reports."""

import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed")


@contextmanager
def report_page(path: Path, width: int = 1200, height: int = 900):
    """The report at ``path`` open in headless chromium once its first chart has drawn; yields
    (page, errors), ``errors`` collecting console errors and uncaught page exceptions."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(Path(path).as_uri())
            page.wait_for_selector("#gain-chart .main-svg")
            yield page, errors
        finally:
            browser.close()
