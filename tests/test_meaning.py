"""Meaning: multimodality scores, conditional-probability plots, related neurons, recipes, atlas,
and the multimodal-neurons view; on the demo model, the demo world's known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.config import Settings
from app.db import from_bytes, make_engine, session_factory
from app.db.schema import ActivationSample, Direction, Label, Layer, Neuron
from app.neurons import multimodality as mm
from app.neurons.atlas import activation_profiles, layout
from app.neurons.plots import OTHER, condprob_plot
from app.neurons.recipes import fit_recipe, nnls
from app.neurons.related import most_correlated, most_similar_directions
from app.web.app import create_app
from tests.meaning_support import labelled_db, named_multimodal_neurons, needs_weights, trained_db


def _session(url: str):
    return session_factory(make_engine(url, create=False))()


@pytest.fixture(scope="module")
def labelled(tiny_db, demo_loaded, tmp_path_factory) -> str:
    return labelled_db(tiny_db, demo_loaded, tmp_path_factory.mktemp("labelled"))


@pytest.fixture(scope="module")
def client(labelled):
    with TestClient(create_app(Settings(db_url=labelled, device="cpu"))) as c:
        yield c


# ----------------------------------------------------------------------------- multimodality


def test_multimodality_is_the_picture_word_correlation_across_concepts() -> None:
    concepts = ["red", "blue", "green", "circle", "star"]
    rng = np.random.default_rng(1)
    tags, rows = [], []
    for _ in range(200):
        c = concepts[rng.integers(5)]
        kind = rng.integers(3)
        tags.append([c] if kind < 2 else [mm.text_tag(c)])
        # unit 0: fires for red pictures; unit 1: for blue pictures; unit 2: constant
        rows.append([3.0 * (c == "red") + rng.normal(0, 0.1), 2.0 * (c == "blue") + rng.normal(0, 0.1), 1.0])
    values = np.array(rows)
    means, counts = mm.concept_image_means(values, tags, concepts)
    assert sum(counts) == sum(not any(mm.is_text_tag(t) for t in tg) for tg in tags)  # words excluded
    words = np.zeros((5, 3))
    words[0, 0] = 1.0  # unit 0 also reads "red": multimodal
    words[0, 1] = 1.0  # unit 1 reads "red" but sees blue: not
    words[:, 2] = np.arange(5)
    scores = mm.multimodality_scores(means, words)
    assert scores[0] > 0.95 and scores[1] < 0 and np.isnan(scores[2])
    few = means.copy()
    few[:2] = np.nan  # only 3 concepts with pictures left: not enough evidence
    assert np.isnan(mm.multimodality_scores(few, words)).all()


def test_demo_tags_come_from_the_ground_truth() -> None:
    concepts = ["red", "blue", "circle", "star"]
    assert mm.demo_tags({"modality": "object", "colour": "red", "shape": "circle"}, concepts) == [
        "red",
        "circle",
    ]
    assert mm.demo_tags({"modality": "text", "word": "blue star", "colour": "blue"}, concepts) == [
        "blue (text)", "star (text)"]  # fmt: skip
    labelled_object = {"modality": "labelled_object", "colour": "red", "shape": "star", "word": "blue"}
    assert mm.demo_tags(labelled_object, concepts) == ["red", "star", "blue (text)"]
    probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.3, 0.3, 0.2, 0.2]])
    assert mm.pseudo_label_tags(probs, concepts, 0.5) == [["red"], []]


@pytest.mark.slow
@needs_weights
def test_named_multimodal_neurons_rank_high_by_multimodality(demo_loaded, tmp_path_factory) -> None:
    """The neurons eval-demo names as multimodal (d′ on held-out renderings, within a concept's
    kind) rank high by the labels stage's multimodality score (on the indexed dataset, across all
    14 concepts): at least two thirds in the top 15 % and the median in the top 10 % (by chance:
    p < 1e-4). Measured on the shipped weights (11 named): ranks 0/14/17/18/23/31/41/54/81/170/417
    of 512; the outliers are the weakest named units (purple, min d′ 1.64, prefers red pictures on
    the indexed set; star, 1.62). On the earlier 7/14 weights all 7 were in the top 15 %."""
    url = trained_db(demo_loaded, tmp_path_factory.mktemp("trained"))
    named = named_multimodal_neurons()
    assert named, "eval-demo names no multimodal neuron"
    with _session(url) as s:
        layer = s.scalar(select(Layer).where(Layer.is_last.is_(True)))
        scores = dict(
            s.execute(select(Neuron.unit, Neuron.multimodality).where(Neuron.layer_id == layer.id)).all()
        )
    ranked = sorted(scores, key=lambda u: -(scores[u] if scores[u] is not None else -2))
    rank = {u: i for i, u in enumerate(ranked)}
    found = [(c, u, rank[u], scores[u]) for c, u in named.items()]
    ranks = sorted(rank[u] for u in named.values())
    assert sum(r < 0.15 * len(ranked) for r in ranks) >= 2 / 3 * len(named), found
    assert float(np.median(ranks)) < 0.10 * len(ranked), found


# ----------------------------------------------------------------------------- condprob plots


def test_condprob_splits_the_sample_by_concept_in_sigma_units() -> None:
    rng = np.random.default_rng(2)
    tags = [["red"]] * 50 + [["blue"]] * 50 + [["red (text)"]] * 30 + [[]] * 70
    values = np.r_[rng.normal(6, 1, 50), rng.normal(1, 1, 50), rng.normal(4, 1, 30), rng.normal(0, 1, 70)]
    plot = condprob_plot(values, tags, top=2)
    assert [c.name for c in plot.categories][:2] == ["red", "red (text)"]
    assert plot.categories[-1].name == OTHER and plot.n == 200
    assert plot.sigma == pytest.approx(values.std())
    assert plot.edges[0] <= values.min() / plot.sigma and plot.edges[-1] >= values.max() / plot.sigma
    shares = np.array(list(plot.shares.values()))
    filled = np.array(plot.counts) > 0
    np.testing.assert_allclose(shares[:, filled].sum(0), 1.0, atol=1e-3)  # P(concept | bin) sums to 1
    assert sum(plot.counts) == 200
    top_bin = int(np.flatnonzero(filled)[-1])
    assert plot.shares["red"][top_bin] == 1.0  # the highest activations are all red pictures
    assert condprob_plot(np.zeros(10), [[]] * 10) is None


def test_neuron_page_shows_condprob_and_related_sections(client) -> None:
    data = client.get("/models/demo/layers/layer3.0/neurons/4.json").json()
    cond = data["sections"]["condprob"]
    assert cond["tag_source"] == "ground-truth" and sum(cond["counts"]) == data["stats"]["sample_size"]
    assert cond["categories"][-1]["name"] == "other"
    related = data["sections"]["related"]
    assert related["method"] == "correlation" and len(related["neurons"]) == 8
    last = client.get("/models/demo/layers/layer4.5/neurons/4.json").json()["sections"]["related"]
    assert last["method"] == "direction"
    html = client.get("/models/demo/layers/layer4.5/neurons/4").text
    assert 'id="condprob"' in html and "<svg" in html and "standard deviations from zero" in html
    assert 'id="related"' in html and "/models/demo/layers/layer4.5/neurons/" in html


# ----------------------------------------------------------------------------- related


def test_related_by_direction_and_by_correlation_match_numpy(labelled) -> None:
    with _session(labelled) as s:
        last = s.scalar(select(Layer).where(Layer.is_last.is_(True)))
        d = s.get(Direction, last.id)
        directions = from_bytes(d.values, "float32", (d.n_units, d.embed_dim))
        other = s.scalar(select(Layer).where(Layer.is_last.is_(False)))
        sample = s.get(ActivationSample, other.id)
        values = from_bytes(sample.values, "float16", (sample.n_images, sample.n_units))
    unit = 7
    cos = (
        directions
        @ directions[unit]
        / (np.linalg.norm(directions, axis=1) * np.linalg.norm(directions[unit]))
    )
    cos[unit] = -np.inf
    got = most_similar_directions(directions, unit, 5)
    assert [r.unit for r in got] == list(np.argsort(-cos, kind="stable")[:5])
    assert got[0].similarity == pytest.approx(cos[got[0].unit], abs=1e-5)
    corr = np.corrcoef(values.T.astype(np.float64))[unit]
    corr = np.where(np.isfinite(corr), corr, -np.inf)
    corr[unit] = -np.inf
    got = most_correlated(values, unit, 5)
    assert [r.unit for r in got] == list(np.argsort(-corr, kind="stable")[:5])
    assert all(unit != r.unit for r in got)


# ----------------------------------------------------------------------------- recipes


def test_nnls_matches_brute_force_over_supports() -> None:
    rng = np.random.default_rng(3)
    for _ in range(30):
        a = rng.normal(size=(12, 5))
        b = rng.normal(size=12)
        x = nnls(a, b)
        assert (x >= 0).all()
        best = np.inf
        for k in range(6):
            for support in itertools.combinations(range(5), k):
                if not support:
                    best = min(best, float(np.linalg.norm(b)))
                    continue
                sol = np.linalg.lstsq(a[:, support], b, rcond=None)[0]
                if (sol >= -1e-12).all():
                    best = min(best, float(np.linalg.norm(a[:, support] @ sol - b)))
        assert np.linalg.norm(a @ x - b) == pytest.approx(best, abs=1e-8)


def test_recipe_recovers_a_sparse_nonnegative_mix() -> None:
    rng = np.random.default_rng(4)
    directions = rng.normal(size=(200, 64))
    unit = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    query = 2.5 * unit[17] + 1.1 * unit[42]
    recipe = fit_recipe(query, directions, max_terms=4)
    assert [t.unit for t in recipe.terms[:2]] == [17, 42]
    assert recipe.terms[0].weight / recipe.terms[1].weight == pytest.approx(2.5 / 1.1, rel=1e-6)
    assert recipe.cosine == pytest.approx(1.0) and all(t.weight > 0 for t in recipe.terms)
    centred = fit_recipe(query + unit[5], directions, max_terms=4, centre=unit[5])
    assert [t.unit for t in centred.terms[:2]] == [17, 42] and centred.centred


@pytest.mark.slow
@needs_weights
def test_recipes_fit_the_concepts_with_their_own_neurons(demo_loaded, tmp_path_factory) -> None:
    """The page's recipe of each demo concept word (uncentred, as /search fits it): better than
    the null words' fits for most concepts (at least 10 of 14), refused for nonsense (at least 3 of
    4), and for most concepts (at least 9 of 14) one of its first three terms is one of the
    concept's own neurons (auto label = the concept, its eval-demo multimodal neuron, or a unit
    selective for it on held-out renderings: ground-truth d′ ≥ 1.5 in pictures or as a word, the
    way eval-labels measures it); by chance about 3 in 14 each. On the demo build's index
    (`eval-search`): 12 of 14 fitted, 4 of 4 nonsense refused. Without centring, the first term is
    often a unit every word drives (the text part all words share), so the own neuron is asked of
    the first three; centred on the vocabulary, it led for 8 of 14, but 7 of 14 concept words then
    fitted no better than the null and "xqzvbl" did."""
    from app.neurons import zeroshot
    from app.neurons.calibration import null_words, recipe_null, recipe_refused
    from precompute import demo_world
    from precompute.eval_labels import SELECTIVE, ground_truth_dprimes
    from precompute.eval_search import NONSENSE

    url = trained_db(demo_loaded, tmp_path_factory.mktemp("trained"))
    with _session(url) as s:
        layer = s.scalar(select(Layer).where(Layer.is_last.is_(True)))
        d = s.get(Direction, layer.id)
        directions = from_bytes(d.values, "float32", (d.n_units, d.embed_dim))
        top_label = dict(
            s.execute(
                select(Neuron.unit, Label.label)
                .join(Label, Label.neuron_id == Neuron.id)
                .where(Neuron.layer_id == layer.id, Label.source == "auto", Label.rank == 0)
            ).all()
        )
    concepts = list(demo_world.CONCEPTS)
    candidates, dprimes = ground_truth_dprimes(demo_loaded, [layer.name], n_per_class=20)
    truth = dprimes[layer.name]  # (candidates, units): pictures, then written words
    null_emb = zeroshot.encode_texts(demo_loaded, null_words())
    null = recipe_null([fit_recipe(e, directions).cosine for e in null_emb])
    named = named_multimodal_neurons()

    def own(concept: str, unit: int) -> bool:
        # issue 16: an automatic label names the concept's pictures ("red") or its written word
        label = (top_label.get(unit) or "").removesuffix(mm.TEXT_SUFFIX)
        selective = max(truth[candidates.index(concept), unit],
                        truth[candidates.index(concept + mm.TEXT_SUFFIX), unit]) >= SELECTIVE  # fmt: skip
        return label == concept or named.get(concept) == unit or bool(selective)

    fitted, owned = {}, {}
    for concept, query in zip(concepts, zeroshot.encode_texts(demo_loaded, concepts), strict=True):
        recipe = fit_recipe(query, directions)
        fitted[concept] = not recipe_refused(recipe.cosine, null)
        owned[concept] = any(own(concept, t.unit) for t in recipe.terms[:3])
    nonsense = [recipe_refused(fit_recipe(q, directions).cosine, null)
                for q in zeroshot.encode_texts(demo_loaded, list(NONSENSE))]  # fmt: skip
    assert sum(fitted.values()) >= 10, (fitted, null)
    assert sum(nonsense) >= 3, (nonsense, null)
    assert sum(owned.values()) >= 9, owned


def test_search_page_shows_the_recipe(labelled, demo_loaded, tmp_path) -> None:
    import httpx

    from tests.live_support import copy_db, live_server

    url = copy_db(labelled.removeprefix("sqlite:///"), tmp_path)
    with live_server(url, demo_loaded, "demo") as (base, _runner, _app):
        with httpx.Client(base_url=base, timeout=60) as http:
            data = http.get("/search.json", params={"q": "red"}).json()
            page = http.get("/search", params={"q": "red"}).text
    recipe = data["recipe"]
    assert 0 < recipe["cosine"] <= 1 and not recipe["centred"]
    assert 'id="recipe"' in page and "null fit" in page
    if recipe["refused"]:  # issue 16: no better than ordinary words -> no recipe, said so
        assert recipe["terms"] == [] and recipe["cosine"] <= recipe["null"]["p95"]
        assert "recipe-refused" in page and "No recipe" in page
        return
    assert 1 <= len(recipe["terms"]) <= 6 and recipe["cosine"] > recipe["null"]["p95"]
    weights = [t["weight"] for t in recipe["terms"]]
    assert weights == sorted(weights, reverse=True) and min(weights) > 0
    assert all(t["url"].startswith("/models/demo/layers/layer4.5/neurons/") for t in recipe["terms"])
    assert "recipe-term" in page


# ----------------------------------------------------------------------------- atlas


def test_layout_keeps_clusters_together() -> None:
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(4, 32))
    features = np.concatenate([c + 0.2 * rng.normal(size=(40, 32)) for c in centres])
    out = layout(features, "direction")
    assert out.method == "t-SNE" and out.xy.shape == (160, 2)
    assert out.xy.min() >= 0 and out.xy.max() <= 1
    groups = np.repeat(np.arange(4), 40)
    spread = np.mean([out.xy[groups == g].std(0).mean() for g in range(4)])
    centroids = np.array([out.xy[groups == g].mean(0) for g in range(4)])
    gaps = [np.linalg.norm(a - b) for a, b in itertools.combinations(centroids, 2)]
    assert min(gaps) > 3 * spread
    np.testing.assert_array_equal(layout(features, "direction").xy, out.xy)  # deterministic
    profiles = activation_profiles(rng.normal(size=(30, 7)))
    assert profiles.shape == (7, 30) and np.allclose(profiles.mean(1), 0)


def test_atlas_page_places_every_neuron_with_label_and_link(client) -> None:
    data = client.get("/models/demo/layers/layer4.5/atlas.json").json()
    assert data["features"] == "direction" and data["method"] == "t-SNE"
    assert sorted(p["unit"] for p in data["points"]) == list(range(512))
    assert all(0 <= p["x"] <= 1 and 0 <= p["y"] <= 1 and "label" in p and p["url"] for p in data["points"])
    assert any(p["label"] for p in data["points"])  # issue 16: only backed labels are shown as titles
    other = client.get("/models/demo/layers/layer3.0/atlas.json").json()
    assert other["features"] == "activation profile" and len(other["points"]) == 256
    html = client.get("/models/demo/layers/layer4.5/atlas").text
    # issue 18: one sprite image for all thumbnails, every unit in its own cell (none hidden)
    assert html.count('class="atlas-cell"') == 512 and html.count("<image ") <= 1
    assert "<title>unit 0" in html  # unit 0 may have no backed label
    assert len({(p["col"], p["row"]) for p in data["points"]}) == 512
    assert client.get("/models/demo/layers/nope/atlas").status_code == 404


# ----------------------------------------------------------------------------- multimodal view


def test_multimodal_view_lists_top_neurons_with_photo_and_text_evidence(client) -> None:
    data = client.get("/models/demo/multimodal.json", params={"n": 5}).json()
    assert data["layer"]["name"] == "layer4.5" and len(data["neurons"]) == 5
    # the most multimodal unit of each concept first (strongest on its own scale first), then the
    # rest by score
    champions = [n for n in data["neurons"] if n["champion"]]
    assert data["neurons"][: len(champions)] == champions
    strengths = [n["strength"] for n in champions]
    assert None not in strengths and strengths == sorted(strengths, reverse=True)
    scores = [n["multimodality"] for n in data["neurons"][len(champions) :]]
    assert scores == sorted(scores, reverse=True)
    assert len({n["concept"] for n in champions}) == len(champions)
    for n in data["neurons"]:
        assert n["url"].endswith(f"/neurons/{n['unit']}")
        assert len(n["concept_words"]) == 3 and all(w["thumb"] for w in n["concept_words"])
        assert n["scatter"]["points"]
    assert any(n["photos"] for n in data["neurons"])
    html = client.get("/models/demo/multimodal", params={"layer": "layer3.0", "n": 3}).text
    assert "Photo evidence" in html and "Text evidence" in html and html.count('class="panel mm-row"') == 3
    assert client.get("/models/demo/multimodal.json", params={"layer": "nope"}).status_code == 404


# ----------------------------------------------------------------------------- other datasets


@pytest.mark.slow
def test_folder_dataset_gets_zero_shot_concepts_and_generic_word_renderings(rn50_random, tmp_path) -> None:
    """Without ground truth (a plain image folder) the stage tags images by zero-shot pseudo-labels
    and renders words with the generic text renderer (any open_clip model)."""
    from PIL import Image

    from app.db.schema import ConceptProfile
    from precompute.activations import run_activations
    from precompute.labels import LabelsOptions, run_labels

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        Image.new("RGB", (40 + 8 * i, 48), (40 * i, 200 - 30 * i, 90)).save(folder / f"{i}.png")
    url = f"sqlite:///{tmp_path / 'rn50.db'}"
    report = run_activations(
        rn50_random, str(folder), url, top_k=3, batch_size=6, sample_size=6, progress=False
    )
    assert report.status == "done"
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("red\ngreen\nblue\nsky\ngrass\n")
    reports = run_labels(
        url, options=LabelsOptions(vocab=vocab, top=3, k=2, progress=False), loaded=rn50_random
    )
    # issue 16: a label is chosen on half the sample with >= 3 images each side of a tag; 6 images
    # of a random model give no such tag, so units may stay unlabelled (never labelled without it)
    assert reports[0].tag_source == "zero-shot"
    assert 0 <= reports[0].labelled <= sum(lr.n_units for lr in rn50_random.layers)
    with _session(url) as s:
        written = s.scalar(select(func.count(func.distinct(Label.neuron_id))).where(Label.source == "auto"))
        assert reports[0].labelled == written  # the report counts the units it labelled
        for layer in s.scalars(select(Layer)):
            profile = s.get(ConceptProfile, layer.id)
            assert profile.source == "zero-shot" and profile.concepts == [
                "red",
                "green",
                "blue",
                "sky",
                "grass",
            ]
            assert len(profile.image_tags) == 6 and all(len(t) <= 1 for t in profile.image_tags.values())
            assert len(profile.word_blobs) == 5
        assert set(s.scalars(select(Label.label).where(Label.source == "auto"))) <= {
            "red",
            "green",
            "blue",
            "sky",
            "grass",
        }
