"""Screenshot a report in headless Chromium (Debian's package) for the README:

    python scripts/screenshot_report.py valuerec-demo/report.html docs/report.png
"""

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

src, dst = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
with sync_playwright() as pw:
    browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=[
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
    page = browser.new_page(viewport={"width": 1200, "height": 1500})
    page.goto(src.as_uri())
    page.wait_for_selector("#gain-chart .main-svg")
    page.locator("#value").scroll_into_view_if_needed()
    page.screenshot(path=str(dst), clip={"x": 0, "y": page.locator("#value").bounding_box()["y"] - 20,
                                         "width": 1200, "height": 1500})
    browser.close()
print(f"wrote {dst}")
