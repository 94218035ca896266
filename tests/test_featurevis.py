"""Feature visualization: the algorithm, the featurevis and words stages, and quality on the demo model.

Fast tests use tiny settings (few steps, small images). The quality tests (``slow``) need the
trained demo weights and are skipped until they exist.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from app.db import make_engine, session_factory
from app.db.schema import FeatureVisualization, Layer, Neuron, NeuronWord, Run
from app.db.version import read_data_version
from app.neurons import featurevis as fv
from app.neurons.capture import run_visual
from precompute.featurevis_quality import (
    diagonal_dominance,
    dominant_colour,
    named_colour_neurons,
    word_ranks,
)

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "app" / "models" / "weights"
WEIGHTS = WEIGHTS_DIR / "conceptscope-demo.safetensors"
TINY = fv.RenderSettings(steps=6, size=48)


def last_layer(loaded):
    return next(layer for layer in loaded.layers if layer.is_last)


# --------------------------------------------------------------------------- the algorithm


def test_transforms_are_identity_without_randomness_and_independent_per_image() -> None:
    image = torch.rand(3, 3, 32, 32)
    plain = fv.RenderSettings(pad=0, jitter=0, jitter2=0, scales=(1.0,), angles=(0,))
    theta = fv.random_affine(3, 32, plain, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.allclose(fv.apply_affine(image, theta), image, atol=1e-5)

    generator = torch.Generator().manual_seed(0)
    theta = fv.random_affine(64, 32, fv.RenderSettings(), generator, torch.device("cpu"))
    assert len({tuple(t.flatten().tolist()) for t in theta}) > 32  # per-image parameters
    # outside the image reads grey
    out = fv.apply_affine(torch.zeros(1, 3, 32, 32), torch.tensor([[[2.0, 0, 0], [0, 2.0, 0]]]))
    assert out[0, :, 0, 0].tolist() == pytest.approx([0.5] * 3)


def test_fourier_image_is_in_unit_range_and_seeded() -> None:
    a = fv.FourierImage(2, 40, generator=torch.Generator().manual_seed(3))()
    b = fv.FourierImage(2, 40, generator=torch.Generator().manual_seed(3))()
    assert a.shape == (2, 3, 40, 40) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1


def test_add_mean_makes_a_flat_image_of_the_given_logits() -> None:
    for decay in (1.0, 1.5):
        image = fv.FourierImage(2, 24, decay_power=decay, sd=0.0)
        logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 1.0]])
        image.add_mean(logits)
        out = image()
        assert torch.allclose(out, torch.sigmoid(logits)[:, :, None, None].expand_as(out), atol=1e-5)


def test_colour_start_picks_each_neurons_best_and_worst_flat_colour(demo_loaded) -> None:
    layer = last_layer(demo_loaded)
    units, signs = [3, 3, 40], [1, -1, 1]
    start = fv.RenderSettings(steps=0, size=32, init_sd=0.0, colour_start=1.0)
    result = fv.render(demo_loaded, layer, units, signs=signs, settings=start)
    candidates = fv.flat_colour_candidates()
    flats = fv.flat_images(candidates, 32)
    for i, (unit, sign) in enumerate(zip(units, signs, strict=True)):
        values = torch.tensor(fv.objectives(demo_loaded, layer, flats, [unit] * len(candidates)))
        expected = candidates[int((sign * values).argmax())]
        assert torch.allclose(result.images[i, :, 0, 0], expected, atol=1e-4)
        assert torch.allclose(result.images[i], result.images[i, :, :1, :1].expand(3, 32, 32), atol=1e-4)
    assert result.settings["colour_start"] == 1.0
    grey = fv.render(demo_loaded, layer, units, signs=signs, settings=start.with_(colour_start=0.0))
    assert torch.allclose(grey.images, torch.full_like(grey.images, 0.5))


def test_prepared_model_matches_original(demo_loaded) -> None:
    fast = fv.prepared_visual(demo_loaded.visual, demo_loaded.device)
    assert fast is not demo_loaded.visual  # BatchNorm was folded
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    x = torch.rand(2, 3, 64, 64)
    layer = last_layer(demo_loaded)
    with torch.inference_mode():
        ref = run_visual(demo_loaded.visual, x, [layer], detach=False)[layer.name]
        out = run_visual(fast, x, [layer], detach=False)[layer.name]
    assert torch.allclose(ref, out, atol=1e-4 * ref.abs().max().item() + 1e-6)
    assert all(p.requires_grad for p in demo_loaded.visual.parameters())  # original untouched


def test_deterministic_on_cpu_and_seed_matters(demo_loaded) -> None:
    layer = last_layer(demo_loaded)
    a = fv.render(demo_loaded, layer, [0, 1, 2], settings=TINY)
    b = fv.render(demo_loaded, layer, [0, 1, 2], settings=TINY)
    c = fv.render(demo_loaded, layer, [0, 1, 2], settings=TINY.with_(seed=1))
    assert torch.equal(a.images, b.images) and a.objectives == b.objectives
    assert not torch.equal(a.images, c.images)
    assert a.settings["steps"] == 6 and a.settings["size"] == 48 and a.settings["precision"] == "fp32"
    assert a.images.shape == (3, 3, 48, 48)


def test_params_frozen_during_render_and_restored(demo_loaded) -> None:
    seen = []
    layer = last_layer(demo_loaded)
    visual = demo_loaded.visual

    def progress(step: int) -> None:
        seen.append(any(p.requires_grad for p in visual.parameters()))

    fv.render(demo_loaded, layer, [0], settings=TINY.with_(steps=2, prepare=False), progress=progress)
    assert seen == [False, False]
    assert all(p.requires_grad for p in visual.parameters())
    assert all(p.grad is None for p in visual.parameters())


@pytest.mark.parametrize("layer_index", [0, 1])
def test_excites_and_inhibits_each_neuron_in_one_batch(demo_loaded, layer_index: int) -> None:
    layer = demo_loaded.layers[layer_index]
    units = [0, 1, 2, 3, 4, 5]
    settings = fv.RenderSettings(steps=48, size=64)
    start = fv.render(demo_loaded, layer, units, settings=settings.with_(steps=0)).objectives
    both = fv.render(demo_loaded, layer, units * 2, signs=[1] * 6 + [-1] * 6, settings=settings)
    pos, neg = both.objectives[:6], both.objectives[6:]
    assert all(p > n for p, n in zip(pos, neg, strict=True)), (pos, neg)
    gains = [p - s for p, s in zip(pos, start, strict=True)]
    drops = [s - n for n, s in zip(neg, start, strict=True)]
    assert sum(g > 0 for g in gains) >= 5 and sum(d > 0 for d in drops) >= 5, (gains, drops)
    # one batch of many neurons reaches about what separate runs reach
    alone = [fv.render(demo_loaded, layer, [u], settings=settings).objectives[0] for u in units[:3]]
    alone_gain = sum(a - s for a, s in zip(alone, start, strict=False))
    assert sum(gains[:3]) > 0.5 * alone_gain, (alone, pos[:3], start[:3])


def test_objective_is_measured_on_the_untransformed_image(demo_loaded) -> None:
    layer = last_layer(demo_loaded)
    r = fv.render(demo_loaded, layer, [7, 9], settings=TINY)
    again = fv.objectives(demo_loaded, layer, r.images, [7, 9])
    assert again == pytest.approx(r.objectives, rel=1e-5, abs=1e-6)
    # a PNG round trip (what is stored) keeps the objective close
    from io import BytesIO

    from PIL import Image

    png = torch.stack([
        torch.from_numpy(np.array(Image.open(BytesIO(fv.to_png(img))))).permute(2, 0, 1).float() / 255
        for img in r.images
    ])
    assert fv.objectives(demo_loaded, layer, png, [7, 9]) == pytest.approx(r.objectives, rel=0.05, abs=0.05)


@pytest.mark.slow  # three renders of 6 images: 35 s on a shared 2-core host (load average 5)
def test_diversity_term_increases_the_measured_distance(demo_loaded) -> None:
    """Issue 18: the jointly optimised diversity term makes a set's images measurably more
    different than the same optimisation without the term (same ranked colour starts), and than
    independent images; the measure is what the page shows."""
    layer = last_layer(demo_loaded)
    units, groups = [3, 3, 3, 100, 100, 100], [0, 0, 0, 1, 1, 1]
    settings = fv.RenderSettings(steps=24, size=48, seed=5)

    def mean_distance(result: fv.Result) -> float:
        d = fv.feature_distances(demo_loaded, "layer2", result.images)
        return float(sum(d[a, b] for g in (0, 3) for a in range(g, g + 3) for b in range(a + 1, g + 3)) / 6)

    with_term = fv.render(demo_loaded, layer, units, groups=groups, settings=settings)
    no_term = settings.with_(diversity_weight=0.0)
    without_term = fv.render(demo_loaded, layer, units, groups=groups, settings=no_term)
    independent = fv.render(demo_loaded, layer, units, settings=settings)
    assert with_term.settings["diversity_layer"] == "layer2"
    assert with_term.settings["diversity_method"] == fv.DIVERSITY_METHOD
    d_with, d_without = mean_distance(with_term), mean_distance(without_term)
    d_plain = mean_distance(independent)
    print(f"mean pairwise distance: term {d_with:.3f}, no term {d_without:.3f}, independent {d_plain:.3f}")
    assert d_with > 1.2 * d_without and d_with > 1.2 * d_plain
    # the stored report is that same measure, per image
    report = with_term.diversity
    assert [r["position"] for r in report] == [0, 1, 2, 0, 1, 2] and independent.diversity == [None] * 6
    d = fv.feature_distances(demo_loaded, "layer2", with_term.images[:3])
    assert report[0]["pairwise"] == pytest.approx([float(d[0, 1]), float(d[0, 2]), float(d[1, 2])], abs=1e-3)
    assert report[1]["nearest"] == pytest.approx(min(float(d[1, 0]), float(d[1, 2])), abs=1e-3)
    assert report[0]["duplicate_of"] is None and report[0]["distinct"] >= 1


def test_near_duplicates_are_marked_greedily() -> None:
    d = torch.tensor([[0.0, 0.05, 0.5, 0.3], [0.05, 0.0, 0.45, 0.1], [0.5, 0.45, 0.0, 0.19],
                      [0.3, 0.1, 0.19, 0.0]])  # fmt: skip
    assert fv.distinct_images(d, 0.2) == [None, 0, None, 2]  # 3 is 0.19 from kept image 2
    assert fv.distinct_images(d, 0.01) == [None, None, None, None]
    assert fv.group_ranks(torch.tensor([4, 4, 7, 4, 7])).tolist() == [0, 1, 0, 2, 1]


def test_cpu_defaults_and_overrides(demo_loaded) -> None:
    s = fv.default_settings(demo_loaded)
    assert (s.steps, s.lr, s.size) == (fv.CPU_STEPS, fv.CPU_LR, demo_loaded.image_size // 2)
    assert fv.RenderSettings().lr == 0.05  # Lucid's step size stays the default elsewhere (GPU, bench)
    o = fv.default_settings(demo_loaded, steps=8, lr=0.05, size=None)
    assert (o.steps, o.lr, o.size) == (8, 0.05, demo_loaded.image_size // 2)  # None is ignored


def test_bad_units_raise(demo_loaded) -> None:
    layer = last_layer(demo_loaded)
    with pytest.raises(ValueError):
        fv.render(demo_loaded, layer, [layer.n_units], settings=TINY)
    with pytest.raises(ValueError):
        fv.render(demo_loaded, layer, [], settings=TINY)


@pytest.mark.slow
def test_vit_mlp_neurons_use_patch_tokens() -> None:
    from app.models import ModelSpec, load_model

    vit = load_model(ModelSpec.parse("ViT-B-32"), "cpu")
    layer = vit.layers[-1]
    assert layer.kind == "vit_mlp"
    r = fv.render(vit, layer, [0, 1], settings=fv.RenderSettings(steps=2))
    assert r.images.shape == (2, 3, 224, 224)
    with pytest.raises(ValueError):
        fv.render(vit, layer, [0], settings=fv.RenderSettings(steps=1, size=64))
    # objective = mean over patch tokens only (CLS excluded)
    mean, std = fv.normalisation(vit)
    with torch.inference_mode():
        raw = run_visual(vit.visual, (r.images - mean) / std, [layer], detach=False)[layer.name]
    patches = raw[:, 1:, :]
    expected = [float(patches[i, :, u].mean()) for i, u in enumerate([0, 1])]
    assert r.objectives == pytest.approx(expected, rel=1e-4, abs=1e-5)


# --------------------------------------------------------------------------- the stages


@pytest.fixture
def db_copy(tiny_db, tmp_path):
    path = tmp_path / "copy.db"
    shutil.copy(tiny_db.path, path)
    return f"sqlite:///{path}"


def fv_run(url: str) -> tuple[list[tuple[str, dict]], str]:
    """The featurevis ``runs`` rows (status, progress) and the index's data version."""
    engine = make_engine(url)
    with session_factory(engine)() as session:
        rows = [(r.status, r.progress) for r in session.scalars(select(Run).where(Run.stage == "featurevis"))]
        version = read_data_version(session)
    engine.dispose()
    return rows, version


