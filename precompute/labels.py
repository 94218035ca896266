"""``conceptscope precompute labels``: automatic labels and multimodality scores.

For every model in the database (or ``--model``):

1. embed the images the stage needs (each neuron's top ``--top`` examples and the activation
   sample) with the model's image tower; the embeddings are checkpointed in the stage's ``runs``
   row, so an interrupted run resumes without re-embedding;
2. label every neuron (:mod:`app.neurons.labels`): its ``--k`` best vocabulary concepts with
   scores replace the neuron's ``auto`` labels (imported and manual labels are never touched);
3. tag the activation-sample images with concepts (demo ground truth, or zero-shot
   pseudo-labels), render each concept's word, and store per layer the concept profile and each
   neuron's multimodality score (:mod:`app.neurons.multimodality`).

With ``--probe`` the automatic labels and their evidence (layers with an activation sample) come
from a **probe set** of clean concept images instead of the activation sample's tags (Network
Dissection's Broden idea): ``demo[:N]`` renders ``N`` images per concept and modality of the
demo world (pictures of each concept, and its written word) with :data:`PROBE_SEED`, a seed that
neither training nor ``eval-labels`` (``HELDOUT_SEED``) uses; a folder holds one sub-folder of
images per candidate label (``red/``, ``red (text)/`` for the written word). Labels are chosen on
one half of the probe (alternate images of each concept) and their evidence (AUC, p, top-20
precision, n) is computed on the other half, in the same comparison pools; the evidence row says
so (``tag_source`` ``probe:…``). Multimodality and concept profiles still come from the sample.

The vocabulary is ``--vocab FILE``, else the demo world's concepts for the demo model, else the
bundled general list (``app/neurons/vocab/concepts.txt``). Re-running with the same parameters
is a no-op (``--force`` recomputes).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from tqdm import tqdm

from app.config import DEFAULT_DATA_DIR, Settings, db_url_from_arg
from app.db import from_bytes, make_engine, put_blob, session_factory, to_bytes
from app.db.schema import (
    ActivationSample,
    Blob,
    ConceptProfile,
    Image,
    Label,
    LabelEvidence,
    Layer,
    Model,
    Neuron,
    Run,
    TopExample,
    UnitMultimodality,
    utcnow,
)
from app.models import LoadedModel, ModelSpec, load_model
from app.neurons import labels as labelling
from app.neurons import multimodality as mm
from app.neurons import zeroshot
from precompute import labels_distributed
from precompute.runs import checkpoint_run, finish_run, start_run

STAGE = "labels"
METHOD = "tag-dprime-in-comparison-pools+held-out-evidence+dprime-multimodality"
"""Changes the stage's parameters hash when the labelling method changes (issue 16)."""
EMBED_BATCH = 64
PROBE_SEED = 3_000_017
"""Seed of the demo probe set: neither training (``TRAIN_SEED``) nor evaluation (``HELDOUT_SEED``)."""
PROBE_PER_CONCEPT = 150
"""Default demo probe renderings per concept and modality (75 choose, 75 are evidence)."""
PROBE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
CHECKPOINT_EVERY = 20  # batches between embedding checkpoints


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``conceptscope precompute labels``."""
    parser.add_argument("--db", default=str(DEFAULT_DATA_DIR / "demo.db"),
                        help="database file or SQLAlchemy URL (default: %(default)s)")  # fmt: skip
    parser.add_argument("--model", default=None, help="model slug (default: every model in the DB)")
    parser.add_argument("--vocab", type=Path, default=None,
                        help="concept list, one per line (default: demo concepts / bundled)")  # fmt: skip
    parser.add_argument("--top", type=int, default=20, help="top examples per neuron to embed")
    parser.add_argument("--k", type=int, default=3, help="auto labels kept per neuron")
    parser.add_argument("--device", default="auto", help="torch device (default: GPU if present)")
    parser.add_argument("--force", action="store_true", help="recompute even if up to date")
    parser.add_argument("--probe", default=None,
                        help="label from a probe set: demo[:N] (demo renderings, N per concept "
                             f"and modality, default {PROBE_PER_CONCEPT}) or a folder of <label>/ "
                             "images")  # fmt: skip


@dataclass(frozen=True)
class LabelsOptions:
    """What determines the stage's result (plus ``force`` and ``progress``)."""

    vocab: Path | None = None
    top: int = 20
    k: int = 3
    force: bool = False
    progress: bool = True
    probe: str | None = None


