"""The web app on the ``tiny_db`` fixture (built by the real precompute pipeline).

Every page and its JSON twin, 404s in HTML and JSON, blobs and static files (immutable, ETag,
304), ``Link`` headers, htmx fragments with ``Vary``, sorting/paging/filtering of the layer grid,
and the web's read-only access to the database.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from app.config import Settings
from app.db import make_engine, session_factory
from app.db.schema import Analysis, Label, Layer, Model, Neuron, TopExample
from app.web.app import ReadOnlyViolation, create_app
from app.web.charts import histogram, nice_ticks
from app.web.templating import num
from app.web.urls import Urls


@pytest.fixture(scope="module")
def index(tiny_db) -> dict[str, object]:
    """Facts about the fixture DB, read directly (not through the app)."""
    engine = make_engine(tiny_db.url, create=False)
    with session_factory(engine)() as s:
        model = s.scalars(select(Model)).one()
        layers = list(s.scalars(select(Layer).where(Layer.model_id == model.id).order_by(Layer.position)))
        layer = layers[-1]
        units = sorted(s.scalars(select(Neuron.unit).where(Neuron.layer_id == layer.id)))
        neuron = s.scalar(select(Neuron).where(Neuron.layer_id == layer.id, Neuron.unit == units[1]))
        values = sorted(
            (v for v in s.scalars(select(TopExample.value).where(TopExample.neuron_id == neuron.id))),
            reverse=True,
        )
        facts = {
            "slug": model.slug,
            "layers": [layer.name for layer in layers],
            "layer": layer.name,
            "n_units": layer.n_units,
            "grid": (layer.grid_h, layer.grid_w),
            "units": units,
            "unit": units[1],
            "values": values,
        }
    engine.dispose()
    return facts


def pages(index: dict[str, object]) -> list[str]:
    slug, layer, unit = index["slug"], index["layer"], index["unit"]
    return [
        "/",
        f"/models/{slug}",
        f"/models/{slug}/layers/{layer}",
        f"/models/{slug}/layers/{layer}/neurons/{unit}",
        "/-/versions",
    ]


def twin(url: str) -> str:
    return "/.json" if url == "/" else url + ".json"


# -- every page and its JSON twin ------------------------------------------------------------


async def test_every_page_and_json_twin(client, index):
    for url in pages(index):
        page = await client.get(url)
        assert page.status_code == 200, url
        assert page.headers["content-type"].startswith("text/html")
        json_url = twin(url)
        # advertised in the Link header and in <link rel="alternate">
        assert page.headers["link"].startswith(f"<{json_url}")
        assert 'rel="alternate"' in page.headers["link"] and "application/json" in page.headers["link"]
        link = re.search(r'<link rel="alternate" type="application/json" href="([^"]+)">', page.text)
        assert link and link.group(1).replace("&amp;", "&") == page.headers["link"][1:].split(">")[0]
        data = await client.get(json_url)
        assert data.status_code == 200, json_url
        head = await client.head(url)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["link"] == page.headers["link"]
        assert data.headers["content-type"].startswith("application/json")
        assert "access-control-allow-origin" not in data.headers  # CORS only with serve --cors (issue 14)
        assert isinstance(data.json(), dict)


async def test_home_and_model_list_what_is_indexed(client, index):
    home = (await client.get("/.json")).json()
    assert [m["slug"] for m in home["models"]] == [index["slug"]]
    assert home["models"][0]["n_neurons"] > 0
    model = (await client.get(f"/models/{index['slug']}.json")).json()
    assert [layer["name"] for layer in model["layers"]] == index["layers"]
    page = (await client.get(f"/models/{index['slug']}")).text
    for layer in index["layers"]:
        assert f'href="/models/{index["slug"]}/layers/{layer}"' in page


async def test_layer_page_links_the_other_layer_views(client, web_app, index):
    html = (await client.get(f"/models/{index['slug']}/layers/{index['layer']}")).text
    assert 'class="view-tabs"' in html
    atlas = f"/models/{index['slug']}/layers/{index['layer']}/atlas"
    assert (atlas in html) == ("/models/{model}/layers/{layer}/atlas" in web_app.state.route_paths)


async def test_neuron_examples_sorted_by_value(client, index):
    url = f"/models/{index['slug']}/layers/{index['layer']}/neurons/{index['unit']}"
    data = (await client.get(url + ".json")).json()
    values = [e["value"] for e in data["examples"]]
    assert values == sorted(values, reverse=True)
    assert values == pytest.approx(index["values"])
    assert data["stats"]["n_examples"] == len(values) > 0
    assert np.array(data["examples"][0]["heatmap"]).shape == index["grid"]
    html = (await client.get(url)).text
    # every example is shown, in the same order, with its value and its thumbnail
    shown = re.findall(r'<img class="thumb" src="([^"]+)"', html)
    assert shown == [e["thumb"] for e in data["examples"]]
    for e in data["examples"]:
        assert num(e["value"]) in html


async def test_neuron_page_parts(client, index):
    slug, layer, units = index["slug"], index["layer"], index["units"]
    unit = index["unit"]
    data = (await client.get(f"/models/{slug}/layers/{layer}/neurons/{unit}.json")).json()
    assert data["prev"] == f"/models/{slug}/layers/{layer}/neurons/{units[0]}.json"  # twins link to twins
    assert data["next"] == f"/models/{slug}/layers/{layer}/neurons/{units[2]}.json"
    assert data["permalink"] == f"/models/{slug}/layers/{layer}/neurons/{unit}"
    first = (await client.get(f"/models/{slug}/layers/{layer}/neurons/{units[0]}.json")).json()
    assert first["prev"] is None
    html = (await client.get(data["permalink"])).text
    # heatmap overlays: one decodable PNG per example, one pixel per grid cell
    overlays = re.findall(r'<img class="overlay" src="data:image/png;base64,([^"]+)"', html)
    assert len(overlays) == len(data["examples"])
    overlay = Image.open(io.BytesIO(base64.b64decode(overlays[0])))
    assert overlay.mode == "RGBA" and overlay.size == (index["grid"][1], index["grid"][0])
    assert 'id="overlay-toggle"' in html
    # the histogram is inline SVG over the stored sample
    hist = data["histogram"]
    assert hist is not None and sum(hist["counts"]) == hist["n"] > 0
    assert html.count('<rect class="bar"') == len(hist["counts"])
    assert 'rel="prev"' in html and 'rel="next"' in html


# -- 404s -----------------------------------------------------------------------------------


async def test_bogus_model_layer_unit_are_404_html_and_json(client, index):
    slug, layer = index["slug"], index["layer"]
    bogus = [
        "/models/nope",
        f"/models/{slug}/layers/nope",
        f"/models/nope/layers/{layer}/neurons/0",
        f"/models/{slug}/layers/{layer}/neurons/abc",
        f"/models/{slug}/layers/{layer}/neurons/-1",
        f"/models/{slug}/layers/{layer}/neurons/99999",
        f"/models/{slug}/layers/{layer}/neurons/{index['n_units']}",
        f"/models/{slug}/layers/{layer}/neurons/1.5",
        f"/models/{slug}/layers/{layer}/neurons/1e3",
        f"/models/{slug}/layers/{layer}/neurons/%EF%BC%91",  # a full-width digit one
        f"/models/{slug}/layers/{layer}/neurons/%20",
        f"/models/{slug}/layers/{layer}/neurons/99999999999999999999",
        "/no/such/page",
    ]
    for url in bogus:
        page = await client.get(url)
        assert page.status_code == 404, url
        assert page.headers["content-type"].startswith("text/html"), url
        assert "Not found" in page.text
        data = await client.get(url + ".json")
        assert data.status_code == 404, url
        body = data.json()
        assert body["status"] == 404 and body["error"], url


WEIRD = ["%00", "%2e%2e", "..", "%EF%BC%91", "%C3%A9", "a" * 3000, "%ff", " ", "0x1", "+1", "1_0", "NaN",
         "%25", "-0", "1.0"]


async def test_weird_path_segments_never_500(web_app, index):
    slug, layer, unit = index["slug"], index["layer"], index["unit"]
    transport = httpx.ASGITransport(app=web_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        for weird in WEIRD:
            for url in (
                f"/models/{weird}",
                f"/models/{slug}/layers/{weird}",
                f"/models/{slug}/layers/{layer}/neurons/{weird}",
                f"/blobs/{weird}",
                f"/static/{weird}/{weird}",
                f"/models/{slug}/layers/{layer}?page={weird}&per_page={weird}&sort={weird}&order={weird}&q={weird}",
            ):
                for suffix in ("", ".json"):
                    response = await c.get(url + suffix if "?" not in url else url)
                    assert response.status_code in (200, 404), (url, response.status_code)
        assert (await c.get(f"/models/{slug}/layers/{layer}/neurons/{unit}")).status_code == 200


async def test_json_error_when_client_accepts_only_json(client):
    response = await client.get("/models/nope", headers={"Accept": "application/json"})
    assert response.status_code == 404 and response.json()["error"] == "No model 'nope' in this index."


async def test_unexpected_error_is_a_clean_500(tiny_db, monkeypatch):
    from app.db import queries

    web_app = create_app(Settings(db_url=tiny_db.url))  # a fresh app: no page of it cached yet

    def broken(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(queries, "list_models", broken)
    transport = httpx.ASGITransport(app=web_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        page = await c.get("/")
        data = await c.get("/.json")
    assert page.status_code == 500 and "Traceback" not in page.text and "Server error" in page.text
    assert data.status_code == 500 and data.json()["status"] == 500


# -- blobs and static files -----------------------------------------------------------------


async def test_blob_is_immutable_with_etag_and_304(client, index):
    url = f"/models/{index['slug']}/layers/{index['layer']}/neurons/{index['unit']}.json"
    thumb = (await client.get(url)).json()["examples"][0]["thumb"]
    sha, ext = re.fullmatch(r"/blobs/([0-9a-f]{64})\.(\w+)", thumb).groups()
    response = await client.get(thumb)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert response.headers["etag"] == f'"{sha}"'
    mime = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}[ext]
    assert response.headers["content-type"] == mime
    Image.open(io.BytesIO(response.content)).verify()
    assert hashlib.sha256(response.content).hexdigest() == sha
    for tag in (f'"{sha}"', f'W/"{sha}"', f'"other", "{sha}"', "*"):
        again = await client.get(thumb, headers={"If-None-Match": tag})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == f'"{sha}"'
    assert (await client.get(thumb, headers={"If-None-Match": '"other"'})).status_code == 200
    head = await client.head(thumb)
    assert head.status_code == 200 and head.content == b"" and head.headers["etag"] == f'"{sha}"'
    assert int(head.headers["content-length"]) == len(response.content)
    wrong_ext = "png" if ext != "png" else "jpg"
    for bad in (f"/blobs/{sha}.{wrong_ext}", f"/blobs/{'0' * 64}.{ext}", "/blobs/xyz.jpg", f"/blobs/{sha}"):
        assert (await client.get(bad)).status_code == 404, bad


async def test_static_urls_are_content_hashed_and_immutable(client, web_app):
    urls: Urls = web_app.state.urls
    css = urls.static("css/site.css")
    assert re.fullmatch(r"/static/[0-9a-f]{12}/css/site\.css", css)
    response = await client.get(css)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/css")
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert (await client.get(css, headers={"If-None-Match": response.headers["etag"]})).status_code == 304
    stale = await client.get("/static/000000000000/css/site.css")
    assert stale.status_code == 200 and stale.headers["cache-control"] == "no-cache"
    htmx = await client.get(urls.static("vendor/htmx/htmx.min.js"))
    assert htmx.status_code == 200 and b"htmx" in htmx.content[:2000]
    for bad in ("/static/x/../app/config.py", "/static/x/%2e%2e/app/config.py", "/static/x/nope.css",
                "/static/x/%00", "/static/x/css"):
        assert (await client.get(bad)).status_code == 404, bad


# -- htmx fragments, sorting, paging, filtering ----------------------------------------------


async def test_htmx_request_gets_fragment_with_vary(client, index):
    url = f"/models/{index['slug']}/layers/{index['layer']}?sort=max"
    full = await client.get(url)
    fragment = await client.get(url, headers={"HX-Request": "true"})
    assert full.status_code == fragment.status_code == 200
    assert full.headers["vary"] == fragment.headers["vary"]
    assert "HX-Request" in [v.strip() for v in full.headers["vary"].split(",")]  # (+ Accept: page cache)
    assert "<html" in full.text and "<html" not in fragment.text
    assert fragment.text.lstrip().startswith('<section id="neuron-grid"')
    restore = await client.get(url, headers={"HX-Request": "true", "HX-History-Restore-Request": "true"})
    assert "<html" in restore.text


async def test_layer_sort_and_paging(client, index):
    base = f"/models/{index['slug']}/layers/{index['layer']}.json"
    by_max = (await client.get(base, params={"sort": "max", "per_page": 1000})).json()
    maxes = [n["max"] for n in by_max["neurons"]]
    assert maxes == sorted(maxes, reverse=True) and len(maxes) == len(index["units"])
    ascending = (await client.get(base, params={"sort": "std", "order": "asc", "per_page": 1000})).json()
    stds = [n["std"] for n in ascending["neurons"]]
    assert stds == sorted(stds)
    page2 = (await client.get(base, params={"per_page": 5, "page": 2})).json()
    assert [n["unit"] for n in page2["neurons"]] == index["units"][5:10]
    assert page2["pages"] == -(-len(index["units"]) // 5)
    assert page2["prev_page"].endswith("per_page=5") and "page=3" in page2["next_page"]
    # nonsense parameters fall back to defaults instead of failing
    odd = await client.get(base, params={"page": "x", "per_page": "-3", "sort": "nope", "order": "up"})
    assert odd.status_code == 200 and odd.json()["query"]["sort"] == "unit"
    beyond = (await client.get(base, params={"page": 10_000})).json()
    assert beyond["page"] == beyond["pages"]


async def test_json_twins_link_to_json_twins(client, index):
    """A twin's navigation links lead to twins (the HTML page's to HTML pages), like the layer
    listing's next_page/prev_page: neuron prev/next, a list's compare, a comparison's list."""
    slug, layer, unit = index["slug"], index["layer"], index["unit"]
    path = f"/models/{slug}/layers/{layer}/neurons/{unit}"
    twin = (await client.get(path + ".json")).json()
    assert twin["prev"] == f"/models/{slug}/layers/{layer}/neurons/{index['units'][0]}.json"
    assert twin["next"] == f"/models/{slug}/layers/{layer}/neurons/{index['units'][2]}.json"
    assert twin["permalink"] == path  # the permalink is the page
    assert (await client.get(twin["next"])).json()["unit"] == index["units"][2]
    html = (await client.get(path)).text
    assert f'href="/models/{slug}/layers/{layer}/neurons/{index["units"][2]}" rel="next"' in html
    units = f"{slug}/{layer}/{index['units'][0]},{slug}/{layer}/{unit}"
    listed = (await client.get("/lists.json", params={"units": units})).json()
    assert listed["compare"].startswith("/compare.json?units=")
    compared = await client.get(listed["compare"])
    assert compared.status_code == 200
    assert compared.json()["list"].startswith("/lists.json?units=")
    assert [u["ref"] for u in (await client.get(compared.json()["list"])).json()["units"]] == units.split(",")
    assert 'href="/compare?units=' in (await client.get("/lists", params={"units": units})).text
    assert 'href="/lists?units=' in (await client.get("/compare", params={"units": units})).text
    fv = await client.get(path + "/featurevis.json")
    assert fv.status_code == 200 and fv.json()["neuron"] == path + ".json"


