"""Issue 16 on the trained demo model at the demo's own size (demo:2000, real pipeline):
multimodality that means it, labels with evidence, eval-labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.config import Settings
from app.db import from_bytes, make_engine, session_factory
from app.db.meaning import multimodal_ranking
from app.db.schema import ActivationSample, Label, LabelEvidence, Layer, Neuron
from app.neurons import labels as labelling
from app.neurons import multimodality as mm
from app.web.app import create_app
from tests.meaning_support import best_units, demo2000_db, needs_weights

pytestmark = [pytest.mark.slow, needs_weights]


@pytest.fixture(scope="module")
def demo2000(demo_loaded, tmp_path_factory) -> str:
    return demo2000_db(demo_loaded, tmp_path_factory.mktemp("demo2000"))


@pytest.fixture(scope="module")
def client(demo2000):
    with TestClient(create_app(Settings(db_url=demo2000, device="cpu"))) as c:
        yield c


def test_multimodal_view_puts_eval_demos_best_units_on_top(client) -> None:
    """The top 14 of the view contain eval-demo's best unit (model card) of ≥ 10 of the 14
    concepts (measured 10/14 on the demo index; the old correlation score: 6/14 with d′ over all
    pictures and words, 2 of its top 5 holding up)."""
    data = client.get("/models/demo/multimodal.json", params={"n": 14}).json()
    shown = [n["unit"] for n in data["neurons"]]
    best = best_units()
    hits = [c for c, u in best.items() if u in shown]
    assert len(hits) >= 10, (hits, shown)
    for n in data["neurons"]:  # both numbers, and the score is their minimum
        assert n["multimodality"] == pytest.approx(min(n["picture_d"], n["word_d"]), abs=1e-3)
        assert n["concept"] and n["correlation"] is None or -1 <= n["correlation"] <= 1
        # every value on the unit's own scale: percentile and z beside each word and example
        for item in [*n["concept_words"], *n["photos"], *n["text_examples"], *n["top_words"]]:
            assert 0 <= item["percentile"] <= 100 and item["z"] is not None, item
        for e in n["photos"][:1]:  # a unit's best dataset picture sits at the top of its distribution
            assert e["percentile"] >= 90, e
    # one unit per concept first, strongest on its own scale first: strength = the smaller of
    # the two percentiles the row shows (its concept's word and pictures)
    champions = [n for n in data["neurons"] if n["champion"]]
    assert len({n["concept"] for n in champions}) == len(champions) == 14
    for n in champions:
        want = min(n["concept_word"]["percentile"], n["concept_pictures"]["percentile"])
        assert n["strength"] == pytest.approx(want, abs=0.11), n["unit"]
    strengths = [n["strength"] for n in champions]
    assert strengths == sorted(strengths, reverse=True)
    assert all(n["strength"] is None for n in data["neurons"] if not n["champion"])
    html = client.get("/models/demo/multimodal").text
    assert "the smaller of two d′" in html and "strength = the smaller of the percentiles" in html


def test_multimodal_view_says_when_its_concept_does_not_excite_a_unit(client) -> None:
    """d′ only says a unit prefers its concept to the others; where the concept's word or pictures
    sit below the unit's own dataset mean, the row says so (numbers on the unit's own scale)."""
    data = client.get("/models/demo/multimodal.json", params={"n": 24}).json()
    html = client.get("/models/demo/multimodal", params={"n": 24}).text
    flagged = 0
    for n in data["neurons"]:
        for key, kind in (("concept_word", "word"), ("concept_pictures", "pictures")):
            placed = n[key]
            assert placed is not None and 0 <= placed["percentile"] <= 100, n["unit"]
            if placed["z"] < -0.005:
                assert kind in n["below_own_mean"], (n["unit"], key, placed)
            elif placed["z"] > 0.005:
                assert kind not in n["below_own_mean"], (n["unit"], key, placed)
        flagged += bool(n["below_own_mean"])
        if n["top_words"] and n["top_words"][0]["z"] < -0.005:
            assert n["no_word_excites"], n["unit"]
    assert html.count("mm-weak") == flagged
    assert flagged < len(data["neurons"])


def test_top_units_hold_up_on_renderings_they_were_not_tuned_on(demo2000, demo_loaded) -> None:
    """The view's top 5 units, on renderings the score never saw: their concept word in font faces
    the model was not trained on at sizes outside the training range, and plain objects of fresh
    seeds; each unit's median response placed in its own dataset distribution (percentile). And
    what a reader of an analysis of each such image sees: is the unit among the layer's top 64 by
    percentile or z-score (the live analysis's selection)?"""
    from app.live.analysis import shown_by_any_sort
    from app.neurons.capture import layer_maps
    from app.neurons.scale import layer_scales
    from app.neurons.zeroshot import preprocess_batch
    from precompute import demo_world as world

    faces = [f for f in ("DejaVuSerif-Italic.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSerifCondensed.ttf")
             if any((d / f).is_file() for d in world._DEJAVU_DIRS)] or ["builtin"]  # noqa: SLF001  # fmt: skip
    with session_factory(make_engine(demo2000, create=False))() as s:
        layer = s.scalar(select(Layer).where(Layer.is_last.is_(True)))
        sample = s.get(ActivationSample, layer.id)
        values = from_bytes(sample.values, "float16", (sample.n_images, sample.n_units)).astype(np.float32)
        top = multimodal_ranking(s, layer)[:5]
    info = demo_loaded.layer(layer.name)

    def responses(images: list) -> np.ndarray:
        x = preprocess_batch(demo_loaded, images)
        return layer_maps(demo_loaded, x, [info])[layer.name].amax(dim=(2, 3)).numpy()

    def median_response(images: list) -> np.ndarray:
        return np.median(responses(images), 0)

    object_rows = {c: responses([world.render(world.HELDOUT_SEED, 7_000_000 + i, "object",
                                              **{"colour" if c in world.COLOURS else "shape": c}).image
                                 for i in range(8)])
                   for c in world.CONCEPTS}  # fmt: skip
    objects = {c: np.median(rows, 0) for c, rows in object_rows.items()}
    means, stds = values.astype(np.float64).mean(0), values.astype(np.float64).std(0)

    def shown_in_analyses(rows: np.ndarray, unit: int) -> int:
        """Of the images whose ``rows`` of responses these are, how many an analysis (the layer's
        top 64 by percentile or by z) shows ``unit`` for."""
        scales = (layer_scales(values, means, stds, v) for v in rows)
        return sum(unit in shown_by_any_sort(pct, zs, 64) for pct, zs in scales)

    def percentile(unit: int, value: float) -> float:
        return 100 * float((values[:, unit] < value).mean())

    def first(by_concept: dict[str, np.ndarray], concept: str, unit: int) -> bool:
        """Its own concept excites the unit more than each of the other 13 rendered the same way."""
        return all(by_concept[concept][unit] > v[unit] for c, v in by_concept.items() if c != concept)

    trained = [f for f in ("DejaVuSans-Bold.ttf", "DejaVuSans.ttf")
               if any((d / f).is_file() for d in world._DEJAVU_DIRS)] or ["builtin"]  # noqa: SLF001  # fmt: skip
    conditions = {"unseen faces": (faces, (30, 44)), "unseen sizes": (trained, (18, 64)),
                  "both": (faces, (18, 64))}  # fmt: skip
    at90, at65, own_first = {}, {}, {}
    for name, (word_faces, sizes) in conditions.items():
        words = {c: median_response([world.render_word(c, font=f, size=sz)
                                     for f in word_faces for sz in sizes])
                 for c in world.CONCEPTS}  # fmt: skip
        placed = [min(percentile(r.unit, words[r.concept][r.unit]),
                      percentile(r.unit, objects[r.concept][r.unit]))
                  for r in top]  # fmt: skip
        at90[name], at65[name] = sum(p >= 90 for p in placed), sum(p >= 65 for p in placed)
        own_first[name] = sum(first(words, r.concept, r.unit) and first(objects, r.concept, r.unit)
                              for r in top)  # fmt: skip
    # measured on the demo index: 3, 4 and 2 of 5 at >= 90th (the layer's ceiling, some unit for
    # each concept: 6, 4 and 3 of 14 concepts), 5 of 5 at >= 65th in every condition; own concept
    # first among the 14 on both word and objects: 5, 5 and 4 of 5
    assert at90["unseen faces"] >= 3 and at90["unseen sizes"] >= 3, at90
    assert min(at65.values()) >= 5, at65
    assert own_first["unseen faces"] == own_first["unseen sizes"] == 5 and own_first["both"] >= 4, own_first

    # an analysis of each unseen-face word image (training sizes) and each plain object: measured on
    # the demo index, words 4, 6, 6, 6 and 3 of 6, objects 7, 8, 6, 6 and 8 of 8 (the issue found 3
    # of the view's top 5 outside an analysis's top 64 on such a word altogether)
    on_words = [shown_in_analyses(responses([world.render_word(r.concept, font=f, size=sz) for f in faces
                                             for sz in (30, 44)]), r.unit) for r in top]  # fmt: skip
    on_objects = [shown_in_analyses(object_rows[r.concept], r.unit) for r in top]
    n_words = 2 * len(faces)
    assert all(2 * k >= n_words for k in on_words), on_words  # every unit on half its words or more
    assert sum(2 * k > n_words for k in on_words) >= 4, on_words  # and most on a majority
    assert all(2 * k > 8 for k in on_objects), on_objects


def test_dead_units_get_no_multimodality() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(60, 4)).astype(np.float32)
    values[:, 2] = 0.5  # constant
    values[:, 3] *= 0.01  # near-constant
    assert mm.alive_units(values).tolist() == [True, True, False, False]
    picture_d = np.array([[3.0, 0.5, 9.0, 9.0], [0.1, 2.0, 9.0, 9.0]], np.float32)
    word_d = np.array([[1.0, 4.0, 9.0, 9.0], [0.2, 2.5, 9.0, 9.0]], np.float32)
    score, best = mm.multimodal_dprime_scores(picture_d, word_d, mm.alive_units(values))
    assert score[0] == pytest.approx(1.0) and best[0] == 0  # min(3, 1) beats min(0.1, 0.2)
    assert score[1] == pytest.approx(2.0) and best[1] == 1  # a strong word alone is not enough
    assert np.isnan(score[2:]).all() and (best[2:] == -1).all()


