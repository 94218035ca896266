"""Issue 16 part 3 on analysis pages: every top neuron is shown with its percentile and z-score on
its own dataset distribution, ranked by one of them (``?sort=z`` kept in the permalink), never
by raw value, with correct ordinals; and the neurons shown are the top ``top_k`` of **all** units
of the layer by that key ("every number on its unit's own scale"), not a re-ranking of the
units highest by raw value."""

from __future__ import annotations

import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from app.db import make_engine, session_factory
from app.db.samples import load_activation_samples
from app.db.schema import Model
from app.live import analysis as live
from app.neurons import activations as core
from app.web.templating import ordinal
from app.web.uploads import decode_upload
from precompute import demo_world as world
from tests.csrf_support import csrf_client
from tests.live_support import copy_db, encode, live_server

TOP_K = 5
OLD_CANDIDATES = 4 * TOP_K  # the raw-value pre-selection this replaces: 4 × top_k units by value


def percentile(column: np.ndarray, value: float) -> float:
    """Share (%) of the sample strictly below ``value`` in float16 precision (the stored one)."""
    return 100 * float((column < float(np.float16(value))).mean())


def brute_force(sample: np.ndarray, values: np.ndarray, sort: str) -> list[tuple[int, float, float | None]]:
    """Every unit of a layer as (unit, percentile, z), best first by ``sort`` (z rounded as shown;
    ties: the other figure, then the unit), computed unit by unit from the raw sample."""
    ordered = np.sort(
        np.asarray(sample, np.float64), axis=0
    )  # moments summed in the server's order, to the last bit
    means, stds = ordered.mean(0), ordered.std(0)
    rows = []
    for unit, value in enumerate(values.tolist()):
        z = round((value - float(means[unit])) / float(stds[unit]), 3) if stds[unit] > 1e-12 else None
        rows.append((unit, percentile(sample[:, unit], value), z))
    z_key = lambda r: -r[2] if r[2] is not None else np.inf  # noqa: E731
    if sort == "z":
        return sorted(rows, key=lambda r: (z_key(r), -r[1], r[0]))
    return sorted(rows, key=lambda r: (-r[1], z_key(r), r[0]))


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
            assert n["percentile"] == pytest.approx(percentile(column, n["value"]), abs=1e-6)
            assert n["z"] == pytest.approx((n["value"] - column.mean()) / column.std(), abs=2e-3)
        key = [(n["percentile"], n["z"]) for n in layer["neurons"]]
        assert key == sorted(key, reverse=True)  # by percentile, ties by z: never by raw value


@pytest.fixture(scope="module")
def all_values(analysis, demo_loaded) -> dict[str, np.ndarray]:
    """The fixture image's value of every unit of each layer (the model run directly)."""
    image = decode_upload(analysis["png"], max_pixels=10**8).image
    acts = core.analyze_batch(demo_loaded, demo_loaded.preprocess(image)[None], top_k=1)[0]
    return {name: np.asarray(v, np.float64) for name, v in acts.values.items()}


@pytest.mark.parametrize("sort", list(live.SORTS))
def test_shown_units_are_the_top_k_of_all_units_by_the_sort(served, analysis, all_values, sort) -> None:
    """The neurons shown (POST answer, and the permalink re-ranked by ``?sort``) are exactly the
    ``top_k`` of a brute-force ranking of every unit of the layer by the same key, in its order."""
    http, samples = served
    shown = (
        analysis
        if sort == live.DEFAULT_SORT
        else http.get(analysis["permalink"] + ".json", params={"sort": sort}).json()
    )
    assert shown["sort"] == sort
    for layer in shown["layers"]:
        values = all_values[layer["name"]]
        want = brute_force(samples[layer["name"]], values, sort)[:TOP_K]
        got = [(n["unit"], n["percentile"], n["z"]) for n in layer["neurons"]]
        assert [r[0] for r in got] == [r[0] for r in want], (layer["name"], got, want)
        for (_, pct, z), (_, want_pct, want_z) in zip(got, want, strict=True):
            assert pct == pytest.approx(want_pct, abs=1e-9) and z == pytest.approx(want_z, abs=1e-9)
        for n in layer["neurons"]:
            assert n["value"] == pytest.approx(values[n["unit"]], abs=1e-6)  # the raw value is still shown


def test_a_unit_low_by_raw_value_but_highest_on_its_scale_is_shown_first(
    served, analysis, all_values
) -> None:
    """The fixture image has units far down by raw value (beyond the 4 × top_k units a raw
    pre-selection kept) that are first on their own scale: they are shown first."""
    _, samples = served
    found = 0
    for layer in analysis["layers"]:
        values = all_values[layer["name"]]
        best = brute_force(samples[layer["name"]], values, "percentile")[0]
        raw_rank = int(np.count_nonzero(values > values[best[0]]))
        assert layer["neurons"][0]["unit"] == best[0]
        if raw_rank >= OLD_CANDIDATES:
            found += 1
            raw_top = np.sort(values)[::-1][:TOP_K]
            assert layer["neurons"][0]["value"] < raw_top[-1]  # lower than every raw top-k unit
    assert found, "the fixture image should have a layer whose best unit is low by raw value"


