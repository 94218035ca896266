"""Issue 16: zero-shot neuron search ranked by evidence (picture d′ and word z, their minimum),
recomputed independently from the index and the model; ``eval-search`` runs on a small index."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import redirect_stdout
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from app.db import from_bytes, make_engine, session_factory
from app.db.schema import ActivationSample, Blob, ConceptProfile, Image, Layer
from app.neurons import zeroshot
from app.neurons.capture import layer_maps
from tests.live_support import live_server
from tests.meaning_support import labelled_db

CONCEPTS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown",
            "circle", "square", "triangle", "star", "heart", "cross")  # fmt: skip


@pytest.fixture(scope="module")
def url(tiny_db, demo_loaded, tmp_path_factory) -> str:
    return labelled_db(tiny_db, demo_loaded, tmp_path_factory.mktemp("search_evidence"))


@pytest.fixture(scope="module")
def http(url: str, demo_loaded) -> Iterator[httpx.Client]:
    with live_server(url, demo_loaded, "demo") as (base, _runner, _app):
        with httpx.Client(base_url=base, timeout=120) as client:
            yield client


def expected_evidence(url: str, loaded: Any, query: str) -> dict[str, np.ndarray]:
    """picture d′, word z and their minimum for every last-block unit, from the index and the model."""
    from precompute.labels import word_renderer

    with session_factory(make_engine(url, create=False))() as s:
        layer = s.scalar(select(Layer).where(Layer.is_last.is_(True)))
        sample = s.get(ActivationSample, layer.id)
        values = from_bytes(sample.values, "float16", (sample.n_images, sample.n_units)).astype(np.float32)
        profile = s.get(ConceptProfile, layer.id)
        words = from_bytes(profile.word_values, "float32", (len(profile.concepts), layer.n_units))
        concepts = list(profile.concepts)
        blobs = dict(
            s.execute(
                select(Image.id, Blob.data)
                .join(Blob, Blob.sha256 == Image.thumb_sha256)
                .where(Image.id.in_(sample.image_ids))
            ).all()
        )
        ids, name = [int(i) for i in sample.image_ids], layer.name
    thumbs = [PILImage.open(io.BytesIO(blobs[i])).convert("RGB") for i in ids]
    image_emb = zeroshot.encode_images(loaded, thumbs)
    words_of = query.split()  # a phrase: the vocabulary in its frame, its last word written alone
    frame, slot = " ".join(words_of[:-1]), words_of[-1]
    keep = [c.lower() != slot for c in concepts]
    framed = [f"{frame} {c}".strip() for c, k in zip(concepts, keep, strict=True) if k]
    other = zeroshot.encode_texts(loaded, framed)
    q = zeroshot.encode_texts(loaded, [query])[0]
    called = image_emb @ q > (image_emb @ other.T).max(1)
    a, b = values[called], values[~called]
    picture_d = (a.mean(0) - b.mean(0)) / (np.sqrt(0.5 * (a.var(0) + b.var(0))) + 1e-6)
    renders = word_renderer(loaded.spec)(slot)
    x = zeroshot.preprocess_batch(loaded, renders)
    response = layer_maps(loaded, x, [loaded.layer(name)])[name].amax(dim=(2, 3)).float().numpy().mean(0)
    others = words[np.array(keep)]
    word_z = (response - others.mean(0)) / np.maximum(others.std(0), 1e-6)
    score = np.minimum(picture_d, word_z)
    std = values.std(0)
    score[(std <= 1e-6) | (std < 0.05 * np.median(std))] = np.nan
    return {"picture_d": picture_d, "word_z": word_z, "score": score, "pictures": int(called.sum())}


def test_zero_shot_search_ranks_by_evidence(http: httpx.Client, url: str, demo_loaded) -> None:
    """On an index with a concept profile, units are ranked by min(picture d′, word z), each value
    as recomputed here; the direction score, cosine and null z are still given for every unit."""
    ranked = []
    for query in CONCEPTS:
        data = http.get("/search.json", params={"q": query}).json()
        last = data["zero_shot"]["layers"][-1]
        if last["ranking"] == "evidence":
            ranked.append((query, last))
        else:  # too few sample pictures the model calls by the query: the direction score
            assert all("evidence" not in n for n in last["neurons"])
    assert len(ranked) >= 3, [q for q, _ in ranked]
    for query, last in ranked[:2]:
        want = expected_evidence(url, demo_loaded, query)
        assert last["evidence"]["pictures"] == want["pictures"] >= 3
        key = np.where(np.isfinite(want["score"]), want["score"], -np.inf)
        expected = list(np.argsort(-key, kind="stable")[: len(last["neurons"])])
        assert [n["unit"] for n in last["neurons"]] == expected, query
        for n in last["neurons"]:
            u = n["unit"]
            assert n["picture_d"] == pytest.approx(want["picture_d"][u], abs=2e-3)
            assert n["word_z"] == pytest.approx(want["word_z"][u], abs=2e-3)
            assert n["evidence"] == pytest.approx(min(n["picture_d"], n["word_z"]), abs=2e-4)
            assert isinstance(n["z"], float) and "score" in n and "cosine" in n
        evidence = [n["evidence"] for n in last["neurons"]]
        assert evidence == sorted(evidence, reverse=True)
    page = http.get("/search", params={"q": ranked[0][0]}).text
    assert "Ranked by evidence" in page and "word z" in page


def test_a_phrase_is_ranked_against_its_framed_vocabulary(http: httpx.Client, url: str, demo_loaded) -> None:
    """"the word red": the pictures it calls are those closer to it than to "the word blue"…, the
    written side is "red" written alone (like the vocabulary's words); recomputed here."""
    checked = 0
    for query in ("the word red", "a photo of a circle", "the word star", "a photo of a blue square"):
        last = http.get("/search.json", params={"q": query}).json()["zero_shot"]["layers"][-1]
        if last["ranking"] != "evidence":
            continue
        want = expected_evidence(url, demo_loaded, query)
        assert last["evidence"]["pictures"] == want["pictures"]
        key = np.where(np.isfinite(want["score"]), want["score"], -np.inf)
        shown = [n["unit"] for n in last["neurons"]]
        assert shown == list(np.argsort(-key, kind="stable")[: len(shown)])
        for n in last["neurons"]:
            assert n["picture_d"] == pytest.approx(want["picture_d"][n["unit"]], abs=2e-3)
            assert n["word_z"] == pytest.approx(want["word_z"][n["unit"]], abs=2e-3)
        checked += 1
    assert checked >= 2


def test_nonsense_is_still_flagged_with_evidence(http: httpx.Client) -> None:
    data = http.get("/search.json", params={"q": "xqzvbl"}).json()
    assert data["out_of_vocabulary"] == ["xqzvbl"] and any("Not a word" in w for w in data["warnings"])
    assert 0.0 <= data["confidence"] <= 1.0


def test_eval_search_prints_its_figures(url: str, demo_loaded) -> None:
    """``conceptscope eval-search`` on a small index: one rank per concept, the figures last."""
    from precompute import eval_search

    best = {c: i for i, c in enumerate(CONCEPTS)}  # any units: the measurement must run and count
    result = eval_search.evaluate(url, best=best, loaded=demo_loaded)
    assert set(result.ranks) == set(CONCEPTS) and all(1 <= r <= 513 for r in result.ranks.values())
    assert result.nonsense_flagged == result.nonsense == len(eval_search.NONSENSE)
    report = eval_search.format_report(result)
    for top in (1, 5, 20):
        m = re.search(rf"^search top-{top} hits: (\d+) of 14$", report, re.M)
        assert m and int(m.group(1)) == sum(r <= top for r in result.ranks.values())
        assert re.search(rf"^direction score top-{top} hits: \d+ of 14$", report, re.M)
    assert report.splitlines()[-2] == f"search top-5 hits: {result.hits(5)} of 14"
    assert set(result.confidence) == {*eval_search.WORLD_PHRASES, *eval_search.OUT_OF_WORLD}
    assert all(0.0 <= c <= 1.0 for c in result.confidence.values())
    assert f"world phrases confident: {result.confident(eval_search.WORLD_PHRASES)} of 6" in report
    flagged = 6 - result.confident(eval_search.OUT_OF_WORLD)
    assert f"out-of-world phrases flagged: {flagged} of 6" in report
    for frame in eval_search.PHRASE_FRAMES:
        ranks = result.phrase_ranks[frame]
        assert set(ranks) == set(CONCEPTS) and all(1 <= r <= 513 for r in ranks.values())
        hits = sum(r <= 5 for r in ranks.values())
        assert f"phrase “{frame.format('…')}” top-5 hits: {hits} of 14" in report
    assert set(result.recipe_fit) == {*CONCEPTS, *eval_search.NONSENSE} and result.recipe_null["n"] == 256
    fitted = sum(result.recipe_fit[c] > result.recipe_null["p95"] for c in CONCEPTS)
    assert f"concept recipes fitted: {fitted} of 14" in report
    refused = sum(result.recipe_fit[w] <= result.recipe_null["p95"] for w in eval_search.NONSENSE)
    assert f"nonsense recipes refused: {refused} of 4" in report
    out = io.StringIO()
    with redirect_stdout(out):
        assert eval_search.main(["--db", url, "--threads", "1"]) == 0
    assert re.search(r"^search top-5 hits: \d+ of 14$", out.getvalue(), re.M)


def test_a_phrase_is_compared_with_its_framed_null(http: httpx.Client, url: str, demo_loaded) -> None:
    """Issue 16: "a photo of a dog" is compared with "a photo of a <null word>", not with bare words
    (a familiar frame scores high whatever follows it); the confidence is recomputed here from the
    index's directions and the model."""
    from app.db import search as search_db
    from app.db.schema import Model
    from app.neurons.calibration import CONFIDENT, fit_null, null_words
    from app.neurons.recipes import fit_recipe

    with session_factory(make_engine(url, create=False))() as s:
        dirs = search_db.layer_directions(s, s.scalar(select(Model.id)))
    for query, frame in (("a photo of a dog", "a photo of a"), ("red", None)):
        data = http.get("/search.json", params={"q": query}).json()
        assert data["null_frame"] == frame
        texts = [f"{frame} {w}" for w in null_words()] if frame else null_words()
        null_emb = zeroshot.encode_texts(demo_loaded, texts)
        emb = zeroshot.encode_texts(demo_loaded, [query])[0]
        for layer in data["zero_shot"]["layers"]:
            d = dirs[layer["name"]]
            null = fit_null((null_emb @ d.directions.T) * d.scale)
            z = ((d.directions @ emb) * d.scale - null.mean) / null.std
            want = float((null.best_z < z.max()).mean())
            assert layer["confidence"] == pytest.approx(want, abs=2e-3), (query, layer["name"])
        # the recipe's null is framed the same way (the first layer of directions, uncentred)
        recipe_layer = dirs[next(iter(dirs))].directions
        fits = [fit_recipe(e, recipe_layer).cosine for e in null_emb]
        assert data["recipe"]["null"]["p95"] == pytest.approx(float(np.quantile(fits, 0.95)), abs=2e-4)
        low = data["confidence"] < CONFIDENT
        assert low == any("Low confidence" in w for w in data["warnings"])
        if low and frame:
            assert any(f"“{frame} …”" in w for w in data["warnings"])
