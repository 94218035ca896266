"""A real browser (Debian chromium via Playwright) on a neuron page of a live server."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.live_server import serve

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]


def test_neuron_page_renders_examples_and_toggles_heatmaps(tiny_db, tmp_path):
    from playwright.sync_api import sync_playwright

    with serve(tiny_db.path) as base:
        slug = httpx.get(f"{base}/-/health").json()["models"][0]
        layer = httpx.get(f"{base}/models/{slug}.json").json()["layers"][-1]
        listing = httpx.get(base + layer["json"]).json()
        url = base + listing["neurons"][0]["url"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(url)
                page.wait_for_load_state("networkidle")
                # every example thumbnail decoded (lazy ones scrolled into view first)
                thumbs = page.locator("img.thumb")
                count = thumbs.count()
                assert count == len(httpx.get(url + ".json").json()["examples"]) > 0
                for i in range(count):
                    thumbs.nth(i).scroll_into_view_if_needed()
                page.wait_for_function(
                    "() => [...document.querySelectorAll('img.thumb')].every(i => i.complete)", timeout=15_000
                )
                widths = page.eval_on_selector_all("img.thumb", "imgs => imgs.map(i => i.naturalWidth)")
                assert all(w > 0 for w in widths), widths
                # heatmap overlays: hidden until the toggle is on, then visible; decoded PNGs
                overlay = page.locator("img.overlay").first
                assert float(overlay.evaluate("e => getComputedStyle(e).opacity")) == 0
                page.click("label.toggle")
                page.wait_for_timeout(400)  # CSS transition
                assert float(overlay.evaluate("e => getComputedStyle(e).opacity")) > 0.5
                assert overlay.evaluate("e => e.naturalWidth") > 0
                # the choice survives a reload (localStorage) and the keyboard toggles it
                page.reload()
                page.wait_for_load_state("networkidle")
                assert page.is_checked("#overlay-toggle")
                page.keyboard.press("h")
                assert not page.is_checked("#overlay-toggle")
                # the histogram is drawn inline
                assert page.locator("figure.histogram svg rect.bar").count() > 0
                page.screenshot(path=str(tmp_path / "neuron.png"), full_page=True)
                assert not errors, errors
            finally:
                browser.close()
