"""Permalinks carry all state: each page's URL, opened in a fresh browser context, shows what the
first context showed (real chromium via Playwright, a real server with the live demo model)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.csrf_support import csrf_client
from tests.live_support import copy_db, encode, live_server

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def server(tiny_db, demo_loaded, tmp_path_factory) -> Iterator[str]:
    url = copy_db(tiny_db.path, tmp_path_factory.mktemp("permalink_db"))
    with live_server(url, demo_loaded, "demo") as (base, _runner, _app):
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


def fresh_page(browser, width: int = 1280):
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    return context, page, errors


def analysis_state(page) -> dict[str, object]:
    return {
        "selected": page.locator(".hit.selected .hit-unit, .hit-main.active .hit-unit").all_inner_texts()[:1],
        "caption": page.locator("[data-overlay-caption]").inner_text().split(":")[0].strip(),
        "classes": page.input_value("#analysis-zeroshot input[name=classes]"),
        "ranked": page.locator(".prob-bars .prob-class").all_inner_texts(),
        "overlay": page.is_checked("#analysis-figure [data-overlay-toggle]"),
    }


def test_analysis_permalink_keeps_classes_neuron_and_overlay(server, browser) -> None:
    image = Image.new("RGB", (96, 96), (200, 30, 30))
    with csrf_client(server, timeout=120) as client:
        posted = client.post("/analyze.json", files={"image": ("red.png", encode(image, "PNG"), "image/png")})
    assert posted.status_code == 200, posted.text
    permalink = posted.json()["permalink"]
    context, page, errors = fresh_page(browser)
    page.goto(f"{server}{permalink}?classes=red%2C%20blue")
    page.wait_for_load_state("networkidle")
    assert page.locator(".prob-bars .prob-class").count() == 2
    # pick a neuron: the URL gains layer and unit and keeps the classes
    hit = page.locator(".hit-main").nth(1)
    unit = hit.get_attribute("data-unit")
    hit.click()
    page.wait_for_url(f"**unit={unit}**")
    assert "classes=" in page.url
    # classify again: the URL keeps layer and unit
    page.fill("#analysis-zeroshot input[name=classes]", "red, blue, green")
    page.click("#analysis-zeroshot button[type=submit]")
    page.wait_for_url("**green**")
    assert f"unit={unit}" in page.url and "layer=" in page.url
    page.wait_for_function("() => document.querySelectorAll('.prob-bars .prob-class').length === 3")
    # hide the heatmap: the URL says so
    page.click("#analysis-figure label.toggle")
    page.wait_for_url("**overlay=0**")
    shown = analysis_state(page)
    url = page.url
    # the copy button copies this full URL
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.click("a[data-copy-link]")
    page.wait_for_timeout(300)
    assert page.evaluate("navigator.clipboard.readText()") == url
    assert not errors, errors
    context.close()
    # a fresh context on the copied URL shows the same thing
    context, page, errors = fresh_page(browser)
    page.goto(url)
    page.wait_for_load_state("networkidle")
    again = analysis_state(page)
    assert again["classes"] == shown["classes"] == "red, blue, green"
    assert again["ranked"] == shown["ranked"] and len(again["ranked"]) == 3
    assert again["caption"] == shown["caption"] and unit in again["caption"]
    assert again["overlay"] is shown["overlay"] is False
    assert not errors, errors
    # the JSON twin of this state has the zero-shot result
    data = httpx.get(url.replace(permalink, permalink + ".json"), timeout=60).json()
    assert [r["class"] for r in data["zero_shot"]["ranked"]] == shown["ranked"]
    context.close()


def grid_state(page) -> dict[str, object]:
    return {
        "q": page.input_value("input[name=q]") if page.locator("input[name=q]").count() else None,
        "sort": page.input_value("select[name=sort]"),
        "order": page.input_value("select[name=order]"),
        "units": page.locator(".neuron-tile strong").all_inner_texts(),
    }


def test_layer_grid_state_survives_back_forward_and_fresh_contexts(server, browser) -> None:
    slug = httpx.get(f"{server}/-/health").json()["models"][0]
    layer = httpx.get(f"{server}/models/{slug}.json").json()["layers"][-1]
    context, page, errors = fresh_page(browser)
    page.goto(server + layer["url"])
    page.wait_for_load_state("networkidle")
    page.select_option("select[name=sort]", "max")
    page.wait_for_url("**sort=max**")
    page.wait_for_load_state("networkidle")
    sorted_state = grid_state(page)
    page.select_option("select[name=order]", "asc")
    page.wait_for_url("**order=asc**")
    page.wait_for_function(
        f"() => document.querySelector('.neuron-tile strong').textContent !== '{sorted_state['units'][0]}'"
    )
    asc_state = grid_state(page)
    asc_url = page.url
    page.go_back()
    page.wait_for_url("**order=desc**")
    page.wait_for_timeout(300)
    assert grid_state(page) == sorted_state  # the boxes show the restored URL's state
    page.go_forward()
    page.wait_for_url("**order=asc**")
    page.wait_for_timeout(300)
    assert grid_state(page) == asc_state
    assert not errors, errors
    context.close()
    context, page, errors = fresh_page(browser)
    page.goto(asc_url)
    page.wait_for_load_state("networkidle")
    assert grid_state(page) == asc_state
    context.close()


def test_neuron_overlay_and_list_and_compare(server, browser) -> None:
    slug = httpx.get(f"{server}/-/health").json()["models"][0]
    layer = httpx.get(f"{server}/models/{slug}.json").json()["layers"][-1]
    neurons = httpx.get(server + layer["json"]).json()["neurons"][:2]
    context, page, errors = fresh_page(browser, 390)
    for n in neurons:
        page.goto(server + n["url"])
        page.wait_for_load_state("networkidle")
        page.click("[data-add-to-list]")
    page.click("label.toggle")
    page.wait_for_url("**overlay=1**")
    overlay_url = page.url
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    link = page.locator("[data-list-link]")
    assert link.is_visible() and link.inner_text() == "My list (2)"
    link.click()
    page.wait_for_load_state("networkidle")
    assert page.locator(".unit-card").count() == 2
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.click("text=compare side by side")
    page.wait_for_load_state("networkidle")
    assert page.locator(".compare-grid .unit-card").count() == 2
    assert page.locator(".compare-grid figure.histogram").count() == 2
    assert not errors, errors
    context.close()
    context, page, _ = fresh_page(browser)
    page.goto(overlay_url)
    page.wait_for_load_state("networkidle")
    assert page.is_checked("#overlay-toggle")
    context.close()


def test_keyboard_skip_link_and_one_stop_drop_zone(server, browser) -> None:
    context, page, errors = fresh_page(browser)
    page.goto(f"{server}/analyze")
    page.wait_for_load_state("networkidle")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip-link"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    stops = []
    for _ in range(6):
        page.keyboard.press("Tab")
        stops.append(page.evaluate("document.activeElement.matches('[data-drop-zone], [data-drop-zone] *')"))
    assert stops.count(True) == 1  # the drop zone is one Tab stop
    page.goto(f"{server}/analyze")
    page.wait_for_load_state("networkidle")
    opened: list[object] = []
    page.on("filechooser", lambda chooser: opened.append(chooser))
    page.focus("[data-drop-zone]")
    page.keyboard.press("Enter")
    page.wait_for_timeout(1000)
    page.keyboard.press(" ")
    page.wait_for_timeout(1000)
    assert len(opened) == 2  # Enter and Space open the file chooser
    assert not errors, errors
    context.close()


def test_embed_loads_in_an_iframe_on_another_origin_and_pages_do_not(server, browser) -> None:
    slug = httpx.get(f"{server}/-/health").json()["models"][0]
    layer = httpx.get(f"{server}/models/{slug}.json").json()["layers"][-1]
    unit = httpx.get(server + layer["json"]).json()["neurons"][0]["unit"]
    path = f"/models/{slug}/layers/{layer['name']}/neurons/{unit}"
    oembed = httpx.get(f"{server}/-/oembed", params={"url": server + path}).json()
    html = (oembed["html"] + f'<iframe id="page" src="{server}{path}"></iframe>').encode()

    class Host(http.server.BaseHTTPRequestHandler):  # another origin that embeds the card
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *args: object) -> None:
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Host)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    context, page, _ = fresh_page(browser)
    page.goto(f"http://127.0.0.1:{other.server_address[1]}/")
    card = page.frame_locator("iframe[src*='/embed/']").locator(".embed-card")
    card.wait_for(timeout=30_000)
    assert f"unit {unit}" in card.inner_text()
    page.wait_for_timeout(1000)
    assert page.frame_locator("#page").locator(".neuron-head").count() == 0  # frame-ancestors 'none'
    context.close()
    other.shutdown()


WIDE_AND_NARROW = (1280, 390, 360)


def scroll_width(page) -> int:
    return int(page.evaluate("document.documentElement.scrollWidth"))


def active_hits(page) -> list[str]:
    return page.locator(".hit.selected .hit-main, .hit-main.active").evaluate_all(
        "els => [...new Set(els.map(e => e.dataset.unit))]"
    )


def test_analysis_fits_the_screen_and_its_active_hit_follows_back_forward(server, browser) -> None:
    image = Image.new("RGB", (96, 96), (200, 30, 30))
    with csrf_client(server, timeout=120) as client:
        posted = client.post("/analyze.json", files={"image": ("red.png", encode(image, "PNG"), "image/png")})
    assert posted.status_code == 200, posted.text
    url = f"{server}{posted.json()['permalink']}?classes=red"
    for width in WIDE_AND_NARROW:  # hit cards: percentile, z and value wrap inside the card
        context, page, errors = fresh_page(browser, width)
        page.goto(url)
        page.wait_for_load_state("networkidle")
        assert scroll_width(page) <= width, (width, scroll_width(page))
        assert page.locator(".hit [data-add-to-list]:visible").count() == page.locator(".hit").count() > 0
        assert not errors, errors
        context.close()
    context, page, errors = fresh_page(browser)
    page.goto(url)
    page.wait_for_load_state("networkidle")
    hits = page.locator(".hit-main")
    first, fourth = hits.nth(0).get_attribute("data-unit"), hits.nth(3).get_attribute("data-unit")
    hits.nth(0).click()
    page.wait_for_url(f"**unit={first}**")
    page.wait_for_load_state("networkidle")
    hits.nth(3).click()
    page.wait_for_url(f"**unit={fourth}**")
    page.wait_for_load_state("networkidle")
    assert active_hits(page) == [fourth]
    page.go_back()
    page.wait_for_url(f"**unit={first}**")
    page.wait_for_timeout(300)
    assert active_hits(page) == [first]  # not the hit clicked later
    assert f"unit {first}" in page.locator("[data-overlay-caption]").inner_text()
    page.go_back()
    page.wait_for_function("() => !location.search.includes('unit=')")
    page.wait_for_timeout(300)
    assert active_hits(page) == []
    page.go_forward()
    page.wait_for_url(f"**unit={first}**")
    page.wait_for_timeout(300)
    assert active_hits(page) == [first]
    page.go_forward()
    page.wait_for_url(f"**unit={fourth}**")
    page.wait_for_timeout(300)
    assert active_hits(page) == [fourth]
    assert not errors, errors
    # the preview image has its alt text
    html = httpx.get(url, timeout=60).text
    assert '<meta property="og:image:alt" content="' in html
    context.close()


def test_neuron_page_fits_phones_and_its_permalink_keeps_the_state(server, browser) -> None:
    slug = httpx.get(f"{server}/-/health").json()["models"][0]
    layer = httpx.get(f"{server}/models/{slug}.json").json()["layers"][-1]
    neuron = httpx.get(server + layer["json"]).json()["neurons"][0]
    for width in WIDE_AND_NARROW:
        context, page, errors = fresh_page(browser, width)
        page.goto(server + neuron["url"])
        page.wait_for_load_state("networkidle")
        assert scroll_width(page) <= width, (width, scroll_width(page))
        # every header link is on screen (the nav wraps; it does not scroll sideways)
        boxes = page.locator(".site-nav a:visible").evaluate_all(
            "els => els.map(e => { const r = e.getBoundingClientRect(); return [r.left, r.right]; })"
        )
        assert boxes and all(left >= 0 and right <= width for left, right in boxes), (width, boxes)
        assert page.evaluate("getComputedStyle(document.querySelector('.site-nav')).overflowX") == "visible"
        # the words' values are never clipped: each fits its own box
        spill = page.locator(".word-bars .value").evaluate_all(
            "els => els.filter(e => e.scrollWidth > e.clientWidth + 1).length"
        )
        assert spill == 0, width
        assert not errors, errors
        context.close()
    context, page, errors = fresh_page(browser, 390)
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.goto(server + neuron["url"])
    page.wait_for_load_state("networkidle")
    page.click("label.toggle")
    page.wait_for_url("**overlay=1**")
    page.click("a[data-copy-link]")
    page.wait_for_timeout(300)
    assert page.evaluate("navigator.clipboard.readText()") == page.url
    assert page.url.endswith("overlay=1")
    assert not errors, errors
    context.close()


def test_list_and_analyze_buttons_on_search_and_lists(server, browser) -> None:
    slug = httpx.get(f"{server}/-/health").json()["models"][0]
    layer = httpx.get(f"{server}/models/{slug}.json").json()["layers"][-1]
    units = [n["unit"] for n in httpx.get(server + layer["json"]).json()["neurons"][:2]]
    context, page, errors = fresh_page(browser)
    page.goto(f"{server}/search")
    page.wait_for_load_state("networkidle")
    page.type("input[name=q]", "red", delay=80)
    page.wait_for_timeout(350)
    page.keyboard.press("Enter")  # in place, no abort of the request typing started
    page.wait_for_function(
        "() => document.querySelectorAll('#search-results .result').length > 0", timeout=60_000
    )
    page.wait_for_load_state("networkidle")
    assert "q=red" in page.url
    # the queued requests may swap the results twice; each swap's buttons are shown once it settles
    page.wait_for_function(
        "() => { const rows = document.querySelectorAll('.result-list > li');"
        " return rows.length > 0 && [...rows].every(r => { const b = r.querySelector('[data-add-to-list]');"
        " return b && !b.hidden; }); }",
        timeout=30_000,
    )
    rows = page.locator(".result-list > li")
    assert rows.count() == page.locator(".result-list > li [data-add-to-list]:visible").count() > 0
    assert page.locator(".result-list > li button[name=example][form=analyze-example]").count() > 0
    rows.first.locator("[data-add-to-list]").click()
    assert page.locator("[data-list-link]").inner_text() == "My list (1)"
    assert not errors, errors
    refs = ",".join(f"{slug}/{layer['name']}/{u}" for u in units)
    for path in (f"/lists?units={refs}", f"/compare?units={refs}"):
        page.goto(server + path)
        page.wait_for_load_state("networkidle")
        assert page.locator(".unit-card [data-add-to-list]:visible").count() == 2
        assert page.locator(".card-thumbs button[name=example]").count() > 0
    page.locator(".card-thumbs button[name=example]").first.click()
    page.wait_for_url("**/analyses/**")
    page.wait_for_load_state("networkidle")
    assert page.locator(".hit").count() > 0
    assert not errors, errors
    context.close()