@dataclass
class LabelsReport:
    model: str
    status: str  # "done" | "up-to-date"
    labelled: int = 0
    concepts: int = 0
    tag_source: str | None = None
    multimodality: list[str] = field(default_factory=list)


def run_labels(
    db_url: str,
    *,
    model: str | None = None,
    options: LabelsOptions | None = None,
    device: str = "cpu",
    loaded: LoadedModel | None = None,
) -> list[LabelsReport]:
    """Run the stage on every model of ``db_url`` (or the one with slug ``model``).

    ``loaded`` reuses an already loaded model (it must be the DB model's). Raises ``LookupError``
    when the database has no (such) model.
    """
    options = options or LabelsOptions()
    if options.top < 1 or options.k < 1:
        raise ValueError("--top and --k must be positive")
    ctx = labels_distributed.context()  # under torchrun: rank 0 drives, the others compute shares
    if not ctx.is_writer:
        labels_distributed.serve(ctx, device)
        return []
    try:
        return _run_labels(db_url, model, options, device, loaded)
    finally:
        labels_distributed.stop(ctx)


def _run_labels(
    db_url: str, model: str | None, options: LabelsOptions, device: str, loaded: LoadedModel | None
) -> list[LabelsReport]:
    engine = make_engine(db_url)
    sessions = session_factory(engine)
    try:
        with sessions() as session:
            query = select(Model).order_by(Model.id)
            if model:
                query = query.where(Model.slug == model)
            models = list(session.scalars(query))
        if not models:
            what = f"model {model!r}" if model else "any model"
            raise LookupError(f"the database has no {what}; run `conceptscope precompute activations` first")
        reports = []
        for row in models:
            with sessions() as session:
                use = loaded if loaded is not None and loaded.spec.slug == row.slug else None
                reports.append(label_model(session, row, options, device, use))
        return reports
    finally:
        engine.dispose()


def run(args: argparse.Namespace) -> int:
    """Entry point of ``conceptscope precompute labels``."""
    options = LabelsOptions(args.vocab, args.top, args.k, args.force, True, args.probe)
    device = Settings().with_(device=args.device).resolved_device()
    try:
        reports = run_labels(db_url_from_arg(args.db), model=args.model, options=options, device=device)
    except (LookupError, ValueError, OSError) as exc:
        print(f"conceptscope: error: {exc}", file=sys.stderr)
        return 2
    for r in reports:
        if r.status == "up-to-date":
            print(f"{r.model}: labels up to date (use --force to recompute)")
        else:
            print(
                f"{r.model}: {r.labelled} neurons labelled from {r.concepts} concepts; multimodality "
                f"({r.tag_source} tags): {', '.join(r.multimodality) or 'no activation sample'}"
            )
    return 0


# ------------------------------------------------------------------------------ vocabulary


def vocabulary_for(spec: ModelSpec, vocab: Path | None) -> tuple[list[str], zeroshot.Prompts]:
    """The concept list and its prompts for ``spec`` (see module docstring): the prompt policy
    of :func:`app.neurons.zeroshot.prompts_for`, told the demo world for the demo model."""
    from precompute import demo_world

    if vocab is not None:
        concepts = labelling.read_vocabulary(vocab)
    elif spec.is_demo:
        concepts = list(demo_world.CONCEPTS)
    else:
        concepts = labelling.read_vocabulary()
    return concepts, zeroshot.prompts_for(spec, demo_world.COLOURS, demo_world.SHAPES)


