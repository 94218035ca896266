"""``/search``: zero-shot neuron search (directions · text embedding) and reading neurons.

Rankings are recomputed independently from the stored directions and the model; the demo
model's "red" neuron (named by ``eval_demo`` in the model card) must come up for "red".
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from app.db import from_bytes, make_engine, session_factory
from app.db.schema import Direction, Layer, Model, Neuron
from app.models import DEMO_WEIGHTS
from app.neurons import activations as core
from app.neurons import zeroshot
from app.neurons.calibration import N_NULL
from app.neurons.render import render_text
from tests.live_support import copy_db, live_server

MODEL_CARD = DEMO_WEIGHTS.parent / "MODEL_CARD.md"


@pytest.fixture(scope="module")
def index(tiny_db) -> dict[str, Any]:
    engine = make_engine(tiny_db.url, create=False)
    with session_factory(engine)() as s:
        model = s.scalars(select(Model)).one()
        rows = s.execute(
            select(Layer.name, Direction)
            .join(Direction, Direction.layer_id == Layer.id)
            .where(Layer.model_id == model.id)
        ).all()
        directions = {name: from_bytes(d.values, "float32", (d.n_units, d.embed_dim)) for name, d in rows}
        std = {}
        for name, matrix in directions.items():
            layer = s.scalar(select(Layer).where(Layer.model_id == model.id, Layer.name == name))
            std[name] = np.ones(matrix.shape[0], dtype=np.float32)
            for unit, value in s.execute(select(Neuron.unit, Neuron.std).where(Neuron.layer_id == layer.id)):
                std[name][unit] = value
    engine.dispose()
    assert directions, "the fixture DB has no directions"
    return {"slug": model.slug, "directions": directions, "std": std}


@pytest.fixture(scope="module")
def http(tiny_db, demo_loaded, index, tmp_path_factory) -> Iterator[httpx.Client]:
    url = copy_db(tiny_db.path, tmp_path_factory.mktemp("search_db"))
    with live_server(url, demo_loaded, index["slug"]) as (base, _runner, _app):
        with httpx.Client(base_url=base, timeout=60) as client:
            yield client


def test_empty_query_is_a_helpful_page(http: httpx.Client) -> None:
    page = http.get("/search")
    assert page.status_code == 200
    assert "Try one of these" in page.text and "/search?q=" in page.text
    assert 'hx-trigger="keyup changed delay:300ms' in page.text
    data = http.get("/search.json", params={"q": "   "}).json()
    assert data["query"] == "" and data["suggestions"] and data["zero_shot"] is None
    assert "Type a word" in data["note"]


def test_zero_shot_ranking_is_direction_dot_text_embedding(http: httpx.Client, demo_loaded, index) -> None:
    data = http.get("/search.json", params={"q": "red"}).json()
    assert data["used_query"] == "red" and not data["truncated"]
    text = zeroshot.encode_texts(demo_loaded, ["red"])[0]
    layers = data["zero_shot"]["layers"]
    assert [layer["name"] for layer in layers] == list(index["directions"])
    for layer in layers:
        matrix = index["directions"][layer["name"]]
        std = index["std"][layer["name"]]
        raw = matrix @ text
        scores = raw * std  # direction · text, times the unit's activation std over the dataset
        expected = list(np.argsort(-scores, kind="stable")[: len(layer["neurons"])])
        assert [n["unit"] for n in layer["neurons"]] == expected
        for n in layer["neurons"]:
            u = n["unit"]
            assert abs(n["score"] - scores[u]) < 1e-4 and abs(n["raw"] - raw[u]) < 1e-4
            assert abs(n["cosine"] - raw[u] / np.linalg.norm(matrix[u])) < 1e-4
            assert n["url"].endswith(f"/neurons/{u}")
        values = [n["score"] for n in layer["neurons"]]
        assert values == sorted(values, reverse=True)
    assert "direction" in data["explain"]["zero_shot"]


@pytest.mark.parametrize("sort", ["percentile", "z"])
def test_reading_neurons_fire_on_the_rendered_query(http: httpx.Client, demo_loaded, tiny_db, sort) -> None:
    """Issue 16: the reading neurons are the top 10 of **every** unit of the layer on its own scale
    (percentile, or z with ``?sort=z``), not a re-ranking of the units highest by raw value."""
    from app.db.samples import load_activation_samples
    from tests.test_analysis_scale import brute_force

    data = http.get("/search.json", params={"q": "star", "sort": sort}).json()
    assert data["sort"] == sort and set(data["sorts"]) == {"percentile", "z"}
    image = render_text("star", demo_loaded.image_size)
    everything = core.analyze_batch(demo_loaded, demo_loaded.preprocess(image)[None], top_k=10_000)[0]
    engine = make_engine(tiny_db.url, create=False)
    with session_factory(engine)() as s:
        samples = load_activation_samples(s, s.scalars(select(Model)).one().id)
    engine.dispose()
    for layer in data["reading"]["layers"]:
        values = np.zeros(len(everything.top[layer["name"]]))
        for hit in everything.top[layer["name"]]:
            values[hit.unit] = hit.value
        want = brute_force(np.asarray(samples[layer["name"]], np.float64), values, sort)[:10]
        got = [(n["unit"], n["percentile"], n["z"]) for n in layer["neurons"]]
        assert [r[0] for r in got] == [r[0] for r in want], (layer["name"], got, want)
        for n in layer["neurons"]:
            assert n["value"] == pytest.approx(values[n["unit"]], rel=1e-4, abs=1e-6)
    assert data["reading"]["image"].startswith("data:image/png;base64,")
    assert 'href="/search?q=star' in http.get("/search", params={"q": "star"}).text


def test_live_results_are_htmx_fragments(http: httpx.Client) -> None:
    fragment = http.get("/search", params={"q": "blue"}, headers={"HX-Request": "true"})
    assert fragment.status_code == 200
    assert "<html" not in fragment.text and 'id="search-results"' in fragment.text
    assert "HX-Request" in fragment.headers["vary"]
    page = http.get("/search", params={"q": "blue"})
    assert "<html" in page.text and "HX-Request" in page.headers["vary"]
    assert 'rel="alternate" type="application/json"' in page.text


def test_over_long_query_is_truncated_and_said_so(http: httpx.Client, demo_loaded) -> None:
    query = " ".join(["purple triangle"] * 40)
    data = http.get("/search.json", params={"q": query}).json()
    assert data["truncated"] is True and "only" in data["note"]
    kept = demo_loaded.tokenizer.encode(data["used_query"])
    assert 0 < len(kept) <= demo_loaded.context_length - 2
    assert query.startswith(data["used_query"])
    page = http.get("/search", params={"q": query})
    assert page.status_code == 200 and "longer than the model" in page.text


def test_unknown_model_is_404(http: httpx.Client) -> None:
    response = http.get("/search.json", params={"q": "red", "model": "no-such-model"})
    assert response.status_code == 404 and "no-such-model" in response.json()["error"]


def card_red_neuron() -> int | None:
    if not MODEL_CARD.exists():
        return None
    match = re.search(r"<!-- facts: (\{.*?\}) -->", MODEL_CARD.read_text(), re.S)
    return int(json.loads(match.group(1))["multimodal_neurons"]["red"][0]) if match else None


@pytest.mark.skipif(not DEMO_WEIGHTS.exists(), reason="the trained demo weights have not landed yet")
def test_demo_red_neuron_is_found_by_the_word_red(http: httpx.Client, index) -> None:
    """eval_demo names the red multimodal neuron (MODEL_CARD.md facts); searching "red" finds it."""
    unit = card_red_neuron()
    assert unit is not None, "MODEL_CARD.md has no facts block naming the red neuron"
    data = http.get("/search.json", params={"q": "red"}).json()
    last = data["zero_shot"]["layers"][-1]
    shown = [n["unit"] for n in last["neurons"]]  # the results the page shows
    assert unit in shown, (unit, shown)


def test_search_knows_when_it_does_not_know(http: httpx.Client) -> None:
    """Issue 16: nonsense is flagged as out of vocabulary; every zero-shot layer carries a
    confidence against the null words and every unit its z; the recipe shows its null fit and
    refuses when no better than the null."""
    nonsense = http.get("/search.json", params={"q": "xqzvbl"}).json()
    assert nonsense["out_of_vocabulary"] == ["xqzvbl"]
    assert any("Not a word" in w for w in nonsense["warnings"])
    assert "Not a word this model" in http.get("/search", params={"q": "xqzvbl"}).text
    red = http.get("/search.json", params={"q": "red"}).json()
    assert red["out_of_vocabulary"] == []
    layer = red["zero_shot"]["layers"][-1]
    assert 0.0 <= layer["confidence"] <= 1.0 and red["confidence"] == min(
        lr["confidence"] for lr in red["zero_shot"]["layers"]
    )
    assert all(isinstance(n["z"], float) for n in layer["neurons"])
    recipe = red["recipe"]
    assert recipe["null"]["n"] == N_NULL and recipe["null"]["median"] <= recipe["null"]["p95"]
    assert recipe["refused"] == (recipe["cosine"] <= recipe["null"]["p95"])
    assert (recipe["terms"] == []) == recipe["refused"]


def test_concept_words_are_confident_and_ordinary_words_are_not(http: httpx.Client) -> None:
    """Issue 16: the confidence compares the query's best z with the null words' best z (a unit
    whose direction is long scores high for every text, so raw scores would not do): every word
    the demo model was trained on is confident, a word it never saw is flagged."""
    from precompute.demo_world import CONCEPTS

    for word in CONCEPTS:
        data = http.get("/search.json", params={"q": word}).json()
        assert data["confidence"] >= 0.99, (word, data["confidence"])
        assert not any(w.startswith("Low confidence") for w in data["warnings"]), word
    for word in ("bicycle", "the"):
        data = http.get("/search.json", params={"q": word}).json()
        assert data["confidence"] < 0.99, (word, data["confidence"])
        assert any(w.startswith("Low confidence") for w in data["warnings"]), word