def test_selector_on_a_built_scale() -> None:
    """A small built case: unit 0 fires far above the others by raw value but is ordinary on its
    own scale; unit 3, the lowest raw value, is the highest of its sample; ties at the 100th
    percentile go by z, then the unit; the union of the top_k by either sort is kept."""
    rng = np.random.default_rng(0)
    sample = rng.normal(0.0, 1.0, (200, 6)).astype(np.float16).astype(np.float32)
    sample[:, 0] = np.linspace(50, 150, 200)  # large raw values, ordinary for this unit
    sample[:, 3] = np.linspace(-3.0, -2.0, 200)  # unit 3 lives far below the others
    sample[:, 5] = sample[:, 4]  # units 4 and 5: the same distribution (a tie on both figures)
    ctx = SimpleNamespace(percentiles=core.Percentiles.from_arrays({"L": sample}))
    values = np.array([100.0, 0.5, 2.9, -1.0, 3.5, 3.5], np.float32)
    percentiles, zs = live.scale_of(ctx, "L", values, live.UnitMoments())
    for unit, value in enumerate(values.tolist()):
        assert percentiles[unit] == ctx.percentiles.of("L", unit, value) == percentile(sample[:, unit], value)
    assert percentiles[3] == percentiles[4] == percentiles[5] == 100.0
    by_pct = [int(u) for u in live.ranked(percentiles, zs, "percentile")]
    assert by_pct[0] == 3 and by_pct[1:3] == [4, 5]  # the highest z first among the 100th; then the unit
    assert by_pct.index(0) > by_pct.index(1)  # raw 100 is ~50th percentile: below unit 1's 0.5
    assert by_pct == [r[0] for r in brute_force(sample, values, "percentile")]
    assert [int(u) for u in live.ranked(percentiles, zs, "z")] == [
        r[0] for r in brute_force(sample, values, "z")
    ]
    select = live.scale_selector(ctx, live.UnitMoments(), 2)
    chosen = select("L", values)
    assert chosen[:2] == by_pct[:2]
    by_z = [int(u) for u in live.ranked(percentiles, zs, "z")]
    assert set(chosen) == set(by_pct[:2]) | set(by_z[:2])
    no_sample = live.scale_selector(SimpleNamespace(percentiles=core.Percentiles({})), live.UnitMoments(), 2)
    assert no_sample("L", values) == [0, 4]  # no scale: by raw value


def test_a_stored_result_shows_top_k_by_either_sort() -> None:
    """Stored results keep the union of both sorts' top_k (and top_k): each sort shows its own
    exact top_k; results stored before top_k was kept show all their neurons."""
    neurons = [
        {"unit": 0, "percentile": 100.0, "z": 1.0},
        {"unit": 1, "percentile": 90.0, "z": 9.0},
        {"unit": 2, "percentile": 100.0, "z": 2.0},
        {"unit": 3, "percentile": 95.0, "z": 0.5},
    ]
    assert [n["unit"] for n in live.shown(neurons, "percentile", 2)] == [2, 0]
    assert [n["unit"] for n in live.shown(neurons, "z", 2)] == [1, 2]
    assert len(live.shown(neurons, "z", None)) == 4


def test_sort_by_z_is_kept_in_the_permalink_and_the_json_twin(served, analysis) -> None:
    http, _ = served
    permalink = analysis["permalink"]
    by_z = http.get(permalink + ".json", params={"sort": "z"}).json()
    assert by_z["sort"] == "z"
    for layer in by_z["layers"]:
        assert 0 < len(layer["neurons"]) <= TOP_K  # its own top_k (may differ from percentile's)
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


def test_top_k_is_a_plain_count_and_one_image_and_top_k_is_one_permalink(served, analysis) -> None:
    """Issue 14: ``top_k`` takes ASCII digits only (int() would take "١٢" or " -5"), from 1; the
    same image with another ``top_k`` gets another id, so nobody can change what a permalink shows."""
    http, _ = served
    png = analysis["png"]
    for bad in ("١٢", "-5", "0", "1e3", "²"):
        files = {"image": ("x.png", png, "image/png")}
        form = http.post("/analyze.json", data={"top_k": bad}, files=files)
        query = http.post("/analyze.json", params={"top_k": bad}, files=files)
        assert form.status_code == 422 and query.status_code in (404, 422), (bad, form.text, query.text)
    other = http.post("/analyze.json?top_k=2", files={"image": ("x.png", png, "image/png")})
    assert other.status_code == 200 and other.json()["id"] != analysis["id"]
    again = http.get(f"/analyses/{analysis['id']}.json").json()
    assert [len(lr["neurons"]) for lr in again["layers"]] == [len(lr["neurons"]) for lr in analysis["layers"]]
