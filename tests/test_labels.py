"""Neuron labels: automatic (CLIP-Dissect style), imported (CSV/TSV, the Distill RN50x4 list) and manual."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from app.cli import main
from app.db import make_engine, session_factory
from app.db.schema import ConceptProfile, Label, LabelEvidence, Layer, Neuron, Run, UnitMultimodality
from app.neurons import labels as labelling
from precompute.labels import LabelsOptions, run_labels
from tests.live_support import copy_db
from tests.meaning_support import labelled_db, named_multimodal_neurons, needs_weights, trained_db

SHARED_TSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "distill-rn50x4-neurons.tsv"


def _session(url: str):
    return session_factory(make_engine(url, create=False))()


@pytest.fixture(scope="module")
def labelled(tiny_db, demo_loaded, tmp_path_factory) -> str:
    return labelled_db(tiny_db, demo_loaded, tmp_path_factory.mktemp("labelled"))


@pytest.fixture()
def scratch(labelled, tmp_path) -> str:
    """A private copy of the labelled DB that a test may modify."""
    return copy_db(labelled.removeprefix("sqlite:///"), tmp_path)


# ----------------------------------------------------------------------------- scoring


def test_bundled_vocabulary_is_a_few_hundred_clean_concepts(tmp_path) -> None:
    concepts = labelling.read_vocabulary()
    assert 250 <= len(concepts) <= 1000
    assert len({c.lower() for c in concepts}) == len(concepts)
    assert all(c == c.strip() and c and not c.startswith("#") for c in concepts)
    custom = tmp_path / "v.txt"
    custom.write_text("# comment\nRed\n\nred\n  dog  \n")
    assert labelling.read_vocabulary(custom) == ["Red", "dog"]
    custom.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="no concepts"):
        labelling.read_vocabulary(custom)


def test_scores_compare_what_sets_the_top_examples_apart() -> None:
    rng = np.random.default_rng(0)
    concepts = rng.normal(size=(6, 32))
    concepts /= np.linalg.norm(concepts, axis=1, keepdims=True)
    common = rng.normal(size=32) * 3  # shared by every image: must not decide the label
    images = common + rng.normal(size=(60, 32)) * 0.2
    images[:10] += 2 * concepts[4]  # neuron 0's top examples show concept 4
    images[10:20] += 2 * concepts[1]  # neuron 1's show concept 1
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    neuron_emb = labelling.mean_top_embeddings([range(10), range(10, 20), []], images)
    scores = labelling.concept_scores(neuron_emb, images.mean(0), concepts)
    best = labelling.best_concepts(scores, [f"c{i}" for i in range(6)], k=2)
    assert best[0][0].concept == "c4" and best[1][0].concept == "c1"
    assert best[0][0].score > 0.5 and best[0][0].score >= best[0][1].score
    assert best[0][0].zscore > 1.5
    assert np.all(scores[2] == 0)  # no examples: no evidence
    assert np.all(np.abs(scores) <= 1 + 1e-6)


def test_comparison_pools_keep_pictures_and_written_words_apart() -> None:
    """A red circle with the word "blue" on it is neither a picture of red nor the word blue; the
    word "red" is compared with other colour words, not with shape words; a unit that fires on
    pictures of red, also when the word "blue" is written on them, is labelled "red" and not
    "blue (text)"."""
    kinds = [["red", "blue"], ["circle", "square"]]
    candidates = ["red", "blue", "circle", "square", "red (text)", "blue (text)", "circle (text)",
                  "square (text)"]  # fmt: skip
    tags = [["red", "circle"], ["blue", "square"], ["red", "circle", "blue (text)"],  # labelled object
            ["red (text)"], ["blue (text)"], ["circle (text)"], ["red (text)", "square (text)"],
            ["red (drawing)"], []]  # fmt: skip
    pools = labelling.comparison_pools(tags, candidates, kinds, min_images=1)
    p, n, o = labelling.POSITIVE, labelling.NEGATIVE, labelling.OUTSIDE
    assert pools[candidates.index("red")].tolist() == [p, n, o, o, o, o, o, o, o]
    assert pools[candidates.index("blue (text)")].tolist() == [o, o, o, n, p, o, n, o, o]
    assert pools[candidates.index("circle (text)")].tolist() == [o, o, o, o, o, p, n, o, o]
    # without kinds (or too few images of the kind) every written word is compared with every
    # other text-only image
    for k in (None, kinds):
        row = labelling.comparison_pools(tags, candidates, k)[candidates.index("circle (text)")]
        assert row.tolist() == [o, o, o, n, n, p, n, o, o]

    rng = np.random.default_rng(1)
    many = [["red", "circle"], ["blue", "square"], ["red", "square", "blue (text)"], ["blue (text)"],
            ["red (text)"]] * 12  # fmt: skip
    values = np.array([[5.0 if "red" in t else 0.0] for t in many]) + rng.normal(0, 0.3, (len(many), 1))
    d = labelling.modality_dprimes(values, many, candidates, kinds)
    assert np.nanargmax(d[:, 0]) == candidates.index("red")
    assert d[candidates.index("blue (text)"), 0] < 1  # the red pictures under the word do not count
    ev = labelling.pooled_evidence(values[:, 0], labelling.comparison_pools(many, candidates, kinds)[0])
    assert ev.auc == 1.0 and ev.n_images == 24 and ev.n_positive == 12  # plain pictures only


# ----------------------------------------------------------------------------- the stage


def test_stage_labels_every_neuron_and_scores_multimodality(labelled, tiny_db) -> None:
    with _session(labelled) as s:
        layers = list(s.scalars(select(Layer)))
        for layer in layers:
            n_neurons = s.scalar(select(func.count()).select_from(Neuron).where(Neuron.layer_id == layer.id))
            counts = s.execute(
                select(Label.neuron_id, func.count())
                .join(Neuron, Neuron.id == Label.neuron_id)
                .where(Neuron.layer_id == layer.id, Label.source == "auto")
                .group_by(Label.neuron_id)
            ).all()
            # issue 16: up to k=3 auto labels per neuron, candidates with a finite fit-half d′
            assert len(counts) == n_neurons and {c for _, c in counts} <= {1, 2, 3}
            assert len({c for _, c in counts}) == 1  # min(3, candidates with enough images): the same for all
            # multimodality = min(d′ pictures, d′ words) of its concept (table unit_multimodality)
            scored = s.execute(
                select(Neuron.multimodality, UnitMultimodality.picture_d, UnitMultimodality.word_d)
                .join(UnitMultimodality, UnitMultimodality.neuron_id == Neuron.id)
                .where(Neuron.layer_id == layer.id)
            ).all()
            finite = [r for r in scored if r[0] is not None]
            assert finite and all(v == pytest.approx(min(p, w), abs=1e-3) for v, p, w in finite)
            evidence = s.scalar(
                select(func.count()).select_from(LabelEvidence)
                .join(Neuron, Neuron.id == LabelEvidence.neuron_id).where(Neuron.layer_id == layer.id)
            )  # fmt: skip
            assert evidence >= n_neurons  # every labelled neuron: evidence for its auto labels
            profile = s.get(ConceptProfile, layer.id)
            assert profile is not None and profile.source == "ground-truth"
            assert len(profile.word_blobs) == len(profile.concepts) == 14
        ranks = s.execute(select(Label.rank, Label.score).where(Label.source == "auto").order_by(
            Label.neuron_id, Label.rank)).all()  # fmt: skip
        assert all(np.isfinite(score) for _, score in ranks)  # fit-half d′ of the label's concept
        assert s.scalar(select(Run.status).where(Run.stage == "labels")) == "done"


def test_rerun_is_a_no_op_and_force_replaces_only_auto_labels(scratch, demo_loaded) -> None:
    with _session(scratch) as s:
        neuron = s.scalars(select(Neuron).order_by(Neuron.id)).first()
        s.add(Label(neuron_id=neuron.id, label="my label", source="manual", rank=0))
        s.add(Label(neuron_id=neuron.id, label="theirs", source="imported:x", rank=0))
        s.commit()
        before = s.scalar(select(func.count()).select_from(Label))
    again = run_labels(scratch, options=LabelsOptions(progress=False), loaded=demo_loaded)
    assert [r.status for r in again] == ["up-to-date"]
    forced = run_labels(scratch, options=LabelsOptions(force=True, progress=False), loaded=demo_loaded)
    assert [r.status for r in forced] == ["done"]
    with _session(scratch) as s:
        assert s.scalar(select(func.count()).select_from(Label)) == before  # replaced, not duplicated
        kept = {(lb.label, lb.source) for lb in s.scalars(select(Label).where(Label.neuron_id == neuron.id))}
        assert {("my label", "manual"), ("theirs", "imported:x")} <= kept


def test_cli_stage_with_a_custom_vocabulary(scratch, tmp_path, capsys) -> None:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("red\nblue\ncircle\nstar\nthe word red\n")
    db = scratch.removeprefix("sqlite:///")
    assert (
        main(["precompute", "labels", "--db", db, "--vocab", str(vocab), "--k", "2", "--device", "cpu"]) == 0
    )
    assert "labelled from 5 concepts" in capsys.readouterr().out
    with _session(scratch) as s:
        auto = set(s.scalars(select(Label.label).where(Label.source == "auto")))
        vocab_words = {"red", "blue", "circle", "star", "the word red"}
        assert auto <= vocab_words | {f"{w} (text)" for w in vocab_words}  # pictures or the written word
        # k=2; on this tiny index a concept may have too few pictures per half for any d′ (no label)
        assert max(s.execute(select(Label.rank).where(Label.source == "auto")).scalars(), default=1) <= 1
    assert main(["precompute", "labels", "--db", db, "--vocab", str(tmp_path / "missing.txt")]) == 2
    assert main(["precompute", "labels", "--db", db, "--model", "no-such-model"]) == 2


@pytest.mark.slow
@needs_weights
def test_named_demo_neurons_get_their_concept_as_label(demo_loaded, tmp_path_factory) -> None:
    """The neurons eval-demo names as multimodal are labelled with their concept (top-1)."""
    url = trained_db(demo_loaded, tmp_path_factory.mktemp("trained"))
    named = named_multimodal_neurons()
    assert named, "eval-demo names no multimodal neuron"
    with _session(url) as s:
        layer = s.scalar(select(Layer).where(Layer.is_last.is_(True)))
        hits = []
        for concept, unit in named.items():
            top = s.scalar(
                select(Label.label)
                .join(Neuron, Neuron.id == Label.neuron_id)
                .where(
                    Neuron.layer_id == layer.id, Neuron.unit == unit, Label.source == "auto", Label.rank == 0
                )
            )
            hits.append(top is not None and top.removesuffix(" (text)") == concept)  # picture or word
    assert np.mean(hits) >= 0.8, dict(zip(named, hits, strict=True))


# ----------------------------------------------------------------------------- import / set

CSV = """model,layer,unit,label,source
demo,layer4.5,5,reddish,mine
demo,visual.layer4.5,5,roundish,mine
conceptscope-demo,layer3.0,7,from the name,
demo,layer4.5,5,reddish,mine
RN50x4,layer4.5,3,Minecraft,distill
demo,layer9.9,1,x,
demo,layer4.5,999999,x,
demo,layer4.5,abc,x,
demo,layer4.5,3,   ,
"""


def test_import_csv_adds_labels_and_reports_every_rejected_row(scratch, tmp_path, capsys) -> None:
    path = tmp_path / "mine.csv"
    path.write_text(CSV)
    db = scratch.removeprefix("sqlite:///")
    assert main(["labels", "import", str(path), "--db", db]) == 1  # some rows rejected
    out = capsys.readouterr()
    assert "9 rows: 3 labels added, 1 already present or repeated, 5 rejected" in out.out
    rejected = [(6, "unknown model 'RN50x4'"), (7, "no indexed layer 'layer9.9'"),
                (8, "unit 999999 out of range"), (9, "not a number"), (10, "empty label")]  # fmt: skip
    for line, reason in rejected:
        assert f"line {line}: " in out.err and reason in out.err
    with _session(scratch) as s:
        rows = s.execute(
            select(Layer.name, Neuron.unit, Label.label, Label.source, Label.rank)
            .join(Neuron, Neuron.id == Label.neuron_id)
            .join(Layer, Layer.id == Neuron.layer_id)
            .where(Label.source.like("imported:%"))
            .order_by(Label.rank)
        ).all()
    assert set(rows) == {
        ("layer4.5", 5, "reddish", "imported:mine", 0),
        ("layer4.5", 5, "roundish", "imported:mine", 1),
        ("layer3.0", 7, "from the name", "imported:mine", 0),
    }
    assert main(["labels", "import", str(path), "--db", db]) == 1
    assert "0 labels added, 4 already present" in capsys.readouterr().out  # idempotent


def test_import_tsv_with_distill_layer_names_source_override_and_dry_run(scratch, tmp_path, capsys) -> None:
    path = tmp_path / "neurons.tsv"
    path.write_text(
        "# a comment line\nmodel\tpretrained\tlayer\tunit\tlabel\tfamily\tsource\n"
        "demo\t\timage_block_4/5/Add_6:0\t11\tSpider-Man\tFictional\tdistill-2021\n"
        "demo\t\tlayer4.5\t11\t“quoted” label\t\tdistill-2021\n"
    )
    db = scratch.removeprefix("sqlite:///")
    assert main(["labels", "import", str(path), "--db", db, "--dry-run"]) == 0
    assert "(dry run) 2 rows: 2 labels added" in capsys.readouterr().out
    with _session(scratch) as s:
        assert s.scalar(select(func.count()).select_from(Label).where(Label.source.like("imported:%"))) == 0
    assert main(["labels", "import", str(path), "--db", db, "--source", "article"]) == 0
    with _session(scratch) as s:
        got = s.execute(
            select(Label.label, Label.source).join(Neuron).where(Neuron.unit == 11, Label.source.like("imp%"))
        ).all()
    assert set(got) == {("Spider-Man", "imported:article"), ("“quoted” label", "imported:article")}


def test_import_rejects_a_file_without_the_required_columns(scratch, tmp_path, capsys) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("model,unit,label\ndemo,1,x\n")
    assert main(["labels", "import", str(path), "--db", scratch.removeprefix("sqlite:///")]) == 2
    assert "missing column(s) layer" in capsys.readouterr().err
    assert (
        main(["labels", "import", str(tmp_path / "nope.csv"), "--db", scratch.removeprefix("sqlite:///")])
        == 2
    )


def test_manual_label_replaces_the_previous_one_and_can_be_cleared(scratch, capsys) -> None:
    db = scratch.removeprefix("sqlite:///")
    base = ["labels", "set", "--db", db, "--model", "demo", "--layer", "layer4.5", "--unit", "3"]
    assert main([*base, "--label", "first"]) == 0
    assert main([*base, "--label", "  the   red neuron "]) == 0
    with _session(scratch) as s:
        manual = s.execute(
            select(Label.label).join(Neuron).where(Neuron.unit == 3, Label.source == "manual")
        ).all()
    assert manual == [("the red neuron",)]
    assert main([*base, "--clear"]) == 0
    with _session(scratch) as s:
        assert not s.execute(select(Label).where(Label.source == "manual")).all()
    capsys.readouterr()
    assert main([*base[:-1], "512", "--label", "x"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert (
        main(["labels", "set", "--db", db, "--model", "nope", "--layer", "l", "--unit", "1", "--label", "x"])
        == 2
    )


def test_labels_show_on_the_neuron_page_and_filter_the_layer_grid(scratch) -> None:
    from fastapi.testclient import TestClient

    from app.config import Settings
    from app.web.app import create_app

    with _session(scratch) as s:
        neuron = s.scalar(select(Neuron).join(Layer).where(Layer.name == "layer4.5", Neuron.unit == 9))
        s.add(Label(neuron_id=neuron.id, label="zebra crossing", source="manual", rank=0))
        s.commit()
    with TestClient(create_app(Settings(db_url=scratch, device="cpu"))) as client:
        data = client.get("/models/demo/layers/layer4.5/neurons/9.json").json()
        labels = data["sections"]["labels"]
        # issue 16: a manual label without evidence is listed, marked weak, and never the title
        manual = [lb for lb in labels if lb["source"] == "manual"]
        assert [(lb["label"], lb["score"], lb["rank"]) for lb in manual] == [("zebra crossing", None, 0)]
        assert manual[0]["evidence"] is None and manual[0]["weak"] and not manual[0]["title"]
        autos = [lb["source"] for lb in labels if lb is not manual[0]]
        assert autos and set(autos) == {"auto"} and len(autos) <= 3
        assert all(lb["title"] == (i == 0 and not lb["weak"]) for i, lb in enumerate(labels))
        grid = client.get("/models/demo/layers/layer4.5.json", params={"q": "zebra"}).json()
        assert [n["unit"] for n in grid["neurons"]] == [9]


# ----------------------------------------------------------------------------- RN50x4


@pytest.fixture(scope="module")
def rn50x4_db(tmp_path_factory) -> str:
    """An RN50x4 index with random weights over two tiny images (RN50x4 is heavy on a CPU)."""
    from PIL import Image

    from app.models import ModelSpec
    from precompute.activations import run_activations

    folder = tmp_path_factory.mktemp("rn50x4")
    images = folder / "images"
    images.mkdir()
    for i, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        Image.new("RGB", (64, 48), colour).save(images / f"{i}.png")
    url = f"sqlite:///{folder / 'rn50x4.db'}"
    report = run_activations(ModelSpec.parse("RN50x4"), str(images), url, top_k=2, batch_size=2,
                             sample_size=2, progress=False)  # fmt: skip
    assert report.status == "done", report
    return url


DISTILL_FORMAT = (
    "# Neurons of CLIP RN50x4 named in the Distill article (test excerpt, same format)\n"
    "model\tpretrained\tlayer\tunit\tlabel\tfamily\tsource\n"
    "RN50x4\topenai\tlayer4.5\t89\tDonald Trump\tPerson Neurons\tdistill-2021\n"
    "RN50x4\topenai\tlayer4.5\t89\tTrump\tnameToNeuron\tdistill-2021\n"
    "RN50x4\topenai\tlayer4.5\t244\tSpider-Man\tFictional Universe Neurons\tdistill-2021\n"
    "RN50x4\topenai\tlayer4.5\t2559\tlast unit\t\tdistill-2021\n"
)


@pytest.mark.slow
def test_distill_format_imports_into_an_rn50x4_index(rn50x4_db, tmp_path, capsys) -> None:
    path = tmp_path / "distill.tsv"
    path.write_text(DISTILL_FORMAT + "RN50x4\topenai\tlayer4.5\t2560\tbeyond\t\tdistill-2021\n"
                    "RN50x4\topenai\tlayer5.0\t1\tno such layer\t\tdistill-2021\n")  # fmt: skip
    db = rn50x4_db.removeprefix("sqlite:///")
    assert main(["labels", "import", str(path), "--db", db]) == 1
    out = capsys.readouterr()
    assert "6 rows: 4 labels added, 0 already present or repeated, 2 rejected" in out.out
    assert "imported into rn50x4-random" in out.out  # labels of the openai weights, said so
    assert "layer4.5 has units 0–2559" in out.err and "no indexed layer 'layer5.0'" in out.err
    with _session(rn50x4_db) as s:
        got = s.execute(
            select(Neuron.unit, Label.label, Label.rank)
            .join(Neuron)
            .where(Label.source == "imported:distill-2021")
        ).all()
    assert set(got) == {
        (89, "Donald Trump", 0),
        (89, "Trump", 1),
        (244, "Spider-Man", 0),
        (2559, "last unit", 0),
    }


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_TSV.exists(), reason="../shared/data is not present on this machine")
def test_the_real_distill_tsv_imports_cleanly(rn50x4_db, tmp_path, capsys) -> None:
    db = tmp_path / "copy.db"
    shutil.copyfile(rn50x4_db.removeprefix("sqlite:///"), db)
    assert main(["labels", "import", str(SHARED_TSV), "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert " 0 rejected" in out
    rows = sum(1 for line in SHARED_TSV.read_text().splitlines() if line and not line.startswith("#")) - 1
    with _session(f"sqlite:///{db}") as s:
        stored = s.scalar(
            select(func.count()).select_from(Label).where(Label.source == "imported:distill-2021")
        )
    assert 0 < stored <= rows and f"{rows} rows: {stored} labels added" in out


# ----------------------------------------------------------------------------- probe set (--probe)


@pytest.mark.slow
def test_probe_labels_are_chosen_on_one_half_of_the_probe_and_backed_on_another(scratch, demo_loaded) -> None:
    from app.models import DEMO_MODEL_NAME, ModelSpec
    from precompute import demo_world as world
    from precompute.labels import PROBE_SEED, load_probe

    probe = load_probe(ModelSpec(DEMO_MODEL_NAME), "demo:8", list(world.CONCEPTS))
    assert len(probe.images) == 8 * 28 and probe.held.sum() == 4 * 28  # alternate images held out
    assert probe.tags[0] == ["red"] and ["red (text)"] in probe.tags and "circle (text)" in probe.candidates
    assert PROBE_SEED not in (world.TRAIN_SEED, world.HELDOUT_SEED)
    before = run_labels(scratch, options=LabelsOptions(progress=False), loaded=demo_loaded)
    assert [r.status for r in before] == ["up-to-date"]
    done = run_labels(scratch, options=LabelsOptions(progress=False, probe="demo:8"), loaded=demo_loaded)
    assert [r.status for r in done] == ["done"]  # the probe is part of the stage's parameters
    with _session(scratch) as s:
        rows = list(s.scalars(select(LabelEvidence)))
        assert rows and {r.tag_source for r in rows} == {f"probe:demo seed {PROBE_SEED}"}
        # evidence on the held-out half of the probe, within the label's comparison pool
        assert all(r.n_images in (4 * 8, 4 * 6) and r.n_positive == 4 for r in rows if r.auc is not None)
        auto = set(s.scalars(select(Label.label).where(Label.source == "auto")))
        assert auto and auto <= {c for c in probe.candidates}
    from fastapi.testclient import TestClient

    from app.config import Settings
    from app.web.app import create_app

    with TestClient(create_app(Settings(db_url=scratch, device="cpu"))) as client:
        html = client.get("/models/demo/layers/layer4.5/neurons/0").text
        labels = client.get("/models/demo/layers/layer4.5/neurons/0.json").json()["sections"]["labels"]
    assert "computed on a probe set of clean concept images" in html  # the page says what it was computed on
    assert any("probe set" in (lb["evidence"] or {}).get("compared_with", "") for lb in labels)


@pytest.mark.slow
def test_probe_folder_labels_from_its_sub_folders(scratch, demo_loaded, tmp_path, capsys) -> None:
    from precompute import demo_world as world

    folder = tmp_path / "myprobe"
    for colour in ("red", "blue"):
        (folder / colour).mkdir(parents=True)
        for j in range(8):
            world.render(PROBE_TEST_SEED, j, "object", colour=colour).image.save(folder / colour / f"{j}.png")
    db = scratch.removeprefix("sqlite:///")
    assert main(["precompute", "labels", "--db", db, "--probe", str(folder), "--device", "cpu"]) == 0
    capsys.readouterr()
    with _session(scratch) as s:
        assert set(s.scalars(select(Label.label).where(Label.source == "auto"))) <= {"red", "blue"}
        rows = list(s.scalars(select(LabelEvidence).where(LabelEvidence.auc.is_not(None))))
        assert rows and all(r.tag_source == "probe:myprobe" and r.n_images == 8 for r in rows)
    for bad in ("demo:x", "demo:2", str(tmp_path / "missing"), str(folder / "red")):
        assert main(["precompute", "labels", "--db", db, "--probe", bad]) == 2, bad
    assert "--probe" in capsys.readouterr().err


PROBE_TEST_SEED = 77