def test_evidence_matches_scipy_and_is_held_out(demo2000) -> None:
    """Evidence recomputed independently from the index: AUC = U / (n₊ n₋) on the held-out half of
    the activation sample, within the label's comparison pool (a picture tag among plain pictures
    showing a concept of its kind, a written word among text-only images reading a word of its
    kind: demo ground truth in ``images.meta``), precision of the top 20, n; and the auto labels
    were chosen on the other half."""
    from scipy.stats import mannwhitneyu

    from app.db.schema import Image
    from precompute import demo_world as world

    def pool_of(label: str, meta: dict) -> bool | None:
        """True: an image of the label; False: an image it is compared with; None: neither."""
        written = label.endswith(mm.TEXT_SUFFIX)
        concept = label[: -len(mm.TEXT_SUFFIX)] if written else label
        kind = world.COLOURS if concept in world.COLOURS else world.SHAPES
        if written:
            if meta["modality"] != "text":
                return None
            words = [w for w in str(meta.get("word") or "").lower().split() if w in kind]
            return (concept in words) if words else None
        if meta["modality"] != "object":
            return None
        return meta["colour" if kind is world.COLOURS else "shape"] == concept

    with session_factory(make_engine(demo2000, create=False))() as s:
        layer = s.scalar(select(Layer).where(Layer.is_last.is_(True)))
        sample = s.get(ActivationSample, layer.id)
        values = from_bytes(sample.values, "float16", (sample.n_images, sample.n_units)).astype(np.float32)
        from app.db.meaning import concept_profile

        assert concept_profile(s, layer).source == "ground-truth"
        metas = dict(s.execute(select(Image.id, Image.meta)).all())
        held = labelling.held_out([int(i) for i in sample.image_ids])
        assert 0.4 < held.mean() < 0.6
        rows = s.execute(
            select(Neuron.unit, LabelEvidence)
            .join(LabelEvidence, LabelEvidence.neuron_id == Neuron.id)
            .where(Neuron.layer_id == layer.id)
            .limit(40)
        ).all()
        assert rows
        for unit, ev in rows:
            side = [pool_of(ev.label, metas[int(i)]) for i in np.asarray(sample.image_ids)[held]]
            keep = np.array([x is not None for x in side])
            pos = np.array([bool(x) for x in side])[keep]
            v = values[held, unit][keep]
            u = mannwhitneyu(v[pos], v[~pos], alternative="greater")
            assert ev.auc == pytest.approx(u.statistic / (pos.sum() * (~pos).sum()), abs=1e-3)
            assert ev.p_value == pytest.approx(u.pvalue, rel=1e-3, abs=1e-300)
            top = np.argsort(-v, kind="stable")[:20]
            assert ev.precision == pytest.approx(pos[top].mean(), abs=0.051)  # float16 ties
            assert ev.n_images == int(keep.sum()) and ev.n_positive == int(pos.sum())
        assert s.scalar(select(Label).where(Label.source == "auto").limit(1)) is not None