async def test_unit_actions_on_the_model_page_and_neuron_page(client, index):
    """"+ list" on the model page's preview strip (one partial: _partials/unit_actions.html);
    without a live model no page offers "analyze this image"."""
    slug, layer = index["slug"], index["layer"]
    model = (await client.get(f"/models/{slug}")).text
    assert 'class="preview-item"' in model and f'data-add-to-list="{slug}/{layer}/' in model
    neuron = (await client.get(f"/models/{slug}/layers/{layer}/neurons/{index['unit']}")).text
    assert f'data-add-to-list="{slug}/{layer}/{index["unit"]}"' in neuron
    assert 'name="example"' not in neuron and 'id="analyze-example"' not in neuron
    assert "data-current-url" in neuron  # the permalink button copies the URL with its state


async def test_label_filter_and_sort(tiny_db, tmp_path, index):
    """On a copy of the fixture DB with labels added: filter by label text, sort by score."""
    path = tmp_path / "labelled.db"
    shutil.copy(tiny_db.path, path)
    url = f"sqlite:///{path}"
    engine = make_engine(url, create=False)
    with session_factory(engine)() as s:
        layer = s.scalar(select(Layer).where(Layer.name == index["layer"]))
        neurons = {n.unit: n for n in s.scalars(select(Neuron).where(Neuron.layer_id == layer.id))}
        units = index["units"][:3]
        for unit, (text, score) in zip(units, [("red square", 0.2), ("blue heart", 0.9), ("red text", 0.5)],
                                       strict=True):
            s.add(Label(neuron_id=neurons[unit].id, label=text, source="auto", score=score))
        s.add(Label(neuron_id=neurons[units[0]].id, label="crimson", source="manual", score=None))
        s.commit()
    engine.dispose()
    app = create_app(Settings(db_url=url))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        base = f"/models/{index['slug']}/layers/{index['layer']}"
        red = (await c.get(base + ".json", params={"q": "RED"})).json()
        assert sorted(n["unit"] for n in red["neurons"]) == [units[0], units[2]] and red["total"] == 2
        # the shown label is the best one that matches the filter (else the best one: manual wins)
        assert {n["unit"]: n["label"] for n in red["neurons"]}[units[0]] == "red square"
        everything = (await c.get(base + ".json", params={"per_page": 1000})).json()
        assert {n["unit"]: n["label"] for n in everything["neurons"]}[units[0]] == "crimson"
        scored = (await c.get(base + ".json", params={"sort": "label_score"})).json()
        assert [n["unit"] for n in scored["neurons"][:2]] == [units[1], units[2]]
        assert "label_score" in scored["sort_keys"]
        html = (await c.get(base, params={"q": "red"})).text
        assert "red square" in html and "blue heart" not in html and 'name="q"' in html
        neuron = (await c.get(f"{base}/neurons/{units[0]}.json")).json()
        assert [lb["label"] for lb in neuron["sections"]["labels"]] == ["crimson", "red square"]
    app.state.engine.dispose()
    app.state.write_engine.dispose()


