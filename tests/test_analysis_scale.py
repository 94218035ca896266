"""Issue 16 part 3 on analysis pages: every top neuron is shown with its percentile and z-score on
its own dataset distribution, ranked by one of them (``?sort=z`` kept in the permalink), never
by raw value, with correct ordinals."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from app.db import make_engine, session_factory
from app.db.samples import load_activation_samples
from app.db.schema import Model
from app.neurons import activations as core
from app.web.templating import ordinal
from app.web.uploads import decode_upload
from precompute import demo_world as world
from tests.csrf_support import csrf_client
from tests.live_support import copy_db, encode, live_server

TOP_K = 5


@pytest.fixture(scope="module")
def served(tiny_db, demo_loaded, tmp_path_factory) -> Iterator[tuple[httpx.Client, dict[str, np.ndarray]]]:
    url = copy_db(tiny_db.path, tmp_path_factory.mktemp("scale_db"))
    engine = make_engine(url, create=False)
    with session_factory(engine)() as s:
        model = s.scalars(select(Model)).one()
        samples = load_activation_samples(s, model.id)
    engine.dispose()
    with live_server(url, demo_loaded, model.slug) as (base, _runner, _app):
        with csrf_client(base, timeout=60) as c:
            yield c, {k: np.asarray(v, np.float64) for k, v in samples.items()}


@pytest.fixture(scope="module")
def analysis(served) -> dict[str, Any]:
    http, _ = served
    png = encode(world.render(world.HELDOUT_SEED, 4242).image.convert("RGB"), "PNG")
    response = http.post(f"/analyze.json?top_k={TOP_K}", files={"image": ("x.png", png, "image/png")})
    assert response.status_code == 200, response.text
    return {**response.json(), "png": png}


def test_values_carry_percentile_and_z_on_the_units_own_distribution(served, analysis) -> None:
    _, samples = served
    assert analysis["sort"] == "percentile" and "z" in analysis["sorts"]
    for layer in analysis["layers"]:
        sample = samples[layer["name"]]
        assert 0 < len(layer["neurons"]) <= TOP_K
        for n in layer["neurons"]:
            column = sample[:, n["unit"]]
            want_pct = 100 * float((column <= float(np.float16(n["value"]))).mean())
            assert n["percentile"] == pytest.approx(want_pct, abs=1e-6)
            assert n["z"] == pytest.approx((n["value"] - column.mean()) / column.std(), abs=2e-3)
        key = [(n["percentile"], n["z"]) for n in layer["neurons"]]
        assert key == sorted(key, reverse=True)  # by percentile, ties by z: never by raw value


def test_top_units_are_chosen_on_their_own_scale(served, analysis, demo_loaded) -> None:
    """No unit among the raw top candidates stands higher on its own scale than a shown one."""
    _, samples = served
    image = decode_upload(analysis["png"], max_pixels=10**8).image
    acts = core.analyze_batch(demo_loaded, demo_loaded.preprocess(image)[None], top_k=4 * TOP_K)[0]
    for layer in analysis["layers"]:
        sample = samples[layer["name"]]

        def scale(unit: int, value: float, sample: np.ndarray = sample) -> tuple[float, float]:
            column = sample[:, unit]
            pct = 100 * float((column <= float(np.float16(value))).mean())
            return pct, (value - column.mean()) / column.std()

        shown = {n["unit"] for n in layer["neurons"]}
        lowest = min(scale(n["unit"], n["value"]) for n in layer["neurons"])
        for hit in acts.top[layer["name"]]:
            if hit.unit not in shown:
                pct, z = scale(hit.unit, hit.value)
                assert (pct, z) <= (lowest[0], lowest[1] + 1e-3), (layer["name"], hit.unit)


def test_sort_by_z_is_kept_in_the_permalink_and_the_json_twin(served, analysis) -> None:
    http, _ = served
    permalink = analysis["permalink"]
    by_z = http.get(permalink + ".json", params={"sort": "z"}).json()
    assert by_z["sort"] == "z"
    for layer, same in zip(by_z["layers"], analysis["layers"], strict=True):
        assert {n["unit"] for n in layer["neurons"]} == {n["unit"] for n in same["neurons"]}
        zs = [n["z"] for n in layer["neurons"]]
        assert zs == sorted(zs, reverse=True)
    page = http.get(permalink, params={"sort": "z"})
    assert page.status_code == 200
    unit = analysis["layers"][0]["neurons"][0]["unit"]
    assert f"unit={unit}&amp;sort=z" in page.text  # the neuron links keep the order
    assert 'href="' + permalink + '"' in page.text  # the way back to percentile (the default)
    assert "sort=z" in page.headers["link"]  # the JSON twin of this page
    selected = http.get(permalink, params={"sort": "z", "layer": analysis["layers"][0]["name"], "unit": unit})
    assert "z-score" in selected.text and f"unit={unit}&amp;sort=z" in selected.text
    assert http.get(permalink + ".json", params={"sort": "value"}).status_code == 422
    assert http.get(permalink, params={"sort": "nonsense"}).status_code == 422


def test_percentiles_read_with_correct_ordinals(served, analysis) -> None:
    http, _ = served
    html = http.get(analysis["permalink"]).text
    layer = analysis["layers"][0]
    selected = {"layer": layer["name"], "unit": layer["neurons"][0]["unit"]}
    html += http.get(analysis["permalink"], params=selected).text
    found = re.findall(r"(\d+(?:\.\d+)?)(st|nd|rd|th) percentile", html)
    assert found
    for number, suffix in found:
        assert number + suffix == ordinal(float(number)), number + suffix
    assert [ordinal(x) for x in (64.3, 64, 11.0, 100, 22)] == ["64.3rd", "64th", "11th", "100th", "22nd"]
