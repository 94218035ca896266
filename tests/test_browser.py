"""A real browser (Debian chromium via Playwright) on pages of a live ``conceptscope serve``."""

from __future__ import annotations

from collections.abc import Iterator
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


@pytest.fixture(scope="module")
def server(tiny_db) -> Iterator[str]:
    with serve(tiny_db.path) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def last_layer(base: str) -> dict[str, object]:
    slug = httpx.get(f"{base}/-/health").json()["models"][0]
    return httpx.get(f"{base}/models/{slug}.json").json()["layers"][-1]


def test_neuron_page_renders_examples_and_toggles_heatmaps(server, browser, tmp_path):
    listing = httpx.get(server + last_layer(server)["json"]).json()
    url = server + listing["neurons"][0]["url"]
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
    page.close()


def test_layer_grid_sorts_in_place_with_htmx(server, browser):
    layer = last_layer(server)
    by_max = httpx.get(server + layer["json"], params={"sort": "max"}).json()["neurons"]
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server + layer["url"])
    page.wait_for_load_state("networkidle")
    page.evaluate("window.notReloaded = true")
    assert page.locator(".neuron-tile strong").first.inner_text() == "0"
    page.select_option("select[name=sort]", "max")
    page.wait_for_url("**sort=max**")
    page.wait_for_function(
        f"() => document.querySelector('.neuron-tile strong').textContent === '{by_max[0]['unit']}'"
    )
    assert page.evaluate("window.notReloaded") is True  # swapped by htmx, no full page load
    assert page.input_value("select[name=order]") == "desc"  # the natural order of a statistic
    page.go_back()
    page.wait_for_function("() => document.querySelector('.neuron-tile strong').textContent === '0'")
    page.close()