async def test_neuron_sections_render_only_with_data(tiny_db, tmp_path, index, monkeypatch):
    """Feature visualizations and rendered words appear (page and JSON) once they are stored."""
    from app.db import put_blob
    from app.db.schema import FeatureVisualization, NeuronWord
    from app.web import sections

    path = tmp_path / "sections.db"
    shutil.copy(tiny_db.path, path)
    url = f"sqlite:///{path}"
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    engine = make_engine(url, create=False)
    with session_factory(engine)() as s:
        layer = s.scalar(select(Layer).where(Layer.name == index["layer"]))
        neuron = s.scalar(select(Neuron).where(Neuron.layer_id == layer.id, Neuron.unit == index["unit"]))
        sha = put_blob(s, buffer.getvalue(), "image/png", 8, 8)
        for kind in ("diversity", "negative", "positive"):
            s.add(FeatureVisualization(neuron_id=neuron.id, kind=kind, blob_sha256=sha, objective=1.5))
        s.add_all([NeuronWord(neuron_id=neuron.id, rank=i, word=w, value=v)
                   for i, (w, v) in enumerate([("scarlet", 2.0), ("ruby", 1.0)])])
        s.commit()
    engine.dispose()
    # a listed section whose module is missing now fails loudly (issue 13; tests/test_registries.py)
    app = create_app(Settings(db_url=url))
    base = f"/models/{index['slug']}/layers/{index['layer']}/neurons"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        data = (await c.get(f"{base}/{index['unit']}.json")).json()
        html = (await c.get(f"{base}/{index['unit']}")).text
        other = (await c.get(f"{base}/{index['units'][0]}.json")).json()
        blob = await c.get(data["sections"]["featurevis"][0]["image"])
    assert [fv["kind"] for fv in data["sections"]["featurevis"]] == ["positive", "negative", "diversity"]
    assert [w["word"] for w in data["sections"]["words"]] == ["scarlet", "ruby"]
    assert data["sections"]["words"][1]["relative"] == pytest.approx(0.5)
    assert "Feature visualization" in html and "scarlet" in html and "Top rendered words" in html
    assert set(data["sections"]) <= {s.name for s in sections.SECTIONS}
    assert "featurevis" not in other["sections"] and "words" not in other["sections"]
    assert blob.status_code == 200 and blob.headers["content-type"] == "image/png"
    app.state.engine.dispose()
    app.state.write_engine.dispose()