def fv_counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    with session_factory(engine)() as session:
        rows = session.execute(
            select(FeatureVisualization.kind, func.count()).group_by(FeatureVisualization.kind)
        ).all()
    engine.dispose()
    return dict(rows)


def test_featurevis_stage_is_resumable(db_copy, demo_loaded) -> None:
    from precompute.featurevis import run_featurevis

    kwargs = dict(loaded=demo_loaded, units={0, 1, 2}, steps=2, size=32, batch=4, diversity=2,
                  progress=False)
    first = run_featurevis(db_copy, stop_after_batches=2, **kwargs)
    assert 0 < first.n_images < 18
    partial = fv_counts(db_copy)
    (status, progress), = fv_run(db_copy)[0]  # the stage's runs row (precompute.runs), checkpointed
    assert status == "running" and progress["neurons"] == 6 and progress["neurons_done"] < 6
    rest = run_featurevis(db_copy, **kwargs)
    # 2 layers x 3 units x (positive + negative) + 3 last-block units x 2 diversity images
    assert first.n_images + rest.n_images == 18
    assert fv_counts(db_copy) == {"positive": 6, "negative": 6, "diversity": 6}
    assert sum(partial.values()) == first.n_images
    runs, version = fv_run(db_copy)
    assert runs == [("done", {"neurons_done": 6, "neurons": 6})]  # the same row, finished
    again = run_featurevis(db_copy, **kwargs)
    assert again.n_images == 0 and again.n_skipped_neurons == 6
    assert fv_run(db_copy) == (runs, version)  # a no-op writes nothing: the data version stays

    engine = make_engine(db_copy)
    with session_factory(engine)() as session:
        rows = session.execute(
            select(FeatureVisualization, Neuron.unit, Layer.name)
            .join(Neuron, Neuron.id == FeatureVisualization.neuron_id)
            .join(Layer, Layer.id == Neuron.layer_id)
        ).all()
        for row, unit, layer_name in rows:
            assert row.settings["steps"] == 2 and row.settings["size"] == 32
            assert row.settings["kind"] == row.kind
            measured = fv.objectives(demo_loaded, layer_name, load_png(session, row.blob_sha256), [unit])[0]
            assert measured == pytest.approx(row.objective, rel=0.1, abs=0.05)
    engine.dispose()


