"""The live runner and the analysis pages, against the real precompute output (``tiny_db``).

* the live analysis of a dataset image equals the precompute values for it (within 1e-4);
* a micro-batch of 8 concurrent requests equals 8 sequential ones (runner and HTTP);
* back-pressure: a full queue answers 503 with ``Retry-After``; per-request timeouts;
* stored analyses: permalink, JSON twin, heatmap htmx fragment, zero-shot, capped storage with
  oldest-first eviction, and ``--no-store``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

from app.db import from_bytes, make_engine, session_factory
from app.db.schema import Analysis, Blob, Image, Layer, Model, Neuron, TopExample
from app.live.runner import Busy, LiveRunner, LiveTimeout
from app.models import ModelSpec
from app.neurons import zeroshot
from app.web.uploads import decode_upload
from precompute import demo_world as world
from tests.csrf_support import csrf_client
from tests.live_support import copy_db, encode, live_server, make_runner

TOLERANCE = 1e-4


def demo_png(index: int) -> bytes:
    return encode(world.render(world.HELDOUT_SEED, index).image.convert("RGB"), "PNG")


@pytest.fixture(scope="module")
def facts(tiny_db) -> dict[str, Any]:
    """Precomputed values of the fixture DB: (layer, unit, image position) → value and heatmap."""
    engine = make_engine(tiny_db.url, create=False)
    with session_factory(engine)() as s:
        model = s.scalars(select(Model)).one()
        layers = {row.id: row for row in s.scalars(select(Layer).where(Layer.model_id == model.id))}
        rows = s.execute(
            select(Neuron.layer_id, Neuron.unit, Image.key, TopExample.value, TopExample.heatmap)
            .join(TopExample, TopExample.neuron_id == Neuron.id)
            .join(Image, Image.id == TopExample.image_id)
            .where(TopExample.rank < 2)
        ).all()
    engine.dispose()
    examples = []
    for layer_id, unit, key, value, heat in rows:
        layer = layers[layer_id]
        heatmap = from_bytes(heat, "float16", (layer.grid_h, layer.grid_w))
        examples.append((layer.name, unit, int(key.split("/")[-1]), float(value), heatmap))
    return {"slug": model.slug, "examples": examples}


@pytest.fixture(scope="module")
def server(tiny_db, demo_loaded, facts, tmp_path_factory) -> Iterator[tuple[str, LiveRunner, str]]:
    url = copy_db(tiny_db.path, tmp_path_factory.mktemp("live_db"))
    with live_server(url, demo_loaded, facts["slug"]) as (base, runner, _app):
        yield base, runner, url


@pytest.fixture(scope="module")
def http(server) -> Iterator[httpx.Client]:
    with csrf_client(server[0], timeout=60) as client:
        yield client


# ------------------------------------------------------------------ equality with precompute


async def test_live_analysis_equals_precompute_values(demo_loaded, facts) -> None:
    """Every (neuron, top image) pair of the index: the live value on the uploaded PNG matches."""
    examples = facts["examples"]
    positions = sorted({e[2] for e in examples})[:12]
    async with make_runner(demo_loaded, facts["slug"]) as runner:
        live = {}
        for position in positions:
            decoded = decode_upload(demo_png(position), max_pixels=10**8)
            live[position] = await runner.analyze(decoded.image, top_k=5)
    checked = 0
    for layer, unit, position, value, _heatmap in examples:
        if position not in live:
            continue
        got = float(live[position].values[layer][unit])
        assert abs(got - value) <= TOLERANCE, (layer, unit, position, got, value)
        assert abs(got - value) <= 1e-3 * abs(value) + 1e-7, (layer, unit, got, value)  # also relative
        checked += 1
    assert checked >= 10, checked
    # heatmaps of the live top neurons equal their maps (the max of the heatmap is the value)
    for acts in live.values():
        for layer, hits in acts.top.items():
            for hit in hits:
                assert abs(float(hit.heatmap.max()) - hit.value) <= 1e-6
            values = acts.values[layer]
            assert [h.unit for h in hits] == list(np.argsort(-values, kind="stable")[: len(hits)])


def test_http_analysis_equals_precompute(http: httpx.Client, facts) -> None:
    """Through HTTP: the top neurons of an uploaded dataset image carry the precomputed values."""
    by_image: dict[int, list[tuple[str, int, float, np.ndarray]]] = {}
    for layer, unit, position, value, heatmap in facts["examples"]:
        by_image.setdefault(position, []).append((layer, unit, value, heatmap))
    matched = 0
    for position, expected in sorted(by_image.items())[:10]:
        response = http.post(
            "/analyze.json?top_k=64", files={"image": ("x.png", demo_png(position), "image/png")}
        )
        assert response.status_code == 200, response.text
        got = {(layer["name"], n["unit"]): n for layer in response.json()["layers"] for n in layer["neurons"]}
        for layer, unit, value, heatmap in expected:
            if (layer, unit) in got:
                n = got[(layer, unit)]
                assert abs(n["value"] - value) <= min(TOLERANCE, 1e-3 * abs(value) + 1e-7)
                assert np.allclose(np.asarray(n["heatmap"]), heatmap, atol=2e-3 * max(1.0, abs(value)))
                matched += 1
    assert matched >= 5, matched


# ------------------------------------------------------------------------------ micro-batching


async def test_microbatch_of_8_concurrent_equals_8_sequential(demo_loaded, facts) -> None:
    images = [decode_upload(demo_png(i), max_pixels=10**8).image for i in range(8)]
    async with make_runner(demo_loaded, facts["slug"], max_batch=8) as runner:
        tensors = [runner.preprocess(image) for image in images]
        sequential = [await runner.analyze(t) for t in tensors]
        assert runner.stats.largest_batch == 1
        concurrent = await asyncio.gather(*(runner.analyze(t) for t in tensors))
        assert runner.stats.batch_sizes[8] == 1, runner.stats.batch_sizes  # one batch of 8
    for one, many in zip(sequential, concurrent, strict=True):
        for layer in one.values:
            np.testing.assert_allclose(many.values[layer], one.values[layer], rtol=1e-5, atol=1e-5)
            assert [h.unit for h in many.top[layer]] == [h.unit for h in one.top[layer]]
        np.testing.assert_allclose(many.embedding, one.embedding, rtol=1e-5, atol=1e-5)


async def test_a_selector_chooses_the_hits_from_every_unit_and_fails_alone(demo_loaded, facts) -> None:
    """``analyze(select=...)``: the hits are the units it picks from all values (not a raw top),
    in its order, with their maps; a selector that raises or picks a missing unit fails only its
    own request, not the others of its micro-batch."""
    seen: dict[str, int] = {}

    def weakest_three(layer: str, values: np.ndarray) -> list[int]:
        seen[layer] = len(values)
        return [int(u) for u in np.argsort(values, kind="stable")[:3]]

    def broken(layer: str, values: np.ndarray) -> list[int]:
        raise RuntimeError("no scale")

    def out_of_range(layer: str, values: np.ndarray) -> list[int]:
        return [len(values)]

    async with make_runner(demo_loaded, facts["slug"], max_batch=8) as runner:
        tensor = runner.preprocess(decode_upload(demo_png(11), max_pixels=10**8).image)
        outcomes = await asyncio.gather(
            runner.analyze(tensor, select=weakest_three),
            runner.analyze(tensor, select=broken),
            runner.analyze(tensor, select=out_of_range),
            runner.analyze(tensor, top_k=4),
            return_exceptions=True,
        )
        assert runner.stats.largest_batch == 4, runner.stats.batch_sizes  # one batch for all four
    chosen, failed, bad_unit, by_value = outcomes
    assert isinstance(failed, RuntimeError) and "no scale" in str(failed)
    assert isinstance(bad_unit, ValueError) and "not in layer" in str(bad_unit)
    assert set(seen) == set(chosen.values)
    for layer, values in chosen.values.items():
        assert seen[layer] == len(values)  # the selector saw every unit of the layer
        want = [int(u) for u in np.argsort(values, kind="stable")[:3]]
        assert [h.unit for h in chosen.top[layer]] == want
        for hit in chosen.top[layer]:
            assert hit.value == float(values[hit.unit])
            assert abs(float(hit.heatmap.max()) - hit.value) <= 1e-6  # its own map
        raw_top = list(np.argsort(-by_value.values[layer], kind="stable")[:4])
        assert [h.unit for h in by_value.top[layer]] == raw_top  # no selector: by raw value


async def test_batcher_waits_only_for_requests_on_their_way(demo_loaded, facts) -> None:
    # A minute of max wait: a batcher that waited for nobody would hang this test.
    async with make_runner(demo_loaded, facts["slug"], max_batch=8, max_wait_ms=60_000) as runner:
        tensor = runner.preprocess(decode_upload(demo_png(3), max_pixels=10**8).image)
        await asyncio.wait_for(runner.analyze(tensor), 30)  # nothing incoming: runs alone at once
        assert runner.stats.batch_sizes[1] == 1

        async def late() -> Any:
            with runner.incoming():  # being decoded, say
                await asyncio.sleep(0.05)
            return await runner.analyze(tensor)

        late_task = asyncio.create_task(late())
        await asyncio.sleep(0)  # late() is now marked incoming
        await asyncio.wait_for(asyncio.gather(runner.analyze(tensor), late_task), 30)
        assert runner.stats.batch_sizes[2] == 1, runner.stats.batch_sizes  # it waited for late()
        assert runner._incoming == 0  # noqa: SLF001


def test_http_uploads_leave_no_request_marked_incoming(http: httpx.Client, server) -> None:
    """Every route that marks an upload as on its way unmarks it, whatever the outcome."""
    runner = server[1]
    outcomes = [
        http.post("/analyze.json", files={"image": ("x.png", demo_png(7), "image/png")}).status_code,
        http.post("/analyze.json", files={"image": ("x.png", b"not an image", "image/png")}).status_code,
        http.post("/analyze.json", content=b"GIF89a truncated").status_code,
        http.post("/analyze", files={"image": ("x.png", b"not an image", "image/png")}).status_code,
        http.post("/analyze", files={"image": ("x.png", demo_png(8), "image/png")}).status_code,
    ]
    assert outcomes[0] == 200 and all(400 <= s < 500 for s in outcomes[1:4]) and outcomes[4] in (200, 303)
    assert runner._incoming == 0  # noqa: SLF001


def test_http_concurrent_requests_equal_sequential(http: httpx.Client, server) -> None:
    runner = server[1]
    files = [demo_png(100 + i) for i in range(8)]

    def post(data: bytes) -> dict[str, Any]:
        response = http.post("/analyze.json", files={"image": ("x.png", data, "image/png")})
        assert response.status_code == 200, response.text
        return response.json()

    sequential = [post(data) for data in files]
    before = runner.stats.largest_batch
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(post, files))
    for one, many in zip(sequential, concurrent, strict=True):
        assert one["id"] == many["id"]
        for la, lb in zip(one["layers"], many["layers"], strict=True):
            assert [n["unit"] for n in la["neurons"]] == [n["unit"] for n in lb["neurons"]]
            np.testing.assert_allclose(
                [n["value"] for n in la["neurons"]], [n["value"] for n in lb["neurons"]], rtol=1e-5, atol=1e-5
            )
    assert runner.stats.largest_batch >= max(before, 2), runner.stats.as_dict()


async def test_text_jobs_batch_and_generic_jobs_run_on_the_model_thread(demo_loaded, facts) -> None:
    async with make_runner(demo_loaded, facts["slug"]) as runner:
        single = [await runner.encode_texts([t]) for t in ("red", "a blue star", "circle")]
        together = await asyncio.gather(*(runner.encode_texts([t]) for t in ("red", "a blue star", "circle")))
        for a, b in zip(single, together, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
            assert abs(float(np.linalg.norm(a[0])) - 1.0) < 1e-5
        name = await runner.submit(lambda loaded, x: (threading.current_thread().name, x * 2), 21)
        assert name[0].startswith("live-model") and name[1] == 42

        def fails(loaded: Any) -> None:
            raise ValueError("from the model thread")

        with pytest.raises(ValueError, match="from the model thread"):
            await runner.submit(fails)
        assert (await runner.encode_texts(["still works"])).shape == (1, demo_loaded.embed_dim)


# ------------------------------------------------------------------------------ back-pressure


async def test_runner_queue_full_raises_busy_and_timeouts(demo_loaded, facts) -> None:
    gate, started = threading.Event(), threading.Event()

    def block(loaded: Any) -> None:
        started.set()
        gate.wait(30)

    async with make_runner(demo_loaded, facts["slug"], queue_size=2, timeout_s=0.5) as runner:
        blocker = asyncio.ensure_future(runner.submit(block, timeout=30))
        while not started.is_set():
            await asyncio.sleep(0.01)
        waiting = [asyncio.ensure_future(runner.encode_texts(["x"], timeout=30)) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert runner.queued == 2
        with pytest.raises(Busy) as info:
            await runner.encode_texts(["one too many"])
        assert info.value.retry_after >= 1
        assert runner.stats.rejected == 1
        gate.set()
        await blocker
        assert all(r.shape == (1, demo_loaded.embed_dim) for r in await asyncio.gather(*waiting))
        # a request that is not answered in time fails with LiveTimeout (queue stays usable)
        gate.clear()
        started.clear()
        blocker = asyncio.ensure_future(runner.submit(block, timeout=30))
        while not started.is_set():
            await asyncio.sleep(0.01)
        with pytest.raises(LiveTimeout):
            await runner.encode_texts(["too slow"])
        gate.set()
        await blocker
        assert (await runner.encode_texts(["fine again"])).shape[0] == 1


def test_http_queue_full_is_503_with_retry_after(tiny_db, demo_loaded, facts, tmp_path) -> None:
    url = copy_db(tiny_db.path, tmp_path)
    gate, started = threading.Event(), threading.Event()

    def block(loaded: Any) -> None:
        started.set()
        gate.wait(30)

    with live_server(url, demo_loaded, facts["slug"], runner_options={"queue_size": 2}) as (
        base,
        runner,
        app,
    ):

        async def start_blocker() -> dict[str, bool]:
            asyncio.ensure_future(runner.submit(block, timeout=60))
            return {"ok": True}

        app.add_api_route("/-/test/block", start_blocker, methods=["POST"])
        with csrf_client(base, timeout=60) as client, ThreadPoolExecutor(2) as pool:
            try:
                assert client.post("/-/test/block").status_code == 200
                assert started.wait(10)
                pending = [
                    pool.submit(
                        client.post, "/analyze.json", files={"image": ("a.png", demo_png(i), "image/png")}
                    )
                    for i in range(2)
                ]
                deadline = time.monotonic() + 10
                while runner.queued < 2 and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert runner.queued == 2
                busy = client.post("/analyze.json", files={"image": ("b.png", demo_png(5), "image/png")})
                assert busy.status_code == 503
                assert int(busy.headers["retry-after"]) >= 1
                assert "busy" in busy.json()["error"]
                page = client.post("/analyze", files={"image": ("b.png", demo_png(5), "image/png")})
                assert page.status_code == 503 and "retry-after" in page.headers
                assert "busy" in page.text and "<form" in page.text
            finally:
                gate.set()
            assert [f.result().status_code for f in pending] == [200, 200]


def test_server_without_a_working_model_answers_503(tiny_db, tmp_path) -> None:
    from app.config import Settings
    from app.web.app import create_app
    from tests.live_support import thread_server

    url = copy_db(tiny_db.path, tmp_path)
    runner = LiveRunner(ModelSpec("no-such-architecture"), slug="demo", warmup=False)
    app = create_app(Settings(db_url=url), live_runner=runner)
    with thread_server(app) as base, csrf_client(base, timeout=30) as client:
        form = client.get("/analyze")
        assert form.status_code == 200 and "could not load the live model" in form.text
        response = client.post("/analyze.json", files={"image": ("a.png", demo_png(1), "image/png")})
        assert response.status_code == 503 and "retry-after" in response.headers
        assert "no-such-architecture" in response.json()["error"]
        assert client.get("/search.json", params={"q": "red"}).status_code == 503


# ---------------------------------------------------------------------------- stored analyses


def test_permalink_json_twin_heatmap_fragment_and_zero_shot(http: httpx.Client, server) -> None:
    runner = server[1]
    data = demo_png(7)
    posted = http.post(
        "/analyze", files={"image": ("s.png", data, "image/png")}, data={"classes": "red, blue, star"}
    )
    assert posted.status_code == 303
    location = posted.headers["location"]
    assert location.startswith("/analyses/") and "classes=" in location
    the_id = location.split("/")[-1].split("?")[0]
    again = http.post("/analyze.json", files={"image": ("other-name.png", data, "image/png")}).json()
    assert again["id"] == the_id  # the id depends on the bytes and the model only

    page = http.get(location)
    assert page.status_code == 200
    assert 'rel="alternate" type="application/json"' in page.text
    twin = http.get(f"/analyses/{the_id}.json").json()
    assert [la["name"] for la in twin["layers"]] == [la["name"] for la in again["layers"]]
    assert twin["layers"] == again["layers"]

    layer = twin["layers"][0]
    unit = layer["neurons"][1]["unit"]
    fragment = http.get(
        f"/analyses/{the_id}", params={"layer": layer["name"], "unit": unit}, headers={"HX-Request": "true"}
    )
    assert fragment.status_code == 200
    assert "<html" not in fragment.text and 'id="analysis-figure"' in fragment.text
    assert f"unit {unit}" in fragment.text and "data:image/png;base64," in fragment.text
    assert "HX-Request" in fragment.headers["vary"]
    full = http.get(f"/analyses/{the_id}", params={"layer": layer["name"], "unit": unit})
    assert "<html" in full.text and 'class="hit selected"' in full.text
    missing = http.get(
        f"/analyses/{the_id}", params={"layer": layer["name"], "unit": 99999}, headers={"HX-Request": "true"}
    )
    assert missing.status_code == 404

    zero = http.get(f"/analyses/{the_id}.json", params={"classes": "red, blue, star"}).json()["zero_shot"]
    probs = zero["probabilities"]
    assert set(probs) == {"red", "blue", "star"} and abs(sum(probs.values()) - 1) < 1e-5
    embedding = np.asarray(twin_embedding(server[2], the_id), dtype=np.float32)
    texts = zeroshot.encode_texts(runner.loaded, ["red", "blue", "star"])
    expected = zeroshot.zero_shot(embedding, texts, runner.logit_scale)
    np.testing.assert_allclose([probs[c] for c in ("red", "blue", "star")], expected, atol=1e-5)
    assert http.get("/analyses/ffffffffffffffffffffffff").status_code == 404


def twin_embedding(db_url: str, the_id: str) -> list[float]:
    engine = make_engine(db_url, create=False)
    with session_factory(engine)() as s:
        result = s.get(Analysis, the_id).result
    engine.dispose()
    return result["embedding"]


def test_storage_cap_evicts_the_oldest(tiny_db, demo_loaded, facts, tmp_path) -> None:
    url = copy_db(tiny_db.path, tmp_path)
    with live_server(url, demo_loaded, facts["slug"], max_stored_analyses=3) as (base, _runner, _app):
        with csrf_client(base, timeout=60) as client:
            ids = []
            for i in range(5):
                response = client.post(
                    "/analyze.json", files={"image": ("a.png", demo_png(200 + i), "image/png")}
                )
                assert response.status_code == 200
                ids.append(response.json()["id"])
                time.sleep(0.01)
            statuses = [client.get(f"/analyses/{i}.json").status_code for i in ids]
            assert statuses == [404, 404, 200, 200, 200]
            gone = client.get(f"/analyses/{ids[0]}")
            assert "oldest first" in gone.text
    engine = make_engine(url, create=False)
    with session_factory(engine)() as s:
        assert s.scalar(select(func.count()).select_from(Analysis)) == 3
        kept = set(s.scalars(select(Analysis.image_sha256)))
        orphans = s.scalar(
            select(func.count())
            .select_from(Blob)
            .where(Blob.sha256.not_in(select(Image.thumb_sha256)), Blob.sha256.not_in(kept))
        )
    engine.dispose()
    assert orphans == 0  # the evicted analyses' images were deleted with them


def test_no_store_keeps_nothing_and_says_so(tiny_db, demo_loaded, facts, tmp_path) -> None:
    url = copy_db(tiny_db.path, tmp_path)
    with live_server(url, demo_loaded, facts["slug"], store_analyses=False) as (base, _runner, _app):
        with csrf_client(base, timeout=60) as client:
            page = client.post(
                "/analyze",
                files={"image": ("a.png", demo_png(3), "image/png")},
                data={"classes": "red, green"},
            )
            assert page.status_code == 200
            assert "cannot be shared" in page.text and "data:image/jpeg;base64," in page.text
            assert "data-overlay=" in page.text and "%" in page.text  # heatmaps inline, zero-shot shown
            result = client.post("/analyze.json", files={"image": ("a.png", demo_png(3), "image/png")}).json()
            assert result["stored"] is False and result["permalink"] is None
            assert client.get(f"/analyses/{result['id']}.json").status_code == 404
            assert "does not store" in client.get("/analyze").text
    engine = make_engine(url, create=False)
    with session_factory(engine)() as s:
        assert s.scalar(select(func.count()).select_from(Analysis)) == 0
    engine.dispose()


def test_example_images_can_be_analysed(http: httpx.Client) -> None:
    api = http.get("/analyze.json").json()
    assert api["live"]["available"] and api["examples"]
    form = http.get("/analyze")
    assert 'name="example"' in form.text and 'enctype="multipart/form-data"' in form.text
    response = http.post(
        "/analyze",
        data={"example": str(api["examples"][0]["id"])},
        files={"image": ("", b"", "application/octet-stream")},
    )
    assert response.status_code == 303
    assert http.get(response.headers["location"]).status_code == 200


def test_stored_image_is_the_model_view(http: httpx.Client, demo_loaded) -> None:
    from PIL import Image as PILImage

    wide = PILImage.new("RGB", (300, 100), (255, 255, 255))
    wide.paste((0, 0, 0), (100, 0, 200, 100))  # black centre square
    result = http.post("/analyze.json", files={"image": ("w.png", encode(wide, "PNG"), "image/png")}).json()
    stored = PILImage.open(io.BytesIO(http.get(result["image"]["url"]).content))
    side = demo_loaded.image_size
    assert stored.size == (side, side) == (result["image"]["width"], result["image"]["height"])
    assert np.asarray(stored.convert("L")).mean() < 20  # the centre square only, as the model saw it


# ------------------------------------------------------------------------------ in a browser

CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}")
def test_browser_upload_paste_heatmap_swap_and_live_search(server, tmp_path) -> None:
    from playwright.sync_api import sync_playwright

    base = server[0]
    photo = tmp_path / "photo.png"
    photo.write_bytes(demo_png(21))
    pasted = base64.b64encode(demo_png(22)).decode()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # file picker + class names → 303 → the analysis page
            page.goto(base + "/analyze")
            page.set_input_files("input[name=image]", str(photo))
            page.fill("input[name=classes]", "red, blue, star")
            page.click("button[type=submit].primary")
            page.wait_for_url("**/analyses/*")
            assert page.locator(".prob-bars li").count() == 3
            # a neuron click swaps the heatmap in place (htmx), without reloading the page
            page.evaluate("window.__stayed = true")
            link = page.locator(".hit-main").nth(2)
            unit = link.get_attribute("data-unit")
            link.click()
            caption = "document.querySelector('#analysis-figure figcaption').textContent"
            page.wait_for_function(f"() => {caption}.includes('unit {unit}')")
            assert page.evaluate("window.__stayed === true")
            overlay = page.locator("[data-overlay-img]")
            assert overlay.get_attribute("src").startswith("data:image/png") and overlay.is_visible()
            # pasting an image on the form uploads it
            page.goto(base + "/analyze")
            page.evaluate(
                """(b64) => {
                    const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                    const data = new DataTransfer();
                    data.items.add(new File([bytes], "pasted.png", {type: "image/png"}));
                    document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: data}));
                }""",
                pasted,
            )
            page.wait_for_url("**/analyses/*")
            assert page.locator(".hit").count() > 0
            # live search: typing updates the results fragment in place
            page.goto(base + "/search")
            page.evaluate("window.__stayed = true")
            page.locator("input[name=q]").type("blue", delay=30)
            page.wait_for_function("() => document.querySelectorAll('#search-results .result').length > 0")
            assert page.evaluate("window.__stayed === true") and "q=blue" in page.url
            assert not errors, errors
        finally:
            browser.close()