def test_weak_labels_are_never_titles_and_the_grid_filters_by_auc(client, demo2000) -> None:
    data = client.get("/models/demo/layers/layer4.5.json", params={"min_auc": "0.9", "per_page": 600}).json()
    assert data["neurons"] and all(n["label_auc"] >= 0.9 for n in data["neurons"])
    everything = client.get("/models/demo/layers/layer4.5.json", params={"per_page": 600}).json()
    assert data["total"] < everything["total"]
    params = {"sort": "label_auc", "per_page": 600}
    ordered = client.get("/models/demo/layers/layer4.5.json", params=params).json()
    aucs = [n["label_auc"] for n in ordered["neurons"] if n["label_auc"] is not None]
    assert aucs == sorted(aucs, reverse=True)
    page = client.get("/models/demo/layers/layer4.5/neurons/0.json").json()
    labels = page["sections"]["labels"]
    titles = [lb for lb in labels if lb["title"]]
    assert len(titles) <= 1 and all(lb["evidence"]["auc"] >= 0.75 for lb in titles)
    assert all(lb["evidence"]["precision_top20"] >= 0.5 for lb in titles)  # demo:2000: n₊ ≥ 20

    def weak(ev) -> bool:
        if ev is None or ev["auc"] is None or ev["auc"] < 0.75:
            return True
        return 20 * ev["precision_top20"] < 0.5 * min(20, ev["n_positive"]) - 1e-9

    assert all(lb["weak"] == weak(lb["evidence"]) for lb in labels)
    # a label whose strongest held-out responses are mostly to something else is never a title
    with session_factory(make_engine(demo2000, create=False))() as s:
        layer = s.scalar(select(Layer).where(Layer.name == "layer4.5"))
        n_pos = dict(
            ((unit, label), n) for unit, label, n in s.execute(
                select(Neuron.unit, LabelEvidence.label, LabelEvidence.n_positive)
                .join(LabelEvidence, LabelEvidence.neuron_id == Neuron.id)
                .where(Neuron.layer_id == layer.id)
            )
        )  # fmt: skip
    titled = [n for n in everything["neurons"] if n["label"] and not n["label_weak"]]
    assert titled
    for n in titled:
        reachable = min(20, n_pos[(n["unit"], n["label"])]) / 20
        assert n["label_auc"] >= 0.75 and n["label_precision"] >= 0.5 * reachable - 1e-9, n
    html = client.get("/models/demo/layers/layer4.5/neurons/0").text
    assert "top-20 precision" in html and "label-hist" in html


