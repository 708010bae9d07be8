"""A real headless Chromium for the report and dashboard tests: Debian's chromium (.ci/run installs it) driven by
Playwright's Python package through ``executable_path``, so no browser is downloaded."""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from playwright.sync_api import Page, sync_playwright


def chromium_path() -> str:
    path = os.environ.get("AUTOTUNE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "a Chromium is needed: apt-get install -y chromium (.ci/run installs it), or set AUTOTUNE_CHROMIUM"
    return path


@contextmanager
def chromium_page(offline: bool = False) -> Iterator[tuple[Page, list[str]]]:
    """A page, and the URLs it requested; ``offline``: every request outside file: and data: is refused."""
    requested: list[str] = []
    with sync_playwright() as pw:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        browser = pw.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: requested.append(r.url))
            if offline:
                page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(("file:", "data:"))
                           else route.abort())
            yield page, requested
        finally:
            browser.close()


def plotted(page: Page, div_id: str) -> list[dict[str, Any]]:
    """The traces Plotly drew in a div: what the reader sees, as the browser holds it."""
    return page.evaluate("id => document.getElementById(id).data.map(t => ({meta: t.meta, x: Array.from(t.x || []),"
                         " y: Array.from(t.y || []), customdata: Array.from(t.customdata || []),"
                         " symbol: t.marker ? t.marker.symbol : null}))", div_id)