# -- database access ------------------------------------------------------------------------


def test_web_database_access_is_read_only_except_owned_tables(web_app, index):
    with web_app.state.sessions() as s:
        model = s.scalars(select(Model)).one()
        model.name = "changed"
        with pytest.raises(Exception, match="readonly|read-only|attempt to write"):
            s.commit()
    with web_app.state.write_sessions() as s:
        neuron = s.scalars(select(Neuron)).first()
        neuron.mean = 123.0
        with pytest.raises(ReadOnlyViolation):
            s.commit()
    with web_app.state.write_sessions() as s:
        model = s.scalars(select(Model)).one()
        s.add(Analysis(id="test-analysis", model_id=model.id, result={"ok": True}))
        s.commit()
        s.delete(s.get(Analysis, "test-analysis"))
        s.commit()


def test_missing_database_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no index database"):
        create_app(Settings(db_url=f"sqlite:///{tmp_path / 'missing.db'}"))
    assert not (tmp_path / "missing.db").exists()


async def test_health(client, index):
    health = await client.get("/-/health")
    assert health.status_code == 200
    assert health.json() == {"ok": True, "db": "ok", "models": [index["slug"]], "live": "not loaded"}


# -- helpers ---------------------------------------------------------------------------------


def test_urls(tmp_path):
    urls = Urls(tmp_path)
    assert urls.home() == "/" and urls.home("json") == "/.json"
    assert urls.model("rn50x4-openai", "json") == "/models/rn50x4-openai.json"
    assert urls.layer("demo", "layer4.0") == "/models/demo/layers/layer4.0"
    assert urls.layer("demo", "a/b", sort="max", q=None) == "/models/demo/layers/a%2Fb?sort=max"
    assert urls.neuron("demo", "transformer.resblocks.11.mlp", 7, "json") == (
        "/models/demo/layers/transformer.resblocks.11.mlp/neurons/7.json"
    )
    assert urls.search("red fish", "demo") == "/search?q=red+fish&model=demo"
    assert urls.search(fmt="json") == "/search.json"
    assert urls.analysis("abc", "json") == "/analyses/abc.json"
    assert urls.blob("ab" * 32, "jpg") == f"/blobs/{'ab' * 32}.jpg"
    (tmp_path / "a.css").write_text("x")
    first = urls.static("a.css")
    (tmp_path / "a.css").write_text("y!")
    assert urls.static("a.css") != first
    with pytest.raises(ValueError):
        urls.model("demo", "xml")


def test_num():
    numbers = (0.00145, -6.28e-04, 2.64e-5, 12.345, 0.5, 0, None, float("nan"), 3e9, 1234.5)
    assert [num(x) for x in numbers] == [
        "0.00145", "-0.000628", "2.64e-5", "12.3", "0.5", "0", "—", "—", "3e+9", "1234",
    ]


def test_histogram_geometry():
    values = np.concatenate([np.zeros(10), np.ones(30)])
    hist = histogram(values, bins=10, markers={"mean": (0.75, "m")})
    assert hist is not None and hist.n == 40 and sum(hist.counts) == 40
    assert hist.counts[0] == 10 and hist.counts[-1] == 30
    tallest = max(hist.bars, key=lambda b: b.height)
    assert tallest.count == 30 and tallest.y == pytest.approx(6)
    assert histogram(np.array([np.nan])) is None
    assert nice_ticks(-2.1, 2.1) == [-2.0, -1.0, 0.0, 1.0, 2.0]