def test_eval_labels_prints_accuracy_and_backed_share(demo2000, capsys) -> None:
    from app.cli import main

    assert main(["eval-labels", "--db", demo2000, "--n", "12"]) == 0
    out = capsys.readouterr().out
    backed = float(out.split("title labels backed: ")[1].split()[0])
    accuracy = float(out.split("label accuracy: ")[1].split()[0])
    assert backed == 1.0 and 0.0 <= accuracy <= 1.0


def test_eval_labels_ground_truth_csv(demo2000, tmp_path: Path, capsys) -> None:
    """CLIP-Dissect's protocol: top-1 accuracy of the title labels against a CSV."""
    from app.cli import main

    client_rows = []
    with session_factory(make_engine(demo2000, create=False))() as s:
        from app.db.units import unit_summaries

        layer = s.scalar(select(Layer).where(Layer.is_last.is_(True)))
        titled = [(u, x.label) for u, x in unit_summaries(s, layer).items() if x.label][:10]
    for i, (unit, label) in enumerate(titled):
        client_rows.append(f"{layer.name},{unit},{label if i < 5 else 'not-a-label'}")
    path = tmp_path / "gt.csv"
    path.write_text("layer,unit,label\n" + "\n".join(client_rows) + "\n")
    assert main(["eval-labels", "--db", demo2000, "--ground-truth-csv", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ground truth rows: 10" in out and "top-1 accuracy: 0.500" in out
