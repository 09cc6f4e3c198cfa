"""Debian's Chromium driven by Playwright (never a browser Playwright downloads), and what browser tests share."""

from __future__ import annotations

import os
from pathlib import Path

CHROMIUM = os.environ.get("DESK_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 800}
# Screenshots for people to look at (git-ignored): the queue and the case page as an officer sees them.
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
SERIOUS = ("serious", "critical")


def launch(playwright):
    """Headless Chromium from /usr/bin/chromium (.ci/run installs Debian's package)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path


def serious_violations(page) -> list[dict]:
    """axe-core's serious and critical violations on the page as it is now (axe bundled with the package)."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    return [{"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
            for v in results.response["violations"] if v.get("impact") in SERIOUS]


def has_horizontal_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth > document.documentElement.clientWidth")
