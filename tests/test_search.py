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


def test_reading_neurons_fire_on_the_rendered_query(http: httpx.Client, demo_loaded) -> None:
    data = http.get("/search.json", params={"q": "star"}).json()
    image = render_text("star", demo_loaded.image_size)
    acts = core.analyze_batch(demo_loaded, demo_loaded.preprocess(image)[None], top_k=10)[0]
    for layer in data["reading"]["layers"]:
        got = sorted((n["unit"], n["value"]) for n in layer["neurons"])
        want = sorted((h.unit, h.value) for h in acts.top[layer["name"]])
        assert [u for u, _ in got] == [u for u, _ in want]
        np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-4, atol=1e-6)
        assert all(n["percentile"] is None or 0 <= n["percentile"] <= 100 for n in layer["neurons"])
        # issue 16: shown on the units' own scale, by percentile (not by raw value)
        pcts = [n["percentile"] for n in layer["neurons"] if n["percentile"] is not None]
        assert pcts == sorted(pcts, reverse=True)
    assert data["reading"]["image"].startswith("data:image/png;base64,")


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
    assert recipe["null"]["n"] == 64 and recipe["null"]["median"] <= recipe["null"]["p95"]
    assert recipe["refused"] == (recipe["cosine"] <= recipe["null"]["p95"])
    assert (recipe["terms"] == []) == recipe["refused"]