def word_renderer(spec: ModelSpec) -> Callable[[str], list[PILImage.Image]]:
    """Renderings of a word as text: neutral inks on light and dark backgrounds, every font.

    Inks are never concept colours, so a colour neuron's response to a written word is about
    reading, not about the ink.
    """
    if spec.is_demo:
        from precompute import demo_world as world

        fonts = world.font_names()
        variants = [("black", (255, 255, 255)), ("white", (25, 25, 25)),
                    ("black", (205, 205, 200)), ("white", (95, 90, 100))]  # fmt: skip

        def render_demo(word: str) -> list[PILImage.Image]:
            return [
                world.render_word(word, world.HELDOUT_SEED, 10 * i + j, font=font, ink=ink, background=bg)
                for j, font in enumerate(fonts)
                for i, (ink, bg) in enumerate(variants)
            ]

        return render_demo
    return generic_word_renderings


def generic_word_renderings(word: str, size: int = 224) -> list[PILImage.Image]:
    """``word`` in black on white and white on black, via :mod:`app.neurons.render` when present."""
    try:
        from app.neurons import render  # the live engineer's text renderer
    except ImportError:
        render = None  # type: ignore[assignment]
    fn = getattr(render, "render_text", None) if render is not None else None
    if fn is not None:
        try:
            return [fn(word), fn(word, ink=(255, 255, 255), background=(0, 0, 0))]
        except TypeError:
            return [fn(word)]
    from PIL import ImageDraw, ImageFont

    out = []
    for ink, bg in (((0, 0, 0), (255, 255, 255)), ((255, 255, 255), (0, 0, 0))):
        img = PILImage.new("RGB", (size, size), bg)
        draw = ImageDraw.Draw(img)
        font = ImageFont.load_default(size=max(12, size // max(4, len(word))))
        box = draw.textbbox((0, 0), word, font=font)
        xy = ((size - (box[2] - box[0])) // 2 - box[0], (size - (box[3] - box[1])) // 2 - box[1])
        draw.text(xy, word, fill=ink, font=font)
        out.append(img)
    return out


# ------------------------------------------------------------------------------ the stage


def _params(
    session: Session, concepts: Sequence[str], options: LabelsOptions, model: Model
) -> dict[str, object]:
    """The inputs of the result: vocabulary, settings, and the activations run it was built on."""
    activations = session.scalar(
        select(Run.params_hash)
        .where(Run.model_id == model.id, Run.stage == "activations", Run.status == "done")
        .order_by(Run.id.desc())
        .limit(1)
    )
    return {
        "vocab_sha256": hashlib.sha256("\n".join(concepts).encode()).hexdigest(),
        "n_concepts": len(concepts),
        "top": options.top,
        "k": options.k,
        "pretrained": model.pretrained,
        "activations": activations,
        "method": METHOD,
        "probe": _probe_key(options.probe),
    }


def _run_row(session: Session, model: Model, params: dict[str, object]) -> Run:
    row = start_run(session, model.id, STAGE, dict(params), progress={})
    session.commit()
    return row


def label_model(
    session: Session, model: Model, options: LabelsOptions, device: str, loaded: LoadedModel | None = None
) -> LabelsReport:
    """Run the whole stage for one model (resumes a previous run with the same parameters)."""
    spec = ModelSpec(model.name, model.pretrained)
    concepts, prompts = vocabulary_for(spec, options.vocab)
    params = _params(session, concepts, options, model)
    run_row = _run_row(session, model, params)
    if run_row.status == "done" and not options.force:
        return LabelsReport(model.slug, "up-to-date", concepts=len(concepts))
    layers = list(session.scalars(select(Layer).where(Layer.model_id == model.id).order_by(Layer.position)))
    loaded = loaded or load_model(spec, device)
    concept_emb = zeroshot.encode_concepts(loaded, concepts, prompts)

    samples = {layer.id: session.get(ActivationSample, layer.id) for layer in layers}
    top_ids = _top_example_ids(session, [layer.id for layer in layers], options.top)
    sample_ids = sorted({int(i) for s in samples.values() if s is not None for i in s.image_ids})
    wanted = sorted(set(sample_ids) | {i for rows in top_ids.values() for ids in rows.values() for i in ids})
    if _has_ground_truth(session, sample_ids) and all(s is not None for s in samples.values()):
        wanted = []  # every layer is labelled from ground-truth tags: no image embeddings needed
    emb = _embeddings(session, run_row, loaded, wanted, options.progress)
    row_of = {image_id: r for r, image_id in enumerate(wanted)}
    mean_ids = [i for i in sample_ids if i in row_of] or wanted
    dataset_mean = emb[[row_of[i] for i in mean_ids]].mean(0) if mean_ids else np.zeros(loaded.embed_dim)

    n_labelled = 0
    for layer in tqdm(layers, desc=f"{model.slug}: labels", unit="layer", disable=not options.progress):
        if samples.get(layer.id) is not None:
            continue  # labelled below from the sample's concept tags, with held-out evidence
        neurons = top_ids.get(layer.id, {})
        ids = sorted(neurons)
        rows = [[row_of[i] for i in neurons[nid] if i in row_of] for nid in ids]
        scores = labelling.concept_scores(labelling.mean_top_embeddings(rows, emb), dataset_mean, concept_emb)
        best = labelling.best_concepts(scores, concepts, options.k)
        session.execute(delete(Label).where(Label.source == labelling.AUTO_SOURCE, Label.neuron_id.in_(ids)))
        for nid, choices, r in zip(ids, best, rows, strict=True):
            if not r:
                continue
            for rank, choice in enumerate(choices):
                session.add(Label(neuron_id=nid, label=choice.concept, source=labelling.AUTO_SOURCE,
                                  score=round(choice.score, 4), rank=rank))  # fmt: skip
            n_labelled += 1
        session.commit()

    tags, tag_source = _image_tags(session, spec, loaded, sample_ids, emb, row_of, concepts, concept_emb)
    infos = [loaded.layer(layer.name) for layer in layers if samples.get(layer.id) is not None]
    probe = load_probe(spec, options.probe, concepts) if options.probe else None
    probe_acts = probe_values(loaded, infos, probe.images) if probe is not None else {}
    render = word_renderer(spec)
    renderings = labels_distributed.word_rendering_responses(loaded, infos, concepts, render,
                                                            labels_distributed.context())  # fmt: skip
    word_blobs = [_png_blob(session, render(c)[0]) for c in concepts]
    groups = concept_groups(spec, concepts)
    candidates = label_candidates(concepts, tag_source)
    scored = []
    for layer in layers:
        sample = samples.get(layer.id)
        if sample is None:
            continue
        values = from_bytes(sample.values, "float16", (sample.n_images, sample.n_units)).astype(np.float32)
        image_tags = [tags.get(int(i), []) for i in sample.image_ids]
        words = renderings[layer.name]
        means, counts = mm.concept_image_means(values, image_tags, concepts)
        correlation = mm.preference_correlation(means, words.mean(1))
        picture_d = mm.picture_dprimes(values, image_tags, concepts)
        word_d = mm.word_dprimes(words, groups)
        scores, best = mm.multimodal_dprime_scores(picture_d, word_d, mm.alive_units(values))
        neurons = {n.unit: n for n in session.scalars(select(Neuron).where(Neuron.layer_id == layer.id))}
        ids = [n.id for n in neurons.values()]
        session.execute(delete(UnitMultimodality).where(UnitMultimodality.neuron_id.in_(ids)))
        for unit, neuron in neurons.items():
            ok = unit < len(scores) and np.isfinite(scores[unit])
            neuron.multimodality = round(float(scores[unit]), 4) if ok else None
            c = int(best[unit]) if unit < len(best) else -1
            session.add(UnitMultimodality(
                neuron_id=neuron.id, concept=concepts[c] if ok and c >= 0 else None,
                score=neuron.multimodality,
                picture_d=_finite(picture_d[c, unit]) if c >= 0 else None,
                word_d=_finite(word_d[c, unit]) if c >= 0 else None,
                correlation=_finite(correlation[unit]) if unit < len(correlation) else None,
            ))  # fmt: skip
        if probe is not None:  # labels and evidence from the probe set (see module docstring)
            n_labelled += _tag_labels(session, neurons, probe_acts[layer.name], range(len(probe.tags)),
                                      probe.tags, probe.candidates, probe.source, options.k, probe.kinds,
                                      probe.held)  # fmt: skip
        else:
            n_labelled += _tag_labels(session, neurons, values, sample.image_ids, image_tags, candidates,
                                      tag_source, options.k, concept_kinds(concepts, groups))  # fmt: skip
        session.merge(ConceptProfile(
            layer_id=layer.id, source=tag_source, concepts=list(concepts), image_counts=counts,
            image_means=to_bytes(means, "float32"), word_values=to_bytes(words.mean(1), "float32"),
            word_blobs=word_blobs, image_tags={str(int(i)): tags.get(int(i), []) for i in sample.image_ids},
            created_at=utcnow(),
        ))  # fmt: skip
        session.commit()
        scored.append(f"{layer.name} (median {np.nanmedian(scores):.2f}, max {np.nanmax(scores):.2f})"
                      if np.isfinite(scores).any() else f"{layer.name} (no score)")  # fmt: skip
    # the embedding checkpoint is no longer needed (finish_run drops the state)
    progress = {**(run_row.progress or {}), "labelled": n_labelled, "multimodality": scored}
    finish_run(session, run_row, progress)
    session.commit()
    return LabelsReport(model.slug, "done", n_labelled, len(concepts), tag_source, scored)


# ------------------------------------------------------------------------------ probe set


@dataclass
class Probe:
    """Clean concept images: each one's candidate tags, and which half is held out (evidence)."""

    images: list[PILImage.Image]
    tags: list[list[str]]
    held: np.ndarray
    candidates: list[str]
    kinds: list[list[str]] | None
    source: str  # the evidence rows' tag_source (at most 40 characters)


def _parse_probe(probe: str) -> int | Path:
    """``demo[:N]`` -> N renderings per concept and modality; anything else -> a folder."""
    if probe == "demo" or probe.startswith("demo:"):
        text = probe.partition(":")[2] or str(PROBE_PER_CONCEPT)
        if not text.isdigit() or int(text) < 8:
            raise ValueError(f"--probe {probe}: N must be an integer ≥ 8")
        return int(text)
    path = Path(probe)
    if not path.is_dir():
        raise ValueError(f"--probe {probe}: not 'demo[:N]' nor a folder")
    return path


def _probe_files(folder: Path) -> dict[str, list[Path]]:
    """``label -> image files`` of a probe folder (one sub-folder per label, sorted)."""
    out = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(f for f in sub.iterdir() if f.suffix.lower() in PROBE_EXTENSIONS)
        if files:
            out[sub.name] = files
    if len(out) < 2:
        raise ValueError(f"--probe {folder}: needs at least two sub-folders of images (one per label)")
    return out


def _probe_key(probe: str | None) -> str | None:
    """What of the probe determines the result (part of the stage's parameters)."""
    if probe is None:
        return None
    parsed = _parse_probe(probe)
    if isinstance(parsed, int):
        return f"demo:{parsed}:seed={PROBE_SEED}"
    digest = hashlib.sha256()
    for label, files in _probe_files(parsed).items():
        for f in files:
            digest.update(f"{label}/{f.name}:{f.stat().st_size}\n".encode())
    return f"folder:{parsed.resolve()}:{digest.hexdigest()[:16]}"


def load_probe(spec: ModelSpec, probe: str, concepts: Sequence[str]) -> Probe:
    """The probe set named by ``--probe`` (see module docstring); alternate images of each label
    are held out."""
    parsed = _parse_probe(probe)
    images: list[PILImage.Image] = []
    tags: list[list[str]] = []
    held: list[bool] = []
    if isinstance(parsed, int):
        if not spec.is_demo:
            raise ValueError("--probe demo renders the demo world: it needs the demo model")
        from precompute.demo_eval import KINDS, eval_set

        for modality in ("object", "text"):
            for kind, classes in KINDS.items():
                rendered, labels = eval_set(modality, kind, parsed, PROBE_SEED)
                for j, (image, ci) in enumerate(zip(rendered, labels, strict=True)):
                    images.append(image)
                    tags.append([classes[ci] if modality == "object" else mm.text_tag(classes[ci])])
                    held.append(j % 2 == 1)  # within each class, images alternate
        candidates = label_candidates(concepts, "ground-truth")
        kinds = concept_kinds(concepts, concept_groups(spec, concepts))
        source = f"probe:demo seed {PROBE_SEED}"
    else:
        candidates, kinds = [], None
        for label, files in _probe_files(parsed).items():
            candidates.append(label)
            for j, f in enumerate(files):
                with PILImage.open(f) as im:
                    images.append(im.convert("RGB"))
                tags.append([label])
                held.append(j % 2 == 1)
        source = f"probe:{parsed.name}"[:40]
    return Probe(images, tags, np.array(held, bool), candidates, kinds, source)


def probe_values(
    loaded: LoadedModel, infos: Sequence[object], images: Sequence[PILImage.Image]
) -> dict[str, np.ndarray]:
    """``layer -> (images, units)`` spatial-max activations (the index's own measure) of the probe."""
    import torch

    from app.neurons.capture import layer_maps

    acts: dict[str, list[np.ndarray]] = {info.name: [] for info in infos}  # type: ignore[attr-defined]
    with torch.inference_mode():
        for start in range(0, len(images), EMBED_BATCH):
            x = zeroshot.preprocess_batch(loaded, images[start : start + EMBED_BATCH])
            for name, m in layer_maps(loaded, x, infos).items():  # type: ignore[arg-type]
                acts[name].append(m.amax(dim=(2, 3)).float().cpu().numpy())
    return {name: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for name, v in acts.items()}


def _finite(x: float) -> float | None:
    return round(float(x), 4) if np.isfinite(x) else None


def concept_groups(spec: ModelSpec, concepts: Sequence[str]) -> list[list[int]] | None:
    """Concept kinds whose words are compared with each other (demo: colours, shapes)."""
    if not spec.is_demo:
        return None
    from precompute import demo_world

    index = {c: i for i, c in enumerate(concepts)}
    groups = [[index[c] for c in kind if c in index] for kind in (demo_world.COLOURS, demo_world.SHAPES)]
    rest = [i for c, i in index.items() if c not in demo_world.CONCEPTS]
    return [g for g in [*groups, rest] if g]


def concept_kinds(concepts: Sequence[str], groups: list[list[int]] | None) -> list[list[str]] | None:
    """:func:`concept_groups` as lists of concept names (``None``: one kind)."""
    return [[concepts[i] for i in g] for g in groups] if groups else None


def label_candidates(concepts: Sequence[str], tag_source: str) -> list[str]:
    """Concept tags a unit can be labelled with: pictures of each concept, and with ground truth
    its written word too (``"red (text)"``)."""
    if tag_source == "ground-truth":
        return [*concepts, *(mm.text_tag(c) for c in concepts)]
    return list(concepts)


def _tag_labels(
    session: Session,
    neurons: dict[int, Neuron],
    values: np.ndarray,
    image_ids: Sequence[int],
    image_tags: list[list[str]],
    candidates: list[str],
    tag_source: str,
    k: int,
    kinds: Sequence[Sequence[str]] | None = None,
    held: np.ndarray | None = None,
) -> int:
    """Automatic labels chosen on one half of the sample (best d′ in the candidate's comparison
    pool, :func:`app.neurons.labels.comparison_pools`: plain pictures against other plain pictures,
    written words against other written words, of the same kind), evidence on the other half, in
    the same pool, for them and for every imported or manual label that names a candidate.
    ``held``: which images are held out (default: :func:`app.neurons.labels.held_out` of the ids)."""
    held = labelling.held_out(list(image_ids)) if held is None else np.asarray(held, bool)
    fit_tags = [t for t, h in zip(image_tags, held, strict=True) if not h]
    held_tags = [t for t, h in zip(image_tags, held, strict=True) if h]
    held_pools = labelling.comparison_pools(held_tags, candidates, kinds)  # who is compared with whom
    fit_auc = labelling.modality_dprimes(values[~held], fit_tags, candidates, kinds)
    ids = [n.id for n in neurons.values()]
    session.execute(delete(Label).where(Label.source == labelling.AUTO_SOURCE, Label.neuron_id.in_(ids)))
    session.execute(delete(LabelEvidence).where(LabelEvidence.neuron_id.in_(ids)))
    existing: dict[int, set[str]] = {}
    for nid, text in session.execute(select(Label.neuron_id, Label.label).where(Label.neuron_id.in_(ids))):
        existing.setdefault(nid, set()).add(text)
    labelled = 0
    # each unit's labels and evidence (:func:`_unit_tag_labels`), spread over torchrun ranks
    units = [(unit, sorted(existing.get(neuron.id, set()))) for unit, neuron in neurons.items()
             if unit < values.shape[1]]  # fmt: skip
    shared = (fit_auc, values[held], held_pools, candidates, k)
    results = labels_distributed.map_units(_unit_tag_labels, units, shared, labels_distributed.context())
    for (unit, _), (chosen, evidences) in zip(units, results, strict=True):
        neuron = neurons[unit]
        for rank, (text, score) in enumerate(chosen):
            session.add(Label(neuron_id=neuron.id, label=text, source=labelling.AUTO_SOURCE,
                              score=score, rank=rank))  # fmt: skip
        labelled += bool(chosen)
        for text, ev in evidences:
            session.add(LabelEvidence(
                neuron_id=neuron.id, label=text, auc=ev.auc, p_value=ev.p_value, precision=ev.precision,
                n_images=ev.n_images, n_positive=ev.n_positive, tag_source=tag_source,
                histogram=ev.histogram,
            ))  # fmt: skip
    return labelled


def _unit_tag_labels(
    shared: tuple[np.ndarray, np.ndarray, np.ndarray, list[str], int], item: tuple[int, list[str]]
) -> tuple[list[tuple[str, float]], list[tuple[str, labelling.Evidence]]]:
    """One unit's automatic labels ``(concept, score)`` (best ``k`` fit-half d′) and the held-out
    evidence of each of them and of the unit's other labels that name a candidate concept.
    ``shared``: fit-half d′ ``(candidates, units)``, held-out values ``(images, units)`` and
    comparison pools ``(candidates, images)`` (:func:`app.neurons.labels.comparison_pools`), the
    candidates, ``k``; ``item``: the unit, its other labels."""
    fit_auc, held_values, held_positives, candidates, k = shared
    unit, others = item
    column = np.nan_to_num(fit_auc[:, unit], nan=-np.inf)
    order = [int(j) for j in np.argsort(-column, kind="stable")[:k] if np.isfinite(column[j])]
    index = {c.lower(): i for i, c in enumerate(candidates)}
    evidences = []
    for text in sorted({candidates[j] for j in order} | set(others)):
        j = index.get(text.lower())
        if j is not None:
            evidences.append((text, labelling.pooled_evidence(held_values[:, unit], held_positives[j])))
    return [(candidates[j], round(float(column[j]), 4)) for j in order], evidences


def _top_example_ids(session: Session, layer_ids: list[int], top: int) -> dict[int, dict[int, list[int]]]:
    """``layer_id -> neuron_id -> image ids`` of each neuron's ``top`` highest examples."""
    out: dict[int, dict[int, list[int]]] = {lid: {} for lid in layer_ids}
    for neuron in session.execute(select(Neuron.id, Neuron.layer_id).where(Neuron.layer_id.in_(layer_ids))):
        out[neuron.layer_id][neuron.id] = []
    rows = session.execute(
        select(TopExample.neuron_id, TopExample.image_id, Neuron.layer_id)
        .join(Neuron, Neuron.id == TopExample.neuron_id)
        .where(Neuron.layer_id.in_(layer_ids))
        .order_by(TopExample.neuron_id, TopExample.value.desc(), TopExample.rank)
    )
    for neuron_id, image_id, layer_id in rows:
        ids = out[layer_id].setdefault(neuron_id, [])
        if len(ids) < top:
            ids.append(int(image_id))
    return out


def _embeddings(
    session: Session, run_row: Run, loaded: LoadedModel, image_ids: list[int], progress: bool = True
) -> np.ndarray:
    """Normalised image embeddings of ``image_ids`` (thumbnails), resuming from the checkpoint."""
    done: dict[int, np.ndarray] = {}
    if run_row.state:
        with np.load(io.BytesIO(run_row.state)) as saved:
            done = dict(zip(saved["ids"].tolist(), saved["emb"], strict=True))
    todo = [i for i in image_ids if i not in done]
    if todo:
        bar = tqdm(
            total=len(todo), desc=f"{loaded.spec.slug}: embedding images", unit="img", disable=not progress
        )
        ctx = labels_distributed.context()
        step = EMBED_BATCH * ctx.world  # a round: one batch per torchrun rank (one batch alone)
        for b, start in enumerate(range(0, len(todo), step)):
            chunk = todo[start : start + step]
            images = _thumbnails(session, chunk)
            goods = [[i for i in chunk[s : s + EMBED_BATCH] if i in images]
                     for s in range(0, len(chunk), EMBED_BATCH)]  # fmt: skip
            goods = [good for good in goods if good]
            batches = [[images[i] for i in good] for good in goods]
            vectors = labels_distributed.embed_batches(loaded, batches, ctx)
            for good, batch_vectors in zip(goods, vectors, strict=True):
                done.update(zip(good, batch_vectors, strict=True))
            for i in chunk:
                if i not in images:  # unreadable thumbnail: neutral (zero) embedding, counted
                    done[i] = np.zeros(loaded.embed_dim, np.float32)
            bar.update(len(chunk))
            if (b + 1) % CHECKPOINT_EVERY == 0:
                _checkpoint(session, run_row, done)
        bar.close()
        _checkpoint(session, run_row, done)
    if not image_ids:
        return np.zeros((0, loaded.embed_dim), np.float32)
    return np.stack([done[i] for i in image_ids]).astype(np.float32)


def _checkpoint(session: Session, run_row: Run, done: dict[int, np.ndarray]) -> None:
    buffer = io.BytesIO()
    ids = np.array(list(done), dtype=np.int64)
    np.savez(buffer, ids=ids, emb=np.stack(list(done.values())) if done else np.zeros((0, 1)))
    checkpoint_run(session, run_row, buffer.getvalue(), {**(run_row.progress or {}), "embedded": len(done)})
    session.commit()


def _thumbnails(session: Session, image_ids: list[int]) -> dict[int, PILImage.Image]:
    rows = session.execute(
        select(Image.id, Blob.data)
        .join(Blob, Blob.sha256 == Image.thumb_sha256)
        .where(Image.id.in_(image_ids))
    )
    out = {}
    for image_id, data in rows:
        try:
            img = PILImage.open(io.BytesIO(data))
            img.load()
            out[int(image_id)] = img.convert("RGB")
        except Exception:  # noqa: BLE001 - a corrupt blob is skipped (zero embedding)
            continue
    return out


def _image_tags(
    session: Session,
    spec: ModelSpec,
    loaded: LoadedModel,
    sample_ids: list[int],
    emb: np.ndarray,
    row_of: dict[int, int],
    concepts: list[str],
    concept_emb: np.ndarray,
) -> tuple[dict[int, list[str]], str]:
    """Concept tags of the sampled images: ground truth when the images carry it, else zero-shot."""
    metas = dict(session.execute(select(Image.id, Image.meta).where(Image.id.in_(sample_ids))).all())
    if metas and all(isinstance(m, dict) and "modality" in m for m in metas.values()):
        return {int(i): mm.demo_tags(m, concepts) for i, m in metas.items()}, "ground-truth"
    ids = [i for i in sample_ids if i in row_of]
    if not ids:
        return {}, "zero-shot"
    probs = zeroshot.class_probabilities(
        emb[[row_of[i] for i in ids]], concept_emb, zeroshot.logit_scale(loaded)
    )
    return dict(zip(ids, mm.pseudo_label_tags(probs, concepts), strict=True)), "zero-shot"


def _has_ground_truth(session: Session, sample_ids: list[int]) -> bool:
    metas = session.scalars(select(Image.meta).where(Image.id.in_(sample_ids[:50]))).all()
    return bool(metas) and all(isinstance(m, dict) and "modality" in m for m in metas)


def _png_blob(session: Session, image: PILImage.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return put_blob(session, buffer.getvalue(), "image/png", image.width, image.height)