def test_stage_stores_the_measured_diversity_and_redoes_sets_of_another_method(db_copy, demo_loaded) -> None:
    from precompute.featurevis import run_featurevis

    kwargs = dict(loaded=demo_loaded, units={4}, kinds=["diversity"], steps=2, size=32, batch=8,
                  progress=False)
    assert run_featurevis(db_copy, diversity=3, **kwargs).n_images == 3
    engine = make_engine(db_copy)
    where = FeatureVisualization.kind == "diversity"
    with session_factory(engine)() as session:
        rows = session.scalars(select(FeatureVisualization).where(where).order_by(FeatureVisualization.index))
        rows = rows.all()
        reports = [row.settings["diversity"] for row in rows]
        assert [r["position"] for r in reports] == [0, 1, 2] and {r["size"] for r in reports} == {3}
        assert {r["method"] for r in reports} == {fv.DIVERSITY_METHOD} and len(reports[0]["pairwise"]) == 3
        assert rows[0].settings["diversity_method"] == fv.DIVERSITY_METHOD
        assert reports[0]["duplicate_of"] is None
        assert reports[0]["distinct"] == sum(r["duplicate_of"] is None for r in reports)
        for r in reports:  # the distance shown: to the nearest other distinct image
            if r["duplicate_of"] is None and r["nearest_kept"] is not None:
                assert r["threshold"] <= r["nearest_kept"] and r["nearest"] <= r["nearest_kept"]
        for row in rows:  # a set made by an older method (no method recorded), one image larger
            old = ("diversity", "diversity_method")
            row.settings = {k: v for k, v in row.settings.items() if k not in old}
        session.add(FeatureVisualization(neuron_id=rows[0].neuron_id, kind="diversity", index=3,
                                         blob_sha256=rows[0].blob_sha256, objective=0.0))  # fmt: skip
        session.commit()
    assert run_featurevis(db_copy, diversity=3, **kwargs).n_images == 3  # rendered again ...
    assert run_featurevis(db_copy, diversity=3, **kwargs).n_images == 0  # ... once (idempotent)
    with session_factory(engine)() as session:
        rows = session.scalars(select(FeatureVisualization).where(where)).all()
        assert sorted(row.index for row in rows) == [0, 1, 2]  # the old set's extra image is gone
        assert all(row.settings["diversity"]["method"] == fv.DIVERSITY_METHOD for row in rows)
    engine.dispose()


def load_png(session, digest: str) -> torch.Tensor:
    from io import BytesIO

    from PIL import Image

    from app.db import get_blob

    blob = get_blob(session, digest)
    array = np.asarray(Image.open(BytesIO(blob.data)).convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255


def test_featurevis_cli_rejects_unknown_layer(db_copy, capsys) -> None:
    from app.cli import main

    code = main(["precompute", "featurevis", "--db", db_copy.removeprefix("sqlite:///"),
                 "--layers", "nope", "--no-progress"])
    assert code == 2
    assert "unknown layer" in capsys.readouterr().err


def test_words_stage_tiny_vocab_and_resume(db_copy, demo_loaded, tmp_path) -> None:
    from precompute.words import read_vocab, run_words

    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("# colours\nred\nblue\n\ncircle\napple\nred\nice cream\n")
    vocab = read_vocab(vocab_file)
    assert vocab == ["red", "blue", "circle", "apple", "ice cream"]

    interrupted = run_words(db_copy, loaded=demo_loaded, vocab=vocab, top=3, batch=2,
                                progress=False, stop_after_batches=1)
    assert interrupted.status == "interrupted"
    done = run_words(db_copy, loaded=demo_loaded, vocab=vocab, top=3, batch=2, progress=False)
    assert done.status == "done"
    assert run_words(db_copy, loaded=demo_loaded, vocab=vocab, top=3, batch=2,
                         progress=False).status == "already-done"

    from precompute.words import word_values

    expected = word_values(demo_loaded, vocab)
    engine = make_engine(db_copy)
    with session_factory(engine)() as session:
        n_neurons = session.scalar(select(func.count()).select_from(Neuron))
        assert session.scalar(select(func.count()).select_from(NeuronWord)) == 3 * n_neurons
        for layer in demo_loaded.layers:
            for unit in (0, layer.n_units - 1):
                rows = session.execute(
                    select(NeuronWord.word, NeuronWord.value).join(Neuron).join(Layer)
                    .where(Layer.name == layer.name, Neuron.unit == unit).order_by(NeuronWord.rank)
                ).all()
                values = expected[layer.name][:, unit]
                order = torch.argsort(-values, stable=True)[:3]
                assert [w for w, _ in rows] == [vocab[i] for i in order]
                assert [v for _, v in rows] == pytest.approx(values[order].tolist(), rel=1e-4, abs=1e-5)
    engine.dispose()


def test_default_vocabulary() -> None:
    from precompute.demo_world import CONCEPTS
    from precompute.words import bpe_words, default_vocabulary

    words = bpe_words()
    assert len(words) == 10_000 and len(set(words)) == 10_000
    assert words[0] == "the"
    assert all(w.isalpha() and w.isascii() and len(w) >= 3 for w in words)
    demo = default_vocabulary(is_demo=True)
    assert set(CONCEPTS) <= set(demo)


# --------------------------------------------------------------------------- quality (trained demo)

needs_weights = pytest.mark.skipif(not WEIGHTS.is_file(), reason="trained demo weights not there yet")


def test_dominant_colour_names_every_palette_colour() -> None:
    from precompute.demo_world import PALETTE

    for name, rgb in PALETTE.items():
        flat = torch.tensor(rgb, dtype=torch.float32)[:, None, None].expand(3, 16, 16) / 255
        noisy = (flat + 0.03 * torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
        assert dominant_colour(noisy) == name
    assert dominant_colour(torch.full((3, 8, 8), 0.5)) == "none"
    # a saturated minority outvotes a grey majority; between two colours the larger area wins
    image = torch.full((3, 10, 10), 0.5)
    image[:, :3] = torch.tensor(PALETTE["blue"], dtype=torch.float32)[:, None, None] / 255
    image[:, 3:4] = torch.tensor(PALETTE["red"], dtype=torch.float32)[:, None, None] / 255
    assert dominant_colour(image) == "blue"


def test_flat_field_responses_are_the_objectives_on_flat_images(demo_loaded) -> None:
    from precompute.demo_world import PALETTE
    from precompute.featurevis_quality import flat_field_responses

    layer = last_layer(demo_loaded)
    table = flat_field_responses(demo_loaded, layer, [3, 7], size=48)
    assert table.shape == (len(PALETTE), 2)
    green = torch.tensor(PALETTE["green"], dtype=torch.float32)[:, None, None].expand(1, 3, 48, 48) / 255
    expected = fv.objectives(demo_loaded, layer, green.contiguous(), [3, 7])
    assert table[list(PALETTE).index("green")].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_eval_featurevis_is_a_command() -> None:
    from app.cli import build_parser

    args = build_parser().parse_args(["eval-featurevis", "--skip-words"])
    assert args.skip_words and args.handler.__module__ == "precompute.featurevis_quality"


MODEL_CANNOT_READ_10K_WORDS = pytest.mark.xfail(
    strict=True,
    reason=(
        "known failure of the shipped demo weights, not of the words stage: measured by "
        "`conceptscope eval-featurevis`, the words ranked above each colour neuron's own word "
        "among the ~10k rendered words are red 619, yellow 77, green 1362, blue 94, purple 589, "
        "brown 322 (top words 'mill', 'wellington', 'pleasure', 'louisville', 'frank', "
        "'classroom'); four other renderings (regular face, 24/32 px, mean pooling, their z-scored "
        "average) gave ranks from 14 to 3217 and no top-1. The model was trained on 14 concept "
        "words and distractors; it tells 'red' from the other concept words (text d' 2.4) but "
        "not from 10k English words. strict: better weights that pass make CI report XPASS, "
        "and this marker must go"
    ),
)


@pytest.fixture(scope="module")
def last_block_visualizations(demo_loaded):
    """Positive visualizations of every last-block neuron at the CPU stage defaults."""
    layer = last_layer(demo_loaded)
    settings = fv.default_settings(demo_loaded)
    return fv.render(demo_loaded, layer, list(range(layer.n_units)), settings=settings)


@pytest.mark.slow
@needs_weights
def test_diagonal_dominance_of_last_block(demo_loaded, last_block_visualizations) -> None:
    share = diagonal_dominance(demo_loaded, last_layer(demo_loaded), last_block_visualizations.images)
    assert share >= 0.9, share


@pytest.mark.slow
@needs_weights
def test_colour_start_reaches_higher_objectives(demo_loaded) -> None:
    # measured on all 512 last-block neurons: median +31 %, better for 61 %; layer3: +99 %, 70 %
    layer = last_layer(demo_loaded)
    units = list(range(0, layer.n_units, 8))
    settings = fv.default_settings(demo_loaded)
    tinted = np.array(fv.render(demo_loaded, layer, units, settings=settings).objectives)
    lucid = settings.with_(colour_start=0.0)
    grey = np.array(fv.render(demo_loaded, layer, units, settings=lucid).objectives)
    assert np.median(tinted) > 1.15 * np.median(grey), (np.median(tinted), np.median(grey))
    assert np.mean(tinted > grey) > 0.5


@pytest.mark.slow
@needs_weights
def test_colour_neurons_visualizations_show_their_colour(demo_loaded, last_block_visualizations) -> None:
    neurons = named_colour_neurons()
    assert neurons, "eval-demo names no colour neuron"
    found = {c: dominant_colour(last_block_visualizations.images[u]) for c, u in neurons.items()}
    assert found == {c: c for c in neurons}, found


@pytest.mark.slow
@needs_weights
@MODEL_CANNOT_READ_10K_WORDS
def test_colour_neurons_top_rendered_word_is_the_concept(demo_loaded) -> None:
    neurons = named_colour_neurons()
    assert neurons
    ranks = word_ranks(demo_loaded, last_layer(demo_loaded), neurons)
    assert {c: top for c, (_, top) in ranks.items()} == {c: c for c in neurons}, ranks


# On-demand rendering on the web (POST only, DB-claimed jobs): tests/test_featurevis_web.py
